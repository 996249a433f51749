"""Durations given in seconds (or as a timedelta): checked once, where they are given."""

from __future__ import annotations

import math
from datetime import timedelta

from ..errors import ConfigurationError

Seconds = float | int | timedelta

MAX_SECONDS = 100 * 365 * 86400
"""The longest duration a job option may give (a hundred years): every time
computed from one, on any server's clock, stays representable."""


def seconds(name: str, value: Seconds | None, *, allow_zero: bool = True) -> float | None:
    """Validate a duration given as seconds or a timedelta."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be seconds (a number) or a timedelta, not {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, not {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be {'>=' if allow_zero else '>'} 0, not {value!r}")
    if value > MAX_SECONDS:
        raise ConfigurationError(
            f"{name} must be at most {MAX_SECONDS:,} seconds (a hundred years), not {value!r}")
    return float(value)


def required_seconds(name: str, value: Seconds, *, allow_zero: bool = True) -> float:
    """``seconds`` for a duration that must be given (None is refused too)."""
    checked = seconds(name, value, allow_zero=allow_zero)
    if checked is None:
        raise ConfigurationError(f"{name} must be seconds (a number) or a timedelta, not None")
    return checked


_UNIT_SECONDS = {"hours": 3600, "days": 86400}


def age_seconds(name: str, value: float, unit: str) -> float:
    """An age given in ``unit`` ("hours" or "days"), as seconds: finite, from 0
    to a hundred years. NaN or 1e308 would otherwise delete nothing on one
    server and fail on another as an interval out of range."""
    per = _UNIT_SECONDS[unit]
    most = MAX_SECONDS // per
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not 0 <= value <= most):
        raise ConfigurationError(
            f"{name} must be a number of {unit} from 0 to {most:,} (a hundred years), "
            f"not {value!r}")
    return float(value) * per
