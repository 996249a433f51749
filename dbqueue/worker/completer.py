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
from ..store.completion import Completion, CompletionHook
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
    by_job,
    failed_instead,
    job_of,
    log_written,
    requeues,
)

log = logging.getLogger("dbqueue.worker")

FLUSH_DELAY = 0.05  # seconds a completion may wait to share a transaction with others
_MAX_BATCH = 256
_REFUSALS_BEFORE_GIVING_UP = 3
Written = set[int] | list[set[int] | Exception]
"""A write's result: the jobs it recorded; one job at a time, each one's (see
``_write_each``)."""


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
        self.calls: Inline[Written] = (
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
        written (see ``requeues``)."""
        return any(map(requeues, (*self.pending, *self.writing)))

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
        self.writing = records
        # The completions are made here, where the entries are ours; only the
        # statements run on the writing thread, one job's at a time after a
        # refusal: on that thread too, so a server that hangs then holds up
        # no timeout, signal or stop either.
        if self._one_by_one:
            each = [(job_of(group), as_completion(group, self.worker))
                    for group in by_job(records)]
            last_tries = {job for job, refusals in self._refusals.items()
                          if refusals + 1 >= _REFUSALS_BEFORE_GIVING_UP}
            self.calls.submit(lambda: self._write_each(each, last_tries))
        else:
            completion = as_completion(records, self.worker)
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
        if isinstance(recorded, list):
            return self._written_each(by_job(records), recorded)
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

    def tell_unwritten(self, *, reservation_left: bool) -> None:
        """At a worker's stop: say what it could not write (nor take in, with
        ``reservation_left``); those jobs run again once their leases run
        out (a database that did not answer in time)."""
        unwritten = {record.entry.id for record in (*self.pending, *self.writing)
                     if not isinstance(record, Unlocked)}
        if unwritten or reservation_left:
            log.warning("stopping without %s: the database did not answer; %s once their "
                        "leases run out (--retry-after)",
                        f"the outcomes of {len(unwritten)} job(s)" if unwritten
                        else "the reservation on its way",
                        "those jobs run again" if unwritten else "its jobs come back")

    def close(self, until: float | None = None) -> bool:
        """End the writing thread (after ``drain``); False if a write was left
        waiting on the database at ``until``."""
        return self.calls.close(time_left(until))

    # --- writing -------------------------------------------------------------------

    def _write_each(self, completions: list[tuple[int, Completion]],
                    last_tries: set[int]) -> list[set[int] | Exception]:
        """On the writing thread: each job's records in a transaction of their
        own, up to the first write that fails, unless it is the last try of a
        job the server refuses (``last_tries``: that job is set aside, and the
        others go on). What a write raised stands in the list for its result."""
        written: list[set[int] | Exception] = []
        for job_id, completion in completions:
            try:
                written.append(self.store.record(completion, self.hooks))
            except Exception as exc:
                written.append(exc)
                if isinstance(exc, TRANSIENT) or job_id not in last_tries:
                    break
        return written

    def _written_each(self, groups: list[list[Record]],
                      written: list[set[int] | Exception]) -> list[Entry]:
        """The jobs ``_write_each`` finished with (``groups``: the records it
        wrote, by job); from the first write that failed for good, its records
        and the rest back to wait."""
        finished: list[Entry] = []
        for number, (group, recorded) in enumerate(zip(groups, written, strict=False)):
            if not isinstance(recorded, Exception):
                self.health.succeeded()
                self._refusals.pop(job_of(group), None)
                finished += self._written(group, recorded)
            elif isinstance(recorded, TRANSIENT) or not self._give_up(group, recorded):
                self._put_back([r for rest in groups[number:] for r in rest],
                               time.monotonic(), recorded)
                return finished
            else:
                finished += self._set_aside(group, recorded)
        self._one_by_one = False
        return finished

    def _give_up(self, group: list[Record], exc: Exception) -> bool:
        """Count a refusal of ``group``'s write; True once it is to be set aside."""
        job_id = job_of(group)
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
                      "it instead: %s", _REFUSALS_BEFORE_GIVING_UP, job_of(group),
                      describe(exc))
            self.pending[:0] = instead
            self._failed_instead += [record for record in instead if type(record) is Failed]
            self._urgent += 1  # a Failed: written at the next flush
            return []
        job_id = job_of(group)
        log.error("the database refused %d times to record %s; giving up on it (%s): %s",
                  _REFUSALS_BEFORE_GIVING_UP,
                  f"the outcome of job {job_id}" if job_id else "that locks were freed",
                  "it runs again when its lease expires" if job_id else
                  "they expire in their own time", describe(exc))
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
            if requeues(record):
                self._requeued = True
            if type(record) is Released and record.delay > 0 and not record.for_others:
                self._coming_due.append((time.monotonic() + record.delay,
                                         record.waits_for_lock))
            if isinstance(record, Counted):
                record.entry.counted, record.entry.counting = True, False
            elif isinstance(record, ENDINGS):
                finished.append(record.entry)
                if record.entry.id in recorded:
                    log_written(record)
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
