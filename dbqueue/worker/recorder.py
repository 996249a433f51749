"""What an attempt's end means for its job, decided and handed to the completer.

The supervisor says how a job's attempt ended (completed, failed, released,
given back unstarted); the recorder decides what that means (retry, release,
fail for good, by the pure policy), settles the job in the ledger, and adds
the records to write: the outcome, and the freeing of the job's locks, which
commits with it. It is the one place where a job leaves the worker's hands.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence

from ..jobs import JobFailure
from ..policy import Ended, GiveUp, decide
from ..store import Failure, Store
from .background import Bound
from .completer import Completer
from .health import DB_ERRORS, Health
from .ledger import Entry, Ledger
from .messages import Finished, RunHook, class_name
from .records import Completed, Failed, KeyFreed, Record, Released, Unlocked

log = logging.getLogger("dbqueue.worker")


def say_leases_lost(count: int, what_became: str) -> None:
    """The warning for ``count`` leases another worker took while this one
    stalled (the renewal or a give-back finds them), and ``what_became`` of
    their jobs here."""
    log.warning("%d job lease(s) were lost to other workers: this worker stalled longer than "
                "its lease (retry_after); %s", count, what_became)


class Recorder:
    def __init__(self, ledger: Ledger, completer: Completer, store: Store, health: Health,
                 hooks: deque[RunHook], *, bound: Bound | None = None) -> None:
        """``bound``: how the supervisor's thread, the one that gives jobs
        back, waits for that statement (default: inline, as long as it takes)."""
        self.ledger = ledger
        self.completer = completer
        self.store = store
        self.health = health
        self.hooks = hooks
        """Where a failed job's on_failure hook is queued, to run in a child."""
        self.bound = bound or Bound()
        self._given_back = False
        self.failed_unrun = 0
        """Jobs failed for good without running here (an unknown job, a payload
        that cannot be decoded, attempts used up by a crash...)."""

    def completed(self, entry: Entry) -> None:
        self._settle(entry, Completed(entry), processed=True)

    def dropped(self, entry: Entry, why: str) -> None:
        """The job completes without running (a lock's ``dont_release``)."""
        log.debug("job %d (%s) dropped: %s", entry.id, entry.row.job, why)
        entry.runtime = None
        self._settle(entry, Completed(entry), processed=True)

    def ended(self, entry: Entry, answer: Finished) -> bool:
        """The attempt ended without completing the job: retry, release or fail
        it. Returns True when the job goes back to the queue (it may be ready
        again at once)."""
        attempt = entry.row.attempts
        ended = Ended(answer.kind, attempt, answer.delay)  # type: ignore[arg-type]
        failure = Failure(answer.exception_class, answer.message, answer.traceback)
        try:
            decision = decide(ended, entry.rules, entry.db_now())
        except Exception as exc:  # rules no check foresaw (a row set by hand): this job only
            self.failed(entry, Failure(class_name(exc), f"{failure.message} (and then no "
                        f"retry could be decided: {exc})", failure.traceback), ran=True)
            return False
        if isinstance(decision, GiveUp):
            if decision.why:
                failure = Failure(failure.exception_class,
                                  f"{failure.message} ({decision.why})", failure.traceback)
            self.failed(entry, failure, ran=True)
            return False
        why = answer.message if ended.kind == "release" else (
            f"attempt {attempt} failed ({failure.exception_class}: {failure.message})")
        self.released(entry, decision.delay, decision.counts, why, processed=True,
                      waits_for_lock=answer.held_back)
        return True

    def released(self, entry: Entry, delay: float, counts: bool, why: str, *,
                 processed: bool = False, waits_for_lock: bool = False,
                 for_others: bool = False) -> None:
        """Put the job back for ``delay`` seconds; ``counts`` whether this attempt
        uses up a try (a failure does; a release, or a job put back unfinished,
        not: whatever the heartbeat counted meanwhile is taken back);
        ``waits_for_lock``, ``for_others``: see Released."""
        attempts = entry.row.attempts if counts else entry.row.attempts - 1
        self._settle(entry, Released(entry, delay, attempts, why, counts, waits_for_lock,
                                     for_others), processed=processed)

    def failed(self, entry: Entry, failure: Failure, *, ran: bool) -> None:
        """Fail the job for good; ``ran`` says whether this attempt started (and counts)."""
        attempts = entry.row.attempts if ran else entry.row.attempts - 1
        self._settle(entry, Failed(entry, failure, attempts, ran), processed=ran)
        self.failed_unrun += not ran
        self.hook_failure(entry, failure, attempts)

    def hook_failure(self, entry: Entry, failure: Failure, attempts: int) -> None:
        """Queue the job's on_failure hook, if it has one: it has failed for good."""
        if entry.job is not None and entry.job.on_failure is not None:
            self.hooks.append(RunHook(JobFailure(
                entry.id, entry.row.job, entry.decoded().args, entry.decoded().kwargs, attempts,
                failure.exception_class, failure.message)))

    def began(self, entry: Entry) -> None:
        """The job began in a child: a job unique until processing frees its
        key, once. Not when it is handed to the child: it may come back
        unstarted (the worker stops, the child dies), and keep its key."""
        job = entry.job
        if (not entry.key_freed and job is not None and job.unique
                and job.unique_until == "processing"):
            entry.key_freed = True
            self.completer.add(KeyFreed(entry))

    def give_back(self, entries: Sequence[Entry]) -> None:
        """Put jobs reserved and never started back in the queue, as they were.

        At once, not through the completer: another worker may take them now.
        """
        if not entries:
            return
        self._given_back = True
        held = [(key, owner) for entry in entries for key, owner, _ in entry.locks]
        for entry in entries:
            entry.locks = ()  # freed with the rows, in one transaction
            self.ledger.forget(entry)
        leases = [entry.lease for entry in entries]
        try:
            released = self.bound(lambda: self.store.release_all(leases, held))
        except DB_ERRORS as exc:  # their leases run out: they come back all the same
            self.health.failed("give back reserved jobs", exc)
            for key, owner in held:  # and their locks go with the next records written
                self.completer.add(Unlocked(key, owner))
            return
        if released < len(leases):  # the renewal, had it come first, would have said so
            say_leases_lost(len(leases) - released,
                            "those jobs, not started here, are theirs now")

    def take_given_back(self) -> bool:
        """Whether jobs were given back since the last call (they may be ready)."""
        given_back, self._given_back = self._given_back, False
        return given_back

    def drop_lost(self, entry: Entry) -> None:
        """Another worker holds the job now (this one stalled): forget it unstarted."""
        self._unlock(entry)
        self.ledger.forget(entry)

    def _settle(self, entry: Entry, record: Record, *, processed: bool) -> None:
        self.ledger.settle(entry, ran=processed)
        self._unlock(entry)
        self.completer.add(record)

    def _unlock(self, entry: Entry) -> None:
        """The job is leaving: its locks are freed with the next records written."""
        for key, owner, _ in entry.locks:
            self.completer.add(Unlocked(key, owner))
        entry.locks = ()
