"""``dbqueue migrate``, ``status`` and ``restart``."""

from __future__ import annotations

import click

from ..errors import SchemaOutdated
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
              help="Downgrade to this revision instead ('base' drops every dbqueue table).")
@friendly_errors
def migrate(url: str | None, app_reference: str | None, table_prefix: str | None, sql: bool,
            revision: str, downgrade_to: str | None) -> None:
    """Create or upgrade dbqueue's tables (safe to run again)."""
    from ..store import migrator  # Alembic: kept out of every other command's start-up

    app = open_app(url, app_reference, table_prefix, creates=True)
    prefix = app.settings.table_prefix
    if sql:
        if downgrade_to is not None:
            text = migrator.downgrade_sql(app.settings.url, prefix, downgrade_to)
        else:
            text = migrator.upgrade_sql(app.settings.url, prefix, revision)
        click.echo(text, nl=False)
        return
    if downgrade_to is not None:
        app.downgrade(downgrade_to)
        click.echo(f"dbqueue tables downgraded to {downgrade_to}")
        return
    app.migrate(revision)
    current = migrator.current_revision(app.store, prefix)
    click.echo(f"dbqueue tables are at revision {current}")


@click.command()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def status(url: str | None, app_reference: str | None, table_prefix: str | None,
           as_json: bool) -> None:
    """Jobs per queue (ready, delayed, reserved, failed, oldest wait) and live workers."""
    app = open_app(url, app_reference, table_prefix)
    try:
        app.store.check_schema()
    except SchemaOutdated as exc:  # status reads only: useful during a deploy all the same
        click.echo(f"Warning: {exc}", err=True)
    queues = app.admin.status()
    workers = app.workers.live(seen_within=LIVE_WITHIN)
    if as_json:
        print_json({"queues": queues, "workers": workers})
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


@click.command()
@connection_options
@friendly_errors
def restart(url: str | None, app_reference: str | None, table_prefix: str | None) -> None:
    """Ask every worker on every host to finish its current jobs and exit.

    Run it after a deploy: systemd (Restart=always) or supervisor starts the
    workers again on the new code.
    """
    app = open_app(url, app_reference, table_prefix)
    asked = app.workers.request_stop()
    click.echo(f"Asked {asked} worker(s) to restart after their current jobs.")
