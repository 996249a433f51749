"""Job middleware: code that runs around a job, in the worker's child process.

A middleware is any callable ``(context, call_next) -> result``. It may run
code before and after ``call_next()``, skip the job by returning without
calling it (the job then completes), or put the job back with
``raise dbqueue.Release(delay)``. In dbqueue a release never uses up one of the
job's tries, whoever raises it, so a job that waits its turn behind a
middleware can still run its full number of attempts.

    @app.job(middleware=[WithoutOverlapping(lambda account_id: str(account_id))])
    def sync_account(account_id: int) -> None: ...

A middleware that needs a lock held for the whole attempt may also declare
it: a method ``lock_requests(context) -> list[LockRequest]`` (see
:class:`LocksBeforeStart`). ``dbqueue work`` then takes those locks for a
whole batch of reserved jobs in one statement before any of them starts, and
frees them in the transaction that records the outcome; the middleware sees
the keys in ``context.held_locks`` and does not take them again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import keys
from .errors import ConfigurationError, Release
from .policy.durations import required_seconds, seconds

if TYPE_CHECKING:
    from .app import App
    from .jobs import Job

# A job is killed at its timeout; a lock it holds lasts this much longer, so
# that it cannot expire while the job still runs (the kill takes a moment).
LOCK_MARGIN = 5.0


@dataclass(frozen=True)
class JobContext:
    """The job a middleware is running around."""

    app: App
    job: Job[..., Any]
    job_id: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    timeout: float = 60.0
    """Seconds this attempt may run before it is killed: the dispatch's
    ``timeout`` option, or the job's."""
    held_locks: frozenset[str] = frozenset()
    """Lock keys the worker took for this job before handing it over."""


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


class LocksBeforeStart(Protocol):
    """A middleware whose locks the worker takes before the job starts."""

    def lock_requests(self, context: JobContext) -> list[LockRequest]: ...


class TakesArguments(Protocol):
    """A middleware that calls functions with the job's arguments: a dispatch
    checks that each can take them, as it checks the job's own signature."""

    def argument_functions(self) -> list[tuple[str, Callable[..., Any]]]: ...


@dataclass(frozen=True, slots=True)
class LockRequest:
    """A lock a worker takes for a job before running it, and what to do when
    another holds it: release the job for ``release_after`` seconds, or drop it."""

    key: str
    ttl: float
    release_after: float = 0.0
    dont_release: bool = False


class WithoutOverlapping:
    """Run at most one job with the same key at a time, across every host.

    ``key`` is a string, or a function of the job's arguments returning one
    (default: one key for the whole job). While another job holds the key,
    this one is released back for ``release_after`` seconds, or, with
    ``dont_release``, dropped (it completes without running). With
    ``release_after=0`` a worker backs off instead: 0.05 s, doubled each time
    in a row the key is found held, up to 5 s (see worker.joblocks). The key is held
    by a lock in ``cache_locks``, renewed while the job is held by a live
    worker; if the holder dies, the lock expires after ``expire_after``
    seconds (default: a little longer than the attempt's timeout).

    ``dbqueue work`` takes these locks for a whole batch of reserved jobs in
    one statement, and frees them in the transaction that records the jobs'
    completion, so the guard costs almost nothing per job. Run outside a
    worker, the middleware takes and frees its lock itself.
    """

    def __init__(self, key: str | Callable[..., Any] = "", *, release_after: float = 0,
                 expire_after: float | None = None, dont_release: bool = False) -> None:
        self.key = _key_or_function("WithoutOverlapping's", key)
        self.release_after = required_seconds("release_after", release_after)
        self.expire_after = seconds("expire_after", expire_after, allow_zero=False)
        self.dont_release = dont_release

    def lock_key(self, context: JobContext) -> str:
        part = (keys.made("the key of WithoutOverlapping", self.key(*context.args,
                                                                    **context.kwargs))
                if callable(self.key) else self.key)
        prefix = f"dbqueue:overlap:{context.job.name}:"
        return keys.fit(prefix + part, prefix[:120])

    def request(self, context: JobContext) -> LockRequest:
        return LockRequest(self.lock_key(context),
                           self.expire_after or context.timeout + LOCK_MARGIN,
                           self.release_after, self.dont_release)

    def lock_requests(self, context: JobContext) -> list[LockRequest]:
        """The worker takes the key before the job starts (see LocksBeforeStart)."""
        return [self.request(context)]

    def argument_functions(self) -> list[tuple[str, Callable[..., Any]]]:
        """The key function, which a dispatch checks can take its arguments
        (see TakesArguments)."""
        return [("the key of WithoutOverlapping", self.key)] if callable(self.key) else []

    def __call__(self, context: JobContext, call_next: Callable[[], Any]) -> Any:
        request = self.request(context)
        if request.key in context.held_locks:
            return call_next()
        lock = context.app.lock(request.key, ttl=request.ttl)
        if not lock.acquire():
            if self.dont_release:
                return None
            raise Release(self.release_after, reason=f"lock {request.key!r} is held")
        try:
            return call_next()
        finally:
            lock.release()


