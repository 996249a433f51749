"""dbqueue's configuration: one frozen object, from arguments or DBQUEUE_* variables."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigurationError

DEFAULT_URL = "sqlite:///dbqueue.db"
"""A SQLite file in the working directory: the quick start needs no server."""

DEFAULT_RETRY_AFTER = 90.0

DEFAULT_NETWORK_TIMEOUT = 30.0
"""Seconds within which a connection whose network path died without a word
(a failover, a firewall dropping packets) fails instead of hanging."""

PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,20}$|^$")
PREFIX_RULE = ("use up to 21 letters, digits and underscores, starting with a letter "
               "(for example 'dbq_')")

MAX_RETRY_AFTER = 365 * 86400
"""The longest lease (a year): no job runs that long without a heartbeat."""

_SECONDS: dict[str, tuple[Callable[[float], bool], str]] = {
    "retry_after": (lambda value: 0 < value <= MAX_RETRY_AFTER,
                    "a positive number of seconds, at most a year (31,536,000)"),
    # Under a second, one lost packet would end a healthy connection; over
    # 2**31 - 1 milliseconds, PostgreSQL refuses the session timeouts it sets.
    "network_timeout": (lambda value: 1 <= value <= 2_147_483,
                        "a number of seconds from 1 to 2,147,483 (about 24 days)"),
}
"""The settings in seconds: which finite values each accepts, and that rule in words."""


def _number(value: Any) -> float | None:
    """``value`` as a float, if it is a number (not text, nor a bool)."""
    if isinstance(value, str | bytes | bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _accepts(name: str, value: float) -> bool:
    accepts, _ = _SECONDS[name]
    return math.isfinite(value) and accepts(value)


class VariableRefused(ConfigurationError):
    """A DBQUEUE_* variable's value that dbqueue cannot take: the fix is in
    the environment, whatever code reads it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the queue lives and how long a worker's lease on a job lasts.

    ``retry_after`` is the lease: a worker renews it (heartbeat) while the job
    runs, so it bounds how long a *crashed* worker's job waits before another
    worker takes it, never how long a job may run.

    ``network_timeout`` bounds how long a connection to a server may hear
    nothing from a dead network path before it fails; a slow statement on a
    live server is not cut short by it.
    """

    url: str = DEFAULT_URL
    table_prefix: str = ""
    retry_after: float = DEFAULT_RETRY_AFTER
    network_timeout: float = DEFAULT_NETWORK_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.table_prefix, str) or not PREFIX.match(self.table_prefix):
            raise ConfigurationError(
                f"table prefix {self.table_prefix!r} is not valid: {PREFIX_RULE}")
        for name in _SECONDS:
            value = getattr(self, name)
            number = _number(value)
            if number is None or not _accepts(name, number):
                raise ConfigurationError(f"{name} must be {_SECONDS[name][1]}, not {value!r}")
            object.__setattr__(self, name, number)  # a Decimal, numpy's: as plain floats

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``DBQUEUE_URL``, ``DBQUEUE_TABLE_PREFIX``, ``DBQUEUE_RETRY_AFTER``
        and ``DBQUEUE_NETWORK_TIMEOUT``.

        Arguments that are not ``None`` win over the environment.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("DBQUEUE_URL"):
            values["url"] = env["DBQUEUE_URL"]
        if "DBQUEUE_TABLE_PREFIX" in env and overrides.get("table_prefix") is None:
            values["table_prefix"] = env["DBQUEUE_TABLE_PREFIX"]
            if not PREFIX.match(values["table_prefix"]):  # named as the user set it
                raise VariableRefused(
                    f"DBQUEUE_TABLE_PREFIX={values['table_prefix']!r} is not a valid table "
                    f"prefix: {PREFIX_RULE}")
        for name in _SECONDS:
            variable = "DBQUEUE_" + name.upper()
            if env.get(variable) and overrides.get(name) is None:  # an argument wins
                values[name] = parse_seconds(variable, env[variable])
                if not _accepts(name, values[name]):  # named as the user set it
                    raise VariableRefused(
                        f"{variable} must be {_SECONDS[name][1]}, not {env[variable]!r}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def parse_seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise VariableRefused(f"{name} must be a finite number of seconds, not {text!r}")
    return value
