"""What a worker writes down about its jobs: one typed record per fact.

The recorder makes them (the supervisor makes Counted); the completer
(worker.completer) turns them into the store's Completion (``as_completion``)
and writes them.
Records, not closures: a flush that fails puts them back as they were, and
one can be told from another.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

from ..errors import DatabaseError, DBQueueError, SerializationError
from ..store import Failure
from ..store.completion import Completion, FailedRun, Requeue
from ..store.flows import FlowEnd
from .health import describe
from .ledger import Entry
from .messages import class_name

log = logging.getLogger("dbqueue.worker")


class Completed(NamedTuple):
    """The job succeeded (or, with ``entry.runtime`` None, was dropped unrun)."""

    entry: Entry


class Released(NamedTuple):
    """Back to the queue for ``delay`` seconds with ``attempts`` counted."""

    entry: Entry
    delay: float
    attempts: int
    why: str
    retry: bool
    """A failed attempt to be retried (logged at INFO), not a plain release."""
    waits_for_lock: bool = False
    """Released because another job holds its lock, or a rate limit held it
    back: not delayed by anyone's choice, so a worker told to stop once the
    queue is empty waits for it."""
    for_others: bool = False
    """Put back for another worker (one that knows the job): this one does
    not look for it when it comes due, or it would take it first each time."""


class Failed(NamedTuple):
    """Failed for good, with ``attempts`` counted."""

    entry: Entry
    failure: Failure
    attempts: int
    ran: bool
    """Whether the attempt started (else the job could not even start)."""


class Counted(NamedTuple):
    """The job has run a while: count its attempt now."""

    entry: Entry
    attempt: int


class KeyFreed(NamedTuple):
    """The job started and was unique until processing: free its key."""

    entry: Entry


class Unlocked(NamedTuple):
    """A lock taken for a job that has ended."""

    key: str
    owner: str


Record = Completed | Released | Failed | Counted | KeyFreed | Unlocked
ENDINGS = (Completed, Released, Failed)
"""The records that end a job: once written, its row is gone or back in the queue."""


def as_completion(records: Sequence[Record], worker: str) -> Completion:
    """The store's form of ``records``, with each job's current lease (a lease
    taken again after a stall replaces the old one in the ledger's entry)."""
    out = Completion()
    for record in records:
        if type(record) is Completed:  # nearly all of them: no pattern matching
            entry = record.entry
            out.completed.append(entry.lease)
            if entry.payload is not None and entry.payload.flow:
                out.ended.append(FlowEnd(entry.id, entry.payload.flow,
                                         "skipped" if entry.skipped else "done", entry.result))
            continue
        match record:
            case Released(entry, delay, attempts):
                out.requeued.append(Requeue(entry.lease, delay, attempts))
            case Failed(entry, failure, attempts):
                out.failed.append(FailedRun(entry.row, entry.lease, failure, worker, attempts))
                if entry.flow:
                    out.ended.append(FlowEnd(entry.id, entry.flow, "failed", failure=(
                        failure.exception_class, failure.message)))
            case Counted(entry, attempt):
                out.started.append((entry.lease, attempt))
            case KeyFreed(entry):
                out.unique_freed.append(entry.lease)
            case Unlocked(key, owner):
                out.unlocked.append((key, owner))
    return out


def about_the_data(exc: Exception) -> bool:
    """Whether ``exc`` refused what a write carries, so that writing it again
    can never succeed: the server's refusal of the values (DatabaseError's
    ``data``), one found before sending (a value no JSON or no database takes),
    or one of the driver's before it sent anything (UnicodeEncodeError)."""
    if isinstance(exc, DatabaseError):
        return exc.data
    return isinstance(exc, SerializationError) or not isinstance(exc, DBQueueError)


def failed_instead(group: list[Record], exc: Exception) -> list[Record] | None:
    """``group`` with the Completed record of a workflow step that ran turned
    into a Failed one (see worker.completer's BatchCompleter._set_aside); None if it has none."""
    instead: list[Record] = []
    for record in group:
        entry = record.entry if type(record) is Completed else None
        if entry is None or not entry.flow or entry.runtime is None:
            instead.append(record)
            continue
        instead.append(Failed(entry, Failure(
            class_name(exc), f"it completed, but recording that was refused, with what it "
            f"writes (its result, the chain's next step): {describe(exc)}", ""),
            entry.row.attempts, True))
    return instead if instead != group else None


def requeues(record: Record) -> bool:
    """Whether writing ``record`` may make jobs ready: a job released (maybe at
    once), or the end of a job of a chain, batch or schedule (its next step or
    callback)."""
    return isinstance(record, Released) or (isinstance(record, ENDINGS)
                                            and bool(record.entry.flow))


def job_of(group: Sequence[Record]) -> int:
    """The job a group of ``by_job`` is about (0: the loose locks)."""
    return next((r.entry.id for r in group if not isinstance(r, Unlocked)), 0)


def by_job(records: Sequence[Record]) -> list[list[Record]]:
    """``records`` grouped by job, in order of first appearance; loose locks last."""
    groups: dict[int, list[Record]] = {}
    loose: list[Record] = []
    for record in records:
        if isinstance(record, Unlocked):
            loose.append(record)
        else:
            groups.setdefault(record.entry.id, []).append(record)
    return [*groups.values(), *([loose] if loose else [])]


def log_written(record: Record) -> None:
    """Log what became of a job, once ``record`` is written (never before)."""
    match record:
        case Completed(entry) if entry.runtime is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("job %d (%s) completed in %s", entry.id, entry.row.job,
                      duration(entry.runtime))
        case Released(entry, delay, _, why, True):
            log.info("job %d (%s) %s; retrying in %.1f s", entry.id, entry.row.job, why, delay)
        case Released(entry, delay, _, why, False):
            log.debug("job %d (%s) released for %.1f s%s", entry.id, entry.row.job, delay,
                      f": {why}" if why else "")
        case Failed(entry, failure, attempts, True):
            log.warning("job %d (%s) failed after %d attempt(s)%s: %s: %s", entry.id,
                        entry.row.job, attempts,
                        f" in {duration(entry.runtime)}" if entry.runtime else "",
                        failure.exception_class, failure.message)
        case Failed(entry, failure, _, False):
            log.warning("job %d (%s) cannot run: %s", entry.id, entry.row.job, failure.message)


def duration(seconds: float) -> str:
    """``12.3 ms``, ``4.56 s``: how long a job ran, for the log."""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
