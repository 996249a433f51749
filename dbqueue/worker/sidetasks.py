"""The worker's side tasks: what it does on a clock, beside running jobs.

Each is a small object with its own period and its own failure handling
(none shares a ``try`` with another): a failing renewal does not delay the
restart check, and a failing prune does not delay anything.

Where the database is a server, each runs its statements on a thread of its
own (see worker.background), one call at a time: a statement that waits (a
dark network path, a lock) holds up neither the others nor the supervisor,
which goes on timing jobs, reading answers and heeding signals. What a call
means for the ledger is decided back on the supervisor's thread (``apply``),
which alone touches the ledger. A lease renewal that has not answered for a
whole period leaves the worker's leases in doubt: the supervisor then starts
no new work until it does (``LeaseRenewal.stuck``).

- :class:`LeaseRenewal`: renews the leases and locks of every job in the
  ledger; notices the ones lost while this worker stalled.
- :class:`Control`: the worker's own heartbeat row, through which
  ``dbqueue restart`` reaches it, and the pruning of dead workers' rows.
- :class:`Pruning`: deletes expired locks, which hold nothing. Its first
  run is among the worker's start-up chores (see Supervisor), off the path
  to the first job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..store import Lease, Store, WorkerRegistry
from ..store.locks import Locks
from .background import Inline, OnThread, time_left
from .clock import Deadline
from .completer import BatchCompleter
from .health import DB_ERRORS, Health
from .joblocks import JobLocks
from .ledger import Entry, Ledger, State
from .recorder import Recorder, say_leases_lost

log = logging.getLogger("dbqueue.worker")

DEAD_AFTER = 120.0  # seconds without a heartbeat after which a worker is forgotten
_PRUNE_EVERY = 60.0


class SideTask:
    what = ""
    """What it does, for the log: "could not {what}"."""

    def __init__(self, every: float, health: Health, *, apart: bool = False) -> None:
        """``apart``: run the statements on a thread of the task's own (else inline)."""
        self.every = every
        self.health = health
        self.next_at = 0.0
        self.calls: Inline[Any] = OnThread(f"dbqueue-{type(self).__name__.lower()}") if apart \
            else Inline()

    def tick(self, now: float) -> None:
        """Take in the call that has ended, if any; else start one if due. On
        a database error, try again sooner than ``every`` if the outage
        allows, and report it to ``health``."""
        if self.calls.busy:
            if self.calls.done():
                self._settle()
            return
        if now < self.next_at:
            return
        self.next_at = now + self.every
        self.calls.submit(self.work())
        if self.calls.done():  # inline: ended already
            self._settle()

    def _settle(self) -> None:
        began = self.calls.began
        try:
            result = self.calls.take()
        except DB_ERRORS as exc:
            self.next_at = began + min(self.every, self.health.failed(self.what, exc))
            return
        self.health.succeeded()
        self.apply(result)

    def run(self) -> None:
        """Do it now, on this thread."""
        self.apply(self.work()())

    def soon(self) -> None:
        """Run at the next tick (or the one after the call on its way)."""
        self.next_at = 0.0

    def done(self, now: float) -> None:
        """Its work was just done another way: due again ``every`` from ``now``."""
        self.next_at = now + self.every

    def fileno(self) -> int | None:
        """Readable once a call on its way has ended (None: calls run inline)."""
        return self.calls.fileno()

    def close(self, until: float | None = None) -> bool:
        """Wait for the call on its way, if any, until ``until`` (monotonic) at
        the latest, and end the task's thread; False if the call was left
        waiting on the database."""
        return self.calls.close(time_left(until))

    def work(self) -> Callable[[], Any]:
        """On the supervisor's thread: the statements to run (apart or inline)."""
        raise NotImplementedError

    def apply(self, result: Any) -> None:
        """On the supervisor's thread: what ``work``'s statements returned."""


