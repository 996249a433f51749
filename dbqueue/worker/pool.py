"""The child processes that run jobs, and the clock that kills overdue ones.

Each child runs its tasks one after another. When jobs are short the
supervisor queues a few tasks per child (``depth``), so a child never waits
while the supervisor is busy with the database, and the child answers such
jobs a few at a time (see child.Replies). So that timeouts stay exact, each
child writes into memory shared with the supervisor which task it is running
and since when (``Child.progress``): the supervisor's deadline for a child is
always that task's, and a child killed or dead is known to have been running
that task, with the ones before it done but not yet reported.
"""

from __future__ import annotations

import contextlib
import select
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, NamedTuple

from . import forkserver
from .child import child_main
from .messages import Committed, Finished, RunHook, RunJob

Task = RunJob | RunHook


@dataclass(eq=False)
class Child:
    process: BaseProcess
    conn: Connection
    progress: Any
    """Shared with the child: [number of the task it runs (counted from 0), when
    it started it (monotonic clock, shared by a host's processes)]."""
    tasks: deque[tuple[Task, float]] = field(default_factory=deque)
    """Queued tasks with their timeouts, the oldest unanswered first."""
    answered: int = 0
    """How many tasks it has answered: the number of ``tasks[0]``."""
    deadline: float = 0.0
    answered_at: float = 0.0
    """When it last answered (monotonic clock)."""
    unsent: list[Task] = field(default_factory=list)
    """Tasks given since the last wait: sent together, in one message."""
    _poller: select.poll | None = field(default=None, init=False, repr=False)

    def has_answer(self) -> bool:
        """Whether something can be read from the child (an answer, or the EOF
        of its death) without waiting.

        ``Connection.poll`` builds a selector for every call; the supervisor
        asks once per answer, thousands of times a second with short jobs.
        """
        try:
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self.conn.fileno(), select.POLLIN)
            return bool(self._poller.poll(0))
        except (OSError, ValueError):  # the pipe was closed: reading says how
            return True

    def running(self) -> tuple[int, float]:
        """The index in ``tasks`` of the task it runs (those before it are done,
        their answers on the way), and when it started that one. A task not
        started yet counts from the supervisor's last look."""
        number, started = self.progress[0], self.progress[1]
        index = int(number) - self.answered
        if index < 0 or index >= len(self.tasks):  # between tasks: the next one starts now
            return 0, max(started, self.answered_at)
        return index, started

    def update_deadline(self) -> None:
        if self.tasks:
            index, started = self.running()
            self.deadline = started + self.tasks[index][1]


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
    unreported: list[Task] = field(default_factory=list)
    """Tasks a dead child had finished without reporting how they ended."""


class Stopped(NamedTuple):
    """A child killed or dead, and what became of its tasks."""

    running: Task | None
    how: str
    unstarted: list[Task]
    """Queued behind the running one: never started."""
    unreported: list[Task]
    """Before the running one: done, but how they ended was not reported."""


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
        progress = self.context.RawArray("d", [-1.0, time.monotonic()])
        process = self.context.Process(  # type: ignore[attr-defined]
            target=child_main,
            args=(child_end, self.app_reference, self.measure_memory, progress),
            name="dbqueue-child", daemon=True)
        process.start()
        child_end.close()
        return Child(process, parent_end, progress, answered_at=time.monotonic())

    def idle(self) -> list[Child]:
        return [child for child in self.children if not child.tasks]

    def started(self) -> list[tuple[Task, float]]:
        """The task each busy child is running, with when it began (monotonic)."""
        running = []
        for child in self.children:
            if child.tasks:
                index, began = child.running()
                running.append((child.tasks[index][0], began))
        return running

    def give(self, child: Child, task: Task, timeout: float) -> None:
        """Queue ``task`` in ``child``; it is sent with the others at the next ``wait``."""
        child.tasks.append((task, timeout))
        if len(child.tasks) == 1:
            child.update_deadline()
        child.unsent.append(task)

    def _send(self) -> None:
        # One message per child, however many tasks: short jobs are queued a
        # dozen at a time, and each message costs a pickling and a system call.
        for child in self.children:
            if child.unsent:
                tasks, child.unsent = child.unsent, []
                # If it died, the next wait reports it, with these tasks.
                with contextlib.suppress(OSError):
                    child.conn.send(tasks[0] if len(tasks) == 1 else tasks)

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
            while child.has_answer():
                message = child.conn.recv()
                if isinstance(message, Committed):
                    ended.committed.append(message)
                    continue
                child.answered_at = time.monotonic()
                for answer in message if isinstance(message, list) else (message,):
                    if not child.tasks:
                        break
                    task, _ = child.tasks.popleft()
                    child.answered += 1
                    ended.finished.append((child, task, answer, answer.runtime))
                child.update_deadline()
        except (EOFError, OSError):
            # Reported even when idle: it may have died with jobs uncommitted.
            stopped = self._replace(child)
            ended.died.append((child, stopped.running, stopped.how))
            ended.unstarted += stopped.unstarted
            ended.unreported += stopped.unreported

    def overdue(self) -> list[Child]:
        """Children whose running task is past its deadline and has not answered.

        An answer that arrived since the last ``wait`` is read by the next one:
        the task ended in time, and killing the child would lose its result.
        """
        now = time.monotonic()
        overdue = []
        for child in self.children:
            if child.tasks and child.deadline <= now:
                child.update_deadline()  # it may have moved on to a later task
                if child.deadline <= now and not child.has_answer():
                    overdue.append(child)
        return overdue

    def next_deadline(self) -> float | None:
        deadlines = [child.deadline for child in self.children if child.tasks]
        return min(deadlines) if deadlines else None

    def kill(self, child: Child) -> Stopped:
        """Kill a child and start a replacement; what became of its tasks."""
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

    def _replace(self, child: Child) -> Stopped:
        child.process.join(5)
        how = describe_exit(child.process.exitcode)
        child.conn.close()
        tasks = [task for task, _ in child.tasks]
        index = child.running()[0] if tasks else 0
        child.tasks.clear()
        self.children[self.children.index(child)] = self._spawn()
        return Stopped(tasks[index] if tasks else None, how, tasks[index + 1:], tasks[:index])

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
