"""The ``dbqueue`` command."""

from __future__ import annotations

import difflib
import importlib
import os

import click

from .. import __version__

# Each command, and the module that defines it: imported only when it runs (or
# when --help lists them all), so that a command imports only what it uses.
_COMMANDS = {
    "work": "work",
    "migrate": "status",
    "status": "status",
    "restart": "status",
    "failed": "failed",
    "retry": "failed",
    "forget": "failed",
    "flush": "failed",
    "locks": "locks",
    "outcomes": "outcomes",
    "schedule": "schedule",
    "batches": "batches",
}


# The variables dbqueue reads. One set under a name close to one of these is
# most likely a typo: silently ignored, it would leave the default in force
# (the unprefixed tables, another database) with nothing to say why.
_VARIABLES = ("DBQUEUE_URL", "DBQUEUE_APP", "DBQUEUE_TABLE_PREFIX", "DBQUEUE_RETRY_AFTER",
              "DBQUEUE_NETWORK_TIMEOUT", "DBQUEUE_NO_SCHEDULE")


def _warn_of_misspelled_variables() -> None:
    for name in sorted(os.environ):
        if not name.startswith("DBQUEUE_") or name in _VARIABLES:
            continue
        # The names after DBQUEUE_: DBQUEUE_USER is not DBQUEUE_URL misspelt.
        suffixes = [known[8:] for known in _VARIABLES]
        close = ([known for known in suffixes if _swapped(name[8:], known)]
                 or difflib.get_close_matches(name[8:], suffixes, n=1, cutoff=0.8))
        if close and f"DBQUEUE_{close[0]}" not in os.environ:
            click.echo(f"Warning: {name} is set, but dbqueue reads no such variable; did you "
                       f"mean DBQUEUE_{close[0]}? (it is ignored)", err=True)


def _swapped(typed: str, known: str) -> bool:
    """Whether ``typed`` is ``known`` with two letters side by side swapped
    (ULR for URL: too short a name for a ratio of likeness to tell)."""
    differ = [i for i, (a, b) in enumerate(zip(typed, known, strict=False)) if a != b]
    return (len(typed) == len(known) and len(differ) == 2 and differ[1] == differ[0] + 1
            and typed[differ[0]] == known[differ[1]] and typed[differ[1]] == known[differ[0]])


class _Commands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMANDS.get(cmd_name)
        if module is None:
            return None
        command: click.Command = getattr(importlib.import_module(f".{module}", __name__),
                                         cmd_name)
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in _COMMANDS:
            close = difflib.get_close_matches(name, list(_COMMANDS), n=1, cutoff=0.6)
            if close:
                raise click.UsageError(f"No such command {name!r}; did you mean "
                                       f"{close[0]!r}?", ctx=ctx)
        return super().resolve_command(ctx, args)


@click.group(cls=_Commands,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dbqueue")
def cli() -> None:
    """dbqueue: background jobs in the SQL database you already run.

    \b
    Every command takes, after its name, --url (or DBQUEUE_URL), --app (or
    DBQUEUE_APP), --table-prefix (or DBQUEUE_TABLE_PREFIX), and -v to show an
    error's traceback.
    """
    _warn_of_misspelled_variables()


def main() -> None:
    cli(prog_name="dbqueue")
