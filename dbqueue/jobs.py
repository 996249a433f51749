"""Job definitions and dispatching them.

``@app.job`` turns a function into a :class:`Job`. Calling it runs the function
here and now; ``.dispatch(...)`` queues it; ``.options(...)`` sets how it is
queued without ever mixing those settings with the function's own arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from . import keys, serializer
from .dispatchoptions import NO_OPTIONS, DispatchOptions, check_priority, check_queue, check_tries
from .errors import ConfigurationError, InvalidArguments
from .policy import Backoff, Rules, refuse_endless_retries, validate_backoff
from .policy.durations import seconds
from .store import NewJob

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")
R = TypeVar("R")


def _positional_counts(signature: inspect.Signature) -> range | None:
    """The numbers of positional arguments a call of ``signature`` without
    keywords accepts, if its parameters are all plain positional ones."""
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = list(signature.parameters.values())
    if not all(p.kind in plain for p in parameters):
        return None
    required = sum(p.default is inspect.Parameter.empty for p in parameters)
    return range(required, len(parameters) + 1)



@dataclass(frozen=True, slots=True)
class JobFailure:
    """What a job's ``on_failure`` hook receives, once, when the job has failed for good."""

    job_id: int
    job: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempts: int
    exception_class: str
    message: str


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A dispatch made ready but not yet queued: give many to ``app.dispatch_many``."""

    app: App
    new_job: NewJob


@dataclass(frozen=True, eq=False)
class Job(Generic[P, R]):
    """A registered job. Call it to run it here; ``dispatch`` to queue it."""

    app: App
    func: Callable[P, R]
    name: str
    queue: str = "default"
    tries: int | None = 1
    backoff: Backoff = 0.0
    timeout: float = 60.0
    retry_until: float | None = None
    priority: int = 0
    dont_retry: tuple[type[BaseException], ...] = ()
    on_failure: Callable[..., Any] | None = None
    unique_key: Callable[..., Any] | None = None
    unique_for: float | None = None
    unique_until: str = "completion"
    middleware: tuple[Any, ...] = ()
    idempotency_key: Callable[..., Any] | None = None
    _signature: inspect.Signature = field(init=False, repr=False)
    _positional: range | None = field(init=False, repr=False)
    """How many positional arguments a call without keywords may pass, when
    the signature is that simple (a dispatch checks it without ``bind``)."""
    _plain: BoundJob[P, R] = field(init=False, repr=False)
    """This job with no dispatch options set, made once: a dispatch is hot."""
    # What else the worker calls with the arguments (idempotency_key, a
    # middleware's key), with its signature: checked at dispatch too.
    _takers: tuple[tuple[str, inspect.Signature], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_tries(self.tries)
        check_priority(self.priority)
        check_queue(self.queue)
        object.__setattr__(self, "backoff", validate_backoff(self.backoff))
        object.__setattr__(self, "timeout", seconds("timeout", self.timeout, allow_zero=False))
        object.__setattr__(self, "retry_until",
                           seconds("retry_until", self.retry_until, allow_zero=False))
        refuse_endless_retries(self.name, self.tries, self.retry_until, self.backoff)
        object.__setattr__(self, "dont_retry", self._exception_classes(self.dont_retry))
        if self.on_failure is not None and not callable(self.on_failure):
            raise ConfigurationError(f"on_failure of job {self.name!r} must be callable")
        if self.unique_key is not None and not callable(self.unique_key):
            raise ConfigurationError(
                f"unique_key of job {self.name!r} must be a function of the job's arguments")
        object.__setattr__(self, "unique_for",
                           seconds("unique_for", self.unique_for, allow_zero=False))
        if self.idempotency_key is not None and not callable(self.idempotency_key):
            raise ConfigurationError(
                f"idempotency_key of job {self.name!r} must be a function of its arguments")
        if callable(self.middleware) or not hasattr(self.middleware, "__iter__"):
            named = getattr(self.middleware, "__name__", type(self.middleware).__name__ + "(...)")
            raise ConfigurationError(
                f"middleware of job {self.name!r} takes a list: middleware=[{named}]")
        object.__setattr__(self, "middleware", tuple(self.middleware))
        if not all(callable(m) for m in self.middleware):
            raise ConfigurationError(
                f"middleware of job {self.name!r} must be callables (context, call_next)")
        if self.unique_until not in ("completion", "processing"):
            raise ConfigurationError(
                f"unique_until must be 'completion' or 'processing', not {self.unique_until!r}")
        signature = inspect.signature(self.func)
        object.__setattr__(self, "_signature", signature)
        object.__setattr__(self, "_positional", _positional_counts(signature))
        object.__setattr__(self, "_plain", BoundJob(self, NO_OPTIONS))
        object.__setattr__(self, "_takers", _signatures(
            [("idempotency_key", self.idempotency_key)] + [
                taken for m in self.middleware if hasattr(m, "argument_functions")
                for taken in m.argument_functions()]))

    def _exception_classes(self, given: Any) -> tuple[type[BaseException], ...]:
        """``dont_retry`` as a tuple: one class, or any iterable of them."""
        try:
            classes = (given,) if isinstance(given, type) else tuple(given)
        except TypeError:
            classes = (given,)
        if not all(isinstance(e, type) and issubclass(e, BaseException) for e in classes):
            raise ConfigurationError(f"dont_retry of job {self.name!r} must list exception classes")
        return classes

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def options(self, **options: Any) -> BoundJob[P, R]:
        """Set how the next dispatch is queued: ``queue``, ``delay`` (seconds),
        ``priority`` (lower runs first), ``connection`` (the caller's Connection or
        Session: insert in its transaction), ``after_commit`` (a Session: queue
        when it commits, drop on rollback), ``tries``, ``timeout``, ``retry_until``."""
        return self._plain.options(**options)

    def dispatch(self, *args: P.args, **kwargs: P.kwargs) -> int | None:
        """Queue the job; return its id.

        In a short transaction of its own (committed before this returns),
        unless ``.options(connection=...)`` or ``.options(after_commit=...)``
        says otherwise; with ``after_commit`` the id is not known yet and None
        is returned. A unique job whose key a queued or running job holds is
        not queued, and None is returned.
        """
        return self._plain.dispatch(*args, **kwargs)

    def prepare(self, *args: P.args, **kwargs: P.kwargs) -> PreparedJob:
        """Validate and encode a dispatch for ``app.dispatch_many``."""
        return self._plain.prepare(*args, **kwargs)

    def rules(self, options: dict[str, Any], created_at: datetime) -> Rules:
        """The retry rules of one queued instance of this job.

        ``options`` come from the stored payload, which anyone with SQL access
        can write: bad values raise ConfigurationError, which the worker turns
        into a failed job rather than a crash.
        """
        deadline: datetime | None = None
        if "retry_until" in options:
            until = options["retry_until"]
            try:
                deadline = datetime.fromisoformat(until)
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"retry_until must be an ISO 8601 time, not {until!r}") from None
            if deadline.tzinfo is None:
                raise ConfigurationError(f"retry_until needs a UTC offset, not {until!r}")
        else:
            retry_for = seconds("retry_for", options.get("retry_for", self.retry_until))
            if retry_for is not None:
                try:
                    deadline = created_at + timedelta(seconds=retry_for)
                except OverflowError:  # near year 9999: no deadline worth keeping
                    deadline = None
        tries = options.get("tries", self.tries)
        check_tries(tries)
        return Rules(tries=tries, backoff=self.backoff, deadline=deadline)

    def timeout_for(self, options: dict[str, Any]) -> float:
        """The timeout of one queued instance of this job, in seconds."""
        timeout = seconds("timeout", options.get("timeout"), allow_zero=False)
        return self.timeout if timeout is None else timeout

    @property
    def unique(self) -> bool:
        return self.unique_key is not None or self.unique_for is not None

    def unique_id(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The key a queued instance holds: the job's name and its ``unique_key``."""
        if not self.unique:
            return None
        part = "" if self.unique_key is None else self._key("unique_key", self.unique_key,
                                                            args, kwargs)
        return keys.fit(f"{self.name}:{part}", f"{self.name[:100]}:")

    def check_idempotency_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """At dispatch: a key no worker could use (keys.made) is refused now.
        What the function raises is left to the worker, which retries it as
        the job's own error (it may look something up that fails a while)."""
        try:
            self.idempotency_id(args, kwargs)
        except ConfigurationError:  # keys.made's: no worker could use the key
            raise
        except Exception:  # see above; a TypeError is checked by signature
            return

    def idempotency_id(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        assert self.idempotency_key is not None
        return keys.fit(self._key("idempotency_key", self.idempotency_key, args, kwargs))

    def _key(self, option: str, function: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> str:
        """What ``function`` (the job's ``option``) makes of the arguments, as a
        string (see keys.made). One that cannot take them (a TypeError) is
        InvalidArguments, naming the job and the option; anything else it
        raises, as it is (a function that looks something up may fail for a while)."""
        try:
            value = function(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{option} of job {self.name!r} cannot take these "
                                   f"arguments: {exc}") from exc
        # Empty, a unique_key leaves the job's name alone (as no unique_key).
        return keys.made(f"{option} of job {self.name!r}", value,
                         empty=option != "idempotency_key")

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:  # (a call the fast test passes, bind() would accept, in ten times the time)
            if kwargs or self._positional is None or len(args) not in self._positional:
                self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            # bind names only the first problem; a misspelt keyword explains
            # the missing argument it also causes, so it comes first.
            unknown = self._unknown_keywords(kwargs)
            reason = (f"unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                      f"{', '.join(map(repr, unknown))}; it takes {self._parameters()}"
                      if unknown else str(exc))
            raise InvalidArguments(
                f"job {self.name!r} cannot take these arguments: {reason}") from None
        for option, taker in self._takers:  # or every attempt would fail in the worker
            try:
                taker.bind(*args, **kwargs)
            except TypeError as exc:
                raise InvalidArguments(f"{option} of job {self.name!r} cannot take these "
                                       f"arguments: {exc}") from None

    def _parameters(self) -> str:
        """The signature as a caller needs it: names and defaults, no annotations."""
        empty = inspect.Parameter.empty
        return str(self._signature.replace(
            parameters=[p.replace(annotation=empty) for p in self._signature.parameters.values()],
            return_annotation=empty))

    def _unknown_keywords(self, kwargs: dict[str, Any]) -> list[str]:
        parameters = self._signature.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return []
        return [name for name in kwargs if name not in parameters
                or parameters[name].kind is inspect.Parameter.POSITIONAL_ONLY]


@dataclass(frozen=True, slots=True)
class BoundJob(Generic[P, R]):
    """A job with dispatch options set: ``job.options(queue="mail").dispatch(...)``."""

    job: Job[P, R]
    settings: DispatchOptions

    def options(self, **options: Any) -> BoundJob[P, R]:
        return BoundJob(self.job, self.settings.merged(DispatchOptions.build(**options),
                                                       set(options)))

    def prepare(self, *args: P.args, **kwargs: P.kwargs) -> PreparedJob:
        # A prepared job is queued by whoever takes it (dispatch_many, a chain,
        # a batch, a schedule), in that call's transaction: set here, it would
        # be dropped, and the job committed whatever the caller's transaction did.
        settings = self.settings
        if settings.connection is not None or settings.after_commit is not None:
            given = "connection" if settings.connection is not None else "after_commit"
            raise ConfigurationError(
                f"{given}= applies to .dispatch(), not to .prepare(): give it to the "
                f"call that queues the prepared jobs, e.g. app.dispatch_many(jobs, "
                f"{given}=...) or app.chain([...]).dispatch({given}=...)")
        return PreparedJob(self.job.app, self._new_job(args, kwargs))

    def dispatch(self, *args: P.args, **kwargs: P.kwargs) -> int | None:
        new_job, settings = self._new_job(args, kwargs), self.settings
        if settings.after_commit is not None:
            self.job.app.dispatch_many([PreparedJob(self.job.app, new_job)],
                                       after_commit=settings.after_commit)
            return None
        return self.job.app.store.push(new_job, settings.connection)

    def _new_job(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NewJob:
        job, settings = self.job, self.settings
        job.check_arguments(args, kwargs)
        new_job = NewJob(
            queue=settings.queue or job.queue,
            job=job.name,
            payload=serializer.encode(job.name, args, kwargs, settings.payload_options()),
            priority=job.priority if settings.priority is None else settings.priority,
            delay=settings.delay,
            unique_key=job.unique_id(args, kwargs),
            unique_for=job.unique_for,
        )
        if job.idempotency_key is not None:
            job.check_idempotency_key(args, kwargs)
        return new_job


_NAME_LENGTH = 255  # jobs.job; checked at definition, as SQLite would store a longer one


def job_name(func: Callable[..., Any], name: Any) -> str:
    """The name ``@app.job(name=...)`` registers ``func`` under: ``name``, or
    its module and qualified name; refused where a worker could not use it."""
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise ConfigurationError(
            f"job {func.__qualname__!r} is a generator function (it yields): a call only "
            "makes a generator, so its body would never run; return a value instead")
    if name is None:
        if func.__module__ == "__main__":
            raise ConfigurationError(
                f"job {func.__qualname__!r} is defined in __main__, where workers "
                f"cannot find it by module; give it a name: @app.job(name=...)"
            )
        name = f"{func.__module__}.{func.__qualname__}"
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"a job's name must be a non-empty string, not {name!r}")
    if len(name) > _NAME_LENGTH:
        raise ConfigurationError(
            f"a job's name is stored in {_NAME_LENGTH} characters; {name[:40]!r}... has "
            f"{len(name)}: give it a shorter one with @app.job(name=...)")
    return keys.storable("a job's name", name)


def same_function(registered: Callable[..., Any], func: Callable[..., Any]) -> bool:
    """Whether ``func`` may take the place of the job function ``registered``
    under its name: the same function, or its new definition from a module
    reloaded (importlib.reload, a development server's autoreload): a
    function of the module's own level. Lambdas, and functions a factory or
    a decorator makes, share one qualified name however many there are: two
    are two jobs."""
    qualname = getattr(func, "__qualname__", "<lambda>")
    return registered is func or (
        getattr(registered, "__module__", None) == getattr(func, "__module__", None) != "__main__"
        and getattr(registered, "__qualname__", None) == qualname
        and "<" not in qualname)


def _signatures(functions: list[tuple[str, Any]]) -> tuple[tuple[str, inspect.Signature], ...]:
    found = []  # of the functions that have a signature a dispatch can check
    for option, function in functions:
        try:
            found.append((option, inspect.signature(function)))
        except (TypeError, ValueError):  # None, or a builtin that does not tell
            continue
    return tuple(found)
