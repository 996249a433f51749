"""The latency group of ./scripts/bench: how soon an idle worker starts a new job,
and what idle workers cost the database.

Pickup latency: one ``dbqueue work -c C`` with its default options (no --sleep)
runs one warm-up ``stamp`` job, then idles for SETTLE_S; then come SAMPLES lone
``stamp.dispatch(i)``, spaced at random (a fixed seed) GAP_S apart. Each job
appends time.time() at its start to a file; its latency is that minus the
time.time() taken right after its dispatch returned, committed. Whatever the
worker does to learn of new jobs (polling, notifications) is what is measured.

Idle cost: IDLE_WORKERS ``dbqueue work -c 1`` with default options, connected
through a relay that counts the statements they send (scripts/bench_relay.py),
once all have registered and SETTLE_S more passed, for IDLE_WINDOW_S:
statements per second. Beside it, the server's own counter over the same window
(MySQL/MariaDB: ``Questions``, statements; PostgreSQL: the database's
``xact_commit``, transactions) per second, less its rate over a window as long
just before the workers started: the same cost on a server of its own, mere
noise on a shared one. None on SQLite.
"""

from __future__ import annotations

import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

STAMPS = "DBQUEUE_BENCH_STAMPS"  # where bench_app's stamp job writes
SAMPLES = 50
GAP_S = (0.05, 0.3)
SEED = 1
SETTLE_S = 3.0
WAIT_S = 120.0  # longest wait for a worker to start or run the stamped jobs
IDLE_WORKERS = 10
IDLE_WINDOW_S = 10.0

COUNTERS = {  # by SQLAlchemy dialect name
    "mysql": "SHOW GLOBAL STATUS LIKE 'Questions'",
    "mariadb": "SHOW GLOBAL STATUS LIKE 'Questions'",
    "postgresql": "SELECT 'xact_commit', xact_commit FROM pg_stat_database"
                  " WHERE datname = current_database()",
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def stop(workers: list[subprocess.Popen]) -> None:
    """Ask the workers to stop as an operator would (SIGTERM), then wait for them."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def read_stamps(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    return {int(i): float(t) for i, t in (line.split() for line in lines if line)}


def wait_for(path: Path, wanted: set[int], worker: subprocess.Popen) -> dict[int, float]:
    """The start times of the ``wanted`` stamp jobs, once all have started."""
    deadline = time.monotonic() + WAIT_S
    while not wanted <= (stamps := read_stamps(path)).keys():
        if worker.poll() is not None:
            raise SystemExit(f"error: the worker exited ({worker.returncode}) before "
                             f"running {len(wanted - stamps.keys())} stamp job(s)")
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {len(wanted - stamps.keys())} stamp job(s) did not "
                             f"start within {WAIT_S:.0f} s")
        time.sleep(0.01)
    return stamps


def pickup_latency(stamp, command: list[str], env: dict[str, str]) -> dict[str, float]:
    """p50 and p99, in ms, of dispatch-commit to job-start on an idle worker."""
    with tempfile.TemporaryDirectory(prefix="dbqueue-bench-") as tmp:
        path = Path(tmp) / "stamps"
        worker = subprocess.Popen(command, env={**env, STAMPS: str(path)}, stdout=sys.stderr)
        try:
            stamp.dispatch(-1)  # also connects this process before the samples
            wait_for(path, {-1}, worker)
            time.sleep(SETTLE_S)  # idle, as between two bursts of work
            say(f"{SAMPLES} lone dispatches, {GAP_S[0]}-{GAP_S[1]} s apart, to an idle worker")
            rng = random.Random(SEED)
            dispatched: dict[int, float] = {}
            for i in range(SAMPLES):
                time.sleep(rng.uniform(*GAP_S))
                stamp.dispatch(i)
                dispatched[i] = time.time()
            started = wait_for(path, set(dispatched), worker)
        finally:
            stop([worker])
    latencies = [1000 * (started[i] - dispatched[i]) for i in dispatched]
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"latency_p50_ms": round(statistics.median(latencies), 1),
            "latency_p99_ms": round(cuts[98], 1),
            "latency_max_ms": round(max(latencies), 1)}


def counter(app) -> int:
    with app.engine.connect() as connection:  # a new transaction: fresh statistics
        return int(connection.exec_driver_sql(COUNTERS[app.engine.dialect.name]).one()[1])


def idle_cost(app, command: list[str], env: dict[str, str]) -> dict[str, float | None]:
    """Statements per second that IDLE_WORKERS idle workers send (counted by a
    relay), and the server's counter per second they add (see the docstring)."""
    if app.engine.dialect.name not in COUNTERS:
        return {"idle_10_workers_qps": None, "idle_10_workers_server_qps": None}
    from bench_relay import Relay

    say(f"the server's load over {IDLE_WINDOW_S:.0f} s, then with {IDLE_WORKERS} idle workers")
    before = counter(app)
    time.sleep(IDLE_WINDOW_S)
    background = counter(app) - before
    relay = Relay(app.engine.url)
    env = {**env, "DBQUEUE_URL": relay.url.render_as_string(hide_password=False)}
    workers: list[subprocess.Popen] = []
    try:
        workers = [subprocess.Popen(command, env=env, stdout=sys.stderr)
                   for _ in range(IDLE_WORKERS)]
        wait_registered(app, workers)
        time.sleep(SETTLE_S)
        before, sent = counter(app), relay.statements
        time.sleep(IDLE_WINDOW_S)
        loaded, sent = counter(app) - before, relay.statements - sent
    finally:
        stop(workers)
        relay.close()
    return {"idle_10_workers_qps": round(sent / IDLE_WINDOW_S, 1),
            "idle_10_workers_server_qps": round((loaded - background) / IDLE_WINDOW_S, 1)}


def wait_registered(app, workers: list[subprocess.Popen]) -> None:
    """Return once every worker has its row in queue_workers."""
    registered = app.store.tables.queue_workers
    deadline = time.monotonic() + WAIT_S
    while app.store.read(lambda c: c.execute(
            sa.select(sa.func.count()).select_from(registered)).scalar_one()) < len(workers):
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            raise SystemExit("error: the idle workers did not all start")
        time.sleep(0.1)
