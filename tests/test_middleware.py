"""Job middleware: the protocol, and WithoutOverlapping across worker processes."""

import os
import signal

import pytest
import sqlalchemy as sa

import dbqueue
from dbqueue.middleware import run_with
from tests.conftest import count, rows, wait_until

FAST = ("--sleep", "0.05")


def drain(jobs, workers, hosts):
    """Run ``hosts`` workers (concurrency 2) until the queue is empty, then stop them.

    Not --stop-when-empty: jobs released for a moment would let a worker exit early.
    """
    running = [workers.start("--concurrency", "2", *FAST) for _ in range(hosts)]
    wait_until(lambda: count(jobs.app, jobs.app.store.tables.jobs) == 0, timeout=240,
               what="every job to complete")
    for host in running:
        os.killpg(host.pid, signal.SIGTERM)
        output, _ = host.communicate(timeout=60)
        assert host.returncode == 0, output


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
    # One middleware where a list goes (it raised "object is not iterable").
    with pytest.raises(dbqueue.ConfigurationError,
                       match=r"takes a list: middleware=\[WithoutOverlapping\(...\)\]"):
        app.job(name="x", middleware=dbqueue.WithoutOverlapping(lambda: "k"))(lambda: None)


@pytest.mark.parametrize("make", [
    lambda: dbqueue.WithoutOverlapping("k", expire_after=1e12),
    lambda: dbqueue.WithoutOverlapping("k", release_after=float("inf")),
    lambda: dbqueue.WithoutOverlapping("k", release_after=float("nan")),
    lambda: dbqueue.ThrottlesExceptions(3, decay=1e12),
    lambda: dbqueue.ThrottlesExceptions(3, backoff=-1),
    lambda: dbqueue.RateLimited("api", 5, per=float("inf")),
])
def test_middleware_durations_are_checked_as_a_jobs_are(make):
    """Each passed, then overflowed the server's date at the first lock or
    release: a traceback, or a job run again at every lease expiry."""
    with pytest.raises(dbqueue.ConfigurationError, match="must be"):
        make()


def test_without_overlapping_runs_jobs_with_one_key_one_at_a_time(jobs, workers):
    jobs.app.dispatch_many([jobs.one_at_a_time.prepare(n) for n in range(40)])
    drain(jobs, workers, hosts=2)
    # tries=1: had a release counted as an attempt, jobs would have failed.
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0
    events = rows(jobs.app, jobs.effects, jobs.effects.c.tag == "serial")
    assert len(events) == 80
    ordered = sorted(events, key=lambda r: (r.at, r.id))
    for start, end in zip(ordered[::2], ordered[1::2], strict=True):
        assert (start.event, end.event, start.pid) == ("start", "end", end.pid)
    assert count(jobs.app, jobs.app.store.tables.cache_locks) == 0  # every holder released


def test_stop_when_empty_waits_for_a_job_its_own_lock_holder_held_back(jobs, workers):
    """Two jobs with one key in one reservation: the second is released for a
    moment (release_after=0), which is no delay anyone chose: the worker runs
    it before it says the queue is empty."""
    jobs.divide.dispatch(34)
    jobs.divide.dispatch(40)  # the same key: 100 // n
    result = workers.run("--concurrency", "2", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "divide") == 2, result.stdout
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0


def test_stop_when_empty_waits_for_the_jobs_a_rate_limit_held_back(jobs, workers):
    """A rate limit's release is no delay anyone chose for the job either:
    the worker runs the jobs it held back before it says the queue is empty."""
    jobs.app.dispatch_many([jobs.limited.prepare(n) for n in range(7)])  # 5 per second
    result = workers.run("--concurrency", "2", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "limited") == 7, result.stdout
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0


def circuit(jobs, key):
    table = jobs.app.store.tables.job_circuits
    return jobs.app.store.read(
        lambda c: c.execute(sa.select(table).where(table.c.key == key)).first())


def make_due(jobs):
    table, dialect = jobs.app.store.tables.jobs, jobs.app.store.dialect
    with jobs.app.engine.begin() as c:
        c.execute(sa.update(table).values(available_at=dialect.now_plus(-1)))


