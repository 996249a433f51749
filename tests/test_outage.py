"""The database goes away under a running worker, or is away when it starts:
one line says so, one says it is back, and nothing is lost or logged twice.

These tests start a PostgreSQL server of their own (scripts/chaos_servers.py,
on a spare port under a temporary directory) and stop it; the shared server is
never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import jobapp
from tests.conftest import PREFIX, ROOT, Workers, count, read_until, wait_until

sys.path.insert(0, str(ROOT / "scripts"))
from chaos_servers import Postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    if not Postgres.installed():
        pytest.skip("PostgreSQL's server programs are not installed")
    # Not pytest's tmp_path: the server runs as another user, who must be able
    # to reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="dbqueue-outage-"))
    root.chmod(0o755)
    own = Postgres(root / "postgresql")
    try:
        yield own
    finally:
        own.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private(server: Postgres, request: pytest.FixtureRequest) -> Iterator[jobapp.JobApp]:
    built = jobapp.build(server.database(request.node.name[5:45].lower()), PREFIX)
    built.app.migrate()
    yield built
    built.app.dispose()


@pytest.fixture
def workers(private: jobapp.JobApp) -> Iterator[Workers]:
    running = Workers(private.app.settings.url, [])
    yield running
    running.kill_all()


def outage_lines(output: str) -> tuple[int, int]:
    return output.count("the database is unreachable"), output.count("reachable again, after")


def test_an_outage_is_one_line_down_one_back_and_each_outcome_logged_once(
        private, server, workers):
    private.app.dispatch_many([private.nap.prepare(0.05) for _ in range(120)])
    host = workers.start("-v", "--concurrency", "2", "--sleep", "0.1")
    table = private.app.store.tables.jobs
    wait_until(lambda: count(private.app, table) < 100, what="the worker to get going")
    private.app.dispose()
    server.stop()
    try:
        log = read_until(host, "the database is unreachable")
    finally:
        server.start()
    wait_until(lambda: count(private.app, table) == 0, timeout=120, what="every job to complete")
    os.killpg(host.pid, signal.SIGTERM)
    output, _ = host.communicate(timeout=60)
    output = log + output
    assert host.returncode == 0, output
    assert outage_lines(output) == (1, 1), output
    assert "[SQL:" not in output and "Traceback" not in output
    completed = Counter(re.findall(r"job (\d+) \(nap\) completed in", output))
    assert len(completed) == 120 and set(completed.values()) == {1}, completed
    assert count(private.app, private.app.store.tables.failed_jobs) == 0


def test_a_worker_started_while_the_database_is_away_waits_for_it(private, server, workers):
    private.app.dispose()
    server.stop()
    try:
        host = workers.start("--sleep", "0.1")
        log = read_until(host, "the database is unreachable (start:")
    finally:
        server.start()
    private.nap.dispatch(0)
    wait_until(lambda: count(private.app, private.app.store.tables.jobs) == 0,
               what="the job to run once the database is back")
    os.killpg(host.pid, signal.SIGTERM)
    output, _ = host.communicate(timeout=60)
    output = log + output
    assert host.returncode == 0, output
    assert outage_lines(output) == (1, 1), output
    assert "Traceback" not in output
