"""The worker, as real `dbqueue work` processes: outcomes, limits and signals."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dbqueue.store import NewJob
from dbqueue.worker.clock import Deadline, passed
from dbqueue.worker.signals import REPEAT_AFTER, StopSignals
from tests.conftest import (
    ROOT,
    count,
    process_ended,
    read_until,
    rows,
    stopped_while_running,
    wait_until,
    worker_env,
)

FAST = ("--sleep", "0.1")


def failed_rows(jobs):
    return rows(jobs.app, jobs.app.store.tables.failed_jobs)


def job_rows(jobs):
    return rows(jobs.app, jobs.app.store.tables.jobs)


def make_due(jobs):
    """Pretend a backoff or release delay has passed (the test cannot wait for it)."""
    table, store = jobs.app.store.tables.jobs, jobs.app.store
    with jobs.app.engine.begin() as c:
        c.execute(sa.update(table).values(available_at=store.dialect.now_plus(-1)))


def test_timeouts_kill_tight_loops_and_blocking_calls_and_the_worker_goes_on(jobs, workers):
    jobs.spin.dispatch()
    jobs.block.dispatch()
    jobs.record.dispatch(1)
    result = workers.run("--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    failures = {row.job: row for row in failed_rows(jobs)}
    assert set(failures) == {"spin", "block"}
    for row in failures.values():
        assert row.exception_class == "dbqueue.JobTimeout"
        assert "timeout of 1 s" in row.exception_message and row.attempts == 1
    assert count(jobs.app, jobs.effects, jobs.effects.c.n == 1) == 1


def test_a_short_job_that_hangs_behind_many_queued_ones_still_times_out(jobs, workers):
    """Short jobs are queued many at a time in a child's pipe, which the child
    reads only between jobs: while one hangs, what is sent to it stays there.
    However much is queued, the worker must not wait on that pipe, or it
    stops enforcing the very timeout that would end the hang."""
    padding = "x" * 1500  # under the size that is queued at all, yet 256 of them fill a pipe
    jobs.app.dispatch_many([jobs.padded.prepare(padding) for _ in range(1500)])
    jobs.padded.dispatch(padding, stuck=True)
    jobs.app.dispatch_many([jobs.padded.prepare(padding) for _ in range(1500)])
    result = workers.run("--stop-when-empty", "-c", "1", *FAST, timeout=60)
    assert result.returncode == 0, result.stdout
    assert [(row.job, row.exception_class) for row in failed_rows(jobs)] == [
        ("padded", "dbqueue.JobTimeout")]
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0


def test_jobs_reserved_ahead_of_stalled_children_go_to_an_idle_worker(jobs, workers):
    """Short jobs first: the worker then reserves ahead for short jobs, slow
    ones too. Once its child has run one long, the one reserved behind it goes
    back to the queue, where another worker takes it (before, it waited there
    until the first had ended)."""
    effects = jobs.effects

    def noted(key: str, event: str) -> int:
        return count(jobs.app, effects, effects.c.tag == key, effects.c.event == event)

    for n in range(3):
        jobs.record.dispatch(n)
    jobs.wait_for_go.dispatch("first")
    jobs.wait_for_go.dispatch("second")
    ahead = workers.start("-c", "1", *FAST)
    wait_until(lambda: noted("first", "start"), what="the first to start")
    other = workers.start("-c", "1", *FAST)
    wait_until(lambda: noted("second", "start"), what="the second to start elsewhere")
    assert not noted("first", "end")  # it waited for no end
    jobs.note("first", "go")
    jobs.note("second", "go")
    wait_until(lambda: noted("first", "end") and noted("second", "end"), what="both to end")
    for worker in (ahead, other):
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0


def test_a_crashed_child_costs_its_job_one_attempt_and_is_replaced(jobs, workers):
    jobs.crash.dispatch()
    jobs.record.dispatch(2)
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    (row,) = failed_rows(jobs)
    assert row.exception_class == "dbqueue.WorkerCrashed" and "SIGSEGV" in row.exception_message
    assert count(jobs.app, jobs.effects, jobs.effects.c.n == 2) == 1


def test_retries_follow_the_backoff_by_the_database_clock_then_fail(jobs, workers):
    jobs.flaky.dispatch()
    for attempt, backoff in ((1, 30), (2, 60)):
        assert workers.run("--once", *FAST).returncode == 0
        (row,) = job_rows(jobs)
        assert (row.attempts, row.reserved_by) == (attempt, None)
        stored_delay = (row.available_at - jobs.app.store.now()).total_seconds()
        assert backoff - 5 < stored_delay <= backoff
        make_due(jobs)
    assert workers.run("--once", *FAST).returncode == 0
    assert job_rows(jobs) == []
    (failed,) = failed_rows(jobs)
    assert (failed.attempts, failed.exception_class) == (3, "RuntimeError")
    assert "upstream said 503" in failed.exception and "Traceback" in failed.exception


def test_stop_when_empty_waits_for_immediate_retries(jobs, workers):
    jobs.third_time_lucky.dispatch("lucky")  # fails twice, no backoff, then succeeds
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "lucky") == 3
    assert job_rows(jobs) == [] and failed_rows(jobs) == []


def test_release_puts_the_job_back_without_using_a_try(jobs, workers):
    jobs.release.dispatch()
    for _ in range(2):  # tries=1, yet it is released twice and never fails
        assert workers.run("--once", *FAST).returncode == 0
        (row,) = job_rows(jobs)
        assert (row.attempts, row.reserved_by) == (0, None)
        assert 40 < (row.available_at - jobs.app.store.now()).total_seconds() <= 45
        make_due(jobs)
    assert failed_rows(jobs) == []


def test_fail_and_dont_retry_fail_at_once_whatever_tries_remain(jobs, workers):
    jobs.fail.dispatch()
    jobs.permanent.dispatch()
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    failures = {row.job: row for row in failed_rows(jobs)}
    assert (failures["fail"].exception_class, failures["fail"].exception_message) == (
        "dbqueue.Fail", "customer was deleted")
    assert failures["permanent"].exception_class == "KeyError"
    assert {row.attempts for row in failures.values()} == {1}


def test_retry_until_stops_retries_that_would_start_too_late(jobs, workers):
    jobs.deadline.dispatch()  # tries=None, backoff 100 s, retry_until 50 s after dispatch
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    (row,) = failed_rows(jobs)
    assert row.attempts == 1 and "retry_until" in row.exception_message


def test_on_failure_runs_once_when_the_job_finally_fails(jobs, workers):
    job_id = jobs.hooked.dispatch(77)
    assert workers.run("--once", *FAST).returncode == 0  # attempt 1 of 2: retried, no hook
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "hook") == 0
    make_due(jobs)
    assert workers.run("--once", *FAST).returncode == 0
    (hook,) = rows(jobs.app, jobs.effects, jobs.effects.c.tag == "hook")
    assert hook.detail == f"{job_id}:ValueError:order 77 is broken:[77]"


def test_an_on_failure_hook_that_raises_is_logged_with_its_traceback_under_verbose(
        jobs, workers):
    """Kept nowhere else: without its traceback the hook's author has nothing
    to go on. One line without -v, as every event of the worker's log."""
    first = jobs.badly_hooked.dispatch()
    quiet = workers.run("--stop-when-empty", *FAST)
    second = jobs.badly_hooked.dispatch()
    verbose = workers.run("-v", "--stop-when-empty", *FAST)
    assert quiet.returncode == verbose.returncode == 0
    said = f"on_failure hook of job {first} raised RuntimeError: cannot report job {first}"
    assert said + "\n" in quiet.stdout and "Traceback" not in quiet.stdout, quiet.stdout
    said = f"on_failure hook of job {second} raised RuntimeError: cannot report job {second}"
    assert said + "\nTraceback (most recent call last):" in verbose.stdout, verbose.stdout
    assert 'in failing_hook\n    raise RuntimeError' in verbose.stdout, verbose.stdout


