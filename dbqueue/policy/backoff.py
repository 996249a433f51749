"""How long a failed job waits before its next attempt. Pure: no clock, no I/O."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from .durations import MAX_SECONDS


@dataclass(frozen=True, slots=True)
class Exponential:
    """Exponential backoff with jitter: ``base * factor**(attempt-1)``, capped at ``cap``.

    With ``jitter`` the delay is drawn uniformly from [delay/2, delay], which
    spreads the retries of many jobs that failed together (a thundering herd
    against a recovering service).
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 3600.0
    jitter: bool = True

    def __post_init__(self) -> None:
        finite = all(math.isfinite(x) for x in (self.base, self.factor, self.cap))
        if (not finite or not 0 <= self.base <= MAX_SECONDS or self.factor < 1
                or not 0 <= self.cap <= MAX_SECONDS):
            raise ConfigurationError(
                "Exponential backoff needs finite numbers, base and cap from 0 to "
                f"{MAX_SECONDS:,} seconds (a hundred years) and factor >= 1 "
                f"(got base={self.base}, factor={self.factor}, cap={self.cap})"
            )


Backoff = float | Sequence[float] | Exponential

_MAX_EXPONENT = 1000


def validate_backoff(backoff: Any) -> Backoff:
    """Return ``backoff`` unchanged if it is valid; raise ConfigurationError otherwise."""
    if isinstance(backoff, Exponential):
        return backoff
    if isinstance(backoff, bool):
        raise ConfigurationError(f"backoff must be seconds, a list or Exponential, not {backoff!r}")
    if isinstance(backoff, int | float):
        if not 0 <= backoff <= MAX_SECONDS:  # NaN fails too
            raise ConfigurationError(f"backoff must be a finite number of seconds from 0 to "
                                     f"{MAX_SECONDS:,} (a hundred years), not {backoff}")
        return float(backoff)
    if isinstance(backoff, list | tuple) and backoff and all(
        isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= MAX_SECONDS
        for x in backoff
    ):
        return tuple(float(x) for x in backoff)
    raise ConfigurationError(
        f"backoff must be a number of seconds, a non-empty list of seconds per attempt "
        f"(each at most {MAX_SECONDS:,}), or dbqueue.Exponential(...), not {backoff!r}"
    )


def refuse_endless_retries(job: str, tries: int | None, retry_until: float | None,
                           backoff: Backoff) -> None:
    """Raise ConfigurationError for a job that would be retried for ever, each
    time at once after it fails: as fast as a worker can, for ever."""
    if tries is None and retry_until is None and _retries_at_once(backoff):
        raise ConfigurationError(
            f"job {job!r} would be retried for ever, each time at once after it fails "
            f"(tries=None and no retry_until, with a backoff of 0 s); set retry_until= "
            f"(seconds), a backoff, or a number of tries")


def _retries_at_once(backoff: Backoff) -> bool:
    """Whether, after enough failed attempts, each retry follows the failure
    at once (a list's last value repeats)."""
    if isinstance(backoff, Exponential):
        return backoff.base == 0 or backoff.cap == 0
    if isinstance(backoff, int | float):
        return backoff == 0
    return backoff[-1] == 0


def backoff_delay(backoff: Backoff, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    A list gives the delay per attempt and its last value repeats.
    """
    if isinstance(backoff, Exponential):
        # A huge attempt number (a job retried for ever, a row set by hand) must
        # not overflow: past the cap, the exact power does not matter.
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        try:
            delay = min(backoff.cap, backoff.base * backoff.factor ** exponent)
        except OverflowError:
            delay = backoff.cap
        if backoff.jitter:
            delay = (rng or random).uniform(delay / 2, delay)
        return delay
    if isinstance(backoff, int | float):
        return float(backoff)
    index = min(max(attempt, 1), len(backoff)) - 1
    return float(backoff[index])
