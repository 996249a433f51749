"""A lone dispatch (no caller's transaction) and the connections it keeps open.

On PostgreSQL and MySQL/MariaDB a lone dispatch is one autocommitted INSERT
on a connection that stays checked out between dispatches. These tests kill,
interrupt, fork and share those connections, and check that no dispatch is
lost, none runs on a connection another process owns, and none reads
another statement's answer.
"""

import atexit
import json
import os
import signal
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import Pool

import dbqueue
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


class Interrupted(BaseException):
    """Like KeyboardInterrupt: not an error a ping failure could be mistaken for."""


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


def test_a_dispatch_on_a_kept_connection_the_server_closed_reconnects_first(jobs, fast):
    backend = backend_of(jobs.app)
    first = jobs.record.dispatch(1)
    victim = kept_server_id(fast, backend)
    kill(jobs.app, backend, victim)
    # The server's farewell is on the kept connection's socket: it is replaced
    # before the INSERT is sent, however short its rest.
    second = jobs.record.dispatch(2)
    assert stored(jobs) == {first: 1, second: 2}
    assert kept_server_id(fast, backend) != victim


_LOCK = {"postgresql": "LOCK TABLE {} IN EXCLUSIVE MODE", "mysql": "LOCK TABLES {} WRITE"}
_WAITING = {
    "postgresql": "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = :id "
                  "AND wait_event_type = 'Lock'",
    "mysql": "SELECT COUNT(*) FROM information_schema.processlist WHERE id = :id "
             "AND state LIKE 'Waiting for table%'",
}


def test_a_dispatch_whose_connection_dies_in_flight_fails_and_is_not_sent_again(
        jobs, fast):
    backend = backend_of(jobs.app)
    first = jobs.record.dispatch(1)
    victim = kept_server_id(fast, backend)
    table = jobs.app.store.tables.jobs.name
    outcome = []

    def dispatch() -> None:
        try:
            outcome.append(jobs.record.dispatch(2))
        except dbqueue.DatabaseUnavailable as exc:
            outcome.append(exc)

    engine = jobs.app.engine
    with engine.connect() as locker:
        locker.exec_driver_sql(_LOCK[backend].format(table))  # the INSERT waits behind it
        thread = threading.Thread(target=dispatch)
        thread.start()
        with engine.connect() as watcher:
            wait_until(lambda: watcher.execute(sa.text(_WAITING[backend]),
                                               {"id": victim}).scalar_one(),
                       what="the dispatch to wait for the lock")
        kill(jobs.app, backend, victim)
        if backend == "mysql":
            locker.exec_driver_sql("UNLOCK TABLES")
        locker.rollback()
    thread.join(30)
    # Whether the INSERT reached the server is unknown to the client: it is not
    # sent again behind the caller's back (that could queue the job twice).
    assert len(outcome) == 1 and isinstance(outcome[0], dbqueue.DatabaseUnavailable), outcome
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


def test_a_disconnect_seen_elsewhere_in_the_pool_retires_the_kept_connections(jobs, fast):
    """SQLAlchemy recycles every older connection of a pool once it has seen one
    dropped (the server may have restarted); a kept one is retired as well."""
    backend = backend_of(jobs.app)
    first = jobs.record.dispatch(1)
    kept = kept_server_id(fast, backend)
    engine = jobs.app.store.autocommit_engine
    with engine.connect() as connection:
        pooled = int(connection.exec_driver_sql(_SERVER_ID[backend]).scalar_one())
        kill(jobs.app, backend, pooled)  # while checked out: no check before the next use
        with pytest.raises(sa.exc.DBAPIError):
            connection.exec_driver_sql("SELECT 1")  # the pool learns of the disconnect here
    second = jobs.record.dispatch(2)
    assert stored(jobs) == {first: 1, second: 2}
    assert kept_server_id(fast, backend) != kept  # alive, but older than the disconnect


def _send_without_reading(dbapi_connection, backend):
    if backend == "postgresql":
        dbapi_connection.pgconn.send_query(b"SELECT 1")
    else:
        from pymysql.constants import COMMAND

        dbapi_connection._execute_command(COMMAND.COM_QUERY, "SELECT 1")


def test_a_ping_cut_short_leaves_no_connection_out_of_step(jobs, fast, monkeypatch):
    backend = backend_of(jobs.app)
    first = jobs.record.dispatch(1)
    before = kept_server_id(fast, backend)

    def ping_then_interrupt(dbapi_connection):
        _send_without_reading(dbapi_connection, backend)  # the answer stays unread
        raise Interrupted()

    monkeypatch.setattr(engine_module, "IDLE_PING_AFTER", 0.0)
    monkeypatch.setattr(jobs.app.store.autocommit_engine.dialect, "do_ping", ping_then_interrupt)
    with pytest.raises(Interrupted):
        jobs.record.dispatch(2)
    monkeypatch.undo()
    third = jobs.record.dispatch(3)
    assert stored(jobs) == {first: 1, third: 3}
    assert kept_server_id(fast, backend) != before


