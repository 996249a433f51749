"""What operators ask of the queue: failed jobs, retrying them, and queue status."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import NotFound
from ..policy.durations import age_seconds
from .batches import reopen
from .locks import LockInfo, Locks
from .outcomes import Outcome, Outcomes
from .schedules import last_runs, rerun
from .store import Store
from .values import canonical_uuid
from .workers import WorkerRegistry


@dataclass(frozen=True, slots=True)
class FailedJob:
    """A row of failed_jobs."""

    id: int
    uuid: str
    job_id: int | None
    queue: str
    job: str
    priority: int
    payload: str
    attempts: int
    exception_class: str
    exception_message: str
    exception: str
    failed_at: datetime
    worker: str
    batch_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStatus:
    queue: str
    ready: int
    delayed: int
    reserved: int
    failed: int
    oldest_ready_age: float | None
    """Seconds the longest-waiting ready job has been ready, None when none is."""


@dataclass(frozen=True, slots=True)
class Unserved:
    """A queue with ready jobs that no live worker works."""

    queue: str
    ready: int


@dataclass(frozen=True, slots=True)
class Retried:
    """A failed job put back on its queue."""

    failed_id: int
    job: str
    job_id: int | None
    """The id it had when it failed (it is queued under a new one)."""


RETRY_CHUNK = 500
"""Failed jobs moved back per transaction: a multi-row INSERT and one DELETE,
short enough not to hold the tables' locks for long."""

Progress: TypeAlias = Callable[[int, int], None]
"""Called with (done, total) as a long operation goes."""


def _retried_columns(table: sa.Table) -> list[sa.Column[Any]]:
    return [table.c.id, table.c.uuid, table.c.queue, table.c.job, table.c.payload,
            table.c.priority, table.c.batch_id, table.c.job_id]


