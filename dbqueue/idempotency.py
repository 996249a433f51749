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

import contextlib
import contextvars
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import serializer
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidArguments,
    Release,
    SerializationError,
    TransactionSpoiled,
    permanent,
)
from .store.engine import checkout
from .store.outcomes import Outcomes

if TYPE_CHECKING:
    from .app import App
    from .jobs import Job

# No connection to be had (a failover, say): not the job's fault.
_UNAVAILABLE = (DatabaseUnavailable, sa.exc.TimeoutError)


class CommitFailed(Exception):
    """A shared transaction of idempotent jobs did not commit (the database's
    error is the cause). ``transient``: none of its jobs' doing (a lost
    connection, a deadlock), and whether it took effect is unknown."""

    def __init__(self, transient: bool) -> None:
        super().__init__("the transaction of idempotent jobs did not commit")
        self.transient = transient


class _JobTransaction:
    """What ``transaction()`` hands the running job: the batch's connection,
    behind a savepoint taken on first use, so that the job's own writes can be
    undone alone if it fails."""

    def __init__(self, connection: Connection, outcomes: Outcomes) -> None:
        self.connection = connection
        self.outcomes = outcomes
        self.savepoint = False

    def use(self) -> Connection:
        if not self.savepoint:
            self.outcomes.savepoint(self.connection)
            self.savepoint = True
        return self.connection


_current: contextvars.ContextVar[_JobTransaction | None] = contextvars.ContextVar(
    "dbqueue_transaction", default=None)


def transaction() -> Connection:
    """The connection whose transaction records the running job's outcome.

    Write the job's effects through it (``execute``, or ``Session(bind=...)``)
    to commit them together with the idempotency key. Only inside a job that
    has an ``idempotency_key``; never commit or roll it back yourself.
    """
    running = _current.get()
    if running is None:
        raise ConfigurationError(
            "dbqueue.transaction() is only available while a job with idempotency_key= runs"
        )
    return running.use()


