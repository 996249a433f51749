"""Turning reserved rows into runnable jobs, or into failures when they cannot run.

A row that cannot be decoded, names an unknown job, or has run out of attempts
is failed here, before any child sees it (DESIGN §2.7: bad input is contained).

A job unknown here but dispatched moments ago is put back instead, for a
while: during a rolling deploy, new code dispatches jobs that the workers
still on the old code do not know, and one with the new code will run them.
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from .. import serializer
from ..errors import ConfigurationError, MaxAttemptsExceeded, UnknownJob
from ..policy import Rules, refuse_attempt
from ..store import LONG_AGO, Failure, Lease, ReservedRow
from ..store.flows import flow_problem
from .clock import Deadline
from .ledger import Entry
from .messages import class_name

log = logging.getLogger("dbqueue.worker")

UNKNOWN_GRACE = 600.0
"""How long after its dispatch a job unknown here is put back rather than
failed: longer than a rolling deploy of the workers takes."""
_UNREADABLE = "its created_at cannot be read as a time (see the row)"
"""Where the reader took such a row as created long ago (store.LONG_AGO)."""
UNKNOWN_RETRY = 5.0
"""How long an unknown job is put back for, each time."""


@dataclass(frozen=True, slots=True)
class Postponed:
    """The row cannot run here now: back to the queue for ``delay`` seconds,
    without using a try."""

    delay: float
    why: str


def admit(app: Any, row: ReservedRow, token: str, lease_until: Deadline,
          ) -> tuple[Entry, Failure | Postponed | None]:
    """A ledger entry for ``row``, and the Failure to record instead of running
    it, or the Postponed to put it back, if either.

    Whatever the row holds (anyone with SQL access can write one), this
    returns: a row that cannot run becomes a Failure, never an exception
    that would stop the worker (DESIGN §2.7).
    """
    entry = Entry(row, Lease(row.id, token), None, None, time.monotonic(), lease_until)
    try:
        return entry, _resolve(app, entry)
    except Exception as exc:  # a case the checks below did not foresee: still contained
        return entry, Failure(class_name(exc), f"job {row.id} ({row.job!r}) cannot run: {exc}",
                              traceback.format_exc())


def _resolve(app: Any, entry: Entry) -> Failure | Postponed | None:
    row = entry.row
    # Decoded first when it may hold a flow: a job that fails here (unknown,
    # out of tries) still counts in its batch and stops its chain.
    failure = _decode(entry) if _may_hold_options(row.payload) else None
    if failure is not None:
        return failure
    try:
        job = app.lookup(row.job)
    except UnknownJob as exc:
        return _unknown(row, exc)
    entry.job = job
    if entry.payload is None and _reads_arguments(job):
        failure = _decode(entry)
        if failure is not None:
            return failure
    # Else the child decodes it: the supervisor need not (see RunJob.payload).
    options = {} if entry.payload is None else entry.payload.options
    try:
        entry.rules = (job.rules(options, row.created_at) if options or job.retry_until
                       else _plain_rules(job))
        entry.timeout = job.timeout_for(options) if options else job.timeout
    except ConfigurationError as exc:
        return Failure(class_name(exc), f"job {row.id} ({row.job!r}) has invalid options: {exc}",
                       "")
    why = refuse_attempt(row.attempts, entry.rules, row.reserved_at)
    if why is not None:
        if row.created_at is LONG_AGO and "retry_until" in why:
            why += f" ({_UNREADABLE}, and retry_until counts from it)"
        return Failure(class_name(MaxAttemptsExceeded), why, "")
    return None


def _unknown(row: ReservedRow, error: UnknownJob) -> Failure | Postponed:
    age = (row.reserved_at - row.created_at).total_seconds()  # both the server's clock
    # A created_at ahead of the clock (written by hand, in another time zone)
    # gives no grace: it would be put back for hours, or for ever.
    if 0 <= age < UNKNOWN_GRACE:
        return Postponed(UNKNOWN_RETRY, f"{error}; put back for a worker that knows it (it "
                         f"fails for good {UNKNOWN_GRACE / 60:g} minutes after its dispatch)")
    why = (_UNREADABLE if row.created_at is LONG_AGO
           else "its created_at is ahead of the server's clock" if age < 0 else
           f"nor did a worker that knows it run it in the {UNKNOWN_GRACE / 60:g} minutes "
           "after its dispatch")
    return Failure(class_name(error), f"{error} ({why})", "")


def _decode(entry: Entry) -> Failure | None:
    row = entry.row
    try:
        entry.payload = serializer.decode(row.payload)
    except ValueError as exc:
        return Failure("dbqueue.SerializationError",
                       f"job {row.id} ({row.job!r}) cannot be decoded: {exc}", "")
    if entry.payload.flow:
        why = flow_problem(entry.payload.flow)
        if why is not None:  # not followed: its steps and counts cannot be trusted
            entry.payload = replace(entry.payload, flow=None)
            return Failure("dbqueue.SerializationError",
                           f"job {row.id} ({row.job!r}) has a malformed flow: {why}", "")
    return None


def _may_hold_options(payload: str) -> bool:
    """Whether the payload may set options (timeout, tries, retry_until...) or
    a flow (chains, batches, schedules: see store.flows).

    dbqueue writes ``"options"`` only when a dispatch set some; a key spelled
    with a JSON escape is caught by the last test."""
    return '"options"' in payload or '"flow"' in payload or "\\u" in payload


@functools.cache
def _reads_arguments(job: Any) -> bool:
    """Whether the supervisor needs the job's arguments before it runs: a
    middleware that declares locks computes their keys from them."""
    return any(hasattr(middleware, "lock_requests") for middleware in job.middleware)


@functools.cache
def _plain_rules(job: Any) -> Rules:
    """The rules of a queued instance with no options of its own, for a job
    without ``retry_for`` (which counts from each instance's creation)."""
    return job.rules({}, datetime.now(UTC))  # type: ignore[no-any-return]


class UnknownJobs:
    """The names of the jobs this worker does not know (in a rolling deploy,
    those of the new code), each said once."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def put_back(self, entry: Entry, postponed: Postponed) -> None:
        """``entry`` goes back for a worker that knows it; said once per name
        (a deploy may queue thousands)."""
        name = entry.row.job
        if name not in self._said:
            if len(self._said) >= 1000:
                self._said.clear()
            self._said.add(name)
            log.warning("job %d (%s): %s; other jobs of that name are put back unsaid",
                        entry.id, name, postponed.why)
