"""Schedules: recurring jobs, their ticks and their last runs (see dbqueue.schedule).

``schedules`` holds a row per schedule; ``schedule_ticks`` a row per tick
claimed, under the unique key (schedule, tick). No host leads: every worker's
scheduler claims the ticks it finds due, and a tick's run is queued in the
transaction that claims it, so each tick is queued once however many hosts
try. That transaction first locks the schedule's row: claims of one schedule
follow one another, each sees the runs the one before queued (for
``without_overlapping``), and the last tick only ever moves forward.

Every time compared here is the database server's (DESIGN §2.6).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import serializer
from ..policy.recurrence import Tick
from .dispatch import Dispatch
from .flows import FlowEnd, with_flow
from .transactions import Transactions
from .values import NewJob

QUEUED, MISSED, OVERLAPPING, HELD, MANUAL = "queued", "missed", "overlapping", "held", "manual"
"""What became of a tick: its run queued; missed (no scheduler ran at its time,
and its schedule skips missed ticks); not queued because the previous run was
still queued or running (``without_overlapping``), or because a job holds the
run's unique key; a run queued by hand (``dbqueue schedule run``)."""

KEEP_TICKS = 86400.0
"""Seconds a tick's row is kept after it was claimed, once its run has ended."""
_KEEP_UNENDED = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Declared:
    """What the store needs of a schedule the application declares."""

    name: str
    definition: str
    """Its recurrence as text: when it changes, ticks count from the change."""
    job: NewJob
    """The job each run queues."""
    without_overlapping: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule's row: its last tick and its last runs (times from the server's clock)."""

    name: str
    definition: str
    declared_at: datetime
    last_tick: datetime | None
    last_status: str | None
    last_job_id: int | None
    last_run_tick: datetime | None
    last_queued_at: datetime | None
    last_ended_tick: datetime | None
    last_outcome: str | None
    last_ended_at: datetime | None

    @property
    def after(self) -> datetime:
        """Every tick up to here has been dealt with: the last tick, or the
        (re)declaration when that came later."""
        if self.last_tick is None or self.last_tick < self.declared_at:
            return self.declared_at
        return self.last_tick


@dataclass(frozen=True, slots=True)
class Claimed:
    """A tick claimed by this worker, and what became of it."""

    tick: datetime
    status: str
    job_id: int | None = None


class Schedules:
    """The scheduler's verbs. Each runs in a short transaction of its own."""

    def __init__(self, store: Dispatch) -> None:
        self.store = store
        self.table = store.tables.schedules
        self.ticks = store.tables.schedule_ticks

    # --- declaring ----------------------------------------------------------------

    def declare(self, declared: Sequence[Declared], *,
                forget_others: bool = False) -> list[str]:
        """Create the rows of new schedules; for one whose definition changed,
        record the new one and count its ticks from now. With ``forget_others``,
        delete the rows and ticks of schedules not in ``declared`` (the code no
        longer declares them), and return their names."""
        table, now = self.table, self.store.dialect.now()
        names = {schedule.name for schedule in declared}

        def work(c: Connection) -> list[str]:
            stored = dict(c.execute(sa.select(table.c.name, table.c.definition)).all())
            for schedule in declared:
                known = stored.get(schedule.name)
                if known is None:
                    self._insert_row(c, schedule)
                elif known != schedule.definition:
                    # Not when another worker declared the same since the read:
                    # its ticks would count from a later moment, and one
                    # claimed meanwhile would be counted again or lost.
                    c.execute(sa.update(table).where(
                        table.c.name == schedule.name,
                        table.c.definition != schedule.definition,
                    ).values(definition=schedule.definition, declared_at=now))
            gone = sorted(name for name in stored if name not in names)
            if not forget_others or not gone:
                return []
            c.execute(sa.delete(self.ticks).where(self.ticks.c.schedule.in_(gone)))
            c.execute(sa.delete(table).where(table.c.name.in_(gone)))
            return gone

        return self.store.transaction(work)

    def _insert_row(self, c: Connection, schedule: Declared) -> None:
        """The row of a new schedule: its ticks count from now."""
        table = self.table
        self.store.dialect.insert_if_absent(c, table, {
            "name": schedule.name, "definition": schedule.definition,
            "declared_at": self.store.dialect.now()}, table.c.name, table.c.name)

    # --- reading ------------------------------------------------------------------

    def state(self, names: Collection[str] | None = None
              ) -> tuple[datetime, dict[str, ScheduleRow]]:
        """The server's time, and the rows of ``names`` (every row for None)."""
        table = self.table

        def work(c: Connection) -> tuple[datetime, dict[str, ScheduleRow]]:
            now = c.execute(sa.select(self.store._now())).scalar_one()
            query = sa.select(table)
            if names is not None:
                query = query.where(table.c.name.in_(list(names)))
            rows = {row.name: ScheduleRow(**row._asdict()) for row in c.execute(query)}
            return now, rows

        return self.store.read(work)

    # --- claiming -----------------------------------------------------------------

    def claim(self, schedule: Declared, ticks: Sequence[Tick]) -> list[Claimed]:
        """Claim ``ticks`` of ``schedule`` (in order) and queue their runs, in one
        transaction. Ticks another worker has dealt with are left out, and so is
        everything when the row holds another definition: a worker started
        later declared it, and the workers still on the old code leave the
        schedule to those on the new."""
        return self.store.transaction(lambda c: self._claim(c, schedule, ticks))

    def _claim(self, c: Connection, schedule: Declared, ticks: Sequence[Tick]) -> list[Claimed]:
        row = self._locked_row(c, schedule.name)
        if row is None or row.definition != schedule.definition:
            return []
        claimed: list[Claimed] = []
        last_job_id = row.last_job_id
        for tick in ticks:
            if tick.at <= row.after or (claimed and tick.at <= claimed[-1].tick):
                continue
            status, job_id = MISSED, None
            if tick.run:
                status, job_id = self._queue(c, schedule, tick.at, last_job_id)
                last_job_id = job_id if job_id is not None else last_job_id
            self._insert_tick(c, schedule.name, tick.at, status, job_id)
            claimed.append(Claimed(tick.at, status, job_id))
        if claimed:
            values: dict[str, Any] = {"last_tick": claimed[-1].tick,
                                      "last_status": claimed[-1].status}
            runs = [claim for claim in claimed if claim.job_id is not None]
            if runs:
                values.update(last_job_id=runs[-1].job_id, last_run_tick=runs[-1].tick,
                              last_queued_at=self.store.dialect.now())
            c.execute(sa.update(self.table).where(self.table.c.name == schedule.name)
                      .values(**values))
        return claimed

    def _locked_row(self, c: Connection, name: str) -> ScheduleRow | None:
        # FOR UPDATE: claims of one schedule (and runs queued by hand) wait for
        # one another. SQLite has no row locks: its BEGIN IMMEDIATE makes
        # every write transaction wait for the one before.
        found = c.execute(sa.select(self.table).where(self.table.c.name == name)
                          .with_for_update()).first()
        return None if found is None else ScheduleRow(**found._asdict())

    def _queue(self, c: Connection, schedule: Declared, tick: datetime,
               previous: int | None) -> tuple[str, int | None]:
        """Queue the run of ``tick``; or not, while the previous run is still
        queued or running (``without_overlapping``) or its unique key is held."""
        if schedule.without_overlapping and previous is not None and self._exists(c, previous):
            return OVERLAPPING, None
        flow = {"schedule": schedule.name, "tick": tick.isoformat()}
        job_id = self.store.insert_job(c, with_flow(schedule.job, flow))
        return (HELD, None) if job_id is None else (QUEUED, job_id)

    def _exists(self, c: Connection, job_id: int) -> bool:
        """Whether the job is queued or running: completed jobs are deleted, and
        failed ones moved to failed_jobs; one waiting for a retry is still there."""
        jobs = self.store.tables.jobs
        return c.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id)).first() is not None

    def _insert_tick(self, c: Connection, name: str, tick: datetime, status: str,
                     job_id: int | None) -> None:
        # A plain INSERT: the schedule's row lock already keeps other claims of
        # this tick out, and were one to slip through, the duplicate key would
        # fail its whole transaction, run included.
        c.execute(sa.insert(self.ticks).values(
            schedule=name, tick=tick, status=status, job_id=job_id,
            created_at=self.store.dialect.now()))

    def run_now(self, schedule: Declared) -> int | None:
        """Queue one run of ``schedule`` now, whatever its ticks (for ``dbqueue
        schedule run``); return its job id, or None if a job holds its unique key.

        The run counts as the schedule's last run (``without_overlapping``
        waits for it too); the ticks are not touched. Its own transaction.
        """

        def work(c: Connection) -> int | None:
            if self._locked_row(c, schedule.name) is None:
                self._insert_row(c, schedule)
            now: datetime = c.execute(sa.select(self.store._now())).scalar_one()
            # Ticks fall on whole seconds: a run by hand never takes a tick's key.
            at = now if now.microsecond else now + timedelta(microseconds=1)
            flow = {"schedule": schedule.name, "tick": at.isoformat(), "manual": True}
            job_id = self.store.insert_job(c, with_flow(schedule.job, flow))
            if job_id is None:
                return None
            self._insert_tick(c, schedule.name, at, MANUAL, job_id)
            c.execute(sa.update(self.table).where(self.table.c.name == schedule.name)
                      .values(last_job_id=job_id, last_run_tick=at,
                              last_queued_at=self.store.dialect.now()))
            return job_id

        return self.store.transaction(work)

    # --- upkeep -------------------------------------------------------------------

    def prune(self, keep: float = KEEP_TICKS) -> int:
        """Delete the rows of ticks claimed more than ``keep`` seconds ago whose run
        has ended or that had none (any after thirty days); return how many."""
        ticks, dialect = self.ticks, self.store.dialect
        return int(self.store.transaction(lambda c: c.execute(sa.delete(ticks).where(
            ((ticks.c.created_at < dialect.now_plus(-keep))
             & (ticks.c.job_id.is_(None) | ticks.c.outcome.is_not(None)))
            | (ticks.c.created_at < dialect.now_plus(-_KEEP_UNENDED)))).rowcount))


