"""The worker's verbs: reserving jobs, renewing their leases, and recording
what became of them.

Every write about a reserved job matches on its id *and* the reservation's
token (``reserved_by``): a worker whose lease expired, and whose job another
worker has since reserved, changes nothing (DESIGN §2.3, fenced leases).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .dialects import ReservedRow
from .transactions import Transactions
from .values import Failure, Lease, _attempts, _by_token, _chunks, _text, held_locks


class Leases(Transactions):
    """The verbs about reserved jobs, each in a short transaction of its own."""

    def reserve(self, queues: Sequence[str], limit: int, token: str,
                lease: float) -> list[ReservedRow]:
        """Reserve up to ``limit`` jobs, taking the queues in the order given.

        Each job gets a lease of ``lease`` seconds under ``token``; until the
        lease expires no other worker can reserve it. No attempt is counted:
        a job that never starts (the worker died first) comes back as it was.
        """

        def work(c: Connection) -> list[ReservedRow]:
            taken: list[ReservedRow] = []
            for queue in queues:
                if len(taken) >= limit:
                    break
                taken += self.dialect.reserve(c, self.tables.jobs, queue, limit - len(taken),
                                              token, lease)
            return taken

        return self.transaction(work)

    def heartbeat(self, leases: Iterable[Lease], lease: float) -> set[int]:
        """Renew the leases still held; return the ids of their jobs.

        A job missing from the answer was taken by another worker after its
        lease ran out (this worker stalled): it must not be started here.
        """
        jobs = self.tables.jobs
        statement = sa.update(jobs).values(reserved_at=self.dialect.now(),
                                           available_at=self.dialect.now_plus(lease))
        held_chunks = self._held(leases)

        def work(c: Connection) -> set[int]:
            renewed: set[int] = set()  # afresh on each try: a retried transaction starts over
            for held, ids in held_chunks:
                if c.execute(statement.where(held)).rowcount == len(ids):
                    renewed.update(ids)
                else:  # rare: ask which are still ours (the rows locked just now)
                    renewed.update(c.execute(sa.select(jobs.c.id).where(held)).scalars())
            return renewed

        return self.transaction(work)

    def complete(self, leases: Iterable[Lease], unlock: Sequence[tuple[str, str]] = (),
                 started: Sequence[tuple[Lease, int]] = ()) -> int:
        """Delete completed jobs still held under their leases; return how many.

        In the same transaction, free the ``(key, owner)`` locks in ``unlock``
        (the locks the worker took for these jobs and for others that ended),
        and count the attempt of each ``(lease, attempt)`` in ``started``: jobs
        that have run a while, so that a crash of the worker from now on costs
        them that attempt (a job only reserved costs none).
        """
        locks = self.tables.cache_locks

        def also(c: Connection) -> None:
            for chunk in _chunks(unlock):
                c.execute(sa.delete(locks).where(held_locks(locks, chunk)))
            self._count_attempts(c, started)

        return self._for_leases(leases, lambda held: sa.delete(self.tables.jobs).where(held),
                                also=also if unlock or started else None)

    def _count_attempts(self, c: Connection, started: Sequence[tuple[Lease, int]]) -> None:
        by_attempt: dict[int, list[Lease]] = defaultdict(list)
        for lease, attempt in started:
            by_attempt[attempt].append(lease)
        for attempt, leases in by_attempt.items():
            for held, _ in self._held(leases):
                c.execute(sa.update(self.tables.jobs).where(held)
                          .values(attempts=_attempts(attempt)))

    def _held(self, leases: Iterable[Lease]) -> list[tuple[sa.ColumnElement[bool], Sequence[int]]]:
        """Conditions matching the jobs still held under ``leases`` (by token and
        id), a chunk of ids each, with their ids."""
        jobs = self.tables.jobs
        return [(sa.and_(jobs.c.reserved_by == token, self.dialect.one_of(jobs.c.id, chunk)),
                 chunk)
                for token, ids in _by_token(leases).items() for chunk in _chunks(ids)]

    def _for_leases(self, leases: Iterable[Lease],
                    statement: Callable[[sa.ColumnElement[bool]], sa.Executable],
                    also: Callable[[Connection], None] | None = None) -> int:
        """Run ``statement(held)`` over the jobs still held under ``leases``, where
        ``held`` matches them by id and token, in one transaction, with ``also``;
        return the rows it touched."""
        held_chunks = self._held(leases)
        if not held_chunks and also is None:
            return 0

        def work(c: Connection) -> int:
            if also is not None:
                also(c)
            return sum(c.execute(statement(held)).rowcount
                       for held, _ in held_chunks)

        return self.transaction(work)

    def release(self, lease: Lease, delay: float, attempts: int) -> bool:
        """Put a reserved job back, available after ``delay`` seconds, with
        ``attempts`` attempts counted (its attempt's number if that attempt
        counts, one less if not: a release by the job, a job put back unrun).

        Returns False when the lease was lost (the job is someone else's now).
        """
        jobs = self.tables.jobs
        statement = (
            sa.update(jobs)
            .where(jobs.c.id == lease.id, jobs.c.reserved_by == lease.token)
            .values(reserved_by=None, reserved_at=None,
                    available_at=self.dialect.now_plus(delay), attempts=_attempts(attempts))
        )
        return self.transaction(lambda c: c.execute(statement).rowcount == 1)

    def drop_unique_keys(self, leases: Iterable[Lease]) -> int:
        """Free the unique keys of jobs that have started (``unique_until="processing"``)."""
        return self._for_leases(leases, lambda held: sa.update(self.tables.jobs).where(held)
                                .values(unique_key=None, unique_expires_at=None))

    def release_all(self, leases: Iterable[Lease]) -> int:
        """Give back jobs reserved but never started (a worker stopping): available
        now, as they were."""
        jobs = self.tables.jobs
        return self._for_leases(leases, lambda held: sa.update(jobs).where(held).values(
            reserved_by=None, reserved_at=None, available_at=self.dialect.now()))

    def fail(self, job: ReservedRow, token: str, failure: Failure, worker: str,
             attempts: int | None = None) -> bool:
        """Move a reserved job to failed_jobs, in one transaction, with ``attempts``
        (default: the number of the attempt it was reserved for).

        Returns False, and writes nothing, when the lease was lost.
        """
        jobs, failed = self.tables.jobs, self.tables.failed_jobs

        def work(c: Connection) -> bool:
            deleted = c.execute(
                sa.delete(jobs).where(jobs.c.id == job.id, jobs.c.reserved_by == token)
            ).rowcount
            if deleted != 1:
                return False
            c.execute(failed.insert().values(
                uuid=str(uuid.uuid4()), job_id=job.id, queue=job.queue, job=job.job,
                priority=job.priority, payload=job.payload,
                attempts=_attempts(job.attempts if attempts is None else attempts),
                exception_class=_text(failure.exception_class)[:255],
                exception_message=_text(failure.message), exception=_text(failure.traceback),
                failed_at=self.dialect.now(), worker=worker[:255],
            ))
            return True

        return self.transaction(work)
