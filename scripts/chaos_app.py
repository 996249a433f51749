"""The jobs of ./scripts/chaos, and the run records they leave.

Every run of a chaos job appends a line to a file of its own process under
$CHAOS_RECORDS when it starts and when it ends::

    S <key> <pid> <pgid> <time.time()>
    E <key> <pid> <pgid> <time.time()>

The script counts runs from these files, not from the database, so that what
happened while the database was down or lying is still seen. Each line is one
``write`` on a file opened with O_APPEND, which the kernel never interleaves
with another, and it survives a SIGKILL of the process that wrote it.

Workers load the jobs with ``dbqueue work --app chaos_app:app`` (the queue is
wherever DBQUEUE_URL points); the script registers the same jobs on an App of
its own for each database with :func:`register`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

import dbqueue

TRIES = 5
"""Good jobs may take this many attempts: a job running in a killed worker
loses one each time (one it had only reserved loses none). Failures are
reported anyway."""

effects = sa.Table(
    "chaos_effects", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # No unique constraint on key, on purpose: a second effect of one key must
    # show up as a second row, not be refused by the database.
    sa.Column("key", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)

_fd = -1
_fd_pid = -1


def record(kind: str, key: int) -> None:
    """Append one run record for ``key`` (kind S: started, E: ended)."""
    global _fd, _fd_pid
    pid = os.getpid()
    if _fd_pid != pid:  # first record of this process (children are forked)
        directory = os.environ["CHAOS_RECORDS"]
        _fd = os.open(f"{directory}/{pid}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fd_pid = pid
    os.write(_fd, f"{kind} {key} {pid} {os.getpgrp()} {time.time():.6f}\n".encode())


@dataclass(frozen=True)
class Jobs:
    """The chaos jobs as registered on one App."""

    work: Any
    effect: Any
    noop: Any


def register(app: dbqueue.App) -> Jobs:
    """Register the chaos jobs on ``app``."""

    @app.job(name="chaos.work", tries=TRIES)
    def work(key: int, ms: int) -> None:
        record("S", key)
        time.sleep(ms / 1000)
        record("E", key)

    @app.job(name="chaos.effect", tries=TRIES, idempotency_key=lambda key, ms: f"k:{key}")
    def effect(key: int, ms: int) -> None:
        record("S", key)
        # Commits with the job's idempotency key, or not at all.
        dbqueue.transaction().execute(effects.insert().values(key=key, pid=os.getpid()))
        time.sleep(ms / 1000)
        record("E", key)

    @app.job(name="chaos.noop")
    def noop() -> None:
        """What the poison rows name: any of them that runs does nothing."""

    return Jobs(work, effect, noop)


app = dbqueue.App()  # DBQUEUE_URL
register(app)
