"""The child processes that run jobs, and the clock that kills overdue ones.

Each child runs its tasks one after another. When jobs are short the
supervisor queues a few tasks per child (``depth``), so a child never waits
while the supervisor is busy with the database; the task at the head of a
child's queue is the one running, and its deadline counts from the moment the
task before it finished.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from . import forkserver
from .child import child_main
from .messages import Committed, Finished, RunHook, RunJob, answer_from, to_wire

Task = RunJob | RunHook

_SHORT = struct.Struct("!i")  # multiprocessing.Connection's frame header
_LONG = struct.Struct("!Q")  # ... and its length of a message over 2 GiB
_READ_SIZE = 1 << 16


@dataclass(eq=False)
class Child:
    process: BaseProcess
    conn: Connection
    tasks: deque[tuple[Task, float]] = field(default_factory=deque)
    """Queued tasks with their timeouts; the first one is running."""
    started: float = 0.0
    deadline: float = 0.0
    answered: float = 0.0
    """When it last answered (monotonic clock)."""
    unsent: list[Task] = field(default_factory=list)
    """Tasks given since the last wait: sent together, in one message."""
    unread: bytes = b""
    """The start of a message read from the pipe whose end is still on its way."""
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

    def has_answer(self) -> bool:
        """Whether an answer has arrived, whole or in part, and is not read yet."""
        return bool(self.unread) or self.readable()

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
        buffer = self.unread + data if self.unread else data
        messages, offset, end = [], 0, len(buffer)
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
            messages.append(answer_from(buffer[start:start + size]))
            offset = start + size
        self.unread = buffer[offset:]
        return messages

    @property
    def task(self) -> Task | None:
        """The running task."""
        return self.tasks[0][0] if self.tasks else None

    def _start_next(self, now: float) -> None:
        if self.tasks:
            self.started, self.deadline = now, now + self.tasks[0][1]


@dataclass
class Ended:
    """What ``Pool.wait`` saw: finished tasks, a death, tasks that never started."""

    finished: list[tuple[Child, Task, Finished, float]] = field(default_factory=list)
    """(child, task, answer, seconds it ran)"""
    died: list[tuple[Child, Task | None, str]] = field(default_factory=list)
    """(child, the task it was running if any, how it died)"""
    unstarted: list[Task] = field(default_factory=list)
    """Tasks queued behind one whose child died: give them to another child."""
    committed: list[Committed] = field(default_factory=list)
    """Transactions of idempotent jobs that ended (see child.Committed)."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "it did not exit"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Pool:
    """A fixed number of child processes, each running its queued tasks in turn."""

    def __init__(self, app_reference: str, size: int, *, measure_memory: bool = False) -> None:
        self.app_reference = app_reference
        self.size = size
        self.measure_memory = measure_memory
        # Starts the fork server, which imports the application in the
        # background (`dbqueue work` has started it already, before its own imports).
        self.context = forkserver.start(app_reference)
        self.children: list[Child] = []

    def start(self) -> None:
        while len(self.children) < self.size:
            self.children.append(self._spawn())

    def _spawn(self) -> Child:
        parent_end, child_end = self.context.Pipe(duplex=True)
        process = self.context.Process(  # type: ignore[attr-defined]
            target=child_main, args=(child_end, self.app_reference, self.measure_memory),
            name="dbqueue-child", daemon=True)
        process.start()
        child_end.close()
        return Child(process, parent_end)

    def idle(self) -> list[Child]:
        return [child for child in self.children if not child.tasks]

    def started(self) -> list[tuple[Task, float]]:
        """The task each busy child is running, with when it began (monotonic)."""
        return [(child.tasks[0][0], child.started) for child in self.children if child.tasks]

    def give(self, child: Child, task: Task, timeout: float) -> None:
        """Queue ``task`` in ``child``; it is sent with the others at the next ``wait``."""
        child.tasks.append((task, timeout))
        if len(child.tasks) == 1:
            child._start_next(time.monotonic())
        child.unsent.append(task)

    def _send(self) -> None:
        # One message per child, however many tasks: short jobs are queued a
        # dozen at a time, and each message costs a pickling and a system call.
        for child in self.children:
            if child.unsent:
                tasks, child.unsent = child.unsent, []
                # If it died, the next wait reports it, with these tasks.
                with contextlib.suppress(OSError):
                    child.conn.send(to_wire(tasks[0]) if len(tasks) == 1
                                    else [to_wire(task) for task in tasks])

    def wait(self, timeout: float, *wake_fds: int) -> Ended:
        """Send what was given, then wait for answers, deaths, or one of
        ``wake_fds`` to be readable; at most ``timeout`` seconds."""
        self._send()
        by_conn: dict[Any, Child] = {child.conn: child for child in self.children}
        ended = Ended()
        for conn in wait([*by_conn, *wake_fds], timeout=max(timeout, 0)):
            child = by_conn.get(conn)
            if child is not None:
                self._collect(child, ended)
        return ended

    def _collect(self, child: Child, ended: Ended) -> None:
        # Read every answer already waiting: one wake-up serves many short jobs.
        # (A child that died while idle shows up here too: its pipe reads EOF.)
        try:
            while child.readable():
                for answer in child.messages():
                    if isinstance(answer, Committed):
                        ended.committed.append(answer)
                        continue
                    if not child.tasks:
                        continue
                    now = child.answered = time.monotonic()
                    task, _ = child.tasks.popleft()
                    ended.finished.append((child, task, answer, now - child.started))
                    child._start_next(now)
        except (EOFError, OSError):
            # Reported even when idle: it may have died with jobs uncommitted.
            running, how, unstarted = self._replace(child)
            ended.died.append((child, running, how))
            ended.unstarted += unstarted

    def overdue(self) -> list[Child]:
        """Children whose running task is past its deadline and has not answered.

        An answer that arrived since the last ``wait`` is read by the next one:
        the task ended in time, and killing the child would lose its result.
        """
        now = time.monotonic()
        return [child for child in self.children
                if child.tasks and child.deadline <= now and not child.has_answer()]

    def next_deadline(self) -> float | None:
        deadlines = [child.deadline for child in self.children if child.tasks]
        return min(deadlines) if deadlines else None

    def kill(self, child: Child) -> tuple[Task | None, str, list[Task]]:
        """Kill a child and start a replacement.

        Returns the task it was running, how it ended, and the tasks queued
        behind that one, which never started.
        """
        child.process.kill()
        return self._replace(child)

    def retire(self, child: Child) -> None:
        """Replace an idle child (memory limit)."""
        assert not child.tasks, "only an idle child can be retired"
        with contextlib.suppress(OSError):
            child.conn.send(None)
        child.process.join(5)
        if child.process.is_alive():
            child.process.kill()
        self._replace(child)

    def _replace(self, child: Child) -> tuple[Task | None, str, list[Task]]:
        child.process.join(5)
        how = describe_exit(child.process.exitcode)
        child.conn.close()
        running = child.task
        unstarted = [task for task, _ in list(child.tasks)[1:]]
        child.tasks.clear()
        self.children[self.children.index(child)] = self._spawn()
        return running, how, unstarted

    def stop(self) -> None:
        """Ask the children to exit; kill those that do not."""
        for child in self.children:
            with contextlib.suppress(OSError):
                child.conn.send(None)
        deadline = time.monotonic() + 5
        for child in self.children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                child.process.kill()
                child.process.join(1)
            child.conn.close()
        self.children = []
