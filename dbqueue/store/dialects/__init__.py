"""Everything that differs between database servers, and nothing else."""

from .base import READ_ONLY, Dialect, dialect_for
from .rows import LONG_AGO, RESERVED_COLUMNS, ReservedRow
from .support import Notices
from .types import LongText, UtcDateTime

__all__ = [
    "LONG_AGO",
    "READ_ONLY",
    "RESERVED_COLUMNS",
    "Dialect",
    "LongText",
    "Notices",
    "ReservedRow",
    "UtcDateTime",
    "dialect_for",
]
