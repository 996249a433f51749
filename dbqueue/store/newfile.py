"""An embedded database's file is created by dbqueue's migrations only.

Connecting to a SQLite file that does not exist creates it, empty. A typo in
the path of a dispatching application would leave a stray file and the
confusing word that its tables are missing (the next commands then find the
file); so a connection to a file that is not there is refused, naming the
path, except while the tables are being created.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from ..errors import NotMigrated
from .dialects import dialect_for
from .engine import migrate_command, missing_database_file

_CREATING: ContextVar[bool] = ContextVar("dbqueue_creating_tables", default=False)


@contextmanager
def creating_tables() -> Iterator[None]:
    """Within this block a connection may create the database's file."""
    token = _CREATING.set(True)
    try:
        yield
    finally:
        _CREATING.reset(token)


def refuse_new_file(engine: Engine, table_prefix: str) -> None:
    """Have ``engine`` refuse to connect to a database file that does not
    exist, outside ``creating_tables`` (nothing to do for a database server)."""
    if not dialect_for(engine.dialect).embedded:
        return
    url = engine.url.render_as_string(hide_password=False)  # SQLite's: no password

    @event.listens_for(engine, "do_connect")
    def _refuse(_dialect: Any, _record: Any, _args: Any, _params: Any) -> None:
        if not _CREATING.get():
            error = no_database_file(url, table_prefix, engine)
            if error is not None:
                raise error


def no_database_file(url: str, table_prefix: str,
                     engine: Engine | None = None) -> NotMigrated | None:
    """The error to raise if ``url`` names a database file that does not exist."""
    path = missing_database_file(url)
    if path is None:
        return None
    relative = "" if os.path.isabs(make_url(url).database or "") else (
        " (the URL gives a relative path: it is found from the directory dbqueue runs in)")
    return NotMigrated(
        f"there is no SQLite database at {path}{relative}; check the URL, or create it and "
        f"dbqueue's tables with: {migrate_command(table_prefix, engine)}")
