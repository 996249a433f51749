"""Applications with schedules, for the scheduler's tests (this module holds no test).

Workers load one as ``--app tests.test_schedule_app:NAME`` (NAME one of
KINDS), which reads DBQUEUE_URL and DBQUEUE_TABLE_PREFIX; each lookup of NAME
builds a fresh App from the environment of that moment, so that tests that
load it in-process (click's CliRunner) on one backend after another each get
their own. Each run notes its start and end in the ``effects`` table (see
tests.jobapp), with its job id as the detail.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import dbqueue
from tests.jobapp import effects_table

KINDS = {
    "every_app": "every",       # every=1
    "overlap_app": "overlap",   # every=1, a run of 2.5 s, without_overlapping
    "daily_app": "daily",       # a daily report in Europe/Berlin, and a heartbeat every 10 s
}


def build(kind: str, url: str | None = None, prefix: str | None = None) -> dbqueue.App:
    app = dbqueue.App(url, table_prefix=prefix)
    effects = effects_table(sa.MetaData(), app.settings.table_prefix)

    def note(context: dbqueue.JobContext, call_next: Callable[[], Any]) -> Any:
        def write(event: str) -> None:
            with app.engine.begin() as connection:
                connection.execute(effects.insert().values(
                    tag=context.job.name, event=event, pid=os.getpid(), at=app.store._now(),
                    detail=str(context.job_id)))

        write("start")
        result = call_next()
        write("end")
        return result

    @app.job(name="tick", middleware=[note])
    def tick() -> None:
        pass

    @app.job(name="slow_tick", middleware=[note], timeout=30)
    def slow_tick(seconds: float) -> None:
        time.sleep(seconds)  # the workload: a run longer than the period

    @app.job(name="report", middleware=[note])
    def report(kind: str = "daily") -> None:
        pass

    if kind == "every":
        app.schedule(tick.prepare(), every=1, name="every-second")
    elif kind == "overlap":
        app.schedule(slow_tick.prepare(2.5), every=1, name="slow", without_overlapping=True)
    elif kind == "daily":
        app.schedule(report.prepare(), cron="0 6 * * *", timezone="Europe/Berlin",
                     name="daily-report", expect_within=600)
        app.schedule(tick.prepare(), every=10, name="heartbeat")
    return app


def __getattr__(name: str) -> dbqueue.App:
    if name in KINDS:
        return build(KINDS[name])
    raise AttributeError(name)


@pytest.fixture
def no_schedules(jobs: Any) -> Iterator[None]:
    """The schedule tables emptied (the ``jobs`` fixture empties the others)."""
    tables = jobs.app.store.tables
    with jobs.app.engine.begin() as connection:
        connection.execute(tables.schedule_ticks.delete())
        connection.execute(tables.schedules.delete())
    yield
