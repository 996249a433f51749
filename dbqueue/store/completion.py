"""Recording what became of jobs: many outcomes in one transaction.

A worker gathers its jobs' outcomes (completed, released for a retry, failed
for good), the attempts of jobs that have run a while, the unique keys and
locks that are free now, into one :class:`Completion`, and writes it with
:func:`write_completion` in a single transaction. Every write about a job
matches its lease (id *and* token): a job another worker has reserved since
(this one stalled) is left alone, and its id is missing from the answer.

Workflows (chains, batches, scheduled runs) move on in that same
transaction: ``Completion.ended`` names the jobs with a flow that ended for
good, and :func:`dbqueue.store.flows.advance` queues their next steps and
counts them in their batches (see that module).

Completion hooks
----------------
Other parts of dbqueue add their own writes to that same transaction (a
chain's next step, a batch's counters, a metrics row): a hook is a callable
``hook(connection, completion, recorded)`` run after the job rows are
written, where ``recorded`` holds the ids of the jobs whose outcome took
effect. It must only write (its statements commit or roll back with the
outcomes), keep to SQL in this layer, and be idempotent per job id: a failed
transaction is tried again, hooks included.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..policy.texts import shortened_message, shortened_traceback
from . import flows
from .dialects import ReservedRow
from .flows import FlowEnd
from .values import Failure, Lease, _attempts, _text, free_locks

if TYPE_CHECKING:
    from .leases import Leases


class Requeue(NamedTuple):
    """Put the job back for ``delay`` seconds with ``attempts`` counted."""

    lease: Lease
    delay: float
    attempts: int


class FailedRun(NamedTuple):
    """Move the job to failed_jobs with ``attempts`` counted."""

    row: ReservedRow
    lease: Lease
    failure: Failure
    worker: str
    """``host:pid`` of the worker, recorded with the failure."""
    attempts: int


@dataclass
class Completion:
    """Outcomes to write in one transaction."""

    completed: list[Lease] = field(default_factory=list)
    requeued: list[Requeue] = field(default_factory=list)
    failed: list[FailedRun] = field(default_factory=list)
    started: list[tuple[Lease, int]] = field(default_factory=list)
    """Jobs running a while, with the number of their attempt: counted now, so
    that a crash of the worker from here on costs them that attempt."""
    unique_freed: list[Lease] = field(default_factory=list)
    """Started jobs unique until processing: their key is free for new jobs."""
    unlocked: list[tuple[str, str]] = field(default_factory=list)
    """``(key, owner)`` of locks the worker took for jobs that ended."""
    ended: list[FlowEnd] = field(default_factory=list)
    """Jobs of workflows among the completed and failed ones (see store.flows)."""

    def __bool__(self) -> bool:
        return bool(self.completed or self.requeued or self.failed or self.started
                    or self.unique_freed or self.unlocked)


CompletionHook: TypeAlias = Callable[[Connection, Completion, set[int]], None]
"""See the module's docstring."""


def write_completion(store: Leases, completion: Completion,
                     hooks: Sequence[CompletionHook] = ()) -> set[int]:
    """Write ``completion`` in one transaction (retried on deadlocks); return
    the ids of the jobs whose outcome took effect (their lease still held)."""
    try:
        return store.transaction(lambda c: _write(store, c, completion, hooks, careful=False))
    except _LeaseLost:
        # Rolled back: written again, each group's held rows looked up first.
        return store.transaction(lambda c: _write(store, c, completion, hooks, careful=True))


class _LeaseLost(Exception):
    """A statement touched fewer jobs than it named: once written, which of
    them were still held cannot be told (a deleted or released row no longer
    carries the token), so the transaction starts over, carefully."""


