"""Turning reserved rows into runnable jobs, or into failures when they cannot run.

A row that cannot be decoded, names an unknown job, or has run out of attempts
is failed here, before any child sees it (DESIGN §2.7: bad input is contained).
"""

from __future__ import annotations

import functools
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from .. import serializer
from ..errors import ConfigurationError, MaxAttemptsExceeded, UnknownJob
from ..policy import Rules, refuse_attempt
from ..store import Failure, Lease, ReservedRow
from ..store.flows import flow_problem
from .clock import Deadline
from .ledger import Entry
from .messages import class_name


def admit(app: Any, row: ReservedRow, token: str, lease_until: Deadline,
          ) -> tuple[Entry, Failure | None]:
    """A ledger entry for ``row``, and the Failure to record instead of running it, if any.

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


def _resolve(app: Any, entry: Entry) -> Failure | None:
    row = entry.row
    # Decoded first when it may hold a flow: a job that fails here (unknown,
    # out of tries) still counts in its batch and stops its chain.
    failure = _decode(entry) if _may_hold_options(row.payload) else None
    if failure is not None:
        return failure
    try:
        job = app.lookup(row.job)
    except UnknownJob as exc:
        return Failure(class_name(exc), str(exc), "")
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
        return Failure(class_name(MaxAttemptsExceeded), why, "")
    return None


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
