"""Connections a forked child inherits from the pools of its parent, any engine's.

An application that connects at import (``create_all`` at module level, a
warm-up query) leaves a connection in its engine's pool in the worker's fork
server, and every child forked from it inherits that pool, socket included.
Two children using it at once read each other's answers ("received 0
results", "Command Out of Sync"), and their jobs fail or, worse, go on with
another job's rows.

dbqueue's own engines are rebuilt in each child (dbqueue.App does it at
fork); an application's are not dbqueue's to know. So, as SQLAlchemy's
documentation advises for pools used across ``os.fork()``, every pool of the
process tags a connection with the pid that opened it, and a checkout in
another process sets the connection aside and opens a new one. Aside, not
closed: closing it would end the session the parent still owns (psycopg
says goodbye to the server on close, and on garbage collection too, hence
the list that keeps them).
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import Pool

_PID = "dbqueue_opened_by"
_inherited: list[Any] = []


def guard_inherited_connections() -> None:
    """From now on, in this process and those forked from it, no pool hands a
    connection opened in one process to another (idempotent)."""
    if not event.contains(Pool, "connect", _tag):
        event.listen(Pool, "connect", _tag)
        event.listen(Pool, "checkout", _refuse_inherited)


def _tag(_dbapi_connection: Any, record: Any) -> None:
    record.info[_PID] = os.getpid()


def _refuse_inherited(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    opened_by = record.info.get(_PID)
    if opened_by is None or opened_by == os.getpid():
        return
    _inherited.append(dbapi_connection)
    record.dbapi_connection = proxy.dbapi_connection = None
    # The pool takes this as a dead connection and opens a new one in its place.
    raise sa.exc.DisconnectionError(
        f"a connection of process {opened_by}, inherited by process {os.getpid()} at a fork")
