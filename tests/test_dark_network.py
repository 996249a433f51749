"""The network path to the database goes dark: packets vanish, nothing closes.

Unlike a stopped server (test_outage.py), a failover or a firewall that drops
packets sends the client no error: without keepalive probes and a user
timeout on its sockets, a worker waits on its connection for about 15 minutes
(with data in flight) or for ever, and meanwhile stops neither its overdue
jobs nor itself. These tests start a server of their own inside a network
namespace of their own (scripts/chaos_network.py) and cut the link to it; the
shared servers are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbqueue.errors import DatabaseUnavailable
from tests import jobapp
from tests.conftest import (
    IN_CI,
    PREFIX,
    ROOT,
    Workers,
    count,
    process_ended,
    read_until,
    rows,
    wait_until,
)

sys.path.insert(0, str(ROOT / "scripts"))
from chaos_network import Island
from chaos_servers import MariaDB, Postgres

pytestmark = pytest.mark.slow

# Short, so that each test waits seconds; the default is 30.
NETWORK_TIMEOUT = "2"


@pytest.fixture(scope="module")
def island() -> Iterator[Island]:
    reason = Island.unavailable()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: the dark-network tests must run)")
        pytest.skip(reason)
    try:
        made = Island()
    except subprocess.CalledProcessError as error:  # root, but no CAP_NET_ADMIN here
        if IN_CI:
            raise
        pytest.skip(f"no network namespace could be made: {error}")
    yield made
    made.close()


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def server(request: pytest.FixtureRequest, island: Island) -> Iterator[Any]:
    kind = {"postgresql": Postgres, "mariadb": MariaDB}[request.param]
    if not kind.installed():
        reason = f"{request.param}'s server programs are not installed"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: every backend must be tested)")
        pytest.skip(reason)
    # Not pytest's tmp_path: PostgreSQL runs as another user, who must be able
    # to reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="dbqueue-dark-"))
    root.chmod(0o755)
    own = None
    try:
        own = kind(root / request.param, namespace=island.namespace, host=island.host)
        yield own
    finally:
        if own is not None:
            own.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private(server: Any, island: Island, request: pytest.FixtureRequest,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[jobapp.JobApp]:
    monkeypatch.setenv("DBQUEUE_NETWORK_TIMEOUT", NETWORK_TIMEOUT)
    # A database per test, named after it (a parametrized test's variants too).
    name = re.sub(r"\W", "_", request.node.name[5:].lower())
    built = jobapp.build(server.database(f"{name[:32]}_{zlib.crc32(name.encode()):08x}"),
                         PREFIX)
    built.app.migrate()
    yield built
    island.heal()  # a failed test may have left it cut
    built.app.dispose()


@pytest.fixture
def workers(private: jobapp.JobApp) -> Iterator[Workers]:
    running = Workers(private.app.settings.url, [],
                      env={"DBQUEUE_NETWORK_TIMEOUT": NETWORK_TIMEOUT})
    yield running
    running.kill_all()


def outcome_within(call: Callable[[], Any], seconds: float) -> BaseException | None:
    """The error ``call`` raised, None if it returned; fails the test if it is
    still waiting after ``seconds`` (it is left waiting, in a daemon thread)."""
    raised: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            raised.append(None)
        except BaseException as exc:  # the outcome under test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if not raised:
        pytest.fail(f"still waiting on the dark connection after {seconds:.0f} s")
    return raised[0]


def test_a_dispatch_over_a_dark_path_fails_and_the_next_one_reconnects(private, island):
    private.nap.dispatch(0)
    island.cut()
    error = outcome_within(lambda: private.nap.dispatch(0), 60)
    island.heal()
    assert isinstance(error, DatabaseUnavailable), repr(error)
    private.nap.dispatch(0)
    assert count(private.app, private.app.store.tables.jobs) == 2


def test_a_worker_whose_path_goes_dark_says_so_and_loses_nothing(private, island, workers):
    private.app.dispatch_many([private.nap.prepare(0.05) for _ in range(120)])
    host = workers.start("-v", "--concurrency", "2", "--sleep", "0.1")
    table = private.app.store.tables.jobs
    wait_until(lambda: count(private.app, table) < 100, what="the worker to get going")
    island.cut()
    try:
        log = read_until(host, "the database is unreachable")
    finally:
        island.heal()
    wait_until(lambda: count(private.app, table) == 0, timeout=120, what="every job to complete")
    os.killpg(host.pid, signal.SIGTERM)
    output, _ = host.communicate(timeout=60)
    output = log + output
    assert host.returncode == 0, output
    assert "reachable again, after" in output, output
    assert "Traceback" not in output
    completed = Counter(re.findall(r"job (\d+) \(nap\) completed in", output))
    assert len(completed) == 120 and set(completed.values()) == {1}, completed
    assert count(private.app, private.app.store.tables.failed_jobs) == 0


def test_a_worker_stops_on_sigterm_while_its_path_is_dark(private, island, workers):
    host = workers.start("--sleep", "0.1")
    private.nap.dispatch(0)
    wait_until(lambda: count(private.app, private.app.store.tables.jobs) == 0,
               what="the worker to run a job")
    island.cut()
    try:
        log = read_until(host, "the database is unreachable")
        os.killpg(host.pid, signal.SIGTERM)
        output, _ = host.communicate(timeout=60)
    finally:
        island.heal()
    assert host.returncode == 0, log + output
    assert "Traceback" not in log + output


def test_a_worker_stops_on_sigterm_while_its_server_hangs(private, server, workers):
    """A server that hangs (its storage stuck, or a proxy in front of it whose
    server side died) closes nothing and its host's kernel still answers the
    probes: no statement on its way ever ends. The worker still stops, within
    its grace period and the network timeout after it."""
    host = workers.start("--sleep", "0.1", "--grace", "3")
    private.nap.dispatch(0)
    wait_until(lambda: count(private.app, private.app.store.tables.jobs) == 0,
               what="the worker to run a job")
    # Whatever it has on its way then (a poll every 0.1 s), it has to leave the
    # registry: a statement that never ends, unless bounded.
    stopped_while_frozen(private.app, server, host)


def test_an_idle_worker_stops_within_the_network_timeout_while_its_server_hangs(
        private, server, workers):
    """Nothing runs: the stop waited for the reservation on its way, which a
    hung server never answers, for the whole grace period (10 minutes here)."""
    host = workers.start("--sleep", "0.1", "--grace", "600")
    private.nap.dispatch(0)
    wait_until(lambda: count(private.app, private.app.store.tables.jobs) == 0,
               what="the worker to run a job")
    private.app.dispose()
    server.freeze()
    try:
        # Not a wait for an event: time for the worker's next look for jobs
        # (every 0.1 s) to go out, and hang.
        time.sleep(0.5)
        os.killpg(host.pid, signal.SIGTERM)
        output, _ = host.communicate(timeout=60)  # not a measure: a bound on the grace
    finally:
        server.thaw()
    assert host.returncode == 0, output
    assert "0 running job(s)" in output, output
    assert "stopping without the reservation on its way" in output, output


def stopped_while_frozen(app: Any, server: Any, host: subprocess.Popen[str]) -> str:
    """Freeze ``server``, SIGTERM the worker ``host``; its output once it has
    stopped cleanly (it fails the test after 60 s: it would wait for ever)."""
    app.dispose()  # the test's own connections would be frozen too
    server.freeze()
    try:
        os.killpg(host.pid, signal.SIGTERM)
        output, _ = host.communicate(timeout=60)  # not a measure: a bound on for ever
    finally:
        server.thaw()
    assert host.returncode == 0, output
    assert "Traceback" not in output
    assert "stopped (received SIGTERM)" in output, output
    return output


def test_a_worker_holding_reserved_jobs_stops_on_sigterm_while_its_server_hangs(
        private, server, workers):
    """At SIGTERM the supervisor gives back, on its own thread, the jobs it
    reserved and has not started. On a server that hangs that statement would
    never end, and the supervisor would heed neither the stop nor its running
    jobs' timeouts: it waits the network timeout at most."""
    app, effects, jobs = private.app, private.effects, private.app.store.tables.jobs
    effects.metadata.create_all(app.engine)
    app.dispatch_many([private.nap.prepare(0.01) for _ in range(5)])  # runtimes known:
    private.wait_for_go.dispatch("long")  # jobs are reserved ahead behind this one
    app.dispatch_many([private.nap.prepare(0.01) for _ in range(30)])
    host = workers.start("--sleep", "0.1", "--grace", "3")
    wait_until(lambda: count(app, effects, effects.c.tag == "long") == 1
               and count(app, jobs, jobs.c.reserved_by.is_not(None)) > 1,
               what="jobs reserved behind the long one")
    output = stopped_while_frozen(app, server, host)
    assert "the database is unreachable (give back reserved jobs" in output, output


