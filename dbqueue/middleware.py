"""Job middleware: code that runs around a job, in the worker's child process.

A middleware is any callable ``(context, call_next) -> result``. It may run
code before and after ``call_next()``, skip the job by returning without
calling it (the job then completes), or put the job back with
``raise dbqueue.Release(delay)``. In dbqueue a release never uses up one of the
job's tries, whoever raises it, so a job that waits its turn behind a
middleware can still run its full number of attempts.

    @app.job(middleware=[WithoutOverlapping(lambda account_id: str(account_id))])
    def sync_account(account_id: int) -> None: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigurationError, Release

if TYPE_CHECKING:
    from .app import App
    from .jobs import Job


@dataclass(frozen=True)
class JobContext:
    """The job a middleware is running around."""

    app: App
    job: Job[..., Any]
    job_id: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1


class Middleware(Protocol):
    def __call__(self, context: JobContext, call_next: Callable[[], Any]) -> Any: ...


def run_with(middleware: tuple[Middleware, ...], context: JobContext,
             body: Callable[[], Any]) -> Any:
    """Run ``body`` through the middleware, the first listed outermost."""

    def call(index: int) -> Any:
        if index == len(middleware):
            return body()
        return middleware[index](context, lambda: call(index + 1))

    return call(0)


class WithoutOverlapping:
    """Run at most one job with the same key at a time, across every host.

    ``key`` is a string, or a function of the job's arguments returning one
    (default: one key for the whole job). While another job holds the key,
    this one is released back for ``release_after`` seconds, or, with
    ``dont_release``, dropped (it completes without running). The key is held
    by a lock in ``cache_locks`` that expires after ``expire_after`` seconds
    (default: the job's timeout), so a holder that died frees it in the end.
    """

    def __init__(self, key: str | Callable[..., Any] = "", *, release_after: float = 0,
                 expire_after: float | None = None, dont_release: bool = False) -> None:
        if release_after < 0:
            raise ConfigurationError(f"release_after must be >= 0, not {release_after!r}")
        if expire_after is not None and not expire_after > 0:
            raise ConfigurationError(f"expire_after must be > 0, not {expire_after!r}")
        self.key = key
        self.release_after = float(release_after)
        self.expire_after = expire_after
        self.dont_release = dont_release

    def lock_key(self, context: JobContext) -> str:
        part = self.key(*context.args, **context.kwargs) if callable(self.key) else self.key
        return f"dbqueue:overlap:{context.job.name}:{part}"

    def __call__(self, context: JobContext, call_next: Callable[[], Any]) -> Any:
        ttl = self.expire_after or context.job.timeout
        lock = context.app.lock(self.lock_key(context), ttl=ttl)
        if not lock.acquire():
            if self.dont_release:
                return None
            raise Release(self.release_after)
        try:
            return call_next()
        finally:
            lock.release()
