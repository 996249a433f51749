"""The completer seam: records written together or one by one, nothing lost
when a write fails, a refused job set aside. Runs on every backend, with
failures injected through a completion hook (a write in the same transaction)."""

import json
import logging
import select
import threading
import time
from collections import deque

import pytest
import sqlalchemy as sa

from dbqueue.errors import DatabaseError, DatabaseUnavailable
from dbqueue.serializer import Payload
from dbqueue.store import Failure, Lease, NewJob
from dbqueue.store.flows import step
from dbqueue.store.locks import Locks
from dbqueue.worker.clock import Deadline
from dbqueue.worker.completer import BatchCompleter, InlineCompleter
from dbqueue.worker.health import Health
from dbqueue.worker.joblocks import JobLocks
from dbqueue.worker.ledger import Entry, Ledger
from dbqueue.worker.recorder import Recorder
from dbqueue.worker.records import Completed, Failed, Released
from dbqueue.worker.sidetasks import LeaseRenewal
from tests.conftest import count, rows


def reserve(app, n: int, token: str = "w.1") -> list[Entry]:
    store = app.store
    for _ in range(n):
        store.push(NewJob("default", "noop", "{}"))
    rows = store.reserve(["default"], n, token, 90)
    assert len(rows) == n
    return [Entry(row, Lease(row.id, token), None, Payload(), time.monotonic(),
                  Deadline.after(90)) for row in rows]


def flushed(completer, now=None) -> list[Entry]:
    """Flush, and wait for the write: on a server it goes on after ``flush``
    returns (on a thread of the completer's), and its jobs come from ``collect``."""
    return completer.flush(now) + completer.collect(wait=True)


def jobs_left(app) -> int:
    return count(app, app.store.tables.jobs)


class Hooks:
    """Completion hooks that fail on demand: ``unreachable`` raises as an outage
    would; ``refuse`` makes the server refuse a statement while those jobs
    are in the transaction."""

    def __init__(self) -> None:
        self.unreachable = False
        self.refuse: set[int] = set()
        self.refuse_completed: set[int] = set()
        self.transactions: list[set[int]] = []

    def __call__(self, connection, completion, recorded):
        if self.unreachable:
            raise DatabaseUnavailable("the database is unreachable (injected)")
        if self.refuse & recorded:
            connection.execute(sa.text("SELECT * FROM dbqueue_no_such_table"))
        if self.refuse_completed & {lease.id for lease in completion.completed}:
            # As the server refuses a value (a result over MySQL's packet limit).
            raise DatabaseError("the database refused the statement: Data too long (injected)",
                                data=True)
        self.transactions.append(set(recorded))


def test_completions_wait_to_share_one_transaction_then_go_together(app):
    hooks = Hooks()
    completer = BatchCompleter(app.store, Health(), "host:1", [hooks], max_wait=60)
    entries = reserve(app, 3)
    for entry in entries:
        completer.add(Completed(entry))
    now = time.monotonic()
    assert not completer.due(now, busy=True)  # other work in hand: wait for more
    assert completer.due(now, busy=False)
    assert flushed(completer, now) == entries
    assert hooks.transactions == [{entry.id for entry in entries}]
    assert jobs_left(app) == 0 and len(completer) == 0


def test_a_retry_is_written_at_once_and_counts_its_attempt(app):
    completer = BatchCompleter(app.store, Health(), "host:1", max_wait=60)
    [entry] = reserve(app, 1)
    completer.add(Released(entry, 0.0, 1, "boom", True))
    assert completer.due(time.monotonic(), busy=True)
    assert flushed(completer) == [entry]
    [row] = app.store.reserve(["default"], 1, "w.2", 90)
    assert (row.id, row.attempts) == (entry.id, 2)


