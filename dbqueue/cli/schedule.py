"""``dbqueue schedule``: the application's schedules, and a run of one by hand."""

from __future__ import annotations

import click

from ..app import App
from ..schedule import ScheduleStatus, run_now, statuses
from .common import open_app, print_json, print_table, short_time
from .options import connection_options, friendly_errors, group_options


def _open(url: str | None, app_reference: str | None, table_prefix: str | None) -> App:
    if not app_reference:
        # The code declares the schedules: without it there is nothing to show.
        # A usage error, as `dbqueue work` without --app is.
        raise click.UsageError("name the application whose schedules to use with --app "
                               "module:attr (or DBQUEUE_APP)")
    return open_app(url, app_reference, table_prefix)


@click.group()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for list).")
def schedule(url: str | None, app_reference: str | None, table_prefix: str | None,
             verbose: bool, as_json: bool) -> None:
    """The application's schedules: list them (last and next runs), run one now."""


@schedule.command("list")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
@group_options
def list_(url: str | None, app_reference: str | None, table_prefix: str | None, verbose: bool,
          as_json: bool) -> None:
    """Each schedule: its last tick and what became of it, its last run's outcome,
    its next tick, and OVERDUE when a tick was not queued or a run did not
    finish within its expect_within. Times in UTC."""
    found = statuses(_open(url, app_reference, table_prefix))
    if as_json:
        print_json(found)
    elif not found:
        click.echo(f"{app_reference} declares no schedules (app.schedule(...)).")
    else:
        print_table(["NAME", "WHEN", "LAST TICK (UTC)", "LAST RUN", "NEXT TICK (UTC)", "OVERDUE"],
                    [[s.name, s.definition, _last_tick(s), _last_run(s), short_time(s.next_tick),
                      s.overdue or ""] for s in found])
    overdue = [s.name for s in found if s.overdue]
    if overdue and not as_json:
        click.echo(f"\n{len(overdue)} schedule(s) overdue: {', '.join(overdue)}", err=True)


def _last_tick(status: ScheduleStatus) -> str:
    if status.last_tick is None:
        return "-"
    return f"{short_time(status.last_tick)} {status.last_status}"


def _last_run(status: ScheduleStatus) -> str:
    if status.last_run_tick is None:
        return "-"
    if status.last_ended_tick == status.last_run_tick:
        return f"{status.last_outcome} at {short_time(status.last_ended_at)}"
    before = f"; the one before: {status.last_outcome}" if status.last_outcome else ""
    return f"job {status.last_job_id} queued or running{before}"


@schedule.command("run")
@connection_options
@click.argument("name")
@friendly_errors
@group_options
def run(url: str | None, app_reference: str | None, table_prefix: str | None, verbose: bool,
        name: str) -> None:
    """Queue one run of the schedule NAME now (its ticks go on as before)."""
    job_id = run_now(_open(url, app_reference, table_prefix), name)
    if job_id is None:
        raise click.ClickException(f"not queued: a queued or running job holds the unique "
                                   f"key of the job of schedule {name!r}")
    click.echo(f"Queued job {job_id} for schedule {name!r}.")
