"""queue_workers: one row per running worker, the channel for cross-host signals.

Hosts never talk to each other. ``dbqueue restart`` marks every worker's row;
each worker sees the mark at its next heartbeat and stops gracefully.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .store import Store


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    queues: str
    concurrency: int
    started_at: datetime | None = None
    last_seen_at: datetime | None = None
    stop_requested_at: datetime | None = None

    def serves(self, queue: str) -> bool:
        """Whether this worker works ``queue``: it names it in --queue, or ``*``."""
        names = {name.strip() for name in self.queues.split(",")}
        return queue in names or "*" in names


class WorkerRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = store.tables.queue_workers

    def register(self, info: WorkerInfo) -> None:
        now = self.store.dialect.now()
        self.store.transaction(lambda c: c.execute(self.table.insert().values(
            id=info.id, host=info.host[:255], pid=info.pid, queues=info.queues[:1000],
            concurrency=info.concurrency, started_at=now, last_seen_at=now,
        )))

    def beat(self, worker_id: str) -> bool:
        """Record that the worker is alive; return True when it has been asked to stop.

        A worker whose row is gone (pruned as dead after a long stall) is asked
        to stop too: its leases have most likely been taken over.
        """
        table = self.table

        def work(c: Connection) -> bool:
            found = c.execute(
                sa.update(table).where(table.c.id == worker_id)
                .values(last_seen_at=self.store.dialect.now())
            ).rowcount
            if not found:
                return True
            requested = c.execute(
                sa.select(table.c.stop_requested_at).where(table.c.id == worker_id)
            ).scalar()
            return requested is not None

        return self.store.transaction(work)

    def unregister(self, worker_id: str) -> None:
        self.store.transaction(
            lambda c: c.execute(sa.delete(self.table).where(self.table.c.id == worker_id))
        )

    def request_stop(self, seen_within: float) -> tuple[int, int]:
        """Ask every registered worker, on every host, to stop after its current
        jobs; return how many were asked among those seen within ``seen_within``
        seconds, and among the others (silent: most likely gone, but a worker
        cut off from the database for a while reads the request once back)."""
        table, dialect = self.table, self.store.dialect
        seen = sa.case((table.c.last_seen_at >= dialect.now_plus(-seen_within), 1), else_=0)

        def work(c: Connection) -> tuple[int, int]:
            # Locked as read: the rows counted are the rows asked.
            rows = c.execute(sa.select(table.c.id, seen)
                             .where(table.c.stop_requested_at.is_(None)).with_for_update()).all()
            if rows:
                c.execute(sa.update(table).where(table.c.id.in_([row[0] for row in rows]))
                          .values(stop_requested_at=dialect.now()))
            live = sum(row[1] for row in rows)
            return live, len(rows) - live

        return self.store.transaction(work)

    def prune(self, silent_for: float) -> int:
        """Forget workers not seen for ``silent_for`` seconds (their hosts died)."""
        table = self.table
        return self.store.transaction(lambda c: c.execute(
            sa.delete(table).where(table.c.last_seen_at < self.store.dialect.now_plus(-silent_for))
        ).rowcount)

    def live(self, seen_within: float) -> list[WorkerInfo]:
        table = self.table
        rows = self.store.read(lambda c: c.execute(
            sa.select(table)
            .where(table.c.last_seen_at >= self.store.dialect.now_plus(-seen_within))
            .order_by(table.c.host, table.c.pid)
        ).all())
        return [WorkerInfo(**row._mapping) for row in rows]