def record_runs(store: Transactions, connection: Connection, ends: Sequence[FlowEnd]) -> None:
    """Record how the scheduled runs ``ends`` ended, in the completion's transaction.

    Each end is written on its tick's row, once per job id (a second call with
    the same job changes nothing; a later job of the same tick, one retried
    from failed_jobs, replaces it), and the schedule's row keeps the outcome of
    its latest tick that ended. One update per schedule, in name order: two
    workers recording runs of the same schedules lock their rows in one order.
    """
    ticks, table, now = store.tables.schedule_ticks, store.tables.schedules, store.dialect.now()
    latest: dict[str, tuple[datetime, str]] = {}
    by_schedule: dict[str, list[tuple[datetime, FlowEnd]]] = defaultdict(list)
    for end in ends:
        name, tick = end.flow.get("schedule"), _tick(end.flow.get("tick"))
        if isinstance(name, str) and tick is not None:
            by_schedule[name].append((tick, end))
    for name in sorted(by_schedule):
        for tick, end in sorted(by_schedule[name], key=lambda pair: pair[0]):
            written = connection.execute(
                sa.update(ticks)
                .where(ticks.c.schedule == name, ticks.c.tick == tick,
                       ticks.c.outcome.is_(None) | (ticks.c.job_id < end.job_id))
                .values(job_id=end.job_id, outcome=end.outcome, ended_at=now)).rowcount
            if written:
                latest[name] = (tick, end.outcome)
    for name in sorted(latest):
        tick, outcome = latest[name]
        connection.execute(
            sa.update(table)
            .where(table.c.name == name,
                   table.c.last_ended_tick.is_(None) | (table.c.last_ended_tick <= tick))
            .values(last_ended_tick=tick, last_outcome=outcome, last_ended_at=now))