def test_a_job_is_stopped_at_its_timeout_while_the_supervisor_waits_on_a_hung_server(
        private, server, workers):
    """The supervisor waits on a statement of its own (here the give-back of
    reserved jobs at SIGTERM) for up to the network timeout. Meanwhile a job
    past its timeout is killed at that timeout, not once the wait is over."""
    app, effects, jobs = private.app, private.effects, private.app.store.tables.jobs
    effects.metadata.create_all(app.engine)
    app.dispatch_many([private.nap.prepare(0.01) for _ in range(5)])  # runtimes known:
    private.wait_for_go.dispatch("long")  # jobs are reserved ahead behind these two
    private.spawner.options(timeout=6).dispatch("overdue")
    app.dispatch_many([private.nap.prepare(0.01) for _ in range(30)])
    workers.env["DBQUEUE_NETWORK_TIMEOUT"] = "300"  # a wait that outlasts the test
    host = workers.start("--sleep", "0.1", "--grace", "3", "--concurrency", "2")
    [spawned] = wait_until(lambda: rows(app, effects, effects.c.tag == "overdue"),
                           what="the job that overruns to start")
    wait_until(lambda: count(app, jobs, jobs.c.reserved_by.is_not(None)) > 2,
               what="jobs reserved behind the two running ones")
    app.dispose()
    server.freeze()
    try:
        assert not process_ended(spawned.n), "it timed out before the server hung"
        os.killpg(host.pid, signal.SIGTERM)
        # Not a measure: the job's timeout is 6 s, the supervisor's wait 300 s.
        wait_until(lambda: process_ended(spawned.n), timeout=60,
                   what="the overdue job's program to be killed while the server hangs")
    finally:
        server.thaw()
    output, _ = host.communicate(timeout=120)
    assert host.returncode == 0, output
    assert "Traceback" not in output


