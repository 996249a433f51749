"""The queue's storage verbs: the only code that reads or writes the jobs tables.

Each verb either runs in the caller's transaction (``connection=``: a
SQLAlchemy Connection or Session, never committed here) or in a short
transaction of its own, retried on deadlocks and lock-wait timeouts.

Every write about a reserved job matches on its id *and* the reservation's
token (``reserved_by``): a worker whose lease expired, and whose job another
worker has since reserved, changes nothing (DESIGN §2.3, fenced leases).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple, TypeAlias, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import SchemaOutdated
from .dialects import READ_ONLY, Dialect, ReservedRow, dialect_for
from .engine import connect, describe, tables_missing, translate
from .fastinsert import FastInsert
from .schema import REVISION, Tables, build_tables, version_table

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

T = TypeVar("T")
Executor: TypeAlias = "Connection | Session"

_MAX_TRIES = 8
_IN_CHUNK = 500  # ids per IN (...) list: well under every server's parameter limit


class NewJob(NamedTuple):
    """A job to insert. ``delay`` counts from the database server's clock.

    With a ``unique_key`` the job is inserted only if no queued or running
    job holds that key (or its holder's ``unique_for`` seconds have passed).
    """

    queue: str
    job: str
    payload: str
    priority: int = 0
    delay: float = 0.0
    unique_key: str | None = None
    unique_for: float | None = None


class Lease(NamedTuple):
    """A reservation: the job's id and the token its worker holds it by."""

    id: int
    token: str


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a job failed, as failed_jobs records it."""

    exception_class: str
    message: str
    traceback: str


def _chunks(items: Sequence[T], size: int = _IN_CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _by_token(leases: Iterable[Lease]) -> Mapping[str, list[int]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for lease in leases:
        grouped[lease.token].append(lease.id)
    return grouped


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL characters, and an exception message may;
    # no driver can send a lone surrogate (from a job's "\ud800", say).
    value = value.replace("\x00", "\\x00")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode(errors="backslashreplace").decode()
    return value


def held_locks(locks: sa.Table, held: Sequence[tuple[str, str]]) -> sa.ColumnElement[bool]:
    """The cache_locks rows of these ``(key, owner)`` pairs."""
    return sa.tuple_(locks.c.key, locks.c.owner).in_(list(held))


class Store:
    """dbqueue's tables in one database, and the verbs that change them."""

    def __init__(self, engine: Engine, table_prefix: str = "",
                 autocommit_engine: Engine | None = None) -> None:
        self.engine = engine
        # Single INSERTs outside a caller's transaction commit by themselves.
        self.autocommit_engine = autocommit_engine or engine.execution_options(
            isolation_level="AUTOCOMMIT")
        self.prefix = table_prefix
        self.tables: Tables = build_tables(table_prefix)
        self._insert_one = self._build_insert()
        # Only an engine created in autocommit mode commits a raw connection's
        # statements; a per-connection option would not reach one.
        self._fast_push = FastInsert(autocommit_engine, self._insert_one) if (
            autocommit_engine is not None) else None

    def close(self) -> None:
        """Give back to the pool the connections kept open for lone dispatches."""
        if self._fast_push is not None:
            self._fast_push.close()

    @property
    def dialect(self) -> Dialect:
        return dialect_for(self.engine.dialect)

    # --- transactions -------------------------------------------------------

    def transaction(self, work: Callable[[Connection], T], *, read_only: bool = False,
                    single_statement: bool = False) -> T:
        """Run ``work`` in a transaction of its own, retrying deadlocks and lock timeouts.

        ``single_statement`` work runs on an autocommit connection: its one
        statement is its own transaction, committed without extra round trips.
        """

        def attempt() -> T:
            if single_statement and self.dialect.autocommit_single_statements:
                with connect(self.autocommit_engine) as connection:
                    return work(connection)
            with connect(self.engine) as connection:
                if read_only:
                    connection = connection.execution_options(**{READ_ONLY: True})
                with connection.begin():
                    return work(connection)

        return self._retrying(attempt)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        for number in range(1, _MAX_TRIES + 1):
            try:
                return attempt()
            except sa.exc.DBAPIError as exc:
                if number < _MAX_TRIES and self.dialect.is_retryable(exc):
                    # Short, growing, jittered pauses so that the transactions
                    # that collided do not collide again in lock-step.
                    time.sleep(random.uniform(0, 0.005 * 2**number))
                    continue
                raise translate(self.engine, exc, self.prefix) from exc
        raise AssertionError("unreachable")

    def read(self, work: Callable[[Connection], T]) -> T:
        """Run ``work``, which only reads, in a transaction of its own."""
        return self.transaction(work, read_only=True)

    def within(self, connection: Executor | None, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in the caller's transaction if given, else in one of our own."""
        if connection is None:
            return self.transaction(work)
        if not isinstance(connection, Connection):  # a Session: its transaction's connection
            connection = connection.connection()
        try:
            return work(connection)
        except sa.exc.DBAPIError as exc:
            raise translate(self.engine, exc, self.prefix) from exc

    def check_server(self) -> None:
        """Raise UnsupportedDatabase if the server cannot give dbqueue's guarantees."""
        with connect(self.engine) as connection:
            self.dialect.check_server(connection)

    def check_schema(self) -> None:
        """Raise NotMigrated unless the tables are at a revision this code works
        with (SchemaOutdated if they are merely too old).

        Newer ones pass: each migration keeps older code working, so during a
        rolling deploy the hosts still on the old code go on while one migrates.
        """
        version = sa.table(version_table(self.prefix), sa.column("version_num"))
        found = self.read(lambda c: c.execute(sa.select(version.c.version_num)).scalars().all())
        current = max(found, default=None)
        if current is None:
            raise tables_missing(self.engine, self.prefix)
        if current < REVISION:
            raise SchemaOutdated(
                f"the dbqueue tables in {describe(self.engine)} are at revision {current}, "
                f"but this dbqueue needs {REVISION} or newer; upgrade them with: dbqueue migrate")

    def now(self) -> datetime:
        """The database server's current time (UTC)."""
        return self.read(lambda c: c.execute(sa.select(self._now())).scalar_one())

    def _now(self) -> sa.ColumnElement[datetime]:
        return sa.type_coerce(self.dialect.now(), self.tables.jobs.c.created_at.type)

    # --- enqueue ------------------------------------------------------------

    def _build_insert(self) -> Callable[[], sa.Insert]:
        # Built on first use: the dialect (MariaDB or MySQL?) is known only
        # once the engine has connected.
        built: list[sa.Insert] = []

        def statement() -> sa.Insert:
            if not built:
                jobs = self.tables.jobs
                built.append(jobs.insert().values(
                    queue=sa.bindparam("queue"),
                    job=sa.bindparam("job"),
                    payload=sa.bindparam("payload"),
                    priority=sa.bindparam("priority"),
                    attempts=sa.literal_column("0"),
                    available_at=self.dialect.now_plus(sa.bindparam("delay", type_=sa.Float)),
                    created_at=self.dialect.now(),
                ))
            return built[0]

        return statement

    def push(self, job: NewJob, connection: Executor | None = None) -> int | None:
        """Insert one job and return its id (None: a unique job whose key is taken)."""
        if job.unique_key is not None:
            return self.within(connection, lambda c: self._push_unique(c, job))
        params = {"queue": job.queue, "job": job.job, "payload": job.payload,
                  "priority": job.priority, "delay": job.delay}

        def work(c: Connection) -> int:
            key = c.execute(self._insert_one(), params).inserted_primary_key
            assert key is not None
            return int(key[0])

        if connection is None:
            fast = self._fast_push
            if fast is not None and self.dialect.autocommit_single_statements:
                return self._retrying(lambda: fast(params))
            return self.transaction(work, single_statement=True)
        return self.within(connection, work)

    def _push_unique(self, c: Connection, job: NewJob) -> int | None:
        jobs, dialect = self.tables.jobs, self.dialect
        # A holder whose unique_for has passed gives its key up (it stays queued).
        c.execute(sa.update(jobs)
                  .where(jobs.c.unique_key == job.unique_key,
                         jobs.c.unique_expires_at <= dialect.now())
                  .values(unique_key=None, unique_expires_at=None))
        return dialect.insert_unique(c, jobs, {
            "queue": job.queue, "job": job.job, "payload": job.payload,
            "priority": job.priority, "attempts": 0,
            "available_at": dialect.now_plus(job.delay), "created_at": dialect.now(),
            "unique_key": job.unique_key,
            "unique_expires_at": None if job.unique_for is None else dialect.now_plus(
                job.unique_for),
        })

    def push_many(self, jobs: Sequence[NewJob], connection: Executor | None = None) -> int:
        """Insert many jobs with multi-row INSERTs; return how many were inserted.

        The server's clock is read once and every row's times are sent as plain
        values: PyMySQL turns an executemany into one multi-row INSERT only when
        every value is a placeholder. Unique jobs go one by one (one taken key
        must not fail the others).
        """
        if not jobs:
            return 0
        table = self.tables.jobs
        unique = [j for j in jobs if j.unique_key is not None]
        jobs = [j for j in jobs if j.unique_key is None]

        def work(c: Connection) -> int:
            pushed = sum(self._push_unique(c, j) is not None for j in unique)
            if not jobs:
                return pushed
            now = c.execute(sa.select(self._now())).scalar_one()
            rows = [
                {"queue": j.queue, "job": j.job, "payload": j.payload, "priority": j.priority,
                 "attempts": 0, "created_at": now,
                 "available_at": now + timedelta(seconds=j.delay) if j.delay else now}
                for j in jobs
            ]
            self.dialect.insert_many(c, table, rows)
            return pushed + len(rows)

        return self.within(connection, work)

    # --- the worker's verbs -----------------------------------------------

    def reserve(self, queues: Sequence[str], limit: int, token: str,
                lease: float) -> list[ReservedRow]:
        """Reserve up to ``limit`` jobs, taking the queues in the order given.

        Each job gets a lease of ``lease`` seconds under ``token``; until the
        lease expires no other worker can reserve it. No attempt is counted:
        a job that never starts (the worker died first) comes back as it was.
        """

        def work(c: Connection) -> list[ReservedRow]:
            taken: list[ReservedRow] = []
            for queue in queues:
                if len(taken) >= limit:
                    break
                taken += self.dialect.reserve(c, self.tables.jobs, queue, limit - len(taken),
                                              token, lease)
            return taken

        return self.transaction(work)

    def heartbeat(self, leases: Iterable[Lease], lease: float) -> set[int]:
        """Renew the leases still held; return the ids of their jobs.

        A job missing from the answer was taken by another worker after its
        lease ran out (this worker stalled): it must not be started here.
        """
        jobs = self.tables.jobs
        statement = sa.update(jobs).values(reserved_at=self.dialect.now(),
                                           available_at=self.dialect.now_plus(lease))
        held_chunks = self._held(leases)

        def work(c: Connection) -> set[int]:
            renewed: set[int] = set()  # afresh on each try: a retried transaction starts over
            for held, ids in held_chunks:
                if c.execute(statement.where(held)).rowcount == len(ids):
                    renewed.update(ids)
                else:  # rare: ask which are still ours (the rows locked just now)
                    renewed.update(c.execute(sa.select(jobs.c.id).where(held)).scalars())
            return renewed

        return self.transaction(work)

    def complete(self, leases: Iterable[Lease], unlock: Sequence[tuple[str, str]] = (),
                 started: Sequence[tuple[Lease, int]] = ()) -> int:
        """Delete completed jobs still held under their leases; return how many.

        In the same transaction, free the ``(key, owner)`` locks in ``unlock``
        (the locks the worker took for these jobs and for others that ended),
        and count the attempt of each ``(lease, attempt)`` in ``started``: jobs
        that have run a while, so that a crash of the worker from now on costs
        them that attempt (a job only reserved costs none).
        """
        locks = self.tables.cache_locks

        def also(c: Connection) -> None:
            for chunk in _chunks(unlock):
                c.execute(sa.delete(locks).where(held_locks(locks, chunk)))
            self._count_attempts(c, started)

        return self._for_leases(leases, lambda held: sa.delete(self.tables.jobs).where(held),
                                also=also if unlock or started else None)

    def _count_attempts(self, c: Connection, started: Sequence[tuple[Lease, int]]) -> None:
        by_attempt: dict[int, list[Lease]] = defaultdict(list)
        for lease, attempt in started:
            by_attempt[attempt].append(lease)
        for attempt, leases in by_attempt.items():
            for held, _ in self._held(leases):
                c.execute(sa.update(self.tables.jobs).where(held)
                          .values(attempts=_attempts(attempt)))

    def _held(self, leases: Iterable[Lease]) -> list[tuple[sa.ColumnElement[bool], Sequence[int]]]:
        """Conditions matching the jobs still held under ``leases`` (by token and
        id), a chunk of ids each, with their ids."""
        jobs = self.tables.jobs
        return [(sa.and_(jobs.c.reserved_by == token, self.dialect.one_of(jobs.c.id, chunk)),
                 chunk)
                for token, ids in _by_token(leases).items() for chunk in _chunks(ids)]

    def _for_leases(self, leases: Iterable[Lease],
                    statement: Callable[[sa.ColumnElement[bool]], sa.Executable],
                    also: Callable[[Connection], None] | None = None) -> int:
        """Run ``statement(held)`` over the jobs still held under ``leases``, where
        ``held`` matches them by id and token, in one transaction, with ``also``;
        return the rows it touched."""
        held_chunks = self._held(leases)
        if not held_chunks and also is None:
            return 0

        def work(c: Connection) -> int:
            if also is not None:
                also(c)
            return sum(c.execute(statement(held)).rowcount  # type: ignore[attr-defined]
                       for held, _ in held_chunks)

        return self.transaction(work)

    def release(self, lease: Lease, delay: float, attempts: int) -> bool:
        """Put a reserved job back, available after ``delay`` seconds, with
        ``attempts`` attempts counted (its attempt's number if that attempt
        counts, one less if not: a release by the job, a job put back unrun).

        Returns False when the lease was lost (the job is someone else's now).
        """
        jobs = self.tables.jobs
        statement = (
            sa.update(jobs)
            .where(jobs.c.id == lease.id, jobs.c.reserved_by == lease.token)
            .values(reserved_by=None, reserved_at=None,
                    available_at=self.dialect.now_plus(delay), attempts=_attempts(attempts))
        )
        return self.transaction(lambda c: c.execute(statement).rowcount == 1)

    def drop_unique_keys(self, leases: Iterable[Lease]) -> int:
        """Free the unique keys of jobs that have started (``unique_until="processing"``)."""
        return self._for_leases(leases, lambda held: sa.update(self.tables.jobs).where(held)
                                .values(unique_key=None, unique_expires_at=None))

    def release_all(self, leases: Iterable[Lease]) -> int:
        """Give back jobs reserved but never started (a worker stopping): available
        now, as they were."""
        jobs = self.tables.jobs
        return self._for_leases(leases, lambda held: sa.update(jobs).where(held).values(
            reserved_by=None, reserved_at=None, available_at=self.dialect.now()))

    def fail(self, job: ReservedRow, token: str, failure: Failure, worker: str,
             attempts: int | None = None) -> bool:
        """Move a reserved job to failed_jobs, in one transaction, with ``attempts``
        (default: the number of the attempt it was reserved for).

        Returns False, and writes nothing, when the lease was lost.
        """
        jobs, failed = self.tables.jobs, self.tables.failed_jobs

        def work(c: Connection) -> bool:
            deleted = c.execute(
                sa.delete(jobs).where(jobs.c.id == job.id, jobs.c.reserved_by == token)
            ).rowcount
            if deleted != 1:
                return False
            c.execute(failed.insert().values(
                uuid=str(uuid.uuid4()), job_id=job.id, queue=job.queue, job=job.job,
                priority=job.priority, payload=job.payload,
                attempts=_attempts(job.attempts if attempts is None else attempts),
                exception_class=_text(failure.exception_class)[:255],
                exception_message=_text(failure.message), exception=_text(failure.traceback),
                failed_at=self.dialect.now(), worker=worker[:255],
            ))
            return True

        return self.transaction(work)


_MAX_ATTEMPTS = 2**31 - 1  # an INTEGER column


def _attempts(value: int) -> int:
    """An attempt count the column can hold: a row someone set to the largest
    INTEGER runs (with tries=None) without its count overflowing."""
    return max(0, min(value, _MAX_ATTEMPTS))
