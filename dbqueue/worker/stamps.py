"""Where a child is in its queue of tasks, in memory it shares with the supervisor.

A child running short jobs answers them in groups (see worker.replies): one
write to the pipe per group, not per job. From the answers alone the
supervisor could then not tell which of a child's queued tasks runs, nor
since when, and a timeout counted from the last answer would be late, or
blamed on a task that ended long ago. So the child writes here how many
tasks it has begun, whether the latest has ended, and when it began or
ended (by the monotonic clock, which a host's processes share), and the
supervisor reads that for its timeouts (see Child.running).

Three doubles: a version, the progress (twice the tasks begun, plus one once
the latest has ended: one store, so a child killed at any instant leaves it
exact) and the time. The child makes the version odd, writes, and makes it
even again; a read that saw an odd or a changed version is not used. One
writer, one reader, no lock to wait for on either side.
"""

from __future__ import annotations

from typing import Any

_READS = 3  # tries before a reader gives up on a write in progress (the child was preempted)


class Stamp:
    __slots__ = ("cells",)

    def __init__(self, cells: Any) -> None:
        self.cells = cells
        """Three doubles: the version, the progress, and when the latest task
        began or ended."""

    @classmethod
    def shared(cls, context: Any) -> Stamp:
        """A new stamp in shared memory, for a child started from ``context``
        (pass ``cells`` to the child, which wraps them in a Stamp of its own)."""
        return cls(context.RawArray("d", 3))

    def begin(self, at: float) -> None:
        """In the child: the next task begins, at ``at`` (monotonic clock)."""
        begun = int(self.cells[1]) // 2 + 1
        self._write(2 * begun, at)

    def end(self, at: float) -> None:
        """In the child: the task it began last has ended, at ``at``."""
        self._write(self.cells[1] + 1, at)

    def _write(self, progress: float, at: float) -> None:
        cells = self.cells
        version = cells[0]
        cells[0] = version + 1  # odd: being written
        cells[1] = progress
        cells[2] = at
        cells[0] = version + 2

    def read(self) -> tuple[int, bool, float] | None:
        """In the supervisor: how many tasks the child has begun, whether the
        latest has ended, and when it began or ended; None while the child is
        writing (ask again later)."""
        cells = self.cells
        for _ in range(_READS):
            version = cells[0]
            progress, at = cells[1], cells[2]
            if version % 2 == 0 and cells[0] == version:
                return _split(progress, at)
        return None

    def last(self) -> tuple[int, bool, float]:
        """What a dead child left: its progress is exact even if it died while
        writing (its time may then be the one before)."""
        return _split(self.cells[1], self.cells[2])


def _split(progress: float, at: float) -> tuple[int, bool, float]:
    begun, ended = divmod(int(progress), 2)
    return begun, bool(ended), at
