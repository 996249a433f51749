"""The connections dbqueue opens to a server notice a dead network path (TCP
keepalive and TCP_USER_TIMEOUT, see dbqueue/store/dialects/liveness.py), and a
pooled connection its server ended is replaced before it is used.

A path that really goes dark is in test_dark_network.py; here the shared
servers only see the tests' own connections, and end one of them.
"""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

import dbqueue
from dbqueue.errors import ConfigurationError, DatabaseUnavailable
from dbqueue.settings import Settings
from dbqueue.store.dialects.liveness import keep_alive, libpq_options
from dbqueue.store.engine import create_engine
from tests.conftest import PREFIX, count

OPTIONS = {"SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
           "TCP_KEEPIDLE": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
           "TCP_KEEPINTVL": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
           "TCP_KEEPCNT": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
           "TCP_USER_TIMEOUT": (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)}


@pytest.fixture
def server_url(backend_url: str) -> str:
    if backend_url.startswith("sqlite"):
        pytest.skip("SQLite has no network path")
    return backend_url


@contextmanager
def driver_socket(engine: sa.Engine) -> Iterator[socket.socket]:
    """A pooled connection's socket (a duplicate: closing it leaves the driver's open)."""
    with engine.connect() as connection:
        driver: Any = connection.connection.driver_connection
        fd = driver.fileno() if hasattr(driver, "fileno") else driver._sock.fileno()  # PyMySQL
        duplicate = socket.socket(fileno=os.dup(fd))
        try:
            yield duplicate
        finally:
            duplicate.close()


def options_of(engine: sa.Engine) -> dict[str, int]:
    with driver_socket(engine) as sock:
        return {name: sock.getsockopt(*where) for name, where in OPTIONS.items()}


def test_connections_probe_a_silent_path_within_30_seconds_by_default(server_url):
    app = dbqueue.App(server_url)
    try:
        options = options_of(app.engine)
    finally:
        app.dispose()
    assert options.pop("SO_KEEPALIVE") != 0
    assert options == {"TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3,
                       "TCP_USER_TIMEOUT": 30_000}


def test_the_network_timeout_is_a_setting(server_url, monkeypatch):
    monkeypatch.setenv("DBQUEUE_NETWORK_TIMEOUT", "8")
    from_env = dbqueue.App(server_url)
    given = dbqueue.App(server_url, network_timeout=4)
    try:
        assert options_of(from_env.engine)["TCP_USER_TIMEOUT"] == 8_000
        options = options_of(given.engine)
        assert options.pop("SO_KEEPALIVE") != 0
        assert options == {"TCP_KEEPIDLE": 2, "TCP_KEEPINTVL": 1, "TCP_KEEPCNT": 3,
                           "TCP_USER_TIMEOUT": 4_000}
    finally:
        from_env.dispose()
        given.dispose()


def test_a_libpq_parameter_in_the_url_wins(server_url):
    if not server_url.startswith("postgresql"):
        pytest.skip("libpq's parameters are PostgreSQL's")
    app = dbqueue.App(server_url + "?keepalives_idle=7")
    try:
        options = options_of(app.engine)
    finally:
        app.dispose()
    assert (options["TCP_KEEPIDLE"], options["TCP_USER_TIMEOUT"]) == (7, 30_000)


@pytest.mark.parametrize("text", ["0", "-1", "0.5", "soon", "inf"])
def test_a_network_timeout_must_be_positive_seconds(text):
    with pytest.raises(ConfigurationError, match="DBQUEUE_NETWORK_TIMEOUT"):
        Settings.from_env({"DBQUEUE_NETWORK_TIMEOUT": text})
    with pytest.raises(ConfigurationError, match="network_timeout"):
        Settings(network_timeout=0.5)


def test_an_argument_wins_over_a_bad_setting_in_the_environment():
    given = Settings.from_env({"DBQUEUE_NETWORK_TIMEOUT": "0", "DBQUEUE_RETRY_AFTER": "0"},
                              network_timeout=5.0, retry_after=30.0)
    assert (given.network_timeout, given.retry_after) == (5.0, 30.0)


def test_a_long_network_timeout_is_held_to_what_the_kernel_takes():
    options = libpq_options(10**7)
    assert (options["keepalives_idle"], options["keepalives_interval"]) == (32_767, 32_767)
    assert options["tcp_user_timeout"] == 2**31 - 1
    with socket.socket() as sock:
        keep_alive(sock, 10**7)  # would raise OSError (EINVAL) unclamped
        assert sock.getsockopt(*OPTIONS["TCP_KEEPIDLE"]) == 32_767


@contextmanager
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 whose connections are taken and never answered:
    what a client sees of a server whose path went dark just after the TCP
    handshake (the kernel completes it; nothing reads or writes)."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        yield listening.getsockname()[1]


