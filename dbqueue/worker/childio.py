"""What a child's jobs print: it goes where the worker's output goes, and a
write that fails there is never the job's failure.

A worker started from a terminal that then closes (an SSH session ending)
stops on the SIGHUP and lets its running jobs finish; but its terminal is
gone, and every write to it fails (EIO), as one to a pipe whose reader left
does (EPIPE). A job that prints would fail for it. Its output is dropped
instead, from the first write that fails on.
"""

from __future__ import annotations

import io
import os
import sys
from typing import TextIO, cast


class _Forgiving(io.TextIOBase):
    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._drop()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._drop()

    def _drop(self) -> None:
        # Not the same stream again: what it holds would be tried, and kept,
        # at every write, for as long as the job prints.
        self._stream = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()


def forgive_output() -> None:
    """In a child: its jobs' prints and logs never fail it (see the module)."""
    sys.stdout = cast(TextIO, _Forgiving(sys.stdout))
    sys.stderr = cast(TextIO, _Forgiving(sys.stderr))
