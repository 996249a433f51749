"""Idempotent jobs: effects written through dbqueue.transaction() happen once per key."""

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa

import dbqueue
from dbqueue import serializer
from dbqueue.store import NewJob
from dbqueue.worker.child import child_main
from dbqueue.worker.messages import Committed, Finished, RunJob, answer_from
from tests.conftest import PREFIX, ROOT, count, rows, wait_until, worker_env

FAST = ("--sleep", "0.05")


def arguments(*args):
    """A RunJob's payload, as a dispatch stores it."""
    return serializer.encode("charge", args, {})


def charges(jobs, order):
    return count(jobs.app, jobs.effects, jobs.effects.c.tag == "charge",
                 jobs.effects.c.event == str(order))


def test_the_effect_and_the_outcome_commit_together_once_per_key(jobs, workers):
    jobs.charge.dispatch(1)
    jobs.charge.dispatch(1)  # the same key: completes without charging again
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    assert charges(jobs, 1) == 1
    outcome = jobs.app.outcome("charge:1")
    assert outcome.job == "charge" and outcome.result == {"order": 1, "cents": 4200}
    assert json.loads(outcome.result_json) == outcome.result
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    assert jobs.app.outcome("charge:2") is None


def test_two_copies_running_at_once_make_one_effect(jobs, workers):
    jobs.charge.dispatch(3, 0.5)
    jobs.charge.dispatch(3, 0.5)
    result = workers.run("--concurrency", "2", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert charges(jobs, 3) == 1
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0


def test_a_crash_after_the_commit_never_repeats_the_effect(jobs, workers):
    jobs.charge_then_freeze.dispatch(5)
    doomed = workers.start("--retry-after", "2", *FAST)
    wait_until(lambda: jobs.app.outcome("freeze:5"), what="the outcome to commit")
    assert count(jobs.app, jobs.app.store.tables.jobs) == 1  # never marked complete
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    rescuer = workers.run("--retry-after", "2", "--max-jobs", "1", *FAST)
    assert rescuer.returncode == 0, rescuer.stdout
    assert charges(jobs, 5) == 1
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0


def test_transaction_outside_an_idempotent_job_is_a_clear_error():
    with pytest.raises(dbqueue.ConfigurationError, match="idempotency_key"):
        dbqueue.transaction()


def cli(url, *args):
    return subprocess.run([sys.executable, "-m", "dbqueue", *args], cwd=ROOT,
                          env=worker_env(url), capture_output=True, text=True, timeout=60)


def test_cli_lists_shows_and_prunes_outcomes(jobs, workers, schema):
    jobs.charge.dispatch(7)
    jobs.charge_or_fail.dispatch(5)  # returns None
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    listed = cli(schema, "outcomes").stdout.splitlines()
    assert listed[0].split() == ["KEY", "JOB", "JOB", "ID", "RECORDED", "(UTC)", "RESULT"]
    by_key = {line.split()[0]: line for line in listed[1:]}
    assert by_key.keys() == {"charge:7", "cof:5"}
    assert by_key["charge:7"].endswith('{"order":7,"cents":4200}')
    assert by_key["cof:5"].endswith("null")
    first = cli(schema, "outcomes", "--json", "--limit", "1")
    assert [o["result"] for o in json.loads(first.stdout)] in ([None], [
        {"order": 7, "cents": 4200}])
    assert first.stderr == "Only the newest 1 shown; --limit N shows more outcomes.\n"
    assert cli(schema, "outcomes", "--limit", "2").stdout.count("\n") == 3  # none hidden
    assert cli(schema, "outcomes", "show", "cof:5").stdout.endswith("result:\nnull\n")
    shown = cli(schema, "outcomes", "show", "charge:7")
    assert shown.returncode == 0 and '"cents": 4200' in shown.stdout
    shown = json.loads(cli(schema, "outcomes", "show", "charge:7", "--json").stdout)
    assert (shown["job"], shown["result"]) == ("charge", {"order": 7, "cents": 4200})
    missing = cli(schema, "outcomes", "show", "charge:8")
    assert missing.returncode == 1 and "Error: no outcome" in missing.stderr
    assert "Deleted 0" in cli(schema, "outcomes", "prune", "--older-than", "1").stdout
    assert "Deleted 2" in cli(schema, "outcomes", "prune", "--older-than", "0").stdout
    assert jobs.app.outcome("charge:7") is None
    assert cli(schema, "outcomes").stdout == "No outcome is recorded.\n"


def test_a_failing_job_among_idempotent_ones_is_undone_alone(jobs, workers):
    jobs.app.dispatch_many([jobs.charge_or_fail.prepare(order) for order in range(10, 40)])
    assert workers.run("--concurrency", "1", "--stop-when-empty", *FAST).returncode == 0
    charged = {int(r.event) for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "charge")}
    assert charged == set(range(10, 40)) - {13}
    (failed,) = rows(jobs.app, jobs.app.store.tables.failed_jobs)
    assert "card declined" in failed.exception_message
    assert jobs.app.outcome("cof:13") is None and jobs.app.outcome("cof:14") is not None


