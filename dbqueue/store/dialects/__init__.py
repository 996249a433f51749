"""Everything that differs between database servers, and nothing else."""

from .base import RESERVED_COLUMNS, Dialect, ReservedRow, UtcDateTime, dialect_for

__all__ = ["RESERVED_COLUMNS", "Dialect", "ReservedRow", "UtcDateTime", "dialect_for"]
