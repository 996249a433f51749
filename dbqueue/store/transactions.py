"""How every store verb reaches the database: short transactions of its own,
retried on deadlocks and lock-wait timeouts, or the caller's.

This is where the database's errors become dbqueue's: a verb raises
DatabaseUnavailable, DatabaseError or NotMigrated, never SQLAlchemy's errors
(see engine.translate).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    DBQueueError,
    NotMigrated,
    SchemaOutdated,
)
from .dialects import READ_ONLY, Dialect, dialect_for
from .engine import (
    DEFAULT_PORTS,
    DRIVER_ERRORS,
    connect,
    describe,
    first_line,
    migrate_command,
    translate,
)
from .foreign import (
    other_prefixes,
    other_prefixes_advice,
    prefix_advice,
    table_names,
    taken,
)
from .isolation import at_isolation
from .schema import REVISION, Tables, build_tables, version_table
from .values import Executor, T, current_session

_MAX_TRIES = 8


def _elsewhere(theirs: Engine, ours: Engine, prefix: str) -> str:
    """Why the caller's transaction, on a database lacking a table of dbqueue's
    while the App's has them, cannot take a job."""
    return (f"the dbqueue tables are missing in {describe(theirs)}, the database of the "
            f"connection= given, while the App's ({describe(ours)}) has them. If that is "
            "another database: a job dispatched in a transaction goes into that "
            "transaction's database, where this App's workers do not look; give a connection "
            "to the App's database, or dispatch with after_commit=session (queued once it "
            "commits). If it is the App's, reached another way, or to keep a queue there "
            f"too: {migrate_command(prefix, theirs)}")


_SERVERS = {"postgresql": "PostgreSQL", "mysql": "MySQL/MariaDB", "sqlite": "SQLite"}


def _not_a_connection(value: object) -> str:
    kind = type(value).__qualname__
    if type(value).__module__ != "builtins":  # sqlite3.Connection is no SQLAlchemy one
        kind = f"{type(value).__module__}.{kind}"
    return (f"connection= takes the SQLAlchemy Connection or Session whose transaction to "
            f"queue in, not {kind}; leave it out to queue in a transaction of dbqueue's own")


def tables_outdated(engine: Engine, table_prefix: str, revision: str,
                    needed: str) -> SchemaOutdated:
    return SchemaOutdated(
        f"the dbqueue tables in {describe(engine)} are at revision {revision}, but this "
        f"dbqueue needs {needed} or newer; upgrade them with: "
        f"{migrate_command(table_prefix, engine)}")


