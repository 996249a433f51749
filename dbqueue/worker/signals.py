"""SIGTERM/SIGINT handling that wakes the supervisor's wait at once."""

from __future__ import annotations

import os
import signal
from types import FrameType


class StopSignals:
    """Records a stop request and makes ``wake_fd`` readable, so a blocking wait returns."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.count = 0  # a second one means: stop now, do not wait for running jobs
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous: dict[int, object] = {}

    @property
    def wake_fd(self) -> int:
        return self._read

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        signal.set_wakeup_fd(self._write)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        self.count += 1

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
