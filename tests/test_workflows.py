"""Chains and batches: steps in order with results piped, callbacks queued
exactly once, counters exact under concurrent workers and a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import dbqueue
from dbqueue.store.completion import Completion
from dbqueue.store.flows import FlowEnd
from tests import conftest, flowapp
from tests.conftest import PREFIX, count, read_until, rows, wait_until

FAST = ("--sleep", "0.05")


@pytest.fixture
def flows(schema: str) -> Iterator[Any]:
    built = flowapp.build(schema, PREFIX)
    tables = built.app.store.tables
    with built.app.engine.begin() as connection:
        for table in (built.effects, tables.jobs, tables.failed_jobs, tables.job_batches,
                      tables.cache_locks, tables.queue_workers):
            connection.execute(table.delete())
    yield built
    built.app.dispose()


class Workers(conftest.Workers):
    """Workers of tests.flowapp, polling often."""

    def start(self, *args: str) -> subprocess.Popen[str]:
        return super().start(*FAST, *args)

    def drain(self, *args: str) -> None:
        """Run one worker until nothing is left, callbacks included."""
        result = self.run("--stop-when-drained", *args)
        assert result.returncode == 0 and "Traceback" not in result.stdout, result.stdout


@pytest.fixture
def flow_workers(flows: Any, schema: str, workers: Any) -> Iterator[Workers]:
    """Workers of tests.flowapp (``workers`` marks the test slow, as others that start them)."""
    running = Workers(schema, [], "tests.flowapp:app")
    yield running
    running.kill_all()


def members_run(flows: Any, group: str = "batch") -> list[int]:
    """The numbers of the batch members that ran, a rerun counted again."""
    return sorted(json.loads(row.detail) for row in effects(flows, group, "member"))


def effects(flows: Any, tag: str, event: str | None = None) -> list[Any]:
    table = flows.effects
    where = [table.c.tag == tag] + ([table.c.event == event] if event else [])
    return rows(flows.app, table, *where)


def jobs_named(flows: Any, name: str) -> int:
    table = flows.app.store.tables.jobs
    return count(flows.app, table, table.c.job == name)


# --- chains ---------------------------------------------------------------------------


def test_a_chain_runs_in_order_pipes_results_stops_on_failure_and_resumes(flows, flow_workers):
    f = flows
    f.app.chain([f.fetch.prepare("https://example.test/a"), f.parse.prepare(),
                 f.store.prepare()]).dispatch()
    f.app.chain([f.fetch.prepare("b"), f.explode.prepare("b"), f.store.prepare()],
                catch=f.alert.prepare("import")).dispatch()
    first, second = flow_workers.start(), flow_workers.start()
    wait_until(lambda: effects(f, "chain", "store") and effects(f, "import", "catch"),
               what="the first chain to end and the second to fail")
    steps = effects(f, "chain")
    assert [row.event for row in steps if row.event != "fetch"] == ["parse", "store"]
    parse, store = (json.loads(row.detail) for row in steps if row.event in ("parse", "store"))
    assert parse == {"url": "https://example.test/a", "size": 22}  # what fetch returned
    assert store == [22, 44]  # what parse returned
    (catch,) = effects(f, "import", "catch")
    failed_step = json.loads(catch.detail)
    assert failed_step["exception_class"] == "RuntimeError"
    assert failed_step["message"] == "b is broken"
    # The chain stopped: the failed step waits in failed_jobs with the rest of it.
    (failed,) = rows(f.app, f.app.store.tables.failed_jobs)
    assert failed.job == "explode"
    assert failed_step["failed_job"] == failed.uuid  # what `dbqueue retry` takes
    assert [step["job"] for step in json.loads(failed.payload)["flow"]["chain"]] == ["store"]
    # The first chain's last step ran (its effect is there); its row goes once its
    # outcome is written, a moment later. No other store step was queued:
    wait_until(lambda: jobs_named(f, "store") == 0, what="the first chain's store to be done")
    assert len(effects(f, "chain", "store")) == 1

    f.note("b", "fixed")
    assert f.app.admin.retry([str(failed.id)]) == 1  # `dbqueue retry ID`
    wait_until(lambda: len(effects(f, "chain", "store")) == 2, what="the retried chain to end")
    assert effects(f, "chain", "store")[1].detail is None  # explode returned None
    first.send_signal(signal.SIGTERM)
    second.send_signal(signal.SIGTERM)
    assert (first.wait(60), second.wait(60)) == (0, 0)
    assert len(effects(f, "import", "catch")) == 1  # catch queued once
    assert Counter(row.event for row in effects(f, "chain")) == {
        "fetch": 2, "parse": 1, "explode": 1, "store": 2}


def test_a_step_whose_result_or_failure_cannot_be_stored_stops_its_chain_at_once(
        flows, flow_workers):
    """What a step returns goes into the next step's payload, and why it failed
    into its catch's: what no database can store (a lone surrogate, lists
    nested deeper than an argument may) fails the step for good, the chain's
    catch runs, and the batch it is in finishes. Neither is written as is."""
    f = flows
    for kind in ("deep", "surrogate"):
        f.app.chain([f.shaped.prepare(kind), f.store.prepare()],
                    catch=f.alert.prepare(kind)).dispatch()
    f.app.chain([f.garbled.prepare(), f.store.prepare()],
                catch=f.alert.prepare("garbled")).dispatch()
    batch_id = f.app.batch([[f.shaped.prepare("deep"), f.store.prepare()]],
                           finally_=f.callback.prepare("after")).dispatch()
    flow_workers.drain()
    told = {tag: json.loads(effects(f, tag, "catch")[0].detail)
            for tag in ("deep", "surrogate", "garbled")}
    assert told["deep"]["exception_class"] == "dbqueue.SerializationError"
    assert "nests lists or dicts more than 100 levels deep" in told["deep"]["message"]
    assert told["surrogate"]["exception_class"] == "dbqueue.SerializationError"
    assert "holds a lone surrogate" in told["surrogate"]["message"]
    assert told["garbled"] == {**told["garbled"], "exception_class": "RuntimeError",
                               "message": "bad \\ud800 byte"}
    assert not effects(f, "chain", "store")
    assert sorted(row.job for row in rows(f.app, f.app.store.tables.failed_jobs)) == [
        "garbled", "shaped", "shaped", "shaped"]
    assert [json.loads(row.detail) for row in effects(f, "after", "callback")] == [batch_id]
    assert f.app.find_batch(batch_id).finished


def test_an_idempotent_step_done_despite_its_middleware_pipes_its_result(flows, flow_workers):
    """On a server, short idempotent jobs share a transaction: a middleware
    raising after the body cannot undo the outcome the transaction commits, so
    the step is done, and the next step receives what it returned."""
    f = flows
    if f.app.store.dialect.embedded:
        pytest.skip("SQLite commits each idempotent job at once: the raise fails the attempt")
    f.app.chain([f.tally_then_raise.prepare(4), f.store.prepare()]).dispatch()
    flow_workers.drain()
    assert [json.loads(row.detail) for row in effects(f, "chain", "store")] == [{"value": 40}]


def test_stop_when_empty_waits_for_the_steps_and_callbacks_it_queues(flows, flow_workers):
    f = flows
    # While a step runs, the idle worker looks for more and finds none: what the
    # step queues when it completes must still run before the worker stops.
    f.app.chain([f.nap.prepare(0.5), f.store.prepare()]).dispatch()
    f.app.batch([f.nap.prepare(0.5)], then=f.callback.prepare("then"),
                finally_=f.callback.prepare("finally")).dispatch()
    result = flow_workers.run("--stop-when-empty", "--concurrency", "2")
    assert result.returncode == 0, result.stdout
    assert [json.loads(row.detail) for row in effects(f, "chain", "store")] == [0.5]
    assert callback_runs(f) == {"then": 1, "finally": 1}
    assert count(f.app, f.app.store.tables.jobs) == 0


def test_each_step_keeps_its_own_options(flows):
    f = flows
    f.app.chain([f.fetch.prepare("x"), f.parse.options(queue="later", priority=5, tries=4,
                                                       timeout=9).prepare()]).dispatch()
    (row,) = rows(f.app, f.app.store.tables.jobs)
    (step,) = json.loads(row.payload)["flow"]["chain"]
    assert (step["queue"], step["priority"], step["payload"]["options"]) == (
        "later", 5, {"tries": 4, "timeout": 9})


def test_chain_and_batch_refuse_what_they_cannot_queue(flows):
    f = flows
    with pytest.raises(dbqueue.ConfigurationError, match="needs at least one job"):
        f.app.chain([])
    with pytest.raises(dbqueue.ConfigurationError, match=r"prepared jobs, such as my_job\.prepare"):
        f.app.chain([f.fetch])  # the job, not a prepared call of it
    with pytest.raises(dbqueue.ConfigurationError, match="prepared jobs"):
        f.app.batch([f.member.prepare(1), "member"])
    with pytest.raises(dbqueue.NotFound, match="no batch 'nope'"):
        f.app.find_batch("nope")
    with pytest.raises(RuntimeError, match="outside a job"):
        dbqueue.current_job()
    for build in (lambda: f.app.chain(f.fetch.prepare("x")),
                  lambda: f.app.batch(f.member.prepare(1))):
        with pytest.raises(dbqueue.ConfigurationError, match=r"takes a list of prepared jobs"):
            build()
    with pytest.raises(dbqueue.ConfigurationError, match="name must be a string"):
        f.app.batch([f.member.prepare(1)], name=5)  # type: ignore[arg-type]
    with pytest.raises(dbqueue.ConfigurationError, match="allow_failures must be True or"):
        f.app.batch([f.member.prepare(1)], allow_failures="yes")  # type: ignore[arg-type]


def test_unique_jobs_cannot_be_queued_later_by_a_worker(flows):
    f = flows
    for build in (lambda: f.app.chain([f.fetch.prepare("x"), f.uniq.prepare(1)]),
                  lambda: f.app.chain([f.fetch.prepare("x")], catch=f.uniq.prepare(1)),
                  lambda: f.app.batch([f.uniq.prepare(1)]),
                  lambda: f.app.batch([[f.fetch.prepare("x"), f.uniq.prepare(1)]]),
                  lambda: f.app.batch([f.member.prepare(1)], then=f.uniq.prepare(1))):
        with pytest.raises(dbqueue.ConfigurationError, match="'uniq' is unique"):
            build()
    assert f.app.chain([f.uniq.prepare(1), f.parse.prepare()]).dispatch() is not None
    assert f.app.chain([f.uniq.prepare(1), f.parse.prepare()]).dispatch() is None  # taken
    # A batch's own member is queued at dispatch: the error says why it matters there.
    with pytest.raises(dbqueue.ConfigurationError, match="count would be wrong"):
        f.app.batch([f.member.prepare(1), f.uniq.prepare(1)])
    with pytest.raises(dbqueue.ConfigurationError, match="stored in 255 characters; this one "
                                                         "has 256"):
        f.app.batch([f.member.prepare(1)], name="n" * 256)


def test_a_rerun_of_an_idempotent_step_pipes_the_result_it_stored(flows, flow_workers):
    f = flows
    f.tally.dispatch(4)  # the step's effects committed once already
    flow_workers.drain()
    f.app.chain([f.tally.prepare(4), f.store.prepare()]).dispatch()
    flow_workers.drain()
    assert len(effects(f, "tally")) == 1  # not run again
    assert [json.loads(row.detail) for row in effects(f, "chain", "store")] == [{"value": 40}]


def test_a_chain_dispatched_in_a_rolled_back_transaction_leaves_nothing(flows):
    f = flows
    with f.app.engine.connect() as connection, connection.begin() as transaction:
        f.app.chain([f.fetch.prepare("x"), f.parse.prepare()]).dispatch(connection=connection)
        transaction.rollback()
    with f.app.engine.begin() as connection:
        batch_id = f.app.batch([f.member.prepare(1)]).dispatch(connection=connection)
    assert count(f.app, f.app.store.tables.jobs) == 1
    assert f.app.find_batch(batch_id).pending == 1


def test_a_batch_and_a_chain_queued_when_a_session_commits(flows):
    from sqlalchemy.orm import Session

    f = flows
    with Session(f.app.engine) as session:
        dropped = f.app.batch([f.member.prepare(1)]).dispatch(after_commit=session)
        assert f.app.chain([f.fetch.prepare("x"), f.parse.prepare()]).dispatch(
            after_commit=session) is None
        session.rollback()
    with pytest.raises(dbqueue.NotFound):
        f.app.find_batch(dropped)
    with Session(f.app.engine) as session:
        batch_id = f.app.batch([f.member.prepare(1), f.member.prepare(2)]).dispatch(
            after_commit=session)
        f.app.chain([f.fetch.prepare("x"), f.parse.prepare()]).dispatch(after_commit=session)
        with pytest.raises(dbqueue.NotFound):  # not before the commit
            f.app.find_batch(batch_id)
        session.commit()
    assert f.app.find_batch(batch_id).total == 2
    assert count(f.app, f.app.store.tables.jobs) == 3
    with pytest.raises(dbqueue.ConfigurationError, match="not both"):
        f.app.batch([f.member.prepare(1)]).dispatch(connection=object(), after_commit=object())


# --- batches: counting in the completion transaction (no worker process) -----------


def reserve_all(app: Any, token: str = "t") -> list[Any]:
    return app.store.reserve(["default"], 10_000, token, 60)


def finish(app: Any, reserved: list[Any], outcome: str = "done", token: str = "t") -> set[int]:
    """Record ``reserved`` as done (or failed for good), as a worker would."""
    completion = Completion()
    for row in reserved:
        lease = dbqueue.store.Lease(row.id, token)
        flow = dbqueue.serializer.decode(row.payload).flow or {}
        if outcome == "done":
            completion.completed.append(lease)
        else:
            completion.failed.append(dbqueue.store.completion.FailedRun(
                row, lease, dbqueue.store.Failure("RuntimeError", "no", ""), "test:1", 1))
        completion.ended.append(FlowEnd(row.id, flow, outcome,
                                        failure=("RuntimeError", "no")))
    return app.store.record(completion)


def callbacks(flows: Any) -> Counter[str]:
    return Counter(json.loads(row.payload)["args"][0]
                   for row in rows(flows.app, flows.app.store.tables.jobs)
                   if row.job == "callback")


def test_a_batch_counts_its_jobs_and_queues_then_and_finally_once(flows):
    f = flows
    batch_id = f.app.batch([f.member.prepare(n) for n in range(5)], name="import",
                           then=f.callback.prepare("then"), catch=f.callback.prepare("catch"),
                           finally_=f.callback.prepare("finally")).dispatch()
    batch = f.app.find_batch(batch_id)
    assert (batch.name, batch.total, batch.pending, batch.processed, batch.failed,
            batch.progress, batch.finished, batch.cancelled) == ("import", 5, 5, 0, 0, 0,
                                                                  False, False)
    reserved = reserve_all(f.app)
    finish(f.app, reserved[:2])
    assert (f.app.find_batch(batch_id).processed, f.app.find_batch(batch_id).progress) == (2, 40)
    assert callbacks(f) == {}
    finish(f.app, reserved[2:])
    batch = batch.refresh()
    assert (batch.pending, batch.processed, batch.progress, batch.finished) == (0, 5, 100, True)
    assert callbacks(f) == {"then": 1, "finally": 1}
    # Recorded again (a retried transaction, a stalled worker): the leases are
    # gone, nothing is counted twice and nothing queued again.
    assert finish(f.app, reserved[2:]) == set()
    assert callbacks(f) == {"then": 1, "finally": 1}
    assert f.app.find_batch(batch_id).pending == 0


def test_a_failure_queues_catch_once_and_cancels_unless_failures_are_allowed(flows):
    f = flows
    for allow in (False, True):
        with f.app.engine.begin() as connection:
            connection.execute(f.app.store.tables.jobs.delete())
        batch_id = f.app.batch([f.member.prepare(n) for n in range(4)],
                               then=f.callback.prepare("then"), catch=f.callback.prepare("catch"),
                               finally_=f.callback.prepare("finally"),
                               allow_failures=allow).dispatch()
        reserved = reserve_all(f.app)
        finish(f.app, reserved[:1], "failed")
        finish(f.app, reserved[1:2], "failed")
        batch = f.app.find_batch(batch_id)
        assert (batch.failed, batch.cancelled) == (2, not allow)
        finish(f.app, reserved[2:])
        batch = batch.refresh()
        assert (batch.pending, batch.failed, batch.finished) == (0, 2, True)
        expected = {"catch": 1, "finally": 1} | ({"then": 1} if allow else {})
        assert callbacks(f) == expected, allow
        (catch,) = [json.loads(row.payload)["flow"] for row in rows(f.app, f.app.store.tables.jobs)
                    if json.loads(row.payload)["args"] == ["catch"]]
        assert catch["failed"]["job_id"] == reserved[0].id  # the first failure
        assert catch["failed"]["exception_class"] == "RuntimeError"
        failed = f.app.store.tables.failed_jobs
        assert count(f.app, failed, failed.c.batch_id == batch_id) == 2


def test_a_failure_in_the_same_flush_stops_the_chains_of_the_batch_it_cancels(flows):
    f = flows
    batch_id = f.app.batch([[f.member.prepare(1), f.member.prepare(2), f.member.prepare(3)],
                            f.member.prepare(4)], finally_=f.callback.prepare("finally")
                           ).dispatch()
    first_step, failing = reserve_all(f.app)
    completion = Completion()
    for row, outcome in ((first_step, "done"), (failing, "failed")):
        lease = dbqueue.store.Lease(row.id, "t")
        if outcome == "done":
            completion.completed.append(lease)
        else:
            completion.failed.append(dbqueue.store.completion.FailedRun(
                row, lease, dbqueue.store.Failure("RuntimeError", "no", ""), "test:1", 1))
        completion.ended.append(FlowEnd(row.id, dbqueue.serializer.decode(row.payload).flow or {},
                                        outcome, failure=("RuntimeError", "no")))
    f.app.store.record(completion)
    batch = f.app.find_batch(batch_id)
    assert (batch.total, batch.pending, batch.failed, batch.cancelled, batch.finished) == (
        4, 0, 1, True, True)
    assert callbacks(f) == {"finally": 1}  # and no step 2 of the chain
    assert jobs_named(f, "member") == 0


def complete_together(app: Any, row: Any, go: threading.Barrier,
                      errors: list[BaseException]) -> None:
    try:
        go.wait(10)
        finish(app, [row])
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_the_last_two_jobs_finishing_at_once_queue_the_callbacks_once(flows):
    f = flows
    for _ in range(5):
        with f.app.engine.begin() as connection:
            connection.execute(f.app.store.tables.jobs.delete())
        f.app.batch([f.member.prepare(n) for n in range(2)], then=f.callback.prepare("then"),
                    finally_=f.callback.prepare("finally")).dispatch()
        reserved = reserve_all(f.app)
        go = threading.Barrier(2)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=complete_together, args=(f.app, row, go, errors))
                   for row in reserved]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert callbacks(f) == {"then": 1, "finally": 1}


def test_a_cancelled_batch_and_adding_to_a_finished_one(flows, flow_workers):
    f = flows
    batch_id = f.app.batch([f.member.prepare(n) for n in range(3)],
                           then=f.callback.prepare("then"),
                           finally_=f.callback.prepare("finally")).dispatch()
    f.app.find_batch(batch_id).cancel()
    flow_workers.drain()
    batch = f.app.find_batch(batch_id)
    assert (batch.cancelled, batch.pending, batch.finished) == (True, 0, True)
    assert members_run(f) == []  # none of them ran
    other = f.app.batch([f.member.prepare(1)]).dispatch()
    assert f.app.find_batch(other).cancel() is True
    with pytest.raises(dbqueue.ConfigurationError, match="has been cancelled"):
        f.app.find_batch(other).add([f.member.prepare(2)])
    assert [row.tag for row in effects(f, "finally", "callback")] == ["finally"]
    assert effects(f, "then") == []
    with pytest.raises(dbqueue.ConfigurationError, match="has finished"):
        batch.add([f.member.prepare(9)])


def test_a_batch_that_finishes_as_jobs_are_added_takes_none_of_them(flows):
    """``add`` in the caller's transaction, on the caller's own engine, while
    the batch's last job completes. Checked by a SELECT first, the batch
    finished before the count was added (SQLite's driver opens a transaction
    at its first write: the SELECT locked nothing): it took the job, having
    queued ``finally`` already."""
    f = flows
    batch_id = f.app.batch([f.member.prepare(1)],
                           finally_=f.callback.prepare("finally")).dispatch()
    [last] = reserve_all(f.app)
    engine = sa.create_engine(f.app.engine.url)  # the application's own, no hooks of ours
    table = f.app.store.tables.job_batches.name
    completed: list[set[int]] = []

    def last_job_completes(conn, cursor, statement, *_: Any) -> None:
        if not completed and statement.startswith("UPDATE") and table in statement:
            completing = threading.Thread(target=lambda: completed.append(
                finish(f.app, [last])))
            completing.start()
            completing.join(30)  # the add holds no lock yet that could keep it waiting

    sa.event.listen(engine, "before_cursor_execute", last_job_completes)
    try:
        with (engine.connect() as connection, connection.begin(),
              pytest.raises(dbqueue.ConfigurationError, match="has finished")):
            f.app.find_batch(batch_id).add([f.member.prepare(2)], connection=connection)
    finally:
        engine.dispose()
    assert completed == [{last.id}]
    batch = f.app.find_batch(batch_id)
    assert (batch.total, batch.pending, batch.finished) == (1, 0, True)
    assert jobs_named(f, "member") == 0


def test_jobs_whose_batch_row_an_application_holds_run_once_however_long_it_holds_it(
        flows, flow_workers):
    """An application's transaction adds to a batch and stays open: the
    batch's row is locked until it ends, and each completion of the batch's
    jobs waits for it, up to the lock timeout, and again. Their leases ran out
    meanwhile (none was renewed while its outcome was being written), and
    another worker ran the finished jobs again."""
    f = flows
    if f.app.store.dialect.embedded:
        pytest.skip("SQLite: the application's transaction holds the whole database")
    flow_workers.env.update(DBQUEUE_NETWORK_TIMEOUT="3")  # the lock timeout too
    batch_id = f.app.batch([f.member.prepare(n) for n in range(4)]).dispatch()
    with f.app.engine.connect() as connection:
        with connection.begin():
            f.app.find_batch(batch_id).add([f.member.prepare(9)], connection=connection)
            first = flow_workers.start("-v", "--retry-after", "2")  # a lease shorter than a wait
            wait_until(lambda: len(members_run(f)) == 4, what="the members to run")
            flow_workers.start("--retry-after", "2")  # would take any lease that ran out
            # Two writes wait out the lock timeout (said once at WARNING, then
            # at DEBUG), and the other worker polls meanwhile (every 0.05 s).
            waited = "could not record job outcomes within the lock timeout"
            log = read_until(first, waited) + read_until(first, waited)
            assert "unreachable" not in log  # the server answered all along
        wait_until(lambda: f.app.find_batch(batch_id).finished, what="the batch to finish")
    assert members_run(f) == [0, 1, 2, 3, 9]


def test_a_cancelled_batch_never_runs_then_even_once_retried(flows):
    f = flows
    batch_id = f.app.batch([f.member.prepare(1), f.member.prepare(2)],
                           then=f.callback.prepare("then")).dispatch()
    failing, other = reserve_all(f.app)
    finish(f.app, [failing], "failed")  # cancels the batch
    finish(f.app, [other])  # stands for a job skipped because of it
    assert f.app.find_batch(batch_id).finished
    assert f.app.find_batch(batch_id).cancel() is False  # finished: nothing to cancel
    assert f.app.find_batch(batch_id).retry() == 1
    batch = f.app.find_batch(batch_id)
    assert (batch.pending, batch.failed, batch.cancelled, batch.finished) == (1, 0, False, False)
    finish(f.app, reserve_all(f.app, "u"), token="u")
    assert f.app.find_batch(batch_id).finished
    assert callbacks(f) == {}


def test_a_worker_asks_again_about_a_batch_once_its_answer_is_older_than_fresh(flows):
    """What the handout checks before a held job starts (worker.cancels)."""
    from dbqueue.store.batches import Batches
    from dbqueue.worker.cancels import FRESH, CancelledBatches

    f = flows
    first = f.app.batch([f.member.prepare(1)]).dispatch()
    second = f.app.batch([f.member.prepare(2)]).dispatch()
    cancels = CancelledBatches(Batches(f.app.store))
    assert cancels.which({first, second}, now=100.0) == set()
    f.app.find_batch(first).cancel()
    assert cancels.which({first}, now=100.0 + FRESH / 2) == set()  # asked just now
    assert not cancels.cancelled(first, now=100.0 + FRESH / 2)
    assert cancels.cancelled(first, now=100.0 + 2 * FRESH)
    assert cancels.which({first, second}, now=100.0 + 2 * FRESH) == {first}
    batches = f.app.store.tables.job_batches  # opened again, as a retry of its failures does
    f.app.store.transaction(lambda c: c.execute(batches.update().values(cancelled_at=None)))
    assert cancels.which({first}, now=100.0 + 4 * FRESH) == set()


def test_an_empty_batch_is_finished_at_once(flows):
    f = flows
    batch_id = f.app.batch([], then=f.callback.prepare("then"),
                           finally_=f.callback.prepare("finally")).dispatch()
    batch = f.app.find_batch(batch_id)
    assert (batch.total, batch.progress, batch.finished) == (0, 100, True)
    assert callbacks(f) == {"then": 1, "finally": 1}


# --- batches through worker processes --------------------------------------------------


def dispatch_batch(flows: Any, group: str, *, size: int, fail_on: int = -1,
                   allow_failures: bool = False) -> str:
    """``size`` members, the last a chain of two, and the three callbacks, tagged ``group``."""
    f = flows
    members: list[Any] = [f.member.prepare(n, fail_on, group) for n in range(size - 1)]
    members.append([f.member.prepare(size - 1, group=group),
                    f.member.prepare(size, group=group)])  # a chain inside
    return f.app.batch(members, then=f.callback.prepare(f"{group}:then"),
                       catch=f.callback.prepare(f"{group}:catch"),
                       finally_=f.callback.prepare(f"{group}:finally"),
                       allow_failures=allow_failures).dispatch()


def callback_runs(flows: Any, group: str | None = None) -> Counter[str]:
    tags = (row.tag for row in rows(flows.app, flows.effects, flows.effects.c.event == "callback"))
    if group is None:
        return Counter(tags)
    return Counter(tag.split(":")[1] for tag in tags if tag.startswith(f"{group}:"))


def test_2000_job_batches_drained_by_three_workers(flows, flow_workers):
    """Three batches at once: one that succeeds, one with a failing job, one
    with a failing job and allow_failures."""
    f = flows
    ids = {group: dispatch_batch(f, group, size=2000, fail_on=fail, allow_failures=allow)
           for group, fail, allow in (("ok", -1, False), ("failing", 7, False),
                                      ("allowed", 7, True))}
    started = [flow_workers.start("--stop-when-drained") for _ in range(3)]
    for process in started:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    flow_workers.drain()  # what the last flush queued

    ok = f.app.find_batch(ids["ok"])
    assert (ok.total, ok.pending, ok.failed, ok.finished) == (2001, 0, 0, True)
    assert members_run(f, "ok") == list(range(2001))  # each once
    assert callback_runs(f, "ok") == {"then": 1, "finally": 1}

    failing = f.app.find_batch(ids["failing"])
    assert (failing.pending, failing.failed, failing.cancelled, failing.finished) == (
        0, 1, True, True)
    assert callback_runs(f, "failing") == {"catch": 1, "finally": 1}
    assert 7 not in members_run(f, "failing")

    allowed = f.app.find_batch(ids["allowed"])
    assert (allowed.pending, allowed.failed, allowed.cancelled, allowed.finished) == (
        0, 1, False, True)
    assert callback_runs(f, "allowed") == {"catch": 1, "finally": 1, "then": 1}
    assert members_run(f, "allowed") == sorted(set(range(2001)) - {7})


def test_sigkill_while_completing_batch_jobs_keeps_counters_exact(flows, flow_workers):
    f = flows
    batch_id = f.app.batch([f.member.options(tries=3).prepare(n) for n in range(2000)],
                           then=f.callback.prepare("then"),
                           finally_=f.callback.prepare("finally")).dispatch()
    doomed = flow_workers.start("--retry-after", "2")
    survivor = flow_workers.start("--retry-after", "2")
    wait_until(lambda: len(members_run(f)) >= 300, what="300 jobs to have run")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(60) == 0
    flow_workers.drain("--retry-after", "2")
    batch = f.app.find_batch(batch_id)
    failures = [(row.exception_class, row.exception_message)
                for row in rows(f.app, f.app.store.tables.failed_jobs)]
    assert failures == []
    assert (batch.total, batch.pending, batch.failed, batch.finished) == (2000, 0, 0, True)
    assert set(members_run(f)) == set(range(2000))
    assert callback_runs(f) == {"then": 1, "finally": 1}


def test_a_batch_job_adds_to_its_own_batch(flows, flow_workers):
    f = flows
    batch_id = f.app.batch([f.grow.prepare(3)], finally_=f.callback.prepare("finally")
                           ).dispatch()
    flow_workers.drain()
    batch = f.app.find_batch(batch_id)
    assert (batch.total, batch.pending, batch.finished) == (4, 0, True)
    assert members_run(f) == [1000, 1001, 1002]
    assert callback_runs(f) == {"finally": 1}


def test_batches_retry_puts_the_failed_jobs_back_and_then_can_still_run(flows, flow_workers):
    f = flows
    batch_id = f.app.batch([f.explode.prepare("k"), f.member.prepare(1)],
                           then=f.callback.prepare("then"),
                           allow_failures=True).dispatch()
    flow_workers.drain()
    batch = f.app.find_batch(batch_id)
    assert (batch.pending, batch.failed, batch.finished) == (0, 1, True)
    assert callback_runs(f) == {"then": 1}  # allowed failures: then once all finished
    f.note("k", "fixed")
    failed = f.app.store.tables.failed_jobs
    (row,) = rows(f.app, failed, failed.c.batch_id == batch_id)
    f.app.admin.retry([str(row.id)])
    assert f.app.find_batch(batch_id).pending == 1
    flow_workers.drain()
    batch = f.app.find_batch(batch_id)
    assert (batch.pending, batch.failed, batch.finished) == (0, 0, True)
    assert callback_runs(f) == {"then": 1}  # not again


def test_jobs_that_cannot_run_still_count_in_their_batch(flows, flow_workers):
    f = flows
    jobs = f.app.store.tables.jobs
    batch_id = f.app.batch([f.member.prepare(1), f.member.prepare(2)],
                           catch=f.callback.prepare("catch"),
                           finally_=f.callback.prepare("finally")).dispatch()
    chain_id = f.app.chain([f.fetch.prepare("x"), f.parse.prepare()],
                           catch=f.alert.prepare("chain")).dispatch()
    first = min(row.id for row in rows(f.app, jobs, jobs.c.job == "member"))
    broken = f.app.store.push(dbqueue.store.NewJob(
        "default", "member", '{"args":[3],"flow":{"chain":[{"job":"parse"}]}}'))
    f.app.store.transaction(lambda c: c.execute(  # a job renamed since it was queued, long
        jobs.update().where(jobs.c.id.in_([first, chain_id])).values(  # ago: no worker knows it
            job="renamed", created_at=f.app.store.dialect.now_plus(-3600))))
    flow_workers.drain()
    batch = f.app.find_batch(batch_id)
    assert (batch.pending, batch.failed, batch.finished) == (0, 1, True)
    assert callback_runs(f) == {"catch": 1, "finally": 1}
    assert len(effects(f, "chain", "catch")) == 1  # the chain's catch
    failed = {row.job_id: row for row in rows(f.app, f.app.store.tables.failed_jobs)}
    assert failed[first].exception_class == "dbqueue.UnknownJob"
    assert failed[first].batch_id == batch_id
    assert failed[broken].exception_class == "dbqueue.SerializationError"
    assert "malformed flow: chain step 1: 'queue' is missing" in (
        failed[broken].exception_message)


def test_payload_flow_must_be_an_object():
    with pytest.raises(ValueError, match="'flow' must be a JSON object"):
        dbqueue.serializer.decode('{"args":[],"flow":[1]}')
    assert dbqueue.serializer.decode('{"args":[1],"flow":{"batch":"b"}}').flow == {"batch": "b"}