@pytest.mark.parametrize("sessions", ["worker", "application"])
def test_a_transaction_cut_off_mid_way_leaves_no_lock_behind(private, island, server, sessions):
    """The client gives up on its socket without a word reaching the server,
    whose session would wait for its next statement, holding its row locks,
    for as long as the server's kernel has nothing to tell it otherwise."""
    if sessions == "application" and server.backend != "postgresql":
        pytest.skip("MariaDB takes no per-session probes: only a worker's sessions are ended")
    app = private.app
    store = app.worker_store() if sessions == "worker" else app.store
    store.engine.dispose()  # every connection from now on: the settings are made at connect
    private.nap.dispatch(0)
    jobs = store.tables.jobs
    with store.engine.connect() as held:
        held.begin()
        assert held.execute(sa.select(jobs.c.id).with_for_update()).all()
        # Not a wait for an event: time for the server's answer to be
        # acknowledged, so that it has nothing in flight whose retransmission,
        # once the path is back, would tell it the client is gone.
        time.sleep(0.5)
        island.cut()
        try:
            error = outcome_within(lambda: held.execute(sa.select(jobs.c.id)).all(), 60)
        finally:
            island.heal()
        assert error is not None

    def taken() -> list[Any]:
        with store.engine.begin() as connection:
            return list(connection.execute(sa.select(jobs.c.id).with_for_update(
                skip_locked=True)).all())

    # Without the server's own limits the lock stays for hours.
    wait_until(taken, timeout=20, what="the cut-off session's lock to go")