def test_nothing_is_lost_while_the_database_is_unreachable(app, caplog):
    hooks = Hooks()
    health = Health()
    completer = BatchCompleter(app.store, health, "host:1", [hooks])
    entries = reserve(app, 2)
    completer.add(Completed(entries[0]))
    completer.add(Failed(entries[1], Failure("ValueError", "bad", ""), 1, True))
    hooks.unreachable = True
    now = time.monotonic()
    with caplog.at_level(logging.ERROR, "dbqueue.worker"):
        assert flushed(completer, now) == []
    assert "unreachable" in caplog.text and health.failing
    assert len(completer) == 2 and jobs_left(app) == 2  # rolled back, kept
    assert flushed(completer, now) == []  # not before retry_at
    hooks.unreachable = False
    assert flushed(completer, completer.retry_at) == entries
    assert jobs_left(app) == 0 and not health.failing
    assert count(app, app.store.tables.failed_jobs) == 1


def test_a_refused_job_is_written_alone_then_set_aside_and_the_others_go_through(app, caplog):
    hooks = Hooks()
    completer = BatchCompleter(app.store, Health(), "host:1", [hooks])
    good, bad, also_good = reserve(app, 3)
    for entry in (good, bad, also_good):
        completer.add(Completed(entry))
    hooks.refuse = {bad.id}
    assert flushed(completer, time.monotonic()) == []  # the batch is refused as a whole
    finished = flushed(completer, completer.retry_at)  # then one job at a time
    assert finished == [good]
    assert jobs_left(app) == 2 and len(completer) == 2
    with caplog.at_level(logging.ERROR, "dbqueue.worker"):
        for _ in range(2):
            finished += flushed(completer, completer.retry_at)
    assert finished == [good, bad, also_good]
    assert f"refused 3 times to record the outcome of job {bad.id}" in caplog.text
    assert jobs_left(app) == 1  # the refused one stays, until its lease runs out
    assert len(completer) == 0


def test_after_a_refusal_each_job_is_written_on_the_writing_thread_too(app):
    """One job at a time was written on the supervisor's own thread, with no
    time limit: a server that hung then froze the worker (no timeout, no
    signal heeded, no stop)."""
    hooks, hang, answer, threads = Hooks(), threading.Event(), threading.Event(), []

    def hook(connection, completion, recorded):
        threads.append(threading.current_thread())
        if hang.is_set():  # a server that hangs: no answer until the test ends
            answer.wait(60)
        hooks(connection, completion, recorded)

    completer = BatchCompleter(app.store, Health(), "host:1", [hook])
    if completer.fileno() is None:
        pytest.skip("SQLite writes inline: there is no writing thread")
    good, bad, last = reserve(app, 3)
    for entry in (good, bad):
        completer.add(Completed(entry))
    hooks.refuse = {bad.id}
    assert flushed(completer, time.monotonic()) == []  # refused: one job at a time now
    threads.clear()
    assert flushed(completer, completer.retry_at) == [good]
    assert threads and threading.current_thread() not in threads
    completer.add(Completed(last))
    hang.set()  # the server hangs
    try:
        assert completer.drain(until=time.monotonic() + 0.2) == []
        assert completer.close(until=time.monotonic() + 0.1) is False
    finally:
        answer.set()


