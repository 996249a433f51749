"""How long each kind of task takes, as a moving average.

The supervisor asks it whether a job may wait in a child's pipe behind
another (worker.handout). A child asks it twice: whether an idempotent job
is short enough to join an open transaction (worker.commits), and whether
the next task is short enough to hold the answers before it
(worker.replies).
"""

from __future__ import annotations

import math

from .messages import RunHook, RunJob


class Runtimes:
    def __init__(self) -> None:
        self._seconds: dict[str | None, float] = {}
        """Per job name (None: failure hooks)."""

    def add(self, task: RunJob | RunHook, seconds: float) -> None:
        """``task`` ran for ``seconds``."""
        kind = _kind(task)
        last = self._seconds.get(kind)
        self._seconds[kind] = seconds if last is None else 0.8 * last + 0.2 * seconds

    def of(self, task: RunJob | RunHook) -> float:
        """How long a task of this kind takes here (infinite: not known yet)."""
        return self._seconds.get(_kind(task), math.inf)

    def of_job(self, name: str) -> float:
        """How long a job of this name takes here (infinite: not known yet)."""
        return self._seconds.get(name, math.inf)


def _kind(task: RunJob | RunHook) -> str | None:
    return task.name if type(task) is RunJob else None
