"""The messages between the supervisor and its children.

They are NamedTuples: they cross a pipe once per job, and tuples pickle
several times faster than slotted dataclasses. Two forms are leaner still,
as nearly every job of a busy worker takes them: a RunJob travels as a plain
tuple (``to_wire``; pickling a NamedTuple calls back into Python for each
one), and the plain "done" answer as the one byte ``DONE_FRAME`` (a pickle is
never one byte long).
"""

from __future__ import annotations

import math
import pickle
from typing import NamedTuple

from ..jobs import JobFailure

# From the supervisor.


class RunJob(NamedTuple):
    job_id: int
    name: str
    payload: str
    """The job's stored payload, decoded by the child (the supervisor decodes
    only those whose options or middleware it must read itself)."""
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


def to_wire(task: RunJob | RunHook | Halt | None) -> tuple[object, ...] | RunHook | Halt | None:
    """``task`` as it crosses the pipe (see ``from_wire``)."""
    return tuple(task) if type(task) is RunJob else task


def from_wire(message: object) -> RunJob | RunHook | Halt | None:
    """What ``to_wire`` sent."""
    if type(message) is tuple:
        return RunJob(*message)
    return message  # type: ignore[return-value]


class RunHook(NamedTuple):
    failure: JobFailure


class Halt(NamedTuple):
    """The worker is stopping: start none of the jobs queued before this, send
    them back (Returned); failure hooks still run."""


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
    result: str | None = None
    """Done: what the job returned, as JSON text, when it is a chain step with
    steps after it (the next one receives it)."""
    held_back: bool = False
    """Released: a shared limit held it back (see dbqueue.Release)."""


DONE = Finished("done")
DONE_FRAME = b"d"
"""How a child says DONE: one byte, no pickle either way."""


def answer_from(data: bytes) -> Finished | Committed | Returned:
    """A child's message, as read whole from the pipe (``Connection.recv_bytes``)."""
    return DONE if data == DONE_FRAME else pickle.loads(data)


class Returned(NamedTuple):
    """The answer to Halt: these queued jobs were not started (every task the
    child began was answered before)."""

    job_ids: tuple[int, ...]


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


def described(error: BaseException) -> str:
    """``str(error)``, or a stand-in when the exception's own ``__str__``
    raises: a job's exception must never take down the process reporting it."""
    try:
        return str(error)
    except BaseException as exc:
        return f"<{class_name(error)}: its str() raised {class_name(exc)}>"
