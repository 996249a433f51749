"""Queueing jobs: one, or many in multi-row INSERTs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import DatabaseError
from .dialects import dialect_for
from .fastinsert import FastInsert
from .transactions import Transactions
from .uniquejobs import push_unique
from .values import Executor, NewJob

# Characters: a payload longer than this is measured against the server's
# limit on a statement's size before it is sent (see _check_sizes).
_MEASURED_ABOVE = 100_000


class Dispatch(Transactions):
    """The verbs that queue jobs, in the caller's transaction or their own."""

    def __init__(self, engine: Engine, table_prefix: str = "",
                 autocommit_engine: Engine | None = None) -> None:
        super().__init__(engine, table_prefix, autocommit_engine)
        self._insert_one = self._build_insert()
        # Only an engine created in autocommit mode commits a raw connection's
        # statements; a per-connection option would not reach one.
        self._fast_push = FastInsert(autocommit_engine, self._insert_one) if (
            autocommit_engine is not None) else None

    def close(self) -> None:
        """Give back to the pool the connections kept open for lone dispatches."""
        if self._fast_push is not None:
            self._fast_push.close()

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
        """Insert one job and return its id (None: a unique job whose key is taken).

        In the caller's transaction with ``connection=``, else in one of its
        own; DatabaseError (DatabaseUnavailable) if the database refuses (or
        cannot be reached).
        """
        if connection is None and job.unique_key is None:
            fast = self._fast_push
            if fast is not None and self.dialect.autocommit_single_statements:
                if long := _long([job]):  # (here: the INSERT goes to this store's database)
                    self.read(lambda c: self._check_sizes(c, long))
                params = _params(job)
                return self._retrying(lambda: fast(params))
            return self.transaction(lambda c: self.insert_job(c, job), single_statement=True)
        callers = connection is not None
        return self.within(connection, lambda c: self.insert_job(c, job, callers=callers))

    def insert_job(self, c: Connection, job: NewJob, *, callers: bool = False) -> int | None:
        """push's work, in a transaction of the store's own that is open on ``c``
        (a driver's error is left to that transaction's retries), or in the
        caller's (``callers``)."""
        if long := _long([job]):
            self._check_sizes(c, long)
        if job.unique_key is not None:
            return push_unique(self, c, job, callers=callers)
        key = c.execute(self._insert_one(), _params(job)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def push_many(self, jobs: Sequence[NewJob], connection: Executor | None = None) -> int:
        """Insert many jobs with multi-row INSERTs; return how many were inserted.

        The server's clock is read once and every row's times are sent as plain
        values: PyMySQL turns an executemany into one multi-row INSERT only when
        every value is a placeholder. Unique jobs go one by one (one taken key
        must not fail the others).
        """
        if not jobs:
            if connection is not None:
                self.callers(connection)  # a wrong one is refused all the same
            return 0
        callers = connection is not None
        return self.within(connection, lambda c: self.insert_jobs(c, jobs, callers=callers))

    def _check_sizes(self, c: Connection, long: Sequence[NewJob]) -> None:
        """Refuse a job of ``long`` (see _long) whose INSERT the server ``c``
        is on would not read whole, where it would drop the connection instead
        of saying so (see the dialect's statement_limit): a retry could never
        help."""
        dialect = dialect_for(c.dialect)
        limited = dialect.statement_limit(c)
        if limited is None:
            return
        limit, setting = limited
        for job in long:
            # The rest of the statement: its text, and the other values (at
            # most 4 bytes a character, escaped or not).
            rest = 512 + 4 * (len(job.job) + len(job.queue) + len(job.unique_key or ""))
            size = dialect.value_bytes(c, job.payload) + rest
            if size > limit:
                raise DatabaseError(
                    f"job {job.job!r} cannot be queued: its arguments take {size:,} bytes in "
                    f"the INSERT, more than the server reads in one statement ({setting} is "
                    f"{limit:,}); queue a reference to the data (a row's id, a file's path) "
                    f"instead of the data, or raise {setting}", data=True)

    def insert_jobs(self, c: Connection, jobs: Sequence[NewJob], *, callers: bool = False) -> int:
        """push_many's work, in a transaction of the store's own that is open on
        ``c`` (a driver's error is left to that transaction's retries), or in
        the caller's (``callers``)."""
        if long := _long(jobs):
            self._check_sizes(c, long)
        unique = [j for j in jobs if j.unique_key is not None]
        plain = [j for j in jobs if j.unique_key is None]
        pushed = sum(push_unique(self, c, j, callers=callers) is not None for j in unique)
        if not plain:
            return pushed
        now = c.execute(sa.select(self._now())).scalar_one()
        rows = [
            {"queue": j.queue, "job": j.job, "payload": j.payload, "priority": j.priority,
             "attempts": 0, "created_at": now,
             "available_at": now + timedelta(seconds=j.delay) if j.delay else now}
            for j in plain
        ]
        self.dialect.insert_many(c, self.tables.jobs, rows)
        return pushed + len(rows)


def _long(jobs: Sequence[NewJob]) -> list[NewJob]:
    """The jobs whose payload is long enough to measure (None: refused by the server)."""
    return [job for job in jobs if len(job.payload or "") > _MEASURED_ABOVE]


def _params(job: NewJob) -> dict[str, object]:
    """The values of the one-job INSERT (see Dispatch._build_insert)."""
    return {"queue": job.queue, "job": job.job, "payload": job.payload,
            "priority": job.priority, "delay": job.delay}
