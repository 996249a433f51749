"""Creating and upgrading dbqueue's tables with its bundled Alembic environment."""

from __future__ import annotations

import io
from collections.abc import Callable
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from ..errors import ConfigurationError
from .engine import connect, missing_database_file, translating
from .foreign import prefix_advice, table_names, taken
from .newfile import creating_tables
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

    def work(connection: Connection) -> None:
        _check_names_free(store, connection, table_prefix)
        config.attributes["connection"] = connection
        _run("upgrade", revision, lambda: command.upgrade(config, revision))

    with creating_tables():  # the one place a SQLite file may be created
        store.check_server()
        store.transaction(work)


def _check_names_free(store: Store, connection: Connection, table_prefix: str) -> None:
    """Refuse to migrate where the application already has a table of the name
    one of dbqueue's would take.

    With no revision recorded, the first migration would create every table,
    and fail on the first name taken with the server's own words ("table jobs
    already exists"), on MySQL after creating the tables before it; the fix
    is a table prefix.
    """
    existing = table_names(connection)
    versions = version_table(table_prefix)
    if versions.lower() in existing and _revision(connection, versions) is not None:
        return  # dbqueue's own tables, to upgrade
    names = taken(existing, table_prefix)
    if names:
        raise ConfigurationError(
            prefix_advice(store.engine, names, existing, table_prefix))


def _revision(connection: Connection, versions: str) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": versions})
    return context.get_current_revision()


def downgrade(store: Store, table_prefix: str, revision: str) -> None:
    """Take the tables back to ``revision`` (``base`` drops them all)."""
    config = _config(table_prefix)

    def work(connection: object) -> None:
        config.attributes["connection"] = connection
        _run("downgrade", revision, lambda: command.downgrade(config, revision))

    url = store.engine.url.render_as_string(hide_password=False)
    if revision == "base" and missing_database_file(url) is not None:
        return  # no file, no tables: nothing to drop, and no file to create
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
    """The revision the tables are at; None when there are none."""
    with translating(store.engine, table_prefix), connect(store.engine) as connection:
        return _revision(connection, version_table(table_prefix))
