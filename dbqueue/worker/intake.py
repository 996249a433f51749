"""Turning reserved rows into runnable jobs, or into failures when they cannot run.

A row that cannot be decoded, names an unknown job, or has run out of attempts
is failed here, before any child sees it (DESIGN §2.7: bad input is contained).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .. import serializer
from ..errors import ConfigurationError, MaxAttemptsExceeded, UnknownJob
from ..middleware import JobContext, LockRequest, WithoutOverlapping
from ..policy import Rules, refuse_attempt
from ..serializer import Payload
from ..store import Failure, Lease, ReservedRow
from .child import class_name
from .clock import Deadline


@dataclass(eq=False, slots=True)
class Held:
    """A job this worker holds a lease on."""

    row: ReservedRow
    lease: Lease
    job: Any  # dbqueue.Job, or None when the row could not be resolved
    payload: Payload
    reserved_mono: float
    lease_until: Deadline
    """Until when the lease certainly holds: it was taken or last renewed for
    ``retry_after`` seconds by a statement sent after the instant this counts
    from. Moved forward by each heartbeat."""
    rules: Rules = field(default_factory=lambda: Rules(tries=1))
    timeout: float = 0.0
    locks: list[tuple[str, str, float]] = field(default_factory=list)
    """(key, owner, ttl) of the locks taken for this job (see WithoutOverlapping)."""
    counted: bool = False
    """Whether its attempt is counted in the table (see Store.complete's ``started``)."""
    lease_lost: bool = False
    """Another worker took the job (this one stalled) while it ran here."""
    runtime: float | None = None
    """Seconds its attempt ran, once it has ended (for the log)."""

    def lock_requests(self, app: Any) -> list[LockRequest]:
        """The locks its middleware wants taken before it runs."""
        if self.job is None or not self.job.middleware:
            return []
        guards = [m for m in self.job.middleware if isinstance(m, WithoutOverlapping)]
        if not guards:
            return []
        context = JobContext(app, self.job, self.row.id, self.payload.args, self.payload.kwargs,
                             self.row.attempts, self.timeout)
        by_key: dict[str, LockRequest] = {}
        for guard in guards:  # two guards on one key: the first one's rules
            request = guard.request(context)
            by_key.setdefault(request.key, request)
        return list(by_key.values())

    def db_now(self) -> datetime:
        """The database clock now, from the reservation's timestamp and a monotonic clock."""
        return self.row.reserved_at + timedelta(seconds=time.monotonic() - self.reserved_mono)


def admit(app: Any, row: ReservedRow, token: str, lease_until: Deadline,
          ) -> tuple[Held, Failure | None]:
    """A Held job for ``row``, and the Failure to record instead of running it, if any.

    Whatever the row holds (anyone with SQL access can write one), this
    returns: a row that cannot run becomes a Failure, never an exception
    that would stop the worker (DESIGN §2.7).
    """
    held = Held(row, Lease(row.id, token), None, Payload(), time.monotonic(), lease_until)
    try:
        return held, _resolve(app, held)
    except Exception as exc:  # a case the checks below did not foresee: still contained
        return held, Failure(class_name(exc),
                             f"job {row.id} ({row.job!r}) cannot run: {exc}",
                             traceback.format_exc())


def _resolve(app: Any, held: Held) -> Failure | None:
    row = held.row
    try:
        held.payload = serializer.decode(row.payload)
    except ValueError as exc:
        return Failure("dbqueue.SerializationError",
                       f"job {row.id} ({row.job!r}) cannot be decoded: {exc}", "")
    try:
        job = app.lookup(row.job)
    except UnknownJob as exc:
        return Failure(class_name(exc), str(exc), "")
    held.job = job
    try:
        held.rules = job.rules(held.payload.options, row.created_at)
        held.timeout = job.timeout_for(held.payload.options)
    except ConfigurationError as exc:
        return Failure(class_name(exc), f"job {row.id} ({row.job!r}) has invalid options: {exc}",
                       "")
    why = refuse_attempt(row.attempts, held.rules, row.reserved_at)
    if why is not None:
        return Failure(class_name(MaxAttemptsExceeded), why, "")
    return None
