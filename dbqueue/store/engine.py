"""Turning a URL into an engine, and database errors into dbqueue's errors."""

from __future__ import annotations

import os
import re
import select
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

from ..errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    DBQueueError,
    NotMigrated,
)
from ..settings import DEFAULT_NETWORK_TIMEOUT, DEFAULT_URL
from .dialects import Dialect, dialect_for
from .isolation import ISOLATION, set_isolation

# The drivers dbqueue is tested with, for URLs that name none. SQLAlchemy's
# own defaults (psycopg2, mysqlclient) are not among dbqueue's dependencies.
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
                    "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}
_EXTRAS = {"psycopg": "postgres", "pymysql": "mysql"}
DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306}


IDLE_PING_AFTER = 10.0  # seconds a connection may rest before it is checked


_FORMS = ("write it like postgresql://user:pass@host:5432/db, mysql://user:pass@host:3306/db "
          "or sqlite:///path/to/file.db")


def parse_url(url: str) -> URL:
    """``url`` parsed, or a ConfigurationError that says what is wrong with it.

    SQLAlchemy raises ArgumentError for text that is no URL at all, but a bare
    ValueError for a port that is not a number (``host:abc``, or an IPv6
    address without its brackets): both are the user's typo, not a crash.
    """
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigurationError(f"{mask_password(url)!r} is not a database URL; {_FORMS}; "
                                 "check DBQUEUE_URL (or --url)") from None
    except ValueError:
        raise ConfigurationError(_bad_port(url)) from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ConfigurationError(
            f"the port of {mask_password(url)!r} is {parsed.port}, outside 1-65535; "
            "fix it in DBQUEUE_URL (or --url), or leave it out for the server's default")
    return parsed


def _bad_port(url: str) -> str:
    shown = mask_password(url)
    host_port = _AUTHORITY.sub("", url).split("/", 1)[0].split("?", 1)[0]
    if host_port.startswith("[") or host_port.count(":") > 1:
        # make_url took what follows the first colon of an IPv6 address for a port.
        return (f"{shown!r} is not a database URL: an IPv6 address needs brackets closed "
                "before the port, as in postgresql://user@[::1]:5432/db; check DBQUEUE_URL "
                "(or --url)")
    port = host_port.rpartition(":")[2]
    example = DEFAULT_PORTS.get(url.partition(":")[0].partition("+")[0], 5432)
    return (f"the port {port!r} in {shown!r} is not a number; write host:{example} (a "
            "number from 1 to 65535), or leave the port out for the server's default; "
            "check DBQUEUE_URL (or --url)")


# Read the way SQLAlchemy reads a URL: the user name stops at a colon, the
# password at the first @.
_AUTHORITY = re.compile(r"^[\w+]+://(?:[^:/]*(?::[^@]*)?@)?")
_PASSWORD = re.compile(r"^([\w+]+://[^:/]*:)[^@]*@")
_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)  # libpq takes one


def mask_password(url: str) -> str:
    """``url`` with its password shown as ``***``, even when it does not parse."""
    return _PASSWORD_PARAMETER.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


def where(url: str | URL) -> str:
    """The database ``url`` names, for messages: a SQLite file's absolute path,
    any other URL with its password masked."""
    parsed = parse_url(url) if isinstance(url, str) else url
    if _database_file(parsed):
        return os.path.abspath(parsed.database or "")
    if _in_memory(parsed):  # as written: rendered, it would read sqlite:///%3Amemory%3A
        return f"{parsed.drivername}:///:memory:"
    if _split_password(parsed):
        # The password's own "@" ended it early: the rest of it reads as the
        # host, and would be shown. Masked, the host is the one meant.
        parsed = parsed.set(host=(parsed.host or "").rpartition("@")[2])
    return _PASSWORD_PARAMETER.sub(r"\1***", parsed.render_as_string(hide_password=True))


def _split_password(parsed: URL) -> bool:
    """Whether ``parsed`` looks like a URL whose password holds an "@" that
    was not percent-encoded (what precedes the last "@" was taken as the password)."""
    return bool(parsed.password is not None and "@" in (parsed.host or ""))


def create_engine(url: str, *, autocommit: bool = False,
                  network_timeout: float = DEFAULT_NETWORK_TIMEOUT) -> Engine:
    """An engine for ``url``, set up the way dbqueue's guarantees need.

    With ``autocommit`` every statement commits by itself: one round trip for
    a single INSERT instead of three (BEGIN, INSERT, COMMIT). A connection
    whose network path to the server dies fails within about
    ``network_timeout`` seconds, rather than waiting for ever.
    """
    parsed = parse_url(url)
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
    options = dialect.engine_options()
    if autocommit and dialect.autocommit_single_statements:
        # Nothing to roll back in autocommit mode: skip the ROLLBACK that some
        # drivers (PyMySQL) would otherwise send after every statement.
        options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
                       skip_autocommit_rollback=True)
    try:
        engine = sa.create_engine(parsed, **options)
    except sa.exc.ArgumentError as exc:  # a URL the dialect refuses
        raise ConfigurationError(_refused(url, parsed, exc)) from None
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get(exc.name or "")
        fix = (f"install it with: pip install 'dbqueue-sql[{extra}]'" if extra else
               "install it, or name no driver (postgresql://, mysql://) to use dbqueue's "
               "own: pip install 'dbqueue-sql[postgres]' or 'dbqueue-sql[mysql]'")
        raise ConfigurationError(
            f"the database driver {exc.name!r} is not installed; {fix}") from None
    dialect.prepare_engine(engine, network_timeout)
    if not dialect.embedded:
        _ping_when_idle(engine)
    return engine


