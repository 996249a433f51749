"""New jobs wake idle workers where the server can tell (PostgreSQL's
LISTEN/NOTIFY); elsewhere, and while not listening, the poll adapts."""

import os
import select
import signal

import pytest

from dbqueue.store import Lease, NewJob
from dbqueue.store.notices import listen
from dbqueue.worker.wakeup import (
    FIRST_PAUSE,
    LISTENING_SLEEP,
    POLL_SLEEP,
    RELISTEN_EVERY,
    Pace,
    Wakeup,
)
from tests.conftest import count, wait_until


def notifies(app) -> bool:
    return app.store.dialect.name == "postgresql"


def test_a_committed_dispatch_notifies_its_queue_and_a_rolled_back_or_delayed_one_never(app):
    notices = listen(app.store)
    if not notifies(app):
        assert notices is None  # MySQL, MariaDB and SQLite workers poll
        return
    assert notices is not None
    try:
        store = app.store
        with app.engine.connect() as connection, connection.begin() as transaction:
            store.push(NewJob("default", "record", "{}"), connection)
            transaction.rollback()
        store.push(NewJob("later", "record", "{}", delay=3600))
        store.push(NewJob("mail", "record", "{}"))
        poller = select.poll()
        poller.register(notices.fileno(), select.POLLIN)
        assert poller.poll(30_000), "no notification arrived"
        # Notifications arrive in commit order: had the rolled-back or the
        # delayed dispatch sent one, it would be here by now too.
        assert notices.queues() == {"mail"}
        assert notices.queues() == set()
    finally:
        notices.close()


def test_a_bulk_dispatch_wakes_workers_once_per_queue(app):
    notices = listen(app.store)
    if not notifies(app):
        pytest.skip("only PostgreSQL notifies")
    assert notices is not None
    try:
        app.store.push_many([NewJob(queue, "record", "{}") for queue in ("a", "b") * 500])
        poller = select.poll()
        poller.register(notices.fileno(), select.POLLIN)
        assert poller.poll(30_000)
        assert notices.queues() == {"a", "b"}
    finally:
        notices.close()


def test_jobs_given_back_wake_workers_once_per_queue(app):
    """A worker stopping, or stalled behind long jobs, puts back the jobs it
    reserved and never started: an idle worker elsewhere takes them at once,
    not at its next poll. No INSERT announces them: the release does."""
    notices = listen(app.store)
    if not notifies(app):
        pytest.skip("only PostgreSQL notifies")
    assert notices is not None
    try:
        store = app.store
        store.push_many([NewJob(queue, "record", "{}") for queue in ("a", "b", "b")])
        poller = select.poll()
        poller.register(notices.fileno(), select.POLLIN)
        assert poller.poll(30_000)
        assert notices.queues() == {"a", "b"}  # the dispatch's
        reserved = store.reserve(["a", "b"], 3, "w.1", 90)
        assert store.release_all([Lease(row.id, "w.1") for row in reserved]) == 3
        assert poller.poll(30_000), "no notification for the jobs given back"
        assert notices.queues() == {"a", "b"}
        assert store.release_all([Lease(row.id, "w.1") for row in reserved]) == 0  # not held
        store.push(NewJob("c", "record", "{}"))
        assert poller.poll(30_000)
        assert notices.queues() == {"c"}  # in commit order: the empty release sent none
    finally:
        notices.close()


def test_an_idle_worker_is_woken_by_a_dispatch_not_by_its_poll(jobs, workers):
    if not notifies(jobs.app):
        pytest.skip("only PostgreSQL notifies: MySQL, MariaDB and SQLite workers poll")
    effects = jobs.effects
    jobs.record.dispatch(1)
    process = workers.start("-v", "--sleep", "30", "--queue", "default,other")
    wait_until(lambda: count(jobs.app, effects, effects.c.n == 1), what="the first job")
    # Never committed: wakes no one.
    with jobs.app.engine.connect() as connection, connection.begin() as transaction:
        jobs.record.options(queue="other", connection=connection).dispatch(2)
        transaction.rollback()
    jobs.record.dispatch(3)
    # The worker's next poll is 30 s away: only the notification brings it sooner.
    wait_until(lambda: count(jobs.app, effects, effects.c.n == 3), timeout=10,
               what="the job dispatched to the idle worker")
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert "woken: new jobs on default" in output
    assert "woken: new jobs on other" not in output
    assert count(jobs.app, effects, effects.c.n == 2) == 0


def test_the_poll_looks_again_at_once_after_work_then_backs_off_to_its_longest_pause():
    pace = Pace(sleep=None)
    pauses = [pace.after_look(0, listening=False) for _ in range(6)]
    assert pauses == [FIRST_PAUSE * 2, FIRST_PAUSE * 4, FIRST_PAUSE * 8, POLL_SLEEP, POLL_SLEEP,
                      POLL_SLEEP]
    assert pace.after_look(3, listening=False) == FIRST_PAUSE  # found some: look again soon
    assert pace.after_look(0, listening=True) == LISTENING_SLEEP  # woken when a job comes
    assert Pace(sleep=30).after_look(0, listening=True) == 30
    assert Pace(sleep=0.05).after_look(0, listening=False) == 0.02


def test_a_worker_says_when_it_begins_to_listen_so_that_it_looks_again(app):
    """A look for work that began before the LISTEN may have missed a job
    queued meanwhile, whose notice nobody heard: the supervisor looks again
    when ``start`` says listening began (at start-up, and after the listening
    connection was lost)."""
    wakeup = Wakeup(app.store, ("default",))
    try:
        began = wakeup.start(now=0.0)
        assert began == notifies(app) == wakeup.listening
        assert wakeup.start(now=RELISTEN_EVERY * 2) is False  # listening already, or never
        wakeup.stop()
        # Not while the database fails: connecting would hold up the supervisor.
        assert wakeup.start(now=RELISTEN_EVERY * 3, failing=True) is False
        assert wakeup.start(now=RELISTEN_EVERY * 3) is notifies(app)
    finally:
        wakeup.stop()
