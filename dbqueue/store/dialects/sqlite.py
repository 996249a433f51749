"""SQLite: the embedded default. One writer at a time, so reservation needs no
row locks: a single UPDATE ... RETURNING inside a BEGIN IMMEDIATE transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from .base import (
    LOCK_WAITS_RETRIED_WITHIN,
    READ_ONLY,
    Dialect,
    seconds_expression,
)
from .rows import ReservedRow, created_at
from .support import server_too_old

# Text timestamps compare as strings, so every writer must use one format. This
# is SQLAlchemy's own (microseconds, six digits); SQLite's %f gives "SS.SSS",
# and the literal "000" pads it to six.
_FORMAT = "%Y-%m-%d %H:%M:%f000"
_BUSY_TIMEOUT_SECONDS = 60


class SQLite(Dialect):
    name: ClassVar[str] = "sqlite"
    skip_locked: ClassVar[bool] = False
    # No network to save, and the BEGIN IMMEDIATE hook must own every write.
    autocommit_single_statements: ClassVar[bool] = False
    single_writer: ClassVar[bool] = True
    embedded: ClassVar[bool] = True
    isolation: ClassVar[str | None] = None  # one writer at a time: serializable

    def engine_options(self) -> dict[str, Any]:
        return {"connect_args": {"timeout": _BUSY_TIMEOUT_SECONDS}}

    def prepare_engine(self, engine: Engine, network_timeout: float) -> None:
        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            # WAL lets readers (status, the CLI) run beside the writer; NORMAL
            # sync is safe against corruption in WAL mode and much faster.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # IMMEDIATE takes the write lock up front: a transaction that read
            # first and wrote later could fail with SQLITE_BUSY at once instead
            # of waiting for the lock. Read-only work begins deferred, so in
            # WAL mode it never waits for a writer.
            if connection.get_execution_options().get(READ_ONLY):
                connection.exec_driver_sql("BEGIN")
            else:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

    def check_server(self, connection: Connection) -> None:
        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise server_too_old("SQLite", sqlite3.sqlite_version, "3.35",
                                 "UPDATE ... RETURNING came in 3.35")

    def now(self) -> sa.ColumnElement[datetime]:
        return sa.func.strftime(_FORMAT, "now", type_=sa.DateTime())

    def now_plus(self, seconds: float | sa.ColumnElement[float]) -> sa.ColumnElement[datetime]:
        modifier = sa.cast(seconds_expression(seconds), sa.String) + " seconds"
        return sa.func.strftime(_FORMAT, "now", modifier, type_=sa.DateTime())

    def now_default(self) -> sa.TextClause:
        return sa.text(f"(strftime('{_FORMAT}', 'now'))")

    def reserved_columns(self, jobs: sa.Table) -> list[sa.ColumnElement[Any]]:
        # created_at as the text stored: a column of SQLite's holds whatever
        # was written into it, and SQLAlchemy's reading would raise inside the
        # reservation (see rows.created_at).
        *columns, created, reserved = super().reserved_columns(jobs)
        return [*columns, sa.type_coerce(created, sa.String()).label(created.key), reserved]

    def reserved_rows(self, returned: Sequence[Any]) -> list[ReservedRow]:
        return [ReservedRow(id_, queue_, job, payload, priority, attempts + 1,
                            created_at(_utc, created), reserved)
                for id_, queue_, job, payload, priority, attempts, created, reserved in returned]

    def upsert_module(self) -> Any:
        from sqlalchemy.dialects import sqlite

        return sqlite

    def is_retryable(self, error: BaseException, waited: float = 0.0) -> bool:
        # sqlite3 waits for the lock itself (the busy timeout, 60 s unless the
        # application's engine says otherwise) before it says "locked". A lock
        # held that long is a transaction that is not about to end: often the
        # caller's own, open on another connection to the same file. Eight
        # more tries would hang the caller eight times as long.
        return _locked(error) and waited < LOCK_WAITS_RETRIED_WITHIN

    def is_lock_wait(self, error: BaseException) -> bool:
        return _locked(error)

    def is_refusal(self, error: BaseException) -> bool:
        # sqlite3 files nearly every error as OperationalError: a syntax error
        # or an unknown function (SQLITE_ERROR) as well as a lock or a full disk.
        code = getattr(getattr(error, "orig", error), "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _REFUSED

    def unavailable_hint(self, error: BaseException) -> str:
        if not _locked(error):
            return super().unavailable_hint(error)
        return ("another connection holds a write transaction on this file; if it is "
                "your own (a Session or connection with uncommitted writes), pass it as "
                "connection= so that dbqueue writes in it, or commit it first")

    def is_missing_table(self, error: BaseException) -> bool:
        return "no such table" in str(getattr(error, "orig", error))

    def refuses_data(self, error: BaseException) -> bool:
        # SQLITE_TOOBIG: a value over the build's SQLITE_MAX_LENGTH (1 GB).
        return "too big" in str(getattr(error, "orig", error))

    def is_missing_column(self, error: BaseException) -> bool:
        text = str(getattr(error, "orig", error))
        return "no such column" in text or "has no column named" in text  # (an INSERT's)


_REFUSED = frozenset({1, 18, 20, 25})  # SQLITE_ERROR, _TOOBIG, _MISMATCH, _RANGE


def _locked(error: BaseException) -> bool:
    return "database is locked" in str(getattr(error, "orig", error))


def _utc(text: str) -> datetime:
    """A time as dbqueue writes it (see _FORMAT: UTC, no offset), aware; one
    written by hand with an offset, in UTC."""
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
