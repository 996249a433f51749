"""How one dispatch is queued: ``job.options(...)``, checked as it is given.

Every value is checked here, before anything is written, so that every
backend refuses the same values (SQLite would store what PostgreSQL and
MySQL refuse) and a mistake surfaces at the dispatch, not in a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .policy.durations import seconds

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .store import Executor


@dataclass(frozen=True, slots=True)
class DispatchOptions:
    """How one dispatch is queued. Unset values fall back to the job's definition."""

    queue: str | None = None
    delay: float = 0.0
    priority: int | None = None
    connection: Executor | None = None
    after_commit: Session | None = None
    tries: int | None = None
    timeout: float | None = None
    retry_until: float | datetime | None = None

    @classmethod
    def build(cls, **given: Any) -> DispatchOptions:
        unknown = set(given) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigurationError(
                f"unknown dispatch option(s) {', '.join(sorted(unknown))}; "
                f"the options are {', '.join(cls.__dataclass_fields__)}"
            )
        if given.get("connection") is not None and given.get("after_commit") is not None:
            raise ConfigurationError("give either connection= or after_commit=, not both")
        if "delay" in given:
            given["delay"] = seconds("delay", given["delay"]) or 0.0
        if "timeout" in given:
            given["timeout"] = seconds("timeout", given["timeout"], allow_zero=False)
        if given.get("tries") is not None:
            # Unset is None here: a dispatch cannot lift its job's limit.
            check_tries(given["tries"], "None for the job's own")
        if given.get("priority") is not None:
            check_priority(given["priority"])
        if given.get("queue") is not None:
            check_queue(given["queue"])
        until = given.get("retry_until")
        if isinstance(until, datetime):
            if until.tzinfo is None:
                raise ConfigurationError("retry_until needs an aware datetime (with tzinfo)")
            # By this host's clock: a job past it would fail in the worker, untried.
            if until <= datetime.now(UTC):
                raise ConfigurationError(f"retry_until {until.isoformat()} has passed already; "
                                         "give a time to come, or seconds from now")
        elif until is not None:
            given["retry_until"] = seconds("retry_until", until, allow_zero=False)
        return cls(**given)

    def merged(self, other: DispatchOptions, given: set[str]) -> DispatchOptions:
        return replace(self, **{name: getattr(other, name) for name in given})

    def payload_options(self) -> dict[str, Any]:
        """The overrides that must travel with the job to the worker."""
        options: dict[str, Any] = {}
        if self.tries is not None:
            options["tries"] = self.tries
        if self.timeout is not None:
            options["timeout"] = self.timeout
        if isinstance(self.retry_until, datetime):
            options["retry_until"] = self.retry_until.astimezone(UTC).isoformat()
        elif self.retry_until is not None:
            options["retry_for"] = self.retry_until
        return options


NO_OPTIONS = DispatchOptions()


# The columns that hold them, checked here so that every backend refuses the
# same values: SQLite would store what PostgreSQL and MySQL refuse.
_PRIORITIES = range(-(2**31), 2**31)  # jobs.priority: a 32-bit INTEGER
_QUEUE_LENGTH = 191  # jobs.queue


def check_priority(priority: Any) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigurationError(f"priority must be an int (lower runs first), not {priority!r}")
    if priority not in _PRIORITIES:
        raise ConfigurationError(f"priority must be from {_PRIORITIES.start:,} to "
                                 f"{_PRIORITIES.stop - 1:,} (lower runs first), not {priority!r}")


def check_queue(queue: Any) -> None:
    # No space around it either: `dbqueue work --queue` strips its names, so
    # no worker would ever serve 'mail '.
    if (not isinstance(queue, str) or not queue.strip() or "," in queue
            or queue != queue.strip()):
        raise ConfigurationError(f"queue must be a name such as 'default' or 'mail' (no "
                                 f"commas, no space around it), not {queue!r}")
    if queue == "*":  # `dbqueue work --queue '*'` means every queue, not this one
        raise ConfigurationError("queue '*' cannot be served: a worker reads --queue '*' as "
                                 "every queue; give the queue a name")
    if len(queue) > _QUEUE_LENGTH:
        raise ConfigurationError(f"queue must be a name of at most {_QUEUE_LENGTH} "
                                 f"characters, not one of {len(queue)}")


def check_tries(tries: Any, none: str = "None for no limit") -> None:
    """``none`` says what None means where ``tries`` is given."""
    if tries is not None and (isinstance(tries, bool) or not isinstance(tries, int) or tries < 1):
        raise ConfigurationError(f"tries must be a whole number >= 1, or {none}, not {tries!r}")
