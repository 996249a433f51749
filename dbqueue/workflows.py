"""Chains and batches: jobs that run in sequence, and jobs counted as one unit.

::

    app.chain([fetch.prepare(url), parse.prepare(), store.prepare()],
              catch=alert.prepare("import")).dispatch()

    batch_id = app.batch([rows.prepare(i) for i in range(100)], name="import",
                         then=report.prepare(), catch=alert.prepare(),
                         finally_=cleanup.prepare()).dispatch()
    app.find_batch(batch_id).progress

Their state lives in the database (job_batches, and each job's payload): a
step is queued, and a batch's counters move, in the transaction in which a
worker records the outcome of the job before (see dbqueue.store.flows).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from . import deferred
from .errors import ConfigurationError
from .jobs import PreparedJob
from .store import Executor, NewJob
from .store.batches import Batches, BatchRow
from .store.flows import step, with_flow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .app import App


def _prepared(app: App, item: Any, what: str) -> NewJob:
    if not isinstance(item, PreparedJob):
        raise ConfigurationError(
            f"{what} takes prepared jobs, such as my_job.prepare(...) or "
            f"my_job.options(queue=...).prepare(...), not {type(item).__name__}")
    if item.app is not app:
        raise ConfigurationError(
            f"job {item.new_job.job!r} belongs to another App; a {what} takes jobs of one App")
    return item.new_job


def _not_unique(job: NewJob, what: str, *, later: bool = True) -> NewJob:
    """A job of a workflow cannot be unique: were its key taken when it is
    queued (by a worker ``later``: a step, a callback; else at dispatch, a
    batch's member), it could not be, and its chain or batch could never
    finish."""
    if job.unique_key is not None:
        when = ("which a worker queues later, when its key may be taken" if later else
                "whose count would be wrong were its key taken at dispatch")
        raise ConfigurationError(
            f"job {job.job!r} is unique (unique_key=): it cannot be {what}, {when}; use a "
            "job without unique_key there (an idempotency_key keeps its effects once)")
    return job


def _listed(items: Any, what: str) -> Iterable[Any]:
    if isinstance(items, PreparedJob) or not isinstance(items, Iterable):
        raise ConfigurationError(
            f"a {what} takes a list of prepared jobs, such as [my_job.prepare(...)], not "
            f"{type(items).__name__}")
    return items


def _steps(app: App, items: Iterable[Any], what: str) -> list[NewJob]:
    steps = [_prepared(app, item, what) for item in _listed(items, what)]
    if not steps:
        raise ConfigurationError(f"a {what} needs at least one job")
    return steps


class Chain:
    """Jobs that run one after the other; see ``App.chain``."""

    def __init__(self, app: App, jobs: Iterable[PreparedJob],
                 catch: PreparedJob | None = None) -> None:
        self.app = app
        self.steps = _steps(app, jobs, "chain")
        for later in self.steps[1:]:
            _not_unique(later, "a step of a chain after the first")
        self.catch = None if catch is None else _not_unique(
            _prepared(app, catch, "chain's catch"), "a chain's catch")

    def first(self) -> NewJob:
        """The first step, carrying the rest of the chain in its payload."""
        flow: dict[str, Any] = {}
        if len(self.steps) > 1:
            flow["chain"] = [step(job) for job in self.steps[1:]]
        if self.catch is not None:
            flow["catch"] = step(self.catch)
        return with_flow(self.steps[0], flow) if flow else self.steps[0]

    def dispatch(self, *, connection: Executor | None = None,
                 after_commit: Session | None = None) -> int | None:
        """Queue the first step, as ``job.dispatch`` would (in the caller's
        transaction with ``connection=``, after the Session commits with
        ``after_commit=``); return its id (None while held for a commit)."""
        first = self.first()
        if after_commit is not None:
            if connection is not None:
                raise ConfigurationError("give either connection= or after_commit=, not both")
            self.app.dispatch_many([PreparedJob(self.app, first)], after_commit=after_commit)
            return None
        return self.app.store.push(first, connection)


@dataclass(frozen=True, slots=True)
class Batch(BatchRow):
    """A batch as last read: ``app.find_batch(id)``. ``refresh()`` reads it again.

    ``total`` counts every job (each step of its chains), ``pending`` those not
    finished yet, ``failed`` those that failed for good; ``finished_at`` is when
    the last one finished (and ``finally_`` was queued)."""

    app: App

    @classmethod
    def of(cls, app: App, row: BatchRow) -> Batch:
        return cls(app=app, **{field.name: getattr(row, field.name) for field in fields(row)})

    @property
    def processed(self) -> int:
        """Jobs finished, whatever their outcome."""
        return self.total - self.pending

    @property
    def progress(self) -> int:
        """Percent of the jobs finished, 0-100."""
        return 100 if self.total == 0 else self.processed * 100 // self.total

    @property
    def cancelled(self) -> bool:
        return self.cancelled_at is not None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def refresh(self) -> Batch:
        """The batch as it is now (a Batch is a snapshot: ``batch = batch.refresh()``)."""
        return self.app.find_batch(self.id)

    def cancel(self) -> bool:
        """Cancel the batch: its jobs not started yet complete without running
        (``finally_`` still runs once they have; ``then`` never does). False if
        it was cancelled already or has finished."""
        return Batches(self.app.store).cancel(self.id)

    def retry(self) -> int:
        """Put the batch's failed jobs back on their queues (``then`` may still
        run once they succeed, unless the batch was cancelled); return how many."""
        return self.app.admin.retry(batch=self.id)

    def as_dict(self) -> dict[str, Any]:
        """Its fields and counts, for JSON."""
        return {"id": self.id, "name": self.name, "total": self.total,
                "pending": self.pending, "processed": self.processed, "failed": self.failed,
                "progress": self.progress, "allow_failures": self.allow_failures,
                "cancelled": self.cancelled, "created_at": self.created_at,
                "cancelled_at": self.cancelled_at, "finished_at": self.finished_at,
                "callbacks": self.callback_states()}

    def add(self, jobs: Iterable[PreparedJob | Sequence[PreparedJob]], *,
            connection: Executor | None = None) -> int:
        """Add jobs (a list inside the list is a chain) to a batch that has not
        finished, also from inside one of its own jobs; return how many."""
        members = _members(self.app, jobs)
        return Batches(self.app.store).add(self.id, members, connection)


def _members(app: App, items: Iterable[Any]) -> list[list[NewJob]]:
    members: list[list[NewJob]] = []
    for item in _listed(items, "batch"):
        if isinstance(item, list | tuple):
            members.append(_steps(app, item, "chain inside a batch"))
        else:
            members.append([_prepared(app, item, "batch")])
    for member in members:
        _not_unique(member[0], "a job of a batch", later=False)
        for job in member[1:]:
            _not_unique(job, "a step of a chain inside a batch")
    return members


_NAME_LENGTH = 255  # job_batches.name


class PendingBatch:
    """A batch to dispatch; see ``App.batch``."""

    def __init__(self, app: App, jobs: Iterable[PreparedJob | Sequence[PreparedJob]], *,
                 name: str = "", then: PreparedJob | None = None,
                 catch: PreparedJob | None = None, finally_: PreparedJob | None = None,
                 allow_failures: bool = False) -> None:
        if not isinstance(name, str):
            raise ConfigurationError(f"a batch's name must be a string, not {name!r}")
        if len(name) > _NAME_LENGTH:
            raise ConfigurationError(f"a batch's name is stored in {_NAME_LENGTH} characters; "
                                     f"this one has {len(name)}")
        if not isinstance(allow_failures, bool):
            raise ConfigurationError(f"allow_failures must be True or False, not "
                                     f"{allow_failures!r}")
        self.app = app
        self.members = _members(app, jobs)
        self.name = name
        self.callbacks = {
            which: step(_not_unique(_prepared(app, job, f"batch's {which}"),
                                    f"a batch's {which}"))
            for which, job in (("then", then), ("catch", catch), ("finally", finally_))
            if job is not None}
        self.allow_failures = allow_failures

    def dispatch(self, *, connection: Executor | None = None,
                 after_commit: Session | None = None) -> str:
        """Queue the batch's jobs with the batch, as ``job.dispatch`` would (in
        the caller's transaction with ``connection=``, after the Session
        commits with ``after_commit=``); return the batch's id (with
        ``after_commit=``, the id the batch will have once it is queued)."""
        batch_id = str(uuid.uuid4())

        def create(connection: Executor | None = connection) -> None:
            Batches(self.app.store).create(batch_id, self.name, self.members, self.callbacks,
                                           allow_failures=self.allow_failures,
                                           connection=connection)

        if after_commit is not None:
            if connection is not None:
                raise ConfigurationError("give either connection= or after_commit=, not both")
            deferred.defer(after_commit, [create])
        else:
            create()
        return batch_id
