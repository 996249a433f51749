"""The code that runs inside a child process: job functions and failure hooks.

A child takes one task at a time from its pipe and answers with one message.
It never touches the queue tables: the supervisor owns every lease, so a child
killed at any instant (timeout, crash, OOM) leaves nothing half-written.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from ..errors import Fail, Release
from ..idempotency import run_idempotent
from ..jobs import JobFailure
from ..middleware import JobContext, run_with

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


class RunHook(NamedTuple):
    failure: JobFailure


# From the child.


class Finished(NamedTuple):
    """The task ended. ``kind`` is "done", or how the job failed (see policy.EndKind)."""

    kind: str
    rss_mb: float = 0.0
    """The child's memory after the task, when the worker has a --memory limit."""
    delay: float = 0.0
    exception_class: str = ""
    message: str = ""
    traceback: str = ""


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


def _die_with_parent() -> None:
    """Linux: have the kernel kill this child when its parent dies, so a job never
    goes on running after its worker was killed (its lease will be taken over)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def run_job(app: Any, task: RunJob) -> Finished:
    try:
        job = app.lookup(task.name)
        job.check_arguments(task.args, task.kwargs)
    except Exception as exc:  # an unknown job or bad arguments: retrying cannot help
        return Finished("permanent", exception_class=class_name(exc),
                        message=str(exc), traceback=traceback.format_exc())
    def body() -> Any:
        return job.func(*task.args, **task.kwargs)

    if job.idempotency_key is not None:  # innermost: its transaction spans only the body
        body = partial(run_idempotent, app, job, task.job_id, task.args, task.kwargs, body)
    try:
        if job.middleware:
            run_with(job.middleware, JobContext(app, job, task.job_id, task.args, task.kwargs,
                                                task.attempt, task.timeout, task.locks), body)
        else:
            body()
    except Release as release:
        return Finished("release", delay=release.delay)
    except Fail as fail:
        return Finished("fail", exception_class=class_name(fail),
                        message=fail.reason, traceback=traceback.format_exc())
    except BaseException as exc:  # SystemExit from job code is a failure of that job
        kind = "permanent" if isinstance(exc, job.dont_retry) else "error"
        return Finished(kind, exception_class=class_name(exc), message=str(exc),
                        traceback=traceback.format_exc())
    return Finished("done")


def run_hook(app: Any, task: RunHook) -> Finished:
    try:
        hook = app.lookup(task.failure.job).on_failure
        if hook is not None:
            hook(task.failure)
    except BaseException as exc:
        return Finished("error", exception_class=class_name(exc), message=str(exc),
                        traceback=traceback.format_exc())
    return Finished("done")


def child_main(conn: Connection, app_reference: str, measure_memory: bool = False) -> None:
    """Entry point of a child process."""
    # Ctrl-C and systemd's SIGTERM reach the whole process group: the children
    # ignore them, and the supervisor decides when a running job must die.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    from ..loader import load_app

    app = load_app(app_reference)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        answer = run_job(app, task) if isinstance(task, RunJob) else run_hook(app, task)
        if measure_memory:
            answer = answer._replace(rss_mb=_rss_mb())
        try:
            conn.send(answer)
        except (BrokenPipeError, OSError):
            return
