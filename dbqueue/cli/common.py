"""What every dbqueue command shares: finding the App, printing, and clean errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from ..app import App
from ..errors import ConfigurationError, DBQueueError, NotMigrated
from ..loader import load_app
from ..store.engine import first_line, missing_database_file

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(func: F) -> F:
    """--url, --app and --table-prefix, each also read from its DBQUEUE_* variable."""
    func = click.option("--table-prefix", envvar="DBQUEUE_TABLE_PREFIX", default=None,
                        help="Prefix of dbqueue's table names. [env: DBQUEUE_TABLE_PREFIX]")(func)
    func = click.option("--app", "app_reference", envvar="DBQUEUE_APP", default=None,
                        metavar="MODULE:ATTR",
                        help="Your dbqueue.App, e.g. myproject.tasks:app. [env: DBQUEUE_APP]")(func)
    func = click.option("--url", envvar="DBQUEUE_URL", default=None,
                        help="Database URL; default: sqlite:///dbqueue.db. "
                             "[env: DBQUEUE_URL]")(func)
    return func


def open_app(url: str | None, app_reference: str | None, table_prefix: str | None,
             *, need_app: bool = False, creates: bool = False) -> App:
    """The App named by --app (with --url/--table-prefix passed on through the
    environment, so child processes see the same), or a bare App for the URL.

    Only a command that ``creates`` the tables may open a SQLite file that does
    not exist yet (SQLite would create an empty one: a typo in the path would
    leave a stray file and a confusing error).
    """
    app = _open_app(url, app_reference, table_prefix, need_app)
    if not creates:
        path = missing_database_file(app.settings.url)
        if path is not None:
            raise NotMigrated(f"there is no SQLite database at {path}; check the URL, or "
                              "create it and dbqueue's tables with: dbqueue migrate")
    return app


def _open_app(url: str | None, app_reference: str | None, table_prefix: str | None,
              need_app: bool) -> App:
    if url:
        os.environ["DBQUEUE_URL"] = url
    if table_prefix is not None:
        os.environ["DBQUEUE_TABLE_PREFIX"] = table_prefix
    if app_reference:
        os.environ["DBQUEUE_APP"] = app_reference
        app = load_app(app_reference)
        _check_not_overridden(app, app_reference, url, table_prefix)
        return app
    if need_app:
        raise click.UsageError("name your application with --app module:attr (or DBQUEUE_APP)")
    return App(url, table_prefix=table_prefix)


_COMMAND_LINE = click.core.ParameterSource.COMMANDLINE


def group_options(func: F) -> F:
    """Let a subcommand take the options its group was given on the command line
    (``dbqueue failed --url U --json show 3``) unless it is given them itself.

    Both read the same DBQUEUE_* variables, so a value the subcommand has from
    the environment must not win over one typed before its name.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        context = click.get_current_context()
        group = context.parent
        if group is not None:
            for name, value in group.params.items():
                if (name in kwargs and group.get_parameter_source(name) is _COMMAND_LINE
                        and context.get_parameter_source(name) is not _COMMAND_LINE):
                    kwargs[name] = value
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _given_on_command_line(name: str) -> bool:
    """True if ``name`` was typed for this command, or for its group."""
    context = click.get_current_context(silent=True)
    while context is not None:
        if context.get_parameter_source(name) is _COMMAND_LINE:
            return True
        context = context.parent
    return False


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def _same_url(a: str, b: str) -> bool:
    """Whether two URLs name the same database, whichever driver they name
    (mariadb:// and mysql:// alike) and whether or not they spell out the
    server's default port."""

    def database(url: str) -> sa.engine.URL:
        parsed = sa.engine.make_url(url)
        backend = parsed.get_backend_name()
        backend = "mysql" if backend == "mariadb" else backend
        return parsed.set(drivername=backend, port=parsed.port or _DEFAULT_PORTS.get(backend))

    try:
        return database(a) == database(b)
    except sa.exc.ArgumentError:
        return a == b


def _check_not_overridden(app: App, reference: str, url: str | None,
                          table_prefix: str | None) -> None:
    """An App built with its own URL or prefix ignores the environment; an
    explicit --url or --table-prefix that it would silently ignore is an error."""
    if url and _given_on_command_line("url") and not _same_url(url, app.settings.url):
        shown = sa.engine.make_url(app.settings.url).render_as_string(hide_password=True)
        raise ConfigurationError(
            f"--url differs from the database {reference} is built on ({shown}); drop "
            "--url, or create the App without a URL so that --url and DBQUEUE_URL choose")
    if (table_prefix is not None and _given_on_command_line("table_prefix")
            and table_prefix != app.settings.table_prefix):
        raise ConfigurationError(
            f"--table-prefix {table_prefix!r} differs from the prefix {reference} is built "
            f"with ({app.settings.table_prefix!r}); drop --table-prefix, or create the App "
            "without table_prefix= so that --table-prefix and DBQUEUE_TABLE_PREFIX choose")


def friendly_errors(func: F) -> F:
    """Turn user mistakes and unreachable databases into one line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DBQueueError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except sa.exc.DBAPIError as exc:
            click.echo(f"Error: the database refused the request: {first_line(exc.orig or exc)}",
                       err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


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
