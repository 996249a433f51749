"""What happens to a job after an attempt: pure decisions, the clock passed in.

The worker reports how an attempt ended (:class:`Ended`); :func:`decide` says
whether the job is retried, put back, or failed for good.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .backoff import Backoff, backoff_delay

EndKind = Literal["error", "permanent", "fail", "release", "timeout", "crash"]
"""How an attempt ended without completing:

- ``error``: the job raised an exception that may succeed on retry;
- ``permanent``: it raised one listed in ``dont_retry``;
- ``fail``: it raised ``dbqueue.Fail``;
- ``release``: it raised ``dbqueue.Release`` (not a failure);
- ``timeout``: it ran past its timeout and was killed;
- ``crash``: the process running it died.
"""


@dataclass(frozen=True, slots=True)
class Rules:
    """The retry rules of one job (from its definition, or overridden at dispatch)."""

    tries: int | None = 1
    """Attempts allowed in all; None means no limit (then retry_until should be set)."""
    backoff: Backoff = 0.0
    deadline: datetime | None = None
    """No attempt starts after this time (database clock, UTC)."""


@dataclass(frozen=True, slots=True)
class Ended:
    kind: EndKind
    attempt: int
    """The number of this attempt, 1 for the first."""
    delay: float = 0.0
    """For ``release``: the delay the job asked for."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Make the job available again after ``delay`` seconds.

    ``counts`` is False for a release: the attempt is given back, so it does
    not use up one of the job's tries.
    """

    delay: float
    counts: bool = True


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Move the job to failed_jobs; ``why`` is None when the attempt's own error says it all."""

    why: str | None = None


Decision = Retry | GiveUp


def decide(ended: Ended, rules: Rules, now: datetime,
           rng: random.Random | None = None) -> Decision:
    """Decide the fate of a job whose attempt ended as ``ended``, at database time ``now``."""
    if ended.kind == "release":
        return Retry(ended.delay, counts=False)
    if ended.kind in ("permanent", "fail"):
        return GiveUp()
    if rules.tries is not None and ended.attempt >= rules.tries:
        return GiveUp()
    delay = backoff_delay(rules.backoff, ended.attempt, rng)
    if rules.deadline is not None and now + timedelta(seconds=delay) > rules.deadline:
        return GiveUp(f"no retry after retry_until ({rules.deadline.isoformat()})")
    return Retry(delay)


def refuse_attempt(attempt: int, rules: Rules, now: datetime) -> str | None:
    """Why a job just reserved for attempt number ``attempt`` must not run, or None.

    A job comes back with ``attempt > tries`` only when the worker that held its
    last attempt died or lost its lease before it could record the outcome.
    """
    if rules.tries is not None and attempt > rules.tries:
        return (
            f"attempted {attempt - 1} time(s), the most its tries={rules.tries} allow; "
            "the last attempt's worker stopped without recording an outcome "
            "(it was killed, crashed or lost its lease)"
        )
    if rules.deadline is not None and now > rules.deadline:
        return f"retry_until ({rules.deadline.isoformat()}) has passed"
    return None
