"""The baselines of ./scripts/bench: bare ``SELECT ... FOR UPDATE SKIP LOCKED`` loops.

What a queue on this server can do with no queue library at all: 2 processes,
each with one raw driver connection (psycopg 3, PyMySQL), loop until their
SELECT finds nothing. The bare loop ("baseline") runs

    BEGIN; SELECT id ... LIMIT 100 FOR UPDATE SKIP LOCKED;
    DELETE FROM jobs WHERE id IN (...); COMMIT

and the lease loop ("lease_baseline") does the least a crash-safe queue with
leases must do: the claim is committed before any job runs, so that a crash
leaves a lease that expires (the jobs then run again) rather than jobs lost:

    BEGIN; SELECT id, payload ... LIMIT 100 FOR UPDATE SKIP LOCKED;
    UPDATE jobs SET reserved_by = <token>, reserved_at = <now>,
                    available_at = <now + 60 s> WHERE id IN (...); COMMIT
    for each row: json.loads(payload), then a no-op function
    DELETE FROM jobs WHERE id IN (...) AND reserved_by = <token>; COMMIT

(<token> is the process's own; <now> is the server's clock, as dbqueue writes
it: ``Dialect.now()`` and ``Dialect.now_plus(60.0)``.) Two commits per batch
instead of one, the payloads read and decoded, and the ids sent twice: what
separates it from the bare loop is the price of crash safety, not of a library.

In both, a transaction the server aborts (a deadlock, which InnoDB reports now
and then between such loops) is rolled back and tried again, as dbqueue does,
and counted. The SELECT is dbqueue's own claim query (``Dialect.claimable``:
same WHERE, same ORDER BY, so the same plan on the same index), rendered to
text once with SQLAlchemy for the server's dialect, on the jobs table the bench
filled with ``dispatch_many``.

The loops run in a program of their own (scripts/bench_loops.py: the driver
imported, one process forked per loop), timed two ways: from its launch to its
exit, as the bench times ``dbqueue work`` and PgQueuer's consumer (the wall
clock, start-up included), and from the loops' common start, once connected,
to the last one's end (the loops alone, to set beside the others' figures
without start-up). None on servers without SKIP LOCKED (SQLite).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa

PROCESSES = 2
BATCH = 100
LEASE = 60.0  # seconds: the lease loop's reservations
LOOPS = Path(__file__).resolve().parent / "bench_loops.py"
TIMEOUT_S = 3600  # a loop that hangs ends the bench rather than holding it forever


class Timing(NamedTuple):
    """One run of a loop program: its seconds from launch to exit, the loops'
    seconds alone, and the transactions the server aborted (retried)."""

    seconds: float
    loop_seconds: float
    retries: int


def statements(app) -> list[str]:
    """The SELECT as SQL text for the driver, and the head of the DELETE."""
    jobs = app.store.tables.jobs
    select = (app.store.dialect.claimable(jobs, "default", BATCH)
              .with_for_update(skip_locked=True))
    dialect = app.engine.dialect
    text = str(select.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    return [text, f"DELETE FROM {dialect.identifier_preparer.format_table(jobs)} WHERE id IN "]


def launch(url: str, mode: str, per_process: list[list[str]], jobs: int, name: str) -> Timing:
    """Run the loop program, one process per item of ``per_process`` (each that
    process's statements); together they must delete ``jobs`` jobs."""
    parsed = sa.make_url(url)
    dialect = sa.create_engine(parsed).dialect  # connects to nothing
    args, kwargs = dialect.create_connect_args(parsed)
    # Less SQLAlchemy's own type adapters (psycopg's "context"): the loops read
    # only ids and text, which the driver's defaults convert.
    kwargs = {key: value for key, value in kwargs.items() if key != "context"}
    spec = {"driver": dialect.loaded_dbapi.__name__, "args": list(args), "kwargs": kwargs,
            "read_committed": dialect.name in ("mysql", "mariadb"), "mode": mode,
            "statements": per_process}
    started = time.perf_counter()
    # A session of its own: on a timeout, its loop processes are killed with it.
    with subprocess.Popen([sys.executable, str(LOOPS)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, start_new_session=True) as program:
        try:
            output, _ = program.communicate(json.dumps(spec), timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(program.pid, signal.SIGKILL)
            raise SystemExit(f"error: the {name} ran for more than {TIMEOUT_S} s") from None
    seconds = time.perf_counter() - started
    if program.returncode:
        raise SystemExit(f"error: the {name} failed (exit code {program.returncode})")
    report = json.loads(output)
    if report["done"] != jobs:
        raise SystemExit(f"error: the {name} deleted {report['done']} jobs, expected {jobs}")
    return Timing(seconds, report["ended"] - report["started"], report["retries"])


def baseline_seconds(app, url: str, jobs: int) -> Timing | None:
    """The bare loop's timing as it empties the ``jobs`` queued jobs; None on SQLite."""
    if not app.store.dialect.skip_locked:
        return None
    return launch(url, "bare", [statements(app)] * PROCESSES, jobs, "baseline")


# --- the lease loop -------------------------------------------------------------


def lease_statements(app, token: str) -> list[str]:
    """The lease loop's SQL for the process whose reservations carry ``token``:
    the SELECT of ids and payloads, the head of the UPDATE that leases them and
    the head and tail of the DELETE (the ids go between each head and tail)."""
    jobs = app.store.tables.jobs
    dialect = app.store.dialect
    select = (dialect.claimable(jobs, "default", BATCH)
              .with_only_columns(jobs.c.id, jobs.c.payload)
              .with_for_update(skip_locked=True))
    lease = sa.update(jobs).values(reserved_by=token, reserved_at=dialect.now(),
                                   available_at=dialect.now_plus(LEASE))
    held = jobs.c.reserved_by == token

    def text(clause: Any) -> str:
        return str(clause.compile(dialect=app.engine.dialect,
                                  compile_kwargs={"literal_binds": True}))

    table = app.engine.dialect.identifier_preparer.format_table(jobs)
    return [text(select), text(lease) + " WHERE id IN ",
            f"DELETE FROM {table} WHERE id IN ", " AND " + text(held)]


def lease_baseline_seconds(app, url: str, jobs: int) -> Timing | None:
    """The lease loop's timing as it runs and deletes the ``jobs`` queued jobs;
    None on SQLite."""
    if not app.store.dialect.skip_locked:
        return None
    tokens = [f"bench-lease-{i}-{uuid.uuid4().hex[:16]}" for i in range(PROCESSES)]
    return launch(url, "lease", [lease_statements(app, token) for token in tokens], jobs,
                  "lease loop")
