"""Where a child is in its queue of tasks, in memory it shares with the supervisor.

A child running short jobs answers them in groups (see worker.replies): one
write to the pipe per group, not per job. From the answers alone the
supervisor could then not tell which of a child's queued tasks runs, nor
since when, and a timeout counted from the last answer would be late, or
blamed on a task that ended long ago. So the child writes here how many
tasks it has begun, whether the latest has ended, and when it began or
ended (by the monotonic clock, which a host's processes share), and the
supervisor reads that for its timeouts (see Child.running).

All of it is one 64-bit word, written with one store and read with one load
(on a 64-bit processor, where CPython's ctypes copies an aligned 8-byte
integer in one move): a read can never see half of a write, however the
stores of two words would have been ordered (a weakly ordered CPU, such as
ARM, may show another core a later store before an earlier one). A child killed at any
instant leaves it exact. One writer, one reader, no lock.

The word holds the time in whole milliseconds (rounded up: a timeout is then
never early) above PROGRESS_BITS of progress: twice the tasks begun, plus one
once the latest has ended, modulo 2**PROGRESS_BITS. The reader knows how many
tasks the child has answered, which the tasks begun exceed by less than a
child's queue (far below the modulus), and so recovers the full count.
"""

from __future__ import annotations

import math
from typing import Any

PROGRESS_BITS = 21
"""Below the time: 2**20 tasks begun before the count wraps (a child's queue
holds far fewer), above it 42 bits of milliseconds: 139 years of uptime."""
_PROGRESS = (1 << PROGRESS_BITS) - 1
_WRAP = 1 << (PROGRESS_BITS - 1)  # tasks begun


class Stamp:
    __slots__ = ("cells", "progress")

    def __init__(self, cells: Any) -> None:
        self.cells = cells
        """One signed 64-bit integer (see the module's docstring)."""
        self.progress = 0
        """In the child, the progress it wrote last (it is the only writer)."""

    @classmethod
    def shared(cls, context: Any) -> Stamp:
        """A new stamp in shared memory, for a child started from ``context``
        (pass ``cells`` to the child, which wraps them in a Stamp of its own)."""
        return cls(context.RawArray("q", 1))

    def begin(self, at: float) -> None:
        """In the child: the next task begins, at ``at`` (monotonic clock)."""
        self._write(self.progress // 2 * 2 + 2, at)

    def end(self, at: float) -> None:
        """In the child: the task it began last has ended, at ``at``."""
        self._write(self.progress | 1, at)

    def _write(self, progress: int, at: float) -> None:
        self.progress = progress & _PROGRESS
        milliseconds = max(0, math.ceil(at * 1000))
        self.cells[0] = milliseconds << PROGRESS_BITS | self.progress

    def read(self, answered: int = 0) -> tuple[int, bool, float]:
        """In the supervisor: how many tasks the child has begun (given that
        it has ``answered`` that many, all begun), whether the latest has
        ended, and when it began or ended."""
        word = int(self.cells[0])
        begun, ended = divmod(word & _PROGRESS, 2)
        begun = answered + (begun - answered) % _WRAP
        return begun, bool(ended), (word >> PROGRESS_BITS) / 1000
