"""Measure dbqueue's throughput on one database; run it through ./scripts/bench.

    ./scripts/bench [--url URL] [--jobs N] [--concurrency C] [--table-prefix P]

Every table it uses carries its own prefix (default ``bench_``): they are
dropped and created at the start and dropped at the end, so real data is never
touched. It measures, with the no-op job of scripts/bench_app.py:

  enqueue_single_per_s        ``noop.dispatch(i)``, each in its own transaction,
                              for min(N, 2000) jobs (then the tables are reset)
  enqueue_bulk_per_s          ``app.dispatch_many`` of N jobs in chunks of 5,000
                              (only the calls are timed, not preparing the jobs)
  startup_s                   ``dbqueue work --stop-when-empty`` on an empty queue:
                              the worker's start-up and shutdown
  process_per_s               N jobs / wall clock of ``dbqueue work --concurrency C
                              --stop-when-empty --sleep 0.05`` from start to exit
  process_per_s_excl_startup  the same without startup_s (null if that leaves no time)

After processing, the jobs and failed_jobs tables must both be empty. Prints one
JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

SCRIPTS = Path(__file__).resolve().parent
SINGLE_SAMPLE = 2000
CHUNK = 5000


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reset(app) -> None:
    """Drop the bench tables (if any) and create them afresh."""
    try:
        app.downgrade("base")
    except Exception as exc:  # a fresh database: nothing to drop
        say(f"(downgrade skipped: {type(exc).__name__})")
    app.migrate()


def run_worker(concurrency: int) -> float:
    """Run a worker until the queue is empty; return its wall-clock seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "dbqueue", "work", "--app", "bench_app:app",
               "--concurrency", str(concurrency), "--stop-when-empty", "--sleep", "0.05"]
    started = time.perf_counter()
    # The worker's stdout goes to stderr too: stdout carries only the result.
    subprocess.run(command, env=env, check=True, stdout=sys.stderr)
    return time.perf_counter() - started


def counts(app) -> tuple[int, int]:
    """Jobs still in the jobs table, and failed jobs."""
    status = app.admin.status()
    return (sum(q.ready + q.delayed + q.reserved for q in status),
            sum(q.failed for q in status))


def bench(app, noop, jobs: int, concurrency: int) -> dict[str, float | None]:
    reset(app)
    sample = min(jobs, SINGLE_SAMPLE)
    say(f"single dispatch of {sample} jobs")
    started = time.perf_counter()
    for i in range(sample):
        noop.dispatch(i)
    single_s = time.perf_counter() - started
    reset(app)  # process exactly the bulk jobs below

    say("worker start-up and shutdown on an empty queue")
    startup_s = run_worker(concurrency)

    say(f"bulk dispatch of {jobs} jobs")
    bulk_s = 0.0
    for start in range(0, jobs, CHUNK):
        prepared = [noop.prepare(i) for i in range(start, min(start + CHUNK, jobs))]
        started = time.perf_counter()
        app.dispatch_many(prepared)
        bulk_s += time.perf_counter() - started
    if counts(app) != (jobs, 0):
        raise SystemExit(f"error: expected {jobs} queued jobs, found {counts(app)} (jobs, failed)")

    say(f"processing {jobs} jobs with concurrency {concurrency}")
    process_s = run_worker(concurrency)
    left, failed = counts(app)
    if left or failed:
        raise SystemExit(f"error: after the worker, {left} job(s) left and {failed} failed")

    working_s = process_s - startup_s  # <= 0 when too few jobs to tell from start-up noise
    return {
        "enqueue_single_per_s": round(sample / single_s, 1),
        "enqueue_bulk_per_s": round(jobs / bulk_s, 1),
        "process_per_s": round(jobs / process_s, 1),
        "process_per_s_excl_startup": round(jobs / working_s, 1) if working_s > 0 else None,
        "startup_s": round(startup_s, 3),
        "process_s": round(process_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL [default: SQLite in a temporary directory]")
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--table-prefix", default="bench_")
    args = parser.parse_args()
    if args.jobs < 1 or args.concurrency < 1:
        parser.error("--jobs and --concurrency must be at least 1")
    if not args.table_prefix:
        parser.error("--table-prefix must not be empty: the bench drops its tables")

    with tempfile.TemporaryDirectory(prefix="dbqueue-bench-") as tmp:
        # bench_app's App, and the workers, read where the queue is from here.
        os.environ["DBQUEUE_URL"] = args.url or f"sqlite:///{tmp}/bench.db"
        os.environ["DBQUEUE_TABLE_PREFIX"] = args.table_prefix
        os.environ.pop("DBQUEUE_APP", None)
        sys.path.insert(0, str(SCRIPTS))
        from bench_app import app, noop

        try:
            results = bench(app, noop, args.jobs, args.concurrency)
            dialect = app.engine.dialect
            backend = "mariadb" if getattr(dialect, "is_mariadb", False) else dialect.name
        finally:
            app.downgrade("base")  # keeps Alembic's (empty) version table: drop it too
            version = f"{args.table_prefix}dbqueue_alembic_version"
            sa.Table(version, sa.MetaData()).drop(app.engine, checkfirst=True)
            app.dispose()
    print(json.dumps({"backend": backend, "jobs": args.jobs,
                      "concurrency": args.concurrency, **results}))


if __name__ == "__main__":
    main()
