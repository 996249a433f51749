"""The completer: how a worker writes down what became of its jobs.

Outcomes arrive as typed records (:data:`Record`). Two completers write
them, behind one interface:

- :class:`BatchCompleter` (the worker's): records wait a moment (at most
  ``max_wait`` seconds, or until ``max_batch`` are waiting) and go together
  in one transaction, so a thousand short jobs cost a few round trips, not a
  thousand. Retries and failures do not wait: one may be due at once.
- :class:`InlineCompleter`: each job's records in a transaction of their own,
  as soon as the worker asks.

The batching completer writes on a thread of its own where the database is
a server (worker.background): the supervisor hands out and takes in jobs
while the server works, and takes in the write's end at a later turn.

Either way nothing is lost when a write fails: while the database cannot be
reached, the records stay and are tried again (the jobs stay leased, and
the heartbeat renews them). A write the server *refuses* (bad data, a
read-only server) sends the completer to writing one job at a time, so that
one job's record cannot block everyone else's; a job refused three times is
set aside with an error in the log (its lease runs out and it runs again).

A job's outcome is logged once written, never before: the log never says a
job completed while its row is still in the table. ``flush`` returns the
jobs that are finished with (written, lost to another worker, or set aside):
the caller takes them out of its ledger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from ..store import Store
from ..store.completion import CompletionHook
from .background import Inline, OnThread, time_left
from .health import TRANSIENT, Health, describe
from .ledger import Entry
from .records import (
    ENDINGS,
    Completed,
    Counted,
    Failed,
    Record,
    Released,
    Unlocked,
    about_the_data,
    as_completion,
    failed_instead,
)

log = logging.getLogger("dbqueue.worker")

FLUSH_DELAY = 0.05  # seconds a completion may wait to share a transaction with others
_MAX_BATCH = 256
_REFUSALS_BEFORE_GIVING_UP = 3


class Completer(Protocol):
    """Where a worker's records go (BatchCompleter and InlineCompleter are two)."""

    def __len__(self) -> int: ...

    def add(self, record: Record) -> None: ...

    def due(self, now: float, *, busy: bool = False) -> bool: ...

    def next_wake(self) -> float | None: ...

    def flush(self, now: float | None = None) -> list[Entry]: ...

    def collect(self, *, wait: bool = False, until: float | None = None) -> list[Entry]: ...

    def ending_ids(self) -> set[int]: ...

    def drain(self, tries: int = 3, until: float | None = None) -> list[Entry]: ...

    def requeues(self) -> bool: ...


