"""PostgreSQL: the reference dialect; reservation is one UPDATE ... SKIP LOCKED ... RETURNING."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

from .base import LOCK_WAITS_RETRIED_WITHIN, Dialect, seconds_expression
from .liveness import libpq_options, server_probes
from .rows import ReservedRow, created_at
from .support import Notices, run_on_connect, server_too_old

# SQLSTATEs worth a fresh attempt of the whole transaction: a serialization
# failure, a deadlock; a lock not available, if it was not waited for long.
_RETRYABLE = {"40001", "40P01"}
_LOCK_NOT_AVAILABLE = "55P03"
_UNDEFINED_TABLE = "42P01"
# invalid authorization (28000, 28P01: wrong password), invalid catalog name
# (3D000: no such database).
_LOGIN_REFUSED = ("28", "3D000")
# psycopg gives no SQLSTATE for a failed connection: the server's own words
# (the last two: a bad setting in the URL's options, such as -c TimeZone=...).
_REFUSED_WORDS = re.compile(r"FATAL:\s+(password authentication failed|role \".*\" does not "
                            r"exist|database \".*\" does not exist|no pg_hba\.conf entry|"
                            r"invalid value for parameter|unrecognized configuration parameter)")
_UNDEFINED_COLUMN = "42703"


class PostgreSQL(Dialect):
    name: ClassVar[str] = "postgresql"
    aware_timestamps: ClassVar[bool] = True

    def autocommits(self, dbapi_connection: Any) -> bool:
        return getattr(dbapi_connection, "autocommit", False) is True

    def prepare_engine(self, engine: Engine, network_timeout: float) -> None:
        # Set by SQL, not in the startup packet's options: PgBouncer refuses
        # a startup parameter it does not know. What the URL's own
        # ?options=-c ... sets is left to it.
        mine = ",".join(f"set_config('{name}', '{value}', false)"
                        for name, value in server_probes(network_timeout).items()
                        if name not in str(engine.url.query.get("options", "")))
        if mine:
            run_on_connect(engine, lambda _connection: f"SELECT {mine}")
        if engine.dialect.driver not in ("psycopg", "psycopg2"):  # not libpq's parameters
            return
        defaults = libpq_options(network_timeout)

        @event.listens_for(engine, "do_connect")
        def _liveness(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
            for name, value in defaults.items():
                params.setdefault(name, value)  # the URL's own ?keepalives_idle=... wins

    def limit_waits(self, engine: Engine, seconds: float) -> None:
        milliseconds = math.ceil(seconds * 1000)
        run_on_connect(engine, lambda _connection: (
            f"SELECT set_config('idle_in_transaction_session_timeout', '{milliseconds}', false),"
            f" set_config('lock_timeout', '{milliseconds}', false)"))

    def check_server(self, connection: Connection) -> None:
        number = int(connection.exec_driver_sql("SHOW server_version_num").scalar_one())
        if number < 130000:
            version = connection.exec_driver_sql("SHOW server_version").scalar_one()
            raise server_too_old("PostgreSQL", version, "13", "the oldest release still supported")

    def timestamp_type(self) -> sa.types.TypeEngine[Any]:
        return sa.DateTime(timezone=True)

    announces: ClassVar[bool] = True

    def announce(self, connection: Connection, channel: str, queues: set[str]) -> None:
        # As the jobs table's INSERT trigger does (see migration 0007).
        for queue in sorted(queues):
            connection.execute(sa.select(sa.func.pg_notify(channel, queue)))

    def listen(self, engine: sa.Engine, channel: str) -> Notices | None:
        # Revision 0007's trigger notifies on the jobs table's name when a
        # committed INSERT made jobs ready. Other drivers than psycopg 3.2 or
        # newer (notifies(timeout=...)) poll: psycopg2 has no such call.
        if not _notifies_without_waiting(engine.dialect.driver):
            return None
        connection = engine.raw_connection()
        driver: Any = connection.driver_connection
        try:
            driver.autocommit = True
            driver.execute(f"LISTEN {engine.dialect.identifier_preparer.quote(channel)}")
        except BaseException:
            connection.invalidate()
            raise
        return _Listener(connection)

    def now(self) -> sa.ColumnElement[datetime]:
        # now() is the transaction's start time: every row a transaction writes
        # carries the same instant, and it is the server's clock.
        return sa.func.now(type_=sa.DateTime(timezone=True))

    def now_plus(self, seconds: float | sa.ColumnElement[float]) -> sa.ColumnElement[datetime]:
        # The zeros are SQL text, not parameters: a lone dispatch, which runs
        # this, then sends and converts only its own values.
        zero: sa.ColumnElement[int] = sa.literal_column("0", sa.Integer)
        interval = sa.func.make_interval(
            zero, zero, zero, zero, zero, zero, sa.cast(seconds_expression(seconds), sa.Float)
        )
        return sa.type_coerce(self.now() + interval, sa.DateTime(timezone=True))

    def now_default(self) -> sa.TextClause:
        return sa.text("now()")

    def one_of(self, column: sa.ColumnElement[Any],
               values: Sequence[Any]) -> sa.ColumnElement[bool]:
        # One array parameter instead of one per value: the statement's text is
        # then the same for any number of ids, so neither SQLAlchemy nor psycopg
        # builds and parses a new one for every batch of completions. Ids go
        # as the array's text, which the server parses: psycopg would dump a
        # list element by element in Python, six times slower (a worker sends
        # every job's id this way, from the thread that shares its GIL).
        values = list(values)
        if all(type(value) is int for value in values):
            text = sa.literal("{" + ",".join(map(str, values)) + "}", sa.Text)
            return column == sa.any_(sa.cast(text, postgresql.ARRAY(column.type)))
        return column == sa.any_(sa.literal(values, postgresql.ARRAY(column.type)))

    def conflict_target(self, key: sa.Column[Any]) -> dict[str, Any]:
        # With the condition that a partial unique index on ``key`` would have
        # (``key IS NOT NULL``): inference needs it to use such an index, and
        # a full unique index satisfies it too. So the code that sends it
        # works before and after jobs.unique_key's index is made partial,
        # which would spare every update of a job without a key an index
        # entry; the migration that does so must wait until no code without
        # this condition runs against the tables.
        return {"index_elements": [key], "index_where": key.isnot(None)}

    def steer_claims(self, connection: Connection) -> None:
        # A claim must walk the ready index in its order and stop after LIMIT
        # rows. A jobs table with no statistics (never analyzed, or analyzed
        # while empty, as autovacuum often finds a drained queue) makes the
        # planner expect a few dozen ready rows, and for a large LIMIT it then
        # prefers to fetch every ready row by a bitmap scan and sort them all:
        # 250 ms per claim of 5,000 among 200,000 ready jobs instead of 55 ms,
        # growing with the backlog, until the next ANALYZE. No sort, no such
        # plan; SET LOCAL ends with the transaction.
        connection.exec_driver_sql("SET LOCAL enable_sort = off")

    def reserved_columns(self, jobs: sa.Table) -> list[sa.ColumnElement[Any]]:
        # The two times as microseconds since the epoch: psycopg reads an
        # integer in C, and one C call makes it a UTC datetime (exact to the
        # microsecond until the year 2242). A timestamptz costs psycopg a
        # conversion to the session's time zone, and UtcDateTime another back
        # to UTC: 2.8 µs a row against 0.7. An integer, not date_part's double:
        # how many digits the server prints of a double depends on the
        # session's extra_float_digits.
        *columns, created, reserved = super().reserved_columns(jobs)
        return [*columns, _microseconds(created, kept=True), _microseconds(reserved)]

    def reserved_rows(self, returned: Sequence[Any]) -> list[ReservedRow]:
        rows = []
        clock: dict[int, datetime] = {}  # one statement, one now(): converted once
        for id_, queue, job, payload, priority, attempts, created, reserved_us in returned:
            reserved = clock.get(reserved_us)
            if reserved is None:
                reserved = clock[reserved_us] = _from_microseconds(reserved_us)
            rows.append(ReservedRow(id_, queue, job, payload, priority, attempts + 1,
                                    created_at(_from_microseconds, created),
                                    reserved))
        return rows

    def one_of_selected(self, column: sa.ColumnElement[Any],
                        select: sa.Select[Any]) -> sa.ColumnElement[bool]:
        # = ANY(ARRAY(SELECT ...)), not IN (SELECT ...): the planner makes IN a
        # semi-join, and when it expects the SELECT to give many rows (a batch
        # of 500 from 20,000 jobs; in a prepared statement's generic plan, a
        # tenth of the table at any LIMIT) it hashes them against a sequential
        # scan of the whole table. ARRAY(...) runs once, before the rest, and
        # = ANY of it is a primary key lookup per id, whatever the estimates.
        return column == sa.any_(sa.func.array(select.scalar_subquery()))

    def distinct_values(self, connection: Connection, column: sa.Column[Any]) -> list[Any]:
        # PostgreSQL has no skip scan: DISTINCT would read the whole index. A
        # recursive query jumps from each value to the next in one index probe,
        # so a backlog of a million rows in three queues costs three probes.
        table = connection.dialect.identifier_preparer.format_table(column.table)
        name = connection.dialect.identifier_preparer.quote(column.name)
        return list(connection.exec_driver_sql(
            f"WITH RECURSIVE v AS ((SELECT {name} AS value FROM {table} ORDER BY {name} LIMIT 1)"
            f" UNION ALL SELECT (SELECT {name} FROM {table} WHERE {name} > v.value"
            f" ORDER BY {name} LIMIT 1) FROM v WHERE v.value IS NOT NULL)"
            " SELECT value FROM v WHERE value IS NOT NULL").scalars())

    def is_retryable(self, error: BaseException, waited: float = 0.0) -> bool:
        sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None)
        return sqlstate in _RETRYABLE or (sqlstate == _LOCK_NOT_AVAILABLE
                                          and waited < LOCK_WAITS_RETRIED_WITHIN)

    def is_lock_wait(self, error: BaseException) -> bool:
        return getattr(getattr(error, "orig", None), "sqlstate", None) == _LOCK_NOT_AVAILABLE

    def is_refusal(self, error: BaseException) -> bool:
        # psycopg files class 54 (program limit exceeded: a row too large to
        # index, a statement too complex) with the outages, as OperationalError.
        state = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
        return state[:2] == "54"

    def refuses_login(self, error: BaseException) -> bool:
        sqlstate = getattr(error, "sqlstate", None) or ""
        return sqlstate.startswith(_LOGIN_REFUSED) or bool(_REFUSED_WORDS.search(str(error)))

    def is_missing_table(self, error: BaseException) -> bool:
        return getattr(getattr(error, "orig", None), "sqlstate", None) == _UNDEFINED_TABLE

    def is_missing_column(self, error: BaseException) -> bool:
        return getattr(getattr(error, "orig", None), "sqlstate", None) == _UNDEFINED_COLUMN

    def refuses_data(self, error: BaseException) -> bool:
        # Class 22, data exception (a value too long, text with NUL); 54,
        # program limit exceeded (a row too large to index).
        state = getattr(getattr(error, "orig", None), "sqlstate", None) or ""
        return state[:2] in ("22", "54")


def _notifies_without_waiting(driver: str) -> bool:
    if driver != "psycopg":
        return False
    import psycopg

    major, minor = (int(part) for part in psycopg.__version__.split(".")[:2])
    return (major, minor) >= (3, 2)


class _Listener:
    """A pooled connection taken out of the pool for LISTEN (see Notices)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.driver = connection.driver_connection

    def fileno(self) -> int:
        return int(self.driver.fileno())

    def received(self) -> set[str]:
        return {notice.payload for notice in self.driver.notifies(timeout=0)}

    def close(self) -> None:
        # Not back to the pool: it is still LISTENing.
        self.connection.invalidate()


def _microseconds(column: sa.ColumnElement[Any], *,
                  kept: bool = False) -> sa.ColumnElement[int]:
    # date_part gives the seconds as a double, from the stored microseconds:
    # times a million and rounded, they come back exactly. SQL text, not
    # parameters: the claim's text stays the same. ``kept`` from year 1 to
    # 10000 (Python's years, and then some), for a value a person may have
    # written: 'infinity' would not fit a bigint and fail the whole
    # reservation ('-infinity' reads as year 1, a year past 9999 as
    # rows.LONG_AGO: see rows.created_at).
    seconds = sa.func.date_part(sa.literal_column("'epoch'"), column)
    if kept:
        seconds = sa.func.greatest(sa.func.least(seconds, sa.literal_column("253402300800")),
                                   sa.literal_column("-62135596800"))
    return sa.cast(sa.func.round(seconds * sa.literal_column("1000000")),
                   sa.BigInteger).label(column.key)


def _from_microseconds(microseconds: int) -> datetime:
    return datetime.fromtimestamp(microseconds / 1e6, UTC)