def test_throttles_exceptions_opens_after_n_failures_and_closes_after_decay(jobs, workers):
    calls = lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == "api")  # noqa: E731
    jobs.flaky_api.dispatch(1)
    assert workers.run("--max-jobs", "3", *FAST).returncode == 0  # three failed attempts
    assert calls() == 3
    state = circuit(jobs, "dbqueue:circuit:flaky_api")
    assert state.failures == 0 and state.opened_until is not None
    assert (state.opened_until - jobs.app.store.now()).total_seconds() > 590

    make_due(jobs)  # open: released until it closes, without running or using a try
    assert workers.run("--max-jobs", "1", *FAST).returncode == 0
    assert calls() == 3
    (row,) = rows(jobs.app, jobs.app.store.tables.jobs)
    assert row.attempts == 3 and row.reserved_by is None
    assert (row.available_at - jobs.app.store.now()).total_seconds() > 590

    table, dialect = jobs.app.store.tables.job_circuits, jobs.app.store.dialect
    with jobs.app.engine.begin() as c:  # decay has passed
        c.execute(sa.update(table).values(opened_until=dialect.now_plus(-1)))
    make_due(jobs)
    assert workers.run("--max-jobs", "1", *FAST).returncode == 0
    assert calls() == 4  # closed: the job runs again
    assert circuit(jobs, "dbqueue:circuit:flaky_api").failures == 1


def test_a_success_resets_the_count_of_consecutive_failures(jobs, workers):
    from dbqueue.store.circuits import Circuits

    circuits = Circuits(jobs.app.store)
    assert not circuits.failed("dbqueue:circuit:api", 3, 600)
    assert not circuits.failed("dbqueue:circuit:api", 3, 600)
    jobs.healthy_api.dispatch(9)
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    state = circuit(jobs, "dbqueue:circuit:api")
    assert state.failures == 0 and state.opened_until is None
    assert not circuits.failed("dbqueue:circuit:api", 3, 600)  # counting starts again


def test_rate_limited_never_starts_more_than_five_jobs_in_any_second(jobs, workers):
    jobs.app.dispatch_many([jobs.limited.prepare(n) for n in range(20)])
    drain(jobs, workers, hosts=3)
    starts = sorted(r.at for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "limited"))
    assert len(starts) == 20  # all ran; tries=1, so no release used up a try
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0
    # No window [t, t + 1 s) holds six starts: any six in a row span a second.
    spans = [(starts[i + 5] - starts[i]).total_seconds() for i in range(len(starts) - 5)]
    assert min(spans) >= 1.0, min(spans)


def test_without_overlapping_drops_or_waits_for_a_dead_holders_key_to_expire(jobs, workers):
    key = "dbqueue:overlap:drop_if_busy:nightly"
    dead_holder = jobs.app.lock(key, ttl=600)  # a holder that died without releasing
    assert dead_holder.acquire()
    jobs.drop_if_busy.dispatch(1)
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    assert count(jobs.app, jobs.effects) == 0  # dont_release: dropped, not run
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    table, dialect = jobs.app.store.tables.cache_locks, jobs.app.store.dialect
    with jobs.app.engine.begin() as c:  # expire_after has passed
        c.execute(sa.update(table).values(expires_at=dialect.now_plus(-1)))
    jobs.drop_if_busy.dispatch(2)
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    assert [r.n for r in rows(jobs.app, jobs.effects)] == [2]


def test_middleware_locks_last_as_long_as_the_dispatched_timeout(jobs, workers):
    """The job's own timeout is 1 s; this dispatch allows 120 s, and its locks must
    not expire before that (another host could then run beside it)."""
    jobs.lock_ttl.options(timeout=120).dispatch()
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    left = {row.event: int(row.detail) for row in rows(jobs.app, jobs.effects)}
    assert len(left) == 2  # the overlap key and the rate limit's one slot
    assert all(120 <= seconds <= 130 for seconds in left.values()), left


