"""Which queues hold jobs: for ``--queue '*'``, ``--stop-when-drained`` and the
start-up hint about queues that no worker serves."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .store import Store


class Queues:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.jobs = store.tables.jobs

    def names(self) -> list[str]:
        """Every queue that holds a job now (ready, delayed or reserved), by name."""
        return self.store.read(
            lambda c: self.store.dialect.distinct_values(c, self.jobs.c.queue))

    def with_ready_jobs(self, among: Sequence[str] | None = None) -> list[str]:
        """The queues (of ``among``, or all) in which a job is ready to run now."""
        def work(c: Connection) -> list[str]:
            names = (self.store.dialect.distinct_values(c, self.jobs.c.queue)
                     if among is None else list(among))
            return [name for name in names if c.execute(self._ready(name)).first() is not None]

        return self.store.read(work)

    def any_ready(self, among: Sequence[str]) -> bool:
        """Whether a job is ready in one of the queues ``among``.

        One statement, committed by itself where the server allows it: an
        idle worker that polls asks this first, so that a poll finding nothing
        costs the server one index probe per queue, not a locking transaction.
        """
        query = sa.select(sa.or_(*(sa.exists(self._ready(name)) for name in among)))
        return bool(self.store.transaction(lambda c: c.execute(query).scalar(),
                                           single_statement=True))

    def _ready(self, name: str) -> sa.Select[tuple[int]]:
        """A ready job of queue ``name``, if any: one short walk of the
        reservation's index (a whole-table count would read a large backlog)."""
        jobs = self.jobs
        return (sa.select(jobs.c.id)
                .where(jobs.c.queue == name, jobs.c.available_at <= self.store.dialect.now())
                .limit(1))

    def hold_jobs(self, among: Sequence[str] | None = None) -> bool:
        """Whether any job, ready or not, is in the queues ``among`` (or in any)."""
        jobs = self.jobs
        query = sa.select(jobs.c.id).limit(1)
        if among is not None:
            query = query.where(jobs.c.queue.in_(list(among)))
        return self.store.read(lambda c: c.execute(query).first() is not None)
