"""Every exception dbqueue raises, in one tree.

::

    DBQueueError
     ├── ConfigurationError        a setting, argument or --app value is wrong
     │    └── UnsupportedDatabase  the server cannot give dbqueue's guarantees
     ├── DatabaseError             the database refused a statement (the driver's
     │    │                        error is its __cause__)
     │    └── DatabaseUnavailable  the database cannot be reached now: down, a lost
     │                             connection, a deadlock given up on (``lasting``:
     │                             it answered, and refused the login)
     ├── NotMigrated               the dbqueue tables are missing
     │    └── SchemaOutdated       or older than this dbqueue needs
     ├── SerializationError        job arguments are not JSON
     ├── InvalidArguments          arguments that do not fit the job's signature
     ├── UnknownJob                no job is registered under that name
     ├── LockNotAcquired           `with app.lock(...)` could not take the lock
     ├── TransactionSpoiled        an idempotent job went on after a database error
     └── NotFound                  no such failed job, worker, ...

    JobSignal                      raised *by job code* to steer the worker
     ├── Release                   put the job back, without counting a failure
     └── Fail                      fail the job now, whatever tries remain

    JobTimeout, WorkerCrashed, MaxAttemptsExceeded
                                   never raised in your code: the names the worker
                                   records in failed_jobs for failures that have no
                                   Python exception of their own

Every message of a user-facing error says what is wrong and how to fix it; the
CLI prints it as one line and exits non-zero.
"""

from __future__ import annotations

from typing import TypeVar

_E = TypeVar("_E", bound=BaseException)


class DBQueueError(Exception):
    """The root of every error dbqueue raises."""


class ConfigurationError(DBQueueError):
    """A setting, argument or application reference is wrong."""


class UnsupportedDatabase(ConfigurationError):
    """The database server is too old (or of a kind) for dbqueue's guarantees."""


class DatabaseError(DBQueueError):
    """The database refused a statement, or could not run it.

    Every failure of the database that dbqueue meets comes out as this error
    or one of its subclasses, never as the driver's or SQLAlchemy's: the
    original is its ``__cause__``. The message is one line, without the
    statement and its parameters.

    ``data`` is True when the server refused what the statement carries (too
    large, or text it cannot store): sending the same again cannot help.
    """

    def __init__(self, message: str, *, data: bool = False) -> None:
        super().__init__(message)
        self.data = data


class DatabaseUnavailable(DatabaseError):
    """dbqueue could not reach the database now: it could not connect, the
    connection was lost, or the server gave up on the statement for a reason
    that passes (a deadlock, a lock wait, a pool with no free connection).
    Trying again later may succeed.

    ``lasting`` is True when trying again cannot help by itself: the server
    answered, and refused the login or does not have the database.
    ``lock_wait`` is True when the server answers, and gave up waiting for a
    lock another transaction holds (past the lock timeout).
    """

    def __init__(self, message: str, *, lasting: bool = False, lock_wait: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting
        self.lock_wait = lock_wait


class NotMigrated(DBQueueError):
    """The dbqueue tables do not exist yet: run ``dbqueue migrate``."""


class SchemaOutdated(NotMigrated):
    """The dbqueue tables are older than this dbqueue needs: run ``dbqueue migrate``."""


class SerializationError(DBQueueError, TypeError):
    """Job arguments or a result could not be encoded as JSON."""


class InvalidArguments(DBQueueError, TypeError):
    """A dispatch's arguments do not fit the job function's signature."""


class UnknownJob(DBQueueError, LookupError):
    """No job is registered under the given name."""


class LockNotAcquired(DBQueueError):
    """``with app.lock(...)`` could not take the lock (within its ``wait``)."""


class NotFound(DBQueueError, LookupError):
    """The named failed job (or other record) does not exist."""


class TransactionSpoiled(DBQueueError):
    """An idempotent job left the transaction of ``dbqueue.transaction()`` unusable.

    It caught a database error and went on, after an error that ends the
    transaction: any error on PostgreSQL (which then refuses every further
    statement), a deadlock or lock wait timeout on MySQL (which has rolled
    the whole transaction back). The job's attempt fails. Wrap a statement
    that may fail in ``connection.begin_nested()`` so that its failure is
    undone alone.
    """


class JobSignal(Exception):
    """Base of the exceptions job code raises to tell the worker what to do."""


class Release(JobSignal):
    """Raise inside a job to put it back on its queue.

    The job becomes available again after ``delay`` seconds. A release is not a
    failure: it does not use up one of the job's ``tries``.

    ``held_back``: a limit shared with other jobs held this one back (a rate
    limit), rather than a delay chosen for it; ``dbqueue work
    --stop-when-empty`` then waits for the job, as for one whose lock is held.
    """

    def __init__(self, delay: float = 0, *, reason: str = "", held_back: bool = False) -> None:
        if not 0 <= delay <= _LONGEST_RELEASE:  # NaN fails too
            raise ValueError(
                f"Release delay must be 0 to {_LONGEST_RELEASE:,} seconds, not {delay!r}")
        super().__init__(f"released for {delay:g} s" + (f": {reason}" if reason else ""))
        self.delay = float(delay)
        self.reason = reason
        """Why, for the worker's log (a middleware says which limit held the job back)."""
        self.held_back = held_back


_LONGEST_RELEASE = 100 * 365 * 86400


class Fail(JobSignal):
    """Raise inside a job to fail it at once, whatever ``tries`` remain.

    The job moves to ``failed_jobs`` with ``reason`` as its message and its
    ``on_failure`` hook runs.
    """

    def __init__(self, reason: str = "failed by the job") -> None:
        super().__init__(reason)
        self.reason = reason


# Names recorded in failed_jobs.exception_class for failures without a Python
# exception of their own. They are real classes so that `dont_retry` and
# readers of the code can refer to them.


class JobTimeout(DBQueueError):
    """A job ran longer than its ``timeout`` and its process was killed."""


class WorkerCrashed(DBQueueError):
    """The process running a job died (a signal, ``os._exit``, out of memory)."""


class MaxAttemptsExceeded(DBQueueError):
    """A job was reserved more times than its ``tries`` allow.

    This happens when the worker that held its last attempt died or lost its
    lease without recording an outcome.
    """


_PERMANENT = "_dbqueue_permanent"


def permanent(error: _E) -> _E:
    """Mark ``error``, raised about a job's own arguments or result (its
    idempotency key cannot be computed, its result is not JSON), as one that
    every retry would meet again: the worker fails the job at once."""
    setattr(error, _PERMANENT, True)
    return error


def is_permanent(error: BaseException) -> bool:
    return bool(getattr(error, _PERMANENT, False))
