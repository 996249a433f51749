"""The pgqueuer group of ./scripts/bench: PgQueuer on the same server (PostgreSQL only).

PgQueuer (https://pypi.org/project/pgqueuer/) is another PostgreSQL job queue
for Python, built on asyncio. This measures it the way the bench measures
``dbqueue work``, at what its own documentation and benchmark tool
(tools/benchmark.py, "drain" strategy) give as its fastest setup:

- PgQueuer 1.6.0 with asyncpg (its docs measure asyncpg at about twice
  psycopg's rate) on uvloop (as its benchmark tool runs), in a virtualenv of its
  own, ``.venv-bench-pgqueuer`` at the repository root, made at first use with
  ``pip install pgqueuer[asyncpg]==1.6.0`` (the asyncpg extra; uvloop is a
  dependency);
- its tables in a database of their own, ``pgq_bench`` on the same server
  (created if missing), so they never meet dbqueue's; installed afresh
  (``Queries.install()``, its ``pgq install``: default, "durable", logged
  tables like dbqueue's) before each run, dropped at the end;
- N jobs queued with its bulk enqueue (``Queries.enqueue`` of lists, 5,000 a
  call, as dbqueue's ``dispatch_many`` gets them in the bench), each with a
  small JSON payload, then ANALYZE of its table, as the bench does for dbqueue's;
- one consumer process running 2 ``QueueManager``s at once (CONSUMERS), each
  on its own asyncpg connection (its benchmark's "dequeue" tasks, 5 by default
  there; its docs advise a plain connection per QueueManager, not a pool, and
  a QueueManager sends its statements one at a time on its connection). On a
  2-core machine (2026-12-03, busy with other work, one run each on 20,000
  jobs), 1, 2, 4 and 5 managers gave ~5,300, ~7,100, ~6,700 and ~4,700 jobs/s,
  and 2 consumer processes of one manager each ~4,500: hence 2. Each manager runs
  ``QueueManager.run(batch_size=100, dequeue_timeout=0.05 s,
  mode=QueueExecutionMode.drain)``: batches of 100 as the bare loops and
  dbqueue take them, no cap on concurrent tasks (``max_concurrent_tasks=None``),
  a poll after 0.05 s without a notice as ``dbqueue work --sleep 0.05`` does (it
  matters only at the very end, when a manager waits for the others' last
  jobs), and drain mode: each manager returns once no job is left queued and
  its own jobs are done and recorded;
- the job, registered as an ``async def`` entrypoint (sync ones run in a
  thread pool), does nothing but count itself (PgQueuer hands it the payload
  as bytes, undecoded, where dbqueue's worker decodes each job's JSON).

What is timed, as ``dbqueue work --stop-when-empty`` is (see bench.py):

  pgqueuer_s                  wall clock of the consumer process, from its spawn
                              (interpreter start, imports, connections, schema
                              check, LISTEN) until it exits after every manager
                              returned: all N jobs run and their completion
                              written (rows deleted from the queue table, logged
                              in its log table, which PgQueuer does in batches)
  pgqueuer_per_s              N / pgqueuer_s
  pgqueuer_startup_s          the same consumer process on an empty queue: its
                              start-up and shutdown
  pgqueuer_per_s_excl_startup N / (pgqueuer_s - pgqueuer_startup_s)
  pgqueuer_enqueue_bulk_per_s N / seconds in its bulk enqueue calls

Afterwards the queue table must be empty and the consumer must have run
exactly N jobs. This file is both the bench's side (``bench_pgqueuer``, in
dbqueue's virtualenv) and, run as a script, PgQueuer's side (in its own).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-bench-pgqueuer"
VERSION = "1.6.0"
REQUIREMENT = f"pgqueuer[asyncpg]=={VERSION}"
DATABASE = "pgq_bench"
CONSUMERS = 2  # QueueManagers in the consumer process, each on its own connection
BATCH_SIZE = 100
DEQUEUE_TIMEOUT_S = 0.05
CHUNK = 5000  # jobs per bulk enqueue call
ENTRYPOINT = "noop"
SETTINGS = (f"PgQueuer {VERSION}, asyncpg, uvloop, {CONSUMERS} QueueManagers in one process, "
            f"batch_size={BATCH_SIZE}, dequeue_timeout={DEQUEUE_TIMEOUT_S}s, drain mode")


# --- the bench's side (dbqueue's virtualenv) ----------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def venv_python() -> Path:
    """PgQueuer's virtualenv's interpreter, the virtualenv made or updated first
    if it does not hold REQUIREMENT (the stamp records what was installed)."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".bench-stamp"
    if stamp.is_file() and stamp.read_text() == REQUIREMENT and python.exists():
        return python
    if not python.exists():
        say(f"creating {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True,
                       stdout=sys.stderr)
        # Ignored by git whatever the repository's .gitignore says (as Python
        # 3.13's venv does by itself).
        (VENV / ".gitignore").write_text("*\n")
    say(f"installing {REQUIREMENT} into {VENV}")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    REQUIREMENT], check=True, stdout=sys.stderr)
    stamp.write_text(REQUIREMENT)
    return python


def bench_database(url: str) -> Any:
    """Create the database DATABASE beside the one of ``url`` if missing (the
    same server, user and password); its URL."""
    import sqlalchemy as sa

    parsed = sa.make_url(url)
    engine = sa.create_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            exists = connection.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                        {"name": DATABASE}).scalar()
            if not exists:
                say(f"creating the database {DATABASE}")
                connection.exec_driver_sql(f"CREATE DATABASE {DATABASE}")
    finally:
        engine.dispose()
    return parsed.set(database=DATABASE)


