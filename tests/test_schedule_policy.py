"""When a schedule's ticks fall and which are due: pure, no database.

Daylight saving time in Europe/Berlin (2026: clocks go forward on 29 March at
02:00 CET, back on 25 October at 03:00 CEST) and America/New_York (forward on
8 March at 02:00 EST, back on 1 November at 02:00 EDT).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import dbqueue
from dbqueue.policy.recurrence import History, Recurrence, Tick, due_ticks, overdue


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def cron(expression: str, timezone: str | None = None) -> Recurrence:
    return Recurrence.build(cron=expression, every=None, timezone=timezone)


def ticks(recurrence: Recurrence, start: datetime, end: datetime) -> list[datetime]:
    return recurrence.ticks_between(start, end, limit=1000)


# --- spring forward ---------------------------------------------------------------


def test_berlin_a_time_in_the_skipped_hour_runs_once_at_the_end_of_the_gap():
    at_0230 = cron("30 2 * * *", "Europe/Berlin")
    assert ticks(at_0230, utc(2026, 3, 27, 12), utc(2026, 3, 30, 12)) == [
        utc(2026, 3, 28, 1, 30),   # 02:30 CET
        utc(2026, 3, 29, 1, 0),    # 02:30 does not exist: 03:00 CEST, once
        utc(2026, 3, 30, 0, 30),   # 02:30 CEST
    ]


def test_berlin_an_hourly_job_runs_23_times_on_the_short_day():
    hourly = cron("0 * * * *", "Europe/Berlin")
    day = ticks(hourly, utc(2026, 3, 28, 23) - timedelta(microseconds=1), utc(2026, 3, 29, 21))
    assert len(day) == 23  # local midnight to midnight: 23 real hours
    assert utc(2026, 3, 29, 1) in day and day[1] - day[0] == timedelta(hours=1)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(day))


def test_new_york_a_time_in_the_skipped_hour_runs_once_at_the_end_of_the_gap():
    at_0230 = cron("30 2 * * *", "America/New_York")
    assert ticks(at_0230, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12)) == [
        utc(2026, 3, 8, 7, 0),    # 02:30 does not exist: 03:00 EDT
        utc(2026, 3, 9, 6, 30),   # 02:30 EDT
    ]


def test_new_york_weekday_mornings_keep_their_local_time_across_the_change():
    nine = cron("0 9 * * 1-5", "America/New_York")
    assert ticks(nine, utc(2026, 3, 5, 15), utc(2026, 3, 10, 15)) == [
        utc(2026, 3, 6, 14), utc(2026, 3, 9, 13), utc(2026, 3, 10, 13)]  # Fri EST, Mon/Tue EDT


# --- fall back --------------------------------------------------------------------


def test_berlin_a_fixed_time_in_the_repeated_hour_runs_once():
    at_0230 = cron("30 2 * * *", "Europe/Berlin")
    assert ticks(at_0230, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12)) == [
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST); not again at 01:30 UTC
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]


def test_berlin_an_hourly_job_runs_in_both_passes_of_the_repeated_hour():
    hourly = cron("0 * * * *", "Europe/Berlin")
    day = ticks(hourly, utc(2026, 10, 24, 22) - timedelta(microseconds=1), utc(2026, 10, 25, 22))
    assert len(day) == 25  # 25 real hours from local midnight to midnight
    assert utc(2026, 10, 25, 0) in day and utc(2026, 10, 25, 1) in day  # 02:00 CEST, 02:00 CET
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(day))


def test_new_york_a_fixed_time_in_the_repeated_hour_runs_once():
    at_0130 = cron("30 1 * * *", "America/New_York")
    assert ticks(at_0130, utc(2026, 10, 31, 12), utc(2026, 11, 2, 12)) == [
        utc(2026, 11, 1, 5, 30),   # the first 01:30 (EDT); not again at 06:30 UTC (EST)
        utc(2026, 11, 2, 6, 30),   # 01:30 EST
    ]


def test_from_the_second_pass_of_the_repeated_hour_the_next_tick_is_tomorrows():
    """Cron steps through the wall clock: from 02:05 CET (the second pass) it
    found 02:30 of the first pass, half an hour in the past, and every
    worker's scheduler looked again a hundred times a second until 02:30 CET."""
    at_0230 = cron("30 2 * * *", "Europe/Berlin")
    second_pass = utc(2026, 10, 25, 1, 5)  # 02:05 CET
    assert at_0230.next_after(second_pass) == utc(2026, 10, 26, 1, 30)
    assert at_0230.latest_until(second_pass) == utc(2026, 10, 25, 0, 30)  # 02:30 CEST


