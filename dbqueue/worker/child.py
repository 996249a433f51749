"""The code that runs inside a child process: job functions and failure hooks.

A child takes one task at a time from its pipe and answers with one message.
It never touches the queue tables: the supervisor owns every lease, so a child
killed at any instant (timeout, crash, OOM) leaves nothing half-written.

Idempotent jobs are the one exception to "one answer per task" (see
worker.commits): short ones may share a transaction, answered "done,
uncommitted" at once and confirmed by ``Committed`` after the commit.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import logging
import os
import signal
import sys
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from .. import serializer
from ..current import running
from ..errors import Fail, Release, SerializationError, is_permanent
from ..middleware import JobContext, run_with
from ..policy.texts import shortened_message, shortened_traceback
from .childio import forgive_output
from .clock import passed
from .commits import Commits
from .messages import (
    DONE,
    Finished,
    Halt,
    Returned,
    RunHook,
    RunJob,
    class_name,
    described,
    from_wire,
)
from .replies import Replies
from .runtimes import Runtimes
from .signals import ignore_stops
from .stamps import Stamp

log = logging.getLogger("dbqueue.worker")


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
_PID: int | None = None
"""This child's pid (see _exit_if_a_copy)."""


def _exit_if_a_copy() -> None:
    """A job that forks without exec: its copy of this process comes back from
    the job function too. It exits there, before anything of the child's runs
    in it (middleware, the idempotent job's commit on the child's connection,
    the answer in the supervisor's pipe, the next task)."""
    if _PID is not None and os.getpid() != _PID:
        os._exit(0)


def run_job(app: Any, task: RunJob, commits: Commits) -> Finished:
    if passed(task.start_by, task.start_by_wall):
        return EXPIRED
    try:
        job = app.lookup(task.name)
        payload = serializer.decode(task.payload)
        args, kwargs = payload.args, payload.kwargs
        job.check_arguments(args, kwargs)
    except ValueError as exc:  # as the supervisor says it when it decodes one
        return Finished("permanent", exception_class="dbqueue.SerializationError",
                        message=f"job {task.job_id} ({task.name!r}) cannot be decoded: {exc}")
    except Exception as exc:  # an unknown job or bad arguments: retrying cannot help
        return _finished("permanent", exc)

    returned: list[Any] = []

    def body() -> Any:
        try:
            result = job.func(*args, **kwargs)
            if inspect.iscoroutine(result):  # an `async def` job: on an event loop of its own
                import asyncio

                result = asyncio.run(result)
        finally:
            _exit_if_a_copy()
        returned.append(result)
        return result

    if job.idempotency_key is not None:  # innermost: its transaction spans only the body
        body = commits.wrap(job, task.job_id, args, kwargs, body)
    try:
        with running(task.job_id, task.name, task.attempt, payload.flow):
            if job.middleware:
                value = run_with(job.middleware, JobContext(
                    app, job, task.job_id, args, kwargs, task.attempt, task.timeout,
                    task.locks), body)
            else:
                value = body()
        if not returned:  # an idempotent job done before: its stored result
            returned.append(value)
    except BaseException as exc:  # SystemExit from job code is a failure of that job
        if commits.holds(task):
            # A middleware raised after the body (Release and Fail included):
            # the effects and the outcome commit all the same, so the job is
            # done (a retry would skip it).
            log.warning("job %d (%s) is done, but its middleware then raised %s: %s",
                        task.job_id, task.name, class_name(exc), exc)
            return _done(task, payload.flow, returned, uncommitted=True)  # its result too
        return _failed(exc, job.dont_retry)
    return _done(task, payload.flow, returned, uncommitted=commits.holds(task))


def _done(task: RunJob, flow: dict[str, Any] | None, returned: list[Any], *,
          uncommitted: bool) -> Finished:
    if not (flow and flow.get("chain")):
        return Finished("done", uncommitted=True) if uncommitted else DONE
    try:  # a chain's next step receives what this one returned
        result = serializer.encode_result(f"what chain step {task.name!r} returns",
                                         returned[0] if returned else None)
    except SerializationError as exc:
        return Finished("permanent", exception_class=class_name(exc), message=str(exc))
    return Finished("done", uncommitted=uncommitted, result=result)


def _failed(exc: BaseException, dont_retry: tuple[type[BaseException], ...]) -> Finished:
    """How an attempt that raised ``exc`` ended."""
    if isinstance(exc, Release):
        return Finished("release", delay=exc.delay, message=exc.reason,
                        held_back=exc.held_back)
    if isinstance(exc, Fail):
        return _finished("fail", exc, exc.reason)
    return _finished("permanent" if isinstance(exc, dont_retry) or is_permanent(exc)
                     else "error", exc)


def _finished(kind: str, exc: BaseException, message: str | None = None) -> Finished:
    """A failed task's answer: ``exc``, with its message and the traceback
    being handled, both shortened (see policy.texts)."""
    return Finished(kind, exception_class=class_name(exc),
                    message=shortened_message(described(exc) if message is None else message),
                    traceback=shortened_traceback(traceback.format_exc()))


