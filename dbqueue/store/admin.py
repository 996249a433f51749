"""What operators ask of the queue: failed jobs, retrying them, and queue status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import NotFound
from .store import Store


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


@dataclass(frozen=True, slots=True)
class QueueStatus:
    queue: str
    ready: int
    delayed: int
    reserved: int
    failed: int
    oldest_ready_age: float | None
    """Seconds the longest-waiting ready job has been ready, None when none is."""


class Admin:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.failed = store.tables.failed_jobs

    def _match(self, ref: str) -> sa.ColumnElement[bool]:
        """A failed job by its number or its uuid."""
        number = _as_id(ref)
        return self.failed.c.id == number if number is not None else self.failed.c.uuid == ref

    def list_failed(self, queue: str | None = None, job: str | None = None,
                    exception: str | None = None, limit: int = 50) -> list[FailedJob]:
        """The most recent failures first, filtered by queue, job name or exception class."""
        table = self.failed
        query = sa.select(table).order_by(table.c.failed_at.desc(), table.c.id.desc()).limit(limit)
        if queue:
            query = query.where(table.c.queue == queue)
        if job:
            query = query.where(table.c.job == job)
        if exception:
            query = query.where(table.c.exception_class.contains(exception, autoescape=True))
        rows = self.store.read(lambda c: c.execute(query).all())
        return [FailedJob(**row._mapping) for row in rows]

    def get_failed(self, ref: str) -> FailedJob:
        row = self.store.read(
            lambda c: c.execute(sa.select(self.failed).where(self._match(ref))).first()
        )
        if row is None:
            raise NotFound(f"no failed job {ref!r}; list them with: dbqueue failed")
        return FailedJob(**row._mapping)

    def retry(self, refs: Sequence[str] = (), *, queue: str | None = None,
              everything: bool = False) -> int:
        """Put failed jobs back on their original queues with fresh attempts; return how many.

        Each is inserted into jobs and deleted from failed_jobs in one
        transaction, so a job is never in both tables, nor in neither.
        """
        table, jobs = self.failed, self.store.tables.jobs
        query = sa.select(table.c.id, table.c.uuid, table.c.queue, table.c.job,
                          table.c.payload, table.c.priority)
        if refs:
            query = query.where(sa.or_(*(self._match(ref) for ref in refs)))
        elif queue:
            query = query.where(table.c.queue == queue)
        elif not everything:
            return 0
        query = query.with_for_update()  # two operators retrying at once re-queue each job once

        def work(c: Connection) -> int:
            rows = c.execute(query).all()
            missing = [ref for ref in refs if not any(_is(row, ref) for row in rows)]
            if missing:
                others = " (none of the others was retried either)" if len(refs) > len(
                    missing) else ""
                raise NotFound(f"no failed job {', '.join(map(repr, missing))}{others}; "
                               "list them with: dbqueue failed")
            for row in rows:
                c.execute(jobs.insert().values(
                    queue=row.queue, job=row.job, payload=row.payload, priority=row.priority,
                    attempts=0, available_at=self.store.dialect.now(),
                    created_at=self.store.dialect.now(),
                ))
            if rows:
                c.execute(sa.delete(table).where(table.c.id.in_([row.id for row in rows])))
            return len(rows)

        return self.store.transaction(work)

    def forget(self, ref: str) -> None:
        deleted = self.store.transaction(
            lambda c: c.execute(sa.delete(self.failed).where(self._match(ref))).rowcount
        )
        if not deleted:
            raise NotFound(f"no failed job {ref!r}; list them with: dbqueue failed")

    def flush(self, older_than_hours: float | None = None) -> int:
        """Delete failed jobs, all of them or those older than the given hours."""
        statement = sa.delete(self.failed)
        if older_than_hours is not None:
            cutoff = self.store.dialect.now_plus(-older_than_hours * 3600)
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


_MAX_ID = 2**63 - 1  # BIGINT


def _as_id(ref: str) -> int | None:
    """The number in ``ref`` (``42``, ``0042``), or None when it is not one (a uuid)."""
    if ref.isascii() and ref.isdigit() and int(ref) <= _MAX_ID:
        return int(ref)
    return None


def _is(row: Any, ref: str) -> bool:
    number = _as_id(ref)
    return bool(row.id == number) if number is not None else bool(row.uuid == ref)