def test_a_workflow_step_whose_completion_is_refused_again_and_again_fails_instead(
        app, caplog):
    """Its completion writes what it returned into the chain's next step: what
    the server refuses there (a result too large for it, say) is refused at
    every try. The step fails instead: the chain stops, its catch learns why,
    and it does not run again."""
    hooks = Hooks()
    completer = BatchCompleter(app.store, Health(), "host:1", [hooks])
    [entry] = reserve(app, 1)
    entry.payload = Payload(flow={"chain": [step(NewJob("default", "next", "{}"))],
                                  "catch": step(NewJob("default", "alert", "{}"))})
    entry.runtime = 0.01
    completer.add(Completed(entry))
    hooks.refuse_completed = {entry.id}
    finished = flushed(completer, time.monotonic())
    with caplog.at_level(logging.ERROR, "dbqueue.worker"):
        for _ in range(3):  # refused alone three times: failed instead
            finished += flushed(completer, completer.retry_at)
    assert finished == [] and len(completer) == 1
    finished += flushed(completer, completer.retry_at)
    assert finished == [entry]
    assert f"refused 3 times to record that job {entry.id} completed; failing it" in caplog.text
    # Failed for good: the supervisor queues its on_failure hook, as for any failure.
    [instead] = completer.take_failed_instead()
    assert instead.entry is entry and instead.failure.message.startswith("it completed")
    assert completer.take_failed_instead() == []
    [failed] = rows(app, app.store.tables.failed_jobs)
    assert failed.exception_message.startswith("it completed, but recording that was refused")
    queued = rows(app, app.store.tables.jobs)
    assert [row.job for row in queued] == ["alert"]  # the catch, not the next step
    assert json.loads(queued[0].payload)["flow"]["failed"]["failed_job"] == failed.uuid


def test_a_workflow_step_refused_for_another_reason_is_left_to_its_lease(app, caplog):
    """A server read-only for a while refuses every write: the step completed,
    and must not be failed for it. It runs again once its lease runs out."""
    hooks = Hooks()
    completer = BatchCompleter(app.store, Health(), "host:1", [hooks])
    [entry] = reserve(app, 1)
    entry.payload = Payload(flow={"chain": [step(NewJob("default", "next", "{}"))]})
    entry.runtime = 0.01
    completer.add(Completed(entry))
    hooks.refuse = {entry.id}
    finished = flushed(completer, time.monotonic())
    with caplog.at_level(logging.ERROR, "dbqueue.worker"):
        for _ in range(3):
            finished += flushed(completer, completer.retry_at)
    assert finished == [entry] and len(completer) == 0
    assert f"refused 3 times to record the outcome of job {entry.id}; giving up" in caplog.text
    assert count(app, app.store.tables.failed_jobs) == 0
    assert [row.job for row in rows(app, app.store.tables.jobs)] == ["noop"]  # the step


def test_a_job_another_worker_took_is_left_alone(app, caplog):
    completer = BatchCompleter(app.store, Health(), "host:1")
    [entry] = reserve(app, 1)
    jobs = app.store.tables.jobs
    with app.engine.begin() as c:  # this worker stalled; another reserved the job
        c.execute(sa.update(jobs).values(reserved_by="other.1"))
    completer.add(Completed(entry))
    with caplog.at_level(logging.WARNING, "dbqueue.worker"):
        assert flushed(completer) == [entry]
    assert (f"1 completed job(s) had lost their lease to another worker; not recorded "
            f"here: {entry.id}") in caplog.text
    assert jobs_left(app) == 1


def test_of_a_batch_only_the_jobs_still_held_are_recorded(app):
    hooks = Hooks()
    completer = BatchCompleter(app.store, Health(), "host:1", [hooks])
    kept, taken, released, lost_release = reserve(app, 4)
    jobs = app.store.tables.jobs
    with app.engine.begin() as c:  # this worker stalled; another reserved two of them
        c.execute(sa.update(jobs).where(jobs.c.id.in_([taken.id, lost_release.id]))
                  .values(reserved_by="other.1"))
    completer.add(Completed(kept))
    completer.add(Completed(taken))
    completer.add(Released(released, 0.0, 0, "", False))
    completer.add(Released(lost_release, 0.0, 0, "", False))
    assert flushed(completer) == [kept, taken, released, lost_release]  # finished with, all
    assert hooks.transactions == [{kept.id, released.id}]  # but recorded: only its own
    left = {row.id: row.reserved_by for row in rows(app, jobs)}
    assert left == {taken.id: "other.1", released.id: None, lost_release.id: "other.1"}


