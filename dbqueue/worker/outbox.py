"""Outcomes waiting to be written: completions in batches, the rest one by one.

If the database is briefly unreachable, nothing is dropped: what failed to
write stays here and is tried again at the next flush. The jobs stay leased
meanwhile (the heartbeat renews them), so no other worker takes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..errors import DatabaseUnavailable
from ..store import Lease

log = logging.getLogger("dbqueue.worker")

Write = Callable[[], object]


@dataclass
class Outbox:
    completions: list[Lease] = field(default_factory=list)
    writes: list[tuple[Lease, Write]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.completions) + len(self.writes)

    def leases(self) -> list[Lease]:
        return self.completions + [lease for lease, _ in self.writes]

    def flush(self, complete: Callable[[list[Lease]], int]) -> bool:
        """Write what is pending; return False if the database could not be reached."""
        try:
            if self.completions:
                done = complete(self.completions)
                if done < len(self.completions):
                    log.warning("%d completed job(s) had lost their lease to another worker",
                                len(self.completions) - done)
                self.completions = []
            while self.writes:
                self.writes[0][1]()
                self.writes.pop(0)
        except (DatabaseUnavailable, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            log.error("cannot record job outcomes yet, will retry: %s", exc)
            return False
        return True
