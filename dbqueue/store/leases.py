"""The worker's verbs: reserving jobs, renewing their leases, and recording
what became of them.

Every write about a reserved job matches on its id *and* the reservation's
token (``reserved_by``): a worker whose lease expired, and whose job another
worker has since reserved, changes nothing (DESIGN §2.3, fenced leases).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .completion import Completion, CompletionHook, FailedRun, Requeue, write_completion
from .dialects import ReservedRow
from .dispatch import Dispatch
from .values import Failure, Lease, _by_token, _chunks, free_locks


class Leases(Dispatch):
    """The verbs about reserved jobs, each in a short transaction of its own
    (a Dispatch: recording an outcome may queue a workflow's next jobs)."""

    def reserve(self, queues: Sequence[str], limit: int, token: str,
                lease: float) -> list[ReservedRow]:
        """Reserve up to ``limit`` jobs, taking the queues in the order given.

        Each job gets a lease of ``lease`` seconds under ``token``; until the
        lease expires no other worker can reserve it. No attempt is counted:
        a job that never starts (the worker died first) comes back as it was.
        """

        def work(c: Connection) -> list[ReservedRow]:
            self.dialect.steer_claims(c)
            taken: list[ReservedRow] = []
            for queue in queues:
                if len(taken) >= limit:
                    break
                taken += self.dialect.reserve(c, self.tables.jobs, queue, limit - len(taken),
                                              token, lease)
            return taken

        return self.transaction(work)

    def heartbeat(self, leases: Iterable[Lease], lease: float,
                  unless_locked: Iterable[Lease] = ()) -> set[int]:
        """Renew the leases still held; return the ids of their jobs.

        A job missing from the answer was taken by another worker after its
        lease ran out (this worker stalled): it must not be started here.

        ``unless_locked``: leases of jobs whose outcome this worker is writing,
        renewed while that write waits for a batch's row (it takes those
        first, holding no job's row: see flows.lock_batches), so that they
        outlast a wait that ends in a lock timeout. Rows the write holds
        already are skipped, not waited for: it keeps them from every other
        worker meanwhile. Not in the answer.
        """
        jobs = self.tables.jobs
        statement = sa.update(jobs).values(reserved_at=self.dialect.now(),
                                           available_at=self.dialect.now_plus(lease))
        held_chunks, writing_chunks = self._held(leases), self._held(unless_locked)

        def work(c: Connection) -> set[int]:
            renewed: set[int] = set()  # afresh on each try: a retried transaction starts over
            for held, ids in held_chunks:
                if c.execute(statement.where(held)).rowcount == len(ids):
                    renewed.update(ids)
                else:  # rare: ask which are still ours (the rows locked just now)
                    renewed.update(c.execute(sa.select(jobs.c.id).where(held)).scalars())
            for held, _ in writing_chunks:
                free = sa.select(jobs.c.id).where(held)
                if self.dialect.skip_locked:
                    free = free.with_for_update(skip_locked=True)
                if ids := c.execute(free).scalars().all():
                    c.execute(statement.where(held, jobs.c.id.in_(ids)))
            return renewed

        return self.transaction(work)

    def record(self, completion: Completion, hooks: Sequence[CompletionHook] = ()) -> set[int]:
        """Write what became of reserved jobs, in one transaction (see
        store.completion); return the ids of the jobs whose outcome took effect
        (those still held under their leases)."""
        return write_completion(self, completion, hooks)

    def complete(self, leases: Iterable[Lease], unlock: Sequence[tuple[str, str]] = (),
                 started: Sequence[tuple[Lease, int]] = ()) -> int:
        """Delete completed jobs still held under their leases; return how many.

        In the same transaction, free the ``(key, owner)`` locks in ``unlock``,
        and count the attempt of each ``(lease, attempt)`` in ``started``.
        """
        return len(self.record(Completion(completed=list(leases), unlocked=list(unlock),
                                          started=list(started))))

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
        return lease.id in self.record(Completion(requeued=[Requeue(lease, delay, attempts)]))

    def release_all(self, leases: Iterable[Lease],
                    unlocked: Sequence[tuple[str, str]] = ()) -> int:
        """Give back jobs reserved but never started (a worker stopping): available
        now, as they were, with the ``(key, owner)`` locks taken for them freed
        in the same transaction (freed later, a worker taking a job at once
        would find its lock held, and drop or delay it)."""
        jobs, locks, dialect = self.tables.jobs, self.tables.cache_locks, self.dialect
        held_chunks = self._held(leases)

        def work(c: Connection) -> int:
            free_locks(c, locks, unlocked)
            released, queues = 0, set[str]()
            for held, _ in held_chunks:
                update = sa.update(jobs).where(held).values(
                    reserved_by=None, reserved_at=None, available_at=dialect.now())
                if dialect.announces:  # idle workers wait for a notice, not a poll
                    found = c.execute(update.returning(jobs.c.queue)).scalars().all()
                    released += len(found)
                    queues.update(found)
                else:
                    released += c.execute(update).rowcount
            if queues:
                dialect.announce(c, jobs.name, queues)
            return released

        return self.transaction(work) if held_chunks or unlocked else 0

    def fail(self, job: ReservedRow, token: str, failure: Failure, worker: str,
             attempts: int | None = None) -> bool:
        """Move a reserved job to failed_jobs, in one transaction, with ``attempts``
        (default: the number of the attempt it was reserved for).

        Returns False, and writes nothing, when the lease was lost.
        """
        attempts = job.attempts if attempts is None else attempts
        failed = FailedRun(job, Lease(job.id, token), failure, worker, attempts)
        return job.id in self.record(Completion(failed=[failed]))
