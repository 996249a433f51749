"""The database an App's URL names, before anything connects: how messages
name it, whether its SQLite file exists, and the DDL a migration would run."""

from __future__ import annotations

from ..errors import NotMigrated
from .engine import in_memory, missing_database_file, parse_url, same_database, where
from .newfile import no_database_file


class Database:
    """What the command line asks of a URL (no connection, no driver needed)."""

    def __init__(self, url: str, table_prefix: str = "") -> None:
        self.url = url
        self.table_prefix = table_prefix

    def check_url(self) -> None:
        """Raise ConfigurationError, naming the fix, if the URL cannot be read."""
        parse_url(self.url)

    def where(self) -> str:
        """The database for messages: a SQLite file's absolute path, any other
        URL with its password masked."""
        return where(self.url)

    def missing_file(self) -> str | None:
        """The absolute path of the SQLite file the URL names if it does not
        exist (connecting would create it empty); None for every other URL."""
        return missing_database_file(self.url)

    def missing_file_error(self) -> NotMigrated | None:
        """The error that says the SQLite file the URL names does not exist,
        and how to create it; None if it exists, or for every other URL."""
        return no_database_file(self.url, self.table_prefix)

    def in_memory(self) -> bool:
        """Whether the URL names a SQLite database in memory (sqlite://,
        sqlite:///:memory:): each process that opens it has an empty one."""
        return in_memory(self.url)

    def same_as(self, url: str) -> bool:
        """Whether ``url`` names this database (whatever driver it names, with
        or without the server's default port)."""
        return same_database(self.url, url)

    def upgrade_sql(self, revision: str = "head") -> str:
        """The DDL that migrating to ``revision`` runs (``FROM:TO`` for a
        database at FROM), as SQL text, without touching a database."""
        from . import migrator  # Alembic: loaded only by those who migrate

        return migrator.upgrade_sql(self.url, self.table_prefix, revision)

    def downgrade_sql(self, revision: str) -> str:
        """The DDL that downgrading to ``revision`` runs, as SQL text."""
        from . import migrator

        return migrator.downgrade_sql(self.url, self.table_prefix, revision)