def _refused(url: str, parsed: URL, error: Exception) -> str:
    if parsed.get_backend_name() == "sqlite" and parsed.host:
        # sqlite://queue.db: the file name was read as a host.
        path = "/".join(filter(None, [parsed.host, parsed.database]))
        return (f"{mask_password(url)!r} names a host, not a SQLite file: write "
                f"sqlite:///{path} (three slashes, then a relative path) or "
                f"sqlite:////absolute/path/{path.rpartition('/')[2]}; check DBQUEUE_URL "
                "(or --url)")
    return (f"{mask_password(url)!r} is not a database URL dbqueue can use "
            f"({first_line(error)}); {_FORMS}; check DBQUEUE_URL (or --url)")


def missing_database_file(url: str) -> str | None:
    """The absolute path of the SQLite file ``url`` names if it does not exist
    (connecting would create it empty); None for every other URL."""
    parsed = parse_url(url)
    if not _database_file(parsed) or os.path.exists(parsed.database or ""):
        return None
    return os.path.abspath(parsed.database or "")


def in_memory(url: str) -> bool:
    """Whether ``url`` names an embedded database that lives in memory: one of
    its own in each process that opens it."""
    return _in_memory(parse_url(url))


def _in_memory(parsed: URL) -> bool:
    if (parsed.database not in (None, "", ":memory:") or parsed.host
            or parsed.query.get("uri")):  # sqlite://queue.db names a host: a typo
        return False
    dialect = _dialect_of(parsed)
    return bool(dialect is not None and dialect.embedded)


def same_database(a: str, b: str) -> bool:
    """Whether two URLs name the same database, whichever driver they name
    (mariadb:// and mysql:// alike: the server says which it is, not the URL)
    and whether or not they spell out the server's default port."""

    def database(url: str) -> URL:
        parsed = parse_url(url)
        port = parsed.port or DEFAULT_PORTS.get(parsed.get_backend_name())
        if _database_file(parsed):  # a relative path names the file from here
            parsed = parsed.set(database=os.path.abspath(parsed.database or ""))
        return parsed.set(drivername="any", port=port)

    return database(a) == database(b)


def _dialect_of(parsed: URL) -> Dialect | None:
    """The dialect of the database ``parsed`` names, without connecting; None
    for a kind of URL dbqueue does not know."""
    try:
        return dialect_for(parsed.get_dialect()())
    except (sa.exc.NoSuchModuleError, DBQueueError):
        return None


