"""A lone dispatch as one statement on a driver connection that stays open.

A dispatch outside the caller's transaction is a single autocommitted INSERT;
on a small server its cost is the commit itself, a few hundred microseconds.
SQLAlchemy's per-statement bookkeeping, and checking a connection out of the
pool and back in around every statement, added a third to that. So the
statement is compiled once, and the few connections that dispatch most stay
checked out between dispatches, each with its cursor.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .dialects import dialect_for
from .engine import check_rested, unavailable

# Connections kept checked out between dispatches: one for each thread that
# dispatches at the same moment, up to this many. The rest go back to the pool,
# which the same engine's lock statements share.
KEEP = 4


class FastInsert:
    """Run one INSERT of a job on an autocommit engine and return the new id.

    The statement is SQLAlchemy's, compiled once for the dialect. Up to KEEP
    pooled connections stay checked out between calls. Before one is used
    again, the checks a pool checkout would make are made: one the pool has
    since retired (disposed, or invalidated by a disconnect seen on another
    connection) goes back, and one that rested longer than the pool lets its
    own rest unchecked is pinged, and replaced if the server has closed it.
    Driver errors come out as SQLAlchemy's exceptions, and after one the
    connection goes back to the pool, invalidated if the server dropped it, as
    on SQLAlchemy's own path. A forked child never uses its parent's:
    dbqueue.App gives it a new store.
    """

    def __init__(self, engine: Engine, statement: Callable[[], sa.Insert]) -> None:
        self.engine = engine
        self.statement = statement
        self.sql: str | None = None
        self.returning = False
        # (pool connection, its driver cursor, when it was last used), most recent last.
        self.idle: list[tuple[Any, Any, float]] = []
        # Hand the kept connections back to the pool when this object goes, or at
        # exit, so that the pool closes them properly: in this process only, not
        # in a forked child, whose copies are its parent's (dbqueue.App's fork hook).
        weakref.finalize(self, _give_back_all, self.idle, os.getpid())

    def __call__(self, values: dict[str, Any]) -> int:
        dialect = self.engine.dialect
        connection, cursor = self._take()
        try:
            if self.sql is None:
                self._compile(values)
            cursor.execute(self.sql, values)
            row_id = int(cursor.fetchone()[0] if self.returning else cursor.lastrowid)
        except dialect.loaded_dbapi.Error as exc:
            dropped = dialect.is_disconnect(exc, connection, cursor)
            broken = dropped or dialect_for(dialect).closes_after(exc)
            if dropped:
                # As SQLAlchemy does on a disconnect: the server may have dropped
                # them all (a restart), so the pool recycles every older connection.
                self.engine.pool._invalidate(connection, exc, _checkin=False)
            _give_back(connection, cursor, broken=broken, reason=exc)
            raise sa.exc.DBAPIError.instance(
                self.sql, values, exc, dialect.loaded_dbapi.Error,
                connection_invalidated=dropped) from exc
        except BaseException:
            # Interrupted half-way (KeyboardInterrupt, say): what the server has
            # sent is unread, so this connection can serve nobody else.
            _give_back(connection, cursor, broken=True)
            raise
        if len(self.idle) < KEEP:
            self.idle.append((connection, cursor, time.monotonic()))
        else:
            _give_back(connection, cursor)
        return row_id

    def close(self) -> None:
        """Give the kept connections back to the pool."""
        _give_back_all(self.idle, os.getpid())

    def _take(self) -> tuple[Any, Any]:
        """A connection and cursor: the one kept last, else one from the pool."""
        try:
            connection, cursor, since = self.idle.pop()  # atomic: threads may share self
        except IndexError:
            return self._checkout()
        try:
            if _stale(self.engine, connection):
                raise sa.exc.DisconnectionError()
            check_rested(self.engine, connection.driver_connection, since)
        except sa.exc.DisconnectionError as exc:
            _give_back(connection, cursor, broken=True, reason=exc)
            return self._checkout()
        except BaseException:
            # Interrupted during the ping: its answer may be unread.
            _give_back(connection, cursor, broken=True)
            raise
        return connection, cursor

    def _checkout(self) -> tuple[Any, Any]:
        try:
            connection: Any = self.engine.raw_connection()
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise unavailable(self.engine, exc) from None
        try:
            return connection, connection.driver_connection.cursor()
        except BaseException:
            connection.close()
            raise

    def _compile(self, values: dict[str, Any]) -> None:
        # After the first connection: only then does the dialect know the
        # server (MariaDB, say, may or may not have INSERT ... RETURNING).
        statement = self.statement()
        self.returning = bool(self.engine.dialect.insert_returning
                              and not dialect_for(self.engine.dialect).insert_id_from_cursor)
        if self.returning:
            statement = statement.returning(statement.table.c.id)
        compiled = statement.compile(dialect=self.engine.dialect)
        # The values go to the driver as they are, so the statement must take
        # them by name and nothing else (constants are SQL text, not parameters).
        if compiled.positional or compiled.construct_params(values).keys() != values.keys():
            raise NotImplementedError("FastInsert takes named parameters, all of them given")
        self.sql = compiled.string


def _stale(engine: Engine, connection: Any) -> bool:
    """True if the pool would not hand out this connection again: it belongs to
    a pool since disposed, or one invalidated after it connected (because a
    disconnect was seen on another of its connections, say).

    SQLAlchemy's own checkout test, read from attributes it does not publish;
    tests/test_lone_dispatch.py fails if they change.
    """
    pool = engine.pool
    if connection._pool is not pool:
        return True
    record = connection._connection_record
    return record is None or pool._invalidate_time > record.starttime


def _give_back(connection: Any, cursor: Any, *, broken: bool = False,
               reason: BaseException | None = None) -> None:
    """Close the cursor and check the connection in; a broken one is invalidated
    first, so that the pool connects afresh in its place."""
    try:
        cursor.close()
    except Exception:
        broken = True  # a cursor that cannot close leaves its connection unsound
    if broken:
        connection.invalidate(reason)
    connection.close()


def _give_back_all(idle: list[tuple[Any, Any, float]], owner: int) -> None:
    if os.getpid() != owner:
        return
    while idle:
        try:
            connection, cursor, _ = idle.pop()
        except IndexError:  # another thread took the last one
            return
        _give_back(connection, cursor)