def test_what_cannot_work_next_time_either_fails_at_once(jobs, workers):
    """A key function that does not fit the arguments, or a result that is not
    JSON, fails the job at its first attempt (tries=3): a retry would meet the
    same, and would run the body again for nothing."""
    with pytest.raises(dbqueue.InvalidArguments, match=r"^idempotency_key of job 'key_misfit'"):
        jobs.key_misfit.dispatch(60, "rush")  # refused at dispatch; queued by plain SQL:
    jobs.app.store.push(NewJob("default", "key_misfit", '{"args": [60, "rush"], "kwargs": {}}'))
    jobs.charge_returns_a_set.dispatch(61)
    assert workers.run("--concurrency", "1", "--stop-when-empty", *FAST).returncode == 0
    failed = {f.job: f for f in rows(jobs.app, jobs.app.store.tables.failed_jobs)}
    misfit, returns_a_set = failed["key_misfit"], failed["charge_returns_a_set"]
    assert (misfit.attempts, returns_a_set.attempts) == (1, 1)
    assert misfit.exception_class == "dbqueue.InvalidArguments"
    assert misfit.exception_message.startswith(
        "idempotency_key of job 'key_misfit' cannot take these arguments: ")
    assert returns_a_set.exception_class == "dbqueue.SerializationError"
    assert [charges(jobs, order) for order in (60, 61)] == [0, 0]  # rolled back, run once
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "charge") == 0
    assert count(jobs.app, jobs.app.store.tables.job_outcomes) == 0
    # Not any InvalidArguments: one the job's own code raises takes its tries.
    jobs.dispatches_badly.dispatch(62)
    assert workers.run("--concurrency", "1", "--stop-when-empty", *FAST).returncode == 0
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "dispatches_badly") == 2


def test_a_job_its_middleware_skips_leaves_no_outcome(jobs, workers):
    """Keys of consecutive jobs are claimed together before they run; a job its
    middleware skips gives its claim back."""
    jobs.app.dispatch_many([jobs.charge_even.prepare(order) for order in range(10, 30)])
    assert workers.run("--concurrency", "1", "--stop-when-empty", *FAST).returncode == 0
    charged = {int(r.event) for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "charge")}
    assert charged == set(range(10, 30, 2))
    table = jobs.app.store.tables.job_outcomes
    keys = jobs.app.store.read(lambda c: set(c.execute(sa.select(table.c.idempotency_key))
                                             .scalars()))
    assert keys == {f"even:{n}" for n in range(10, 30, 2)}


def test_a_job_that_swallows_a_database_error_cannot_commit_a_broken_transaction(
        jobs, workers, schema):
    """PostgreSQL refuses every statement after an error until the savepoint is
    rolled back: the job that went on fails, alone. MySQL and SQLite undo only
    the failed statement, so there the job's charge stands."""
    jobs.app.dispatch_many([jobs.swallow_error.prepare(order) for order in (50, 51, 52)])
    assert workers.run("--concurrency", "1", "--stop-when-empty", *FAST).returncode == 0
    failed = rows(jobs.app, jobs.app.store.tables.failed_jobs)
    if schema.startswith("postgresql"):
        assert [f.exception_class for f in failed] == ["dbqueue.TransactionSpoiled"]
        assert "went on after a database error" in failed[0].exception_message
        assert [charges(jobs, order) for order in (50, 51, 52)] == [1, 0, 1]
        assert jobs.app.outcome("swallow:51") is None
    else:
        assert failed == []
        assert [charges(jobs, order) for order in (50, 51, 52)] == [1, 1, 1]
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0


