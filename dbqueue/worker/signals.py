"""SIGTERM/SIGINT/SIGHUP handling that wakes the supervisor's wait at once."""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

# A second signal counts only this many seconds after the first: a process
# manager that forwards Ctrl-C to a worker that also got it from the terminal
# delivers two at once, and that is one request.
REPEAT_AFTER = 1.0

STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""What asks a worker to stop: systemd or a deploy (SIGTERM), Ctrl-C
(SIGINT), the terminal it was started from closing (SIGHUP). Each reaches the
whole process group: the worker's helper processes ignore them all, and the
supervisor decides when a running job must die."""


def ignore_stops() -> None:
    """In a helper process: leave the stop signals to the supervisor."""
    for stop in STOPS:
        signal.signal(stop, signal.SIG_IGN)


class StopSignals:
    """Records a stop request and makes ``wake_fd`` readable, so a blocking wait returns."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.first_at: float | None = None
        self.again = False  # a second request: stop now, do not wait for running jobs
        self.repeats_ignored = 0  # signals within REPEAT_AFTER of the first: the same request
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous: dict[int, object] = {}

    @property
    def wake_fd(self) -> int:
        return self._read

    def install(self, *signums: int) -> None:
        """Take these signals over (default: STOPS); one taken over already
        stays as it is, and so does a SIGHUP or SIGINT ignored by whoever
        started the worker, as Python leaves SIGINT (``nohup`` ignores SIGHUP:
        the worker must outlive its terminal). SIGTERM is always heeded."""
        for sig in signums or STOPS:
            if sig in self._previous or (sig != signal.SIGTERM
                                         and signal.getsignal(sig) is signal.SIG_IGN):
                continue
            self._previous[sig] = signal.signal(sig, self._handle)
        signal.set_wakeup_fd(self._write)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        elif now - self.first_at >= REPEAT_AFTER:
            self.again = True
        else:
            self.repeats_ignored += 1

    def drain(self) -> None:
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass

    def uninstall(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        os.close(self._read)
        os.close(self._write)
