"""Creating and upgrading dbqueue's tables with its bundled Alembic environment."""

from __future__ import annotations

import io
from collections.abc import Callable
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError

from ..errors import ConfigurationError
from .engine import connect
from .schema import version_table
from .store import Store

_HINTS = {
    "upgrade": "use 'head' (the newest) or a revision such as 0002",
    "downgrade": "use a revision older than the tables' own, or 'base' (no tables)",
}


def _run(action: str, revision: str, step: Callable[[], object]) -> None:
    try:
        step()
    except CommandError as exc:
        reason = str(exc)
        if "--sql mode" in reason:  # SQLite rebuilds tables, which needs the live schema
            raise ConfigurationError(
                f"cannot print the SQL to {action} to {revision!r}: on SQLite that step "
                f"rebuilds a table, which needs the live database; run the {action} "
                "against it instead"
            ) from None
        raise ConfigurationError(
            f"cannot {action} to revision {revision!r}: {reason}; {_HINTS[action]}"
        ) from None


def _config(table_prefix: str, url: str | None = None, output: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=output)
    config.set_main_option("script_location", str(resources.files("dbqueue.migrations")))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["table_prefix"] = table_prefix
    return config


def upgrade(store: Store, table_prefix: str, revision: str = "head") -> None:
    """Bring the tables up to ``revision`` (the newest by default)."""
    config = _config(table_prefix)

    def work(connection: object) -> None:
        config.attributes["connection"] = connection
        _run("upgrade", revision, lambda: command.upgrade(config, revision))

    store.check_server()
    store.transaction(work)


def downgrade(store: Store, table_prefix: str, revision: str) -> None:
    """Take the tables back to ``revision`` (``base`` drops them all)."""
    config = _config(table_prefix)

    def work(connection: object) -> None:
        config.attributes["connection"] = connection
        _run("downgrade", revision, lambda: command.downgrade(config, revision))

    store.transaction(work)


def upgrade_sql(url: str, table_prefix: str, revision: str = "head") -> str:
    """The DDL that ``upgrade`` would run, as SQL text, without touching a database.

    ``revision`` may be ``FROM:TO`` (``0001:head``) for a database at ``FROM``.
    """
    output = io.StringIO()
    config = _config(table_prefix, url, output)
    _run("upgrade", revision, lambda: command.upgrade(config, revision, sql=True))
    return output.getvalue()


def downgrade_sql(url: str, table_prefix: str, revision: str, start: str = "head") -> str:
    """The DDL that ``downgrade`` from ``start`` to ``revision`` would run, as SQL text."""
    output = io.StringIO()
    config = _config(table_prefix, url, output)
    _run("downgrade", revision,
         lambda: command.downgrade(config, f"{start}:{revision}", sql=True))
    return output.getvalue()


def current_revision(store: Store, table_prefix: str) -> str | None:
    with connect(store.engine) as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": version_table(table_prefix)}
        )
        return context.get_current_revision()