def _write(store: Leases, c: Connection, completion: Completion,
           hooks: Sequence[CompletionHook], *, careful: bool) -> set[int]:
    jobs, locks = store.tables.jobs, store.tables.cache_locks
    flows.lock_batches(store, c, completion.ended)
    free_locks(c, locks, completion.unlocked)
    _count_attempts(store, c, completion.started)
    for held, _ in store._held(completion.unique_freed):
        c.execute(sa.update(jobs).where(held).values(unique_key=None, unique_expires_at=None))
    # Afresh on each try: a retried transaction starts over.
    recorded: set[int] = set()
    recorded |= _matching(store, c, completion.completed,
                          lambda held: sa.delete(jobs).where(held), careful=careful)
    by_values: dict[tuple[float, int], list[Lease]] = defaultdict(list)
    for lease, delay, attempts in completion.requeued:
        by_values[delay, _attempts(attempts)].append(lease)
    for (delay, attempts), leases in by_values.items():
        requeue = sa.update(jobs).values(reserved_by=None, reserved_at=None, attempts=attempts,
                                         available_at=store.dialect.now_plus(delay))
        recorded |= _matching(store, c, leases, requeue.where, careful=careful)
    batch_of = {end.job_id: end.flow.get("batch") for end in completion.ended}
    failed_as: dict[int, str] = {}  # job id -> its failed_jobs uuid
    for failed in completion.failed:
        row_uuid = _fail(store, c, failed, batch_of.get(failed.row.id))
        if row_uuid is not None:
            recorded.add(failed.row.id)
            failed_as[failed.row.id] = row_uuid
    flows.advance(store, c, completion.ended, recorded, failed_as)
    for hook in hooks:
        hook(c, completion, recorded)
    return recorded


def _matching(store: Leases, c: Connection, leases: Sequence[Lease],
              statement: Callable[[sa.ColumnElement[bool]], sa.Delete | sa.Update], *,
              careful: bool) -> set[int]:
    """Run ``statement(held)`` on the jobs still held under ``leases``; their ids.

    Fast path: one statement per chunk, whose row count says all were held.
    ``careful`` (after _LeaseLost): the held rows are locked and read first."""
    done: set[int] = set()
    jobs = store.tables.jobs
    for held, ids in store._held(leases):
        if careful:
            mine = set(c.execute(sa.select(jobs.c.id).where(held).with_for_update()).scalars())
            if mine:
                c.execute(statement(sa.and_(held, jobs.c.id.in_(mine))))
            done |= mine
        elif c.execute(statement(held)).rowcount == len(ids):
            done.update(ids)
        else:  # rare: this worker stalled and another took some of these jobs
            raise _LeaseLost
    return done


def _count_attempts(store: Leases, c: Connection, started: Sequence[tuple[Lease, int]]) -> None:
    by_attempt: dict[int, list[Lease]] = defaultdict(list)
    for lease, attempt in started:
        by_attempt[attempt].append(lease)
    for attempt, leases in by_attempt.items():
        for held, _ in store._held(leases):
            c.execute(sa.update(store.tables.jobs).where(held)
                      .values(attempts=_attempts(attempt)))


def _fail(store: Leases, c: Connection, failed: FailedRun, batch_id: object) -> str | None:
    """Move the job to failed_jobs; the uuid of its row there (None: its lease was lost)."""
    jobs = store.tables.jobs
    row, failure = failed.row, failed.failure
    deleted = c.execute(
        sa.delete(jobs).where(jobs.c.id == row.id, jobs.c.reserved_by == failed.lease.token)
    ).rowcount
    if deleted != 1:
        return None
    row_uuid = str(uuid.uuid4())
    c.execute(store.tables.failed_jobs.insert().values(
        uuid=row_uuid, job_id=row.id, queue=row.queue, job=row.job,
        priority=row.priority, payload=row.payload, attempts=_attempts(failed.attempts),
        exception_class=_text(failure.exception_class)[:255],
        exception_message=_text(shortened_message(failure.message)),
        exception=_text(shortened_traceback(failure.traceback)),
        failed_at=store.dialect.now(), worker=failed.worker[:255],
        batch_id=batch_id if isinstance(batch_id, str) else None,
    ))
    return row_uuid
