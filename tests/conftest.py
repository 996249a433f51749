"""Every backend test runs on SQLite, PostgreSQL and MariaDB/MySQL, on real servers.

URLs come from DBQUEUE_TEST_POSTGRES_URL and DBQUEUE_TEST_MYSQL_URL (defaults:
the local servers). An unreachable server skips its tests, except under CI=true,
where it fails them.
"""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dbqueue import DBQueueError
from dbqueue.store import create_engine
from dbqueue.store.dialects import dialect_for
from tests import jobapp

ROOT = Path(__file__).resolve().parent.parent
# Lets two runs share a server; each of pytest-xdist's workers (-n 2) gets
# tables of its own too.
PREFIX = os.environ.get("DBQUEUE_TEST_PREFIX", "dbqt_") + (
    f"{os.environ['PYTEST_XDIST_WORKER']}_" if os.environ.get("PYTEST_XDIST_WORKER") else "")
URLS = {
    "postgresql": os.environ.get("DBQUEUE_TEST_POSTGRES_URL",
                                 "postgresql://postgres@127.0.0.1:5432/test"),
    "mysql": os.environ.get("DBQUEUE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_reachable: dict[str, str | None] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts real workers is slow: ``-m "not slow"`` is the fast subset."""
    for item in items:
        if "workers" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def _unreachable_reason(backend: str) -> str | None:
    if backend not in _reachable:
        try:
            engine = create_engine(URLS[backend])
            try:
                with engine.connect() as connection:
                    dialect_for(engine.dialect).check_server(connection)
                _reachable[backend] = None
            finally:
                engine.dispose()
        except (sa.exc.DBAPIError, DBQueueError) as exc:
            reason = getattr(exc, "orig", None) or exc
            _reachable[backend] = f"{backend} at {URLS[backend]} is unusable: {reason}"
    return _reachable[backend]


@pytest.fixture(scope="session", params=["sqlite", "postgresql", "mysql"])
def backend_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    backend = request.param
    if backend == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'queue.db'}"
    reason = _unreachable_reason(backend)
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: every backend must be tested)")
        pytest.skip(reason)
    return URLS[backend]


@pytest.fixture(scope="session")
def schema(backend_url: str) -> Iterator[str]:
    """dbqueue's tables (and the tests' effects table), created once per backend."""
    jobs = jobapp.build(backend_url, PREFIX)
    engine = jobs.app.engine
    if jobs.app.database.missing_file() is None:  # (a new SQLite file: nothing to clear)
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {PREFIX}effects"))
        jobs.app.downgrade("base")  # whatever an interrupted run left behind
    jobs.app.migrate()
    jobs.effects.metadata.create_all(engine)
    yield backend_url
    jobs.effects.metadata.drop_all(engine)
    jobs.app.downgrade("base")
    jobs.app.dispose()


@pytest.fixture
def jobs(schema: str) -> Iterator[jobapp.JobApp]:
    """The test jobs on a clean queue."""
    built = jobapp.build(schema, PREFIX)
    tables = built.app.store.tables
    with built.app.engine.begin() as connection:
        for table in (built.effects, tables.jobs, tables.failed_jobs, tables.job_outcomes,
                      tables.cache_locks, tables.queue_workers, tables.job_circuits):
            connection.execute(table.delete())
    yield built
    built.app.dispose()


@pytest.fixture
def app(jobs: jobapp.JobApp) -> Any:
    return jobs.app


def worker_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBQUEUE_")}
    env.update(DBQUEUE_URL=url, DBQUEUE_TABLE_PREFIX=PREFIX, PYTHONPATH=str(ROOT), **extra)
    return env


@dataclass
class Workers:
    """Starts real ``dbqueue work`` processes (each in its own process group)."""

    url: str
    started: list[subprocess.Popen[str]]
    app: str = "tests.jobapp:app"
    env: dict[str, str] = field(default_factory=dict)
    """More environment variables for the workers (DBQUEUE_* are not inherited)."""

    def start(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "dbqueue", "work", "--app", self.app, *args],
            cwd=ROOT, env=worker_env(self.url, **self.env), text=True, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.started.append(process)
        return process

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a worker to completion (give it --stop-when-empty, --once or --max-jobs)."""
        process = self.start(*args)
        output, _ = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, output, "")

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def workers(jobs: jobapp.JobApp, schema: str) -> Iterator[Workers]:
    running = Workers(schema, [])
    yield running
    running.kill_all()


def wait_until(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` is gone, or a zombie nobody has reaped yet."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def count(app: Any, table: sa.Table, *where: Any) -> int:
    return int(app.store.read(lambda c: c.execute(
        sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()))


def rows(app: Any, table: sa.Table, *where: Any) -> list[Any]:
    return app.store.read(
        lambda c: c.execute(sa.select(table).where(*where).order_by(table.c.id)).all())


def stopped_while_running(jobs: jobapp.JobApp, workers: Workers, tag: str, *args: str,
                          stop: int = signal.SIGTERM) -> str:
    """Start a worker with ``args``, send its process group ``stop`` (SIGTERM,
    as systemd does) once a job has noted ``tag``, and return its output; it
    must exit 0."""
    process = workers.start(*args)
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == tag),
               what=f"the job noting {tag!r} to start")
    os.killpg(process.pid, stop)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    return output


def read_until(process: subprocess.Popen[str], text: str, timeout: float = 60) -> str:
    """A running worker's output up to at least the first line holding
    ``text``; the rest stays in the pipe (for ``communicate``). Fails after
    ``timeout`` seconds, killing the worker, rather than wait for ever.

    It reads the pipe's descriptor itself: a text file object would read ahead
    into its own buffer, and ``communicate(timeout=...)`` reads the descriptor,
    so the lines in that buffer would be lost."""
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        while chunk := os.read(descriptor, 65536):
            seen.append(decoder.decode(chunk))
            if text in "".join(seen):
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found.is_set():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        reader.join(10)
        raise AssertionError(f"the worker did not log {text!r} within {timeout} s:\n"
                             + "".join(seen))
    return "".join(seen)
