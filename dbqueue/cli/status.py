"""``dbqueue migrate``, ``status`` and ``restart``."""

from __future__ import annotations

import os
import sys

import click

from ..app import App
from ..errors import ConfigurationError, SchemaOutdated
from ..settings import DEFAULT_URL
from .common import open_app, print_json, print_table, short_time
from .options import connection_options, friendly_errors

LIVE_WITHIN = 30.0  # seconds: workers beat at least every 10 s; one silent longer is gone


@click.command()
@connection_options
@click.option("--sql", is_flag=True, help="Print the DDL instead of running it (for a DBA).")
@click.option("--revision", default="head", show_default=True,
              help="Revision to upgrade to; with --sql, FROM:TO (e.g. 0001:head) prints "
                   "only the steps a database at FROM needs.")
@click.option("--downgrade", "downgrade_to", metavar="REVISION", default=None,
              help="Downgrade to this revision instead ('base' drops every dbqueue table); "
                   "asks first.")
@click.option("--yes", "-y", is_flag=True, help="Downgrade without asking.")
@friendly_errors
def migrate(url: str | None, app_reference: str | None, table_prefix: str | None,
            verbose: bool, sql: bool, revision: str, downgrade_to: str | None,
            yes: bool) -> None:
    """Create or upgrade dbqueue's tables (safe to run again)."""
    # A downgrade of a SQLite file that is not there would create it empty.
    app = open_app(url, app_reference, table_prefix, creates=sql or downgrade_to is None)
    prefix, database = app.settings.table_prefix, app.database
    if sql:
        if downgrade_to is not None:
            text = database.downgrade_sql(downgrade_to)
        else:
            text = database.upgrade_sql(revision)
        click.echo(text, nl=False)
        return
    tables = f"dbqueue tables{f' (prefix {prefix})' if prefix else ''} in {database.where()}"
    if downgrade_to is not None:
        _downgrade(app, tables, downgrade_to, yes)
        return
    new_file = database.missing_file()
    app.migrate(revision)
    if new_file is not None:
        default = app.settings.url == DEFAULT_URL and not os.environ.get("DBQUEUE_URL")
        click.echo(f"Created {new_file}" + (" (the default database: choose another with "
                                            "--url or DBQUEUE_URL)" if default else ""))
    current = app.admin.revision()
    click.echo(f"{tables} are at revision {current}")
    if revision.isdigit() and current is not None and current > revision:
        # An upgrade never goes back: the tables stay newer than asked.
        click.echo(f"(newer than {revision}, which an upgrade leaves as they are; to go back: "
                   f"dbqueue migrate --downgrade {revision})")


def _downgrade(app: App, tables: str, revision: str, yes: bool) -> None:
    """Downgrade after the user's confirmation (or --yes)."""
    current = app.admin.revision()
    if current is None:
        click.echo(f"There are no {tables}: nothing to downgrade.")
        return
    if revision == current:
        click.echo(f"The {tables} are at revision {current} already: nothing to downgrade.")
        return
    if not yes:
        queued, failed = app.admin.totals()
        lost = f"{queued:,} queued job(s) and {failed:,} failed job(s)"
        if revision == "base":
            what = f"dropping the {tables} deletes {lost}"
        else:
            what = (f"downgrading the {tables} from revision {current} to {revision} drops "
                    f"what the later revisions added (the {lost} stay)")
        if not sys.stdin.isatty():
            raise ConfigurationError(f"{what}; with no terminal to confirm it on, run it "
                                     "again with --yes")
        click.confirm(f"{what[0].upper()}{what[1:]}. Go on?", abort=True)
    app.downgrade(revision)
    click.echo(f"{tables} downgraded to {revision}")


@click.command()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def status(url: str | None, app_reference: str | None, table_prefix: str | None,
           verbose: bool, as_json: bool) -> None:
    """Jobs per queue (ready, delayed, reserved, failed, oldest wait) and live workers,
    and the queues with ready jobs that no live worker serves."""
    app = open_app(url, app_reference, table_prefix)
    try:
        app.admin.check_schema()
    except SchemaOutdated as exc:  # status reads only: useful during a deploy all the same
        click.echo(f"Warning: {exc}", err=True)
    queues = app.admin.status()
    workers = app.workers.live(seen_within=LIVE_WITHIN)
    unserved = app.admin.unserved(seen_within=LIVE_WITHIN)
    if as_json:
        print_json({"queues": queues, "workers": workers, "unserved": unserved})
        return
    if queues:
        print_table(
            ["QUEUE", "READY", "DELAYED", "RESERVED", "FAILED", "OLDEST READY"],
            [[q.queue, q.ready, q.delayed, q.reserved, q.failed,
              "" if q.oldest_ready_age is None else f"{q.oldest_ready_age:.1f}s"] for q in queues],
        )
    else:
        click.echo("No jobs and no failures.")
    click.echo("")
    if workers:
        print_table(["WORKER", "HOST", "PID", "QUEUES", "CONCURRENCY", "STARTED", "LAST SEEN"],
                    [[w.id, w.host, w.pid, w.queues, w.concurrency, short_time(w.started_at),
                      short_time(w.last_seen_at)] for w in workers])
    else:
        click.echo("No live workers.")
    if unserved:
        click.echo("")
    for queue in unserved:
        fix = ("add it to a worker's --queue (or --queue '*')" if workers else
               f"start one with: dbqueue work --app {app_reference or 'MODULE:ATTR'} "
               f"--queue {queue.queue}")
        click.echo(f"Queue {queue.queue} has {queue.ready:,} ready job(s) and no worker "
                   f"serves it: {fix}")


@click.command()
@connection_options
@friendly_errors
def restart(url: str | None, app_reference: str | None, table_prefix: str | None,
            verbose: bool) -> None:
    """Ask every worker on every host to finish its current jobs and exit.

    Run it after a deploy: systemd (Restart=always) or supervisor starts the
    workers again on the new code.
    """
    app = open_app(url, app_reference, table_prefix)
    live, silent = app.workers.request_stop(seen_within=LIVE_WITHIN)
    click.echo(f"Asked {live} worker(s) to restart after their current jobs.")
    if silent:
        click.echo(f"{silent} more registered worker(s) not seen for {LIVE_WITHIN:.0f} s (most "
                   "likely gone; one cut off from the database reads it once back) were "
                   "asked too.")