class Admin:
    """What operators ask of the queue: failed jobs, status, locks, outcomes and
    the tables' revision. Each verb runs in a short transaction of its own."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failed = store.tables.failed_jobs

    # --- the tables, locks and outcomes ---------------------------------------

    def check_schema(self) -> None:
        """Raise NotMigrated unless the tables are at a revision this dbqueue
        works with (SchemaOutdated if they are merely older)."""
        self.store.check_schema()

    def revision(self) -> str | None:
        """The revision the tables are at; None when there are none."""
        from . import migrator  # Alembic: kept out of every other command's start-up

        return migrator.current_revision(self.store, self.store.prefix)

    def locks(self) -> list[LockInfo]:
        """The locks held now (expired ones hold nothing), by key."""
        return Locks(self.store).held()

    def release_lock(self, key: str) -> bool:
        """Free the lock ``key`` whoever holds it; return whether it was held."""
        return Locks(self.store).force_release(key)

    def outcomes(self, limit: int = 50) -> list[Outcome]:
        """The outcomes of idempotent jobs recorded last, newest first."""
        return Outcomes(self.store).newest(limit)

    def prune_outcomes(self, older_than_days: float) -> int:
        """Delete the outcomes of idempotent jobs recorded more than
        ``older_than_days`` days ago; return how many."""
        return Outcomes(self.store).prune(older_than_days)

    # --- failed jobs ----------------------------------------------------------

    def _match(self, ref: str) -> sa.ColumnElement[bool]:
        """A failed job by its number or its uuid."""
        number = _as_id(ref)
        return (self.failed.c.id == number if number is not None
                else self.failed.c.uuid.in_({ref, canonical_uuid(ref)}))

    def _missing(self, c: Connection, refs: Sequence[str], others: str = "") -> str:
        """Why ``refs`` name no failed job, with the failed job of any that is a
        job's id instead (the JOB ID column, and the worker's log, name jobs
        by it): the two are easily taken for each other."""
        numbers = [number for number in map(_as_id, refs) if number is not None]
        found = c.execute(sa.select(self.failed.c.job_id, self.failed.c.id)
                          .where(self.failed.c.job_id.in_(numbers))
                          .order_by(self.failed.c.id)).all() if numbers else []
        # Said as a question: after `forget 7`, a second `forget 7` may find
        # a failure of job 7 that is another failure altogether.
        said = "".join(f"; JOB ID {job_id} is failed job {failure_id}: if that is the one "
                       f"meant, see it with: dbqueue failed show {failure_id}"
                       for job_id, failure_id in found)
        return (f"no failed job {', '.join(map(repr, refs))}{others}{said}; "
                "list them with: dbqueue failed")

    def _failed_where(self, queue: str | None, job: str | None,
                      exception: str | None) -> list[sa.ColumnElement[bool]]:
        table = self.failed
        where = []
        if queue:
            where.append(table.c.queue == queue)
        if job:
            where.append(table.c.job == job)
        if exception:
            # Case left out alike on every server (LIKE ignores it on MySQL only).
            where.append(table.c.exception_class.icontains(exception, autoescape=True))
        return where

    def list_failed(self, queue: str | None = None, job: str | None = None,
                    exception: str | None = None, limit: int = 50) -> list[FailedJob]:
        """The most recent failures first, filtered by queue, job name or exception class."""
        table = self.failed
        query = (sa.select(table).where(*self._failed_where(queue, job, exception))
                 .order_by(table.c.failed_at.desc(), table.c.id.desc()).limit(limit))
        rows = self.store.read(lambda c: c.execute(query).all())
        return [FailedJob(**row._mapping) for row in rows]

    def count_failed(self, queue: str | None = None, job: str | None = None,
                     exception: str | None = None) -> int:
        """How many failed jobs ``list_failed`` would list without its limit."""
        query = (sa.select(sa.func.count()).select_from(self.failed)
                 .where(*self._failed_where(queue, job, exception)))
        return int(self.store.read(lambda c: c.execute(query).scalar_one()))

    def failed_names(self, kind: Literal["queue", "job", "exception_class"]) -> list[str]:
        """The distinct queues, job names or exception classes of the failed jobs,
        in order."""
        column = self.failed.c[kind]
        if kind == "queue":  # the first column of an index: the dialect walks it
            return self.store.read(lambda c: self.store.dialect.distinct_values(c, column))
        # No index starts with job or exception_class (no query but this one
        # would use it): one scan, run only when a filter has matched nothing.
        query = sa.select(column).distinct().order_by(column)
        return self.store.read(lambda c: list(c.execute(query).scalars()))

    def totals(self) -> tuple[int, int]:
        """How many jobs are queued (running ones included) and how many have failed."""
        jobs, failed = self.store.tables.jobs, self.failed

        def work(c: Connection) -> tuple[int, int]:
            return (c.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one(),
                    c.execute(sa.select(sa.func.count()).select_from(failed)).scalar_one())

        return self.store.read(work)

    def get_failed(self, ref: str) -> FailedJob:
        row = self.store.read(
            lambda c: c.execute(sa.select(self.failed).where(self._match(ref))).first()
        )
        if row is None:
            raise NotFound(self.store.read(lambda c: self._missing(c, [ref])))
        return FailedJob(**row._mapping)

    def retry(self, refs: Sequence[str] = (), *, queue: str | None = None,
              job: str | None = None, batch: str | None = None, everything: bool = False,
              progress: Progress | None = None) -> int:
        """Put failed jobs back on their original queues (queue, job, payload and
        priority kept, attempts reset to 0); return how many.

        Named ``refs`` go back in one transaction, all or none. ``queue`` and
        ``job`` (those of both, when both are given), ``batch`` (a batch's
        failed jobs) and ``everything`` go in chunks of
        RETRY_CHUNK, each its own transaction, with ``progress(done, total)``
        called after each. Either way a job is inserted into jobs and deleted
        from failed_jobs in one transaction, so it is never in both tables, nor
        in neither.
        """
        if refs:
            return len(self.retry_each(refs))
        if not (queue or job or batch or everything):
            return 0
        table = self.failed
        where = [table.c.queue == queue] if queue else []
        if job:
            where.append(table.c.job == job)
        if batch:
            where.append(table.c.batch_id.in_({batch, canonical_uuid(batch)}))

        def extent(c: Connection) -> tuple[int, int | None]:
            count, last = c.execute(sa.select(sa.func.count(), sa.func.max(table.c.id))
                                    .where(*where)).one()
            return int(count), last

        total, last_id = self.store.read(extent)
        if last_id is None:
            return 0
        # Only the failures there when the retry began: a job that fails again
        # while the retry runs stays failed, rather than being retried in a loop.
        where.append(table.c.id <= last_id)
        now = self.store.now()
        done, after = 0, 0
        while True:
            chunk = (sa.select(*_retried_columns(table)).where(table.c.id > after, *where)
                     .order_by(table.c.id).limit(RETRY_CHUNK).with_for_update())

            def move(c: Connection, chunk: sa.Select[Any] = chunk) -> list[int]:
                return self._move(c, c.execute(chunk).all(), now)

            moved = self.store.transaction(move)
            if not moved:
                return done
            done, after = done + len(moved), moved[-1]
            if progress is not None:
                progress(done, max(total, done))

    def retry_each(self, refs: Sequence[str]) -> list[Retried]:
        """Put the failed jobs ``refs`` (ids or uuids) back, in one transaction,
        all or none (NotFound names those missing); what was put back."""
        return self.store.transaction(lambda c: self._retry_named(c, refs))

    def _retry_named(self, c: Connection, refs: Sequence[str]) -> list[Retried]:
        query = (sa.select(*_retried_columns(self.failed))
                 .where(sa.or_(*(self._match(ref) for ref in refs)))
                 .order_by(self.failed.c.id))
        rows = c.execute(query.with_for_update()).all()
        missing = [ref for ref in refs if not any(_is(row, ref) for row in rows)]
        if missing:
            others = " (none of the others was retried either)" if len(refs) > len(
                missing) else ""
            raise NotFound(self._missing(c, missing, others))
        self._move(c, rows, c.execute(sa.select(self.store._now())).scalar_one())
        return [Retried(row.id, row.job, row.job_id) for row in rows]

    def _move(self, c: Connection, rows: Sequence[Any], now: datetime) -> list[int]:
        """Insert ``rows`` of failed_jobs into jobs, delete them from failed_jobs,
        and return their ids. The rows are locked (FOR UPDATE): two operators
        retrying at once queue each job once."""
        if not rows:
            return []
        # A schedule's last run goes back as its last run still (its
        # without_overlapping waits for it): one INSERT each, for their ids.
        last = last_runs(c, self.store.tables.schedules, rows)
        jobs, plain = self.store.tables.jobs, []
        for row in rows:
            values = {"queue": row.queue, "job": row.job, "payload": row.payload,
                      "priority": row.priority, "attempts": 0, "available_at": now,
                      "created_at": now}
            schedule = last.get(row.job_id)
            if schedule is None:
                plain.append(values)
                continue
            key = c.execute(sa.insert(jobs).values(values)).inserted_primary_key
            assert key is not None
            rerun(c, self.store.tables.schedules, schedule, row.job_id, int(key[0]))
        if plain:
            self.store.dialect.insert_many(c, jobs, plain)
        reopen(c, self.store, rows)
        ids = [row.id for row in rows]
        c.execute(sa.delete(self.failed).where(self.store.dialect.one_of(self.failed.c.id, ids)))
        return ids

    def forget(self, ref: str) -> None:
        deleted = self.store.transaction(
            lambda c: c.execute(sa.delete(self.failed).where(self._match(ref))).rowcount
        )
        if not deleted:
            raise NotFound(self.store.read(lambda c: self._missing(c, [ref])))

    def flush(self, older_than_hours: float | None = None) -> int:
        """Delete failed jobs, all of them or those older than the given hours."""
        statement = sa.delete(self.failed)
        if older_than_hours is not None:
            age = age_seconds("older_than_hours", older_than_hours, "hours")
            cutoff = self.store.dialect.now_plus(-age)
            statement = statement.where(self.failed.c.failed_at < cutoff)
        return self.store.transaction(lambda c: c.execute(statement).rowcount)

    def status(self) -> list[QueueStatus]:
        """Per queue: ready, delayed and reserved jobs, failures, and the oldest wait."""
        jobs, failed = self.store.tables.jobs, self.failed
        now = self.store._now()
        due = jobs.c.available_at <= now
        held = jobs.c.reserved_by.is_not(None)

        def count(condition: sa.ColumnElement[bool]) -> Any:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        job_counts = (
            sa.select(jobs.c.queue, count(due), count(sa.and_(~due, ~held)),
                      count(sa.and_(~due, held)),
                      sa.func.min(sa.case((due, jobs.c.available_at), else_=None)), now)
            .group_by(jobs.c.queue)
        )
        failed_counts = sa.select(failed.c.queue, sa.func.count()).group_by(failed.c.queue)

        def work(c: Connection) -> list[QueueStatus]:
            per_queue: dict[str, list[Any]] = {}
            for queue, ready, delayed, reserved, oldest, db_now in c.execute(job_counts):
                age = None
                if oldest is not None:
                    age = max(0.0, (db_now - oldest).total_seconds())
                per_queue[queue] = [int(ready), int(delayed), int(reserved), 0, age]
            for queue, failures in c.execute(failed_counts):
                per_queue.setdefault(queue, [0, 0, 0, 0, None])[3] = int(failures)
            return [QueueStatus(q, *values) for q, values in sorted(per_queue.items())]

        return self.store.read(work)

    def unserved(self, seen_within: float) -> list[Unserved]:
        """Queues with ready jobs that no live worker works, by name or with ``*``
        (workers seen within ``seen_within`` seconds count as live)."""
        jobs = self.store.tables.jobs
        ready = (sa.select(jobs.c.queue, sa.func.count())
                 .where(jobs.c.available_at <= self.store._now()).group_by(jobs.c.queue))
        workers = WorkerRegistry(self.store).live(seen_within)
        return [Unserved(queue, int(count))
                for queue, count in sorted(self.store.read(lambda c: c.execute(ready).all()))
                if not any(worker.serves(queue) for worker in workers)]


_MAX_ID = 2**63 - 1  # BIGINT


def _as_id(ref: str) -> int | None:
    """The number in ``ref`` (``42``, ``0042``), or None when it is not one (a uuid)."""
    if ref.isascii() and ref.isdigit() and int(ref) <= _MAX_ID:
        return int(ref)
    return None


def _is(row: Any, ref: str) -> bool:
    number = _as_id(ref)
    return bool(row.id == number) if number is not None else row.uuid in {ref, canonical_uuid(ref)}
