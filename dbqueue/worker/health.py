"""Whether the database answers: one log line when it stops, one when it is back.

Every part of the worker that talks to the database reports here. While the
database is unreachable, each part waits longer between its tries (doubling,
capped), so that an outage costs the server nothing when it returns and the
log a single line, not two a second.
"""

from __future__ import annotations

import logging
import time

from ..errors import DatabaseError, DatabaseUnavailable
from ..store.engine import first_line

log = logging.getLogger("dbqueue.worker")

TRANSIENT = (DatabaseUnavailable,)
"""Errors that say the database cannot be reached now, not that it refused."""
DB_ERRORS = (DatabaseError,)
"""Every failure of the database (the store raises no other kind): refusals
and the TRANSIENT ones."""

FIRST_RETRY = 0.5
LOCK_WAIT_SAID_EVERY = 60.0
"""Seconds: a lock waited for in vain is said at WARNING at most this often
for each thing the worker does (at DEBUG meanwhile)."""
LONGEST_WAIT = 4.0
"""The longest pause between tries: once the database is back, work resumes
within this, and meanwhile each worker sends it a few statements a second."""


def describe(error: BaseException) -> str:
    """A database error on one line, in the driver's words when it has them
    (the store's errors carry the driver's as their cause)."""
    cause = error.__cause__ if isinstance(error, DatabaseError) else None
    return first_line(getattr(cause, "orig", None) or getattr(error, "orig", None) or error)


class Health:
    def __init__(self) -> None:
        self.down_since: float | None = None
        self.failures = 0
        self._last_refusal = ""
        self._back_at: float | None = None
        """When the database was last seen back after being away."""
        self._lock_waits_said: dict[str, float] = {}
        """When a lock wait was last logged, for each thing the worker does."""

    def failed(self, what: str, error: BaseException, *, began: float | None = None) -> float:
        """Report an error of ``what`` (e.g. "reserve jobs"), a call that began at
        ``began`` (monotonic clock) if it ran on another thread; return the
        seconds to wait before trying that again."""
        self.failures += 1  # counted all the same: see ``failing``
        reason = describe(error)
        if isinstance(error, TRANSIENT) and error.lock_wait:
            self._waited_for_lock(what, reason)
        elif isinstance(error, TRANSIENT):
            if self._old_news(began):
                # Begun while the database was away, ended once another call
                # had seen it back (a connection attempt whose packets were
                # lost): no new outage to report. A new one fails the next
                # try too, and is reported then.
                log.debug("%s failed, begun while the database was away: %s", what, reason)
            elif self.down_since is None:
                self.down_since = time.monotonic()
                log.error("the database is unreachable (%s: %s); retrying until it is back "
                          "(nothing is lost meanwhile)", what, reason)
            else:
                log.debug("still unreachable (%s: %s)", what, reason)
        elif reason != self._last_refusal:  # the same refusal again says nothing new
            self._last_refusal = reason
            if isinstance(error, DB_ERRORS):
                log.error("the database refused to %s: %s", what, reason)
            else:
                log.error("could not %s: %s: %s", what, type(error).__name__, reason)
        return min(LONGEST_WAIT, FIRST_RETRY * 2.0 ** min(self.failures - 1, 10))

    def _waited_for_lock(self, what: str, reason: str) -> None:
        """No outage: the server answers, and another transaction holds what
        the statement needs (an application's transaction that holds a
        batch's row, say). Said once a minute for each ``what``."""
        now = time.monotonic()
        said = self._lock_waits_said.get(what)
        level = logging.DEBUG if said is not None and now - said < LOCK_WAIT_SAID_EVERY else (
            logging.WARNING)
        if level == logging.WARNING:
            self._lock_waits_said[what] = now
        log.log(level, "could not %s within the lock timeout: another transaction holds what "
                "it needs (%s); trying again", what, reason)

    def _old_news(self, began: float | None) -> bool:
        return (began is not None and self.down_since is None
                and self._back_at is not None and began < self._back_at)

    @property
    def failing(self) -> bool:
        """Whether the last statement failed (the database may be away)."""
        return self.failures > 0

    def succeeded(self) -> None:
        """A statement went through: the database is back, if it was away."""
        if self.down_since is not None:
            self._back_at = time.monotonic()
            log.warning("the database is reachable again, after %.1f s",
                        self._back_at - self.down_since)
        self.down_since = None
        self.failures = 0
        self._last_refusal = ""
