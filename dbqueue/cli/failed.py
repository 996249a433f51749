"""``dbqueue failed``, ``retry``, ``forget`` and ``flush``: working with failed jobs."""

from __future__ import annotations

import json
import re
import sys

import click

from .common import one_line, open_app, print_json, print_table, progress, short_time
from .hints import hint_unmatched
from .options import (
    FILTER,
    LIMIT,
    Age,
    ShowsOne,
    connection_options,
    friendly_errors,
    group_options,
)

# The refs `failed show` takes: a failure's number, or the uuid it was stored with.
_REF = re.compile(r"\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)


class _FailedGroup(ShowsOne):
    """``dbqueue failed``'s subcommands; what one might type for the top-level
    commands on failed jobs is answered with their names, and a failed job's
    id where a subcommand goes with ``failed show`` (ShowsOne)."""

    thing = "failed job"
    ids = _REF
    _ELSEWHERE = {"retry": "retry", "forget": "forget", "delete": "forget", "flush": "flush",
                  "prune": "flush"}

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if (args and args[0] in self._ELSEWHERE and args[0] not in self.commands
                and not ctx.resilient_parsing):
            name = self._ELSEWHERE[args[0]]
            raise click.UsageError(f"there is no 'dbqueue failed {args[0]}': failed jobs are "
                                   f"handled by 'dbqueue {name}' (see dbqueue {name} --help)",
                                   ctx=ctx)
        return super().resolve_command(ctx, args)


@click.group(cls=_FailedGroup, invoke_without_command=True)
@connection_options
@click.option("--queue", default=None, type=FILTER, help="Only this queue.")
@click.option("--job", default=None, type=FILTER, help="Only this job name.")
@click.option("--exception", default=None, type=FILTER,
              help="Only exception classes containing this text (in any case).")
@click.option("--limit", default=50, show_default=True, type=LIMIT,
              help="Most rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with tracebacks).")
@click.pass_context
@friendly_errors
def failed(  # noqa: PLR0913 (click passes each of the command's options)
        ctx: click.Context, url: str | None, app_reference: str | None,
        table_prefix: str | None, verbose: bool, queue: str | None, job: str | None,
        exception: str | None, limit: int, as_json: bool) -> None:
    """List failed jobs, newest first. `dbqueue failed show ID` shows one in full."""
    if ctx.invoked_subcommand is not None:
        return
    app = open_app(url, app_reference, table_prefix)
    rows = app.admin.list_failed(queue=queue, job=job, exception=exception, limit=limit)
    # Only a full page may hide more: count them then, with the same filters.
    total = app.admin.count_failed(queue=queue, job=job, exception=exception) if (
        len(rows) == limit) else len(rows)
    more = (f"{len(rows):,} of {total:,} failed jobs shown (newest first); --limit N shows more"
            if total > len(rows) else None)
    if as_json:
        print_json(rows)
        if more:
            click.echo(more, err=True)  # stdout stays JSON
        if not rows:
            hint_unmatched(app.admin, queue=queue, job=job, exception=exception, err=True)
        return
    if not rows:
        filtered = queue is not None or job is not None or exception is not None
        click.echo("No failed jobs match." if filtered else "No failed jobs.")
        hint_unmatched(app.admin, queue=queue, job=job, exception=exception)
        return
    # JOB ID: the number the worker's log gave the job (ID is the failure's own).
    print_table(["ID", "JOB ID", "QUEUE", "JOB", "ATTEMPTS", "EXCEPTION", "MESSAGE", "FAILED AT",
                 "WORKER"],
                [[r.id, r.job_id, r.queue, r.job, r.attempts, r.exception_class,
                  one_line(r.exception_message), short_time(r.failed_at), r.worker]
                 for r in rows])
    if more:
        click.echo(more)


@failed.command("show")
@connection_options
@click.argument("ref", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
@group_options
def show(url: str | None, app_reference: str | None, table_prefix: str | None,
         verbose: bool, ref: str, as_json: bool) -> None:
    """Show one failed job (by id or uuid): payload and full traceback."""
    record = open_app(url, app_reference, table_prefix).admin.get_failed(ref)
    if as_json:
        print_json(record)
        return
    try:
        payload = json.dumps(json.loads(record.payload), indent=2, ensure_ascii=False)
    except ValueError:
        payload = record.payload
    batch = [("batch", record.batch_id)] if record.batch_id else []  # as --json has it
    for label, value in [("id", record.id), ("uuid", record.uuid), ("job id", record.job_id),
                         ("queue", record.queue), ("job", record.job), *batch,
                         ("attempts", record.attempts), ("failed at", record.failed_at),
                         ("worker", record.worker), ("exception", record.exception_class),
                         ("message", record.exception_message)]:
        click.echo(f"{label + ':':<11}{value}")
    click.echo(f"payload:\n{payload}")
    click.echo(f"traceback:\n{record.exception.rstrip()}")


@click.command()
@connection_options
@click.argument("refs", nargs=-1, metavar="[ID]...")
@click.option("--all", "everything", is_flag=True, help="Retry every failed job.")
@click.option("--queue", default=None, type=FILTER, help="Retry the failed jobs of this queue.")
@click.option("--job", default=None, type=FILTER, help="Retry the failed jobs of this job name.")
@friendly_errors
def retry(url: str | None, app_reference: str | None, table_prefix: str | None,
          verbose: bool, refs: tuple[str, ...], everything: bool, queue: str | None,
          job: str | None) -> None:
    """Put failed jobs back on their queues, with their attempts reset.

    --all, --queue and --job move them in chunks, each its own transaction,
    and show their progress on long runs; --queue and --job together retry
    the failures that match both.
    """
    if sum(map(bool, (refs, everything, queue or job))) != 1:
        raise click.UsageError("give failed job IDs, or --all, or --queue NAME and/or --job "
                               "NAME (one of these)")
    app = open_app(url, app_reference, table_prefix)
    if refs:  # each named: failure ids and job ids are easily taken for each other
        for retried in app.admin.retry_each(refs):
            was = "" if retried.job_id is None else f", was job {retried.job_id}"
            click.echo(f"Queued failed job {retried.failed_id} ({retried.job}{was}) again, "
                       "as a new job.")
        return
    with progress("Retrying", "retried") as report:
        count = app.admin.retry(queue=queue, job=job, everything=everything, progress=report)
    click.echo(f"Queued {count:,} failed job(s) again.")
    if not count:
        hint_unmatched(app.admin, queue=queue, job=job)


@click.command()
@connection_options
@click.argument("ref", metavar="ID")
@friendly_errors
def forget(url: str | None, app_reference: str | None, table_prefix: str | None,
           verbose: bool, ref: str) -> None:
    """Delete one failed job (by id or uuid)."""
    open_app(url, app_reference, table_prefix).admin.forget(ref)
    click.echo(f"Forgot failed job {ref}.")


@click.command()
@connection_options
@click.option("--hours", type=Age("hours"), default=None,
              help="Only failures older than this many hours.")
@click.option("--yes", "-y", is_flag=True, help="Delete them all without asking (on a terminal).")
@friendly_errors
def flush(url: str | None, app_reference: str | None, table_prefix: str | None,
          verbose: bool, hours: float | None, yes: bool) -> None:
    """Delete failed jobs: all of them, or those older than --hours."""
    app = open_app(url, app_reference, table_prefix)
    # All of them, typed at a terminal: asked first, as failures are what a
    # person reads to learn what went wrong. Scripts and --hours are not.
    if hours is None and not yes and sys.stdin.isatty():
        total = app.admin.count_failed()
        if not total:
            click.echo("No failed jobs.")
            return
        click.confirm(f"Delete all {total:,} failed job(s)?", abort=True)
    count = app.admin.flush(hours)
    click.echo(f"Deleted {count} failed job(s).")