@pytest.mark.parametrize(("expression", "timezone", "change"), [
    ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1)),
    ("*/30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 1)),
    ("30 1 * * *", "America/New_York", utc(2026, 11, 1, 6)),
    ("59 1 * * *", "America/New_York", utc(2026, 11, 1, 6)),
    ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 29, 1)),
])
def test_at_every_moment_around_a_change_the_next_and_last_ticks_agree_with_the_walk(
        expression, timezone, change):
    recurrence = cron(expression, timezone)
    walk = ticks(recurrence, change - timedelta(days=2), change + timedelta(days=2))
    moment = change - timedelta(hours=3)
    while moment < change + timedelta(hours=3):
        later = [tick for tick in walk if tick > moment]
        earlier = [tick for tick in walk if tick <= moment]
        assert recurrence.next_after(moment) == later[0], moment
        assert recurrence.latest_until(moment) == earlier[-1], moment
        moment += timedelta(minutes=5)


def test_a_step_in_the_minutes_follows_real_time_through_the_repeated_hour():
    half_hourly = cron("*/30 1 * * *", "America/New_York")
    assert ticks(half_hourly, utc(2026, 11, 1, 4), utc(2026, 11, 1, 12)) == [
        utc(2026, 11, 1, 5), utc(2026, 11, 1, 5, 30),   # 01:00, 01:30 EDT
        utc(2026, 11, 1, 6), utc(2026, 11, 1, 6, 30)]   # 01:00, 01:30 EST


@pytest.mark.parametrize(("expression", "timezone", "start"), [
    ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 25)),
    ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 22)),
    ("0 * * * *", "Europe/Berlin", utc(2026, 10, 24, 20)),
    ("*/30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 20)),
    ("30 2 * * *", "America/New_York", utc(2026, 3, 5)),
    ("30 1 * * *", "America/New_York", utc(2026, 10, 29)),
    ("0 9 * * 1-5", "America/New_York", utc(2026, 10, 28)),
])
def test_looking_back_finds_the_same_ticks_as_looking_ahead(expression, timezone, start):
    """A scheduler back from a stop looks back for the last tick it missed: it
    must be a tick the forward walk knows, DST or not."""
    recurrence = cron(expression, timezone)
    found = ticks(recurrence, start, start + timedelta(days=6))
    assert len(found) >= 4
    for before, tick in itertools.pairwise(found):
        assert recurrence.latest_until(tick) == tick
        assert recurrence.latest_until(tick - timedelta(microseconds=1)) == before
        assert recurrence.next_after(before) == tick


def test_the_default_time_zone_is_utc():
    assert ticks(cron("0 6 * * *"), utc(2026, 3, 28), utc(2026, 3, 30)) == [
        utc(2026, 3, 28, 6), utc(2026, 3, 29, 6)]


# --- every N seconds -------------------------------------------------------------


def test_every_falls_on_multiples_of_its_period_since_the_epoch():
    every = Recurrence.build(cron=None, every=10, timezone=None)
    assert every.next_after(utc(2026, 1, 1, 0, 0, 5)) == utc(2026, 1, 1, 0, 0, 10)
    # strictly after:
    assert every.next_after(utc(2026, 1, 1, 0, 0, 10)) == utc(2026, 1, 1, 0, 0, 20)
    assert every.latest_until(utc(2026, 1, 1, 0, 0, 10)) == utc(2026, 1, 1, 0, 0, 10)
    assert every.latest_until(utc(2026, 1, 1, 0, 0, 9, 999999)) == utc(2026, 1, 1)
    hourly = Recurrence.build(cron=None, every=timedelta(hours=1), timezone=None)
    assert hourly.next_after(utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 1)
    assert every.describe() == "every 10 s"
    assert cron("0 6 * * *", "Europe/Berlin").describe() == "cron 0 6 * * * Europe/Berlin"


# --- which ticks a pass claims ---------------------------------------------------


def test_a_pass_claims_each_tick_since_the_last_one():
    every = Recurrence.build(cron=None, every=1, timezone=None)
    now = utc(2026, 1, 1, 12, 0, 3, 500000)
    assert due_ticks(every, utc(2026, 1, 1, 12), now, missed="skip") == [
        Tick(utc(2026, 1, 1, 12, 0, 1), run=True), Tick(utc(2026, 1, 1, 12, 0, 2), run=True),
        Tick(utc(2026, 1, 1, 12, 0, 3), run=True)]
    assert due_ticks(every, utc(2026, 1, 1, 12, 0, 3), now, missed="skip") == []