def test_the_inline_completer_writes_each_job_in_a_transaction_of_its_own(app):
    hooks = Hooks()
    completer = InlineCompleter(app.store, Health(), "host:1", [hooks])
    entries = reserve(app, 3)
    for entry in entries:
        completer.add(Completed(entry))
        assert completer.due(time.monotonic(), busy=True)
    assert flushed(completer) == entries
    assert hooks.transactions == [{entry.id} for entry in entries]
    assert jobs_left(app) == 0


@pytest.mark.parametrize("completer_class", [BatchCompleter, InlineCompleter])
def test_drain_writes_what_waits_before_exit(app, completer_class):
    completer = completer_class(app.store, Health(), "host:1")
    entries = reserve(app, 2)
    for entry in entries:
        completer.add(Completed(entry))
    assert completer.drain() == entries
    assert jobs_left(app) == 0


def test_drain_leaves_a_write_that_never_ends_at_its_deadline(app):
    """A server that hangs never answers: the stop waits for a write until its
    deadline, then leaves it (those jobs run again once their leases run out)."""
    answer = threading.Event()
    completer = BatchCompleter(app.store, Health(), "host:1",
                               [lambda connection, completion, recorded: answer.wait(60)])
    if completer.fileno() is None:
        pytest.skip("SQLite writes inline: no write is left on its way")
    entries = reserve(app, 2)
    for entry in entries:
        completer.add(Completed(entry))
    try:
        assert completer.drain(until=time.monotonic() + 0.2) == []
        assert completer.close(until=time.monotonic() + 0.1) is False
        assert len(completer) == 2  # still its to tell of (see Supervisor._tell_what_was_left)
    finally:
        answer.set()


def test_on_a_server_the_write_goes_on_while_the_worker_takes_in_more(app):
    """flush() starts the write and returns; records added meanwhile wait for
    the next write; the write's end makes fileno() readable once, and
    collect() gives its jobs."""
    completer = BatchCompleter(app.store, Health(), "host:1")
    if completer.fileno() is None:
        pytest.skip("SQLite writes inline: flush() returns once written")
    first, second = reserve(app, 2)
    completer.add(Completed(first))
    finished = completer.flush()  # starts the write (or, rarely, sees it end already)
    completer.add(Completed(second))  # taken in while the write is on its way
    if not finished:
        assert select.select([completer.fileno()], [], [], 10)[0]  # its end wakes a wait
        finished = completer.collect()
    assert finished == [first] and len(completer) == 1  # the second waits for the next
    assert not select.select([completer.fileno()], [], [], 0)[0]  # no stale wake-up
    assert flushed(completer) == [second] and jobs_left(app) == 0
    completer.close()


def test_the_lease_renewal_leaves_alone_the_jobs_whose_outcome_is_being_written(app, caplog):
    """The write deletes a completed job's row on its own thread; a renewal
    meanwhile must not take the missing row for a lease lost to another
    worker (nor wait on the row the write holds)."""
    written = threading.Event()

    def slow_write(connection, completion, recorded):  # the row is deleted, not committed
        written.wait(5)

    health, ledger = Health(), Ledger()
    completer = BatchCompleter(app.store, health, "host:1", [slow_write])
    if completer.fileno() is None:
        pytest.skip("SQLite writes inline: no write is on its way during a renewal")
    recorder = Recorder(ledger, completer, app.store, health, deque())
    job_locks = JobLocks(app, Locks(app.store), recorder, health, "w", 10.0)
    renewal = LeaseRenewal(10.0, health, ledger=ledger, recorder=recorder, job_locks=job_locks,
                           lease=90.0, completer=completer)
    done, waiting = reserve(app, 2)
    for entry in (done, waiting):
        ledger.add(entry)
    recorder.completed(done)
    assert completer.flush() == []  # on its way: slow_write holds it open
    with caplog.at_level(logging.WARNING, "dbqueue.worker"):
        renewal.run()
    written.set()
    assert completer.collect(wait=True) == [done]
    assert not done.lease_lost and not waiting.lease_lost
    assert "lost" not in caplog.text
    completer.close()