def test_a_worker_takes_a_jobs_lock_for_at_least_two_heartbeats(jobs, workers):
    """expire_after=1 would let the key lapse between two renewals of a running
    job's locks (every heartbeat: 1 s with a 3 s lease); the worker takes it for
    two heartbeats plus a margin of 5 s."""
    jobs.brief_lock.dispatch()
    assert workers.run("--retry-after", "3", "--stop-when-empty", *FAST).returncode == 0
    ((key, seconds),) = [(row.event, int(row.detail)) for row in rows(jobs.app, jobs.effects)]
    assert key.endswith("brief") and 5 <= seconds <= 7


def test_a_lock_key_function_that_raises_fails_only_its_job(jobs, workers):
    jobs.divide.dispatch(0)  # 100 // 0 raises in the worker that computes the key
    jobs.divide.dispatch(4)
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    (failed,) = rows(jobs.app, jobs.app.store.tables.failed_jobs)
    assert failed.exception_class == "ZeroDivisionError"
    assert "lock key of job" in failed.exception_message
    assert [r.n for r in rows(jobs.app, jobs.effects)] == [4]
    assert count(jobs.app, jobs.app.store.tables.cache_locks) == 0


def test_a_lock_key_no_server_can_store_fails_only_its_job(jobs, workers):
    """PostgreSQL refused the batch's lock statement for a NUL in one key: the
    other jobs of the batch stayed leased, and none ran or failed."""
    for key in ("alice", "eve\x00", "none", "carol"):
        jobs.keyed.dispatch(key)
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    failed = sorted(rows(jobs.app, jobs.app.store.tables.failed_jobs),
                    key=lambda row: row.job_id)
    assert [row.exception_class for row in failed] == ["dbqueue.ConfigurationError"] * 2
    assert "holds a NUL character" in failed[0].exception_message
    assert "returned None (has it a return statement?)" in failed[1].exception_message
    assert sorted(r.detail for r in rows(jobs.app, jobs.effects)) == ["alice", "carol"]
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    assert count(jobs.app, jobs.app.store.tables.cache_locks) == 0


def test_without_overlapping_run_outside_a_worker_takes_its_own_lock(jobs):
    guard = dbqueue.WithoutOverlapping("solo")
    context = dbqueue.JobContext(jobs.app, jobs.divide, 1, (5,))
    lock = jobs.app.lock(guard.lock_key(context))
    assert run_with((guard,), context, lock.locked) is True  # held while the body runs
    assert not lock.locked()
    other = jobs.app.lock(guard.lock_key(context))
    assert other.acquire()
    with pytest.raises(dbqueue.Release):
        run_with((guard,), context, lambda: pytest.fail("ran beside the holder"))
    # A worker that took the key already passes it in held_locks.
    held = dbqueue.JobContext(jobs.app, jobs.divide, 1, (5,),
                              held_locks=frozenset({guard.lock_key(context)}))
    assert run_with((guard,), held, lambda: "ran") == "ran"


def test_a_job_over_the_rate_limit_looks_again_within_per_seconds(jobs, workers):
    """The slot of a running job is held for its whole timeout (300 s here), but
    frees ``per`` (2) seconds after the job ends: a job over the limit must not
    wait for the hold to run out."""
    ids = {key: jobs.rate_one.dispatch(key) for key in ("first", "second")}
    host = workers.start("--concurrency", "2", *FAST)
    (started,) = wait_until(lambda: [r.tag for r in rows(jobs.app, jobs.effects)],
                            what="one job to start")
    (other,) = set(ids) - {started}
    table, store = jobs.app.store.tables.jobs, jobs.app.store

    def released_for() -> float | None:
        (row,) = rows(jobs.app, table, table.c.id == ids[other])
        if row.reserved_by is not None or row.available_at <= store.now():
            return None  # not (yet) released, or due again already
        return (row.available_at - store.now()).total_seconds()

    # per (2 s), plus at most a quarter of it at random; not the neighbour's 300 s hold.
    assert 0 < wait_until(released_for, what="the job over the limit to be released") <= 2.5
    for key in ids:
        jobs.note(key, "go")
    wait_until(lambda: count(jobs.app, table) == 0, what="both jobs to run")
    os.killpg(host.pid, signal.SIGTERM)
    output, _ = host.communicate(timeout=60)
    assert host.returncode == 0, output