class OutcomeBatch:
    """The open transaction in which a worker's child runs idempotent jobs.

    A job that fails is undone alone: its writes through ``transaction()``
    are rolled back to their savepoint, and its key is given up. When several
    short idempotent jobs arrive one after another, they share the
    transaction and its one commit (up to ``MAX_JOBS`` of them or
    ``MAX_SECONDS``), and their keys are claimed together, in one statement
    (``preclaim``); the worker records them as complete only once it has
    committed (see ``pending``).

    SQLite has a single writer: there each job commits as soon as its body
    returns, so that its middleware's own writes (a rate limit, a circuit)
    do not wait behind the transaction.
    """

    MAX_JOBS = 32  # PostgreSQL keeps 64 subtransactions per transaction in memory
    MAX_SECONDS = 0.02
    ALONE_FOR = 60.0
    """Seconds during which jobs commit one by one after a shared commit failed."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.outcomes = Outcomes(app.store)
        self.pending: list[int] = []
        """Jobs whose effects and outcome wait for ``commit``."""
        self.lost: list[int] = []
        """Jobs whose effects were lost with the transaction: they must run again."""
        self.preclaimed: dict[int, tuple[str, bool]] = {}
        """By job id: the key of a job about to run, and whether it was claimed
        (False: it has an outcome already). The transaction must not end while
        claims of jobs not yet run remain."""
        self.shared = not app.store.dialect.single_writer
        self._alone_until = 0.0
        self._connection: Connection | None = None
        self._transaction: sa.RootTransaction | None = None
        self._opened = 0.0

    @property
    def open(self) -> bool:
        return self._connection is not None

    @property
    def sharing(self) -> bool:
        """Whether jobs share the transaction now."""
        return self.shared and time.monotonic() >= self._alone_until

    def alone_for_a_while(self) -> None:
        """A shared commit failed for a reason one of its jobs may have caused
        (a deferred constraint, say): commit jobs one by one for a while, so
        that only that job fails, and the others are not dragged along."""
        self._alone_until = time.monotonic() + self.ALONE_FOR

    def due(self) -> bool:
        """Whether the transaction should commit before another job joins it."""
        return not self.preclaimed and (
            len(self.pending) >= self.MAX_JOBS
            or time.monotonic() - self._opened >= self.MAX_SECONDS)

    def preclaim(self, runs: list[tuple[Job[..., Any], int, tuple[Any, ...], dict[str, Any]]],
                 ) -> None:
        """Claim the keys of the idempotent jobs about to run here one after
        another, in one statement. Each then runs as if it had claimed its own
        (``run``); the caller gives back a claim its job did not use (``unused``)."""
        if not self.sharing:
            return
        # A job claimed already keeps its claim; a key claimed already for a job
        # not yet run is its twin's, which finds it taken and skips, as it should.
        claimed = {key for key, _ in self.preclaimed.values()}
        runs = [run for run in runs if run[1] not in self.preclaimed]
        runs = runs[:max(0, self.MAX_JOBS - len(self.pending) - len(self.preclaimed))]
        claims: dict[str, tuple[str, str, int]] = {}
        for job, job_id, args, kwargs in runs:
            try:
                key = job.idempotency_id(args, kwargs)
            except Exception:
                continue  # the job's own run reports it
            if key not in claimed:
                claims.setdefault(key, (key, job.name, job_id))  # a twin claims when it runs
        if len(claims) < 2:
            return
        try:
            connection = self._begin()
        except _UNAVAILABLE:
            return  # each job meets the outage in its own run
        try:
            taken = self.outcomes.claim_many(connection, list(claims.values()))
        except sa.exc.DBAPIError:
            self.discard()  # two batches crossed: claim one by one instead
            return
        if taken is not None:
            for key, _, job_id in claims.values():
                self.preclaimed[job_id] = (key, key in taken)

    def unused(self, job_id: int) -> None:
        """Give back the key claimed for a job that ended without using it (its
        middleware skipped or released it)."""
        key, claimed = self.preclaimed.pop(job_id, ("", False))
        if claimed and self._connection is not None:
            try:
                self.outcomes.unclaim(self._connection, key)
            except sa.exc.DBAPIError:
                self.discard()

    def run(self, job: Job[..., Any], job_id: int, args: tuple[Any, ...],
            kwargs: dict[str, Any], body: Callable[[], Any]) -> Any:
        """Run ``body`` once per idempotency key; None when the key has an outcome already."""
        preclaimed = self.preclaimed.pop(job_id, None)
        key = preclaimed[0] if preclaimed else _key_of(job, args, kwargs)
        try:
            connection = self._begin()
        except _UNAVAILABLE as exc:
            raise Release(1.0) from exc  # the database is away: try again soon
        # Not store.transaction(): a retried deadlock must not run the job's body
        # twice within one attempt.
        try:
            if preclaimed:
                claimed = preclaimed[1]
            else:
                claimed = self.outcomes.claim(connection, key, job.name, job_id)
        except sa.exc.DBAPIError as exc:
            self.discard()  # a failed statement spoils the whole transaction
            if self.app.store.dialect.is_retryable(exc):
                # Runs of one key in two batches took each other's keys: not
                # this job's failure. Run it again soon.
                raise Release(0.0) from exc
            raise
        if not claimed:  # done before: what it returned then (a chain pipes it on)
            outcome = self.outcomes.get(key)
            return None if outcome is None else outcome.result
        running = _JobTransaction(connection, self.outcomes)
        token = _current.set(running)
        try:
            result = body()
            encoded = _encoded_result(job, result)
        except BaseException:
            self._undo(running, key)
            raise
        finally:
            _current.reset(token)
        self._keep(running, key, encoded, job.name)
        self.pending.append(job_id)
        if not self.sharing:
            self.pending = []
            try:
                self._commit()
            except sa.exc.DBAPIError as exc:
                if self.transient(exc):  # it may have committed: the key makes a rerun safe
                    raise Release(0.0) from exc
                raise  # the job's own doing (a deferred constraint): its attempt fails
        return result

    def _keep(self, running: _JobTransaction, key: str, encoded: str | None,
              job_name: str) -> None:
        """Record the job's result under ``key``, and make sure the transaction
        it wrote in is still whole: a job that caught a database error and went
        on may have lost it (and, on MySQL, that of the jobs before it too)."""
        connection = running.connection
        try:
            # The claim stored a NULL result already: None needs no statement.
            recorded = encoded is None or self.outcomes.record(connection, key, encoded)
            if running.savepoint:
                self.outcomes.keep_savepoint(connection)
        except sa.exc.DBAPIError as exc:
            self._undo(running, key)
            raise TransactionSpoiled(
                f"job {job_name!r} went on after a database error that left its "
                f"transaction unusable ({exc.orig or exc}); run a statement that may "
                "fail inside connection.begin_nested()") from exc
        if not recorded:  # the claim is gone: the server rolled the transaction back
            self.discard()
            raise TransactionSpoiled(
                f"job {job_name!r}'s transaction was rolled back under it (it went on "
                "after a database error, a deadlock perhaps)")

    def commit(self) -> None:
        """Commit the open transaction; raise CommitFailed if it cannot.

        Either way ``pending`` is left for the caller to report and clear.
        """
        try:
            self._commit()
        except sa.exc.DBAPIError as exc:
            raise CommitFailed(self.transient(exc)) from exc

    def _commit(self) -> None:
        connection, transaction = self._connection, self._transaction
        if connection is None or transaction is None:
            raise RuntimeError("no transaction is open")
        if self.preclaimed:  # their jobs would find their own claims and skip
            raise RuntimeError("give back the claims of jobs not yet run first")
        self._connection = self._transaction = None
        try:
            transaction.commit()
        finally:
            connection.close()

    def transient(self, error: sa.exc.DBAPIError) -> bool:
        """Whether a failed COMMIT is none of its jobs' doing (a lost connection,
        a deadlock): they run again without using a try."""
        return (isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError)
                or self.app.store.dialect.is_retryable(error))

    def give_back_claims(self) -> None:
        """Give back the claims of jobs not yet run, before an early commit."""
        for job_id in list(self.preclaimed):
            self.unused(job_id)

    def discard(self) -> None:
        """Roll back the open transaction (its jobs are lost: they run again)."""
        connection, self._connection, self._transaction = self._connection, None, None
        self.preclaimed.clear()
        if connection is not None:
            self.lost += self.pending
            self.pending = []
            with contextlib.suppress(sa.exc.DBAPIError):
                connection.close()  # rolls back

    def _begin(self) -> Connection:
        if self._connection is None:
            connection = checkout(self.app.store.engine)
            try:
                self._transaction = connection.begin()
            except BaseException:
                connection.close()
                raise
            self._connection = connection
            self._opened = time.monotonic()
        return self._connection

    def _undo(self, running: _JobTransaction, key: str) -> None:
        """Take back what a failed job did: its writes, then its claim on ``key``."""
        if self._connection is None:
            return
        try:
            if running.savepoint:
                self.outcomes.undo_savepoint(self._connection)
            self.outcomes.unclaim(self._connection, key)
        except sa.exc.DBAPIError:
            # The server ended the whole transaction (MySQL does on a deadlock):
            # the jobs before this one lost their effects too.
            self.discard()


def _key_of(job: Job[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        return job.idempotency_id(args, kwargs)
    except InvalidArguments as exc:  # the same at every retry
        raise permanent(exc) from exc.__cause__


def _encoded_result(job: Job[..., Any], result: Any) -> str | None:
    if result is None:
        return None
    try:
        return serializer.encode_result(f"the result of job {job.name!r}", result)
    except SerializationError as exc:  # the same at every retry
        raise permanent(exc) from exc.__cause__
