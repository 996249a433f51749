"""The scheduler in real ``dbqueue work`` processes: three hosts, no leader.

Each process stands for one host; they share nothing but the database. Runs
are read back from the ``effects`` table (each notes its job id) and the
ticks from ``schedule_ticks``.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa

from dbqueue.policy.recurrence import Tick
from dbqueue.schedule import statuses
from dbqueue.store.schedules import MISSED, OVERLAPPING, QUEUED, Schedules
from tests.conftest import PREFIX, ROOT, count, rows, wait_until, worker_env
from tests.test_schedule_app import build, no_schedules  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("no_schedules")

FAST = ("--sleep", "0.1", "--retry-after", "2")  # a killed host's jobs come back soon


def ticks_of(app, name):
    ticks = app.store.tables.schedule_ticks
    return app.store.read(lambda c: c.execute(
        sa.select(ticks).where(ticks.c.schedule == name).order_by(ticks.c.tick)).all())


def stop(*hosts):
    """SIGTERM: each host finishes its running job and exits 0."""
    for host in hosts:
        if host.poll() is None:
            host.send_signal(signal.SIGTERM)
    for host in hosts:
        output, _ = host.communicate(timeout=120)
        assert host.returncode in (0, -signal.SIGKILL), output
        assert "Traceback" not in output and "Error" not in output, output


def runs(jobs, tag):
    """{job id: [events]} of the runs that noted themselves under ``tag``."""
    found: dict[int, list[str]] = {}
    for row in rows(jobs.app, jobs.effects, jobs.effects.c.tag == tag):
        found.setdefault(int(row.detail), []).append(row.event)
    return found


def test_three_hosts_queue_each_tick_of_an_every_second_schedule_once(jobs, workers):
    app = "tests.test_schedule_app:every_app"
    hosts = [workers.start("--app", app, *FAST) for _ in range(3)]
    queued = lambda: [t for t in ticks_of(jobs.app, "every-second") if t.status == QUEUED]  # noqa: E731
    wait_until(lambda: len(queued()) >= 4, timeout=90, what="four ticks queued")
    # A host dies: the other two go on, and no tick is lost.
    os.killpg(hosts[0].pid, signal.SIGKILL)
    hosts[0].wait()
    seen = len(queued())
    wait_until(lambda: len(queued()) >= seen + 6, timeout=90, what="six more ticks queued")
    stop(*hosts[1:])
    # What the last ticks queued and nobody ran yet (and what the killed host
    # held), a host without a scheduler runs.
    drain = workers.run("--app", app, "--no-schedule", "--stop-when-drained", *FAST)
    assert drain.returncode == 0, drain.stdout
    assert count(jobs.app, jobs.app.store.tables.schedule_ticks) == len(queued())

    ticks = ticks_of(jobs.app, "every-second")
    assert len(ticks) >= 10 and all(t.status == QUEUED for t in ticks)
    for before, after in itertools.pairwise(ticks):  # no gap, no tick twice
        assert after.tick - before.tick == timedelta(seconds=1)
    assert len({t.job_id for t in ticks}) == len(ticks)
    ran = runs(jobs, "tick")
    # Each tick's job ran; twice at most the one in flight on the killed host
    # (at least once: its outcome may not have been written when it died).
    assert set(ran) == {t.job_id for t in ticks}
    assert sum(events.count("end") > 1 for events in ran.values()) <= 1
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    # "Did it run?": each tick's row, and the schedule's, say how its run ended.
    assert {t.outcome for t in ticks_of(jobs.app, "every-second")} == {"done"}
    reader = build("every", jobs.app.settings.url, PREFIX)
    (status,) = statuses(reader)
    reader.dispose()
    assert status.last_outcome == "done" and status.last_ended_tick == ticks[-1].tick
    assert status.last_tick == ticks[-1].tick and status.last_job_id == ticks[-1].job_id


def test_without_overlapping_a_slow_run_suppresses_the_next_ticks(jobs, workers):
    app = "tests.test_schedule_app:overlap_app"
    hosts = [workers.start("--app", app, *FAST) for _ in range(3)]
    ended = lambda: [e for e in runs(jobs, "slow_tick").values() if "end" in e]  # noqa: E731
    wait_until(lambda: len(ended()) >= 3, timeout=120, what="three slow runs to end")
    stop(*hosts)

    ticks = ticks_of(jobs.app, "slow")
    statuses = [t.status for t in ticks]
    assert OVERLAPPING in statuses and statuses.count(QUEUED) >= 3
    # A run lasts 2.5 s and a tick comes every second: the tick after a queued
    # one always finds that run queued or running.
    assert all(not (a == b == QUEUED) for a, b in itertools.pairwise(statuses)), statuses
    for before, after in itertools.pairwise(ticks):
        assert after.tick - before.tick == timedelta(seconds=1)
    # No two runs at once: each started after the one before had ended.
    effects = jobs.effects
    noted = rows(jobs.app, effects, effects.c.tag == "slow_tick")
    by_job: dict[str, dict[str, object]] = {}
    for row in noted:
        by_job.setdefault(row.detail, {})[row.event] = row.at
    spans = sorted((span["start"], span.get("end")) for span in by_job.values())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end is not None and start >= end, spans


def test_no_schedule_keeps_a_host_out_of_the_scheduling(jobs, workers):
    app = "tests.test_schedule_app:daily_app"
    schedules = jobs.app.store.tables.schedules
    quiet = workers.run("--app", app, "--no-schedule", "--stop-when-empty", *FAST)
    assert quiet.returncode == 0, quiet.stdout
    from_env = subprocess.run(
        [sys.executable, "-m", "dbqueue", "work", "--app", app, "--stop-when-empty", *FAST],
        cwd=ROOT, env=worker_env(workers.url, DBQUEUE_NO_SCHEDULE="1"), capture_output=True,
        text=True, timeout=120)
    assert from_env.returncode == 0, from_env.stderr
    assert count(jobs.app, schedules) == 0 and "scheduler" not in quiet.stdout
    scheduling = workers.run("--app", app, "--stop-when-empty", *FAST)
    assert scheduling.returncode == 0, scheduling.stdout
    assert "scheduler: daily-report (cron 0 6 * * * Europe/Berlin)" in scheduling.stdout
    assert count(jobs.app, schedules) == 2


def test_a_worker_of_an_application_without_schedules_deletes_the_rows_left(jobs, workers):
    """The last schedule removed from the code: no scheduler runs to delete its
    rows, so the worker does at start (unless it runs no scheduler)."""
    before = build("daily", workers.url, PREFIX)  # the code as it was
    verbs = Schedules(before.store)
    verbs.declare([schedule.declared() for schedule in before.schedules.values()])
    _, found = verbs.state()
    heartbeat = before.schedules["heartbeat"].declared()
    claimed = verbs.claim(heartbeat, [Tick(found["heartbeat"].after + timedelta(seconds=10),
                                           run=False)])
    before.dispose()
    assert [claim.status for claim in claimed] == [MISSED]
    tables = jobs.app.store.tables
    left = lambda: (count(jobs.app, tables.schedules),  # noqa: E731
                    count(jobs.app, tables.schedule_ticks))
    quiet = workers.run("--no-schedule", "--stop-when-empty", *FAST)  # tests.jobapp: none
    assert quiet.returncode == 0, quiet.stdout
    assert left() == (2, 1), quiet.stdout
    cleaning = workers.start(*FAST)
    wait_until(lambda: left() == (0, 0), what="the rows of the removed schedules to go")
    stop(cleaning)


def test_stop_when_empty_runs_what_the_scheduler_queues_first(jobs, workers):
    """The scheduler's first pass may queue ticks that fell while no worker
    ran (within the last minute, each is run): a worker run to empty the queue
    runs them before it says it is empty, not stop beside them."""
    before = build("every", workers.url, PREFIX)
    verbs = Schedules(before.store)
    verbs.declare([schedule.declared() for schedule in before.schedules.values()])
    schedules = before.store.tables.schedules
    with before.engine.begin() as connection:  # declared 5 s ago: ticks are due
        declared = connection.execute(sa.select(schedules.c.declared_at)).scalar_one()
        connection.execute(sa.update(schedules).values(
            declared_at=declared - timedelta(seconds=5)))
    before.dispose()
    result = workers.run("--app", "tests.test_schedule_app:every_app", "--stop-when-empty",
                         *FAST)
    assert result.returncode == 0, result.stdout
    queued = [tick for tick in ticks_of(jobs.app, "every-second") if tick.status == QUEUED]
    assert len(queued) >= 4, result.stdout
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0, result.stdout
    assert len(runs(jobs, "tick")) == len(queued)


def test_tables_taken_back_under_a_worker_stop_it_as_a_signal_would(jobs, workers):
    """A migration downgraded below what the worker needs (its schedule
    tables gone): it exited at once, its running job killed and its try used
    up, with no word of a stop. Its running job now finishes and is written,
    and the worker exits with the error that says how to fix it."""
    host = workers.start("--app", "tests.test_schedule_app:overlap_app", "--grace", "60",
                         *FAST)
    wait_until(lambda: any(events == ["start"] for events in runs(jobs, "slow_tick").values()),
               what="a run to start")
    try:
        jobs.app.downgrade("0008")  # before the schedules' tables
        output, _ = host.communicate(timeout=120)
    finally:
        jobs.app.migrate()
    assert host.returncode == 1, output
    assert "stopping (the tables are older than this dbqueue needs)" in output, output
    assert output.rstrip().splitlines()[-1].startswith(
        "Error: the dbqueue tables in "), output
    assert "are at revision 0008, but this dbqueue needs" in output
    assert "Traceback" not in output
    ran = runs(jobs, "slow_tick")
    assert all(events == ["start", "end"] for events in ran.values())
    # Written, though its schedule's bookkeeping could not be: not left to its
    # lease, to be failed (its one try used up) by the next worker.
    table = jobs.app.store.tables.jobs
    assert count(jobs.app, table, table.c.id.in_(list(ran))) == 0
