"""The options every dbqueue command takes, and its clean errors.

Only click is imported here: a usage error or --help should not wait for
SQLAlchemy to load.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shlex
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ..errors import ConfigurationError, DBQueueError
from ..policy.durations import age_seconds
from ..settings import PREFIX, PREFIX_RULE

F = TypeVar("F", bound=Callable[..., Any])

LIMIT = click.IntRange(1, 2**31 - 1)
"""--limit: the most rows a listing shows (more would overflow a server's LIMIT)."""


if TYPE_CHECKING:
    _NumberType = click.ParamType[float]
    _TextType = click.ParamType[str]
else:  # generic only from click 8.2; dbqueue takes 8.1
    _NumberType = _TextType = click.ParamType


class Age(_NumberType):
    """An age in hours or days (--hours, --older-than): a finite number from 0
    to a hundred years, as every server can subtract it from its clock."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.name = unit.upper()

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            number = value if isinstance(value, float) else float(value)
            age_seconds("it", number, self.unit)
        except ValueError:
            self.fail(f"{value!r} is not a number of {self.unit}", param, ctx)
        except ConfigurationError as exc:  # named as typed: "1e400", not "inf"
            message = str(exc).replace("it must", "must", 1)
            self.fail(message.replace(f"not {number!r}", f"not {value}"), param, ctx)
        return number


class Filter(_TextType):
    """The text of a filter (--queue, --job, --exception): an empty one is refused,
    as it most often comes from an unset shell variable and would otherwise
    match every row, or none."""

    name = "TEXT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        if not isinstance(value, str) or not value.strip():
            option = param.opts[0] if param is not None and param.opts else "the option"
            self.fail(f"{value!r} is empty; give a name, or leave {option} out", param, ctx)
        return value


FILTER = Filter()


class ShowsOne(click.Group):
    """A group whose ``show`` subcommand shows one thing by its id or key: a
    word that is no subcommand, nor near one, is most likely such an id
    (``dbqueue batches 3f2a...``), and the error says how to see it. With
    ``ids``, only a word of that form is taken for one."""

    thing = "it"
    ids: re.Pattern[str] | None = None

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        word = args[0] if args else ""
        if word and not ctx.resilient_parsing and self._an_id(word):
            raise click.UsageError(f"No such command {word!r}; to see {self.thing} {word}: "
                                   f"dbqueue {ctx.info_name} show {shlex.quote(word)}", ctx=ctx)
        return super().resolve_command(ctx, args)

    def _an_id(self, word: str) -> bool:
        if self.ids is not None:
            return bool(self.ids.fullmatch(word))
        return (not word.startswith("-") and word not in self.commands
                # a slip of a subcommand's name, in any case, is click's to say
                and not difflib.get_close_matches(word.lower(), list(self.commands), cutoff=0.6))


class EnvOption(click.Option):
    """An option also read from its environment variable, which its errors
    name too: a bad value set in a unit file's Environment= is no option typed."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        hint = super().get_error_hint(ctx)
        return f"{hint} (or {self.envvar})" if isinstance(self.envvar, str) else hint


def _valid_prefix(_context: click.Context, _param: click.Parameter,
                  value: str | None) -> str | None:
    """Refused here, as the usage error it is: the App would refuse it as it
    is built, and the import of the application would seem to have failed."""
    if value is not None and not PREFIX.match(value):
        raise click.BadParameter(f"{value!r} is not a table prefix: {PREFIX_RULE}")
    return value


def connection_options(func: F) -> F:
    """--url, --app and --table-prefix, each also read from its DBQUEUE_* variable,
    and --verbose (parameter ``verbose``)."""
    func = click.option("--verbose", "-v", is_flag=True,
                        help="Print the full traceback of an error; `dbqueue work` also "
                             "logs every job, not only failures.")(func)
    func = click.option("--table-prefix", envvar="DBQUEUE_TABLE_PREFIX", default=None,
                        cls=EnvOption, callback=_valid_prefix,
                        help="Prefix of dbqueue's table names. [env: DBQUEUE_TABLE_PREFIX]")(func)
    func = click.option("--app", "app_reference", envvar="DBQUEUE_APP", default=None,
                        metavar="MODULE:ATTR",
                        help="Your dbqueue.App, e.g. myproject.tasks:app. [env: DBQUEUE_APP]")(func)
    func = click.option("--url", envvar="DBQUEUE_URL", default=None,
                        help="Database URL; default: sqlite:///dbqueue.db. "
                             "[env: DBQUEUE_URL]")(func)
    return func


def export_settings(url: str | None, app_reference: str | None,
                    table_prefix: str | None) -> None:
    """Pass the command's --url, --app and --table-prefix on through the
    environment, so that the App (built from DBQUEUE_* when it names no URL)
    and every process started from here see the same."""
    if url:
        os.environ["DBQUEUE_URL"] = url
    if table_prefix is not None:
        os.environ["DBQUEUE_TABLE_PREFIX"] = table_prefix
    if app_reference:
        os.environ["DBQUEUE_APP"] = app_reference


_COMMAND_LINE = click.core.ParameterSource.COMMANDLINE


def group_options(func: F) -> F:
    """Let a subcommand take the options its group was given on the command line
    (``dbqueue failed --url U --json show 3``) unless it is given them itself.

    Both read the same DBQUEUE_* variables, so a value the subcommand has from
    the environment must not win over one typed before its name. An option of
    the group's own listing that the subcommand has no use for (``dbqueue
    batches --json cancel ID``, ``dbqueue failed --queue mail show 3``) is a
    usage error: dropped, it would look obeyed.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        context = click.get_current_context()
        group = context.parent
        if group is not None:
            unused = []
            for name, value in group.params.items():
                if group.get_parameter_source(name) is not _COMMAND_LINE:
                    continue
                if name not in kwargs:
                    unused.append(_flag(group.command, name))
                elif context.get_parameter_source(name) is not _COMMAND_LINE:
                    kwargs[name] = value
            if unused:
                raise click.UsageError(
                    f"{_listed(unused)} {'is an option' if len(unused) == 1 else 'are options'}"
                    f" of 'dbqueue {group.info_name}' itself (its listing), not of"
                    f" 'dbqueue {group.info_name} {context.info_name}'", ctx=context)
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _listed(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _flag(command: click.Command, name: str) -> str:
    """How the option called ``name`` in code is typed (``--json`` for as_json)."""
    for param in command.params:
        if param.name == name and param.opts:
            return max(param.opts, key=len)
    return name


def given_on_command_line(name: str) -> bool:
    """True if ``name`` was typed for this command, or for its group."""
    return _typed(name)[0]


def _typed(name: str) -> tuple[bool, Any]:
    """Whether ``name`` was typed for this command or for its group, and its value."""
    context = click.get_current_context(silent=True)
    while context is not None:
        if context.get_parameter_source(name) is _COMMAND_LINE:
            return True, context.params.get(name)
        context = context.parent
    return False, None


def friendly_errors(func: F) -> F:
    """Turn user mistakes and the database's failures into one line and exit
    code 1 (after the full traceback, with --verbose)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DBQueueError as exc:  # the database's failures too (DatabaseError)
            _fail(exc, _same_database(str(exc)))

    return wrapper  # type: ignore[return-value]


def _same_database(message: str) -> str:
    """``message`` with its ``dbqueue migrate`` command given the --app and
    --url typed here: copied without them, it would migrate the default
    database instead (the environment's DBQUEUE_* it inherits)."""
    options = ""
    for flag, name in (("--app", "app_reference"), ("--url", "url")):
        typed, value = _typed(name)
        if typed and value:
            # A password is not echoed: the user has it, and logs keep errors.
            hidden = flag == "--url" and _has_password(value)
            options += f" {flag} " + ("<the same URL>" if hidden else shlex.quote(value))
    if options:  # the App's own --url, when it was given one in code: --app names it
        message = _APPS_URL.sub("with: dbqueue migrate", message, count=1)
    return message.replace("with: dbqueue migrate", f"with: dbqueue migrate{options}", 1)


_APPS_URL = re.compile(r"with: dbqueue migrate --url (?:<the App's URL>|'[^']*'|\S+)")


def _has_password(url: str) -> bool:
    """Whether ``url`` holds a password: after the user name, or as a
    parameter (libpq's ?password=)."""
    from ..store.engine import mask_password  # SQLAlchemy: only on this error's path

    return mask_password(url) != url


def _fail(error: Exception, message: str) -> NoReturn:
    if _verbose():
        click.echo("".join(traceback.format_exception(error)).rstrip(), err=True)
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def _verbose() -> bool:
    """True if --verbose was given to this command or to its group."""
    context = click.get_current_context(silent=True)
    while context is not None:
        if context.params.get("verbose"):
            return True
        context = context.parent
    return False