def _tick(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def last_runs(c: Connection, table: sa.Table, failed: Sequence[Any]) -> dict[int, str]:
    """Of ``failed`` (rows of failed_jobs), the jobs that are their schedule's
    last run: their job id -> the schedule's name. (A run's payload names its
    schedule: a job id SQLite gave again to another job is no run of it.)"""
    ids = {row.job_id for row in failed if row.job_id is not None}
    if not ids:
        return {}
    found = dict(c.execute(sa.select(table.c.last_job_id, table.c.name)
                           .where(table.c.last_job_id.in_(sorted(ids)))).all())
    return {row.job_id: found[row.job_id] for row in failed
            if row.job_id in found and _schedule_of(row.payload) == found[row.job_id]}


def _schedule_of(payload: str) -> object:
    try:
        return (serializer.decode(payload).flow or {}).get("schedule")
    except (ValueError, AttributeError):  # written by hand: no schedule to tell of
        return None


def rerun(c: Connection, table: sa.Table, schedule: str, old_job_id: int,
          new_job_id: int) -> None:
    """A failed run of ``schedule`` (job ``old_job_id``) is queued again as job
    ``new_job_id``: it is the schedule's last run again, unless a later run was
    queued since (``without_overlapping`` waits for the last run)."""
    c.execute(sa.update(table).where(table.c.name == schedule,
                                     table.c.last_job_id == old_job_id)
              .values(last_job_id=new_job_id))
