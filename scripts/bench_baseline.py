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
filled with ``dispatch_many``. Timed from the processes' common start, once
connected, to the last one's end. None on servers without SKIP LOCKED (SQLite).
"""

from __future__ import annotations

import json
import multiprocessing
import time
import uuid
from functools import partial
from typing import Any

import sqlalchemy as sa

PROCESSES = 2
BATCH = 100
LEASE = 60.0  # seconds: the lease loop's reservations

# Deadlock, lock wait timeout (MySQL); serialization failure, deadlock (PostgreSQL).
RETRYABLE = {1213, 1205, "40001", "40P01"}

_start = None  # in a baseline process: the barrier that all of them leave together


def _set_start(barrier) -> None:
    global _start
    _start = barrier


def statements(app) -> tuple[str, str]:
    """The SELECT as SQL text for the driver, and the head of the DELETE."""
    jobs = app.store.tables.jobs
    select = (app.store.dialect.claimable(jobs, "default", BATCH)
              .with_for_update(skip_locked=True))
    dialect = app.engine.dialect
    text = str(select.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    return text, f"DELETE FROM {dialect.identifier_preparer.format_table(jobs)} WHERE id IN "


def connect(url: str) -> Any:
    """A raw driver connection, made from the URL the way SQLAlchemy would make it."""
    parsed = sa.make_url(url)
    dialect = sa.create_engine(parsed).dialect  # connects to nothing
    args, kwargs = dialect.create_connect_args(parsed)
    connection = dialect.loaded_dbapi.connect(*args, **kwargs)
    if dialect.name in ("mysql", "mariadb"):
        # dbqueue's own transactions run at READ COMMITTED on MySQL (no gap locks).
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    return connection


def retryable(error: Exception) -> bool:
    code = getattr(error, "sqlstate", None) or (error.args[0] if error.args else None)
    return code in RETRYABLE


def claim_and_delete(connection: Any, select: str, delete: str) -> int:
    """One transaction: the number of jobs it deleted."""
    with connection.cursor() as cursor:
        cursor.execute(select)
        ids = [row[0] for row in cursor.fetchall()]
        if ids:
            cursor.execute(delete + "(" + ",".join(str(int(i)) for i in ids) + ")")
    connection.commit()
    return len(ids)


def drain(url: str, select: str, delete: str) -> tuple[float, float, int, int]:
    """In a baseline process: claim and delete batches until none is left."""
    return _loop(url, lambda connection: retried(
        connection, partial(claim_and_delete, connection, select, delete)))


def _loop(url: str, batch) -> tuple[float, float, int, int]:
    """In a loop's process: run ``batch(connection)``, which returns the jobs it
    did and the transactions it retried, until it does none; return when the
    loop started and ended, the jobs done and the transactions retried."""
    connection = connect(url)
    _start.wait(timeout=120)
    started = time.time()  # the wall clock: comparable across processes
    done = retries = 0
    while True:
        count, tries = batch(connection)
        retries += tries
        if not count:
            break
        done += count
    ended = time.time()
    connection.close()
    return started, ended, done, retries


def timed(target, arguments: list[tuple[Any, ...]], jobs: int, name: str) -> tuple[float, int]:
    """Run ``target`` in one spawned process per item of ``arguments``, all
    started together; the wall-clock seconds from their common start to the
    last end, and the transactions retried. Each must return (started, ended,
    jobs done, retries), and together they must have done ``jobs``."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(arguments), _set_start, (context.Barrier(len(arguments)),)) as pool:
        spans = pool.starmap(target, arguments)
    done = sum(span[2] for span in spans)
    if done != jobs:
        raise SystemExit(f"error: the {name} deleted {done} jobs, expected {jobs}")
    seconds = max(span[1] for span in spans) - min(span[0] for span in spans)
    return seconds, sum(span[3] for span in spans)


def baseline_seconds(app, url: str, jobs: int) -> tuple[float, int] | None:
    """Wall-clock seconds for the loop to empty the ``jobs`` queued jobs, and the
    transactions retried; None on SQLite."""
    if not app.store.dialect.skip_locked:
        return None
    select, delete = statements(app)
    return timed(drain, [(url, select, delete)] * PROCESSES, jobs, "baseline")


# --- the lease loop -------------------------------------------------------------


def lease_statements(app, token: str) -> tuple[str, str, str, str]:
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
    return (text(select), text(lease) + " WHERE id IN ",
            f"DELETE FROM {table} WHERE id IN ", " AND " + text(held))


def retried(connection: Any, transaction) -> tuple[Any, int]:
    """``transaction()``'s result, the transaction tried again as long as the
    server aborts it (see RETRYABLE); and how many times it was retried."""
    retries = 0
    while True:
        try:
            return transaction(), retries
        except Exception as exc:
            if not retryable(exc):
                raise
            connection.rollback()
            retries += 1


def lease(connection: Any, select: str, update: str) -> list[tuple[int, Any]]:
    """One transaction: claim a batch and lease it; its (id, payload) rows."""
    with connection.cursor() as cursor:
        cursor.execute(select)
        rows = [(int(row[0]), row[1]) for row in cursor.fetchall()]
        if rows:
            cursor.execute(update + "(" + ",".join(str(i) for i, _ in rows) + ")")
    connection.commit()
    return rows


def delete_leased(connection: Any, ids: list[int], delete: str, held: str) -> int:
    """One transaction: delete the jobs of ``ids`` still leased by this process;
    how many it deleted."""
    with connection.cursor() as cursor:
        cursor.execute(delete + "(" + ",".join(map(str, ids)) + ")" + held)
        deleted = cursor.rowcount
    connection.commit()
    return deleted


def noop(arguments: Any) -> None:
    """The lease loop's job."""


def lease_drain(url: str, select: str, update: str, delete: str,
                held: str) -> tuple[float, float, int, int]:
    """In a lease loop process: lease, run and delete batches until none is left."""

    def batch(connection: Any) -> tuple[int, int]:
        rows, retries = retried(connection, partial(lease, connection, select, update))
        if not rows:
            return 0, retries
        for _, payload in rows:
            noop(json.loads(payload))
        ids = [i for i, _ in rows]
        deleted, tries = retried(connection, partial(delete_leased, connection, ids, delete, held))
        if deleted != len(ids):
            raise SystemExit(f"error: the lease loop deleted {deleted} of its {len(ids)} jobs")
        return deleted, retries + tries

    return _loop(url, batch)


def lease_baseline_seconds(app, url: str, jobs: int) -> tuple[float, int] | None:
    """Wall-clock seconds for the lease loop to run and delete the ``jobs`` queued
    jobs, and the transactions retried; None on SQLite."""
    if not app.store.dialect.skip_locked:
        return None
    tokens = [f"bench-lease-{i}-{uuid.uuid4().hex[:16]}" for i in range(PROCESSES)]
    arguments = [(url, *lease_statements(app, token)) for token in tokens]
    return timed(lease_drain, arguments, jobs, "lease loop")
