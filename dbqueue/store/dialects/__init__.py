"""Everything that differs between database servers, and nothing else."""

from .base import (
    READ_ONLY,
    RESERVED_COLUMNS,
    Dialect,
    ReservedRow,
    dialect_for,
)
from .support import Notices
from .types import LongText, UtcDateTime

__all__ = [
    "READ_ONLY",
    "RESERVED_COLUMNS",
    "Dialect",
    "LongText",
    "Notices",
    "ReservedRow",
    "UtcDateTime",
    "dialect_for",
]
