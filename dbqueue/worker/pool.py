"""The child processes that run jobs, and the clock that kills overdue ones."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from .child import Finished, RunHook, RunJob, child_main

Task = RunJob | RunHook


@dataclass(eq=False)
class Child:
    process: BaseProcess
    conn: Connection
    task: Task | None = None
    deadline: float = 0.0
    started: float = 0.0


def _context(app_module: str) -> BaseContext:
    # forkserver: children fork from a small clean process that has imported
    # the application once, so a replacement starts in milliseconds and never
    # inherits the supervisor's database connections.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["dbqueue.worker.forkserver_init", app_module])
        return context
    return multiprocessing.get_context("spawn")


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
    """A fixed number of child processes, each running one task at a time."""

    def __init__(self, app_reference: str, size: int) -> None:
        self.app_reference = app_reference
        self.size = size
        self.context = _context(app_reference.partition(":")[0])
        self.children: list[Child] = []

    def start(self) -> None:
        while len(self.children) < self.size:
            self.children.append(self._spawn())

    def _spawn(self) -> Child:
        parent_end, child_end = self.context.Pipe(duplex=True)
        process = self.context.Process(  # type: ignore[attr-defined]
            target=child_main, args=(child_end, self.app_reference), name="dbqueue-child",
            daemon=True)
        process.start()
        child_end.close()
        return Child(process, parent_end)

    def idle(self) -> list[Child]:
        return [child for child in self.children if child.task is None]

    def busy(self) -> list[Child]:
        return [child for child in self.children if child.task is not None]

    def give(self, child: Child, task: Task, timeout: float) -> None:
        now = time.monotonic()
        child.task, child.started, child.deadline = task, now, now + timeout
        # If it died while idle, the next wait() reports it, with this task.
        with contextlib.suppress(OSError):
            child.conn.send(task)

    def wait(self, timeout: float, wake_fd: int) -> tuple[list[tuple[Child, Task, Finished]],
                                                          list[tuple[Child, Task | None, str]]]:
        """Wait for answers. Returns the tasks that finished, with their answers and
        children, and the children that died, with the task each had and how."""
        by_conn: dict[Any, Child] = {child.conn: child for child in self.children}
        ready = wait([*by_conn, wake_fd], timeout=max(timeout, 0))
        finished: list[tuple[Child, Task, Finished]] = []
        died: list[tuple[Child, Task | None, str]] = []
        for conn in ready:
            child = by_conn.get(conn)
            if child is None:
                continue
            task, child.task = child.task, None
            try:
                answer = child.conn.recv()
            except (EOFError, OSError):
                died.append((child, task, self._bury(child)))
                continue
            if task is not None:
                finished.append((child, task, answer))
        return finished, died

    def overdue(self) -> list[Child]:
        now = time.monotonic()
        return [c for c in self.children if c.task is not None and c.deadline <= now]

    def next_deadline(self) -> float | None:
        deadlines = [child.deadline for child in self.children if child.task is not None]
        return min(deadlines) if deadlines else None

    def kill(self, child: Child) -> str:
        """Kill a child (its task is over) and start a replacement."""
        child.process.kill()
        return self._bury(child)

    def retire(self, child: Child) -> None:
        """Let an idle child exit (memory limit) and start a replacement."""
        with contextlib.suppress(OSError):
            child.conn.send(None)
        child.process.join(5)
        if child.process.is_alive():
            child.process.kill()
        self._bury(child)

    def _bury(self, child: Child) -> str:
        child.process.join(5)
        how = describe_exit(child.process.exitcode)
        child.conn.close()
        index = self.children.index(child)
        self.children[index] = self._spawn()
        return how

    def stop(self) -> None:
        """Ask idle children to exit; kill the rest."""
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

