"""The supervisor driven in this process, where no child process is needed."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta

import pytest

from dbqueue.worker import pool, supervisor
from dbqueue.worker.options import WorkerOptions
from tests.conftest import count


def test_a_worker_whose_children_cannot_start_leaves_the_registry(jobs, monkeypatch):
    """Other hosts and `dbqueue status` would list it as a live worker until
    it was pruned as a dead one, minutes later. The jobs its first
    reservation took (it goes out before the children start) go back at once,
    not when their lease runs out."""
    jobs.record.dispatch(1)
    def no_process(_pool: pool.Pool) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(pool.forkserver, "start",
                        lambda *_args, **_kwargs: multiprocessing.get_context("spawn"))
    monkeypatch.setattr(pool.Pool, "start", no_process)
    worker = supervisor.Supervisor(jobs.app, "tests.jobapp:app", WorkerOptions())
    with pytest.raises(BlockingIOError):
        worker.run()
    tables = jobs.app.store.tables
    assert count(jobs.app, tables.queue_workers) == 0
    assert worker.reserver.sequence == 1  # it did reserve
    # Given back: ready now, not in retry_after (60 s).
    soon = datetime.now(UTC) + timedelta(seconds=10)
    assert count(jobs.app, tables.jobs, tables.jobs.c.reserved_by.is_(None),
                 tables.jobs.c.available_at <= soon) == 1
