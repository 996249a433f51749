"""The baseline of ./scripts/bench: a bare ``SELECT ... FOR UPDATE SKIP LOCKED`` loop.

What a queue on this server can do with no queue library at all: 2 processes,
each with one raw driver connection (psycopg 3, PyMySQL), loop

    BEGIN; SELECT id ... LIMIT 100 FOR UPDATE SKIP LOCKED;
    DELETE FROM jobs WHERE id IN (...); COMMIT

until their SELECT finds nothing; a transaction the server aborts (a deadlock,
which InnoDB reports now and then between such loops) is rolled back and tried
again, as dbqueue does, and counted. The SELECT is dbqueue's own claim query
(``Dialect.claimable``: same WHERE, same ORDER BY, so the same plan on the same
index), rendered to text once, on the jobs table the bench filled with
``dispatch_many``. Timed from the processes' common start, once connected, to
the last one's end. None on servers without SKIP LOCKED (SQLite).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import sqlalchemy as sa

PROCESSES = 2
BATCH = 100

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
    """In a baseline process: claim and delete batches until none is left; return
    when it started and ended, the jobs deleted and the transactions retried."""
    connection = connect(url)
    _start.wait(timeout=120)
    started = time.time()  # the wall clock: comparable across processes
    deleted = retries = 0
    while True:
        try:
            batch = claim_and_delete(connection, select, delete)
        except Exception as exc:
            if not retryable(exc):
                raise
            connection.rollback()
            retries += 1
            continue
        if not batch:
            break
        deleted += batch
    ended = time.time()
    connection.close()
    return started, ended, deleted, retries


def baseline_seconds(app, url: str, jobs: int) -> tuple[float, int] | None:
    """Wall-clock seconds for the loop to empty the ``jobs`` queued jobs, and the
    transactions retried; None on SQLite."""
    if not app.store.dialect.skip_locked:
        return None
    select, delete = statements(app)
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES, _set_start, (context.Barrier(PROCESSES),)) as pool:
        spans = pool.starmap(drain, [(url, select, delete)] * PROCESSES)
    deleted = sum(span[2] for span in spans)
    if deleted != jobs:
        raise SystemExit(f"error: the baseline deleted {deleted} jobs, expected {jobs}")
    seconds = max(span[1] for span in spans) - min(span[0] for span in spans)
    return seconds, sum(span[3] for span in spans)
