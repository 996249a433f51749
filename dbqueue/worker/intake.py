"""Turning reserved rows into runnable jobs, or into failures when they cannot run.

A row that cannot be decoded, names an unknown job, or has run out of attempts
is failed here, before any child sees it (DESIGN §2.7: bad input is contained).
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from .. import serializer
from ..errors import ConfigurationError, MaxAttemptsExceeded, UnknownJob
from ..policy import refuse_attempt
from ..serializer import Payload
from ..store import Failure, Lease, ReservedRow
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
    entry = Entry(row, Lease(row.id, token), None, Payload(), time.monotonic(), lease_until)
    try:
        return entry, _resolve(app, entry)
    except Exception as exc:  # a case the checks below did not foresee: still contained
        return entry, Failure(class_name(exc), f"job {row.id} ({row.job!r}) cannot run: {exc}",
                              traceback.format_exc())


def _resolve(app: Any, entry: Entry) -> Failure | None:
    row = entry.row
    try:
        entry.payload = serializer.decode(row.payload)
    except ValueError as exc:
        return Failure("dbqueue.SerializationError",
                       f"job {row.id} ({row.job!r}) cannot be decoded: {exc}", "")
    try:
        job = app.lookup(row.job)
    except UnknownJob as exc:
        return Failure(class_name(exc), str(exc), "")
    entry.job = job
    try:
        entry.rules = job.rules(entry.payload.options, row.created_at)
        entry.timeout = job.timeout_for(entry.payload.options)
    except ConfigurationError as exc:
        return Failure(class_name(exc), f"job {row.id} ({row.job!r}) has invalid options: {exc}",
                       "")
    why = refuse_attempt(row.attempts, entry.rules, row.reserved_at)
    if why is not None:
        return Failure(class_name(MaxAttemptsExceeded), why, "")
    return None
