"""The dialect seam: what differs between PostgreSQL, MySQL/MariaDB and SQLite.

The base class speaks the common SQL (PostgreSQL's, mostly); each backend
overrides a few hooks and says in a comment why. Nothing outside this package
asks which database it is talking to.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .rows import RESERVED_COLUMNS, ReservedRow
from .support import Notices

_claim_order = operator.attrgetter("priority", "id")  # in C: a sort key per reserved row
BULK_ROWS = 1000  # rows per INSERT of a bulk enqueue
READ_ONLY = "dbqueue_read_only"
"""Execution option marking a transaction that only reads (see Store.read)."""


def seconds_expression(seconds: float | sa.ColumnElement[float]) -> sa.ColumnElement[float]:
    if isinstance(seconds, sa.ColumnElement):
        return seconds
    return sa.bindparam("seconds", float(seconds), type_=sa.Float, unique=True)


_CLAIMS_KEPT = 1024  # claim statements a dialect keeps built (see Dialect._claim)
LOCK_WAITS_RETRIED_WITHIN = 1.0
"""Seconds: a lock wait that gave up sooner (a collision that passes) is tried
again; a longer one met a transaction not about to end, and would wait again."""


class Dialect:
    """PostgreSQL-flavoured defaults; subclasses override what their server does differently."""

    name: ClassVar[str] = "generic"
    aware_timestamps: ClassVar[bool] = False
    supports_returning_update: ClassVar[bool] = True
    skip_locked: ClassVar[bool] = True
    autocommit_single_statements: ClassVar[bool] = True
    """Run a lone INSERT on an autocommit connection: one round trip, not three."""
    insert_id_from_cursor: ClassVar[bool] = False
    """The driver reports a lone INSERT's id (``cursor.lastrowid``), sparing the
    result set of ``RETURNING``."""
    single_writer: ClassVar[bool] = False
    """One write transaction at a time for the whole database (SQLite): never
    keep one open while the same process may need another."""
    isolation: ClassVar[str | None] = "READ COMMITTED"
    """The isolation dbqueue's transactions are written for (None: the only one)."""
    locks_on_duplicate: ClassVar[bool] = False
    """An INSERT refused for a duplicate key locks the existing row's key until
    the transaction ends (InnoDB's shared lock; see store.uniquejobs)."""
    isolation_variable: ClassVar[str | None] = None
    """The server variable that says a session's isolation (see store.uniquejobs)."""
    embedded: ClassVar[bool] = False
    """The database is a file this process opens, not a server over a network:
    no idle connection can be cut, and a failure to connect is about the file."""

    # --- engine -----------------------------------------------------------

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for ``create_engine`` when dbqueue creates the engine itself."""
        return {}

    def listen(self, engine: Engine, channel: str) -> Notices | None:
        """A connection of its own that hears of new jobs on ``channel``, or
        None where the server cannot tell (workers then poll)."""
        return None

    announces: ClassVar[bool] = False
    """Whether ``announce`` tells listening workers anything (see ``listen``)."""

    def announce(self, connection: Connection, channel: str, queues: set[str]) -> None:
        """Tell the workers listening on ``channel``, once ``connection``'s
        transaction commits, that ``queues`` have jobs ready (jobs put back,
        which no INSERT announces)."""

    def autocommits(self, dbapi_connection: Any) -> bool:
        """Whether the driver's connection commits each statement by itself, by
        the driver's own state (False where it cannot tell)."""
        return False

    def prepare_engine(self, engine: Engine, network_timeout: float) -> None:
        """Install connection hooks on an engine dbqueue created: among them,
        those by which a connection whose network path died fails within about
        ``network_timeout`` seconds (see liveness.py)."""

    def limit_waits(self, engine: Engine, seconds: float) -> None:
        """For an engine whose transactions wait on nothing but the server (a
        worker's): have the server end a session that sits inside a
        transaction for longer than ``seconds``, so that a client cut off or
        stopped mid-way does not keep its locks (see liveness.py), and have
        its statements wait at most that long for a lock (the error is
        retried), so that one such session does not hold them up for good."""

    def check_server(self, connection: Connection) -> None:
        """Raise UnsupportedDatabase when the server cannot give dbqueue's guarantees."""

    def socket_of(self, dbapi_connection: Any) -> int | None:
        """The file descriptor of a driver's connection to its server (-1 once
        closed), None if the driver does not tell."""
        fileno = getattr(dbapi_connection, "fileno", None)
        if not callable(fileno):
            return None
        try:
            return int(fileno())
        except Exception:  # psycopg raises its own error once the connection is closed
            return -1

    # --- types and clock ----------------------------------------------------

    def timestamp_type(self) -> sa.types.TypeEngine[Any]:
        return sa.DateTime()

    def long_text_type(self) -> sa.types.TypeEngine[str]:
        return sa.Text()

    def now(self) -> sa.ColumnElement[datetime]:
        """The database server's current UTC time (DESIGN §2.6: one clock)."""
        raise NotImplementedError

    def now_plus(self, seconds: float | sa.ColumnElement[float]) -> sa.ColumnElement[datetime]:
        """The database server's UTC time plus ``seconds`` (a number or a SQL expression)."""
        raise NotImplementedError

    def now_default(self) -> sa.TextClause:
        """A server default for timestamp columns: the UTC time at insert."""
        raise NotImplementedError

    def one_of(self, column: sa.ColumnElement[Any],
               values: Sequence[Any]) -> sa.ColumnElement[bool]:
        """``column IN (values)``; here one bound parameter per value (PostgreSQL
        sends one array, MySQL writes ids into the statement)."""
        return column.in_(values)

    def one_of_selected(self, column: sa.ColumnElement[Any],
                        select: sa.Select[Any]) -> sa.ColumnElement[bool]:
        """``column IN (select)``, for a ``select`` of one column."""
        return column.in_(select.scalar_subquery())

    # --- reservation ----------------------------------------------------------

    def steer_claims(self, connection: Connection) -> None:
        """Set, for the rest of ``connection``'s transaction, what the plans of
        its claims (``reserve``) need whatever the server's statistics say."""

    def reserve(self, connection: Connection, jobs: sa.Table, queue: str, limit: int,
                token: str, lease: float) -> list[ReservedRow]:
        """Claim up to ``limit`` available jobs of ``queue``, first by (priority, id).

        Each claimed row gets ``reserved_by = token``, ``reserved_at = now`` and
        a lease until ``now + lease`` (kept in available_at); its attempts are
        left alone (see ReservedRow.attempts). The default is one statement:
        UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING
        (see ``one_of_selected`` for PostgreSQL's spelling of the IN).
        """
        statement = self._claim(jobs, queue, limit, lease)
        # .all(): one fetch for the batch, not one driver call per row.
        rows = self.reserved_rows(connection.execute(statement, {"token": token}).all())
        rows.sort(key=_claim_order)  # RETURNING order is unspecified
        return rows

    def reserved_rows(self, returned: Sequence[Any]) -> list[ReservedRow]:
        """The rows ``reserve_statement`` returned (``reserved_columns``), as ReservedRows."""
        # The attempt's number is counted here, in Python: a row someone set to
        # the largest INTEGER must not make the whole reservation overflow.
        return [ReservedRow(id_, queue_, job, payload, priority, attempts + 1, created, reserved)
                for id_, queue_, job, payload, priority, attempts, created, reserved in returned]

    def reserved_columns(self, jobs: sa.Table) -> list[sa.ColumnElement[Any]]:
        """What a reservation returns of each row, in the order of ReservedRow."""
        return [jobs.c[name] for name in RESERVED_COLUMNS]

    def _claim(self, jobs: sa.Table, queue: str, limit: int, lease: float) -> sa.Executable:
        """``reserve_statement`` with the token as the parameter ``token``: built
        once per shape, so that a reservation neither builds a statement nor
        computes its cache key (a worker asks a few hundred times a second)."""
        cache: dict[tuple[object, ...], sa.Executable] = self.__dict__.setdefault("_claims", {})
        key = (jobs, queue, limit, lease)
        statement = cache.get(key)
        if statement is None:
            if len(cache) >= _CLAIMS_KEPT:
                cache.clear()
            statement = cache[key] = self.reserve_statement(
                jobs, queue, limit, sa.bindparam("token", type_=sa.String), lease)
        return statement

    def reserve_statement(self, jobs: sa.Table, queue: str, limit: int,
                          token: str | sa.BindParameter[str], lease: float) -> sa.Executable:
        """The statement of ``reserve`` that picks and locks the rows (here it
        leases them too), as it is run: its plan is what a reservation costs."""
        candidates = self.claimable(jobs, queue, limit)
        if self.skip_locked:
            candidates = candidates.with_for_update(skip_locked=True)
        return (
            sa.update(jobs)
            .where(self.one_of_selected(jobs.c.id, candidates))
            .values(
                reserved_by=token,
                reserved_at=self.now(),
                available_at=self.now_plus(lease),
            )
            .returning(*self.reserved_columns(jobs))
        )

    def claimable(self, jobs: sa.Table, queue: str, limit: int) -> sa.Select[Any]:
        # A reserved job's lease expiry is its available_at, so "ready" and "lease
        # expired" are one condition, checked during the walk of the index
        # (queue, priority, id, available_at) in ORDER BY order: inside the
        # index, so jobs not yet due cost no row fetch, and the walk stops
        # after ``limit`` rows whatever the backlog.
        return (
            sa.select(jobs.c.id)
            .where(jobs.c.queue == queue, jobs.c.available_at <= self.now())
            .order_by(jobs.c.priority, jobs.c.id)
            .limit(limit)
        )

    def distinct_values(self, connection: Connection, column: sa.Column[Any]) -> list[Any]:
        """The distinct values of an indexed ``column``, in order."""
        return list(connection.execute(sa.select(column).distinct().order_by(column)).scalars())

    # --- bulk enqueue -------------------------------------------------------------

    def insert_many(self, connection: Connection, table: sa.Table,
                    rows: Sequence[dict[str, Any]]) -> None:
        """Insert ``rows`` (dicts with the same keys) in multi-row INSERTs."""
        for start in range(0, len(rows), BULK_ROWS):
            connection.execute(table.insert(), list(rows[start:start + BULK_ROWS]))

    # --- unique jobs --------------------------------------------------------------

    def insert_unique(self, connection: Connection, jobs: sa.Table,
                      values: dict[str, Any]) -> int | None:
        """Insert a job with a unique_key; None, and no error, if the key is taken."""
        row = self.insert_if_absent(connection, jobs, values, jobs.c.unique_key, jobs.c.id)
        return None if row is None else int(row)

    def insert_if_absent(self, connection: Connection, table: sa.Table, values: dict[str, Any],
                         key: sa.Column[Any], returning: sa.Column[Any]) -> Any:
        """Insert a row unless one with the same unique ``key`` exists; return the
        new row's ``returning`` column, or None when it existed.

        ON CONFLICT DO NOTHING rather than catching the duplicate-key error: on
        PostgreSQL that error would abort the caller's whole transaction. A
        concurrent insert of the same key waits for the other transaction to end.
        """
        statement = self.insert_if_absent_statement(table, values, key, returning)
        return self.run_insert_if_absent(connection, statement, {}, returning)

    def conflict_target(self, key: sa.Column[Any]) -> dict[str, Any]:
        """How ON CONFLICT names the unique index on ``key``."""
        return {"index_elements": [key]}

    def insert_if_absent_statement(self, table: sa.Table, values: dict[str, Any],
                                   key: sa.Column[Any], returning: sa.Column[Any]) -> Any:
        """The statement of ``insert_if_absent``, to build once (with bindparams)
        and run many times with ``run_insert_if_absent``."""
        return (self.upsert_module().insert(table).values(values)
                .on_conflict_do_nothing(**self.conflict_target(key)).returning(returning))

    def run_insert_if_absent(self, connection: Connection, statement: Any,
                             params: dict[str, Any], returning: sa.Column[Any]) -> Any:
        return connection.execute(statement, params).scalar()

    def insert_many_if_absent_statement(self, table: sa.Table, values: dict[str, Any],
                                        key: sa.Column[Any]) -> Any:
        """A statement that, run with a list of parameter sets, inserts the rows
        whose unique ``key`` is free, as one multi-row INSERT, and returns their
        keys; None where the server cannot say which rows it inserted."""
        return (self.upsert_module().insert(table).values(values)
                .on_conflict_do_nothing(**self.conflict_target(key)).returning(key))

    def increment(self, connection: Connection, table: sa.Table, key: sa.Column[Any],
                  value: str, counter: sa.Column[Any]) -> None:
        """Add one to ``counter`` in the row ``key = value``, creating it at 1."""
        insert = self.upsert_module().insert(table).values({key.name: value, counter.name: 1})
        connection.execute(insert.on_conflict_do_update(
            **self.conflict_target(key), set_={counter.name: counter + 1}))

    # --- locks ------------------------------------------------------------------

    def upsert_module(self) -> Any:
        """The SQLAlchemy dialect module whose insert() has on_conflict_do_update."""
        from sqlalchemy.dialects import postgresql

        return postgresql

    def acquire_locks(self, connection: Connection, locks: sa.Table,
                      wanted: Sequence[tuple[str, str, float]]) -> set[str]:
        """Take each ``(key, owner, ttl)`` if the key is free, its holder's time ran
        out, or that owner holds it already (then its expiry is renewed); return
        the keys taken. The keys must be distinct.

        One statement: INSERT, or on conflict take over the row only where it
        has expired or is ours; RETURNING names the keys taken.
        """
        insert = self.upsert_module().insert(locks)
        statement = insert.on_conflict_do_update(
            index_elements=[locks.c.key],
            set_={"owner": insert.excluded.owner, "expires_at": insert.excluded.expires_at},
            where=(locks.c.expires_at <= self.now()) | (locks.c.owner == insert.excluded.owner),
        ).returning(locks.c.key)
        return set(connection.execute(statement, self.lock_values(connection, locks, wanted))
                   .scalars())

    def compared_key(self, key: str) -> str:
        """``key`` as the server compares it (a keyed row may hold another spelling)."""
        return key

    def lock_values(self, connection: Connection, locks: sa.Table,
                  wanted: Sequence[tuple[str, str, float]]) -> list[dict[str, Any]]:
        """Rows for ``wanted`` locks, their expiry as plain values from the server's
        clock: an executemany of plain values is sent as one multi-row INSERT."""
        now = connection.execute(
            sa.select(sa.type_coerce(self.now(), locks.c.expires_at.type))).scalar_one()
        return [{"key": key, "owner": owner, "expires_at": now + timedelta(seconds=ttl)}
                for key, owner, ttl in wanted]

    # --- errors ---------------------------------------------------------------

    def is_retryable(self, error: BaseException, waited: float = 0.0) -> bool:
        """True for errors that running the transaction again can cure (it took ``waited`` s)."""
        return False

    def is_refusal(self, error: BaseException) -> bool:
        """True for a refusal of the statement that the driver files as operational."""
        return False

    def is_lock_wait(self, error: BaseException) -> bool:
        """True for a lock wait the server gave up on (its lock timeout)."""
        return False

    def closes_after(self, error: BaseException) -> bool:
        """True for a refusal after which the server closes the connection."""
        return False

    def refuses_data(self, error: BaseException) -> bool:
        """True when the server refused the values a statement carries, not the statement."""
        return False

    def unavailable_hint(self, error: BaseException) -> str:
        """What to do about an error that passes (see ``is_retryable``)."""
        return "try again once it answers"

    def is_missing_table(self, error: BaseException) -> bool:
        return False

    def refuses_login(self, error: BaseException) -> bool:
        """True for a connect error the server answered: bad credentials, no database."""
        return False

    def is_missing_column(self, error: BaseException) -> bool:
        return False

    def statement_limit(self, connection: Connection) -> tuple[int, str] | None:
        """Where a statement over a size limit ends the connection instead of
        being refused (the server stops reading, the driver reports the
        connection lost): the limit in bytes, as ``connection``'s session has
        it, and the setting's name. None where the server refuses it plainly."""
        return None

    def value_bytes(self, connection: Connection, text: str) -> int:
        """The bytes ``text`` takes as a value in a statement sent on ``connection``."""
        return len(text.encode())


def dialect_for(sa_dialect: sa.Dialect) -> Dialect:
    """The dbqueue dialect for a SQLAlchemy dialect (cached on it)."""
    cached = getattr(sa_dialect, "_dbqueue_dialect", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    from . import registry

    dialect = registry.lookup(sa_dialect)
    # Before the first connection SQLAlchemy cannot tell MariaDB from MySQL: there,
    # remember the answer only once the server has been seen (others at once: a
    # main engine that never connects must not cost a lookup per dispatch).
    if sa_dialect.name != "mysql" or sa_dialect.server_version_info is not None:
        sa_dialect._dbqueue_dialect = dialect  # type: ignore[attr-defined]
    return dialect
