"""The supervisor driven in this process, where no child process is needed."""

from __future__ import annotations

import multiprocessing

import pytest

from dbqueue.worker import pool, supervisor
from dbqueue.worker.options import WorkerOptions
from tests.conftest import count


def test_a_worker_whose_children_cannot_start_leaves_the_registry(jobs, monkeypatch):
    """Other hosts and `dbqueue status` would list it as a live worker until
    it was pruned as a dead one, minutes later."""
    def no_process(_pool: pool.Pool) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(pool.forkserver, "start",
                        lambda *_args, **_kwargs: multiprocessing.get_context("spawn"))
    monkeypatch.setattr(pool.Pool, "start", no_process)
    worker = supervisor.Supervisor(jobs.app, "tests.jobapp:app", WorkerOptions())
    with pytest.raises(BlockingIOError):
        worker.run()
    assert count(jobs.app, jobs.app.store.tables.queue_workers) == 0
