"""``dbqueue locks``: the distributed locks held now, and freeing one by hand."""

from __future__ import annotations

import click

from ..policy.names import close_names, either
from .common import open_app, print_json, print_table, short_time
from .options import connection_options, friendly_errors, group_options


@click.group(invoke_without_command=True)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@friendly_errors
def locks(ctx: click.Context, url: str | None, app_reference: str | None,
          table_prefix: str | None, verbose: bool, as_json: bool) -> None:
    """List held locks (key, owner, expiry). `dbqueue locks release KEY` frees one."""
    if ctx.invoked_subcommand is not None:
        return
    held = open_app(url, app_reference, table_prefix).admin.locks()
    if as_json:
        print_json(held)
    elif held:
        print_table(["KEY", "OWNER", "EXPIRES AT (UTC)"],
                    [[lock.key, lock.owner, short_time(lock.expires_at)] for lock in held])
    else:
        click.echo("No locks are held.")


@locks.command("release")
@connection_options
@click.argument("key")
@friendly_errors
@group_options
def release(url: str | None, app_reference: str | None, table_prefix: str | None, verbose: bool,
            key: str) -> None:
    """Free the lock KEY whoever holds it (for a holder that will not come back)."""
    admin = open_app(url, app_reference, table_prefix).admin
    if admin.release_lock(key):
        click.echo(f"Released lock {key!r}.")
        return
    close = close_names(key, [lock.key for lock in admin.locks()])
    then = f"; did you mean {either(close)}? List" if close else "; list"
    raise click.ClickException(f"no lock {key!r} is held{then} them with: dbqueue locks")
