"""The scheduler: a side task of every ``dbqueue work``, with no leader.

Each pass reads the schedules' rows and the database server's clock in one
statement, works out the ticks due since each schedule's last one (a pure
decision, policy.recurrence.due_ticks) and claims them: a tick's run is
queued in the transaction that claims it, under the tick's unique key, so
however many hosts run passes at once each tick is queued once, and while any
host runs the scheduler no tick is lost. The next pass is timed for the next
tick, by the server's clock as read at this pass.

At its first pass the scheduler declares the application's schedules: the
code is their source of truth. A new schedule's ticks count from then, so
does a changed definition's, and the rows of schedules the code no longer
declares are deleted. A worker whose application declares none runs no
scheduler: it deletes them once at start instead (:func:`forget_schedules`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from ..policy.recurrence import due_ticks
from ..schedule import Schedule
from ..store import Store
from ..store.schedules import MISSED, QUEUED, Claimed, Schedules
from .health import Health
from .sidetasks import SideTask

log = logging.getLogger("dbqueue.worker")

_LONGEST_PAUSE = 30.0
"""The longest time between passes, however far the next tick: a pass also
notices a schedule whose row is gone or whose definition another worker changed."""
_SHORTEST_PAUSE = 0.01
_PRUNE_EVERY = 600.0


class Scheduler(SideTask):
    what = "run the schedules"

    def __init__(self, health: Health, *, store: Store, schedules: Sequence[Schedule],
                 apart: bool = False) -> None:
        super().__init__(_LONGEST_PAUSE, health, apart=apart)
        self.schedules = {schedule.name: schedule for schedule in schedules}
        self.verbs = Schedules(store)
        self.declared = False
        self.deferred: set[str] = set()
        self.prune_at = 0.0
        self._queued = False

    def work(self) -> Callable[[], int]:
        # The whole pass, apart: it touches only the scheduler's own state.
        return self._pass

    def apply(self, result: int) -> None:
        self._queued = self._queued or result > 0

    def take_queued(self) -> bool:
        """Whether a pass queued runs since the last call (ready now: a
        worker about to stop once the queue is empty runs them first)."""
        queued, self._queued = self._queued, False
        return queued

    def _pass(self) -> int:
        """One pass; the number of runs it queued."""
        if not self.declared:
            gone = self.verbs.declare([s.declared() for s in self.schedules.values()],
                                      forget_others=True)
            self.declared = True
            if gone:
                log.warning("scheduler: %s no longer in this code: deleted its row and ticks "
                            "(a worker still on code that has it declares it again, and "
                            "queues its runs, until it restarts)", ", ".join(gone))
            log.info("scheduler: %s", ", ".join(
                f"{s.name} ({s.recurrence.describe()})" for s in self.schedules.values()))
        read_at = time.monotonic()
        now, rows = self.verbs.state(self.schedules)
        missing = [schedule.declared() for name, schedule in self.schedules.items()
                   if name not in rows]
        if missing:  # deleted meanwhile (by a worker on other code): from now on again
            self.verbs.declare(missing)
            log.warning("scheduler: %s deleted by a worker whose code does not have it (a "
                        "newer version, or another application on this table prefix): "
                        "declared again, as this worker's code has it",
                        ", ".join(schedule.name for schedule in missing))
        wake, queued = [now.timestamp() + _LONGEST_PAUSE], 0
        for name, row in rows.items():
            schedule = self.schedules[name]
            if not self._ours(schedule, row.definition):
                continue
            ticks = due_ticks(schedule.recurrence, row.after, now, missed=schedule.missed)
            if ticks:
                late = {tick.at for tick in ticks if tick.late}
                claimed = self.verbs.claim(schedule.declared(), ticks)
                queued += sum(claim.status == QUEUED for claim in claimed)
                self._report(schedule, claimed, late)
            upcoming = schedule.recurrence.next_after(max(now, ticks[-1].at if ticks
                                                          else row.after))
            if upcoming is not None:
                wake.append(upcoming.timestamp())
        # The server's clock reaches the next tick about this much later; read_at
        # was taken before the statement, so the pass wakes just after the tick.
        pause = min(wake) - now.timestamp()
        self.next_at = read_at + min(max(pause, _SHORTEST_PAUSE), _LONGEST_PAUSE)
        if read_at >= self.prune_at:
            self.prune_at = read_at + _PRUNE_EVERY
            self.verbs.prune()
        return queued

    def _ours(self, schedule: Schedule, definition: str) -> bool:
        """Whether this worker's definition of the schedule is the one declared
        last; if not, a worker started later with other code declared it, and
        this one leaves the schedule to those."""
        if definition == schedule.recurrence.describe():
            self.deferred.discard(schedule.name)
            return True
        if schedule.name not in self.deferred:
            self.deferred.add(schedule.name)
            log.warning("schedule %s is now %r, declared by a worker started since with "
                        "other code (here: %r); this worker leaves it to those until it "
                        "restarts", schedule.name, definition, schedule.recurrence.describe())
        return False

    @staticmethod
    def _report(schedule: Schedule, claimed: list[Claimed], late: set[datetime]) -> None:
        for claim in claimed:
            at = _shown(claim.tick)
            if claim.status == QUEUED and claim.tick in late:
                log.warning("schedule %s: the tick of %s (and any before it since the last) "
                            "fell while no worker ran the scheduler: job %s runs it once "
                            "(missed=\"run_once\")", schedule.name, at, claim.job_id)
            elif claim.status == QUEUED:
                log.debug("schedule %s: queued job %s for %s", schedule.name, claim.job_id, at)
            elif claim.status == MISSED:
                log.warning("schedule %s: the tick of %s (and any before it since the last) "
                            "fell while no worker ran the scheduler: skipped (missed=\"skip\")",
                            schedule.name, at)
            else:
                log.debug("schedule %s: the tick of %s not queued (%s)", schedule.name, at,
                          claim.status)


def forget_schedules(store: Store) -> None:
    """Delete the rows and ticks of every schedule, for a worker that runs the
    scheduler but whose application declares none: else the last schedule
    removed from the code would keep its rows for ever. Each statement in a
    short transaction of its own."""
    verbs = Schedules(store)
    # A read first: most applications never had a schedule, and their workers
    # need not each take a write lock at start (on SQLite, the one for all).
    _, rows = verbs.state()
    if rows:
        verbs.declare([], forget_others=True)
        log.warning("scheduler: the application declares no schedule; deleted the rows and "
                    "ticks of %s (the schedules of another application sharing this table "
                    "prefix? run its workers with --no-schedule, or give it a prefix of "
                    "its own)", ", ".join(sorted(rows)))


def _shown(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"
