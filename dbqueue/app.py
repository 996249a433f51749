"""The application object: where the queue lives and which jobs exist."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from datetime import timedelta, tzinfo
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from sqlalchemy.engine import URL, Engine

from . import deferred
from .errors import ConfigurationError, NotFound, UnknownJob
from .jobs import Job, PreparedJob, job_name, same_function
from .locks import Lock
from .policy import Backoff
from .policy.names import close_names, either
from .schedule import Schedule
from .settings import Settings
from .store import Admin, Executor, Store, WorkerRegistry, create_engine
from .store.batches import Batches
from .store.database import Database
from .store.isolation import adopt
from .store.locks import Locks
from .store.newfile import refuse_new_file
from .store.outcomes import Outcome, Outcomes
from .workflows import Batch, Chain, PendingBatch

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

P = ParamSpec("P")
R = TypeVar("R")

_JOB_OPTIONS = tuple(f.name for f in fields(Job) if f.init and f.name not in ("app", "func"))
"""What ``@app.job`` takes: a Job's own fields but those the App fills in."""

# The stores a forked child inherited: their connections are its parent's, so
# the child must neither use nor close them (closing one sends the server a
# goodbye on the parent's socket), nor let garbage collection hand them back
# to a pool that might. Kept here for the child's lifetime.
_inherited: list[Store] = []
_apps: weakref.WeakSet[App] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for app in _apps:
        app._forget_parents_store()


os.register_at_fork(after_in_child=_after_fork_in_child)


