"""The baselines' own program: the bare and the lease loop, run as a user would run them.

scripts/bench_baseline.py builds the loops' SQL with SQLAlchemy and launches
this file with the venv's Python; the bench times it from launch to exit, as it
times ``dbqueue work`` and PgQueuer's consumer. So this imports only what such a
program must: its driver (psycopg 3 or PyMySQL), then forks one process per
loop. Each connects, waits until all are connected, loops until its SELECT
finds nothing, and reports when its loop started and ended (wall clock, so
comparable across processes): the loops alone, without the start-up.

Reads one JSON object on stdin:

    {"driver": "psycopg" | "pymysql", "args": [...], "kwargs": {...},
     "read_committed": bool, "mode": "bare" | "lease",
     "statements": [[...], ...]}   # one list per process, see BARE / LEASE

and prints one on stdout: {"started": min start, "ended": max end,
"done": jobs deleted, "retries": transactions the server aborted, retried}.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

# Deadlock, lock wait timeout (MySQL); serialization failure, deadlock (PostgreSQL).
RETRYABLE = {1213, 1205, "40001", "40P01"}


def retryable(error: Exception) -> bool:
    code = getattr(error, "sqlstate", None) or (error.args[0] if error.args else None)
    return code in RETRYABLE


def retried(connection: Any, transaction: Callable[[], Any]) -> tuple[Any, int]:
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


def claim_and_delete(connection: Any, select: str, delete: str) -> int:
    """One transaction: the number of jobs it deleted."""
    with connection.cursor() as cursor:
        cursor.execute(select)
        ids = [row[0] for row in cursor.fetchall()]
        if ids:
            cursor.execute(delete + "(" + ",".join(str(int(i)) for i in ids) + ")")
    connection.commit()
    return len(ids)


def bare(connection: Any, select: str, delete: str) -> tuple[int, int]:
    """BARE statements: the claim's SELECT, the head of the DELETE."""
    return retried(connection, partial(claim_and_delete, connection, select, delete))


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
    return int(deleted)


def noop(arguments: Any) -> None:
    """The lease loop's job."""


def leased(connection: Any, select: str, update: str, delete: str,
           held: str) -> tuple[int, int]:
    """LEASE statements: the claim's SELECT (id, payload), the head of the UPDATE
    that leases, the head and the tail of the DELETE of what is still leased."""
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


MODES = {"bare": bare, "lease": leased}


def loop(spec: dict[str, Any], statements: list[str], driver: Any,
         ready: int, go: int, report: int) -> None:
    """In a forked process: connect, say so, wait for the start, loop, report."""
    connection = driver.connect(*spec["args"], **spec["kwargs"])
    if spec["read_committed"]:
        # dbqueue's own transactions run at READ COMMITTED on MySQL (no gap locks).
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        connection.commit()
    batch = MODES[spec["mode"]]
    os.write(ready, b"r")
    if not os.read(go, 1):
        raise SystemExit("the loops were called off before they started")
    started = time.time()
    done = retries = 0
    while True:
        count, tries = batch(connection, *statements)
        retries += tries
        if not count:
            break
        done += count
    ended = time.time()
    connection.close()
    os.write(report, json.dumps([started, ended, done, retries]).encode() + b"\n")


def fork_loops(spec: dict[str, Any], driver: Any, ready: tuple[int, int],
               go: tuple[int, int], report: tuple[int, int]) -> list[int]:
    """One forked process per loop, each holding only its ends of the pipes
    (read ends first in each pair); their pids."""
    children = []
    for statements in spec["statements"]:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for fd in (ready[0], go[1], report[0]):
                    os.close(fd)
                loop(spec, statements, driver, ready[1], go[0], report[1])
            except BaseException as exc:
                print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        children.append(pid)
    return children


def wait_connected(children: list[int], ready: int) -> None:
    """Return once every loop process has connected; exit if one died first."""
    for _ in children:
        while not select.select([ready], [], [], 1.0)[0]:
            if any(os.waitpid(pid, os.WNOHANG)[0] for pid in children):
                raise SystemExit("error: a loop process failed before it connected")
        if not os.read(ready, 1):  # every write end closed: all of them are gone
            raise SystemExit("error: the loop processes failed before they connected")


def main() -> None:
    spec = json.load(sys.stdin)
    driver = importlib.import_module(spec["driver"])
    ready, go, report = os.pipe(), os.pipe(), os.pipe()
    children = fork_loops(spec, driver, ready, go, report)
    for fd in (ready[1], go[0], report[1]):
        os.close(fd)
    try:
        wait_connected(children, ready[0])
    except BaseException:  # no loop may run on, or wait for a start that never comes
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    os.write(go[1], b"g" * len(children))
    with os.fdopen(report[0]) as reports:  # to its end: when the last loop has exited
        spans = [json.loads(line) for line in reports]
    failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    if failed or len(spans) != len(children):
        raise SystemExit(f"error: {len(failed)} loop process(es) failed")
    print(json.dumps({"started": min(s[0] for s in spans), "ended": max(s[1] for s in spans),
                      "done": sum(s[2] for s in spans), "retries": sum(s[3] for s in spans)}))


if __name__ == "__main__":
    main()
