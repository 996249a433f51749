"""``dbqueue outcomes``: the recorded outcomes of idempotent jobs."""

from __future__ import annotations

import json
from typing import Any

import click

from ..store.outcomes import Outcome
from .common import cut_notice, one_line, open_app, print_json, print_table, short_time, to_jsonable
from .options import LIMIT, Age, ShowsOne, connection_options, friendly_errors, group_options


class _OutcomesGroup(ShowsOne):
    thing = "the outcome of"


@click.group(cls=_OutcomesGroup, invoke_without_command=True)
@connection_options
@click.option("--limit", type=LIMIT, default=50, show_default=True,
              help="List at most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@friendly_errors
def outcomes(ctx: click.Context, url: str | None, app_reference: str | None,
             table_prefix: str | None, verbose: bool, limit: int, as_json: bool) -> None:
    """List the outcomes of idempotent jobs (job_outcomes), newest first; show
    one, or prune old ones."""
    if ctx.invoked_subcommand is not None:
        return
    newest = open_app(url, app_reference, table_prefix).admin.outcomes(limit + 1)
    newest, more = newest[:limit], cut_notice(len(newest) > limit, limit, "outcomes")
    if as_json:
        print_json([_jsonable(outcome) for outcome in newest])
    elif newest:
        print_table(["KEY", "JOB", "JOB ID", "RECORDED (UTC)", "RESULT"],
                    [[o.idempotency_key, o.job, o.job_id, short_time(o.created_at),
                      one_line("null" if o.result_json is None else o.result_json, 40)]
                     for o in newest])
    else:
        click.echo("No outcome is recorded.")
    if more:
        click.echo(more, err=as_json)  # stdout stays JSON


def _jsonable(outcome: Outcome) -> dict[str, Any]:
    shown: dict[str, Any] = to_jsonable(outcome)
    shown["result"] = outcome.result
    del shown["result_json"]
    return shown


@outcomes.command("show")
@connection_options
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
@group_options
def show(url: str | None, app_reference: str | None, table_prefix: str | None, verbose: bool,
         key: str, as_json: bool) -> None:
    """Show the outcome recorded under the idempotency KEY."""
    outcome = open_app(url, app_reference, table_prefix).outcome(key)
    if outcome is None:
        raise click.ClickException(f"no outcome is recorded under {key!r}; list them with: "
                                   "dbqueue outcomes")
    if as_json:
        print_json(_jsonable(outcome))
        return
    # JSON's null, not Python's None: the job returned None, stored as NULL.
    result = json.dumps(outcome.result, indent=2, ensure_ascii=False)
    for label, value in [("key", outcome.idempotency_key), ("job", outcome.job),
                         ("job id", outcome.job_id), ("status", outcome.status),
                         ("recorded", outcome.created_at)]:
        click.echo(f"{label + ':':<10}{value}")
    click.echo(f"result:\n{result}")


@outcomes.command("prune")
@connection_options
@click.option("--older-than", "days", type=Age("days"), required=True,
              metavar="DAYS", help="Delete outcomes recorded more than DAYS days ago.")
@friendly_errors
@group_options
def prune(url: str | None, app_reference: str | None, table_prefix: str | None, verbose: bool,
          days: float) -> None:
    """Delete old outcomes (after that, a job with such a key would run again)."""
    deleted = open_app(url, app_reference, table_prefix).admin.prune_outcomes(days)
    click.echo(f"Deleted {deleted} outcome(s).")
