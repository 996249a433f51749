"""Engines dbqueue was given: its own transactions at the isolation they are written for.

dbqueue's transactions are written for READ COMMITTED (Dialect.isolation),
which the engines it builds use. An application's engine may run at another
level: under MySQL's default REPEATABLE READ a reservation's SKIP LOCKED scan
keeps locks on the rows it passes and reservations deadlock; under
PostgreSQL's, they fail to serialize. And the autocommit engine that lone
dispatches use, derived from an engine that sets an isolation_level of its
own, was not in autocommit mode: SQLAlchemy applies the first level set, and
each lone dispatch was rolled back at checkin, its id returned all the same.

So an engine derived for dbqueue carries its level as an execution option of
dbqueue's own, and ``engine.checkout`` sets it on each connection, where it
holds; SQLAlchemy undoes it when the connection goes back to the pool, and
the application's own connections keep their level.
"""

from __future__ import annotations

import contextlib

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .dialects import dialect_for

ISOLATION = "dbqueue_isolation"
"""The execution option that names the level ``checkout`` sets."""


def adopt(engine: Engine) -> Engine:
    """An engine the App was given, on its pool, for dbqueue's own transactions."""
    wanted = dialect_for(engine.dialect).isolation
    return engine if wanted is None else at_isolation(engine, wanted)


def at_isolation(engine: Engine, level: str) -> Engine:
    """``engine``, on its pool, with each connection ``checkout`` gives at ``level``."""
    return engine.execution_options(**{ISOLATION: level})


def set_isolation(connection: Connection, level: str) -> None:
    """Set ``connection`` (just checked out) to ``level``; closed if that fails.

    The driver's error is raised as SQLAlchemy's DBAPIError: SQLAlchemy
    raises it unwrapped here (a pooled connection the server had ended, say).
    """
    try:
        connection.execution_options(isolation_level=level)
    except connection.dialect.loaded_dbapi.Error as exc:
        dbapi_connection = connection.connection.dbapi_connection
        if connection.dialect.is_disconnect(exc, dbapi_connection, None):
            with contextlib.suppress(Exception):  # the server ended it: not for reuse
                connection.invalidate()
        connection.close()
        raise DBAPIError.instance(None, None, exc, connection.dialect.loaded_dbapi.Error,
                                  connection_invalidated=True) from None
    except BaseException:
        connection.close()
        raise