def run_hook(app: Any, task: RunHook) -> Finished:
    try:
        hook = app.lookup(task.failure.job).on_failure
        if hook is not None:
            hook(task.failure)
    except BaseException as exc:
        return _finished("error", exc)
    return Finished("done")


def _receive(conn: Connection, inbox: deque[Any]) -> bool:
    """Wait for the next message and read it with every other one already sent:
    a task, None (exit), or a list of tasks sent together. False: the
    supervisor is gone."""
    try:
        _read(conn, inbox)
    except (EOFError, OSError):
        return False
    # What arrived before the pipe closed (a final None, say) still counts:
    # the closed pipe shows up at the next read.
    with contextlib.suppress(EOFError, OSError):
        while conn.poll():
            _read(conn, inbox)
    return True


def _send_back_queued(conn: Connection, inbox: deque[Any], replies: Replies,
                      commits: Commits) -> None:
    """The worker is stopping: answer Halt with the jobs queued before it
    (none begun), after every answer held and once the open transaction has
    ended (it may hold claims of their idempotency keys, which another worker
    taking them would wait for). Failure hooks stay, to run."""
    while not any(type(task) is Halt for task in inbox):
        _read(conn, inbox)  # sent before the byte was set: in the pipe already
    queued = list(inbox)
    at = next(i for i, task in enumerate(queued) if type(task) is Halt)
    jobs = [task for task in queued[:at] if type(task) is RunJob]
    inbox.clear()
    inbox.extend(task for task in queued[:at] if type(task) is not RunJob)
    inbox.extend(queued[at + 1:])
    commits.end(replies)
    replies.send(Returned(tuple(job.job_id for job in jobs)))


def _read(conn: Connection, inbox: deque[Any]) -> None:
    message = conn.recv()
    if isinstance(message, list):
        inbox.extend(map(from_wire, message))
    else:
        inbox.append(from_wire(message))


def _in_fork_server_child() -> bool:
    """False when the fork server died before this child asked to die with its
    parent: then so did the supervisor, and this child must not run."""
    server = sys.modules.get("dbqueue.worker.forkserver_init")
    return server is None or os.getppid() == server.PID


def child_main(conn: Connection, app_reference: str, measure_memory: bool = False,
               stamp_cells: Any = None, halt: Any = None) -> None:
    """Entry point of a child process; ``stamp_cells``: see worker.stamps;
    ``halt``: one shared byte, set once the supervisor has sent Halt."""
    # Ctrl-C, systemd's SIGTERM and a closed terminal's SIGHUP reach the
    # whole process group (systemd's: the whole service): the children ignore
    # them, and the supervisor decides when a running job must die. The
    # programs a job runs inherit that (an ignored signal stays ignored across
    # exec), so that they too finish within the grace period; a timeout kills
    # them with the child (see pool.kill).
    ignore_stops()
    die_with_parent()
    if not _in_fork_server_child():
        return
    global _PID
    _PID = os.getpid()
    forgive_output()
    from ..loader import load_app

    app = load_app(app_reference)
    runtimes = Runtimes()
    commits = Commits(app, runtimes)
    replies = Replies(conn, runtimes)
    stamp = Stamp(stamp_cells) if stamp_cells is not None else None
    inbox: deque[Any] = deque()  # tasks already sent to this child, in order
    halted = False
    try:
        while True:
            commits.before_waiting(replies, inbox)
            if not inbox:
                replies.flush()
                if not _receive(conn, inbox):
                    return  # the supervisor is gone: an open transaction rolls back
            # Between two tasks, the one shared byte tells whether a Halt is on
            # its way: reading the pipe itself would cost a system call a task.
            if not halted and ((halt is not None and halt[0]) or type(inbox[0]) is Halt):
                halted = True
                _send_back_queued(conn, inbox, replies, commits)
                continue
            task = inbox.popleft()
            if task is None:
                commits.before_running(task, inbox, replies)
                return
            if stamp is not None:
                # Before its preparation (a COMMIT, claiming idempotency keys
                # with the job's own key function): what hangs there is the
                # task's, and its timeout kills it.
                stamp.begin(time.monotonic())
            commits.before_running(task, inbox, replies)
            answer = _run(app, task, commits, measure_memory)
            if answer == DONE:
                replies.done(inbox[0] if inbox else None)
            else:
                replies.send(answer)
            # After the answer: a task marked ended whose answer is not in
            # the pipe was done (see Ended.held).
            if stamp is not None:
                stamp.end(time.monotonic())
    except (EOFError, OSError):  # the supervisor is gone
        return
    finally:
        commits.close()


def _run(app: Any, task: RunJob | RunHook, commits: Commits, measure_memory: bool) -> Finished:
    started = time.monotonic()
    answer = run_job(app, task, commits) if isinstance(task, RunJob) else run_hook(app, task)
    _exit_if_a_copy()  # (a failure hook's copy: a job's exits in its body)
    commits.after_running(task, time.monotonic() - started)
    if measure_memory:
        answer = answer._replace(rss_mb=_rss_mb())
    return answer