def test_rows_that_cannot_run_are_failed_with_a_reason_and_the_worker_goes_on(jobs, workers):
    store, table = jobs.app.store, jobs.app.store.tables.jobs
    with jobs.app.engine.begin() as c:  # as a person might, by hand
        c.execute(table.insert().values(queue="default", job="record", payload="{not json",
                                        available_at=store.dialect.now(),
                                        created_at=store.dialect.now()))
        # unknown, and dispatched long enough ago that no worker will come to know it
        c.execute(table.insert().values(queue="default", job="os.system",
                                        payload='{"args": ["rm -rf /"]}',
                                        available_at=store.dialect.now(),
                                        created_at=store.dialect.now_plus(-3600)))
        # arguments an older version of the job took
        c.execute(sa.text(f"INSERT INTO {table.name} (queue, job, payload) VALUES "
                          "('default', 'record', '{\"args\": [3], \"kwargs\": {\"old\": 1}}')"))
        for options in ('{"tries": "x"}', '{"retry_until": "soon"}', '{"timeout": -1}'):
            c.execute(table.insert().values(
                queue="default", job="noop", payload=f'{{"args": [], "options": {options}}}',
                available_at=store.dialect.now(), created_at=store.dialect.now()))
    jobs.nul_error.dispatch()
    jobs.record.dispatch(4)
    result = workers.run("--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    reasons = sorted((row.job, row.exception_class, row.exception_message)
                     for row in failed_rows(jobs))
    # The last line counts them: "after 1 job(s)" alone read as if nothing else happened.
    assert ("after 4 job(s); 4 more failed without running (see: dbqueue failed)"
            in result.stdout)
    assert [(job, cls) for job, cls, _ in reasons] == [
        ("noop", "dbqueue.ConfigurationError"),
        ("noop", "dbqueue.ConfigurationError"),
        ("noop", "dbqueue.ConfigurationError"),
        ("nul_error", "ValueError"),
        ("os.system", "dbqueue.UnknownJob"),
        ("record", "dbqueue.InvalidArguments"),
        ("record", "dbqueue.SerializationError"),
    ]
    assert {message.split(": ", 1)[1] for _, _, message in reasons[:3]} == {
        "tries must be a whole number >= 1, or None for no limit, not 'x'",
        "retry_until must be an ISO 8601 time, not 'soon'",
        "timeout must be > 0, not -1",
    }
    assert all("has invalid options" in message for _, _, message in reasons[:3])
    assert reasons[3][2] == "a NUL \\x00 in the message"
    assert "no job named 'os.system'" in reasons[4][2]
    assert reasons[4][2].endswith("(nor did a worker that knows it run it in the 10 minutes "
                                  "after its dispatch)")
    assert "unexpected keyword argument 'old'" in reasons[5][2]
    assert "cannot be decoded" in reasons[6][2]
    assert count(jobs.app, jobs.effects, jobs.effects.c.n == 4) == 1
    assert job_rows(jobs) == []