def test_a_server_that_never_greets_is_given_up_on(server_url):
    """Only the TCP handshake is bounded by a driver's connect timeout
    (PyMySQL's): the greeting and the login after it must be too, else a
    worker that connects as its path goes dark waits for ever, and cannot
    stop."""
    with silent_server() as port:
        url = sa.make_url(server_url).set(host="127.0.0.1", port=port)
        engine = create_engine(url, network_timeout=1)
        outcome: list[Exception] = []

        def connect() -> None:
            try:
                engine.connect().close()
            except Exception as error:  # what the test looks at
                outcome.append(error)

        trying = threading.Thread(target=connect, daemon=True)
        trying.start()
        trying.join(60)  # not a measure of speed: a bound on a wait that was endless
        engine.dispose()
    assert not trying.is_alive(), "still connecting after 60 s"
    assert outcome and isinstance(outcome[0], sa.exc.OperationalError), outcome


def test_a_statement_may_take_longer_than_the_network_timeout(server_url):
    """A read timeout that bounds connecting does not bound statements: a
    slow one, whose server answers the probes, runs as long as it needs."""
    sleep = ("SELECT pg_sleep(1.5)" if server_url.startswith("postgresql")
             else "SELECT SLEEP(1.5)")
    engine = create_engine(server_url, network_timeout=1)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(sleep))
    finally:
        engine.dispose()


def test_a_unix_socket_is_left_as_it_is():
    """MySQL's client may talk over a Unix socket, which has no network path
    (and refuses TCP's options)."""
    first, second = socket.socketpair()
    with first, second:
        keep_alive(first, 30)
        assert first.getsockopt(*OPTIONS["SO_KEEPALIVE"]) == 0


def session_id(connection: sa.Connection) -> int:
    """The server's own number for the session ``connection`` is in."""
    query = ("SELECT pg_backend_pid()" if connection.dialect.name == "postgresql"
             else "SELECT CONNECTION_ID()")
    return int(connection.execute(sa.text(query)).scalar_one())


