"""Idempotent jobs: effects and their idempotency key commit in one transaction.

    @app.job(idempotency_key=lambda order_id: f"charge:{order_id}")
    def charge(order_id: int) -> dict:
        connection = dbqueue.transaction()          # a SQLAlchemy Connection
        connection.execute(charges.insert().values(order_id=order_id, cents=4200))
        return {"charged": 4200}                    # recorded in job_outcomes as JSON

The worker opens a transaction on the queue's database, takes the key in
``job_outcomes`` (a run of the same key elsewhere waits for it, then skips),
runs the job, records its result and commits. What the job writes through
``dbqueue.transaction()`` therefore happens exactly once per key: a retry after
a crash either finds nothing committed and runs again, or finds the outcome
and completes without running. Anything else the job does (an email, an HTTP
call) is not covered: after a crash before the commit it happens again.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from . import serializer
from .errors import ConfigurationError
from .store.engine import connect
from .store.outcomes import Outcomes

if TYPE_CHECKING:
    from .app import App
    from .jobs import Job

_current: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "dbqueue_transaction", default=None)


def transaction() -> Connection:
    """The connection whose transaction records the running job's outcome.

    Write the job's effects through it (``execute``, or ``Session(bind=...)``)
    to commit them together with the idempotency key. Only inside a job that
    has an ``idempotency_key``; never commit or roll it back yourself.
    """
    connection = _current.get()
    if connection is None:
        raise ConfigurationError(
            "dbqueue.transaction() is only available while a job with idempotency_key= runs"
        )
    return connection


def run_idempotent(app: App, job: Job[..., Any], job_id: int, args: tuple[Any, ...],
                   kwargs: dict[str, Any], body: Callable[[], Any]) -> Any:
    """Run ``body`` once per idempotency key; None when the key has an outcome already."""
    key = job.idempotency_id(args, kwargs)
    outcomes = Outcomes(app.store)
    # Not store.transaction(): a retried deadlock must not run the job's body
    # twice within one attempt. A failure rolls all of it back and the worker
    # retries the attempt as usual.
    with connect(app.store.engine) as connection, connection.begin():
        if not outcomes.claim(connection, key, job.name, job_id):
            return None
        token = _current.set(connection)
        try:
            result = body()
        finally:
            _current.reset(token)
        outcomes.record(connection, key,
                        serializer.encode_value(f"the result of job {job.name!r}", result))
        return result