class BatchCompleter:
    """Records written together, on size or time (see the module's docstring)."""

    def __init__(self, store: Store, health: Health, worker: str,
                 hooks: Sequence[CompletionHook] = (), *, max_batch: int = _MAX_BATCH,
                 max_wait: float = FLUSH_DELAY) -> None:
        self.store = store
        self.health = health
        self.worker = worker
        """``host:pid``, recorded with each failure."""
        self.hooks = tuple(hooks)
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.pending: list[Record] = []
        self.first_at = 0.0
        self.retry_at = 0.0
        """After a failed write, when to try again."""
        self._urgent = 0
        self._one_by_one = False
        self._refusals: dict[int, int] = {}
        self._failed_instead: list[Failed] = []
        self.calls: Inline[set[int]] = (
            Inline() if store.dialect.embedded else OnThread("dbqueue-record"))
        self.writing: list[Record] = []
        """Records whose write is on its way."""
        self._requeued = False
        self._coming_due: list[tuple[float, bool]] = []

    def __len__(self) -> int:
        return len(self.pending) + len(self.writing)

    def fileno(self) -> int | None:
        """Readable once a write on its way has ended (None: writes end at once)."""
        return self.calls.fileno()

    def writing_ids(self) -> set[int]:
        """The jobs whose rows are being written now (locked by the write)."""
        return {record.entry.id for record in self.writing if not isinstance(record, Unlocked)}

    def ending_ids(self) -> set[int]:
        """The jobs whose outcome is being written now (their rows may be gone,
        or back in the queue)."""
        return {record.entry.id for record in self.writing if isinstance(record, ENDINGS)}

    def take_requeued(self) -> bool:
        """Whether a write since the last call may have made jobs ready: a job
        released for a retry, or a workflow's next step or callback queued."""
        requeued, self._requeued = self._requeued, False
        return requeued

    def take_failed_instead(self) -> list[Failed]:
        """The completed workflow steps failed instead since the last call (see
        ``_set_aside``): their jobs' on_failure hooks are the recorder's to queue."""
        failed, self._failed_instead = self._failed_instead, []
        return failed

    def take_coming_due(self) -> list[tuple[float, bool]]:
        """When (monotonic clock) the jobs released for a while by the writes
        since the last call come due, each with whether it waits for a lock
        (see Released.waits_for_lock)."""
        due, self._coming_due = self._coming_due, []
        return due

    def add(self, record: Record) -> None:
        if not self.pending:
            self.first_at = time.monotonic()
        self.pending.append(record)
        if isinstance(record, Released | Failed):
            self._urgent += 1

    def due(self, now: float, *, busy: bool = False) -> bool:
        """Whether what waits should be written now. Completions wait a little to
        share a transaction while other work is in hand (``busy``)."""
        return bool(self.pending) and now >= self.retry_at and not self.calls.busy and bool(
            self._urgent or not busy or len(self.pending) >= self.max_batch
            or now - self.first_at >= self.max_wait)

    def next_wake(self) -> float | None:
        """When waiting records are due to be written, if any wait (and no write
        is on its way: its end wakes the supervisor, see ``fileno``)."""
        if not self.pending or self.calls.busy:
            return None
        if self._urgent:
            return self.retry_at
        return max(self.first_at + self.max_wait, self.retry_at)

    def requeues(self) -> bool:
        """Whether a record waiting or being written may make jobs ready once
        written (see ``_requeues``)."""
        return any(map(_requeues, (*self.pending, *self.writing)))

    def flush(self, now: float | None = None) -> list[Entry]:
        """Write what waits; return the jobs finished with. On a server the write
        goes on after the call returns, and its jobs come from a later call
        (or ``collect``). On a failed write the records stay for a later try
        (see ``retry_at``)."""
        now = time.monotonic() if now is None else now
        finished = self.collect()
        if not self.pending or now < self.retry_at or self.calls.busy:
            return finished
        records, self.pending, self._urgent = self.pending, [], 0
        if self._one_by_one:
            return finished + self._flush_each(records, now)
        completion = as_completion(records, self.worker)  # here: the entries are ours
        self.writing = records
        self.calls.submit(lambda: self.store.record(completion, self.hooks))
        return finished + self.collect()  # inline: written already

    def collect(self, *, wait: bool = False, until: float | None = None) -> list[Entry]:
        """The jobs finished with by the write on its way, if it has ended (or,
        with ``wait``, once it has; at most until ``until``, monotonic)."""
        if not self.calls.busy or not ((wait and self.calls.wait(time_left(until)))
                                       or self.calls.done()):
            return []
        records, self.writing = self.writing, []
        try:
            recorded = self.calls.take()
        # Not only the database's errors: nothing here may stop the worker.
        except Exception as exc:
            now = time.monotonic()
            self._put_back(records, now, exc, began=self.calls.began)
            if not isinstance(exc, TRANSIENT):
                self._one_by_one, self.retry_at = True, now  # find the one refused
            return []
        self.health.succeeded()
        return self._written(records, recorded)

    def drain(self, tries: int = 3, until: float | None = None) -> list[Entry]:
        """Write what waits before the worker exits, trying a few times, until
        ``until`` (monotonic) at the latest: what is left then is not written
        (those jobs run again once their leases run out)."""
        finished = self.collect(wait=True, until=until)
        for _ in range(tries):
            if not self.pending or self.calls.busy:  # busy: a write that did not end
                break
            self.retry_at = 0.0
            finished += self.flush()
            finished += self.collect(wait=True, until=until)
            if self.pending and not self.calls.busy:
                pause, remaining = (min(1.0, max(0.0, self.retry_at - time.monotonic())),
                                    time_left(until))
                if remaining is not None and pause >= remaining:
                    break
                time.sleep(pause)
        return finished

    def close(self, until: float | None = None) -> bool:
        """End the writing thread (after ``drain``); False if a write was left
        waiting on the database at ``until``."""
        return self.calls.close(time_left(until))

    # --- writing -------------------------------------------------------------------

    def _flush_each(self, records: list[Record], now: float) -> list[Entry]:
        """Each job's records in a transaction of their own."""
        finished: list[Entry] = []
        groups = _by_job(records)
        for number, group in enumerate(groups):
            try:
                recorded = self.store.record(as_completion(group, self.worker), self.hooks)
            except Exception as exc:
                if isinstance(exc, TRANSIENT) or not self._give_up(group, exc):
                    self._put_back([r for rest in groups[number:] for r in rest], now, exc)
                    return finished
                finished += self._set_aside(group, exc)
                continue
            self.health.succeeded()
            self._refusals.pop(_job_of(group), None)
            finished += self._written(group, recorded)
        self._one_by_one = False
        return finished

    def _give_up(self, group: list[Record], exc: Exception) -> bool:
        """Count a refusal of ``group``'s write; True once it is to be set aside."""
        job_id = _job_of(group)
        refusals = self._refusals[job_id] = self._refusals.get(job_id, 0) + 1
        if refusals < _REFUSALS_BEFORE_GIVING_UP:
            return False
        del self._refusals[job_id]
        return True

    def _set_aside(self, group: list[Record], exc: Exception) -> list[Entry]:
        """``group``'s write was refused again and again: the jobs it ends.

        A workflow step that completed, refused for what its completion carries
        (its result, in the chain's next step: too large for the server, say;
        see records.about_the_data), fails instead, which writes neither: the
        chain stops there and its catch learns why. Anything else (a server
        read-only for a while) is left to its lease: the job runs again.
        """
        instead = failed_instead(group, exc) if about_the_data(exc) else None
        if instead is not None:
            log.error("the database refused %d times to record that job %d completed; failing "
                      "it instead: %s", _REFUSALS_BEFORE_GIVING_UP, _job_of(group),
                      describe(exc))
            self.pending[:0] = instead
            self._failed_instead += [record for record in instead if type(record) is Failed]
            self._urgent += 1  # a Failed: written at the next flush
            return []
        log.error("the database refused %d times to record the outcome of job %d; giving up "
                  "on it (it runs again when its lease expires): %s",
                  _REFUSALS_BEFORE_GIVING_UP, _job_of(group), describe(exc))
        finished = []
        for record in group:
            if isinstance(record, ENDINGS):
                finished.append(record.entry)
            elif isinstance(record, Counted):
                record.entry.counting = False  # counted again later, if it runs on
        return finished

    def _put_back(self, records: list[Record], now: float, exc: Exception,
                  began: float | None = None) -> None:
        self.pending[:0] = records
        self._urgent += sum(isinstance(r, Released | Failed) for r in records)
        self.retry_at = now + self.health.failed("record job outcomes", exc, began=began)

    def _written(self, records: Sequence[Record], recorded: set[int]) -> list[Entry]:
        finished, lost = [], []
        debug = log.isEnabledFor(logging.DEBUG)
        for record in records:
            if type(record) is Completed and not debug:  # the common case, quickly
                finished.append(record.entry)
                if record.entry.id not in recorded:
                    lost.append(record.entry.id)
                if record.entry.payload is not None and record.entry.payload.flow:
                    self._requeued = True
                continue
            if _requeues(record):
                self._requeued = True
            if type(record) is Released and record.delay > 0:
                self._coming_due.append((time.monotonic() + record.delay,
                                         record.waits_for_lock))
            if isinstance(record, Counted):
                record.entry.counted, record.entry.counting = True, False
            elif isinstance(record, ENDINGS):
                finished.append(record.entry)
                if record.entry.id in recorded:
                    _log(record)
                elif isinstance(record, Completed):
                    lost.append(record.entry.id)
        if lost:
            # Another worker took them when their leases ran out (this one was
            # stopped, cut off): it may have run them again, or failed them.
            log.warning("%d completed job(s) had lost their lease to another worker; not "
                        "recorded here: %s", len(lost), ", ".join(map(str, lost[:20]))
                        + (", ..." if len(lost) > 20 else ""))
        return finished


