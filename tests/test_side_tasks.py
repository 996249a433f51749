"""The side tasks' statements (lease renewal, the worker's heartbeat, pruning,
the scheduler) run apart from the supervisor's loop where the database is a
server (see dbqueue/worker/sidetasks.py): one that waits holds up neither
the timing of jobs nor the heeding of signals."""

from __future__ import annotations

import os
import signal

import pytest
import sqlalchemy as sa

from tests.conftest import count, read_until, wait_until


def test_a_worker_times_its_jobs_while_its_heartbeat_waits_on_a_lock(jobs, workers):
    app = jobs.app
    if app.store.dialect.embedded:
        pytest.skip("SQLite runs the side tasks inline: one writer")
    registry = app.store.tables.queue_workers
    # --retry-after 3: a heartbeat a second. The long network timeout lets the
    # heartbeat wait a minute for the lock held below.
    workers.env["DBQUEUE_NETWORK_TIMEOUT"] = "60"
    host = workers.start("--retry-after", "3", "--sleep", "0.1")
    wait_until(lambda: count(app, registry), what="the worker to register")
    with app.engine.begin() as holding:
        holding.execute(sa.select(registry.c.id).with_for_update()).all()
        # Started after the lock, so that the heartbeat waits while it runs.
        jobs.nap.options(timeout=1).dispatch(60)
        failed = app.store.tables.failed_jobs
        wait_until(lambda: count(app, failed), timeout=20,
                   what="the job to time out while the heartbeat waits")
        os.killpg(host.pid, signal.SIGTERM)
        log = read_until(host, "stopping (received SIGTERM)", timeout=20)
    # Its exit waits for the heartbeat's statement, and for its row, to leave
    # the registry: once the lock is gone.
    output, _ = host.communicate(timeout=60)
    output = log + output
    assert host.returncode == 0, output
    assert "ran longer than its timeout of 1 s" in output, output
