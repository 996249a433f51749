"""What a child's jobs print: it goes where the worker's output goes, and a
write that fails there is never the job's failure.

A worker started from a terminal that then closes (an SSH session ending)
stops on the SIGHUP and lets its running jobs finish; but its terminal is
gone, and every write to it fails (EIO), as one to a pipe whose reader left
does (EPIPE). A job that prints would fail for it. Its output is dropped
instead, from the first write that fails on.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO, cast

_GONE = (errno.EIO, errno.EPIPE)
"""A terminal closed, a pipe whose reader left: what it printed cannot go anywhere."""


class _Forgiving:
    """The stream's own, for all a job may ask of it (``encoding``,
    ``buffer``, ``reconfigure``...), but for writes that fail as its output
    went away: those are dropped, as is what follows."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            self._drop_if_gone(exc)
            return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._drop_if_gone(exc)

    def _drop_if_gone(self, error: OSError) -> None:
        if error.errno not in _GONE:
            raise error
        # Not the same stream again: what it holds would be tried, and kept,
        # at every write, for as long as the job prints.
        self._stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (the process's)


def forgive_output() -> None:
    """In a child: its jobs' prints and logs never fail it (see the module)."""
    sys.stdout = cast(TextIO, _Forgiving(sys.stdout))
    sys.stderr = cast(TextIO, _Forgiving(sys.stderr))