def test_a_job_unknown_here_but_just_dispatched_is_put_back_for_newer_workers(jobs, workers):
    """During a rolling deploy the new code dispatches jobs that workers still on
    the old code do not know: they failed for good, their chains stopped and
    their batches were cancelled. Now they wait for a worker that knows them."""
    store, table = jobs.app.store, jobs.app.store.tables.jobs
    job_id = store.push(NewJob("default", "reports.weekly_digest", '{"args": []}'))
    result = workers.run("--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert (f"job {job_id} (reports.weekly_digest): no job named 'reports.weekly_digest' is "
            "registered in this app;") in result.stdout
    assert "put back for a worker that knows it (it fails for good 10 minutes after its " \
           "dispatch)" in result.stdout
    assert failed_rows(jobs) == []
    (row,) = job_rows(jobs)
    assert (row.id, row.attempts, row.reserved_by) == (job_id, 0, None)  # no try used
    assert store.read(lambda c: c.execute(sa.select(table.c.available_at > store.dialect.now())
                                          ).scalar_one())  # and not at once again


def test_max_jobs_and_memory_limit(jobs, workers):
    jobs.app.dispatch_many([jobs.record.prepare(n) for n in range(10, 15)])
    result = workers.run("--max-jobs", "3", "--memory", "1", *FAST)
    assert result.returncode == 0 and "replacing it" in result.stdout
    done = rows(jobs.app, jobs.effects)
    assert len(done) == 3 and len({row.pid for row in done}) == 3  # a fresh child each time
    assert len(job_rows(jobs)) == 2


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_lets_the_running_job_finish_and_exits_zero(jobs, workers, stop):
    """SIGTERM from systemd or a deploy; SIGHUP from the terminal a worker was
    started from, as it closes (an SSH session ending): it killed the whole
    process group, and the running job lost its attempt."""
    jobs.overlap.dispatch("term", 2)
    jobs.record.dispatch(5)
    output = stopped_while_running(jobs, workers, "term", *FAST, stop=stop)
    assert f"stopping (received {signal.Signals(stop).name})" in output
    assert [r.event for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "term")] == [
        "start", "end"]
    remaining = job_rows(jobs)  # the job it had not started yet is back, attempt not counted
    assert all(row.reserved_by is None and row.attempts == 0 for row in remaining)
    assert count(jobs.app, jobs.app.store.tables.queue_workers) == 0


