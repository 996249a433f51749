"""Queueing a unique job: inserted only while no queued or running job holds its key.

The key lives in ``jobs.unique_key`` under a unique index; a holder whose
``unique_for`` has passed gives its key up (it stays queued, keyless).

In a transaction of dbqueue's own, the expired holder is freed and the job
inserted in that one short transaction. In the caller's transaction
(``connection=``) on a server, nothing may lock the holder's row: the caller
may keep its transaction open for long, and meanwhile the holder's worker
could neither renew its lease nor record its end (and on MySQL, an UPDATE
that matched nothing locked the gap where the key would go: two callers'
dispatches then deadlocked, which rolls back the caller's whole transaction).
So there the holder is first looked up with a plain read, which locks
nothing, and only an expired one is freed, in a short transaction of
dbqueue's own (a second connection from the App's pool, then). SQLite has
one writer at a time, whose transaction the caller's already is, and a pool
of one connection (StaticPool) would give dbqueue the caller's own: in both,
freed in the caller's transaction, as in dbqueue's own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import pool
from sqlalchemy.engine import Connection, Engine

from ..errors import DBQueueError
from .values import NewJob

if TYPE_CHECKING:
    from .dispatch import Dispatch

log = logging.getLogger("dbqueue")

# How a caller's transaction at READ COMMITTED spells it: a plain read sees
# what is committed now, not a snapshot taken when its transaction began.
_SEES_THE_LATEST = frozenset({"READ-COMMITTED", "READ-UNCOMMITTED"})


def push_unique(store: Dispatch, c: Connection, job: NewJob, *, callers: bool) -> int | None:
    """Insert ``job``, whose unique_key is set, on ``c``; its id, or None if its
    key is taken. ``callers``: ``c`` is in the caller's transaction."""
    jobs, dialect = store.tables.jobs, store.dialect
    if dialect.embedded or not callers or _one_connection(store.engine):
        c.execute(sa.update(jobs)
                  .where(jobs.c.unique_key == job.unique_key,
                         jobs.c.unique_expires_at <= dialect.now())
                  .values(unique_key=None, unique_expires_at=None))
    elif (holder := _holder(store, c, job.unique_key)) is not None:
        holder_id, expired, isolation = holder
        if expired:
            _free(store, holder_id, job.unique_key)
        elif dialect.locks_on_duplicate and str(isolation).upper() in _SEES_THE_LATEST:
            # Taken, as committed now. The INSERT's duplicate-key error would
            # leave a lock on the holder's key (see Dialect.locks_on_duplicate).
            # (In an older snapshot the holder may have ended since: then the
            # INSERT says whether the key is taken.)
            return None
    return dialect.insert_unique(c, jobs, {
        "queue": job.queue, "job": job.job, "payload": job.payload,
        "priority": job.priority, "attempts": 0,
        "available_at": dialect.now_plus(job.delay), "created_at": dialect.now(),
        "unique_key": job.unique_key,
        "unique_expires_at": None if job.unique_for is None else dialect.now_plus(
            job.unique_for),
    })


def _holder(store: Dispatch, c: Connection, key: str | None) -> tuple[Any, ...] | None:
    """The job holding ``key`` as the caller's transaction sees it: its id,
    whether its unique_for has passed, and the transaction's isolation
    where the dialect reads it with the row (else None); None if none."""
    jobs, dialect = store.tables.jobs, store.dialect
    expired = sa.case((jobs.c.unique_expires_at <= dialect.now(), True), else_=False)
    isolation = (sa.literal_column(dialect.isolation_variable)
                 if dialect.isolation_variable else sa.null())
    row = c.execute(sa.select(jobs.c.id, expired, isolation)
                    .where(jobs.c.unique_key == key).limit(1)).first()
    return None if row is None else tuple(row)


def _free(store: Dispatch, holder_id: int, key: str | None) -> None:
    """Free the expired holder's key in a short transaction of dbqueue's own.

    NOWAIT, retried for a moment: a worker renewing or completing the holder
    locks its row for milliseconds, but a row the caller's own transaction
    locked stays locked until the caller, who waits for this, goes on. Then
    the key is left taken (the insert finds it so)."""
    jobs, dialect = store.tables.jobs, store.dialect

    def free(connection: Connection) -> None:
        expired = connection.execute(
            sa.select(jobs.c.id).where(jobs.c.id == holder_id, jobs.c.unique_key == key,
                                       jobs.c.unique_expires_at <= dialect.now())
            .with_for_update(nowait=True)).first()
        if expired is not None:
            connection.execute(sa.update(jobs).where(jobs.c.id == holder_id)
                               .values(unique_key=None, unique_expires_at=None))

    try:
        store.transaction(free)
    except DBQueueError as exc:
        cause = exc.__cause__
        if not (isinstance(cause, sa.exc.DBAPIError) and dialect.is_retryable(cause)):
            raise  # not a lock that would not pass (no connection to be had, say)
        log.warning("the unique key %r of job %d has expired, but its row stays locked (by "
                    "the transaction dispatching, perhaps): the key counts as taken", key,
                    holder_id)


def _one_connection(engine: Engine) -> bool:
    """Whether ``engine``'s pool holds one connection for all (StaticPool and
    its kin): a transaction of dbqueue's own would be the caller's."""
    return isinstance(engine.pool, _ONE_CONNECTION)


_ONE_CONNECTION = (pool.StaticPool, pool.SingletonThreadPool, pool.AssertionPool)