def queued(url: Any) -> int:
    """The rows in PgQueuer's queue table (in the database of ``url``)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            # PgQueuer's default name for it (PGQUEUER_* settings could change it).
            return int(connection.exec_driver_sql("SELECT count(*) FROM pgqueuer").scalar_one())
    finally:
        engine.dispose()


def side(python: Path, *arguments: str) -> dict[str, Any]:
    """Run this file as PgQueuer's side with ``arguments``; the JSON it printed."""
    done = subprocess.run([str(python), __file__, *arguments], check=True,
                          stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def asyncpg_dsn(url: Any) -> str:
    """The DSN that asyncpg takes for the SQLAlchemy URL ``url``."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def consume(python: Path, url: Any, jobs: int) -> float:
    """The consumer's wall clock, spawn to exit; it must have run ``jobs`` jobs
    and left none in the queue table."""
    started = time.perf_counter()
    processed = side(python, "consume", asyncpg_dsn(url))["processed"]
    seconds = time.perf_counter() - started
    left = queued(url)
    if processed != jobs or left:
        raise SystemExit(f"error: PgQueuer ran {processed} jobs (expected {jobs}) "
                         f"and left {left} in its queue table")
    return seconds


def bench_pgqueuer(url: str, jobs: int) -> dict[str, Any]:
    """PgQueuer's figures (see the module's docstring); null on other servers than
    PostgreSQL."""
    from sqlalchemy import make_url

    names = ("pgqueuer_per_s", "pgqueuer_per_s_excl_startup", "pgqueuer_s",
             "pgqueuer_startup_s", "pgqueuer_enqueue_bulk_per_s")
    if make_url(url).get_backend_name() != "postgresql":
        say("(pgqueuer: PostgreSQL only)")
        return dict.fromkeys(names)
    python = venv_python()
    database = bench_database(url)
    dsn = asyncpg_dsn(database)
    try:
        say(f"PgQueuer start-up and shutdown on an empty queue ({SETTINGS})")
        side(python, "reset", dsn)
        startup_s = consume(python, database, 0)
        say(f"PgQueuer: bulk enqueue of {jobs} jobs, then processing them")
        side(python, "reset", dsn)
        enqueue_s = side(python, "enqueue", dsn, str(jobs))["seconds"]
        seconds = consume(python, database, jobs)
    finally:
        side(python, "uninstall", dsn)
    working_s = seconds - startup_s
    return {"pgqueuer_per_s": round(jobs / seconds, 1),
            "pgqueuer_per_s_excl_startup": round(jobs / working_s, 1) if working_s > 0 else None,
            "pgqueuer_s": round(seconds, 3), "pgqueuer_startup_s": round(startup_s, 3),
            "pgqueuer_enqueue_bulk_per_s": round(jobs / enqueue_s, 1)}


# --- PgQueuer's side (its own virtualenv) -------------------------------------


async def connected(dsn: str, step, *arguments: Any) -> Any:
    """``step(store, *arguments)`` with a ``Queries`` on a connection of its own,
    closed afterwards (PgQueuer's drivers leave their connection open)."""
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    connection = await asyncpg.connect(dsn=dsn)
    try:
        return await step(Queries(AsyncpgDriver(connection)), *arguments)
    finally:
        await connection.close()


async def reset(store: Any) -> dict[str, Any]:
    """PgQueuer's tables afresh."""
    await uninstall(store)
    await store.install()
    return {}


async def uninstall(store: Any) -> dict[str, Any]:
    if await store.schema_is_installed():
        await store.uninstall()
    return {}


async def enqueue(store: Any, jobs: str) -> dict[str, Any]:
    """Queue ``jobs`` jobs with the bulk enqueue; the seconds in its calls."""
    total, seconds = int(jobs), 0.0
    for start in range(0, total, CHUNK):
        count = min(CHUNK, total - start)
        payloads = [json.dumps({"args": [i]}).encode() for i in range(start, start + count)]
        started = time.perf_counter()
        await store.enqueue([ENTRYPOINT] * count, payloads, [0] * count)
        seconds += time.perf_counter() - started
    await store.driver.execute(f"ANALYZE {store.qbe.settings.queue_table}")
    return {"seconds": seconds}


async def consume_all(dsn: str) -> dict[str, Any]:
    """Run CONSUMERS QueueManagers in drain mode until the queue is empty; how
    many jobs they ran."""
    from datetime import timedelta

    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.types import QueueExecutionMode

    processed = 0

    async def noop(job: Job) -> None:
        nonlocal processed
        processed += 1

    async def run(store: Any) -> None:
        manager = QueueManager(store)
        manager.entrypoint(ENTRYPOINT)(noop)
        await manager.run(batch_size=BATCH_SIZE, mode=QueueExecutionMode.drain,
                          dequeue_timeout=timedelta(seconds=DEQUEUE_TIMEOUT_S))

    await asyncio.gather(*(connected(dsn, run) for _ in range(CONSUMERS)))
    return {"processed": processed}


def main() -> None:
    import uvloop

    command, dsn, *arguments = sys.argv[1:]
    if command == "consume":
        result = uvloop.run(consume_all(dsn))
    else:
        steps = {"reset": reset, "uninstall": uninstall, "enqueue": enqueue}
        result = uvloop.run(connected(dsn, steps[command], *arguments))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
