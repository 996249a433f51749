"""What became of each job the worker held, and writing it down.

The supervisor says how a job's attempt ended (completed, released, failed,
given back unstarted); the recorder decides what that means for the job
(retry, release, fail for good, by the pure policy) and queues the write in
its outbox; ``flush`` writes what is due. Each write matches the job's lease,
so a worker that lost a lease records nothing about that job; each logs what
it recorded once it is recorded, never before.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from functools import partial

from ..policy import Ended, GiveUp, decide
from ..store import Failure, Lease, Store
from .child import Finished, JobFailure, RunHook, class_name
from .health import DB_ERRORS, Health
from .intake import Held
from .outbox import Completion, Outbox, duration

log = logging.getLogger("dbqueue.worker")

FLUSH_DELAY = 0.05  # seconds a completion may wait to share a transaction with others
_FLUSH_BATCH = 256


class Recorder:
    def __init__(self, store: Store, health: Health, worker: str,
                 hooks: deque[RunHook]) -> None:
        self.store = store
        self.health = health
        self.worker = worker
        """``host:pid``, recorded with each failure."""
        self.hooks = hooks
        """Where a failed job's on_failure hook is queued, to run in a child."""
        self.outbox = Outbox()
        self.first_unflushed = 0.0
        self.next_flush = 0.0
        """After a failed write, when to try again."""

    def __len__(self) -> int:
        return len(self.outbox)

    # --- how attempts ended ------------------------------------------------------

    def completed(self, held: Held) -> None:
        self._note_write()
        self.unlock(held)
        self.outbox.completions.append(Completion(held.lease, held.row.job, held.runtime))

    def dropped(self, held: Held, why: str) -> None:
        """The job completes without running (WithoutOverlapping's dont_release)."""
        log.debug("job %d (%s) dropped: %s", held.row.id, held.row.job, why)
        self._note_write()
        self.unlock(held)
        self.outbox.completions.append(Completion(held.lease, held.row.job, None))

    def ended(self, held: Held, answer: Finished) -> bool:
        """The attempt ended without completing the job: retry, release or fail
        it. Returns True when the job goes back to the queue (it may be ready
        again at once)."""
        self.unlock(held)
        ended = Ended(answer.kind, held.row.attempts, answer.delay)  # type: ignore[arg-type]
        failure = Failure(answer.exception_class, answer.message, answer.traceback)
        try:
            decision = decide(ended, held.rules, held.db_now())
        except Exception as exc:  # rules no check foresaw (a row set by hand): this job only
            self.failed(held, Failure(class_name(exc), f"{failure.message} (and then no "
                        f"retry could be decided: {exc})", failure.traceback), ran=True)
            return False
        if isinstance(decision, GiveUp):
            if decision.why:
                failure = Failure(failure.exception_class,
                                  f"{failure.message} ({decision.why})", failure.traceback)
            self.failed(held, failure, ran=True)
            return False
        why = answer.message if ended.kind == "release" else (
            f"attempt {held.row.attempts} failed ({failure.exception_class}: {failure.message})")
        self.released(held, decision.delay, decision.counts, why)
        return True

    def released(self, held: Held, delay: float, counts: bool, why: str) -> None:
        """Put the job back for ``delay`` seconds; ``counts`` whether this attempt
        uses up a try (a failure does, a release or an unfinished run not)."""
        self._note_write()
        self.unlock(held)
        self.outbox.writes.append((held.lease, partial(self._release, held, delay, counts, why)))

    def failed(self, held: Held, failure: Failure, *, ran: bool) -> None:
        """Fail the job for good; ``ran`` says whether this attempt started (and counts)."""
        self._note_write()
        self.unlock(held)
        self.outbox.writes.append((held.lease, partial(self._fail, held, failure, ran)))
        if held.job is not None and held.job.on_failure is not None:
            self.hooks.append(RunHook(JobFailure(
                held.row.id, held.row.job, held.payload.args, held.payload.kwargs,
                held.row.attempts if ran else held.row.attempts - 1,
                failure.exception_class, failure.message)))

    def started(self, held: Held) -> None:
        """The job went to a child: a job unique until processing frees its key."""
        if held.job.unique and held.job.unique_until == "processing":
            self._note_write()
            self.outbox.writes.append((held.lease, self._drop_unique_key))

    def unlock(self, held: Held) -> None:
        """The job is leaving this worker: free its locks with the next completions."""
        if held.locks:
            self._note_write()
            self.outbox.unlock += [(key, owner) for key, owner, _ in held.locks]
            held.locks = []

    def give_back(self, helds: Sequence[Held]) -> None:
        """Put jobs reserved and never started back in the queue, as they were.

        At once, not through the outbox: another worker may take them now.
        """
        if helds:
            for held in helds:
                self.unlock(held)
            try:
                self.store.release_all([held.lease for held in helds])
            except DB_ERRORS as exc:  # their leases run out: they come back all the same
                self.health.failed("give back reserved jobs", exc)

    # --- writing -------------------------------------------------------------------

    def due(self, now: float, *, busy: bool, stopping: bool) -> bool:
        """Whether what waits should be written now. Completions wait a little to
        share one DELETE while other work is in hand (``busy``); failures and
        retries go at once (a retry may be due now)."""
        outbox = self.outbox
        return bool(outbox) and now >= self.next_flush and bool(
            outbox.writes or len(outbox) >= _FLUSH_BATCH or stopping or not busy
            or now - self.first_unflushed >= FLUSH_DELAY)

    def flush(self, now: float, started: Sequence[Held] = ()) -> None:
        """Write what waits, counting the attempts of ``started`` jobs (see
        Store.complete) in the completions' transaction."""
        if now < self.next_flush:
            return
        try:
            self.outbox.flush(self.store.complete, [(h.lease, h.row.attempts) for h in started])
        # Not only the database's errors: nothing here may stop the worker.
        except Exception as exc:
            self.next_flush = now + self.health.failed("record job outcomes", exc)
            return
        for held in started:
            held.counted = True
        self.health.succeeded()

    def drain(self, tries: int = 3) -> None:
        """Write what waits before the worker exits, trying a few times."""
        for _ in range(tries):
            if not self.outbox:
                return
            try:
                self.outbox.flush(self.store.complete)
            except Exception as exc:
                time.sleep(min(1.0, self.health.failed("record job outcomes", exc)))

    def next_wake(self) -> float:
        """When waiting completions are due to be written."""
        return max(self.first_unflushed + FLUSH_DELAY, self.next_flush)

    # The outbox's writes: each is handed the lease its job is held by when it
    # runs, and logs what it recorded once it is recorded.

    def _release(self, held: Held, delay: float, counts: bool, why: str, lease: Lease) -> None:
        # The attempt's number if it counts; one less if not (a release, a job
        # put back unfinished), whatever the heartbeat counted meanwhile.
        attempts = held.row.attempts if counts else held.row.attempts - 1
        if not self.store.release(lease, delay, attempts):
            return  # another worker holds it now: nothing of ours to record
        if counts:
            log.info("job %d (%s) %s; retrying in %.1f s", held.row.id, held.row.job, why, delay)
        else:
            log.debug("job %d (%s) released for %.1f s%s", held.row.id, held.row.job, delay,
                      f": {why}" if why else "")

    def _fail(self, held: Held, failure: Failure, ran: bool, lease: Lease) -> None:
        row = held.row
        attempts = row.attempts if ran else row.attempts - 1
        if not self.store.fail(row, lease.token, failure, self.worker, attempts):
            return
        if ran:
            log.warning("job %d (%s) failed after %d attempt(s)%s: %s: %s", row.id, row.job,
                        attempts, f" in {duration(held.runtime)}" if held.runtime else "",
                        failure.exception_class, failure.message)
        else:
            log.warning("job %d (%s) cannot run: %s", row.id, row.job, failure.message)

    def _drop_unique_key(self, lease: Lease) -> None:
        self.store.drop_unique_keys([lease])

    def _note_write(self) -> None:
        if not self.outbox:
            self.first_unflushed = time.monotonic()