class InlineCompleter(BatchCompleter):
    """Each job's outcome in a transaction of its own, written at once."""

    def __init__(self, store: Store, health: Health, worker: str,
                 hooks: Sequence[CompletionHook] = ()) -> None:
        super().__init__(store, health, worker, hooks, max_batch=1, max_wait=0.0)
        self._one_by_one = True

    def due(self, now: float, *, busy: bool = False) -> bool:
        return bool(self.pending) and now >= self.retry_at

    def flush(self, now: float | None = None) -> list[Entry]:
        self._one_by_one = True
        return super().flush(now)


def _requeues(record: Record) -> bool:
    """Whether writing ``record`` may make jobs ready: a job released (maybe at
    once), or the end of a job of a chain, batch or schedule (its next step or
    callback)."""
    return isinstance(record, Released) or (isinstance(record, ENDINGS)
                                            and bool(record.entry.flow))


def _job_of(group: Sequence[Record]) -> int:
    """The job a group of ``_by_job`` is about (0: the loose locks)."""
    return next((r.entry.id for r in group if not isinstance(r, Unlocked)), 0)


def _by_job(records: Sequence[Record]) -> list[list[Record]]:
    """``records`` grouped by job, in order of first appearance; loose locks last."""
    groups: dict[int, list[Record]] = {}
    loose: list[Record] = []
    for record in records:
        if isinstance(record, Unlocked):
            loose.append(record)
        else:
            groups.setdefault(record.entry.id, []).append(record)
    return [*groups.values(), *([loose] if loose else [])]


def _log(record: Record) -> None:
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
