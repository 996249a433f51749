"""Column types whose storage differs by server, resolved through the dialect seam."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from .base import dialect_for


class UtcDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as an aware UTC datetime.

    PostgreSQL stores ``timestamptz``; MySQL ``DATETIME(6)`` and SQLite text hold
    naive UTC values, so aware values are converted on the way in.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(dialect_for(dialect).timestamp_type())

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value if dialect_for(dialect).aware_timestamps else value.replace(tzinfo=None)

    def result_processor(self, dialect: sa.Dialect, coltype: object) -> Any:
        # Read for every reserved row: where the driver returns aware datetimes
        # and needs no conversion of its own, one lean call per value.
        impl = self.load_dialect_impl(dialect).dialect_impl(dialect)
        if dialect_for(dialect).aware_timestamps and impl.result_processor(
                dialect, coltype) is None:
            return _in_utc
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        # A str: an expression SQLite returned without the column's type.
        return _in_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


class LongText(sa.TypeDecorator[str]):
    """Text as long as a payload or a traceback: LONGTEXT on MySQL, where TEXT
    stops at 64 KiB; TEXT elsewhere.

    A type that asks the dialect seam, rather than ``Text().with_variant(
    mysql.LONGTEXT(), ...)``, so that only MySQL's processes import SQLAlchemy's
    MySQL dialect (some 20 ms in each process that builds the tables)."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        # Not through dialect.type_descriptor(): PostgreSQL's drivers map Text
        # to a String of their own, which migrations would create as VARCHAR.
        return dialect_for(dialect).long_text_type()


def _in_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    tzinfo = value.tzinfo
    if tzinfo is UTC:  # psycopg's, in a session whose TimeZone is 'UTC' (not 'Etc/UTC')
        return value
    # A naive value (a column without time zone, SQLite's, MySQL's) is UTC.
    return value.replace(tzinfo=UTC) if tzinfo is None else value.astimezone(UTC)