def test_a_second_ctrl_c_puts_the_running_job_back_at_once(jobs, workers):
    jobs.hold.dispatch("impatient", 300)  # blocks on its first start only
    process = workers.start("--grace", "600", *FAST)
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == "impatient"),
               what="the job to start")
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    read_until(process, "stopping (received SIGINT)")  # the worker's log: it has begun to stop
    time.sleep(REPEAT_AFTER)  # the rule is about time: two signals at once are one request
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=60)  # well before the 600 s of grace
    assert process.returncode == 0, output
    assert "received SIGINT again: stopping now" in output
    assert "(hold) was still running at the second SIGINT; put back" in output
    assert "grace period" not in output  # 600 s of it were left
    (row,) = job_rows(jobs)  # back in the queue, its attempt not counted
    assert (row.reserved_by, row.attempts) == (None, 0)


def test_a_stopping_worker_starts_none_of_the_jobs_queued_in_its_children(jobs, workers):
    """Short jobs wait in a child's pipe behind the one it runs. On SIGTERM
    they come back unstarted, as the reserved ones do, instead of starting
    while the running job finishes."""
    jobs.app.dispatch_many([jobs.hold.prepare(f"short-{n}", 0) for n in range(20)]
                           + [jobs.record.prepare(n, "warm-up") for n in range(20)]
                           + [jobs.hold.prepare("ends-in-grace", 1.5)]
                           + [jobs.record.prepare(n, "behind") for n in range(20, 40)])
    stopped_while_running(jobs, workers, "ends-in-grace", "--grace", "60", *FAST)
    assert [r.event for r in rows(jobs.app, jobs.effects,
                                  jobs.effects.c.tag == "ends-in-grace")] == ["start", "end"]
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "behind") == 0
    behind = [row for row in job_rows(jobs) if row.job == "record"]
    assert len(behind) == 20
    assert all(row.reserved_by is None and row.attempts == 0 for row in behind)


def test_a_slow_job_waits_for_a_free_child_rather_than_behind_another(jobs, workers):
    """Jobs of a kind seen to be short are queued several to a child. A job of
    a slow kind, or of one not seen yet, is not: the two slow jobs amid short
    ones run side by side, one in each child, not one after the other."""
    jobs.app.dispatch_many([jobs.record.prepare(n) for n in range(200)]
                           + [jobs.overlap.prepare(key, 2) for key in ("slow-a", "slow-b")]
                           + [jobs.record.prepare(n) for n in range(200, 400)])
    result = workers.run("--concurrency", "2", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    (a_start, a_end), (b_start, b_end) = (
        [row.at for row in rows(jobs.app, jobs.effects, jobs.effects.c.tag == key)]
        for key in ("slow-a", "slow-b"))
    assert a_start < b_end and b_start < a_end


def test_two_signals_at_once_are_one_request_to_stop(jobs, workers):
    """A process manager forwarding Ctrl-C to a worker that got it too sends two."""
    jobs.overlap.dispatch("twice", 1)
    process = workers.start("--grace", "600", *FAST)
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == "twice"),
               what="the job to start")
    os.killpg(process.pid, signal.SIGINT)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "Ctrl-C again stops at once" in output
    assert [r.event for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "twice")] == [
        "start", "end"]  # it was let finish


def test_a_deadline_has_passed_when_either_clock_says_so():
    """A paused VM's monotonic clock does not count the pause; its wall clock is
    put right: a lease deadline must pass by either."""
    lease = Deadline.after(60)
    assert not passed(*lease)
    assert passed(lease.mono, time.time() - 1)  # a paused VM woke up: its wall clock moved on
    assert passed(time.monotonic() - 1, lease.wall)
    assert passed(*Deadline.after(-1))


