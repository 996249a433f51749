"""Connections a forked child would inherit from its parent's pools, any engine's.

An application that connects at import (``create_all`` at module level, a
warm-up query) leaves a connection in its engine's pool in the worker's fork
server, and every child forked from it would inherit that pool, socket
included. Two children using it at once read each other's answers ("received
0 results", "Command Out of Sync"), and their jobs fail or, worse, go on with
another job's rows. dbqueue's own engines are rebuilt in each child
(dbqueue.App does it at fork); an application's are not dbqueue's to know.

So the fork server, once it has imported the application, closes the
connections resting in every engine's pool: they are its own, and it never
uses them (``release_imported_connections``). Children then inherit empty
pools and open their own connections. As a second line, for a pool no engine
holds or a connection opened later, every pool tags a connection with the
pid that opened it, and a checkout in another process sets it aside and
opens a new one (SQLAlchemy's documented recipe for pools across fork).

SQLite is left as it was: a database in memory exists only in the
connection that made it, and a child would otherwise find it empty.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

log = logging.getLogger("dbqueue.worker")

_PID = "dbqueue_opened_by"
_set_aside: list[Any] = []  # referenced, so that no collection of them ends a session


def guard_inherited_connections() -> None:
    """From now on, in this process and those forked from it, no pool hands a
    connection opened in one process to another (idempotent)."""
    if not event.contains(Pool, "connect", _tag):
        event.listen(Pool, "connect", _tag)
        event.listen(Pool, "checkout", _refuse_inherited)


def release_imported_connections() -> None:
    """Close the connections resting in the pool of every engine of this
    process (but SQLite's), so that no child inherits one; warn of those
    still checked out (a Session left open at import), which no child can
    use: a statement on one in a child fails, rather than share it."""
    # type(), not isinstance(): a lazy proxy of the application's (Django's
    # settings) evaluates itself for __class__, and may raise.
    for engine in [obj for obj in gc.get_objects() if issubclass(type(obj), Engine)]:
        if engine.dialect.name == "sqlite":
            continue
        try:
            _release(engine)
        except Exception as exc:  # an async engine outside its loop, say: the tag guards it
            log.warning("could not close the connections the application opened at import "
                        "on %s: %s", engine.url, exc)


def _release(engine: Engine) -> None:
    pool = engine.pool
    out = getattr(pool, "checkedout", lambda: 0)()
    if out:
        log.warning("%s has %d connection(s) checked out after the application's import (a "
                    "Session or Connection left open at module level): jobs cannot use them "
                    "(a statement on one fails); open them in the job instead", engine.url, out)
        if not event.contains(Engine, "before_cursor_execute", _refuse_foreign_statement):
            event.listen(Engine, "before_cursor_execute", _refuse_foreign_statement)
    if getattr(pool, "checkedin", lambda: 0)():
        engine.dispose()  # closes what rests in the pool; checked-out ones stay


def _tag(dbapi_connection: Any, record: Any) -> None:
    if not _is_sqlite(dbapi_connection):
        record.info[_PID] = os.getpid()


def _opened_elsewhere(info: dict[Any, Any]) -> int | None:
    """The pid of the process that opened a connection (its pool record's
    ``info``), if it is not this one."""
    opened_by: int | None = info.get(_PID)
    return None if opened_by == os.getpid() else opened_by


def _refuse_inherited(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    opened_by = _opened_elsewhere(record.info)
    if opened_by is None:
        return
    _set_aside.append(dbapi_connection)
    record.dbapi_connection = proxy.dbapi_connection = None
    # The pool takes this as a dead connection and opens a new one in its place.
    raise sa.exc.DisconnectionError(
        f"a connection of process {opened_by}, inherited by process {os.getpid()} at a fork")


def _refuse_foreign_statement(connection: Any, *_: Any) -> None:
    opened_by = _opened_elsewhere(connection.connection.info)
    if opened_by is not None:
        raise sa.exc.InvalidRequestError(
            f"this connection was opened by process {opened_by} (the worker's fork server, "
            "while it imported the application) and is shared with every job's process: "
            "open connections and Sessions inside the job, not at import")


def _is_sqlite(dbapi_connection: Any) -> bool:
    return type(dbapi_connection).__module__.startswith(("sqlite3", "pysqlite"))
