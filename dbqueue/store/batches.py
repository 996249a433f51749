"""Batches: job_batches rows, made, read, cancelled, added to, retried, pruned.

The counters move in workers' completion transactions (see store.flows);
this module holds what applications and operators do to a batch.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import serializer
from ..errors import ConfigurationError, NotFound
from ..policy.durations import age_seconds
from .flows import (
    CALLBACKS,
    FINALLY,
    THEN,
    THEN_WITHHELD,
    callback_jobs,
    step,
    steps_after,
    with_flow,
    withheld,
)
from .store import Store
from .values import Executor, NewJob, canonical_uuid


@dataclass(frozen=True, slots=True)
class BatchRow:
    """A job_batches row, as read."""

    id: str
    name: str
    total: int
    pending: int
    failed: int
    allow_failures: bool
    created_at: datetime
    cancelled_at: datetime | None
    finished_at: datetime | None
    callbacks: tuple[str, ...]
    """The callbacks it has: then, catch, finally."""
    fired: int
    """Which were queued, or withheld (store.flows bits)."""

    def callback_states(self) -> dict[str, str]:
        """What became of each callback: queued, not yet, or never (then)."""
        states = {}
        for name in self.callbacks:
            bit = CALLBACKS.get(name, 0)
            # Rows of code older than THEN_WITHHELD: a cancel set THEN alone.
            # Only a batch that allows failures can have queued ``then``
            # and been cancelled after a retry reopened it.
            if name == "then" and (self.fired & THEN_WITHHELD or (
                    self.fired & THEN and self.cancelled_at is not None
                    and not self.allow_failures)):
                states[name] = ("never (the batch is cancelled)" if self.cancelled_at else
                                "never (the batch was cancelled before a retry reopened it)")
            else:
                states[name] = "queued" if self.fired & bit else "not yet"
        return states


class Batches:
    """The batch verbs, over one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = store.tables.job_batches

    def create(self, batch_id: str, name: str, members: Sequence[Sequence[NewJob]],
               callbacks: dict[str, dict[str, Any]], *, allow_failures: bool,
               connection: Executor | None = None) -> None:
        """Insert the batch ``batch_id`` and the first job of each member (a
        member is a chain of one or more jobs) in one transaction."""
        total = sum(len(member) for member in members)

        def work(c: Connection) -> None:
            fired = 0 if total else THEN | FINALLY  # an empty batch is done at once
            c.execute(self.table.insert().values(
                id=batch_id, name=name[:255], total=total, pending=total, failed=0,
                allow_failures=allow_failures,
                callbacks=serializer.encode_value("a batch's callbacks", callbacks),
                fired=fired, created_at=self.store.dialect.now(),
                finished_at=None if total else self.store.dialect.now()))
            jobs = [_member(member, batch_id) for member in members]
            self.store.insert_jobs(c, jobs + callback_jobs(callbacks, fired, batch_id))

        self.store.within(connection, work)

    def add(self, batch_id: str, members: Sequence[Sequence[NewJob]],
            connection: Executor | None = None) -> int:
        """Add members to a batch that has not finished; return how many jobs."""
        count = sum(len(member) for member in members)

        t = self.table
        # The check that the batch is open and the count it adds are one
        # statement: a row lock taken by a SELECT first would be none on
        # SQLite, whose driver opens the caller's transaction at its first
        # write, and a batch that finished in between would take the jobs.
        opened = (sa.update(t)
                  .where(t.c.id == batch_id, t.c.finished_at.is_(None),
                         t.c.cancelled_at.is_(None))
                  .values(total=t.c.total + count, pending=t.c.pending + count))

        def work(c: Connection) -> int:
            if not c.execute(opened).rowcount:
                row = self._locked(c, batch_id)  # NotFound if there is none
                raise ConfigurationError(
                    f"batch {batch_id} has {'finished' if row.finished_at else 'been cancelled'}"
                    ": it takes no more jobs; dispatch a new batch instead")
            self.store.insert_jobs(c, [_member(member, batch_id) for member in members])
            return count

        return self.store.within(connection, work)

    def find(self, batch_id: str) -> BatchRow | None:
        row = self.store.read(lambda c: c.execute(
            sa.select(*self._columns()).where(self.table.c.id.in_(
                {batch_id, canonical_uuid(batch_id)}))).first())
        return None if row is None else _batch_row(row)

    def recent(self, limit: int = 50) -> list[BatchRow]:
        """The newest batches first."""
        query = (sa.select(*self._columns())
                 .order_by(self.table.c.created_at.desc(), self.table.c.id).limit(limit))
        return [_batch_row(row) for row in self.store.read(lambda c: c.execute(query).all())]

    def cancel(self, batch_id: str) -> bool:
        """Mark the batch cancelled; False if it already was, or has finished.
        Its jobs not yet started complete without running (the worker checks
        when it reserves them), and ``then`` never runs."""

        def work(c: Connection) -> bool:
            row = self._locked(c, batch_id)
            if row.cancelled_at is not None or row.finished_at is not None:
                return False
            c.execute(sa.update(self.table).where(self.table.c.id == batch_id)
                      .values(cancelled_at=self.store.dialect.now(),
                              fired=row.fired | withheld(row.fired)))
            return True

        return self.store.transaction(work)

    def cancelled(self, batch_ids: set[str]) -> set[str]:
        """Which of ``batch_ids`` are cancelled."""
        if not batch_ids:
            return set()
        query = sa.select(self.table.c.id).where(
            self.table.c.id.in_(sorted(batch_ids)), self.table.c.cancelled_at.is_not(None))
        return set(self.store.read(lambda c: c.execute(query).scalars().all()))

    def prune(self, hours: float) -> int:
        """Delete batches that finished more than ``hours`` ago; return how many."""
        cutoff = self.store.dialect.now_plus(-age_seconds("hours", hours, "hours"))
        statement = sa.delete(self.table).where(self.table.c.finished_at < cutoff)
        return self.store.transaction(lambda c: c.execute(statement).rowcount)

    def _locked(self, c: Connection, batch_id: str) -> Any:
        row = c.execute(sa.select(self.table).where(self.table.c.id == batch_id)
                        .with_for_update()).one_or_none()
        if row is None:
            raise NotFound(f"no batch {batch_id!r}; list them with: dbqueue batches")
        return row

    def _columns(self) -> list[sa.ColumnElement[Any]]:
        t = self.table.c
        return [t.id, t.name, t.total, t.pending, t.failed, t.allow_failures, t.created_at,
                t.cancelled_at, t.finished_at, t.callbacks, t.fired]


