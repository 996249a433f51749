"""Instants by both of the host's clocks, for deadlines that must not be missed.

The monotonic clock does not count the time a paused VM (or a suspended host)
stood still, so by it alone a worker waking from a long pause would think
its leases fresh. The wall clock is usually corrected after such a pause. A
deadline has passed when either clock says so: a step of the wall clock
forward only makes a check come early (a lease renewed once more, a job put
back), never late.
"""

from __future__ import annotations

import time
from typing import NamedTuple


class Deadline(NamedTuple):
    mono: float
    """By time.monotonic()."""
    wall: float
    """By time.time()."""

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """``seconds`` from now (read now: before the statement whose effect lasts that long)."""
        return cls(time.monotonic() + seconds, time.time() + seconds)


def passed(mono: float, wall: float) -> bool:
    """Whether the instant (``mono`` by the monotonic clock, ``wall`` by the wall
    clock) has passed by either clock."""
    return time.monotonic() >= mono or time.time() >= wall
