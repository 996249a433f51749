"""What to say when a --queue or --job filter of the failed-job commands matches
nothing: the name typed is often a letter off, or a job's function name where
the stored name is ``module.function``."""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..store.admin import Admin

_CUTOFF = 0.75  # as the worker's hint for --queue: a slip in a short name, not a guess
_MOST = 3


def hint_unmatched(admin: Admin, *, queue: str | None, job: str | None = None,
                   err: bool = False) -> None:
    """Print a line for ``queue`` or ``job`` when no failed job has it, naming
    the nearest ones failed jobs have (nothing when none is near)."""
    if queue:
        close = close_names(queue, admin.failed_names("queue"))
        if close:
            click.echo(f"No failed job is in queue {queue!r}; did you mean {_either(close)}?",
                       err=err)
    if job:
        close = close_names(job, admin.failed_names("job"), dotted=True)
        if close:
            click.echo(f"No failed job is named {job!r}; did you mean {_either(close)}?",
                       err=err)


def close_names(typed: str, names: Sequence[str], *, dotted: bool = False) -> list[str]:
    """The ``names`` nearest to ``typed``, none when it is one of them. With
    ``dotted``, a name's part after its last dot counts too: ``add`` finds
    ``tasks.add``."""
    if typed in names:
        return []
    found = get_close_matches(typed, names, n=_MOST, cutoff=_CUTOFF)
    if dotted:
        by_last: dict[str, list[str]] = {}
        for name in names:
            by_last.setdefault(name.rpartition(".")[2], []).append(name)
        for last in get_close_matches(typed, list(by_last), n=_MOST, cutoff=_CUTOFF):
            found.extend(by_last[last])
    return list(dict.fromkeys(found))[:_MOST]


def _either(names: Sequence[str]) -> str:
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
