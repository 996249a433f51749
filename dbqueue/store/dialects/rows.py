"""A job row as a reservation returns it, read so that no row can stop the reservation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple


class ReservedRow(NamedTuple):
    """A job row as it stands right after its reservation."""

    id: int
    queue: str
    job: str
    payload: str
    priority: int
    attempts: int
    """The number of the attempt this reservation is for: the attempts that
    started before it, plus one. A reservation writes no attempt: only a job
    that starts counts one (see Store.complete's ``started``)."""
    created_at: datetime
    reserved_at: datetime


RESERVED_COLUMNS = ReservedRow._fields


LONG_AGO = datetime(1, 1, 1, tzinfo=UTC)


def created_at(read: Callable[[Any], datetime], value: Any) -> datetime:
    """``read(value)``, a reserved row's created_at; LONG_AGO where that fails.

    A row written by hand may hold what no Python datetime can (MySQL's
    '0000-00-00', a year past 9999, text that is no time at all on SQLite).
    Raised, that would undo the reservation of every row beside it, at every
    look of every worker: the queue would stop (DESIGN §2.7). Such a row is
    instead taken as created long ago. created_at bounds only a job's
    ``retry_until`` and the wait of a job no worker knows: those fail at
    once, with their reason, rather than wait or retry for ever; the others
    run."""
    try:
        return read(value)
    except (ValueError, OverflowError, TypeError):
        return LONG_AGO
