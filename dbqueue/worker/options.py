"""The worker's settings (``dbqueue work`` options)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigurationError
from ..settings import MAX_RETRY_AFTER

MAX_CONCURRENCY = 256
"""The most child processes one worker runs. Each is a process with memory of
its own and, once its jobs use the database, a connection: a mistyped
``--concurrency 100000`` would fork until the host ran out of memory, taking
whatever else runs there (a database server) down with it."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How one ``dbqueue work`` process runs."""

    queues: tuple[str, ...] = ("default",)
    """Queues to take jobs from; earlier ones first."""
    concurrency: int = 1
    """Child processes running jobs at once."""
    sleep: float | None = None
    """The longest pause between looks for work when none is ready (see
    worker.wakeup); None: 1 s where new jobs wake the worker (PostgreSQL),
    0.1 s where it polls."""
    retry_after: float = 90.0
    """The lease: a job whose worker stops renewing it for this long is taken again."""
    max_jobs: int | None = None
    max_time: float | None = None
    memory_mb: float | None = None
    """Replace a child whose memory grows past this after its job."""
    stop_when_empty: bool = False
    """Exit once no job is ready and none runs."""
    stop_when_drained: bool = False
    """Exit once the queues hold no job at all: none ready, delayed, in backoff or running."""
    once: bool = False
    grace: float = 30.0
    """Seconds running jobs get to finish after SIGTERM or ``dbqueue restart``."""
    prefetch: int = 5000
    """At most this many jobs reserved ahead of free children, when jobs are short."""
    schedule: bool = True
    """Run the scheduler: queue the application's schedules' runs when due."""

    def __post_init__(self) -> None:
        if not any(q.strip() for q in self.queues):
            raise ConfigurationError(
                "--queue needs at least one queue name, e.g. --queue high,default "
                "(or '*' for every queue)")
        if not all(q.strip() for q in self.queues):
            raise ConfigurationError(
                f"--queue has an empty name: {','.join(self.queues)!r}; "
                "write the names separated by single commas, e.g. --queue high,default")
        if len(set(self.queues)) < len(self.queues):
            raise ConfigurationError(f"--queue names a queue twice: {','.join(self.queues)}")
        if self.stop_when_empty and self.stop_when_drained:  # empty would always come first
            raise ConfigurationError("--stop-when-empty and --stop-when-drained: choose one "
                                     "(--stop-when-drained also waits for delayed jobs and "
                                     "retries in backoff)")
        checks = [
            ("--concurrency", self.concurrency, 1 <= self.concurrency <= MAX_CONCURRENCY,
             f"from 1 to {MAX_CONCURRENCY} (each is a process of its own)"),
            ("--sleep", self.sleep, self.sleep is None or self.sleep > 0, "more than 0 seconds"),
            ("--retry-after", self.retry_after, 1 <= self.retry_after <= MAX_RETRY_AFTER,
             "from 1 second to a year (31,536,000)"),
            ("--max-jobs", self.max_jobs, self.max_jobs is None or self.max_jobs >= 1,
             "at least 1"),
            ("--max-time", self.max_time, self.max_time is None or self.max_time > 0,
             "more than 0 seconds"),
            ("--memory", self.memory_mb, self.memory_mb is None or self.memory_mb > 0,
             "more than 0 MB"),
            ("--grace", self.grace, self.grace >= 0, "0 seconds or more"),
            ("--prefetch", self.prefetch, self.prefetch >= 0, "0 or more"),
        ]
        for name, value, ok, allowed in checks:
            # inf would pass most checks, and then overflow a date or an interval
            # in the database (--retry-after inf): every figure must be finite.
            if value is not None and not math.isfinite(value):
                raise ConfigurationError(f"{name} must be a finite number, {allowed}, not {value}")
            if not ok:
                raise ConfigurationError(f"{name} must be {allowed}, not {value}")

    @property
    def heartbeat_every(self) -> float:
        # Three renewals per lease: one lost or slow heartbeat never lets a
        # lease lapse under a live worker. At least every 10 s whatever the
        # lease, so `dbqueue restart` is heard soon and no live worker looks
        # dead to the others (they forget workers silent for 120 s).
        return min(self.retry_after / 3, 10.0)
