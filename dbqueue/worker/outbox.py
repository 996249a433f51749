"""Outcomes waiting to be written: completions in batches, the rest one by one.

If the database is briefly unreachable, nothing is dropped: what failed to
write stays here and is tried again at the next flush. The jobs stay leased
meanwhile (the heartbeat renews them), so no other worker takes them.

A write the server refuses for another reason (bad data, a read-only server)
is tried a few times, then set aside with an error in the log, so that one
such job cannot stop this worker from recording every other outcome. The job
itself is not lost: its lease runs out and it is run again.

A job's outcome is logged once written, not before: the log never says a job
completed while its row is still in the table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..store import Lease
from .health import TRANSIENT, describe

log = logging.getLogger("dbqueue.worker")

Write = Callable[[Lease], object]
"""Records one job's outcome; it is handed the lease the job is held by now."""

Complete = Callable[[list[Lease], list[tuple[str, str]], Sequence[tuple[Lease, int]]], int]
"""Store.complete: delete completed jobs, free locks, count started attempts."""

_REFUSALS_BEFORE_GIVING_UP = 3


class Completion(NamedTuple):
    lease: Lease
    job: str
    runtime: float | None
    """Seconds the job ran, for the log (None: it never ran, see WithoutOverlapping)."""


@dataclass
class Outbox:
    completions: list[Completion] = field(default_factory=list)
    writes: list[tuple[Lease, Write]] = field(default_factory=list)
    unlock: list[tuple[str, str]] = field(default_factory=list)
    """(key, owner) of locks taken for jobs that ended: freed with the completions."""
    refused: int = 0
    """How many times the server refused the write at the head of the queue."""

    def __len__(self) -> int:
        return len(self.completions) + len(self.writes) + len(self.unlock)

    def leases(self) -> list[Lease]:
        return [done.lease for done in self.completions] + [lease for lease, _ in self.writes]

    def adopt(self, lease: Lease) -> None:
        """The job was reserved again under a new token: write with that one."""
        self.completions = [done._replace(lease=lease) if done.lease.id == lease.id else done
                            for done in self.completions]
        self.writes = [(lease if old.id == lease.id else old, write)
                       for old, write in self.writes]

    def flush(self, complete: Complete, started: Sequence[tuple[Lease, int]] = ()) -> None:
        """Write what is pending, with the attempts of ``started`` jobs counted
        in the completions' transaction. Raises the database's error if some
        of it must wait for a later try (what was written stays written)."""
        if self.completions or self.unlock or started:
            done = complete([c.lease for c in self.completions], self.unlock, started)
            if done < len(self.completions):
                log.warning("%d completed job(s) had lost their lease to another worker",
                            len(self.completions) - done)
            if log.isEnabledFor(logging.DEBUG):
                for lease, job, runtime in self.completions:
                    if runtime is not None:
                        log.debug("job %d (%s) completed in %s", lease.id, job,
                                  duration(runtime))
            self.completions, self.unlock = [], []
        while self.writes:
            lease, write = self.writes[0]
            self._write(lease, write)
            self.writes.pop(0)

    def _write(self, lease: Lease, write: Write) -> None:
        try:
            write(lease)
        except TRANSIENT:
            raise
        # Whatever else stops one job's write (a refusal, text no driver can
        # send) must not stop the worker from recording every other outcome.
        except Exception as exc:
            self.refused += 1
            if self.refused < _REFUSALS_BEFORE_GIVING_UP:
                raise
            log.error("the database refused %d times to record the outcome of job %d; "
                      "giving up on it (it runs again when its lease expires): %s",
                      self.refused, lease.id, describe(exc))
        self.refused = 0


def duration(seconds: float) -> str:
    """``12.3 ms``, ``4.56 s``: how long a job ran, for the log."""
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
