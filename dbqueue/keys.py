"""Keys stored in indexed columns (unique jobs, idempotency, locks)."""

from __future__ import annotations

import hashlib

KEY_LENGTH = 191
"""The size of every key column: the longest utf8mb4 string MySQL can index
with its oldest row formats."""


def fit(key: str, prefix: str = "") -> str:
    """``key`` itself if a key column can hold it, else ``prefix`` and a digest
    of it: still one key per distinct ``key``."""
    if len(key) <= KEY_LENGTH:
        return key
    return f"{prefix}sha256:{hashlib.sha256(key.encode()).hexdigest()}"
