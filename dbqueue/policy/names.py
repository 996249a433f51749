"""Which known names a mistyped one may have meant: a letter off, or a job's
function name where the stored name is ``module.function``."""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches

_CUTOFF = 0.75  # a slip in a short name, not a guess
_MOST = 3


def close_names(typed: str, names: Sequence[str], *, dotted: bool = False) -> list[str]:
    """The ``names`` nearest to ``typed``, none when it is one of them.

    With ``dotted``, a name's last parts count too, as many as ``typed``
    has: ``add`` finds ``tasks.add``, and ``jobs.add`` finds
    ``app.jobs.add`` (a job named by its module, which the application and
    the worker import by two paths).
    """
    if typed in names:
        return []
    found = get_close_matches(typed, names, n=_MOST, cutoff=_CUTOFF)
    if dotted:
        parts = typed.count(".") + 1
        by_ending: dict[str, list[str]] = {}
        for name in names:
            by_ending.setdefault(".".join(name.split(".")[-parts:]), []).append(name)
        for ending in get_close_matches(typed, list(by_ending), n=_MOST, cutoff=_CUTOFF):
            found.extend(by_ending[ending])
    return list(dict.fromkeys(found))[:_MOST]


def either(names: Sequence[str]) -> str:
    """``'a'``, or ``'a', 'b' or 'c'``."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
