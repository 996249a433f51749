"""A lone dispatch (no caller's transaction) and the connections it keeps open.

On PostgreSQL and MySQL/MariaDB a lone dispatch is one autocommitted INSERT
on a connection that stays checked out between dispatches. These tests kill,
interrupt, fork and share those connections, and check that no dispatch is
lost, none runs on a connection another process owns, and none reads
another statement's answer.
"""

import json
import os
import signal
import threading

import pytest
import sqlalchemy as sa

from dbqueue.store import engine as engine_module
from dbqueue.store.fastinsert import KEEP
from tests.conftest import rows, wait_until

_SERVER_ID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}


@pytest.fixture
def fast(jobs):
    """The kept connections of ``jobs.app``'s lone dispatches (PostgreSQL, MySQL)."""
    store = jobs.app.store
    if not store.dialect.autocommit_single_statements:
        pytest.skip("on SQLite a lone dispatch is a short transaction on a pooled connection")
    return store._fast_push


def server_id(dbapi_connection, backend):
    cursor = dbapi_connection.cursor()
    cursor.execute(_SERVER_ID[backend])
    (value,) = cursor.fetchone()
    cursor.close()
    return int(value)


def kept_server_id(fast, backend):
    (kept,) = fast.idle
    return server_id(kept[0].driver_connection, backend)


def kill(app, backend, victim):
    """Close server connection ``victim`` from another one; return once it is gone."""
    with app.engine.connect() as connection:
        if backend == "postgresql":
            # With a timeout, pg_terminate_backend waits until the backend has exited.
            assert connection.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"),
                                      {"pid": victim}).scalar_one()
            return
        connection.exec_driver_sql(f"KILL {int(victim)}")
    wait_until(lambda: not _connection_listed(app, victim), timeout=30,
               what=f"MySQL connection {victim} to go")


def _connection_listed(app, victim):
    with app.engine.connect() as connection:
        return connection.execute(
            sa.text("SELECT COUNT(*) FROM information_schema.processlist WHERE id = :id"),
            {"id": victim}).scalar_one()


def stored(jobs):
    """Each queued job's id and its first argument."""
    return {row.id: json.loads(row.payload)["args"][0]
            for row in rows(jobs.app, jobs.app.store.tables.jobs)}


def backend_of(app):
    return "postgresql" if app.engine.dialect.name == "postgresql" else "mysql"


def test_dispatches_from_many_threads_share_a_few_kept_connections(jobs):
    dispatched, errors = {}, []

    def dispatch(thread):
        try:
            for n in range(thread * 1000, thread * 1000 + 50):
                dispatched[jobs.record.dispatch(n)] = n
        except Exception as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=dispatch, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(dispatched) == 400  # no id returned twice
    assert stored(jobs) == dispatched  # each id names the job its dispatch queued
    store = jobs.app.store
    if store.dialect.autocommit_single_statements:
        pool = store.autocommit_engine.pool
        assert 1 <= len(store._fast_push.idle) <= KEEP
        assert pool.checkedout() == len(store._fast_push.idle)  # the others went back
        jobs.app.dispose()
        assert pool.checkedout() == 0


def test_a_dispatch_on_a_connection_the_server_closed_fails_and_the_next_reconnects(
        jobs, fast):
    backend = backend_of(jobs.app)
    first = jobs.record.dispatch(1)
    kill(jobs.app, backend, kept_server_id(fast, backend))
    # Whether the INSERT reached the server is unknown to the client: it is not
    # sent again behind the caller's back (that could queue the job twice).
    with pytest.raises(sa.exc.DBAPIError):
        jobs.record.dispatch(2)
    third = jobs.record.dispatch(3)
    assert stored(jobs) == {first: 1, third: 3}


def test_a_kept_connection_that_rested_is_checked_and_replaced_if_closed(
        jobs, fast, monkeypatch):
    backend = backend_of(jobs.app)
    first = jobs.record.dispatch(1)
    victim = kept_server_id(fast, backend)
    kill(jobs.app, backend, victim)
    monkeypatch.setattr(engine_module, "IDLE_PING_AFTER", 0.0)  # it has rested long enough
    second = jobs.record.dispatch(2)  # no error: the dead connection was replaced first
    assert stored(jobs) == {first: 1, second: 2}
    assert kept_server_id(fast, backend) != victim


def test_a_forked_child_never_uses_its_parents_kept_connection(jobs, fast):
    backend = backend_of(jobs.app)
    first = jobs.record.dispatch(1)
    parents = kept_server_id(fast, backend)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            forgotten = fast.idle == []
            jobs.record.dispatch(2)
            code = 0 if forgotten and kept_server_id(fast, backend) != parents else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection was neither used nor closed by the child.
    assert kept_server_id(fast, backend) == parents
    third = jobs.record.dispatch(3)
    assert set(stored(jobs).values()) == {1, 2, 3}
    assert first < third


class Interrupted(Exception):
    pass


def test_a_dispatch_interrupted_mid_statement_leaves_no_connection_out_of_step(jobs, fast):
    """A statement cut short leaves its answer unread on the connection: that
    connection is closed, and the next dispatch runs on a fresh one."""
    backend = backend_of(jobs.app)
    jobs.record.dispatch(1)
    before = kept_server_id(fast, backend)
    table = jobs.app.store.tables.jobs.name
    blocker = jobs.app.store.autocommit_engine.raw_connection()
    cursor = blocker.driver_connection.cursor()
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Interrupted()))
    try:
        if backend == "postgresql":
            cursor.execute("BEGIN")
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")  # INSERTs wait for it
        else:
            cursor.execute(f"LOCK TABLES {table} WRITE")
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(Interrupted):
            jobs.record.dispatch(2)  # waits for the lock until the timer fires
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        cursor.execute("COMMIT" if backend == "postgresql" else "UNLOCK TABLES")
        cursor.close()
        blocker.close()
    third = jobs.record.dispatch(3)
    assert kept_server_id(fast, backend) != before
    assert stored(jobs)[third] == 3
    # The interrupted INSERT may still have committed once the lock was gone.
    assert set(stored(jobs).values()) in ({1, 3}, {1, 2, 3})


def test_dispose_gives_the_kept_connections_back(jobs, fast):
    jobs.record.dispatch(1)
    pool = jobs.app.store.autocommit_engine.pool
    assert pool.checkedout() == 1
    jobs.app.dispose()
    assert pool.checkedout() == 0
