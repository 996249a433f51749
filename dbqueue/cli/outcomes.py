"""``dbqueue outcomes``: the recorded outcomes of idempotent jobs."""

from __future__ import annotations

import json

import click

from .common import open_app, print_json, to_jsonable
from .options import connection_options, friendly_errors, group_options


@click.group()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for show).")
def outcomes(url: str | None, app_reference: str | None, table_prefix: str | None, verbose: bool,
             as_json: bool) -> None:
    """Outcomes of idempotent jobs (job_outcomes): show one, prune old ones."""


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
        raise click.ClickException(f"no outcome is recorded under {key!r}")
    if as_json:
        shown = to_jsonable(outcome)
        shown["result"] = outcome.result
        del shown["result_json"]
        print_json(shown)
        return
    result = (None if outcome.result_json is None
              else json.dumps(outcome.result, indent=2, ensure_ascii=False))
    for label, value in [("key", outcome.idempotency_key), ("job", outcome.job),
                         ("job id", outcome.job_id), ("status", outcome.status),
                         ("recorded", outcome.created_at)]:
        click.echo(f"{label + ':':<10}{value}")
    click.echo(f"result:\n{result}")


@outcomes.command("prune")
@connection_options
@click.option("--older-than", "days", type=click.FloatRange(min=0), required=True,
              metavar="DAYS", help="Delete outcomes recorded more than DAYS days ago.")
@friendly_errors
@group_options
def prune(url: str | None, app_reference: str | None, table_prefix: str | None, verbose: bool,
          days: float) -> None:
    """Delete old outcomes (after that, a job with such a key would run again)."""
    deleted = open_app(url, app_reference, table_prefix).admin.prune_outcomes(days)
    click.echo(f"Deleted {deleted} outcome(s).")
