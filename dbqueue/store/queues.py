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
        jobs, now = self.jobs, self.store.dialect.now()

        def work(c: Connection) -> list[str]:
            names = (self.store.dialect.distinct_values(c, jobs.c.queue)
                     if among is None else list(among))
            # One short index walk per queue: a whole-table count would read
            # every row of a large backlog.
            return [name for name in names if c.execute(
                sa.select(jobs.c.id).where(jobs.c.queue == name, jobs.c.available_at <= now)
                .limit(1)).first() is not None]

        return self.store.read(work)

    def any_ready(self, among: Sequence[str]) -> bool:
        """Whether a job is ready in one of the queues ``among``.

        One statement, committed by itself where the server allows it: an
        idle worker that polls asks this first, so that a poll finding nothing
        costs the server one index probe per queue, not a locking transaction.
        """
        jobs, now = self.jobs, self.store.dialect.now()
        probes = [sa.exists(sa.select(jobs.c.id).where(jobs.c.queue == name,
                                                       jobs.c.available_at <= now).limit(1))
                  for name in among]
        query = sa.select(sa.or_(*probes))
        return bool(self.store.transaction(lambda c: c.execute(query).scalar(),
                                           single_statement=True))

    def hold_jobs(self, among: Sequence[str] | None = None) -> bool:
        """Whether any job, ready or not, is in the queues ``among`` (or in any)."""
        jobs = self.jobs
        query = sa.select(jobs.c.id).limit(1)
        if among is not None:
            query = query.where(jobs.c.queue.in_(list(among)))
        return self.store.read(lambda c: c.execute(query).first() is not None)
