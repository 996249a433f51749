"""The child processes that run jobs, and the clock that kills overdue ones.

Each child runs its tasks one after another. When jobs are short the
supervisor queues a few tasks per child (``depth``), so a child never waits
while the supervisor is busy with the database, and the child answers them
in groups (see worker.replies). Which queued task runs, and since when, the
child's stamp tells (see worker.stamps): a task's deadline counts from the
moment it began.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import forkserver
from .background import OnThread
from .child import child_main
from .childend import Child, Task
from .messages import Committed, Finished, Returned, RunJob, to_wire
from .proctree import kill_tree
from .stamps import Stamp

log = logging.getLogger("dbqueue.worker")

_START_WAIT_AT_STOP = 5.0  # seconds, at most, for the children still being started


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
    held: list[Task] = field(default_factory=list)
    """Done in a child that died holding their answers (see worker.replies):
    a child holds nothing but plain "done" answers, and sends them before
    anything else, so every task it ended whose answer is not in its pipe
    was done."""


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

    def __init__(self, app_reference: str, size: int, *, measure_memory: bool = False,
                 stop_requested: Callable[[], bool] = lambda: False) -> None:
        self.app_reference = app_reference
        self.size = size
        self.measure_memory = measure_memory
        # Starting many children takes a while (a few milliseconds each): a
        # stop asked for meanwhile (SIGTERM, Ctrl-C) ends the start at once.
        self.stop_requested = stop_requested
        self._stopped = False
        # Starts the fork server, which imports the application in the
        # background (`dbqueue work` has started it already, by fork).
        self.context = forkserver.start(app_reference)
        self.children: list[Child] = []
        self._starting: OnThread[None] | None = None
        self._early = Ended()
        """Answers read by ``stop_overdue``, for the next ``wait`` to report."""

    def start_aside(self) -> None:
        """Start the children on a thread of its own: the fork server forks
        each while the supervisor does something else (it registers). ``start``
        then waits for them, and raises what starting raised."""
        self._starting = OnThread("dbqueue-start")
        self._starting.submit(self._start)

    def start(self) -> None:
        self._started_aside()
        self._start()  # the rest: all of them when none started aside

    def _started_aside(self, timeout: float | None = None) -> None:
        """Wait for the start begun by ``start_aside``, if any (at most
        ``timeout`` seconds: then it is left to end, or not); raise what it raised."""
        starting, self._starting = self._starting, None
        if starting is None:
            return
        if not starting.wait(timeout):
            starting.close(0)  # its thread ends once the start does
            return
        try:
            starting.take()
        finally:
            starting.close()

    def _start(self) -> None:
        while (len(self.children) < self.size
               and not (self._stopped or self.stop_requested())):
            self.children.append(self._spawn())

    def _spawn(self) -> Child:
        parent_end, child_end = self.context.Pipe(duplex=True)
        stamp = Stamp.shared(self.context)
        halt = self.context.RawArray("b", 1)
        process = self.context.Process(  # type: ignore[attr-defined]
            target=child_main,
            args=(child_end, self.app_reference, self.measure_memory, stamp.cells, halt),
            name="dbqueue-child", daemon=True)
        process.start()
        child_end.close()
        os.set_blocking(parent_end.fileno(), False)  # see Child.post
        return Child(process, parent_end, stamp=stamp, halt=halt)

    def idle(self) -> list[Child]:
        return [child for child in self.children if not child.tasks]

    def started(self) -> list[tuple[Task, float, bool]]:
        """The task each busy child runs or is about to, with since when
        (monotonic) and whether it has begun (one that has not may yet come
        back unstarted: a Halt, a death)."""
        runs = []
        for child in self.children:
            if child.tasks:
                index, began, begun = child.running()
                if index < len(child.tasks):
                    runs.append((child.tasks[index][0], began, begun))
        return runs

    def give(self, child: Child, task: Task, timeout: float) -> None:
        """Queue ``task`` in ``child``; it is sent with the others at the next ``wait``."""
        child.tasks.append((task, timeout))
        if len(child.tasks) == 1:
            child.started = time.monotonic()
        child.unsent.append(task)

    def _send(self) -> None:
        # One message per child, however many tasks: short jobs are queued a
        # dozen at a time, and each message costs a pickling and a system call.
        for child in self.children:
            if child.unsent:
                tasks, child.unsent = child.unsent, []
                # If it died, the next wait reports it, with these tasks.
                child.post(to_wire(tasks[0]) if len(tasks) == 1
                           else [to_wire(task) for task in tasks])

    def halt(self) -> None:
        """Have each child send back the jobs queued in it that it has not
        started (they come back in ``Ended.unstarted``). What is given
        afterwards it runs: a stopping worker gives only failure hooks."""
        self._send()  # what was given goes before the Halt
        for child in self.children:
            if any(type(task) is RunJob for task, _ in child.tasks):
                child.post_halt()

    def wait(self, timeout: float, *wake_fds: int) -> Ended:
        """Send what was given, then wait for answers, deaths, or one of
        ``wake_fds`` to be readable; at most ``timeout`` seconds."""
        self._send()
        ended, self._early = self._early, Ended()
        if ended.finished or ended.committed or ended.unstarted:
            timeout = 0  # what stop_overdue read is to be taken in now
        by_fd = {child.conn.fileno(): child for child in self.children}
        poller = select.poll()
        for fd, each in by_fd.items():  # and room in its pipe for what waits to go there
            poller.register(fd, select.POLLIN | (select.POLLOUT if each.outbox else 0))
        for fd in wake_fds:
            poller.register(fd, select.POLLIN)
        for fd, events in poller.poll(math.ceil(max(timeout, 0) * 1000)):
            child = by_fd.get(fd)
            if child is None:
                continue
            if events & select.POLLOUT:
                child.flush()
            if events & ~select.POLLOUT:  # an answer, or its end (POLLHUP, POLLERR)
                self._collect(child, ended)
        return ended

    def _collect(self, child: Child, ended: Ended) -> None:
        # Read every answer already waiting: one wake-up serves many short jobs.
        # (A child that died while idle shows up here too: its pipe reads EOF.)
        try:
            self._read(child, ended)
        except (EOFError, OSError):
            # Reported even when idle: it may have died with jobs uncommitted.
            self._replace(child, ended)

    def _read(self, child: Child, ended: Ended) -> None:
        """Take in every message waiting in ``child``'s pipe; EOFError at its end."""
        while child.readable():
            for answer in child.messages():
                if isinstance(answer, Committed):
                    ended.committed.append(answer)
                    continue
                if isinstance(answer, Returned):
                    ended.unstarted += _take_back(child, set(answer.job_ids))
                    continue
                if not child.tasks:  # (never: every task is answered once)
                    child.answers += 1  # the stamp counts it all the same
                    continue
                now = child.answered = time.monotonic()
                task, _ = child.tasks.popleft()
                child.answers += 1
                # Answers held and sent together share the time between them.
                ended.finished.append((child, task, answer, now - child.started))
                child.started = now

    def overdue(self) -> list[Child]:
        """Children to ``kill`` for their task's timeout: those ``stop_overdue``
        killed already (only ``kill`` is sure to replace them: a program their
        job started that escaped the kill may hold their pipe open), then
        those whose running task is past its deadline and has not answered.

        An answer that arrived since the last ``wait`` is read by the next one:
        the task ended in time, and killing the child would lose its result.
        """
        return ([child for child in self.children if child.timed_out] + self._due_to_die())

    def _due_to_die(self) -> list[Child]:
        return [child for child in self._past_deadline() if not child.has_answer()]

    def _past_deadline(self) -> list[Child]:
        now = time.monotonic()
        return [child for child in self.children
                if child.tasks and not child.timed_out and child.deadline() <= now]

    def next_deadline(self) -> float | None:
        deadlines = [child.deadline() for child in self.children
                     if child.tasks and not child.timed_out]
        return min(deadlines) if deadlines else None

    def stop_overdue(self) -> float | None:
        """Kill the children past their task's deadline, as ``wait`` and the
        caller's look at ``overdue`` would have, for the supervisor's thread
        while a statement of its own keeps it from them (a hung server keeps
        it up to the network timeout). Only the processes: the next ``wait``
        reports their deaths, and ``Child.timed_out`` tells what they were.
        The answers waiting are read first (the next ``wait`` reports them):
        an answer to an earlier task must not shield a task that overran.
        When the next deadline comes (None: no task runs)."""
        for child in self._past_deadline():
            if child.has_answer():
                with contextlib.suppress(EOFError, OSError):  # a death: ``wait`` sees it
                    self._read(child, self._early)
        for child in self._due_to_die():
            child.timed_out = True
            kill_tree(child.process)
        return self.next_deadline()

    def kill(self, child: Child) -> Ended:
        """Kill a child and start a replacement; what it said before it died,
        and what became of its tasks (one death, in ``died``)."""
        kill_tree(child.process)
        ended = Ended()
        self._replace(child, ended)
        return ended

    def retire(self, child: Child) -> None:
        """Replace an idle child (memory limit)."""
        assert not child.tasks, "only an idle child can be retired"
        child.post(None)  # idle: it reads its pipe
        child.process.join(5)
        if child.process.is_alive():
            kill_tree(child.process)
        self._replace(child, Ended())

    def _replace(self, child: Child, ended: Ended) -> None:
        """``child`` is dead or dying: add to ``ended`` what it sent before
        (no answer is left in its pipe), its death, and its tasks."""
        child.process.join(5)
        with contextlib.suppress(EOFError, OSError):
            self._read(child, ended)
        child.conn.close()
        index, _, begun = child.running()
        if child.stamped is not None and child.stamped[0] == 0:
            begun = True  # it died before its first task: that task is charged
        tasks = [task for task, _ in child.tasks]
        child.tasks.clear()
        running = tasks[index] if begun and index < len(tasks) else None
        ended.died.append((child, running, describe_exit(child.process.exitcode)))
        ended.held += tasks[:index]
        ended.unstarted += tasks[index + 1:] if running is not None else tasks[index:]
        self.children[self.children.index(child)] = self._spawn()

    def dismiss(self) -> None:
        """Ask the children to exit once their queued tasks are done, without
        waiting for them: the stop's last writes go on meanwhile (``stop``
        then waits)."""
        for child in self.children:
            if not child.dismissed:
                child.dismissed = True
                child.post(None)

    def stop(self) -> None:
        """Ask the children to exit; kill those that do not."""
        # Those that started are stopped. A fork server that does not answer
        # (stuck importing the application) holds up no stop: what it forks
        # later dies with the worker (see worker.forkserver_init).
        self._stopped = True  # a start still going on starts no more children
        try:
            self._started_aside(_START_WAIT_AT_STOP)
        except Exception as exc:  # the worker stopped before ``start`` could raise it
            log.warning("the children could not be started: %s", exc)
        finally:  # whatever the start raised, those that started are stopped
            self._end_children()

    def _end_children(self) -> None:
        self.dismiss()
        deadline = time.monotonic() + 5
        self._flush_all(deadline)
        for child in self.children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                # Its tasks are over: most likely a thread a job started and
                # left running, which Python waits for at exit.
                log.warning("a child process did not exit within 5 s of being told to (a "
                            "thread a job left running?); killing it")
                kill_tree(child.process)
                child.process.join(1)
            child.conn.close()
        self.children = []

    def _flush_all(self, deadline: float) -> None:
        """Write what waits to go into the children's pipes (the last None of
        each, at a stop), until ``deadline`` at most: a child that reads none
        of it is killed."""
        while waiting := {child.conn.fileno(): child for child in self.children if child.outbox}:
            poller = select.poll()
            for fd in waiting:
                poller.register(fd, select.POLLOUT)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for fd, _ in poller.poll(math.ceil(left * 1000)):
                waiting[fd].flush()


def _take_back(child: Child, job_ids: set[int]) -> list[Task]:
    """Remove the tasks of ``job_ids`` (none begun) from ``child``'s queue."""
    taken: list[Task] = []
    kept = []
    for task, timeout in child.tasks:
        if type(task) is RunJob and task.job_id in job_ids:
            taken.append(task)
        else:
            kept.append((task, timeout))
    child.tasks.clear()
    child.tasks.extend(kept)
    return taken
