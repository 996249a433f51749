"""The scheduler's store verbs and one scheduler pass, on every backend, in-process.

Claims by several threads at once stand for several hosts: each has its own
connections, and the database alone keeps them apart.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from dbqueue.policy.recurrence import Tick
from dbqueue.schedule import run_now, statuses
from dbqueue.store import Failure
from dbqueue.store.flows import FlowEnd
from dbqueue.store.schedules import (
    HELD,
    MANUAL,
    MISSED,
    OVERLAPPING,
    QUEUED,
    Schedules,
    record_runs,
)
from dbqueue.worker.health import Health
from dbqueue.worker.scheduler import Scheduler
from tests.conftest import count, rows
from tests.test_schedule_app import no_schedules  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("no_schedules")


def declare(app, name="every", **options):
    if "cron" not in options:
        options.setdefault("every", 1)
    return app.schedule(app.jobs["noop"].prepare(), name=name, **options)


def setup_schedule(app, name="every", **options):
    schedule = declare(app, name, **options)
    verbs = Schedules(app.store)
    verbs.declare([schedule.declared()])
    now, found = verbs.state([name])
    return schedule, verbs, now, found[name]


def tick_rows(app, name):
    ticks = app.store.tables.schedule_ticks
    return app.store.read(lambda c: c.execute(
        sa.select(ticks).where(ticks.c.schedule == name).order_by(ticks.c.tick)).all())


def test_each_tick_is_claimed_once_by_many_claimants_at_once(app):
    schedule, verbs, _now, row = setup_schedule(app)
    due = [Tick(row.after + timedelta(seconds=s), run=True) for s in range(1, 6)]
    claimed, errors = [], []

    def claim():
        try:
            claimed.extend(Schedules(app.store).claim(schedule.declared(), due))
        except Exception as exc:  # reported below: a thread's error would vanish
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(claim.tick for claim in claimed) == [tick.at for tick in due]
    assert all(claim.status == QUEUED for claim in claimed)
    queued = rows(app, app.store.tables.jobs)
    assert sorted(job.id for job in queued) == sorted(claim.job_id for claim in claimed)
    flows = sorted(json.loads(job.payload)["flow"]["tick"] for job in queued)
    assert flows == [tick.at.isoformat() for tick in due]
    assert [r.status for r in tick_rows(app, "every")] == [QUEUED] * 5
    _, found = verbs.state(["every"])
    assert found["every"].last_tick == due[-1].at and found["every"].last_status == QUEUED
    assert verbs.claim(schedule.declared(), due) == []  # dealt with


def test_without_overlapping_a_tick_is_not_queued_while_the_last_run_is_there(app):
    schedule, verbs, _, row = setup_schedule(app, without_overlapping=True)
    first, second, third = (Tick(row.after + timedelta(seconds=s), run=True) for s in (1, 2, 3))
    (run,) = verbs.claim(schedule.declared(), [first, second])[:1]
    assert [c.status for c in verbs.claim(schedule.declared(), [third])] == [OVERLAPPING]
    assert [r.status for r in tick_rows(app, "every")] == [QUEUED, OVERLAPPING, OVERLAPPING]
    jobs = app.store.tables.jobs
    app.store.transaction(lambda c: c.execute(jobs.delete().where(jobs.c.id == run.job_id)))
    fourth = Tick(third.at + timedelta(seconds=1), run=True)
    assert [c.status for c in verbs.claim(schedule.declared(), [fourth])] == [QUEUED]


def test_a_missed_tick_is_recorded_without_a_run_or_run_once(app):
    skip, verbs, _, row = setup_schedule(app, "skip", every=60)
    once = declare(app, "once", every=60, missed="run_once")
    verbs.declare([skip.declared(), once.declared()])
    late = Tick(row.after + timedelta(seconds=60), run=False, late=True)
    assert [c.status for c in verbs.claim(skip.declared(), [late])] == [MISSED]
    assert count(app, app.store.tables.jobs) == 0
    late = Tick(late.at, run=True, late=True)
    assert [c.status for c in verbs.claim(once.declared(), [late])] == [QUEUED]
    assert count(app, app.store.tables.jobs) == 1


def test_a_unique_job_whose_key_is_held_is_not_queued_twice(app):
    @app.job(name="unique_report", unique_for=3600)
    def unique_report() -> None:
        pass

    schedule = app.schedule(unique_report.prepare(), every=1, name="unique")
    verbs = Schedules(app.store)
    verbs.declare([schedule.declared()])
    _, found = verbs.state()
    due = [Tick(found["unique"].after + timedelta(seconds=s), run=True) for s in (1, 2)]
    assert [c.status for c in verbs.claim(schedule.declared(), due)] == [QUEUED, HELD]


def test_runs_are_recorded_once_per_job_on_their_tick_and_schedule(app):
    schedule, verbs, _, row = setup_schedule(app)
    due = [Tick(row.after + timedelta(seconds=s), run=True) for s in (1, 2)]
    first, second = verbs.claim(schedule.declared(), due)

    def end(claim, outcome):
        return FlowEnd(claim.job_id, {"schedule": "every", "tick": claim.tick.isoformat()},
                       outcome)

    app.store.transaction(lambda c: record_runs(app.store, c, [end(second, "failed")]))
    app.store.transaction(lambda c: record_runs(app.store, c, [end(first, "done")]))
    ticks = tick_rows(app, "every")
    assert [(t.outcome, t.ended_at is not None) for t in ticks] == [("done", True),
                                                                    ("failed", True)]
    _, found = verbs.state()
    # The latest tick's outcome stays, though an older run ended after it.
    assert found["every"].last_outcome == "failed"
    assert found["every"].last_ended_tick == second.tick
    ended_at = found["every"].last_ended_at
    app.store.transaction(lambda c: record_runs(app.store, c, [end(second, "done")]))
    _, found = verbs.state()
    assert found["every"].last_outcome == "failed" and found["every"].last_ended_at == ended_at
    # A later job of the same tick (retried from failed_jobs) replaces it.
    retried = end(second, "done")._replace(job_id=second.job_id + 1000)
    app.store.transaction(lambda c: record_runs(app.store, c, [retried]))
    _, found = verbs.state()
    assert found["every"].last_outcome == "done"
    # Ends of unknown schedules or ticks change nothing.
    stray = FlowEnd(1, {"schedule": "gone", "tick": "not a time"}, "done")
    app.store.transaction(lambda c: record_runs(app.store, c, [stray]))


def test_the_code_is_the_source_of_truth_for_definitions(app):
    schedule, verbs, _, row = setup_schedule(app, every=60)
    app.schedules.clear()
    changed = declare(app, every=120)
    verbs.declare([changed.declared()])
    _, found = verbs.state()
    assert found["every"].definition == "every 120 s"
    assert found["every"].declared_at >= row.declared_at
    # A worker still on the old code leaves the schedule to the new ones.
    later = Tick(found["every"].after + timedelta(seconds=60), run=True)
    assert verbs.claim(schedule.declared(), [later]) == []
    assert [c.status for c in verbs.claim(changed.declared(), [later])] == [QUEUED]
    # A worker whose code no longer declares a schedule deletes its row and ticks.
    app.schedules.clear()
    other = declare(app, "other", every=60)
    verbs.declare([other.declared()], forget_others=True)
    _, found = verbs.state()
    assert list(found) == ["other"] and tick_rows(app, "every") == []


def test_two_workers_declaring_the_same_new_definition_count_its_ticks_from_the_first(app):
    """Both read the old definition; the second then moved the moment the
    ticks count from past one the first could have claimed meanwhile."""
    if app.store.dialect.embedded:
        pytest.skip("SQLite: one writer at a time, the second reads the first's row")
    _, verbs, _, _ = setup_schedule(app, every=60)
    app.schedules.clear()
    changed = declare(app, every=120).declared()
    table = app.store.tables.schedules.name
    first: list[datetime] = []

    def the_other_declares_first(conn, cursor, statement, *_: object) -> None:
        if not first and statement.startswith("UPDATE") and table in statement:
            first.append(datetime.min)  # (once: the other's UPDATE comes here too)
            other = threading.Thread(target=lambda: Schedules(app.store).declare([changed]))
            other.start()
            other.join(30)  # this one holds no lock yet: the other's commits
            first[0] = verbs.state()[1]["every"].declared_at

    sa.event.listen(app.store.engine, "before_cursor_execute", the_other_declares_first)
    try:
        verbs.declare([changed])  # read the old definition, then met the other's
    finally:
        sa.event.remove(app.store.engine, "before_cursor_execute", the_other_declares_first)
    assert first and first[0] != datetime.min
    _, found = verbs.state()
    assert found["every"].definition == "every 120 s"
    assert found["every"].declared_at == first[0]  # not moved again by the second


def test_a_run_by_hand_counts_as_the_last_run(app):
    schedule, verbs, _, _ = setup_schedule(app, without_overlapping=True)
    job_id = run_now(app, "every")
    (job,) = rows(app, app.store.tables.jobs)
    flow = json.loads(job.payload)["flow"]
    assert job.id == job_id and flow["schedule"] == "every" and flow["manual"] is True
    (tick,) = tick_rows(app, "every")
    assert tick.status == MANUAL and tick.job_id == job_id and tick.tick.microsecond != 0
    (status,) = statuses(app)
    assert status.last_job_id == job_id and status.last_tick is None
    _, found = verbs.state()
    later = Tick(found["every"].after + timedelta(seconds=1), run=True)
    assert [c.status for c in verbs.claim(schedule.declared(), [later])] == [OVERLAPPING]


@pytest.mark.parametrize("how", ["named", "everything"])
def test_a_failed_run_retried_is_the_last_run_again(app, how):
    """without_overlapping waits for the last run: a run retried from
    failed_jobs is queued as a new job, which the schedule must wait for."""
    schedule, verbs, _, row = setup_schedule(app, without_overlapping=True)
    first, second, third = (Tick(row.after + timedelta(seconds=s), run=True) for s in (1, 2, 3))
    [run] = verbs.claim(schedule.declared(), [first])
    [reserved] = app.store.reserve(["default"], 10, "t", 60)
    assert app.store.fail(reserved, "t", Failure("RuntimeError", "no", ""), "test:1")
    if how == "named":
        [failed] = rows(app, app.store.tables.failed_jobs)
        assert [r.job_id for r in app.admin.retry_each([failed.uuid])] == [run.job_id]
    else:
        assert app.admin.retry(everything=True) == 1
    [job] = rows(app, app.store.tables.jobs)
    assert job.id != run.job_id
    assert [c.status for c in verbs.claim(schedule.declared(), [second])] == [OVERLAPPING]
    (status,) = statuses(app)
    assert status.last_job_id == job.id
    jobs = app.store.tables.jobs
    app.store.transaction(lambda c: c.execute(jobs.delete()))  # it completed
    assert [c.status for c in verbs.claim(schedule.declared(), [third])] == [QUEUED]


def test_a_failed_run_retried_after_a_later_run_leaves_the_last_run_alone(app):
    schedule, verbs, _, row = setup_schedule(app)
    first, second = (Tick(row.after + timedelta(seconds=s), run=True) for s in (1, 2))
    [_first_run] = verbs.claim(schedule.declared(), [first])
    [reserved] = app.store.reserve(["default"], 10, "t", 60)
    assert app.store.fail(reserved, "t", Failure("RuntimeError", "no", ""), "test:1")
    [later] = verbs.claim(schedule.declared(), [second])
    assert app.admin.retry(everything=True) == 1
    (status,) = statuses(app)
    assert status.last_job_id == later.job_id


def test_old_tick_rows_are_pruned_once_their_run_ended(app):
    schedule, verbs, _, row = setup_schedule(app)
    due = [Tick(row.after + timedelta(seconds=s), run=True) for s in (1, 2)]
    ended, _running = verbs.claim(schedule.declared(), due)
    app.store.transaction(lambda c: record_runs(app.store, c, [FlowEnd(
        ended.job_id, {"schedule": "every", "tick": ended.tick.isoformat()}, "done")]))
    assert verbs.prune(keep=3600) == 0
    assert verbs.prune(keep=-3600) == 1  # as if claimed two hours ago: the ended one goes
    assert [t.tick for t in tick_rows(app, "every")] == [due[1].at]


def test_a_scheduler_pass_claims_due_ticks_and_handles_missed_ones(app):
    skip = declare(app, "skip", every=30)
    once = declare(app, "once", every=30, missed="run_once")
    scheduler = Scheduler(Health(), store=app.store, schedules=[skip, once])
    scheduler.run()  # declares them: their ticks count from now
    table = app.store.tables.schedules
    # As if every worker had been stopped for an hour.
    app.store.transaction(lambda c: c.execute(sa.update(table).values(
        declared_at=app.store.dialect.now_plus(-3600))))
    scheduler.run()
    by_name = {status.name: status for status in statuses(app)}
    assert by_name["skip"].last_status in (MISSED, QUEUED)  # a tick in the last minute: queued
    assert MISSED in [t.status for t in tick_rows(app, "skip")]
    assert next(t.status for t in tick_rows(app, "once")) == QUEUED
    assert count(app, app.store.tables.jobs) == len(
        [t for name in ("skip", "once") for t in tick_rows(app, name) if t.status == QUEUED])
    assert all(status.overdue is None or "missed" in status.overdue
               for status in by_name.values())
    assert scheduler.next_at > 0


def test_a_schedule_removed_from_the_code_is_deleted_and_redeclared_aloud(app, caplog):
    """A deploy that drops a schedule: the first worker on the new code deletes
    its row, and a worker still on the old code declares it again. Both in
    silence: the operator saw nothing, and the old workers went on queueing
    its runs for as long as they ran."""
    kept, dropped = declare(app, "kept", every=30), declare(app, "dropped", every=30)
    old = Scheduler(Health(), store=app.store, schedules=[kept, dropped])
    old.run()
    new = Scheduler(Health(), store=app.store, schedules=[kept])
    with caplog.at_level("WARNING", logger="dbqueue.worker"):
        new.run()
    assert "scheduler: dropped no longer in this code: deleted its row and ticks" in caplog.text
    assert sorted(Schedules(app.store).state()[1]) == ["kept"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="dbqueue.worker"):
        old.run()
    assert ("scheduler: dropped deleted by a worker whose code does not have it (a newer "
            "version, or another application on this table prefix): declared again"
            ) in caplog.text
    assert sorted(Schedules(app.store).state()[1]) == ["dropped", "kept"]
