"""One database call at a time on a thread of its own, so that the supervisor
goes on feeding children while the server works.

The supervisor is one thread doing two things in turn: Python work for each
job (handing it out, reading its answer, recording its outcome) and waiting
for the database. Done one after the other, a reservation's round trip left
the children idle and the machine half busy; on a thread, the server's work
for the next rows overlaps the supervisor's work on the current ones (the
driver waits with the GIL released). Only the statement runs there: what the
rows mean for the ledger is decided back on the supervisor's thread, which
alone touches the ledger.

An embedded database (SQLite) has no round trip to hide and one writer at a
time: its calls run inline, through the same interface.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class Inline(Generic[T]):
    """Runs the call at once, on the caller's thread."""

    def __init__(self) -> None:
        self._outcome: Future[T] | None = None
        self.began = 0.0
        """When the last call was submitted (monotonic clock)."""

    @property
    def busy(self) -> bool:
        """Whether a call was submitted and its result not taken yet."""
        return self._outcome is not None

    def fileno(self) -> int | None:
        """A descriptor readable once the call has ended (None: it ends at once)."""
        return None

    def submit(self, call: Callable[[], T]) -> None:
        assert self._outcome is None, "one call at a time"
        self.began = time.monotonic()
        outcome: Future[T] = Future()
        try:
            outcome.set_result(call())
        except Exception as exc:  # the caller meets it at take(), as with a thread
            outcome.set_exception(exc)
        self._outcome = outcome

    def done(self) -> bool:
        return self._outcome is not None and self._outcome.done()

    def take(self) -> T:
        """The call's result (waiting for it if need be), or what it raised."""
        assert self._outcome is not None, "nothing was submitted"
        outcome, self._outcome = self._outcome, None
        return outcome.result()

    def close(self) -> None:
        """Wait for a call still running; its result is dropped."""


class OnThread(Inline[T]):
    """Runs the call on a thread of its own; ``fileno`` wakes the caller's wait."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        # One byte per call, written once the call has ended and read by take():
        # the pipe is readable exactly while an ended call awaits its take().
        self._read, self._write = os.pipe()

    def fileno(self) -> int | None:
        return self._read

    def submit(self, call: Callable[[], T]) -> None:
        assert self._outcome is None, "one call at a time"
        self.began = time.monotonic()
        self._outcome = self._executor.submit(call)
        self._outcome.add_done_callback(self._ring)

    def _ring(self, _: Future[T]) -> None:
        os.write(self._write, b"!")

    def take(self) -> T:
        assert self._outcome is not None, "nothing was submitted"
        try:
            return super().take()
        finally:  # the call has ended: its byte is in the pipe, or a moment away
            os.read(self._read, 1)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        os.close(self._read)
        os.close(self._write)
