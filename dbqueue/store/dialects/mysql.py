"""MySQL 8 and MariaDB: no UPDATE ... RETURNING, so reservation is SELECT ... FOR
UPDATE SKIP LOCKED followed by an UPDATE of the locked ids, in one short transaction."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from .base import LOCK_WAITS_RETRIED_WITHIN, Dialect, seconds_expression
from .liveness import keep_alive
from .mysqlbulk import PACKET_LIMIT, insert_literal_rows
from .rows import RESERVED_COLUMNS, ReservedRow, created_at
from .support import run_on_connect, server_too_old

_HANDSHAKE_ONLY = "dbqueue_handshake_read_timeout"
"""Marks a connection whose read timeout dbqueue set for its handshake."""
_DEADLOCK, _LOCK_WAIT_TIMEOUT = 1213, 1205
_LOCK_NOT_TAKEN = (_LOCK_WAIT_TIMEOUT, 3572)  # MySQL's NOWAIT says 3572; MariaDB's 1205
_NO_SUCH_TABLE = 1146
_NO_SUCH_COLUMN = 1054
_PACKET_TOO_LARGE = 1153  # a statement longer than the server's max_allowed_packet
# The values a statement carries refused: too large a statement, a value too
# long for its column, text the column's character set cannot hold.
_DATA_REFUSED = frozenset({_PACKET_TOO_LARGE, 1406, 1366, 1300})
_DUPLICATE_KEY = 1062
# No access to the database (1044), wrong user or password (1045, and 1698
# from MariaDB), no such database (1049).
_LOGIN_REFUSED = (1044, 1045, 1049, 1698)
# Server errors that pass: too many connections or threads, out of memory, a
# shutdown, a network error or timeout, a lock wait or deadlock, a session or
# query killed, the read-only moment of a failover, an idle session closed.
# PyMySQL raises every server error it has no class for as OperationalError,
# the class of the outages: the others (an unknown variable, a table or
# column not granted) are refusals, which waiting does not cure.
_PASSING = frozenset({1037, 1040, 1041, 1053, 1077, 1135, 1152, 1158, 1159, 1160, 1161,
                      1203, 1205, 1213, 1226, 1290, 1317, 1792, 1836, 1927, 3024, 3572, 4031})


def _errno(error: BaseException) -> int | None:
    """The server's error number, from SQLAlchemy's error or the driver's."""
    args = getattr(getattr(error, "orig", error), "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _version_tuple(text: str) -> tuple[int, ...]:
    # MariaDB behind some proxies reports "5.5.5-10.11.6-MariaDB": the real
    # version follows the "5.5.5-" compatibility prefix.
    text = text.removeprefix("5.5.5-")
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


class MySQL(Dialect):
    name: ClassVar[str] = "mysql"
    supports_returning_update: ClassVar[bool] = False
    locks_on_duplicate: ClassVar[bool] = True
    isolation_variable: ClassVar[str | None] = "@@transaction_isolation"
    insert_id_from_cursor: ClassVar[bool] = True  # in the OK packet: no result set to parse
    server_name: ClassVar[str] = "MySQL"
    # 8.0.1 brought SKIP LOCKED; 8.0.13 brought expression defaults, which the
    # schema needs for UTC_TIMESTAMP() defaults on timestamp columns.
    minimum: ClassVar[tuple[int, ...]] = (8, 0, 13)
    minimum_why: ClassVar[str] = (
        "FOR UPDATE SKIP LOCKED came in 8.0.1 and UTC expression defaults in 8.0.13"
    )

    def engine_options(self) -> dict[str, Any]:
        # READ COMMITTED takes no gap locks: the reserving transaction runs
        # faster and deadlocks less than under the default REPEATABLE READ.
        return {**super().engine_options(), "isolation_level": self.isolation}

    def autocommits(self, dbapi_connection: Any) -> bool:
        # PyMySQL and mysqlclient both keep the server's autocommit flag as
        # its last answer reported it.
        get_autocommit = getattr(dbapi_connection, "get_autocommit", None)
        return bool(get_autocommit()) if callable(get_autocommit) else False

    def prepare_engine(self, engine: Engine, network_timeout: float) -> None:
        @event.listens_for(engine, "handle_error")
        def _closed_after_refusal(context: sa.engine.ExceptionContext) -> None:
            # After a statement over max_allowed_packet the server sends its
            # error and closes the connection, which the driver does not take
            # for a disconnect: unless it is dropped here, the pool hands it to
            # the next statement, which fails with a lost connection. Only this
            # one: the others are sound.
            if self.closes_after(context.original_exception):
                context.is_disconnect = True
                context.invalidate_pool_on_disconnect = False

        if engine.dialect.driver != "pymysql":
            return

        @event.listens_for(engine, "do_connect")
        def _connect_timeout(_dialect: Any, record: Any, _args: Any,
                             params: dict[str, Any]) -> None:
            # The URL's own ?connect_timeout= wins; PyMySQL takes at most a year.
            params.setdefault("connect_timeout", min(math.ceil(network_timeout), 31_536_000))
            # PyMySQL's connect_timeout bounds the TCP handshake only. The
            # server's greeting and the login are read on a socket with no
            # probes yet (see below), so a path that goes dark in between
            # leaves them waiting for ever. A read timeout bounds them too;
            # it is lifted once connected, where a statement may take as long
            # as it needs (the probes watch the path then).
            if "read_timeout" not in params:
                params["read_timeout"] = params["connect_timeout"]
                record.info[_HANDSHAKE_ONLY] = True

        @event.listens_for(engine, "connect", insert=True)  # before SQLAlchemy's first queries
        def _liveness(dbapi_connection: Any, record: Any) -> None:
            if record.info.pop(_HANDSHAKE_ONLY, False):
                dbapi_connection._read_timeout = None  # PyMySQL has no public setter
            # PyMySQL's parameters reach no keepalive setting: set the socket's.
            sock = getattr(dbapi_connection, "_sock", None)
            if sock is not None:
                keep_alive(sock, network_timeout)

    def limit_waits(self, engine: Engine, seconds: float) -> None:
        whole = max(1, math.ceil(seconds))
        # MySQL has no idle_transaction_timeout (its wait_timeout would end
        # idle sessions outside transactions too): there, only lock waits.
        run_on_connect(engine, lambda connection: (
            f"SET SESSION innodb_lock_wait_timeout = {whole}"
            + (f", idle_transaction_timeout = {whole}"
               if "mariadb" in str(connection.get_server_info()).lower() else "")))

    def socket_of(self, dbapi_connection: Any) -> int | None:
        if not hasattr(dbapi_connection, "_sock"):  # not PyMySQL: it does not tell
            return None
        sock = dbapi_connection._sock  # None once closed
        return -1 if sock is None else int(sock.fileno())

    def check_server(self, connection: Connection) -> None:
        version = str(connection.exec_driver_sql("SELECT VERSION()").scalar_one())
        if _version_tuple(version) < self.minimum:
            wanted = ".".join(map(str, self.minimum))
            raise server_too_old(self.server_name, version, wanted, self.minimum_why)

    def timestamp_type(self) -> sa.types.TypeEngine[Any]:
        return mysql.DATETIME(fsp=6)

    def long_text_type(self) -> sa.types.TypeEngine[str]:
        return mysql.LONGTEXT()  # TEXT stops at 64 KiB: too little for tracebacks and payloads

    def now(self) -> sa.ColumnElement[datetime]:
        # UTC_TIMESTAMP, not NOW(): NOW() follows the session time zone, which
        # differs between the application's connections and ours.
        return sa.func.utc_timestamp(sa.literal_column("6"), type_=mysql.DATETIME(fsp=6))

    def now_plus(self, seconds: float | sa.ColumnElement[float]) -> sa.ColumnElement[datetime]:
        micros = sa.func.round(seconds_expression(seconds) * sa.literal_column("1000000"))
        return sa.func.timestampadd(
            sa.literal_column("MICROSECOND"), micros, self.now(), type_=mysql.DATETIME(fsp=6)
        )

    def now_default(self) -> sa.TextClause:
        return sa.text("(UTC_TIMESTAMP(6))")

    def one_of(self, column: sa.ColumnElement[Any],
               values: Sequence[Any]) -> sa.ColumnElement[bool]:
        # Ids (every job a worker reserves and completes goes through here)
        # are written into the statement as it runs: as parameters, SQLAlchemy
        # rendered a placeholder for each and PyMySQL then escaped each, in
        # Python, about 3 µs an id. The statement stays one entry of the
        # compiled cache (written into its text, each list would be another).
        values = list(values)
        if values and all(type(value) is int for value in values):
            return column.in_(sa.bindparam("ids", values, expanding=True, literal_execute=True,
                                           unique=True))
        return column.in_(values)

    def reserve(self, connection: Connection, jobs: sa.Table, queue: str, limit: int,
                token: str, lease: float) -> list[ReservedRow]:
        # The locking SELECT also reads the server clock, so the UPDATE can write
        # the lease as plain values and nothing needs reading back: two round
        # trips, and the row locks held until commit keep them exact.
        locked = connection.execute(
            self.reserve_statement(jobs, queue, limit, token, lease)).all()
        if not locked:
            return []
        now = _utc(locked[0].now)
        connection.execute(
            sa.update(jobs)
            .where(self.one_of(jobs.c.id, [row[0] for row in locked]))
            .values(
                reserved_by=token,
                reserved_at=now,
                available_at=now + timedelta(seconds=lease),
            )
        )
        # Unpacked, not read by name: a few thousand rows a reservation.
        return [
            ReservedRow(id_, queue_, job, payload, priority, attempts + 1,
                        created_at(_utc, created), now)
            for id_, queue_, job, payload, priority, attempts, created, _ in locked
        ]

    def reserve_statement(self, jobs: sa.Table, queue: str, limit: int,
                          token: str | sa.BindParameter[str], lease: float) -> sa.Executable:
        # Only the locking SELECT: the UPDATE that follows names the locked ids.
        # The times come as text, which one C call makes a UTC datetime (see
        # _utc), and the clock, the same on every row, is read from the first.
        columns = [sa.cast(jobs.c[name], sa.String).label(name) if name == "created_at"
                   else jobs.c[name]
                   for name in RESERVED_COLUMNS if name != "reserved_at"]
        return (
            self.claimable(jobs, queue, limit)
            .with_only_columns(*columns, sa.cast(self.now(), sa.String).label("now"))
            .with_for_update(skip_locked=True)
        )

    def distinct_values(self, connection: Connection, column: sa.Column[Any]) -> list[Any]:
        # GROUP BY on an index's first column is a loose index scan here: one
        # probe per distinct value, however many rows share it.
        return list(connection.execute(sa.select(column).group_by(column).order_by(column))
                    .scalars())

    def insert_if_absent_statement(self, table: sa.Table, values: dict[str, Any],
                                   key: sa.Column[Any], returning: sa.Column[Any]) -> Any:
        return sa.insert(table).values(values)

    def run_insert_if_absent(self, connection: Connection, statement: Any,
                             params: dict[str, Any], returning: sa.Column[Any]) -> Any:
        # MySQL undoes only the failed statement on a duplicate key, so the
        # caller's transaction goes on; INSERT IGNORE would hide other errors.
        try:
            result = connection.execute(statement, params)
        except sa.exc.IntegrityError as exc:
            if _errno(exc) == _DUPLICATE_KEY:
                return None
            raise
        if returning is returning.table.autoincrement_column:
            return result.inserted_primary_key[0]  # type: ignore[index]
        # No RETURNING on MySQL: for any other column, True says "inserted"
        # (the callers only test the result against None).
        return True

    def insert_many_if_absent_statement(self, table: sa.Table, values: dict[str, Any],
                                        key: sa.Column[Any]) -> Any:
        return None  # MySQL has no INSERT ... RETURNING

    def increment(self, connection: Connection, table: sa.Table, key: sa.Column[Any],
                  value: str, counter: sa.Column[Any]) -> None:
        insert = mysql.insert(table).values({key.name: value, counter.name: 1})
        connection.execute(insert.on_duplicate_key_update({counter.name: counter + 1}))

    def acquire_locks(self, connection: Connection, locks: sa.Table,
                      wanted: Sequence[tuple[str, str, float]]) -> set[str]:
        # No conditional ON CONFLICT on MySQL: ON DUPLICATE KEY UPDATE keeps the
        # row as it is unless it has expired or is ours. Both columns take the
        # same condition, which reads the same whether the server assigns in
        # the order written (MySQL; owner, once assigned, is then ours) or all
        # at once (MariaDB's SIMULTANEOUS_ASSIGNMENT; owner is the old one): a
        # condition on the owner alone renewed a taken-over lock only in the
        # first, and a third worker took it over again in the second.
        # The row, locked by the upsert until commit, then says who holds it.
        # One multi-row VALUES list, not an executemany: PyMySQL folds only
        # "VALUES (...) ON DUPLICATE" into one statement, and MySQL 8.0.20+
        # is sent "VALUES (...) AS new ON DUPLICATE".
        insert = mysql.insert(locks).values(self.lock_values(connection, locks, wanted))
        ours = (locks.c.expires_at <= self.now()) | (locks.c.owner == insert.inserted.owner)
        connection.execute(insert.on_duplicate_key_update([
            ("owner", sa.func.if_(ours, insert.inserted.owner, locks.c.owner)),
            ("expires_at", sa.func.if_(ours, insert.inserted.expires_at, locks.c.expires_at)),
        ]))
        holders = dict(connection.execute(
            sa.select(locks.c.key, locks.c.owner)
            .where(locks.c.key.in_([key for key, _, _ in wanted]))).all())
        held = {self.compared_key(key): holder for key, holder in holders.items()}
        return {key for key, owner, _ in wanted if held.get(self.compared_key(key)) == owner}

    def compared_key(self, key: str) -> str:
        # utf8mb4_bin is a PAD SPACE collation: trailing spaces do not count.
        return key.rstrip(" ")

    def insert_many(self, connection: Connection, table: sa.Table,
                    rows: Sequence[dict[str, Any]]) -> None:
        if connection.dialect.driver != "pymysql" or not rows:
            super().insert_many(connection, table, rows)
            return
        insert_literal_rows(connection, table, rows, self.statement_limit(connection))

    def is_retryable(self, error: BaseException, waited: float = 0.0) -> bool:
        errno = _errno(error)
        return errno == _DEADLOCK or (errno in _LOCK_NOT_TAKEN
                                      and waited < LOCK_WAITS_RETRIED_WITHIN)

    def is_lock_wait(self, error: BaseException) -> bool:
        return _errno(error) in _LOCK_NOT_TAKEN

    def refuses_login(self, error: BaseException) -> bool:
        args: tuple[Any, ...] = getattr(error, "args", ())
        return bool(args) and args[0] in _LOGIN_REFUSED

    def is_refusal(self, error: BaseException) -> bool:
        errno = _errno(error)
        if errno is None or 2000 <= errno < 3000:  # the client's own: the connection's
            return False
        return errno >= 1000 and errno not in _PASSING and errno not in _LOGIN_REFUSED

    def closes_after(self, error: BaseException) -> bool:
        return _errno(error) == _PACKET_TOO_LARGE

    def is_missing_table(self, error: BaseException) -> bool:
        return _errno(error) == _NO_SUCH_TABLE

    def refuses_data(self, error: BaseException) -> bool:
        return _errno(error) in _DATA_REFUSED

    def is_missing_column(self, error: BaseException) -> bool:
        return _errno(error) == _NO_SUCH_COLUMN

    def statement_limit(self, connection: Connection) -> tuple[int, str] | None:
        # Just over it, the server answers 1153 and closes the connection; far
        # over it, it closes the connection while the client still writes,
        # which the driver reports as a connection lost (2006).
        limit = connection.info.get(PACKET_LIMIT)
        if limit is None:
            limit = connection.info[PACKET_LIMIT] = int(
                connection.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())
        return limit, "max_allowed_packet"

    def value_bytes(self, connection: Connection, text: str) -> int:
        # The driver sends a value as an escaped literal, escaped as the
        # session's sql_mode wants (NO_BACKSLASH_ESCAPES doubles quotes only).
        driver = connection.connection.dbapi_connection
        escape = getattr(driver, "escape", None)
        if escape is None:  # not PyMySQL: backslash escapes, the most there can be
            return len(text.encode()) + sum(map(text.count, "\\'\"\n\r\x00\x1a")) + 2
        return len(escape(text).encode(getattr(driver, "encoding", "utf-8")))


class MariaDB(MySQL):
    name: ClassVar[str] = "mariadb"
    isolation_variable: ClassVar[str | None] = "@@tx_isolation"  # its only name before 11.1
    server_name: ClassVar[str] = "MariaDB"
    # MariaDB numbers its releases apart from MySQL: SKIP LOCKED came in 10.6.
    minimum: ClassVar[tuple[int, ...]] = (10, 6, 0)
    minimum_why: ClassVar[str] = "FOR UPDATE SKIP LOCKED came in 10.6"

    def insert_many_if_absent_statement(self, table: sa.Table, values: dict[str, Any],
                                        key: sa.Column[Any]) -> Any:
        # IGNORE skips the rows whose key exists; RETURNING lists the others.
        return sa.insert(table).values(values).prefix_with("IGNORE").returning(key)


def _utc(text: str) -> datetime:
    """A DATETIME(6) of dbqueue's (UTC) read as text, as an aware datetime.

    PyMySQL converts a DATETIME in Python code (4 µs) and making the naive
    value aware costs 2 µs more: per reserved row, twice (its created_at, and
    the clock read beside it), about a third of what a reservation cost the
    supervisor's interpreter. This is one C call (0.2 µs)."""
    return datetime.fromisoformat(text + "+00:00")
