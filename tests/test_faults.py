"""A worker killed or frozen with jobs in hand: only what started counts an
attempt, and nothing it knows it lost runs again."""

import os
import signal
import sqlite3
import subprocess
from typing import Any

import sqlalchemy as sa

from tests.conftest import count, rows, wait_until

FAST = ("--sleep", "0.1")


def learn_that_jobs_are_short(jobs, prepared):
    """Run a few quick jobs of the kind to come first (``prepared``): a worker
    that has seen that kind take milliseconds reserves a buffer of them ahead
    of its children (of a kind not run yet, none: see Reserver.prefetch)."""
    jobs.app.dispatch_many(prepared)
    wait_until(lambda: count(jobs.app, jobs.app.store.tables.jobs) == 0,
               what="the first jobs to run")


def buffered(jobs, job="record"):
    """Jobs reserved by a worker and not started (no child has them yet, or
    they wait queued behind a running one): counted no attempt."""
    table = jobs.app.store.tables.jobs
    return count(jobs.app, table, table.c.reserved_by.is_not(None), table.c.attempts == 0,
                 table.c.job == job)


def stop_holding_no_lock(process: subprocess.Popen[str], app: Any) -> None:
    """SIGSTOP ``process`` at a moment its statements hold no lock on the jobs.

    Stopped inside a transaction, it would keep its locks for as long as it
    stays stopped: on SQLite the write lock of the whole file, and no other
    worker could even start. A stall is that too, but not what the tests of
    lost leases are about. So it is let go on (SIGCONT) and stopped again
    until the jobs' rows can all be locked at once, without a wait."""
    jobs = app.store.tables.jobs
    while True:
        os.kill(process.pid, signal.SIGSTOP)
        try:
            if app.store.dialect.embedded:
                probe = sqlite3.connect(app.engine.url.database, timeout=0)
                try:
                    probe.execute("BEGIN IMMEDIATE")
                finally:
                    probe.close()
            else:
                with app.engine.begin() as connection:
                    connection.execute(sa.select(jobs.c.id).with_for_update(nowait=True))
            return
        except (sqlite3.OperationalError, sa.exc.OperationalError, sa.exc.DBAPIError):
            os.kill(process.pid, signal.SIGCONT)  # and its transaction goes on, and ends


def test_a_killed_worker_costs_an_attempt_only_to_the_job_it_was_running(jobs, workers):
    doomed = workers.start("--queue", "slow,default", "--retry-after", "2", *FAST)
    learn_that_jobs_are_short(jobs, [jobs.record.prepare(1000 + n) for n in range(40)])
    jobs.wait_for_go.options(queue="slow").dispatch("killed")  # tries=1
    jobs.app.dispatch_many([jobs.record.options(tries=1).prepare(n) for n in range(300)])
    table = jobs.app.store.tables.jobs
    wait_until(lambda: count(jobs.app, table, table.c.job == "wait_for_go",
                             table.c.attempts == 1), what="the running job's attempt to count")
    wait_until(lambda: buffered(jobs) >= 10, what="jobs reserved ahead of the busy child")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    jobs.note("killed", "go")
    rescuer = workers.run("--queue", "slow,default", "--retry-after", "2", "--stop-when-drained",
                          *FAST)
    assert rescuer.returncode == 0, rescuer.stdout
    assert {row.n for row in rows(jobs.app, jobs.effects, jobs.effects.c.n < 1000)} == set(
        range(300))  # every job reserved and not started ran, although tries=1
    (failed,) = rows(jobs.app, jobs.app.store.tables.failed_jobs)
    assert (failed.job, failed.exception_class, failed.attempts) == (
        "wait_for_go", "dbqueue.MaxAttemptsExceeded", 1)


def test_a_stalled_worker_never_runs_the_jobs_it_lost(jobs, workers):
    stalled = workers.start("--queue", "slow,default", "--retry-after", "2", *FAST)
    learn_that_jobs_are_short(jobs, [jobs.overlap.prepare(f"learn{n}", 0) for n in range(40)])
    jobs.wait_for_go.options(queue="slow").dispatch("block")
    # Each run of these notes its start: a second run of one would show.
    jobs.app.dispatch_many([jobs.overlap.options(tries=3).prepare(f"r{n}", 0)
                            for n in range(300)])
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == "block"),
               what="the blocking job to start")
    wait_until(lambda: buffered(jobs, "overlap") >= 10,
               what="jobs reserved ahead of the busy child")
    table, store = jobs.app.store.tables.jobs, jobs.app.store
    stop_holding_no_lock(stalled, jobs.app)  # the supervisor only: a GC pause, a stuck VM
    try:
        wait_until(lambda: count(jobs.app, table, table.c.job == "overlap",
                                 table.c.available_at > store.dialect.now()) == 0,
                   what="its leases to run out")
        other = workers.run("--queue", "default", "--stop-when-empty", *FAST)
        assert other.returncode == 0, other.stdout
        assert count(jobs.app, table, table.c.job == "overlap") == 0
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    wait_until(lambda: count(jobs.app, table, table.c.job == "wait_for_go",
                             table.c.available_at > store.dialect.now()),
               what="the stalled worker to renew what it still holds")
    jobs.note("block", "go")
    wait_until(lambda: count(jobs.app, table) == 0, what="the blocking job to end")
    os.killpg(stalled.pid, signal.SIGTERM)
    output, _ = stalled.communicate(timeout=60)
    assert stalled.returncode == 0, output
    assert "lost to other workers" in output
    effects = jobs.effects
    runs = jobs.app.store.read(lambda c: c.execute(
        sa.select(effects.c.tag, sa.func.count())
        .where(effects.c.tag.like("r%"), effects.c.event == "start")
        .group_by(effects.c.tag)).all())
    assert sorted(tag for tag, _ in runs) == sorted(f"r{n}" for n in range(300))
    assert [tag for tag, times in runs if times > 1] == []
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0
