"""When a schedule's runs fall, and which of them are due: pure, the clock passed in.

A schedule recurs either by a cron expression read in a time zone, or every
N seconds. Its *ticks* are instants in UTC: the same for every host that
computes them, so that the hosts can claim each tick by its time alone.

- ``every=N``: the multiples of N seconds since the Unix epoch (UTC), so
  ``every=3600`` falls on the hour and ``every=86400`` at midnight UTC.
- ``cron``: five fields read as Debian's cron reads them (cronsim), in the
  schedule's time zone. Around a change of the clocks:

  * spring forward (02:00 -> 03:00 in Europe/Berlin): a fixed time in the
    skipped hour (``30 2 * * *``) runs once, at the end of the gap (03:00
    local); an expression whose minute or hour field begins with ``*``
    follows real time, which has no such hour (``*/30 2 * * *`` does not run);
  * fall back (03:00 -> 02:00): a fixed time in the repeated hour runs once,
    at its first occurrence; one whose minute or hour field begins with
    ``*`` (``0 * * * *``, ``*/30 2 * * *``) follows real time and runs in
    both passes of the repeated hour.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ..errors import ConfigurationError

LATE_LIMIT = 60.0
"""Seconds after its time within which a tick is still queued as on time
(a scheduler pass delayed by a busy host, or a short outage of the database).
A tick that no scheduler saw by then fell while no worker ran the scheduler:
it is *missed*, and the schedule's ``missed`` policy decides its fate."""