def test_a_wrong_password_or_database_name_stops_the_worker_at_once(schema):
    """Unlike a server that does not answer (the worker waits for it), a server
    that refuses the login will refuse it again: one Error line at once."""
    if schema.startswith("sqlite"):
        pytest.skip("SQLite has no login")
    wrong = sa.engine.make_url(schema).set(database="dbqueue_no_such_database")
    result = subprocess.run(
        [sys.executable, "-m", "dbqueue", "work", "--app", "tests.jobapp:app"], cwd=ROOT,
        env=worker_env(wrong.render_as_string(hide_password=False)), capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 1, result
    assert result.stderr.startswith("Error: cannot connect to "), result.stderr
    assert "check DBQUEUE_URL (or --url) and the user, password, database name and options" in (
        result.stderr)


def test_a_bad_setting_in_the_urls_options_stops_the_worker_at_once(schema):
    if not schema.startswith("postgresql"):
        pytest.skip("only PostgreSQL takes server settings in the URL (options=-c ...)")
    wrong = sa.engine.make_url(schema).update_query_dict({"options": "-c TimeZone=nowhere"})
    result = subprocess.run(
        [sys.executable, "-m", "dbqueue", "work", "--app", "tests.jobapp:app"], cwd=ROOT,
        env=worker_env(wrong.render_as_string(hide_password=False)), capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 1, result
    assert 'invalid value for parameter "TimeZone": "nowhere"' in result.stderr, result.stderr


def test_a_worker_waiting_for_an_unreachable_database_stops_when_told():
    """systemd stopping a host during an outage: SIGTERM ends the wait, exit 0."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "dbqueue", "work", "--app", "tests.jobapp:app"], cwd=ROOT,
        env=worker_env("postgresql://nobody@127.0.0.1:1/none"), text=True,
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        log = read_until(worker, "the database is unreachable (start:")
        os.killpg(worker.pid, signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert worker.returncode == 0, log + output
    assert "stopped before it started (received SIGTERM)" in output, log + output



def test_a_worker_waiting_for_an_unreachable_database_keeps_to_its_max_time():
    """A mistyped port under --max-time (a cron job, a test run): the worker
    ends when its time is up, as it would once working, not never."""
    result = subprocess.run(
        [sys.executable, "-m", "dbqueue", "work", "--app", "tests.jobapp:app",
         "--max-time", "1", "--stop-when-empty"], cwd=ROOT,
        env=worker_env("postgresql://nobody@127.0.0.1:1/none"), capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 0, result
    assert "the database is unreachable (start:" in result.stderr, result.stderr
    assert "stopped before it started (ran for 1 s)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

def test_a_repeat_within_a_second_is_counted_apart_from_a_second_request():
    """What the supervisor logs as "taken as the same request" (in this process:
    two signals sent to a worker at once may reach Python as one)."""
    signals = StopSignals()
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # each is handled before the next is sent
        assert (signals.received, signals.repeats_ignored, signals.again) == ("SIGINT", 1, False)
    finally:
        signals.uninstall()


def test_a_worker_started_with_nohup_outlives_its_terminal(jobs, workers):
    """nohup leaves SIGHUP ignored, for the worker to outlive the terminal it
    was started from: taken over as a stop, it stopped all the same."""
    process = subprocess.Popen(  # as nohup starts it: SIGHUP ignored from the start
        [sys.executable, "-m", "dbqueue", "work", "--app", workers.app, *FAST], cwd=ROOT,
        env=worker_env(workers.url), text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    workers.started.append(process)  # killed at the end, whatever happens
    jobs.record.dispatch(1)
    wait_until(lambda: count(jobs.app, jobs.effects) == 1, what="the first job")
    os.killpg(process.pid, signal.SIGHUP)  # the terminal closes
    jobs.record.dispatch(2)
    wait_until(lambda: count(jobs.app, jobs.effects) == 2, what="a job after the hangup")
    assert process.poll() is None
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert "received SIGTERM" in output and "SIGHUP" not in output, output


def test_restart_reaches_running_workers_through_the_database(jobs, workers):
    first = workers.start("--retry-after", "1.5", *FAST)
    second = workers.start("--retry-after", "1.5", *FAST)
    wait_until(lambda: count(jobs.app, jobs.app.store.tables.queue_workers) == 2,
               what="both workers to register")
    result = subprocess.run([sys.executable, "-m", "dbqueue", "restart"], cwd=ROOT,
                            env=worker_env(workers.url), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and "Asked 2 worker(s)" in result.stdout
    for process in (first, second):
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0 and "restart requested" in output


def test_once_says_it_waits_for_a_job_and_runs_the_next_one(jobs, workers):
    process = workers.start("--once", *FAST)
    read_until(process, "no job is ready on queue(s) default; waiting for one")
    jobs.record.dispatch(6)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert count(jobs.app, jobs.effects, jobs.effects.c.n == 6) == 1
    # With --stop-when-empty it does not wait.
    assert workers.run("--once", "--stop-when-empty", *FAST).returncode == 0


def test_once_with_a_stop_option_stops_without_advising_one(jobs, workers):
    """The hint names --stop-when-empty: a user who gave a stop option needs none."""
    for stop, reason in [("--stop-when-empty", "stopping (queue empty)"),
                         ("--stop-when-drained", "stopping (queues drained)")]:
        result = workers.run("--queue", "mail", "--once", stop, *FAST)
        assert result.returncode == 0, result.stdout
        assert reason in result.stdout, result.stdout
        assert "waiting for one" not in result.stdout, result.stdout


def test_a_star_serves_every_queue_and_unserved_queues_are_named(jobs, workers):
    for n, queue in enumerate(["mail", "reports", "default", "mail"]):
        jobs.record.options(queue=queue).dispatch(n)
    only_default = workers.run("--stop-when-empty", *FAST)
    assert only_default.returncode == 0, only_default.stdout
    assert ("queue(s) mail, reports have ready jobs that no worker serves; add them to "
            "--queue (or use --queue '*' for every queue)") in only_default.stdout
    every = workers.run("--queue", "*", "--stop-when-empty", *FAST)
    assert every.returncode == 0, every.stdout
    assert "no worker serves" not in every.stdout
    assert {row.n for row in rows(jobs.app, jobs.effects)} == {0, 1, 2, 3}
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0


def test_a_queue_name_close_to_a_known_one_is_taken_for_a_typo(jobs, workers):
    jobs.record.options(queue="mail").dispatch(1)
    result = workers.run("--queue", "mial", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert ("queue 'mial' has no ready job and no job of the application is defined on it: "
            "did you mean 'mail'?") in result.stdout
    served = workers.run("--queue", "mail", "--stop-when-empty", *FAST)
    assert "did you mean" not in served.stdout


def test_stop_when_drained_waits_for_delayed_jobs_and_retries(jobs, workers):
    jobs.record.options(delay=1.5).dispatch(7)
    jobs.third_time_lucky.dispatch("drained")  # fails twice, retried at once
    result = workers.run("--stop-when-drained", *FAST)
    assert result.returncode == 0 and "queues drained" in result.stdout
    assert count(jobs.app, jobs.effects, jobs.effects.c.n == 7) == 1
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "drained") == 3
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0


def test_verbose_logs_each_outcome_once_written_with_its_runtime_and_reasons(jobs, workers):
    job_id = jobs.record.dispatch(8)
    jobs.app.dispatch_many([jobs.one_at_a_time.prepare(n) for n in range(3)]
                           + [jobs.limited.prepare(n) for n in range(10, 20)])
    result = workers.run("-v", "--concurrency", "2", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert re.search(rf"job {job_id} \(record\) completed in \d+\.\d ms", result.stdout)
    assert re.search(r"\(one_at_a_time\) released for 0\.1 s: another job holds "
                     r"dbqueue:overlap:one_at_a_time:shared", result.stdout)
    assert re.search(r"\(limited\) released for \d\.\d s: rate limit 'api' reached "
                     r"\(5 per 1 s\)", result.stdout)


def importing_worker(schema, markers, stdout):
    """A `dbqueue work` in a session of its own, returned once its supervisor and
    its fork server are both importing tests.slow_import_app (which then sleeps;
    each leaves a file named after its pid in ``markers``)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dbqueue", "work", "--app", "tests.slow_import_app:app"],
        cwd=ROOT, env=worker_env(schema, DBQUEUE_TEST_MARKERS=str(markers)), text=True,
        start_new_session=True, stdout=stdout, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(list(markers.iterdir())) == 2,
                   what="the supervisor and its fork server to import the application")
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process


@pytest.mark.skipif(not sys.platform.startswith("linux") or sys.version_info[:2] > (3, 12),
                    reason="the fork server is forked on Linux, with Python 3.11 and 3.12")
def test_the_fork_server_is_a_fork_of_the_supervisor_not_a_new_interpreter(tmp_path, schema):
    """A new interpreter would import SQLAlchemy again, beside the supervisor's
    own import, on a start-up bound by the CPU: the fork server is forked from
    the supervisor, once that is imported, and imports only the application.
    So is multiprocessing's resource tracker, which imports nothing."""
    process = importing_worker(schema, tmp_path, stdout=subprocess.DEVNULL)
    try:
        (server,) = {int(marker.name) for marker in tmp_path.iterdir()} - {process.pid}
        helpers = children_of(process.pid)
        assert server in helpers
        assert len(helpers) == 2  # the fork server and the resource tracker
        # A fork runs the supervisor's command line; multiprocessing's own would
        # run `python -c "from multiprocessing.forkserver import main..."`.
        for pid in helpers:
            assert ((Path("/proc") / str(pid) / "cmdline").read_bytes()
                    == (Path("/proc") / str(process.pid) / "cmdline").read_bytes())
        # Neither keeps the supervisor's descriptors, as a new interpreter
        # would not: the tracker only its pipe, and the fork server not that
        # pipe (or the tracker would outlive it, and a Python that waits for
        # its tracker at exit would wait for ever).
        (tracker,) = helpers - {server}
        tracker_pipe = descriptors(tracker)
        assert len(tracker_pipe) == 1
        assert not tracker_pipe & descriptors(server)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def descriptors(pid: int) -> set[str]:
    """What the process's descriptors other than the standard streams name
    (``pipe:[inode]``, a path...)."""
    named = set()
    for fd in (Path("/proc") / str(pid) / "fd").iterdir():
        if int(fd.name) > 2:
            with contextlib.suppress(OSError):  # closed meanwhile
                named.add(os.readlink(fd))
    return named


def children_of(parent: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process that has just ended
            if int(stat.read_text().rpartition(")")[2].split()[1]) == parent:
                found.add(int(stat.parent.name))
    return found


def test_ctrl_c_while_the_worker_starts_prints_one_line(jobs, tmp_path, schema):
    """Ctrl-C reaches the supervisor and its fork server while both import the
    application: one line, no traceback from either."""
    process = importing_worker(schema, tmp_path, stdout=subprocess.PIPE)
    try:
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1
    assert output.strip() == "Aborted!"


def test_a_timeout_kills_the_programs_the_job_started(jobs, workers):
    """They ignore SIGTERM, as the job's process does (a stop lets them finish
    within the grace period), so killing that process left them running."""
    jobs.spawner.dispatch("spawned")
    result = workers.run("--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    [row] = rows(jobs.app, jobs.effects, jobs.effects.c.tag == "spawned")
    wait_until(lambda: process_ended(row.n), what="the program's end")
    assert [(r.job, r.exception_class) for r in failed_rows(jobs)] == [
        ("spawner", "dbqueue.JobTimeout")]


def test_a_copy_a_job_forked_never_takes_the_childs_next_task(jobs, workers):
    """A job that forks without exec: its copy returns into the child's loop.
    It must exit there, not answer for the child or read its pipe: the job
    waits for it, and would wait for ever (to its timeout)."""
    jobs.forker.dispatch()
    for n in range(3):
        jobs.record.dispatch(n)
    result = workers.run("--stop-when-empty", "-c", "1", *FAST)
    assert result.returncode == 0, result.stdout
    assert failed_rows(jobs) == []
    effects = rows(jobs.app, jobs.effects)
    assert sorted((r.tag, r.n) for r in effects) == [
        ("forker", None), ("record", 0), ("record", 1), ("record", 2)]
    assert len({r.pid for r in effects}) == 1  # all in the one child, none in the copy


def test_a_copy_a_failure_hook_forked_never_takes_the_childs_next_task(jobs, workers):
    jobs.fork_hooked.dispatch()
    for n in range(3):
        jobs.record.dispatch(n)
    result = workers.run("--stop-when-empty", "-c", "1", *FAST)
    assert result.returncode == 0, result.stdout
    effects = rows(jobs.app, jobs.effects)
    assert sorted((r.tag, r.n) for r in effects) == [
        ("forking_hook", None), ("record", 0), ("record", 1), ("record", 2)]
    assert len({r.pid for r in effects}) == 1  # all in the one child, none in the copy


def test_a_failure_of_megabytes_is_recorded_shortened(jobs, workers):
    """A message of 3 MB went whole through the pipe and into failed_jobs: on
    MySQL, past max_allowed_packet, that write dropped the connection, and no
    outcome of any job could be written after it."""
    jobs.wordy_error.dispatch()
    jobs.record.dispatch(1)
    result = workers.run("--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    [row] = failed_rows(jobs)
    assert row.exception_message == "z" * 10_000 + "… [2,990,000 more characters cut]"
    assert len(row.exception) < 110_000 and "characters cut] …" in row.exception
    assert row.exception.startswith("Traceback") and row.exception.rstrip().endswith("zzz")
    assert count(jobs.app, jobs.effects, jobs.effects.c.n == 1) == 1


def test_a_child_a_job_left_a_thread_in_is_killed_at_the_stop_and_said_so(jobs, workers):
    jobs.lingering.dispatch()
    result = workers.run("--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert "did not exit within 5 s of being told to (a thread a job left running?)" in (
        result.stdout)
    assert failed_rows(jobs) == [] and job_rows(jobs) == []


def test_a_connection_the_application_opens_at_import_is_never_shared_by_children(
        jobs, workers, tmp_path):
    """The fork server imports the application; an engine of the application's
    that connected at import left that connection in its pool, and every child
    inherited it: two jobs at once used one server session (one read the
    other's answer, and both failed, or worse)."""
    backend = jobs.app.engine.dialect.name
    if backend == "sqlite":
        pytest.skip("a server session is what children would share")
    workers.app = "tests.connect_at_import_app:app"
    workers.env["DBQUEUE_TEST_MARKERS"] = str(tmp_path)
    jobs.app.store.push_many([NewJob("default", "whose_session", "{}")] * 2)
    result = workers.run("--concurrency", "2", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert failed_rows(jobs) == [], result.stdout
    sessions = [line.split() for line in (tmp_path / "sessions").read_text().splitlines()]
    assert len({pid for pid, _ in sessions}) == 2, sessions  # two children, at once
    assert len({session for _, session in sessions}) == 2, sessions  # each its own


def test_a_connection_left_checked_out_at_import_fails_the_job_that_uses_it(
        jobs, workers, tmp_path):
    """Neither closed by the fork server (someone holds it) nor refused at a
    checkout (there is none): a statement on it in a child fails, loudly,
    instead of crossing answers with another child's."""
    if jobs.app.engine.dialect.name == "sqlite":
        pytest.skip("a server session is what children would share")
    workers.app = "tests.connect_at_import_app:app"
    workers.env["DBQUEUE_TEST_MARKERS"] = str(tmp_path)
    jobs.app.store.push(NewJob("default", "on_held_connection", "{}"))
    result = workers.run("--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert "1 connection(s) checked out after the application's import" in result.stdout
    (failure,) = failed_rows(jobs)
    assert failure.exception_class == "sqlalchemy.exc.InvalidRequestError"
    assert "open connections and Sessions inside the job, not at import" in (
        failure.exception_message)



def test_a_job_that_prints_after_the_workers_output_went_away_still_completes(jobs, workers):
    """A worker started from a terminal that closes (an SSH session ending)
    stops on the SIGHUP and lets its jobs finish; but every write to the
    terminal fails then (EIO; here a pipe nobody reads: EPIPE), and a job
    that printed failed for it."""
    jobs.talker.dispatch("talk")
    process = workers.start(*FAST)
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == "talk"),
               what="the job to start")
    assert process.stdout is not None
    process.stdout.close()  # the terminal is gone
    jobs.note("talk", "go")
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.event == "end"),
               what="the job to end")
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    assert failed_rows(jobs) == []