def _batch_row(row: Any) -> BatchRow:
    values = row._asdict()
    try:
        named = tuple(name for name, job in json.loads(values["callbacks"]).items() if job)
    except (TypeError, ValueError, AttributeError):  # written by hand: none to tell of
        named = ()
    return BatchRow(**{**values, "callbacks": named, "fired": int(values["fired"] or 0)})


def _member(member: Sequence[NewJob], batch_id: str) -> NewJob:
    """The first job of a member (a chain of one or more), carrying the rest."""
    flow: dict[str, Any] = {"batch": batch_id}
    if len(member) > 1:
        flow["chain"] = [step(job) for job in member[1:]]
    return with_flow(member[0], flow)


def reopen(c: Connection, store: Store, rows: Sequence[Any]) -> None:
    """Failed jobs of batches go back on their queues (``rows`` of failed_jobs
    with batch_id and payload): count them as pending again, and open their
    batches again (no longer cancelled or finished). ``then`` can still run
    once they succeed if the batch allows failures; one that was cancelled
    keeps ``then`` withheld (see flows.THEN_WITHHELD). Callbacks already
    queued are not queued again."""
    by_batch: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        if row.batch_id is not None:
            by_batch[row.batch_id].append(1 + steps_after(_flow(row.payload)))
    table = store.tables.job_batches
    for batch_id in sorted(by_batch):
        jobs = by_batch[batch_id]
        c.execute(sa.update(table).where(table.c.id == batch_id).values(
            pending=table.c.pending + sum(jobs), failed=table.c.failed - len(jobs),
            cancelled_at=None, finished_at=None))


def _flow(payload: str) -> dict[str, Any]:
    try:
        return serializer.decode(payload).flow or {}
    except ValueError:  # a row written by hand: no flow to count
        return {}
