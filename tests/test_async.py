"""``async def`` jobs: a child runs each coroutine to its end on an event loop of
its own, with the timeout, retries and idempotency of any other job."""

from tests.conftest import count, rows

FAST = ("--sleep", "0.1")


def test_async_jobs_run_retry_time_out_and_record_outcomes(jobs, workers):
    jobs.app.dispatch_many([jobs.async_record.prepare(n) for n in range(5)])
    jobs.async_flaky.dispatch("flaky")  # fails its first attempt, succeeds on the second
    jobs.async_sleep.dispatch()  # awaits for 60 s; its timeout is 1 s
    jobs.async_charge.dispatch(9)
    result = workers.run("--concurrency", "2", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert "never awaited" not in result.stdout
    assert {r.n for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "async")} == set(
        range(5))
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "flaky") == 2
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "charge") == 1
    assert jobs.app.outcome("async:9").result == {"order": 9}
    (failed,) = rows(jobs.app, jobs.app.store.tables.failed_jobs)
    assert (failed.job, failed.exception_class) == ("async_sleep", "dbqueue.JobTimeout")
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
