"""Turning a URL into an engine, and database errors into dbqueue's errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from ..errors import ConfigurationError, DatabaseUnavailable, NotMigrated
from .dialects import dialect_for

# The drivers dbqueue is tested with, for URLs that name none. SQLAlchemy's
# own defaults (psycopg2, mysqlclient) are not among dbqueue's dependencies.
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
                    "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}
_EXTRAS = {"psycopg": "postgres", "pymysql": "mysql"}


def create_engine(url: str) -> Engine:
    """An engine for ``url``, set up the way dbqueue's guarantees need."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigurationError(
            f"{url!r} is not a database URL; write it like postgresql://user:pass@host/db, "
            "mysql://user:pass@host/db or sqlite:///path/to/file.db"
        ) from None
    if parsed.drivername in _DEFAULT_DRIVERS:
        parsed = parsed.set(drivername=_DEFAULT_DRIVERS[parsed.drivername])
    try:
        sa_dialect_cls = parsed.get_dialect()
    except sa.exc.NoSuchModuleError:
        raise ConfigurationError(
            f"dbqueue cannot use database URLs of kind {parsed.drivername!r}; "
            "use postgresql://, mysql://, mariadb:// or sqlite:///"
        ) from None
    dialect = dialect_for(sa_dialect_cls())
    try:
        engine = sa.create_engine(parsed, **dialect.engine_options())
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(exc.name or "", "postgres or mysql")
        raise ConfigurationError(
            f"the database driver {exc.name!r} is not installed; "
            f"install it with: pip install 'dbqueue[{extra}]'"
        ) from None
    dialect.prepare_engine(engine)
    return engine


def describe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection, with a failure to connect reported as DatabaseUnavailable."""
    try:
        connection = engine.connect()
    except sa.exc.DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(
            f"cannot connect to {describe(engine)}: {reason}; "
            "check DBQUEUE_URL (or --url) and that the server is running"
        ) from None
    with connection:
        yield connection


def translate(engine: Engine, error: sa.exc.DBAPIError) -> Exception:
    """The dbqueue error a database error means, or the error itself."""
    if dialect_for(engine.dialect).is_missing_table(error):
        return NotMigrated(
            f"the dbqueue tables are missing in {describe(engine)}; "
            "create them with: dbqueue migrate"
        )
    return error