def test_ticks_missed_while_no_scheduler_ran_are_skipped_or_run_once():
    daily = cron("0 6 * * *", "Europe/Berlin")
    after, now = utc(2026, 3, 20, 5), utc(2026, 3, 23, 9, 15)  # three 06:00s went by
    skipped = due_ticks(daily, after, now, missed="skip")
    assert skipped == [Tick(utc(2026, 3, 23, 5), run=False, late=True)]  # only the latest
    assert due_ticks(daily, after, now, missed="run_once") == [
        Tick(utc(2026, 3, 23, 5), run=True, late=True)]


def test_a_tick_less_than_the_late_limit_old_is_queued_on_time():
    daily = cron("0 6 * * *")
    after = utc(2026, 3, 22, 6)
    assert due_ticks(daily, after, utc(2026, 3, 23, 6, 0, 59), missed="skip") == [
        Tick(utc(2026, 3, 23, 6), run=True)]
    assert due_ticks(daily, after, utc(2026, 3, 23, 6, 1, 1), missed="skip") == [
        Tick(utc(2026, 3, 23, 6), run=False, late=True)]


def test_after_a_long_stop_an_every_schedule_claims_one_missed_tick_and_the_latest():
    """Not every tick of the last minute: with a tick a second, a worker back
    after a stop would queue sixty runs at once."""
    every = Recurrence.build(cron=None, every=10, timezone=None)
    assert due_ticks(every, utc(2026, 1, 1), utc(2026, 1, 2), missed="skip") == [
        Tick(utc(2026, 1, 1, 23, 59, 50), run=False, late=True), Tick(utc(2026, 1, 2), run=True)]
    second = Recurrence.build(cron=None, every=1, timezone=None)
    assert due_ticks(second, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 1, 15, 500000),
                     missed="run_once") == [
        Tick(utc(2026, 1, 1, 12, 1, 14), run=True, late=True),
        Tick(utc(2026, 1, 1, 12, 1, 15), run=True)]


def test_a_stop_shorter_than_the_late_limit_queues_each_tick_it_held_up():
    every = Recurrence.build(cron=None, every=10, timezone=None)
    found = due_ticks(every, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 0, 55), missed="skip")
    assert found == [Tick(utc(2026, 1, 1, 12, 0, s), run=True) for s in (10, 20, 30, 40, 50)]
    # Held up 55 s, though the last tick claimed is 65 s old: each tick still runs.
    found = due_ticks(every, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 1, 5), missed="skip")
    assert found == [Tick(utc(2026, 1, 1, 12, 0, s), run=True) for s in (10, 20, 30, 40, 50)] + [
        Tick(utc(2026, 1, 1, 12, 1), run=True)]
    half = Recurrence.build(cron=None, every=30, timezone=None)
    assert due_ticks(half, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 1, 5), missed="skip") == [
        Tick(utc(2026, 1, 1, 12, 0, 30), run=True), Tick(utc(2026, 1, 1, 12, 1), run=True)]
    # Held up longer than the limit: a stop, as before.
    assert due_ticks(half, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 1, 31), missed="skip") == [
        Tick(utc(2026, 1, 1, 12, 1), run=False, late=True),
        Tick(utc(2026, 1, 1, 12, 1, 30), run=True)]


# --- overdue ------------------------------------------------------------------------


def test_overdue_when_a_tick_was_not_queued():
    every = Recurrence.build(cron=None, every=10, timezone=None)
    now = utc(2026, 1, 1, 12, 5)
    stale = History(after=utc(2026, 1, 1, 12), last_status="queued", last_tick=utc(2026, 1, 1, 12))
    assert "2026-01-01 12:04:00 UTC was not queued" in overdue(every, stale, now,
                                                              expect_within=None)
    fresh = History(after=utc(2026, 1, 1, 12, 4, 50), last_status="queued",
                    last_tick=utc(2026, 1, 1, 12, 4, 50))
    assert overdue(every, fresh, now, expect_within=None) is None


def test_overdue_when_the_last_tick_was_missed():
    daily = cron("0 6 * * *")
    history = History(after=utc(2026, 3, 23, 6), last_status="missed",
                      last_tick=utc(2026, 3, 23, 6))
    assert "was missed" in overdue(daily, history, utc(2026, 3, 23, 9), expect_within=None)


