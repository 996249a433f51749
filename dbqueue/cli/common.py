"""What the dbqueue commands share: finding the App, and printing."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeAlias

import click

from ..app import App
from ..errors import ConfigurationError
from ..loader import load_app
from ..settings import VariableRefused
from .options import export_settings, given_on_command_line

Progress: TypeAlias = Callable[[int, int], None]
"""Called with (done, total) as a long operation goes."""


def open_app(url: str | None, app_reference: str | None, table_prefix: str | None,
             *, creates: bool = False) -> App:
    """The App named by --app (with --url/--table-prefix passed on through the
    environment, so child processes see the same), or a bare App for the URL.

    Only a command that ``creates`` the tables may open a SQLite file that does
    not exist yet (SQLite would create an empty one: a typo in the path would
    leave a stray file and a confusing error).
    """
    app = _open_app(url, app_reference, table_prefix)
    app.database.check_url()  # a typo in it is one clear line, whatever the command does
    if app.database.in_memory():
        raise ConfigurationError(
            f"{app.database.where()} is a database inside one process: each dbqueue command "
            "and worker, a process of its own, would see an empty one; name a file instead, "
            "e.g. sqlite:///queue.db")
    if not creates:
        error = app.database.missing_file_error()
        if error is not None:
            raise error
    return app


def _open_app(url: str | None, app_reference: str | None, table_prefix: str | None) -> App:
    export_settings(url, app_reference, table_prefix)
    if app_reference:
        try:
            app = load_app(app_reference)
        except ConfigurationError as exc:
            # Said where the application is in the way: named in the environment,
            # by a command that can do without it, and not failing on a DBQUEUE_*
            # variable (which would fail without it too).
            if (given_on_command_line("app_reference") or _command() == "work"
                    or isinstance(exc.__cause__, VariableRefused)):
                raise
            # A broken deploy, say: the queue can still be read (its failures).
            raise ConfigurationError(
                f"{exc}; DBQUEUE_APP names it: to reach the queue without it, give --app '' "
                "and the database's --url (or DBQUEUE_URL)") from exc
        _check_not_overridden(app, app_reference, url, table_prefix)
        return app
    return App(url, table_prefix=table_prefix)


def _command() -> str | None:
    context = click.get_current_context(silent=True)
    return None if context is None else context.info_name


def _check_not_overridden(app: App, reference: str, url: str | None,
                          table_prefix: str | None) -> None:
    """An App built with its own URL or prefix ignores the environment; an
    explicit --url or --table-prefix that it would silently ignore is an error."""
    if url and given_on_command_line("url") and not app.database.same_as(url):
        shown = app.database.where()
        raise ConfigurationError(
            f"--url differs from the database {reference} is built on ({shown}); drop "
            "--url, or create the App without a URL so that --url and DBQUEUE_URL choose")
    if (table_prefix is not None and given_on_command_line("table_prefix")
            and table_prefix != app.settings.table_prefix):
        raise ConfigurationError(
            f"--table-prefix {table_prefix!r} differs from the prefix {reference} is built "
            f"with ({app.settings.table_prefix!r}); drop --table-prefix, or create the App "
            "without table_prefix= so that --table-prefix and DBQUEUE_TABLE_PREFIX choose")
    # From the environment (a unit file's Environment=): not the user's mistake
    # here and now, but ignored all the same, so said.
    if url and not given_on_command_line("url") and not app.database.same_as(url):
        click.echo(f"Warning: DBQUEUE_URL is ignored: {reference} is built on its own "
                   f"database ({app.database.where()})", err=True)
    if (table_prefix is not None and not given_on_command_line("table_prefix")
            and table_prefix != app.settings.table_prefix):
        click.echo(f"Warning: DBQUEUE_TABLE_PREFIX={table_prefix} is ignored: {reference} is "
                   f"built with its own prefix ({app.settings.table_prefix!r})", err=True)


@contextmanager
def progress(label: str, done_verb: str) -> Iterator[Progress]:
    """A ``(done, total)`` callback that shows a long operation's progress on
    stderr: a bar on a terminal, else a line at about every tenth of the way
    (``retried 5,000 of 20,000``). Nothing for a run done in one step."""
    stream = sys.stderr
    bar: Any = None
    shown = next_line = 0

    def report(done: int, total: int) -> None:
        nonlocal bar, shown, next_line
        if bar is None and next_line == 0 and done >= total:
            return  # done in one step: nothing to show
        if stream.isatty():
            if bar is None:
                bar = click.progressbar(length=total, label=label, file=stream)
                bar.__enter__()
            bar.length = total
            bar.update(done - shown)
            shown = done
        elif next_line <= done < total:
            click.echo(f"{done_verb} {done:,} of {total:,}", err=True)
            step = max(1, total // 10)
            next_line = (done // step + 1) * step

    try:
        yield report
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo(line.rstrip())


def short_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def one_line(text: str, width: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def cut_notice(cut: bool, limit: int, what: str) -> str | None:
    """The line that says a listing shows only its newest ``limit`` rows."""
    return f"Only the newest {limit:,} shown; --limit N shows more {what}." if cut else None
