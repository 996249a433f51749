"""The code that runs inside a child process: job functions and failure hooks.

A child takes one task at a time from its pipe and answers with one message.
It never touches the queue tables: the supervisor owns every lease, so a child
killed at any instant (timeout, crash, OOM) leaves nothing half-written.

Idempotent jobs are the one exception to "one answer per task": their effects
commit in a transaction that consecutive short ones share (OutcomeBatch), so
the child answers "done, uncommitted" at once and sends ``Committed`` for the
lot after the commit. The supervisor completes them only then.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import itertools
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections import deque
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import sqlalchemy as sa

from ..errors import Fail, Release
from ..idempotency import OutcomeBatch
from ..jobs import JobFailure
from ..middleware import JobContext, run_with
from .clock import passed

log = logging.getLogger("dbqueue.worker")

# The messages are NamedTuples: they cross a pipe once per job, and tuples
# pickle several times faster than slotted dataclasses.

# From the supervisor.


class RunJob(NamedTuple):
    job_id: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempt: int
    timeout: float
    locks: frozenset[str] = frozenset()
    """Lock keys the supervisor took for the job (see WithoutOverlapping)."""
    start_by: float = math.inf
    start_by_wall: float = math.inf
    """Do not start the job after this instant (by the monotonic clock, shared
    by a host's processes, or by the wall clock; see worker.clock): its lease
    may have run out by then, and another worker may be running it. A task
    queued here while the whole worker was stopped (SIGSTOP, a paused VM) is
    answered "expired" instead."""


class RunHook(NamedTuple):
    failure: JobFailure


# From the child.


class Finished(NamedTuple):
    """The task ended. ``kind`` is "done", how the job failed (see policy.EndKind),
    or "expired": not started, its ``start_by`` had passed."""

    kind: str
    rss_mb: float = 0.0
    """The child's memory after the task, when the worker has a --memory limit."""
    delay: float = 0.0
    exception_class: str = ""
    message: str = ""
    traceback: str = ""
    uncommitted: bool = False
    """Done, but its effects are in a transaction not yet committed: wait for
    the ``Committed`` message that names it."""


class Committed(NamedTuple):
    """The transaction of these idempotent jobs ended. If ``failure`` is set, it
    did not commit, and that is how each of the jobs ended instead."""

    job_ids: tuple[int, ...]
    failure: Finished | None = None


def class_name(error: BaseException | type[BaseException]) -> str:
    cls = error if isinstance(error, type) else type(error)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module.startswith("dbqueue."):
        module = "dbqueue"  # the public name, not the private module
    return f"{module}.{cls.__qualname__}"


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best there is
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def die_with_parent() -> None:
    """Linux: have the kernel kill this process when its parent dies, so a job never
    goes on running after its worker was killed (its lease will be taken over)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


EXPIRED = Finished("expired")


def run_job(app: Any, task: RunJob, batch: OutcomeBatch) -> Finished:
    if passed(task.start_by, task.start_by_wall):
        return EXPIRED
    try:
        job = app.lookup(task.name)
        job.check_arguments(task.args, task.kwargs)
    except Exception as exc:  # an unknown job or bad arguments: retrying cannot help
        return Finished("permanent", exception_class=class_name(exc),
                        message=str(exc), traceback=traceback.format_exc())

    def body() -> Any:
        result = job.func(*task.args, **task.kwargs)
        if inspect.iscoroutine(result):  # an `async def` job: on an event loop of its own
            import asyncio

            result = asyncio.run(result)
        return result

    if job.idempotency_key is not None:  # innermost: its transaction spans only the body
        body = partial(batch.run, job, task.job_id, task.args, task.kwargs, body)
    try:
        if job.middleware:
            run_with(job.middleware, JobContext(app, job, task.job_id, task.args, task.kwargs,
                                                task.attempt, task.timeout, task.locks), body)
        else:
            body()
    except BaseException as exc:  # SystemExit from job code is a failure of that job
        if _recorded(batch, task):
            # A middleware raised after the body (Release and Fail included):
            # the effects and the outcome commit all the same, so the job is
            # done (a retry would skip it).
            log.warning("job %d (%s) is done, but its middleware then raised %s: %s",
                        task.job_id, task.name, class_name(exc), exc)
            return Finished("done", uncommitted=True)
        if isinstance(exc, Release):
            return Finished("release", delay=exc.delay, message=exc.reason)
        if isinstance(exc, Fail):
            return Finished("fail", exception_class=class_name(exc),
                            message=exc.reason, traceback=traceback.format_exc())
        kind = "permanent" if isinstance(exc, job.dont_retry) else "error"
        return Finished(kind, exception_class=class_name(exc), message=str(exc),
                        traceback=traceback.format_exc())
    return Finished("done", uncommitted=_recorded(batch, task))


def _recorded(batch: OutcomeBatch, task: RunJob) -> bool:
    """Whether the job's outcome waits in the open transaction for its commit."""
    return bool(batch.pending) and batch.pending[-1] == task.job_id


def end_batch(batch: OutcomeBatch) -> list[Committed]:
    """Commit the idempotent jobs' transaction if one is open; the messages to send."""
    batch.give_back_claims()  # may roll back (a lost connection): then all are lost
    messages = []
    if batch.lost:  # rolled back with a failing job's transaction: not their fault
        messages.append(Committed(tuple(batch.lost), Finished("release")))
        batch.lost = []
    if batch.open:
        ids, failure = tuple(batch.pending), None
        try:
            batch.commit()
        except sa.exc.DBAPIError as exc:
            # A dropped connection, a deadlock: whether the COMMIT took effect is
            # unknown, and it is none of the jobs' fault; they run again, without
            # using a try (their keys make that safe). Anything else (a deferred
            # constraint) is a job's doing: alone, it fails its attempt; in a
            # shared batch, all go back and the next ones commit one by one, so
            # that the culprit is found.
            transient = batch.transient(exc)
            alone = len(ids) == 1
            if not (transient or alone):
                batch.alone_for_a_while()
            # Named as the same failure is when the job commits by itself (the
            # SQLAlchemy error run_job records), whichever path found it.
            failure = Finished("release" if transient or not alone else "error",
                               exception_class=class_name(exc), message=str(exc),
                               traceback=traceback.format_exc())
        batch.pending = []
        if ids:
            messages.append(Committed(ids, failure))
    return messages


class Runtimes:
    """How long each kind of idempotent job takes here: only one known to be
    short joins a transaction that earlier jobs' effects wait in."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seconds: dict[str, float] = {}

    def idempotent(self, task: Any) -> bool:
        if not isinstance(task, RunJob):
            return False
        job = self.app.jobs.get(task.name)
        return job is not None and job.idempotency_key is not None

    def short(self, task: Any) -> bool:
        """Idempotent, and short enough to join an open transaction."""
        return (self.idempotent(task)
                and self.seconds.get(task.name, math.inf) < OutcomeBatch.MAX_SECONDS)

    def add(self, task: RunJob, seconds: float) -> None:
        last = self.seconds.get(task.name)
        self.seconds[task.name] = seconds if last is None else 0.8 * last + 0.2 * seconds


def run_hook(app: Any, task: RunHook) -> Finished:
    try:
        hook = app.lookup(task.failure.job).on_failure
        if hook is not None:
            hook(task.failure)
    except BaseException as exc:
        return Finished("error", exception_class=class_name(exc), message=str(exc),
                        traceback=traceback.format_exc())
    return Finished("done")


def _receive(conn: Connection, inbox: deque[Any]) -> None:
    """Read one message: a task, None (exit), or a list of tasks sent together."""
    message = conn.recv()
    if isinstance(message, list):
        inbox.extend(message)
    else:
        inbox.append(message)


def child_main(conn: Connection, app_reference: str, measure_memory: bool = False) -> None:
    """Entry point of a child process."""
    # Ctrl-C and systemd's SIGTERM reach the whole process group: the children
    # ignore them, and the supervisor decides when a running job must die.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    server = sys.modules.get("dbqueue.worker.forkserver_init")
    if server is not None and os.getppid() != server.PID:
        return  # the fork server died before the line above: so did the supervisor
    from ..loader import load_app

    app = load_app(app_reference)
    batch = OutcomeBatch(app)
    runtimes = Runtimes(app)
    inbox: deque[Any] = deque()  # tasks already sent to this child, in order
    try:
        while True:
            # An open batch waits for the next job only if it is already here.
            if batch.lost or (batch.open and (batch.due() or (not inbox and not conn.poll()))):
                for message in end_batch(batch):
                    conn.send(message)
            if not inbox:
                try:
                    _receive(conn, inbox)
                except (EOFError, OSError):
                    return  # the supervisor is gone: the batch rolls back
                # What arrived before the pipe closed (a final None, say) still
                # counts: the closed pipe shows up at the next recv().
                with contextlib.suppress(EOFError, OSError):
                    while conn.poll():
                        _receive(conn, inbox)
            task = inbox.popleft()
            idempotent = runtimes.idempotent(task)
            # One that turned out slow ends the batch (its claims are given back).
            joins = idempotent and runtimes.short(task)
            if batch.open and not joins:
                for message in end_batch(batch):
                    conn.send(message)
            if task is None:
                return
            if idempotent and task.job_id not in batch.preclaimed:
                batch.preclaim([(app.jobs[t.name], t.job_id, t.args, t.kwargs)
                                for t in [task, *itertools.takewhile(runtimes.short, inbox)]])
            if isinstance(task, RunJob):
                started = time.monotonic()
                answer = run_job(app, task, batch)
                batch.unused(task.job_id)
                if idempotent:
                    runtimes.add(task, time.monotonic() - started)
            else:
                answer = run_hook(app, task)
            if measure_memory:
                answer = answer._replace(rss_mb=_rss_mb())
            conn.send(answer)
    except (BrokenPipeError, OSError):
        return
    finally:
        batch.discard()