def test_overdue_when_the_run_did_not_finish_within_expect_within():
    daily, tick = cron("0 6 * * *"), utc(2026, 3, 23, 6)
    running = History(after=tick, last_status="queued", last_tick=tick, run_tick=tick)
    assert overdue(daily, running, utc(2026, 3, 23, 6, 5), expect_within=600) is None
    assert "did not finish within 600 s" in overdue(daily, running, utc(2026, 3, 23, 6, 11),
                                                    expect_within=600)
    finished = History(after=tick, last_status="queued", last_tick=tick, run_tick=tick,
                       ended_tick=tick, ended_at=utc(2026, 3, 23, 6, 3))
    assert overdue(daily, finished, utc(2026, 3, 23, 9), expect_within=600) is None
    late = History(after=tick, last_status="queued", last_tick=tick, run_tick=tick,
                   ended_tick=tick, ended_at=utc(2026, 3, 23, 6, 20))
    assert "did not finish" in overdue(daily, late, utc(2026, 3, 23, 9), expect_within=600)


# --- declaring ------------------------------------------------------------------------


@pytest.fixture
def app(tmp_path):
    app = dbqueue.App(f"sqlite:///{tmp_path / 'q.db'}")

    @app.job(name="report")
    def report(day: str = "") -> None:
        pass

    app.jobs["report"].prepare()
    return app


@pytest.mark.parametrize(("options", "message"), [
    ({}, "either cron="),
    ({"cron": "0 6 * * *", "every": 10}, "not both"),
    ({"cron": ["0 6 * * *"]}, "must be a string of five fields"),
    ({"cron": "0 6 * * *", "timezone": 1}, "must be an IANA time zone name"),
    ({"cron": "0 6 * *"}, "must have five fields"),
    ({"cron": "0 0 6 * * *"}, "must have five fields"),
    ({"cron": "61 6 * * *"}, "not a valid cron expression"),
    ({"cron": "0 6 30 2 *"}, "not a valid cron expression"),
    ({"cron": "0 6 * * *", "timezone": "Mars/Olympus"}, "not a known time zone"),
    ({"every": 0}, "whole number of seconds"),
    ({"every": 1.5}, "whole number of seconds"),
    ({"every": float("inf")}, "whole number of seconds"),
    ({"every": 10, "timezone": "Europe/Berlin"}, "timezone= applies to cron"),
    ({"every": 10, "missed": "catch_up"}, "missed='catch_up'"),
    ({"every": 10, "expect_within": -1}, "expect_within=-1"),
    ({"every": 10, "expect_within": 1e12}, "at most 3,153,600,000"),
    ({"every": 10, "name": ""}, "non-empty string"),
    ({"every": 10, "name": "x" * 192}, "at most 191"),
    ({"every": 10, "without_overlapping": "yes"}, "must be True or False"),
])
def test_a_wrong_schedule_is_refused_where_it_is_declared(app, options, message):
    with pytest.raises(dbqueue.ConfigurationError, match=message.replace("(", r"\(")):
        app.schedule(app.jobs["report"].prepare(), **options)
    assert app.schedules == {}


def test_two_schedules_need_two_names_and_a_job_of_the_same_app(app, tmp_path):
    first = app.schedule(app.jobs["report"].prepare(), cron="0 6 * * *", timezone="Europe/Berlin")
    assert first.name == "report" and first.missed == "skip" and not first.without_overlapping
    with pytest.raises(dbqueue.ConfigurationError, match="two schedules are named 'report'"):
        app.schedule(app.jobs["report"].prepare("x"), every=60)
    app.schedule(app.jobs["report"].prepare("x"), every=60, name="report-x",
                 expect_within=timedelta(minutes=5))
    assert app.schedules["report-x"].expect_within == 300
    other = dbqueue.App(f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(dbqueue.ConfigurationError, match="belongs to another App"):
        other.schedule(app.jobs["report"].prepare(), every=60)
    with pytest.raises(dbqueue.ConfigurationError, match=r"takes a prepared job, such as my_job"):
        app.schedule(app.jobs["report"], every=60, name="unprepared")  # the job itself
    zoned = app.schedule(app.jobs["report"].prepare("z"), cron="0 6 * * *", name="zoned",
                         timezone=ZoneInfo("Europe/Berlin"))
    assert zoned.recurrence.timezone == "Europe/Berlin"
