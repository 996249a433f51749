"""Which batches are cancelled, as the worker last asked the database.

A cancelled batch's jobs complete without running. The worker asks when it
reserves jobs (one statement for all the batches among them) and again when
it hands a job to a child, unless it asked about that batch within FRESH
seconds: a job it held before the cancellation does not start once the
cancellation is that old, and a worker busy with one batch asks about it a
few times a second at most.
"""

from __future__ import annotations

import math
import time

from ..store.batches import Batches
from .background import Bound

FRESH = 0.05
_MOST_REMEMBERED = 10_000


class CancelledBatches:
    def __init__(self, batches: Batches) -> None:
        self.batches = batches
        self.bound = Bound()
        """Asked on the supervisor's thread: see worker.background.Bound."""
        self._known: dict[str, tuple[float, bool]] = {}
        """batch id -> (when asked, by the monotonic clock; cancelled then)."""

    def cancelled(self, batch_id: str, now: float) -> bool:
        """Whether ``batch_id`` is cancelled: ``which`` for one batch, with no
        set made when the answer is fresh (it runs for each job handed out)."""
        known = self._known.get(batch_id)
        if known is not None and now - known[0] < FRESH:
            return known[1]
        return batch_id in self.which({batch_id}, now)

    def which(self, batch_ids: set[str], now: float | None = None) -> set[str]:
        """Those of ``batch_ids`` that are cancelled; asks the database about the
        ones not asked about within FRESH seconds. Raises the store's errors."""
        now = time.monotonic() if now is None else now
        stale = {batch_id for batch_id in batch_ids
                 if now - self._known.get(batch_id, (-math.inf, False))[0] >= FRESH}
        if stale:
            cancelled = self.bound(lambda: self.batches.cancelled(stale))
            if len(self._known) > _MOST_REMEMBERED:
                self._known.clear()
            self._known.update((batch_id, (now, batch_id in cancelled)) for batch_id in stale)
        return {batch_id for batch_id in batch_ids if self._known[batch_id][1]}