def end_session(url: str, session: int) -> None:
    """Have the server end ``session`` (one of this test's own connections)."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                ended = connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"),
                                           {"pid": session}).scalar_one()
                assert ended
            else:
                connection.execute(sa.text(f"KILL {session}"))
    finally:
        engine.dispose()


def wait_readable(sock: socket.socket) -> None:
    """Until the server's end of the session reaches the client's socket."""
    assert select.select([sock], [], [], 30)[0], "the server did not end the session"


def test_a_pooled_connection_its_server_ended_is_replaced_before_use(server_url, jobs):
    app: Any = dbqueue.App(server_url, table_prefix=PREFIX)  # its pool: one connection
    try:
        with app.engine.connect() as connection:
            first = session_id(connection)
        with driver_socket(app.engine) as sock:
            end_session(server_url, first)
            wait_readable(sock)
        # Rested for less than the 10 s after which a connection is pinged
        # anyway: only its socket says it is dead.
        assert count(app, app.store.tables.jobs) == 0
        with app.engine.connect() as connection:
            assert session_id(connection) != first
    finally:
        app.dispose()


# --- the server's end: sessions of clients that are gone ----------------------------


def server_settings(connection: sa.Connection, *names: str) -> list[int]:
    """The session's values of server settings, in each one's own unit."""
    if connection.dialect.name == "postgresql":
        return [int(connection.execute(sa.text("SELECT setting FROM pg_settings WHERE name = "
                                               ":name"), {"name": name}).scalar_one())
                for name in names]
    return [int(value) for value in connection.execute(sa.text(
        "SELECT " + ", ".join(f"@@SESSION.{name}" for name in names))).one()]


def test_postgresql_probes_a_silent_client_of_a_session_as_the_client_does(server_url):
    if not server_url.startswith("postgresql"):
        pytest.skip("only PostgreSQL takes such settings per session")
    app = dbqueue.App(server_url, network_timeout=8)
    overridden = dbqueue.App(server_url + "?options=-c%20tcp_keepalives_idle%3D7")
    try:
        with app.engine.connect() as connection:
            assert server_settings(connection, "tcp_keepalives_idle", "tcp_keepalives_interval",
                                   "tcp_keepalives_count", "tcp_user_timeout") == [4, 1, 3, 8000]
        with overridden.engine.connect() as connection:  # the URL's own options win
            assert server_settings(connection, "tcp_keepalives_idle") == [7]
    finally:
        app.dispose()
        overridden.dispose()


WAITS = {"postgresql": ("idle_in_transaction_session_timeout", "lock_timeout"),
         "mysql": ("idle_transaction_timeout", "innodb_lock_wait_timeout")}


def test_only_a_workers_sessions_limit_their_waits_inside_transactions(server_url):
    app = dbqueue.App(server_url, network_timeout=3)
    try:
        names = WAITS[app.engine.dialect.name]
        with app.engine.connect() as connection:  # the application's: as the server has them
            before = server_settings(connection, *names)
        app.engine.dispose()
        with app.worker_store().engine.connect() as connection:
            after = server_settings(connection, *names)
    finally:
        app.dispose()
    assert before != after
    assert after == ([3000, 3000] if server_url.startswith("postgresql") else [3, 3])


def test_a_worker_statement_waits_for_a_lock_at_most_the_network_timeout(server_url, jobs):
    jobs.nap.dispatch(0)
    table = jobs.app.store.tables.jobs
    app = dbqueue.App(server_url, table_prefix=PREFIX, network_timeout=1)
    holder = create_engine(server_url)
    try:
        with holder.begin() as holding:
            holding.execute(sa.select(table.c.id).with_for_update()).all()
            # Without a limit: for ever on PostgreSQL, 50 s on MariaDB.
            with (app.worker_store().engine.connect() as waiting,
                  pytest.raises(sa.exc.OperationalError) as raised):
                waiting.execute(sa.select(table.c.id).with_for_update()).all()
        # A collision that passes is tried again; a wait this long is not.
        assert app.store.dialect.is_retryable(raised.value, waited=0.1)
        assert not app.store.dialect.is_retryable(raised.value, waited=1.0)
    finally:
        app.dispose()
        holder.dispose()


def test_a_lock_held_for_the_whole_wait_is_not_waited_for_again(server_url, jobs):
    """A lock wait that timed out met a transaction not about to end: seven
    more tries would hold the caller (a worker's stop, say) seven more waits."""
    jobs.nap.dispatch(0)
    table = jobs.app.store.tables.jobs
    app = dbqueue.App(server_url, table_prefix=PREFIX, network_timeout=1)
    holder = create_engine(server_url)
    attempts: list[int] = []

    def lock(connection: sa.Connection) -> None:
        attempts.append(1)
        connection.execute(sa.select(table.c.id).with_for_update()).all()

    try:
        with holder.begin() as holding:
            holding.execute(sa.select(table.c.id).with_for_update()).all()
            with pytest.raises(DatabaseUnavailable):
                app.worker_store().transaction(lock)
    finally:
        app.dispose()
        holder.dispose()
    assert len(attempts) == 1


def test_an_engine_given_at_another_isolation_runs_dbqueues_transactions_at_read_committed(
        server_url):
    """dbqueue's transactions are written for READ COMMITTED, which the engines
    it builds use: under MySQL's REPEATABLE READ a reservation's SKIP LOCKED
    scan keeps locks on the rows it passes, and reservations deadlock. The
    engine itself, the application's, is left as it was."""
    engine = create_engine(server_url).execution_options(isolation_level="REPEATABLE READ")
    app = dbqueue.App(engine)
    def level(connection: sa.Connection) -> str:
        if server_url.startswith("postgresql"):
            query = "SHOW transaction_isolation"
        else:  # MySQL 8 names it transaction_isolation; MariaDB before 11.1, tx_isolation
            mariadb = "MariaDB" in connection.exec_driver_sql("SELECT VERSION()").scalar_one()
            query = "SELECT @@tx_isolation" if mariadb else "SELECT @@transaction_isolation"
        return str(connection.exec_driver_sql(query).scalar_one()).upper().replace("-", " ")

    try:
        assert app.store.read(level) == "READ COMMITTED"
        with engine.connect() as connection:
            assert level(connection) == "REPEATABLE READ"
    finally:
        app.dispose()
        engine.dispose()


def test_a_lone_dispatch_through_an_engine_given_with_an_isolation_level_is_committed(
        server_url, schema):
    """The lone INSERT runs on an autocommit connection of the given engine's
    pool: derived from an engine that itself set an isolation_level, that
    connection was not in autocommit mode, and the INSERT was rolled back at
    checkin though dispatch returned the new job's id."""
    engine = create_engine(server_url).execution_options(isolation_level="REPEATABLE READ")
    app = dbqueue.App(engine, table_prefix=PREFIX)
    job = app.job(name="given_engine_noop")(lambda: None)
    try:
        job_id = job.dispatch()
        assert job_id is not None
        jobs = app.store.tables.jobs
        assert count(app, jobs, jobs.c.id == job_id) == 1
        with app.store.engine.begin() as connection:
            connection.execute(sa.delete(jobs).where(jobs.c.id == job_id))
    finally:
        app.dispose()
        engine.dispose()