def renewal_apart(app):
    """A lease renewal on a thread of its own (a server's worker), every 10 s,
    with its ledger, recorder and completer."""
    health, ledger = Health(), Ledger()
    completer = BatchCompleter(app.store, health, "host:1")
    if completer.fileno() is None:
        pytest.skip("SQLite: the renewal runs inline")
    recorder = Recorder(ledger, completer, app.store, health, deque())
    job_locks = JobLocks(app, Locks(app.store), recorder, health, "w", 10.0)
    renewal = LeaseRenewal(10.0, health, ledger=ledger, recorder=recorder, job_locks=job_locks,
                           lease=90.0, completer=completer, apart=True)
    return ledger, recorder, completer, renewal


def test_a_renewal_apart_leaves_alone_the_jobs_that_ended_while_it_was_on_its_way(app, caplog):
    """The renewal runs on a thread of its own; a job that ended meanwhile,
    its row deleted by its outcome's write, is no lease lost when the
    renewal's answer is taken in. The others are renewed."""
    ledger, recorder, completer, renewal = renewal_apart(app)
    first, done, waiting = reserve(app, 3)
    for entry in (first, done, waiting):
        ledger.add(entry)
    before = waiting.lease_until
    # The renewal is asked while all are held, and waits for the first one's
    # row (before it locks the others'); meanwhile a job ends and its row goes.
    jobs = app.store.tables.jobs
    with app.engine.begin() as holding:
        holding.execute(sa.select(jobs.c.id).where(jobs.c.id == first.id).with_for_update())
        renewal.tick(time.monotonic())
        assert renewal.calls.busy
        recorder.completed(done)
        assert flushed(completer) == [done]
        ledger.forget(done)
    assert select.select([renewal.fileno()], [], [], 10)[0]  # its end wakes a wait
    with caplog.at_level(logging.WARNING, "dbqueue.worker"):
        renewal.tick(time.monotonic())
    assert not renewal.calls.busy
    assert not done.lease_lost and not waiting.lease_lost
    assert waiting.lease_until.mono > before.mono  # renewed
    assert "lost" not in caplog.text
    renewal.close()
    completer.close()


def test_a_renewal_that_has_not_answered_for_a_period_is_stuck(app):
    """Until it answers, the worker's leases are in doubt: the supervisor
    then starts no new work (see Supervisor._turn)."""
    ledger, _, completer, renewal = renewal_apart(app)
    [held] = reserve(app, 1)
    ledger.add(held)
    jobs = app.store.tables.jobs
    with app.engine.begin() as holding:  # the renewal waits for this row
        holding.execute(sa.select(jobs.c.id).where(jobs.c.id == held.id).with_for_update())
        now = time.monotonic()
        renewal.tick(now)
        assert renewal.calls.busy
        assert not renewal.stuck(now + 9.0)
        assert renewal.stuck(renewal.calls.began + 10.5)
    assert select.select([renewal.fileno()], [], [], 10)[0]
    renewal.tick(time.monotonic())
    assert not renewal.stuck(time.monotonic() + 100)  # answered: nothing on its way
    renewal.close()
    completer.close()


def test_a_job_put_back_for_another_worker_is_not_looked_for_when_it_comes_due(app):
    """A worker wakes when the jobs it released come due, and takes them
    first. A job it does not know (a deploy: another worker has the new
    code) is put back for the others: waking for it, the old worker took it
    again each time, and the new workers never got it."""
    completer = BatchCompleter(app.store, Health(), "host:1")
    mine, others = reserve(app, 2)
    completer.add(Released(mine, 5.0, 0, "released", False))
    completer.add(Released(others, 5.0, 0, "unknown here", False, for_others=True))
    assert sorted(e.id for e in flushed(completer, time.monotonic() + 60)) == sorted(
        [mine.id, others.id])
    assert [waits for _, waits in completer.take_coming_due()] == [False]  # mine only