class LeaseRenewal(SideTask):
    what = "renew leases"

    def __init__(self, every: float, health: Health, *, ledger: Ledger, recorder: Recorder,
                 job_locks: JobLocks, lease: float, completer: BatchCompleter,
                 apart: bool = False) -> None:
        super().__init__(every, health, apart=apart)
        self.completer = completer
        self.store = completer.store
        self.ledger = ledger
        self.recorder = recorder
        self.job_locks = job_locks
        self.lease = lease
        self._asked: tuple[list[tuple[Entry, Lease]], Deadline, list[Entry]] = (
            [], Deadline.after(0), [])
        """The call on its way: the jobs whose leases and locks it renews, and
        until when a lease renewed lasts at least."""

    def work(self) -> Callable[[], Any]:
        # The jobs whose records are being written apart: the write may hold
        # their rows, for as long as it waits for a lock (they are skipped
        # then), or have deleted them (which would read as a lease lost).
        writing = self.completer.writing_ids()
        holding: list[Entry] = []
        written: list[Entry] = []
        for entry in self.ledger:
            if not entry.lease_lost:
                (written if entry.id in writing else holding).append(entry)
        locking = self.ledger.holding()
        until = Deadline.after(self.lease)  # read before the statement
        leases = [(entry, entry.lease) for entry in holding]
        self._asked = (leases, until, locking)
        renew_locks = self.job_locks.renewal(locking)
        unless_locked = [entry.lease for entry in written]
        return lambda: (self.store.heartbeat([lease for _, lease in leases], self.lease,
                                             unless_locked),
                        renew_locks())

    def apply(self, result: tuple[set[int], set[tuple[str, str]] | None]) -> None:
        renewed, kept = result
        holding, until, locking = self._asked
        # Only what is still as it was when the call went out: a job may have
        # ended meanwhile, and its write deleted the row the renewal missed.
        # (Nor one reserved again under a new token: see Reserver._again.)
        current = self._current()
        lost = []
        for entry, lease in holding:
            if entry not in current or entry.lease is not lease:
                continue
            if entry.id in renewed:
                entry.lease_until = until
            else:
                lost.append(entry)
        if lost:
            self._drop_lost(lost)
        self._lost_locks(self.job_locks.lost([e for e in locking if e in current], kept))

    def stuck(self, now: float) -> bool:
        """Whether a renewal has been on its way for longer than a period."""
        return self.calls.busy and now - self.calls.began > self.every

    def _current(self) -> set[Entry]:
        writing = self.completer.writing_ids()
        return {entry for entry in self.ledger if entry.id not in writing}

    def _drop_lost(self, lost: list[Entry]) -> None:
        """Another worker took these jobs after this one stalled past --retry-after.

        One not started yet is dropped: it is the other worker's to run. One
        running cannot be recalled: it goes on, and may run beside the other's
        run; writing its outcome changes nothing (the lease is fenced), and it
        is reported once.
        """
        waiting = [entry for entry in lost if entry.state == State.RESERVED]
        for entry in waiting:
            self.recorder.drop_lost(entry)
        for entry in lost:
            entry.lease_lost = True
        running = sum(entry.state == State.RUNNING for entry in lost)
        say_leases_lost(len(lost), f"{len(waiting)} job(s) not yet started were dropped, "
                                   f"{running} running one(s) may also run elsewhere")

    def _lost_locks(self, lost: list[tuple[Entry, str]]) -> None:
        """Some locks expired while this worker stalled, and may be another's now.

        A job that has not started yet goes back to the queue (its attempt not
        counted); one already running cannot be stopped safely and goes on.
        """
        for entry, key in lost:
            if entry.state == State.RESERVED:
                log.warning("job %d (%s) lost its lock %s while it waited; put back",
                            entry.id, entry.row.job, key)
                self.recorder.give_back([entry])
            else:
                log.warning("job %d (%s) lost its lock %s while it ran (this worker "
                            "stalled): another job with that key may run beside it",
                            entry.id, entry.row.job, key)


class Control(SideTask):
    """This worker's row in the registry: renewed, and read for a restart request."""

    what = "send the worker's heartbeat"

    def __init__(self, every: float, health: Health, *, registry: WorkerRegistry,
                 worker_id: str, apart: bool = False) -> None:
        super().__init__(every, health, apart=apart)
        self.registry = registry
        self.worker_id = worker_id
        self.restart_requested = False

    def work(self) -> Callable[[], bool]:
        def beat() -> bool:
            asked = self.registry.beat(self.worker_id)
            self.registry.prune(silent_for=DEAD_AFTER)
            return asked

        return beat

    def apply(self, result: bool) -> None:
        if result:
            self.restart_requested = True


class Pruning(SideTask):
    what = "prune expired locks"

    def __init__(self, health: Health, *, store: Store, apart: bool = False) -> None:
        super().__init__(_PRUNE_EVERY, health, apart=apart)
        self.locks = Locks(store)

    def work(self) -> Callable[[], Any]:
        return self.locks.prune  # expired rows hold nothing; keep the table small
