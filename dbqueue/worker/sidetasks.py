"""The worker's side tasks: what it does on a clock, beside running jobs.

Each is a small object with its own period and its own failure handling
(none shares a ``try`` with another): a failing renewal does not delay the
restart check, and a failing prune does not delay anything.

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

from ..store import Store, WorkerRegistry
from ..store.locks import Locks
from .clock import Deadline
from .completer import BatchCompleter
from .health import DB_ERRORS, Health
from .joblocks import JobLocks
from .ledger import Entry, Ledger, State
from .recorder import Recorder

log = logging.getLogger("dbqueue.worker")

DEAD_AFTER = 120.0  # seconds without a heartbeat after which a worker is forgotten
_PRUNE_EVERY = 60.0


class SideTask:
    what = ""
    """What it does, for the log: "could not {what}"."""

    def __init__(self, every: float, health: Health) -> None:
        self.every = every
        self.health = health
        self.next_at = 0.0

    def tick(self, now: float) -> None:
        """Run if due; on a database error, try again sooner than ``every``
        if the outage allows, and report it to ``health``."""
        if now < self.next_at:
            return
        self.next_at = now + self.every
        try:
            self.run()
        except DB_ERRORS as exc:
            self.next_at = now + min(self.every, self.health.failed(self.what, exc))
            return
        self.health.succeeded()

    def soon(self) -> None:
        """Run at the next tick."""
        self.next_at = 0.0

    def done(self, now: float) -> None:
        """Its work was just done another way: due again ``every`` from ``now``."""
        self.next_at = now + self.every

    def run(self) -> None:
        raise NotImplementedError


class LeaseRenewal(SideTask):
    what = "renew leases"

    def __init__(self, every: float, health: Health, *, store: Store, ledger: Ledger,
                 recorder: Recorder, job_locks: JobLocks, lease: float,
                 completer: BatchCompleter) -> None:
        super().__init__(every, health)
        self.completer = completer
        self.store = store
        self.ledger = ledger
        self.recorder = recorder
        self.job_locks = job_locks
        self.lease = lease

    def run(self) -> None:
        # Not the jobs whose records are being written: the write holds their
        # rows (and may have deleted them, which would read as a lease lost).
        writing = self.completer.writing_ids()
        holding = [entry for entry in self.ledger
                   if not entry.lease_lost and entry.id not in writing]
        until = Deadline.after(self.lease)  # read before the statement
        renewed = self.store.heartbeat([entry.lease for entry in holding], self.lease)
        lost = []
        for entry in holding:
            if entry.id in renewed:
                entry.lease_until = until
            else:
                lost.append(entry)
        if lost:
            self._drop_lost(lost)
        self._lost_locks(self.job_locks.renew(self.ledger.holding()))

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
        log.warning("%d job lease(s) were lost to other workers: this worker stalled longer "
                    "than --retry-after; %d job(s) not yet started were dropped, %d running "
                    "one(s) may also run elsewhere", len(lost), len(waiting),
                    sum(entry.state == State.RUNNING for entry in lost))

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
                 worker_id: str) -> None:
        super().__init__(every, health)
        self.registry = registry
        self.worker_id = worker_id
        self.restart_requested = False

    def run(self) -> None:
        if self.registry.beat(self.worker_id):
            self.restart_requested = True
        self.registry.prune(silent_for=DEAD_AFTER)


class Pruning(SideTask):
    what = "prune expired locks"

    def __init__(self, health: Health, *, store: Store) -> None:
        super().__init__(_PRUNE_EVERY, health)
        self.locks = Locks(store)

    def run(self) -> None:
        self.locks.prune()  # expired rows hold nothing; keep the table small
