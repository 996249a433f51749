"""What a running job can learn about itself: ``dbqueue.current_job()``.

Inside a job run by a worker::

    @app.job
    def parse() -> dict:
        step = dbqueue.current_job()
        html = step.previous          # what the chain's previous step returned
        if step.batch_id is not None:
            app.find_batch(step.batch_id).add([...])
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CurrentJob:
    """The job running now (see :func:`current_job`)."""

    id: int
    name: str
    attempt: int
    """1 on the first attempt."""
    previous: Any = None
    """In a chain: what the step before this one returned (None for the first)."""
    batch_id: str | None = None
    """The batch this job belongs to, or whose callback (then/catch/finally) it is."""
    failed: dict[str, Any] | None = None
    """In a ``catch`` job (of a chain, or a batch): the job that failed for good,
    as ``{"job_id", "failed_job", "exception_class", "message"}``, where
    ``failed_job`` is the uuid of its failed_jobs row (``dbqueue retry UUID``)."""
    schedule: str | None = None
    """In a scheduled run: the schedule's name."""
    tick: str | None = None
    """In a scheduled run: the tick it runs for (ISO 8601, UTC)."""


_Described = tuple[int, str, int, dict[str, Any] | None]
"""What ``describe`` takes: most jobs never ask who they are, so the
CurrentJob is built only when one does."""

_current: ContextVar[_Described | None] = ContextVar("dbqueue_current_job", default=None)


def current_job() -> CurrentJob:
    """The job this code runs in; RuntimeError outside a job run by a worker."""
    job = _current.get()
    if job is None:
        raise RuntimeError("dbqueue.current_job() was called outside a job: it is only "
                           "available while a dbqueue worker runs a job")
    return describe(*job)


class running:
    """Within the block, ``current_job()`` describes this job (see ``describe``).

    A class rather than a generator: a child enters it for every job it runs.
    """

    __slots__ = ("_job", "_token")

    def __init__(self, job_id: int, name: str, attempt: int,
                 flow: dict[str, Any] | None) -> None:
        self._job = (job_id, name, attempt, flow)
        self._token: Token[_Described | None] | None = None

    def __enter__(self) -> None:
        self._token = _current.set(self._job)

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None
        _current.reset(self._token)


def describe(job_id: int, name: str, attempt: int, flow: dict[str, Any] | None) -> CurrentJob:
    """The CurrentJob of a job whose payload holds ``flow`` (see store.flows)."""
    if not flow:
        return CurrentJob(job_id, name, attempt)
    batch = flow.get("batch", flow.get("callback"))
    failed = flow.get("failed")
    return CurrentJob(job_id, name, attempt, flow.get("previous"),
                      batch if isinstance(batch, str) else None,
                      failed if isinstance(failed, dict) else None,
                      _text(flow.get("schedule")), _text(flow.get("tick")))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
