"""Which queues a worker reserves from: the names it was given, in order, where
``*`` stands for every other queue that holds jobs."""

from __future__ import annotations

import time

from ..store.queues import Queues

EVERY = "*"
_LOOK_AGAIN = 5.0  # seconds between lookups of the queues that hold jobs


class QueueChoice:
    """The queues of ``--queue``. With ``*``, the queues holding jobs are looked
    up every few seconds, and taken in turn (one reservation starts with one,
    the next with the next), so that no queue behind ``*`` starves another."""

    def __init__(self, names: tuple[str, ...], queues: Queues) -> None:
        self.names = names
        self.every = EVERY in names
        self.queues = queues
        self._others: list[str] = []
        self._next_lookup = 0.0
        self._turn = 0

    def current(self) -> list[str]:
        """The queues to reserve from now, highest priority first (may query the database)."""
        if not self.every:
            return list(self.names)
        now = time.monotonic()
        if now >= self._next_lookup:
            named = set(self.names)
            self._others = [name for name in self.queues.names() if name not in named]
            self._next_lookup = now + _LOOK_AGAIN
        others = self._others
        if others:
            self._turn = (self._turn + 1) % len(others)
            others = others[self._turn:] + others[:self._turn]
        chosen: list[str] = []
        for name in self.names:
            chosen += others if name == EVERY else [name]
        return chosen

    def hold_jobs(self) -> bool:
        """Whether a job of these queues is in the table, ready or not (may query)."""
        return self.queues.hold_jobs(None if self.every else self.names)


    def any_ready(self, chosen: list[str]) -> bool:
        """Whether a job is ready in the ``chosen`` queues (one statement)."""
        return bool(chosen) and self.queues.any_ready(chosen)