def _database_file(parsed: URL) -> bool:
    """Whether ``parsed`` names an embedded database's file by its path (not
    memory, not a file: URI)."""
    database = parsed.database
    if not database or database == ":memory:" or parsed.query.get("uri"):
        return False
    dialect = _dialect_of(parsed)
    return bool(dialect is not None and dialect.embedded and not database.startswith("file:"))


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only if it has rested a while.

    A connection the server or a proxy closed during a quiet spell is replaced
    before anyone uses it, while a busy worker's connections are not pinged
    before each of their transactions (as pool_pre_ping would).
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["dbqueue_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        check_rested(engine, dbapi_connection, record.info.get("dbqueue_idle_since"))


def check_rested(engine: Engine, dbapi_connection: Any, since: float | None) -> None:
    """Ping a connection that has rested since ``since`` (monotonic) for longer
    than IDLE_PING_AFTER, or that has something to read; DisconnectionError if
    it no longer answers."""
    if since is None:
        return
    if time.monotonic() - since < IDLE_PING_AFTER and not _has_news(engine, dbapi_connection):
        return
    try:
        engine.dialect.do_ping(dbapi_connection)
    except Exception as exc:
        raise sa.exc.DisconnectionError() from exc  # the pool connects afresh


def describe(engine: Engine) -> str:
    """``engine``'s database for messages (see ``where``)."""
    return where(engine.url)


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection, with a failure to connect reported as DatabaseUnavailable."""
    with checkout(engine) as connection:
        yield connection


def checkout(engine: Engine) -> Connection:
    """A connection the caller closes; DatabaseUnavailable if there is none."""
    try:
        connection = engine.connect()
        level = connection.get_execution_options().get(ISOLATION)
        if level is not None:
            set_isolation(connection, level)
        return connection
    except sa.exc.DBAPIError as exc:
        raise unavailable(engine, exc.orig or exc) from None
    except sa.exc.TimeoutError as exc:  # every pooled connection is in use
        raise translate(engine, exc) from exc


def first_line(error: BaseException) -> str:
    """What a driver's error says, on one line (its class when it says nothing)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def unavailable(engine: Engine, error: BaseException) -> DatabaseUnavailable:
    """The error for a failure to connect to ``engine``'s database."""
    reason = first_line(error)
    split = _split_password(engine.url)
    if split:  # the driver names that host: a part of the password
        host = engine.url.host or ""
        reason = reason.replace(host, "***@" + host.rpartition("@")[2])
    dialect = dialect_for(engine.dialect)
    lasting = split or dialect.refuses_login(error)  # no host has an "@": waiting will not help
    check = ("that its directory exists and is writable" if dialect.embedded
             else "that an @ : / or % in the password is percent-encoded (@ as %40)" if split
             else "the user, password, database name and options" if lasting
             else "that the server is running")
    return DatabaseUnavailable(
        f"cannot connect to {describe(engine)}: {reason}; check DBQUEUE_URL (or --url) "
        f"and {check}", lasting=lasting)


def migrate_command(table_prefix: str, engine: Engine | None = None) -> str:
    """The command that creates or upgrades the tables of ``table_prefix`` in
    ``engine``'s database: with its ``--url`` unless the command finds that
    database by itself (DBQUEUE_URL, or the default), as it does where an App
    was given its URL in code. A URL with a password is not shown."""
    words = ["dbqueue migrate"]
    if engine is not None:
        url = engine.url
        if not same_database(url.render_as_string(hide_password=False),
                             os.environ.get("DBQUEUE_URL") or DEFAULT_URL):
            words.append("--url " + ("<the App's URL>" if url.password is not None
                                     else shlex.quote(_url_as_typed(url))))
    if table_prefix:
        words.append(f"--table-prefix {table_prefix}")
    return " ".join(words)


def _url_as_typed(url: URL) -> str:
    """``url`` as one would type it: an SQLite file by its absolute path."""
    if _database_file(url):
        return f"{url.drivername.partition('+')[0]}:///{os.path.abspath(url.database or '')}"
    return url.render_as_string(hide_password=False)


def tables_missing(engine: Engine, table_prefix: str = "") -> NotMigrated:
    named = f" with the prefix {table_prefix!r}" if table_prefix else ""
    return NotMigrated(
        f"the dbqueue tables{named} are missing in {describe(engine)}; "
        f"create them with: {migrate_command(table_prefix, engine)}"
    )


DRIVER_ERRORS = (sa.exc.DBAPIError, sa.exc.TimeoutError)
"""What SQLAlchemy raises for a failure of the database: a driver's error
(DBAPIError), or no pooled connection free in time (TimeoutError)."""


def translate(engine: Engine, error: sa.exc.DBAPIError | sa.exc.TimeoutError,
              table_prefix: str = "") -> DBQueueError:
    """The dbqueue error a database error means; raise it ``from error``.

    Tables missing or too old are NotMigrated; an error that passes (a lost
    connection, a deadlock or lock wait given up on, no pooled connection
    free) is DatabaseUnavailable; any other refusal is DatabaseError. The
    message is one line, without the statement and its parameters.
    """
    dialect = dialect_for(engine.dialect)
    reason = first_line(getattr(error, "orig", None) or error)
    if dialect.is_missing_table(error):
        return tables_missing(engine, table_prefix)
    if dialect.is_missing_column(error):
        return NotMigrated(
            f"the dbqueue tables in {describe(engine)} are older than this dbqueue "
            f"({reason}); upgrade them with: {migrate_command(table_prefix, engine)}"
        )
    if (isinstance(error, sa.exc.TimeoutError | sa.exc.OperationalError | sa.exc.InterfaceError)
            and not dialect.is_refusal(error)) or dialect.is_retryable(error):
        return DatabaseUnavailable(f"the database {describe(engine)} is unavailable now: "
                                   f"{reason}; {dialect.unavailable_hint(error)}",
                                   lock_wait=dialect.is_lock_wait(error))
    return DatabaseError(f"the database {describe(engine)} refused the statement: {reason}",
                         data=dialect.refuses_data(error))


@contextmanager
def translating(engine: Engine, table_prefix: str = "") -> Iterator[None]:
    """Raise the database errors of the block as dbqueue's errors (see translate)."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise translate(engine, exc, table_prefix) from exc


def _has_news(engine: Engine, dbapi_connection: Any) -> bool:
    """Whether a resting connection has something to read. Its server sends
    it nothing unasked, except the end: a restarted server's farewell, or the
    kernel's word that the network path died (see dialects/liveness.py). One
    poll, no round trip: the ping follows only when this says yes."""
    try:
        fd = dialect_for(engine.dialect).socket_of(dbapi_connection)
    except (OSError, ValueError):  # the socket is closed
        return True
    if fd is None:  # the driver does not tell: the ping after a rest must do
        return False
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