class ThrottlesExceptions:
    """A circuit breaker around a failing dependency, shared by every host.

    After ``max_attempts`` consecutive exceptions from jobs on this circuit,
    it opens: for ``decay`` seconds every job on it is released back without
    running (not using a try) until the circuit closes. A success resets the
    count. When a job raises, its attempt fails as usual (its own ``tries``
    and ``backoff`` apply); with ``backoff`` given, it is instead released for
    that many seconds, without using a try, as Laravel does (bound such jobs
    with ``retry_until``). The circuit is ``key`` if given, else the job's name.
    """

    def __init__(self, max_attempts: int = 10, decay: float = 600, *,
                 backoff: float | None = None, key: str | None = None) -> None:
        if max_attempts < 1:
            raise ConfigurationError(
                f"ThrottlesExceptions needs max_attempts >= 1 (got {max_attempts!r})")
        self.max_attempts = max_attempts
        self.decay = required_seconds("ThrottlesExceptions' decay", decay, allow_zero=False)
        self.backoff = seconds("ThrottlesExceptions' backoff", backoff)
        self.key = None if key is None else _key_or_function("ThrottlesExceptions'", key,
                                                             function=False)

    def __call__(self, context: JobContext, call_next: Callable[[], Any]) -> Any:
        from .store.circuits import Circuits

        circuits = Circuits(context.app.store)
        circuit = f"dbqueue:circuit:{self.key or context.job.name}"
        remaining = circuits.open_for(circuit)
        if remaining:
            raise Release(remaining, reason=f"circuit {circuit!r} is open")
        try:
            result = call_next()
        except Release:
            raise
        except Exception:
            circuits.failed(circuit, self.max_attempts, self.decay)
            if self.backoff is not None:
                raise Release(self.backoff) from None
            raise
        circuits.succeeded(circuit)
        return result


class RateLimited:
    """At most ``limit`` jobs start in any ``per``-second window, across every host.

    ``name`` names the limit (jobs of several kinds may share one); ``key``, a
    function of the job's arguments, splits it (one limit per customer, say).
    A job over the limit is released, without using a try, until a slot may
    have freed: about ``per`` seconds at most, since a slot frees ``per``
    seconds after its job ends.

    The limit is kept with ``limit`` slots in ``cache_locks``. A job takes a free
    slot before it runs and gives it back ``per`` seconds after it *ends*, so
    any ``limit + 1`` starts span at least ``per`` seconds by the database
    clock, and at most ``limit`` such jobs run at once: what a rate-limited
    third-party API usually wants. Taking a slot costs up to ``limit`` short
    transactions when the limit is reached: keep ``limit`` modest (say, up to
    a hundred) and ``per`` at a second or more.
    """

    def __init__(self, name: str, limit: int, per: float, *,
                 key: Callable[..., Any] | None = None) -> None:
        if not name or limit < 1:
            raise ConfigurationError(
                f"RateLimited needs a name and limit >= 1 (got {name!r}, {limit!r})")
        keys.storable("RateLimited's name", name)
        if key is not None and not callable(key):
            raise ConfigurationError(f"RateLimited's key must be a function of the job's "
                                     f"arguments, e.g. key=lambda customer_id: customer_id; "
                                     f"not {key!r} (a fixed key is a name: RateLimited({key!r}, "
                                     "...))")
        self.name, self.limit, self.key = name, limit, key
        self.per = required_seconds("RateLimited's per", per, allow_zero=False)

    def slots(self, context: JobContext) -> list[str]:
        part = "" if self.key is None else ":" + keys.made(
            "the key of RateLimited", self.key(*context.args, **context.kwargs))
        return [f"dbqueue:rate:{self.name}{part}:{slot}" for slot in range(self.limit)]

    def argument_functions(self) -> list[tuple[str, Callable[..., Any]]]:
        """The key function, which a dispatch checks can take its arguments
        (see TakesArguments)."""
        return [("the key of RateLimited", self.key)] if self.key is not None else []

    def __call__(self, context: JobContext, call_next: Callable[[], Any]) -> Any:
        from .store.locks import Locks

        locks, slots = Locks(context.app.store), self.slots(context)
        # Held for the run (the job cannot outlive its timeout), then `per` more.
        hold = context.timeout + LOCK_MARGIN + self.per
        start = random.randrange(self.limit)  # spread contenders over the slots
        for slot in slots[start:] + slots[:start]:
            lock = context.app.lock(slot, ttl=hold)
            if lock.acquire():
                break
        else:
            # A slot held by a running job expires at the end of its hold, long
            # after the job will most likely have ended: it frees `per` seconds
            # after the end. So look again within `per`, or sooner when a slot
            # of a job that has ended frees sooner; a little later at random,
            # so that the jobs waiting do not all come back at the same instant.
            wait = min(max(locks.free_in(slots), 0.01), self.per)
            wait += random.uniform(0, wait / 4)
            raise Release(wait, reason=f"rate limit {self.name!r} reached "
                                       f"({self.limit} per {self.per:g} s)", held_back=True)
        try:
            return call_next()
        finally:
            lock.extend(self.per)


def _key_or_function(whose: str, key: Any, *, function: bool = True) -> Any:
    """``key`` as given to a middleware (``whose``: "WithoutOverlapping's"): its
    text, which every server must be able to store, or (where ``function``) a
    function of the job's arguments. Where no function is taken, one is
    refused: its text would name a different key in each process."""
    if callable(key):
        if function:
            return key
        raise ConfigurationError(f"{whose} key must be a fixed key (a string), not a function "
                                 f"({key!r})")
    return keys.storable(f"{whose} key", str(key))
