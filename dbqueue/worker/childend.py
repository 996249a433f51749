"""The supervisor's end of one child process: its pipe, the tasks queued in
it, and what its stamp says it runs (see worker.pool)."""

from __future__ import annotations

import os
import select
import struct
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any

from .messages import DONE, DONE_FRAME, Halt, RunHook, RunJob, answer_from
from .stamps import Stamp

Task = RunJob | RunHook

_SHORT = struct.Struct("!i")  # multiprocessing.Connection's frame header
_LONG = struct.Struct("!Q")  # ... and its length of a message over 2 GiB
_SHORT_MOST = 0x7FFFFFFF
_READ_SIZE = 1 << 16


@dataclass(eq=False)
class Child:
    process: BaseProcess
    conn: Connection
    tasks: deque[tuple[Task, float]] = field(default_factory=deque)
    """Queued tasks with their timeouts, in order; the ones before the running
    one have ended, their answers on the way (see ``running``)."""
    stamp: Stamp | None = None
    """What the child says it has begun and ended (see worker.stamps)."""
    stamped: tuple[int, bool, float] | None = None
    """The stamp as last read."""
    halt: Any = None
    """One shared byte: set once Halt was sent (see Pool.halt)."""
    answers: int = 0
    """The tasks it has answered."""
    started: float = 0.0
    """When the first queued task was given, or the one before it answered."""
    answered: float = 0.0
    """When it last answered (monotonic clock)."""
    unsent: list[Task] = field(default_factory=list)
    """Tasks given since the last wait: sent together, in one message."""
    unread: bytearray = field(default_factory=bytearray)
    """The start of a message read from the pipe whose end is still on its way."""
    dismissed: bool = False
    """Asked to exit (see Pool.dismiss)."""
    outbox: bytearray = field(default_factory=bytearray)
    """What was sent to the child and is not in its pipe yet (see ``post``)."""
    halting: bool = False
    """A Halt is in ``outbox``: ``halt`` is set once it is in the pipe."""
    timed_out: bool = False
    """Killed for its running task's timeout: its death is that task's timeout."""
    _poller: select.poll | None = field(default=None, init=False, repr=False)

    def readable(self) -> bool:
        """Whether the pipe can be read without waiting (a message, or the EOF
        of the child's death).

        ``Connection.poll`` builds a selector for every call; the supervisor
        asks once per read, thousands of times a second with short jobs.
        """
        try:
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self.conn.fileno(), select.POLLIN)
            return bool(self._poller.poll(0))
        except (OSError, ValueError):  # the pipe was closed: reading says how
            return True

    def post(self, message: object) -> None:
        """Send ``message`` without waiting: what the pipe cannot take now stays
        in ``outbox`` until ``flush`` can write it.

        The child reads its pipe only between tasks: while one of the tasks
        queued in it hangs, the pipe fills up, and a supervisor waiting for
        room there would never end the hang (its timeout is the supervisor's
        to enforce). The frame is Connection's, which the child's ``recv`` reads.
        """
        data = ForkingPickler.dumps(message)
        size = len(data)
        self.outbox += (_SHORT.pack(size) if size <= _SHORT_MOST
                        else _SHORT.pack(-1) + _LONG.pack(size))
        self.outbox += data
        self.flush()

    def post_halt(self) -> None:
        """Send Halt, and set the shared ``halt`` byte once it is in the pipe
        (the child, seeing the byte, reads the pipe until the Halt)."""
        self.halting = self.halt is not None
        self.post(Halt())

    def flush(self) -> None:
        """Write what ``outbox`` holds, as much of it as the pipe takes now. A
        dead child's is dropped: the next read of its pipe says it died."""
        try:
            while self.outbox:
                del self.outbox[:os.write(self.conn.fileno(), self.outbox)]
        except BlockingIOError:  # full: the rest when it has room
            return
        except OSError:  # gone (EPIPE, a closed pipe)
            self.outbox.clear()
        if self.halting:
            self.halting = False
            self.halt[0] = 1

    def has_answer(self) -> bool:
        """Whether the pipe holds what the child sent and is not read yet. (The
        start of a message already read into ``unread`` is no answer: a child
        that froze while writing the rest is overdue all the same.)"""
        return self.readable()

    def messages(self) -> list[Any]:
        """Every whole message in the pipe now, with one read (call it when
        ``readable``). Raises EOFError once the child is gone.

        Connection.recv would cost two reads per message; the child's answers
        come in Connection's framing (a 4-byte length, or -1 and an 8-byte
        one), so they are cut out of one read here.
        """
        data = os.read(self.conn.fileno(), _READ_SIZE)
        if not data:
            raise EOFError
        # A large answer (a chain step's result, a long message) comes in many
        # reads: appended in place, not copied whole at each (which took
        # minutes for 200 MB), and parsed only once its frame is whole.
        buffer: bytes | bytearray = data
        if self.unread:
            self.unread += data
            buffer = self.unread
        messages: list[Any] = []
        offset, end = 0, len(buffer)
        while end - offset >= _SHORT.size:
            (size,) = _SHORT.unpack_from(buffer, offset)
            start = offset + _SHORT.size
            if size == -1:
                if end - start < _LONG.size:
                    break
                (size,) = _LONG.unpack_from(buffer, start)
                start += _LONG.size
            if end - start < size:
                break
            if buffer[start:start + 1] == DONE_FRAME:  # a run of them (see worker.replies)
                messages += [DONE] * size
            else:
                messages.append(answer_from(bytes(buffer[start:start + size])))
            offset = start + size
        if buffer is self.unread:
            del self.unread[:offset]
        elif offset < end:
            self.unread = bytearray(buffer[offset:])
        return messages

    def running(self) -> tuple[int, float, bool]:
        """Which of the queued tasks runs or is next (its index), since when,
        and whether the child has begun it.

        The child's stamp tells: the one it began last, since it began, until
        it has ended (or been answered); then the next, since that end or
        since it was given, whichever is later: a child that does not begin
        it is as late as one that runs it. Without a stamp: the first, since
        ``started``.
        """
        if self.stamp is not None:
            self.stamped = self.stamp.read(self.answers)
        if self.stamped is not None:
            begun, ended, at = self.stamped
            last = begun - self.answers - 1  # the one begun last; -1: answered already
            if not ended and 0 <= last < len(self.tasks):
                return last, at, True
            if 0 <= last + 1 <= len(self.tasks):
                return last + 1, max(at, self.started), False
        return 0, self.started, True

    def deadline(self) -> float:
        """When the running (or next) task must have ended (when every queued
        task has ended, their answers on the way: the last one's)."""
        index, started, _ = self.running()
        return started + self.tasks[min(index, len(self.tasks) - 1)][1]