class Transactions:
    """dbqueue's tables in one database, and the transactions verbs run in."""

    def __init__(self, engine: Engine, table_prefix: str = "",
                 autocommit_engine: Engine | None = None) -> None:
        self.engine = engine
        # Single INSERTs outside a caller's transaction commit by themselves.
        self.autocommit_engine = autocommit_engine or at_isolation(engine, "AUTOCOMMIT")
        self.prefix = table_prefix
        self.tables: Tables = build_tables(table_prefix)

    @property
    def dialect(self) -> Dialect:
        return dialect_for(self.engine.dialect)

    def transaction(self, work: Callable[[Connection], T], *, read_only: bool = False,
                    single_statement: bool = False) -> T:
        """Run ``work`` in a transaction of its own, retrying deadlocks and lock timeouts.

        ``single_statement`` work runs on an autocommit connection: its one
        statement is its own transaction, committed without extra round trips.
        """

        def attempt() -> T:
            if single_statement and self.dialect.autocommit_single_statements:
                with connect(self.autocommit_engine) as connection:
                    return work(connection)
            with connect(self.engine) as connection:
                if read_only:
                    connection = connection.execution_options(**{READ_ONLY: True})
                with connection.begin():
                    return work(connection)

        return self._retrying(attempt)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        for number in range(1, _MAX_TRIES + 1):
            began = time.monotonic()
            try:
                return attempt()
            except sa.exc.DBAPIError as exc:
                if number < _MAX_TRIES and self.dialect.is_retryable(
                        exc, waited=time.monotonic() - began):
                    # Short, growing, jittered pauses so that the transactions
                    # that collided do not collide again in lock-step.
                    time.sleep(random.uniform(0, 0.005 * 2**number))
                    continue
                raise self._explained(translate(self.engine, exc, self.prefix)) from exc
            except sa.exc.TimeoutError as exc:
                raise translate(self.engine, exc, self.prefix) from exc
        raise AssertionError("unreachable")

    def _explained(self, error: DBQueueError) -> DBQueueError:
        """``error``, or where it calls dbqueue's tables missing (or too old)
        and some of their names are another application's tables, the error
        that says so and names the fix, a prefix: ``dbqueue migrate`` would
        refuse to create them."""
        if type(error) is not NotMigrated:
            return error
        try:
            with connect(self.engine) as connection:
                existing = table_names(connection)
        except (DBQueueError, *DRIVER_ERRORS):  # cannot tell: what was found stands
            return error
        revision = self._revision() if version_table(self.prefix).lower() in existing else None
        if revision is not None and revision < REVISION:  # those of a later revision missing
            return tables_outdated(self.engine, self.prefix, revision, REVISION)
        names = taken(existing, self.prefix)
        if names and version_table(self.prefix).lower() not in existing:
            return NotMigrated(prefix_advice(self.engine, names, existing, self.prefix))
        # Ours are missing, yet others are there (the prefix forgotten, mistyped,
        # or in capitals on PostgreSQL, where their names match ours but for case).
        others = other_prefixes(existing, self.prefix)
        if others and (not names or self.prefix.lower() in others):  # the likelier fix: first
            missing, said, migrate = str(error).partition("; create them with: ")
            if said:
                return NotMigrated(f"{missing}; {other_prefixes_advice(others)}; else create "
                                   f"them with: {migrate}")
        return error

    def _revision(self) -> str | None:
        """The revision in the version table of this prefix; None if it cannot
        be read (on PostgreSQL, a prefix in capitals names another table)."""
        try:
            with connect(self.engine) as connection:
                return self.read_revision(connection)
        except (DBQueueError, *DRIVER_ERRORS):
            return None

    def read_revision(self, c: Connection) -> str | None:
        """The revision in the version table of this prefix (None: no row)."""
        versions = sa.table(version_table(self.prefix), sa.column("version_num"))
        return max(c.execute(sa.select(versions.c.version_num)).scalars().all(), default=None)

    def read(self, work: Callable[[Connection], T]) -> T:
        """Run ``work``, which only reads, in a transaction of its own."""
        return self.transaction(work, read_only=True)

    def within(self, connection: Executor | None, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in the caller's transaction if given, else in one of our own.

        A failure in the caller's transaction is not retried (the caller's
        earlier statements are gone with it on some servers): it is raised
        as dbqueue's error, and the caller decides.
        """
        if connection is None:
            return self.transaction(work)
        connection = self.callers(connection)
        try:
            if not isinstance(connection, Connection):  # a Session: its transaction's
                connection = connection.connection()
            self._check_transaction(connection)
            self._learn_server(connection)
            return work(connection)
        except DRIVER_ERRORS as exc:
            # Named by the caller's database: it may not be the App's (then
            # "the tables are missing" is about that one).
            engine = connection.engine if isinstance(connection, Connection) else self.engine
            if (dialect_for(engine.dialect).is_missing_table(exc) and engine is not self.engine
                    and self._has_jobs()):
                raise NotMigrated(_elsewhere(engine, self.engine, self.prefix)) from exc
            error = translate(engine, exc, self.prefix)
            if isinstance(exc, sa.exc.DBAPIError) and dialect_for(engine.dialect).is_retryable(exc):
                # Not the server's absence: the caller's transaction collided
                # with another, and only the caller can run it again.
                error = DatabaseUnavailable(
                    f"the transaction of the connection= given collided with another (a "
                    f"deadlock, a lock wait, or at REPEATABLE READ or SERIALIZABLE a change "
                    f"committed since it began): roll it back and run it again "
                    f"({first_line(exc.orig or exc)})")
            elif getattr(exc, "connection_invalidated", False) and type(error) is DatabaseError:
                # A refusal after which the server closed the connection (MySQL's
                # packet limit): the caller's transaction went with it.
                error = DatabaseError(f"{error}; the server closed the connection, and the "
                                      "transaction of the connection= given with it")
            raise error from exc
        except sa.exc.PendingRollbackError as exc:  # an earlier failure ended it (a refusal)
            raise DatabaseError(
                f"the transaction of the connection= given has failed already "
                f"({first_line(exc)}); roll it back, and dispatch in a new one") from exc

    def _check_transaction(self, connection: Connection) -> None:
        """Refuse a caller's connection whose transaction cannot hold the job: on
        another kind of server than the App's (its statements would fail in
        ways that say nothing of the mistake), or committing each statement by
        itself (the job would stay though the caller's work rolled back)."""
        kinds = {"mariadb": "mysql"}  # one server to SQLAlchemy's two names
        theirs = kinds.get(connection.dialect.name, connection.dialect.name)
        ours = kinds.get(self.engine.dialect.name, self.engine.dialect.name)
        if theirs != ours:
            raise ConfigurationError(
                f"the connection= given is to {_SERVERS.get(theirs, theirs)} "
                f"({describe(connection.engine)}), but this App's queue is in "
                f"{_SERVERS.get(ours, ours)} ({describe(self.engine)}): a job queued in a "
                "transaction goes into that transaction's database. Dispatch with "
                "after_commit=session instead (queued in the App's database once your "
                "transaction commits), or give a connection to the App's database")
        if (connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
                or dialect_for(connection.dialect).autocommits(
                    connection.connection.dbapi_connection)):
            raise ConfigurationError(
                "the connection= given is in autocommit mode (isolation_level='AUTOCOMMIT'): "
                "each statement on it commits at once, so the job would stay queued even if "
                "your work were rolled back; give a connection whose transaction is open "
                "(without AUTOCOMMIT), or leave connection= out to queue the job at once")

    def _learn_server(self, connection: Connection) -> None:
        """Before the App's engine has connected, SQLAlchemy cannot tell MariaDB
        from MySQL, and dbqueue's statements for one fail on the other (a
        variable MariaDB 10.x lacks). The caller's connection, to the same kind
        of server (checked), has seen it: when it is to the App's own database
        (whatever the user, driver or parameters), its answer stands for the App's."""
        ours = self.engine.dialect
        if (ours.server_version_info is None and connection.dialect.server_version_info
                and _server_and_database(connection.engine.url)
                == _server_and_database(self.engine.url)):
            ours._dbqueue_dialect = dialect_for(connection.dialect)  # type: ignore[attr-defined]

    def _has_jobs(self) -> bool:
        """Whether the App's own database has dbqueue's jobs table, asked on a
        connection of the App's pool (never on the caller's engine, whose pool
        may hand back the caller's own connection). False if it cannot tell."""
        try:
            with connect(self.engine) as connection:
                return sa.inspect(connection).has_table(self.tables.jobs.name)
        except (DBQueueError, *DRIVER_ERRORS):
            return False

    def callers(self, connection: Executor) -> Executor:
        """The caller's ``connection=``: a Connection, or a Session (a
        scoped_session's current one); ConfigurationError for anything else."""
        if isinstance(connection, Connection):
            return connection
        session = current_session(connection)
        if session is None:
            raise ConfigurationError(_not_a_connection(connection))
        return session

    def _now(self) -> sa.ColumnElement[datetime]:
        return sa.type_coerce(self.dialect.now(), self.tables.jobs.c.created_at.type)


_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _server_and_database(url: sa.URL) -> tuple[str, str, int | None, str | None]:
    """The server and database a URL names, for telling whether two URLs name
    the same: ``?charset=utf8mb4``, another user, ``localhost`` for 127.0.0.1
    do not make another server."""
    host = (url.host or "").lower()
    return ("loopback" if host in _LOOPBACK else host, url.get_backend_name().replace(
        "mariadb", "mysql"), url.port or DEFAULT_PORTS.get(url.get_backend_name()), url.database)
