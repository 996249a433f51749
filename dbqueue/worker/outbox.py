"""Outcomes waiting to be written: completions in batches, the rest one by one.

If the database is briefly unreachable, nothing is dropped: what failed to
write stays here and is tried again at the next flush. The jobs stay leased
meanwhile (the heartbeat renews them), so no other worker takes them.

A write the server refuses for another reason (bad data, a read-only server)
is tried a few times, then set aside with an error in the log, so that one
such job cannot stop this worker from recording every other outcome. The job
itself is not lost: its lease runs out and it is run again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..errors import DatabaseUnavailable
from ..store import Lease

log = logging.getLogger("dbqueue.worker")

Write = Callable[[Lease], object]
"""Records one job's outcome; it is handed the lease the job is held by now."""

TRANSIENT = (DatabaseUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError)
DB_ERRORS = (DatabaseUnavailable, sa.exc.DBAPIError)
_REFUSALS_BEFORE_GIVING_UP = 3


@dataclass
class Outbox:
    completions: list[Lease] = field(default_factory=list)
    writes: list[tuple[Lease, Write]] = field(default_factory=list)
    unlock: list[tuple[str, str]] = field(default_factory=list)
    """(key, owner) of locks taken for jobs that ended: freed with the completions."""
    refused: int = 0
    """How many times the server refused the write at the head of the queue."""

    def __len__(self) -> int:
        return len(self.completions) + len(self.writes) + len(self.unlock)

    def leases(self) -> list[Lease]:
        return self.completions + [lease for lease, _ in self.writes]

    def adopt(self, lease: Lease) -> None:
        """The job was reserved again under a new token: write with that one."""
        self.completions = [lease if old.id == lease.id else old for old in self.completions]
        self.writes = [(lease if old.id == lease.id else old, write)
                       for old, write in self.writes]

    def flush(self, complete: Callable[[list[Lease], list[tuple[str, str]]], int]) -> bool:
        """Write what is pending; return False if some of it must wait for a later try."""
        try:
            if self.completions or self.unlock:
                done = complete(self.completions, self.unlock)
                if done < len(self.completions):
                    log.warning("%d completed job(s) had lost their lease to another worker",
                                len(self.completions) - done)
                self.completions, self.unlock = [], []
            while self.writes:
                lease, write = self.writes[0]
                self._write(lease, write)
                self.writes.pop(0)
        except DB_ERRORS as exc:
            log.error("cannot record job outcomes yet, will retry: %s", exc)
            return False
        return True

    def _write(self, lease: Lease, write: Write) -> None:
        try:
            write(lease)
        except TRANSIENT:
            raise
        except sa.exc.DBAPIError as exc:
            self.refused += 1
            if self.refused < _REFUSALS_BEFORE_GIVING_UP:
                raise
            log.error("the database refused %d times to record the outcome of job %d; "
                      "giving up on it (it runs again when its lease expires): %s",
                      self.refused, lease.id, exc)
        self.refused = 0
