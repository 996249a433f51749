"""Recurring jobs: ``app.schedule(job.prepare(...), cron=... | every=...)``.

Every ``dbqueue work`` runs the scheduler (``--no-schedule`` turns it off on
a host); the hosts share the work through the database, with no leader (see
dbqueue.store.schedules). This module holds what an application declares and
what ``dbqueue schedule list`` and ``schedule run`` read and do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from .errors import ConfigurationError, NotFound
from .policy.durations import MAX_SECONDS
from .policy.recurrence import MISSED_POLICIES, History, Recurrence, overdue
from .store.schedules import Declared, ScheduleRow, Schedules

if TYPE_CHECKING:
    from .app import App
    from .jobs import PreparedJob

_MAX_NAME = 191  # the key column


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring job, as ``app.schedule`` declared it."""

    name: str
    prepared: PreparedJob
    recurrence: Recurrence
    missed: str = "skip"
    """What to do with ticks that fell while no worker ran the scheduler:
    "skip" them (the default), or "run_once" (one run for all of them)."""
    without_overlapping: bool = False
    """Queue no run while the previous run is still queued or running."""
    expect_within: float | None = None
    """Seconds after its tick within which a run should have finished; after
    that ``dbqueue schedule list`` flags the schedule as overdue."""

    @classmethod
    def build(cls, prepared: PreparedJob, *, cron: str | None, every: float | timedelta | None,
              timezone: str | tzinfo | None, name: str | None, missed: str,
              without_overlapping: bool, expect_within: float | timedelta | None) -> Schedule:
        """A checked schedule; ConfigurationError naming the mistake otherwise."""
        name = prepared.new_job.job if name is None else name
        if not isinstance(name, str) or not name.strip() or len(name) > _MAX_NAME:
            raise ConfigurationError(
                f"a schedule's name must be a non-empty string of at most {_MAX_NAME} "
                f"characters, not {name!r}")
        if not isinstance(without_overlapping, bool):
            raise ConfigurationError(f"without_overlapping must be True or False, not "
                                     f"{without_overlapping!r}")
        if missed not in MISSED_POLICIES:
            raise ConfigurationError(
                f"missed={missed!r}: use \"skip\" (drop ticks that fell while no worker "
                "ran the scheduler) or \"run_once\" (one run for them all)")
        if isinstance(expect_within, timedelta):
            expect_within = expect_within.total_seconds()
        if expect_within is not None and (
                isinstance(expect_within, bool) or not isinstance(expect_within, int | float)
                or not 0 < expect_within <= MAX_SECONDS):  # NaN fails too
            raise ConfigurationError(
                f"expect_within={expect_within!r} must be a number of seconds above 0, at "
                f"most {MAX_SECONDS:,} (a hundred years)")
        recurrence = Recurrence.build(cron=cron, every=every, timezone=timezone)
        return cls(name, prepared, recurrence, missed, without_overlapping,
                   None if expect_within is None else float(expect_within))

    def declared(self) -> Declared:
        """What the store keeps of it."""
        return Declared(self.name, self.recurrence.describe(), self.prepared.new_job,
                        self.without_overlapping)


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """One schedule as ``dbqueue schedule list`` shows it (times in UTC)."""

    name: str
    job: str
    definition: str
    last_tick: datetime | None
    last_status: str | None
    """queued, missed, overlapping (not queued: the previous run still went
    on), held (not queued: a job held its unique key)."""
    last_job_id: int | None
    last_run_tick: datetime | None
    """The tick of the last run queued (for a run queued by hand, its time)."""
    last_ended_tick: datetime | None
    """The tick of the last run that ended, its outcome (done, failed or
    skipped) and when it ended."""
    last_outcome: str | None
    last_ended_at: datetime | None
    next_tick: datetime | None
    overdue: str | None
    """Why the schedule is overdue, or None."""


def statuses(app: App) -> list[ScheduleStatus]:
    """The application's schedules, in name order, with their last and next runs."""
    schedules = app.schedules
    now, rows = Schedules(app.store).state(list(schedules))
    return [_status(schedules[name], rows.get(name), now) for name in sorted(schedules)]


def _status(schedule: Schedule, row: ScheduleRow | None, now: datetime) -> ScheduleStatus:
    definition = schedule.recurrence.describe()
    if row is None or row.definition != definition:
        # No worker with this code has run the scheduler yet: no tick is due
        # before one does (its ticks count from then).
        why = ("no worker has declared this schedule yet" if row is None else
               f"the workers run it as {row.definition!r}")
        return ScheduleStatus(schedule.name, schedule.prepared.new_job.job, definition,
                              None, None, None, None, None, None, None,
                              schedule.recurrence.next_after(now),
                              f"{why}: start `dbqueue work` with this code (without "
                              "--no-schedule)")
    history = History(after=row.after, last_status=row.last_status, last_tick=row.last_tick,
                      run_tick=row.last_run_tick, ended_tick=row.last_ended_tick,
                      ended_at=row.last_ended_at)
    return ScheduleStatus(
        schedule.name, schedule.prepared.new_job.job, definition, row.last_tick,
        row.last_status, row.last_job_id, row.last_run_tick, row.last_ended_tick,
        row.last_outcome, row.last_ended_at, schedule.recurrence.next_after(max(now, row.after)),
        overdue(schedule.recurrence, history, now, expect_within=schedule.expect_within))


def run_now(app: App, name: str) -> int | None:
    """Queue one run of schedule ``name`` now; its job id, or None when a job
    holds its unique key. NotFound for a name the application does not declare."""
    schedule = app.schedules.get(name)
    if schedule is None:
        known = ", ".join(sorted(app.schedules)) or "none"
        raise NotFound(f"no schedule named {name!r} in this application (its schedules: "
                       f"{known}); list them with: dbqueue schedule list")
    return Schedules(app.store).run_now(schedule.declared())