class App:
    """A dbqueue application: one queue database and the jobs it may run.

    ``url_or_engine`` is a database URL, a SQLAlchemy Engine, or None for
    ``$DBQUEUE_URL`` and then a SQLite file ``dbqueue.db`` in the working
    directory. Nothing connects until the first use. ``table_prefix``,
    ``retry_after`` and ``network_timeout`` default to their DBQUEUE_*
    variables (see Settings); ``network_timeout`` applies to the engines built
    from a URL, not to one given.
    """

    def __init__(self, url_or_engine: str | Engine | None = None, *,
                 table_prefix: str | None = None, retry_after: float | None = None,
                 network_timeout: float | None = None) -> None:
        given_engine = url_or_engine if isinstance(url_or_engine, Engine) else None
        url = url_or_engine if isinstance(url_or_engine, str) else None
        if isinstance(url_or_engine, URL):
            url = url_or_engine.render_as_string(hide_password=False)
        elif given_engine is not None:
            url = given_engine.url.render_as_string(hide_password=False)
        elif url is None and url_or_engine is not None:
            raise ConfigurationError(_not_a_url(url_or_engine))
        self.settings = Settings.from_env(url=url, table_prefix=table_prefix,
                                          retry_after=retry_after,
                                          network_timeout=network_timeout)
        self._engine = given_engine
        self._store: Store | None = None
        self._worker_sessions = False
        self._lock = threading.Lock()
        self.jobs: dict[str, Job[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        _apps.add(self)

    # --- the database ---------------------------------------------------------

    @property
    def store(self) -> Store:
        """The storage layer (internal; created on first use)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    if self._engine is not None:
                        self._store = Store(adopt(self._engine), self.settings.table_prefix)
                    else:
                        url, timeout = self.settings.url, self.settings.network_timeout
                        prefix = self.settings.table_prefix
                        engines = (create_engine(url, network_timeout=timeout),
                                   create_engine(url, autocommit=True, network_timeout=timeout))
                        for engine in engines:  # only migrate() creates a SQLite file
                            refuse_new_file(engine, prefix)
                        self._store = Store(engines[0], prefix, engines[1])
        return self._store

    def worker_store(self) -> Store:
        """The store, for a worker's supervisor (internal). Its transactions
        wait on nothing but the server, so the server is asked to end a
        session that sits inside one for longer than the network timeout, and
        its statements wait for a lock at most that long (see
        ``Dialect.limit_waits``): a supervisor cut off or stopped mid-way
        would otherwise keep the locks of its reservation or its outcomes
        until the server noticed, and hold up every worker that needs them,
        itself included. Connections made before this call, and an engine
        the App was given, are left as they are."""
        store = self.store
        if self._engine is None and not self._worker_sessions:
            self._worker_sessions = True
            store.dialect.limit_waits(store.engine, self.settings.network_timeout)
        return store

    @property
    def engine(self) -> Engine:
        return self.store.engine

    def migrate(self, revision: str = "head") -> None:
        """Create or upgrade dbqueue's tables (idempotent; its own transaction)."""
        from .store import migrator  # Alembic: loaded only by those who migrate

        migrator.upgrade(self.store, self.settings.table_prefix, revision)

    def downgrade(self, revision: str = "base") -> None:
        """Take dbqueue's tables back to ``revision``; ``base`` drops them all."""
        from .store import migrator

        migrator.downgrade(self.store, self.settings.table_prefix, revision)

    @property
    def admin(self) -> Admin:
        """Failed jobs and queue status, for operators."""
        return Admin(self.store)

    @property
    def database(self) -> Database:
        """The database the URL names, before anything connects (for the command line)."""
        return Database(self.settings.url, self.settings.table_prefix)

    @property
    def workers(self) -> WorkerRegistry:
        return WorkerRegistry(self.store)

    def lock(self, key: str, ttl: float = 120, *, wait: float = 0) -> Lock:
        """A distributed lock named ``key`` that expires ``ttl`` seconds after it is
        taken (or last extended). ``wait`` is how long ``with`` waits for it."""
        return Lock(Locks(self.store), key, ttl, wait=wait)

    def outcome(self, idempotency_key: str | int) -> Outcome | None:
        """The recorded outcome of an idempotent job, or None: ``outcome.result``
        is the job's return value, decoded from JSON. An int is the key its
        text is (a key function may return one)."""
        if isinstance(idempotency_key, bool) or not isinstance(idempotency_key, str | int):
            raise ConfigurationError(f"an idempotency key is a string, not "
                                     f"{idempotency_key!r}")
        return Outcomes(self.store).get(str(idempotency_key))

    def restore_lock(self, key: str, owner: str, ttl: float = 120) -> Lock:
        """The lock ``key`` as held by ``owner`` (a token from ``lock.owner``), so
        that another process can release or extend it (``extend()`` by ``ttl``:
        give the one it was taken with)."""
        if owner is None:
            raise ConfigurationError("restore_lock needs the owner's token (lock.owner of "
                                     "the lock as it was taken)")
        return Lock(Locks(self.store), key, ttl, owner=owner)

    def dispose(self) -> None:
        """Close the connections of an engine dbqueue created."""
        store, self._store = self._store, None
        if store is None:
            return
        store.close()
        if self._engine is None:
            store.engine.dispose()
            store.autocommit_engine.dispose()

    def _forget_parents_store(self) -> None:
        """In a forked child: connect afresh on next use, as a new process would.

        An engine the application gave us is its own to manage after a fork
        (SQLAlchemy's advice: ``engine.dispose(close=False)`` in the child).
        """
        self._lock = threading.Lock()  # another thread of the parent may have held it
        if self._store is not None and self._engine is None:
            _inherited.append(self._store)
            self._store = None
            self._worker_sessions = False  # the new store's sessions are a child's

    # --- jobs -------------------------------------------------------------------

    @overload
    def job(self, func: Callable[P, R], /) -> Job[P, R]: ...

    @overload
    def job(self, func: None = None, /, *, name: str | None = None, queue: str = "default",
            tries: int | None = 1, backoff: Backoff | list[float] = 0,
            timeout: float | timedelta = 60,
            retry_until: float | timedelta | None = None, priority: int = 0,
            dont_retry: type[BaseException] | Iterable[type[BaseException]] = (),
            on_failure: Callable[..., Any] | None = None,
            unique_key: Callable[..., Any] | None = None,
            unique_for: float | timedelta | None = None,
            unique_until: str = "completion",
            middleware: Iterable[Any] = (),
            idempotency_key: Callable[..., Any] | None = None,
            ) -> Callable[[Callable[P, R]], Job[P, R]]: ...

    def job(self, func: Callable[..., Any] | None = None, /,
            **options: Any) -> Any:
        """Register a function as a job.

        ``tries`` is the number of attempts in all (None: no limit);
        ``backoff`` the seconds between attempts (a number, a list per attempt
        whose last value repeats, or ``dbqueue.Exponential()``); ``timeout`` the
        seconds after which an attempt is killed; ``retry_until`` the seconds
        after dispatch when no new attempt may start; ``dont_retry`` exceptions
        that fail the job at once; ``on_failure(failure)`` runs once, in a
        worker's child process, with a :class:`dbqueue.JobFailure` when the job
        has failed for good.

        Unique jobs: with ``unique_key`` (a function of the job's arguments
        returning a string) or ``unique_for``, a dispatch is not queued while a
        queued or running job of the same name holds the same key. The key is
        freed when that job completes or finally fails, when ``unique_for``
        seconds have passed since its dispatch, and when the dispatching
        transaction rolls back; with ``unique_until="processing"`` it is freed
        as soon as the job starts.

        ``middleware`` runs around the job in the worker (see dbqueue.middleware),
        for example ``[dbqueue.WithoutOverlapping("key")]``.

        ``idempotency_key`` (a function of the job's arguments) makes the job
        run once per key: see :func:`dbqueue.transaction`.
        """
        # Checked here, not left to Job(), so a typo is named where it was
        # written (as options() names one) rather than as Job's TypeError.
        unknown = set(options) - set(_JOB_OPTIONS)
        if unknown:
            raise ConfigurationError(f"unknown job option(s) {', '.join(sorted(unknown))}; "
                                     f"the options are {', '.join(_JOB_OPTIONS)}")
        if func is not None:
            return self._register(func, **options)
        return lambda f: self._register(f, **options)

    def _register(self, func: Callable[P, R], *, name: str | None = None,
                  **options: Any) -> Job[P, R]:
        # The options as the caller wrote them (a timedelta, a backoff list,
        # one class for dont_retry): Job.__post_init__ checks and normalizes
        # them all, in one place, for every way a Job is made.
        name = job_name(func, name)
        existing = self.jobs.get(name)
        if existing is not None and not same_function(existing.func, func):
            raise ConfigurationError(f"two jobs are named {name!r}; give one a name=")
        job = Job(self, func, name, **options)
        self.jobs[name] = job
        return job

    def lookup(self, name: str) -> Job[Any, Any]:
        try:
            return self.jobs[name]
        except KeyError:
            close = close_names(name, list(self.jobs), dotted=True)
            meant = f"did you mean {either(close)}? " if close else ""
            raise UnknownJob(
                f"no job named {name!r} is registered in this app; {meant}"
                "check that the worker's --app imports the module that defines it"
                + (" (a job's default name is its module's import path)" if close else "")
            ) from None

    def chain(self, jobs: Iterable[PreparedJob], *, catch: PreparedJob | None = None) -> Chain:
        """Jobs that run one after the other: each step is queued when the one
        before it completes. ``catch`` is queued if a step fails for good (the
        chain stops there; ``dbqueue retry`` of that step resumes it). A step
        reads what the one before returned as ``dbqueue.current_job().previous``."""
        return Chain(self, jobs, catch)

    def batch(self, jobs: Iterable[PreparedJob | Sequence[PreparedJob]], *, name: str = "",
              then: PreparedJob | None = None, catch: PreparedJob | None = None,
              finally_: PreparedJob | None = None, allow_failures: bool = False,
              ) -> PendingBatch:
        """Jobs tracked as one unit (a list inside ``jobs`` is a chain). ``then``
        is queued when every job succeeded, ``catch`` at the first failure,
        ``finally_`` when every job has finished; a failure cancels the batch
        unless ``allow_failures`` (then ``then`` runs once all have finished)."""
        return PendingBatch(self, jobs, name=name, then=then, catch=catch, finally_=finally_,
                            allow_failures=allow_failures)

    def find_batch(self, batch_id: str) -> Batch:
        """The batch as it is now; NotFound if there is none (or it was pruned)."""
        row = Batches(self.store).find(batch_id)
        if row is None:
            raise NotFound(f"no batch {batch_id!r}; list them with: dbqueue batches")
        return Batch.of(self, row)

    def schedule(self, prepared: PreparedJob, *, cron: str | None = None,
                 every: float | timedelta | None = None, timezone: str | tzinfo | None = None,
                 name: str | None = None, missed: str = "skip",
                 without_overlapping: bool = False,
                 expect_within: float | timedelta | None = None) -> Schedule:
        """Queue ``prepared`` (from ``job.prepare(...)``) on a schedule: at the
        times of the ``cron`` expression in ``timezone`` (default UTC), or
        ``every`` so many seconds. Every ``dbqueue work`` runs the scheduler and
        each tick is queued once, whatever the number of hosts (see the README's
        "Scheduling" for ``missed``, ``without_overlapping`` and ``expect_within``).
        ``name`` (default: the job's name) identifies the schedule."""
        if not isinstance(prepared, PreparedJob):
            raise ConfigurationError(
                f"app.schedule takes a prepared job, such as my_job.prepare(...), not "
                f"{type(prepared).__name__}")
        if prepared.app is not self:
            raise ConfigurationError(f"job {prepared.new_job.job!r} belongs to another App; "
                                     "schedule it with that one")
        schedule = Schedule.build(prepared, cron=cron, every=every, timezone=timezone,
                                  name=name, missed=missed,
                                  without_overlapping=without_overlapping,
                                  expect_within=expect_within)
        if schedule.name in self.schedules:
            raise ConfigurationError(f"two schedules are named {schedule.name!r}; give one "
                                     "a name=")
        self.schedules[schedule.name] = schedule
        return schedule

    def recent_batches(self, limit: int = 50) -> list[Batch]:
        """The newest batches first."""
        return [Batch.of(self, row) for row in Batches(self.store).recent(limit)]

    def prune_batches(self, hours: float) -> int:
        """Delete batches that finished more than ``hours`` ago; return how many."""
        return Batches(self.store).prune(hours)

    def dispatch_many(self, prepared: Iterable[PreparedJob], *,
                      connection: Executor | None = None,
                      after_commit: Session | None = None) -> int:
        """Queue many jobs (of one or several kinds) in multi-row INSERTs.

        ``prepared`` come from ``job.prepare(...)`` or ``job.options(...).prepare(...)``.
        Runs in the caller's transaction with ``connection=``, after the
        Session commits with ``after_commit=``, else in a transaction of its
        own. Returns how many jobs were queued (0 while held for a commit).
        """
        if isinstance(prepared, PreparedJob) or not isinstance(prepared, Iterable):
            raise ConfigurationError(
                f"dispatch_many takes a list of prepared jobs, such as [my_job.prepare(...)], "
                f"not {type(prepared).__name__}")
        prepared = list(prepared)
        for item in prepared:
            if not isinstance(item, PreparedJob):
                raise ConfigurationError(
                    f"dispatch_many takes prepared jobs, such as my_job.prepare(...) or "
                    f"my_job.options(queue=...).prepare(...), not {type(item).__name__}")
            if item.app is not self:
                raise ConfigurationError(
                    f"job {item.new_job.job!r} belongs to another App; dispatch it with that one"
                )
        if after_commit is not None:
            deferred.defer(after_commit, prepared)
            return 0
        return self.store.push_many([item.new_job for item in prepared], connection)


def _not_a_url(given: object) -> str:
    """The error for ``App(given)``, where ``given`` is no URL nor Engine."""
    hint = (f"; for a SQLite file: App('sqlite:///{given}')" if isinstance(given, os.PathLike)
            else "")
    return (f"App() takes a database URL (such as 'postgresql://app@db/app'), a SQLAlchemy "
            f"URL or Engine, or None for $DBQUEUE_URL; not {given!r}{hint}")
