"""``dbqueue schedule list`` and ``schedule run``, through click's CliRunner, on every backend.

No worker is needed: a scheduler pass runs in-process (worker.scheduler), and
stale states are made by moving the rows' times back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from dbqueue.cli import cli
from dbqueue.store.flows import FlowEnd
from dbqueue.store.schedules import record_runs
from dbqueue.worker.health import Health
from dbqueue.worker.scheduler import Scheduler
from tests.conftest import PREFIX
from tests.test_schedule_app import build, no_schedules  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("no_schedules")

APP = "tests.test_schedule_app:daily_app"


@pytest.fixture
def daily(schema: str) -> Iterator[object]:
    """The application the commands load, on this backend's test tables."""
    app = build("daily", schema, PREFIX)
    yield app
    app.dispose()


def run(url: str, *args: str) -> Result:
    variables: dict[str, str | None] = {name: None for name in os.environ
                                        if name.startswith("DBQUEUE_")}
    variables.update(DBQUEUE_URL=url, DBQUEUE_TABLE_PREFIX=PREFIX)
    return CliRunner().invoke(cli, ["schedule", *args], env=variables)


def listed(url: str) -> dict[str, dict[str, object]]:
    result = run(url, "list", "--app", APP, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return {entry["name"]: entry for entry in json.loads(result.stdout)}


def error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def move_back(app, seconds: float, **columns: str) -> None:
    """Set each of ``columns`` to the server's time ``seconds`` ago."""
    table = app.store.tables.schedules
    past = app.store.dialect.now_plus(-seconds)
    app.store.transaction(lambda c: c.execute(
        sa.update(table).values(**{column: past for column in columns.values()})))


def test_list_shows_schedules_no_worker_has_declared_as_overdue(schema, daily):
    found = listed(schema)
    assert sorted(found) == ["daily-report", "heartbeat"]
    report = found["daily-report"]
    assert report["definition"] == "cron 0 6 * * * Europe/Berlin"
    assert report["last_tick"] is None and "no worker has declared" in report["overdue"]
    assert report["next_tick"] is not None


def test_list_after_a_scheduler_pass_and_when_ticks_go_unqueued(schema, daily):
    Scheduler(Health(), store=daily.store, schedules=list(daily.schedules.values())).run()
    found = listed(schema)
    assert found["daily-report"]["overdue"] is None and found["heartbeat"]["overdue"] is None
    text = run(schema, "list", "--app", APP)
    assert text.exit_code == 0 and "heartbeat" in text.stdout and "every 10 s" in text.stdout
    # As if every worker had stopped five minutes ago.
    move_back(daily, 300, a="declared_at")
    found = listed(schema)
    assert "was not queued" in found["heartbeat"]["overdue"]
    text = run(schema, "list", "--app", APP)
    assert "1 schedule(s) overdue: heartbeat" in text.stderr


def test_run_queues_one_run_now_and_list_follows_it(schema, daily):
    result = run(schema, "run", "daily-report", "--app", APP)
    assert result.exit_code == 0, result.output
    job_id = int(result.stdout.split()[2])
    assert result.stdout.strip() == f"Queued job {job_id} for schedule 'daily-report'."
    report = listed(schema)["daily-report"]
    assert report["last_job_id"] == job_id and report["last_outcome"] is None
    assert "queued or running" in run(schema, "list", "--app", APP).stdout
    # The run ends (as the worker's completion transaction records it).
    tick = report["last_run_tick"]
    end = FlowEnd(job_id, {"schedule": "daily-report", "tick": tick}, "done")
    daily.store.transaction(lambda c: record_runs(daily.store, c, [end]))
    report = listed(schema)["daily-report"]
    assert report["last_outcome"] == "done" and report["last_ended_tick"] == tick
    assert report["overdue"] is None
    assert "done at" in run(schema, "list", "--app", APP).stdout


def test_a_run_not_finished_within_expect_within_is_overdue(schema, daily):
    assert run(schema, "run", "daily-report", "--app", APP).exit_code == 0
    move_back(daily, 601, a="last_run_tick")
    assert "did not finish within 600 s" in listed(schema)["daily-report"]["overdue"]


def test_an_unknown_schedule_is_one_clear_line(schema, daily):
    line = error_line(run(schema, "run", "nightly", "--app", APP))
    assert "no schedule named 'nightly'" in line and "daily-report, heartbeat" in line
    # Without --app: a usage error (see test_cli_first_run).


def test_list_says_when_the_workers_run_another_definition(schema, daily):
    Scheduler(Health(), store=daily.store, schedules=list(daily.schedules.values())).run()
    table = daily.store.tables.schedules
    daily.store.transaction(lambda c: c.execute(
        sa.update(table).where(table.c.name == "heartbeat").values(definition="every 20 s")))
    heartbeat = listed(schema)["heartbeat"]
    assert "the workers run it as 'every 20 s'" in heartbeat["overdue"]