def engine_server_id(app, backend):
    with app.engine.connect() as connection:
        return int(connection.exec_driver_sql(_SERVER_ID[backend]).scalar_one())


def test_a_forked_child_connects_afresh_and_leaves_its_parents_connections_alone(jobs, fast):
    backend = backend_of(jobs.app)
    first = jobs.record.dispatch(1)
    kept, pooled = kept_server_id(fast, backend), engine_server_id(jobs.app, backend)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            jobs.record.dispatch(2)
            own = kept_server_id(jobs.app.store._fast_push, backend)
            code = 0 if {own, engine_server_id(jobs.app, backend)}.isdisjoint(
                {kept, pooled}) else 3
            jobs.app.dispose()
            atexit._run_exitfuncs()  # what a normal exit would run
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connections were neither used nor closed by the child.
    third = jobs.record.dispatch(3)
    assert (kept_server_id(fast, backend), engine_server_id(jobs.app, backend)) == (kept, pooled)
    assert set(stored(jobs).values()) == {1, 2, 3}
    assert first < third


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


def test_the_dialect_is_looked_up_once_before_the_engine_connects():
    # An application that only dispatches outside its transactions uses the
    # autocommit engine alone: its main engine never connects. The dialect
    # must still be looked up once, not at every dispatch.
    from dbqueue.store.dialects import dialect_for

    postgres = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert postgres.dialect.server_version_info is None
    assert dialect_for(postgres.dialect) is dialect_for(postgres.dialect)
    # A "mysql" URL may be MariaDB: which, only the server's answer tells.
    mysql = sa.create_engine("mysql+pymysql://nobody@127.0.0.1:1/none")
    assert dialect_for(mysql.dialect) is not dialect_for(mysql.dialect)


def test_the_fork_server_closes_what_the_application_left_in_its_pools(jobs):
    """Run in the worker's fork server after the application's import: children
    then inherit empty pools, whatever the engine's options (a pre-ping would
    use an inherited connection before any checkout hook could refuse it)."""
    from dbqueue.store.forkguard import release_imported_connections

    if jobs.app.engine.dialect.name == "sqlite":
        pytest.skip("SQLite's pools are left alone: a database in memory lives in them")
    backend = backend_of(jobs.app)
    url = sa.make_url(jobs.app.settings.url)
    theirs = sa.create_engine(url.set(drivername={"postgresql": "postgresql+psycopg",
                                                  "mysql": "mysql+pymysql"}[backend]),
                              pool_pre_ping=True)
    try:
        with theirs.connect() as connection:  # as a create_all at import would
            session = server_id(connection.connection.dbapi_connection, backend)
        assert theirs.pool.checkedin() == 1
        release_imported_connections()
        assert theirs.pool.checkedin() == 0
        listed = {"postgresql": "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = :id",
                  "mysql": "SELECT COUNT(*) FROM information_schema.processlist WHERE id = :id"}
        wait_until(lambda: not jobs.app.store.read(lambda c: c.execute(
            sa.text(listed[backend]), {"id": session}).scalar_one()), timeout=30,
            what=f"server session {session} to end")
    finally:
        theirs.dispose()


def test_a_database_in_memory_is_still_there_in_a_forked_child():
    """SQLite in memory lives in its one connection: the fork guard leaves it be."""
    from dbqueue.store import forkguard

    forkguard.guard_inherited_connections()
    # Only for this test: the fork server's listeners, not the test process's.
    installed = [(Pool, "connect", forkguard._tag), (Pool, "checkout", forkguard._refuse_inherited)]
    memory = sa.create_engine("sqlite://")
    with memory.begin() as connection:
        connection.execute(sa.text("CREATE TABLE t (n INTEGER)"))
        connection.execute(sa.text("INSERT INTO t VALUES (1)"))
    pid = os.fork()
    if pid == 0:  # the child: 0 if it reads the row
        try:
            with memory.connect() as connection:
                found = connection.execute(sa.text("SELECT n FROM t")).scalar_one()
            os._exit(0 if found == 1 else 1)
        except BaseException:
            os._exit(2)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        memory.dispose()
        for target, name, listener in installed:
            sa.event.remove(target, name, listener)


def test_an_object_that_raises_for_its_class_does_not_stop_the_release(jobs):
    """A lazy proxy (Django's settings) evaluates itself when asked for
    __class__, and may raise: the search for engines must not ask it."""
    from dbqueue.store.forkguard import release_imported_connections

    if jobs.app.engine.dialect.name == "sqlite":
        pytest.skip("SQLite's pools are left alone")

    class Lazy:
        @property  # type: ignore[misc]
        def __class__(self):
            raise RuntimeError("settings are not configured")

    lazy = Lazy()
    with jobs.app.engine.connect():
        pass
    assert jobs.app.engine.pool.checkedin() >= 1
    release_imported_connections()
    assert jobs.app.engine.pool.checkedin() == 0
    del lazy