def test_a_commit_that_fails_for_one_jobs_writes_fails_that_job_alone(jobs, workers, schema):
    """A deferred constraint fails the shared COMMIT of several jobs: they all go
    back without using a try, the next ones commit one by one, and only the job
    that broke the constraint fails."""
    if not schema.startswith("postgresql"):
        pytest.skip("only PostgreSQL defers a unique check to the commit")
    deferred = f"{PREFIX}deferred"
    with jobs.app.engine.begin() as connection:
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {deferred}")
        connection.exec_driver_sql(
            f"CREATE TABLE {deferred} (k integer UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    try:
        orders = [1, 2, 3, 4, 0, 5, 6, 7, 8]
        jobs.app.dispatch_many([jobs.deferred_insert.prepare(order) for order in orders])
        result = workers.run("--concurrency", "1", "--stop-when-empty", *FAST)
        assert result.returncode == 0, result.stdout
        (failed,) = rows(jobs.app, jobs.app.store.tables.failed_jobs)
        assert json.loads(failed.payload)["args"] == [0]
        assert failed.exception_class == "sqlalchemy.exc.IntegrityError"
        assert "UniqueViolation" in failed.exception_message
        assert [charges(jobs, order) for order in orders] == [1, 1, 1, 1, 0, 1, 1, 1, 1]
        assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    finally:
        with jobs.app.engine.begin() as connection:
            connection.exec_driver_sql(f"DROP TABLE {deferred}")


def test_idempotent_jobs_and_their_middleware_writes_do_not_wait_on_each_other(jobs, workers):
    """A rate limit takes its slot in a short transaction of its own while the
    jobs before it have uncommitted effects (SQLite, with one writer, commits
    each idempotent job at once for this)."""
    jobs.app.dispatch_many([jobs.limited_charge.prepare(order) for order in range(60, 80)])
    assert workers.run("--concurrency", "1", "--stop-when-empty", *FAST).returncode == 0
    assert [charges(jobs, order) for order in range(60, 80)] == [1] * 20
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0


def answers_until(conn, done):
    """Messages from a child until ``done(messages)`` holds or the pipe closes."""
    messages = []
    while not done(messages):
        try:
            messages.append(answer_from(conn.recv_bytes()))
        except EOFError:
            break
    return messages


def committed_ids(messages):
    return [i for m in messages if isinstance(m, Committed) and m.failure is None
            for i in m.job_ids]


@contextlib.contextmanager
def a_child(schema, monkeypatch):
    """A worker's child process running tests.jobapp, and our end of its pipe."""
    monkeypatch.setenv("DBQUEUE_URL", schema)
    monkeypatch.setenv("DBQUEUE_TABLE_PREFIX", PREFIX)
    context = multiprocessing.get_context("spawn")
    parent, child_end = context.Pipe()
    child = context.Process(target=child_main, args=(child_end, "tests.jobapp:app"), daemon=True)
    child.start()
    child_end.close()
    try:
        yield parent, child
    finally:
        parent.close()
        child.join(30)


def finished(messages):
    return [m for m in messages if isinstance(m, Finished)]


def test_jobs_claimed_together_all_run_though_one_is_a_twin_or_slow(jobs, schema, monkeypatch):
    """Once a kind of job is known to be short, the keys of the next ones are
    claimed in one statement. A twin among them must not spoil its neighbours'
    claims, and one that turns out slow must not stop the others from running."""
    with a_child(schema, monkeypatch) as (parent, child):
        for order in range(1, 9):  # one at a time: the child learns "charge" is short
            parent.send(RunJob(200 + order, "charge", arguments(order), 1, 60.0))
            answers_until(parent, lambda m: finished(m))
        batch = [RunJob(221, "charge", arguments(21), 1, 60.0),
                 RunJob(222, "charge", arguments(21), 1, 60.0),  # the twin of 221
                 RunJob(223, "charge", arguments(23), 1, 60.0),
                 RunJob(231, "charge", arguments(31, 0.2), 1, 60.0),  # slow: no longer short
                 RunJob(232, "charge", arguments(32), 1, 60.0),
                 RunJob(233, "charge", arguments(33), 1, 60.0)]
        for task in batch:
            parent.send(task)
        messages = answers_until(parent, lambda m: len(finished(m)) == len(batch))
        assert [a.kind for a in finished(messages)] == ["done"] * len(batch)
        assert child.is_alive()
        parent.send(None)
    assert [charges(jobs, order) for order in (21, 23, 31, 32, 33)] == [1] * 5
    assert all(jobs.app.outcome(f"charge:{order}") for order in (21, 23, 31, 32, 33))


def test_a_child_commits_idempotent_jobs_before_they_count_as_done(jobs, schema, monkeypatch):
    """The protocol between a child and its supervisor, driven by hand: jobs sent
    together share a transaction; each is answered "done, uncommitted", then named
    in a Committed message; a child that dies first commits none of its batch.
    On SQLite (one writer) each job commits before it is answered."""
    shared = not jobs.app.store.dialect.single_writer
    with a_child(schema, monkeypatch) as (parent, child):
        for order in (1, 2, 3, 4):
            parent.send(RunJob(100 + order, "charge", arguments(order), 1, 60.0))
        if shared:
            messages = answers_until(parent, lambda m: len(committed_ids(m)) == 4)
        else:
            messages = answers_until(parent, lambda m: len(m) == 4)
        answers = finished(messages)
        assert [a.kind for a in answers] == ["done"] * 4
        assert [a.uncommitted for a in answers] == [shared] * 4
        assert sorted(committed_ids(messages)) == ([101, 102, 103, 104] if shared else [])
        assert all(charges(jobs, order) == 1 for order in (1, 2, 3, 4))

        parent.send(RunJob(111, "charge", arguments(11), 1, 60.0))
        parent.send(RunJob(112, "charge_then_die", arguments(12), 1, 60.0))
        messages = answers_until(parent, lambda m: False)  # until it dies
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    # Whatever committed before the death is named; nothing else is in the database.
    assert charges(jobs, 11) == (111 in committed_ids(messages) or not shared)
    assert charges(jobs, 12) == 0 and jobs.app.outcome("die:12") is None


def test_an_outcome_is_found_by_a_key_longer_than_the_column(jobs, workers, schema):
    jobs.long_key_charge.dispatch(5)
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    key = "charge-with-a-long-key:" + "x" * 300 + "5"
    outcome = jobs.app.outcome(key)
    assert outcome is not None and outcome.result == 5
    assert len(outcome.idempotency_key) <= 191  # stored as a digest
    assert jobs.app.outcome(outcome.idempotency_key) == outcome  # and by its stored form
    shown = cli(schema, "outcomes", "show", key, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["result"] == 5
