"""Keys stored in indexed columns (unique jobs, idempotency, locks)."""

from __future__ import annotations

import hashlib
from typing import Any

from .errors import ConfigurationError

KEY_LENGTH = 191
"""The size of every key column: the longest utf8mb4 string MySQL can index
with its oldest row formats."""


def fit(key: str, prefix: str = "") -> str:
    """``key`` itself if a key column can hold it, else ``prefix`` and a digest
    of it: still one key per distinct ``key``."""
    if len(key) <= KEY_LENGTH:
        return key
    return f"{prefix}sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def made(what: str, value: Any, *, empty: bool = True) -> str:
    """What a key function returned (``what`` names it: "unique_key of job
    'x'"), as the key's text.

    None, what a function that forgot its ``return`` gives, would make one key
    of every call ("None"): the jobs would then share one lock, unique slot
    or outcome without a word. It is refused, as is an empty key unless
    ``empty`` (where it means "the whole job", as no key does), and what
    ``storable`` refuses."""
    if value is None or (not empty and isinstance(value, str) and not value):
        got = "None (has it a return statement?)" if value is None else "an empty string"
        raise ConfigurationError(f"{what} returned {got}; it must return the key, a "
                                 "non-empty string built from the job's arguments, e.g. "
                                 "lambda user_id: f'user:{user_id}'")
    return storable(what, str(value))


def storable(what: str, key: str) -> str:
    """``key`` if every server can store it, else a ConfigurationError naming
    ``what`` it is: PostgreSQL refuses a NUL character in text, and no
    server's UTF-8 takes a lone surrogate (a str decoded with
    ``surrogateescape``)."""
    if "\x00" in key:
        raise ConfigurationError(f"{what} {key!r} holds a NUL character (\\x00), which "
                                 "PostgreSQL cannot store; leave it out of the key")
    try:
        key.encode()
    except UnicodeEncodeError as exc:
        raise ConfigurationError(f"{what} {key!r} is not valid Unicode ({exc.reason} at "
                                 f"position {exc.start}); build it from text, or encode "
                                 "binary data (hex, base64)") from None
    return key
