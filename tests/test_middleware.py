"""Job middleware: the protocol, and WithoutOverlapping across worker processes."""

import os
import signal

import pytest

import dbqueue
from tests.conftest import count, rows, wait_until

FAST = ("--sleep", "0.05")


def test_middleware_wraps_the_job_in_order_and_can_skip_it(jobs, workers):
    jobs.wrapped.dispatch(2)
    jobs.wrapped.dispatch(3)  # skip_odd returns without calling the job: it completes
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    events = [(r.event, r.detail, r.n) for r in rows(jobs.app, jobs.effects)]
    assert events == [("before:1", "[2]", None), ("body", None, 2), ("after", None, None),
                      ("before:1", "[3]", None), ("after", None, None)]
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0


def test_middleware_must_be_callable(app):
    with pytest.raises(dbqueue.ConfigurationError, match="middleware of job 'x'"):
        app.job(name="x", middleware=["not callable"])(lambda: None)


def test_without_overlapping_runs_jobs_with_one_key_one_at_a_time(jobs, workers):
    jobs.app.dispatch_many([jobs.one_at_a_time.prepare(n) for n in range(40)])
    hosts = [workers.start("--concurrency", "2", *FAST) for _ in range(2)]
    wait_until(lambda: count(jobs.app, jobs.app.store.tables.jobs) == 0, timeout=180,
               what="all 40 jobs to complete")
    for host in hosts:
        os.killpg(host.pid, signal.SIGTERM)
        output, _ = host.communicate(timeout=60)
        assert host.returncode == 0, output
    # tries=1: had a release counted as an attempt, jobs would have failed.
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0
    events = rows(jobs.app, jobs.effects, jobs.effects.c.tag == "serial")
    assert len(events) == 80
    ordered = sorted(events, key=lambda r: (r.at, r.id))
    for start, end in zip(ordered[::2], ordered[1::2], strict=True):
        assert (start.event, end.event, start.pid) == ("start", "end", end.pid)
    assert count(jobs.app, jobs.app.store.tables.cache_locks) == 0  # every holder released
