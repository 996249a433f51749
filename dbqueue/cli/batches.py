"""``dbqueue batches``: list, show, cancel, retry and prune batches."""

from __future__ import annotations

from typing import Any

import click

from .common import cut_notice, open_app, print_json, print_table, short_time
from .options import LIMIT, Age, ShowsOne, connection_options, friendly_errors, group_options


def _state(batch: Any) -> str:
    if batch.cancelled:
        return "cancelled" + (", finished" if batch.finished else "")
    return "finished" if batch.finished else "running"


class _BatchesGroup(ShowsOne):
    thing = "batch"


@click.group(cls=_BatchesGroup, invoke_without_command=True)
@connection_options
@click.option("--limit", default=50, show_default=True, type=LIMIT,
              help="Most batches to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@friendly_errors
def batches(ctx: click.Context, url: str | None, app_reference: str | None,
            table_prefix: str | None, verbose: bool, limit: int, as_json: bool) -> None:
    """List batches, newest first. `dbqueue batches show ID` shows one."""
    if ctx.invoked_subcommand is not None:
        return
    found = open_app(url, app_reference, table_prefix).recent_batches(limit + 1)
    found, more = found[:limit], cut_notice(len(found) > limit, limit, "batches")
    if as_json:
        print_json([batch.as_dict() for batch in found])
    elif not found:
        click.echo("No batches.")
    else:
        print_table(["ID", "NAME", "PROGRESS", "TOTAL", "PENDING", "FAILED", "STATE",
                     "CREATED AT"],
                    [[b.id, b.name, f"{b.progress}%", b.total, b.pending, b.failed, _state(b),
                      short_time(b.created_at)] for b in found])
    if more:
        click.echo(more, err=as_json)  # stdout stays JSON


@batches.command("show")
@connection_options
@click.argument("batch_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
@group_options
def show(url: str | None, app_reference: str | None, table_prefix: str | None,
         verbose: bool, batch_id: str, as_json: bool) -> None:
    """Show one batch: its counts, progress and state."""
    batch = open_app(url, app_reference, table_prefix).find_batch(batch_id)
    if as_json:
        print_json(batch.as_dict())
        return
    for label, value in [("id", batch.id), ("name", batch.name),
                         ("progress", f"{batch.progress}%"), ("total", batch.total),
                         ("pending", batch.pending), ("processed", batch.processed),
                         ("failed", batch.failed),
                         ("on failure", "go on" if batch.allow_failures else "cancel the batch"),
                         ("state", _state(batch)), ("created at", short_time(batch.created_at)),
                         ("cancelled", short_time(batch.cancelled_at)),
                         ("finished", short_time(batch.finished_at))]:
        click.echo(f"{label + ':':<12}{value}")
    for name, state in batch.callback_states().items():
        click.echo(f"{name + ':':<12}{state}")


@batches.command("cancel")
@connection_options
@click.argument("batch_id", metavar="ID")
@friendly_errors
@group_options
def cancel(url: str | None, app_reference: str | None, table_prefix: str | None,
           verbose: bool, batch_id: str) -> None:
    """Cancel a batch: its jobs not started yet complete without running."""
    batch = open_app(url, app_reference, table_prefix).find_batch(batch_id)
    if batch.cancelled:
        click.echo(f"Batch {batch_id} was cancelled already.")
    elif batch.finished:
        click.echo(f"Batch {batch_id} has finished: nothing to cancel.")
    else:
        batch.cancel()
        click.echo(f"Cancelled batch {batch_id}.")


@batches.command("retry")
@connection_options
@click.argument("batch_id", metavar="ID")
@friendly_errors
@group_options
def retry(url: str | None, app_reference: str | None, table_prefix: str | None,
          verbose: bool, batch_id: str) -> None:
    """Put a batch's failed jobs back on their queues (also of a pruned batch)."""
    app = open_app(url, app_reference, table_prefix)
    count = app.admin.retry(batch=batch_id)
    gone = ""
    if not count:
        batch = app.find_batch(batch_id)  # NotFound names an unknown id
        if batch.failed:  # counted, but their rows were forgotten or flushed
            gone = (f": its {batch.failed:,} failed job(s) are no longer in failed_jobs "
                    "(forgotten or flushed)")
    click.echo(f"Queued {count:,} failed job(s) of batch {batch_id} again{gone}.")


@batches.command("prune")
@connection_options
@click.option("--hours", type=Age("hours"), required=True,
              help="Delete batches that finished more than this many hours ago.")
@friendly_errors
@group_options
def prune(url: str | None, app_reference: str | None, table_prefix: str | None,
          verbose: bool, hours: float) -> None:
    """Delete finished batches older than --hours (their jobs are long gone)."""
    count = open_app(url, app_reference, table_prefix).prune_batches(hours)
    click.echo(f"Deleted {count} finished batch(es).")