MISSED_POLICIES = ("skip", "run_once")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STEP = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Recurrence:
    """A cron expression in a time zone, or a period of whole seconds."""

    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"

    @classmethod
    def build(cls, *, cron: str | None, every: float | timedelta | None,
              timezone: str | tzinfo | None) -> Recurrence:
        """A checked recurrence; ConfigurationError naming the mistake otherwise."""
        if cron is None and every is None:
            raise ConfigurationError("give a schedule either cron=\"...\" or every=SECONDS")
        if cron is not None and every is not None:
            raise ConfigurationError("give a schedule either cron=\"...\" or every=SECONDS, "
                                     "not both")
        if isinstance(timezone, tzinfo):  # a ZoneInfo("Europe/Berlin"): its IANA name
            timezone = getattr(timezone, "key", None) or str(timezone)
        if timezone is not None and not isinstance(timezone, str):
            raise ConfigurationError(f"timezone={timezone!r} must be an IANA time zone name, "
                                     "such as \"Europe/Berlin\"")
        if every is not None:
            if timezone is not None:
                raise ConfigurationError(
                    "timezone= applies to cron schedules; every=SECONDS counts in UTC")
            return cls(every=_whole_seconds(every))
        if not isinstance(cron, str):
            raise ConfigurationError(f"cron={cron!r} must be a string of five fields, such as "
                                     "\"0 6 * * *\"")
        recurrence = cls(cron=" ".join(cron.split()), timezone=timezone or "UTC")
        recurrence._check_cron()
        return recurrence

    def _check_cron(self) -> None:
        assert self.cron is not None
        if len(self.cron.split()) != 5:
            raise ConfigurationError(
                f"cron={self.cron!r} must have five fields (minute hour day month weekday), "
                "e.g. \"0 6 * * *\"; for a period in seconds use every=SECONDS")
        zone = self.zone()
        try:
            next(CronSim(self.cron, datetime(2000, 1, 1, tzinfo=zone)))
        except CronSimError as exc:
            raise ConfigurationError(f"cron={self.cron!r} is not a valid cron expression: "
                                     f"{exc}") from None
        except StopIteration:
            raise ConfigurationError(f"cron={self.cron!r} never matches a date") from None

    def zone(self) -> tzinfo:
        """The time zone a cron expression is read in."""
        if self.timezone == "UTC":
            return UTC  # cronsim skips its DST handling for this one
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(
                f"timezone={self.timezone!r} is not a known time zone; use an IANA name "
                "such as \"Europe/Berlin\" or \"America/New_York\"") from None

    def describe(self) -> str:
        """The definition as one line of text (stored with the schedule's row)."""
        if self.every is not None:
            return f"every {self.every} s"
        return f"cron {self.cron} {self.timezone}"

    # --- ticks ------------------------------------------------------------------

    def next_after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after ``moment`` (None: no tick ever again)."""
        return next(self.ticks_after(moment), None)

    def ticks_after(self, moment: datetime) -> Iterator[datetime]:
        """The ticks strictly after ``moment``, in order, as UTC datetimes."""
        moment = moment.astimezone(UTC)
        if self.every is not None:
            index = math.floor(_seconds(moment) / self.every) + 1
            while True:
                yield _EPOCH + timedelta(seconds=index * self.every)
                index += 1
        assert self.cron is not None
        # cronsim's first step is to the next whole second after ``moment``.
        # It walks the wall clock: from the second pass of a repeated hour it
        # finds a fixed time's first pass, which lies before ``moment``.
        try:
            for local in CronSim(self.cron, moment.astimezone(self.zone())):
                tick = local.astimezone(UTC)
                if tick > moment:
                    yield tick
        except CronSimError:  # no match for fifty years
            return

    def latest_until(self, moment: datetime) -> datetime | None:
        """The last tick at or before ``moment`` (None: none within fifty years)."""
        moment = moment.astimezone(UTC)
        if self.every is not None:
            return _EPOCH + timedelta(
                seconds=math.floor(_seconds(moment) / self.every) * self.every)
        assert self.cron is not None
        # Reversed, cronsim steps back first unless ``moment`` has a fraction
        # of a second; a microsecond more makes ``moment`` itself a candidate.
        reverse = CronSim(self.cron, (moment + _STEP).astimezone(self.zone()), reverse=True)
        try:
            found = next((tick for tick in (local.astimezone(UTC) for local in reverse)
                          if tick <= moment), None)
        except CronSimError:
            return None
        if found is None:
            return None
        # Stepping back walks the wall clock too: from the second pass of a
        # repeated hour it skips a fixed time's first pass, a tick before
        # ``moment`` in real time. The ticks from there on say which is last.
        for tick in self.ticks_after(found):
            if tick > moment:
                break
            found = tick
        return found

    def ticks_between(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """The ticks after ``start`` and at or before ``end``, at most ``limit``, in order."""
        found: list[datetime] = []
        for tick in self.ticks_after(start):
            if tick > end or len(found) >= limit:
                break
            found.append(tick)
        return found


def _seconds(moment: datetime) -> float:
    return (moment - _EPOCH).total_seconds()


def _whole_seconds(every: float | timedelta) -> int:
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
            or not math.isfinite(seconds) or seconds < 1 or seconds != int(seconds)
            or seconds > 366 * 86400):
        raise ConfigurationError(
            f"every={every!r} must be a whole number of seconds from 1 to a year "
            "(use cron=\"...\" for longer or calendar periods)")
    return int(seconds)


# --- which ticks a scheduler pass claims ------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """A tick a scheduler pass claims, and what to do with it."""

    at: datetime
    run: bool
    """True: queue a run; False: record the tick as missed, without a run."""
    late: bool = False
    """It fell while no scheduler was running (see LATE_LIMIT)."""


def due_ticks(recurrence: Recurrence, after: datetime, now: datetime, *, missed: str,
              late_limit: float = LATE_LIMIT, limit: int = 200) -> list[Tick]:
    """The ticks a pass at ``now`` (the database server's time) claims, when
    every tick up to ``after`` has been dealt with already.

    While the first tick not yet claimed is less than ``late_limit`` seconds
    old, each tick since is queued (a pass delayed by a busy host, a short
    outage of the database). Otherwise no scheduler ran for longer than that:
    the latest tick is queued if it is less than ``late_limit`` old, and of
    the ticks before it only the latest is claimed, to be run once
    (``missed="run_once"``) or recorded as missed (``"skip"``), so that a
    scheduler back after a stop neither floods the queue (a tick every
    second) nor walks through every tick it missed.
    """
    cutoff = now - timedelta(seconds=late_limit)
    # How long the scheduler was held up: the age of the first tick it has not
    # claimed (not of the last it has, which is older by a whole period).
    first = recurrence.ticks_between(after, now, 1)
    if not first:
        return []
    if first[0] >= cutoff:
        return [Tick(at, run=True) for at in recurrence.ticks_between(after, now, limit)]
    latest = recurrence.latest_until(now)
    if latest is None or latest <= after:
        return []
    on_time = latest > cutoff
    last_missed = recurrence.latest_until(latest - _STEP) if on_time else latest
    ticks = []
    if last_missed is not None and last_missed > after:
        ticks.append(Tick(last_missed, run=missed == "run_once", late=True))
    if on_time:
        ticks.append(Tick(latest, run=True))
    return ticks


# --- "did it run?" ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class History:
    """What the schedule's row says of its latest ticks and runs."""

    after: datetime
    """Every tick up to here was dealt with (the last tick, or the declaration)."""
    last_status: str | None = None
    """What became of the last tick: queued, missed, overlapping, held."""
    last_tick: datetime | None = None
    run_tick: datetime | None = None
    """The tick of the last run queued (a run queued by hand: its time)."""
    ended_tick: datetime | None = None
    """The tick of the last run that ended, and when it ended."""
    ended_at: datetime | None = None


def overdue(recurrence: Recurrence, history: History, now: datetime, *,
            expect_within: float | None, late_limit: float = LATE_LIMIT) -> str | None:
    """Why the schedule is overdue, or None when all is well.

    Overdue: a tick more than ``late_limit`` seconds old was not queued (no
    worker runs the scheduler), the last tick was missed, or the last run did
    not finish within ``expect_within`` seconds of its tick.
    """
    unclaimed = recurrence.latest_until(now - timedelta(seconds=late_limit))
    if unclaimed is not None and unclaimed > history.after:
        return f"the tick of {unclaimed:%Y-%m-%d %H:%M:%S} UTC was not queued"
    if history.last_status == "missed" and history.last_tick is not None:
        return f"the tick of {history.last_tick:%Y-%m-%d %H:%M:%S} UTC was missed"
    if expect_within is None or history.run_tick is None:
        return None
    deadline = history.run_tick + timedelta(seconds=expect_within)
    ended = history.ended_at if history.ended_tick == history.run_tick else None
    if (ended is None and now > deadline) or (ended is not None and ended > deadline):
        return (f"the run of {history.run_tick:%Y-%m-%d %H:%M:%S} UTC did not finish within "
                f"{expect_within:g} s")
    return None
