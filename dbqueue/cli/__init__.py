"""The ``dbqueue`` command."""

from __future__ import annotations

import click

from .. import __version__
from .failed import failed, flush, forget, retry
from .locks import locks
from .outcomes import outcomes
from .status import migrate, restart, status
from .work import work


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dbqueue")
def cli() -> None:
    """dbqueue: background jobs in the SQL database you already run.

    Every command takes --url (or DBQUEUE_URL) and --app (or DBQUEUE_APP).
    """


for command in (work, migrate, status, restart, failed, retry, forget, flush, locks,
                outcomes):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="dbqueue")
