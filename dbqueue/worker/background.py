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

A server that hangs (its storage stuck, a proxy in front of it whose server
side died) never answers, and its host's kernel still acknowledges whatever
is sent, so no timeout of the network's ends such a call. So every wait for
a call here can be bounded (``wait``, ``close``, ``run_within``, ``Bound``), and the
threads are daemons: one left waiting on such a server holds up neither the
supervisor nor its exit.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Generic, TypeVar

from ..errors import DatabaseUnavailable

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
        _settle(outcome, call)
        self._outcome = outcome

    def done(self) -> bool:
        return self._outcome is not None and self._outcome.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the call submitted has ended, waiting for it up to
        ``timeout`` seconds (None: for as long as it takes)."""
        return self._outcome is not None and bool(wait([self._outcome], timeout).done)

    def take(self) -> T:
        """The call's result (waiting for it if need be), or what it raised."""
        assert self._outcome is not None, "nothing was submitted"
        outcome, self._outcome = self._outcome, None
        return outcome.result()

    def close(self, timeout: float | None = None) -> bool:
        """Wait for a call still running (up to ``timeout`` seconds); its result
        is dropped. False if it was left running."""
        return True


class OnThread(Inline[T]):
    """Runs the call on a thread of its own; ``fileno`` wakes the caller's wait."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name
        self._calls: queue.SimpleQueue[tuple[Callable[[], T], Future[T]] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None  # started with the first call
        # One byte per call, written once the call has ended and read by take():
        # the pipe is readable exactly while an ended call awaits its take().
        self._read, self._write = os.pipe()
        self._ending = threading.Lock()
        self._ended = self._left = False
        """Whether the thread has ended; whether close() left it running (it then
        closes the pipe itself, once its call ends)."""

    def fileno(self) -> int | None:
        return self._read

    def submit(self, call: Callable[[], T]) -> None:
        assert self._outcome is None, "one call at a time"
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self.began = time.monotonic()
        self._outcome = Future()
        self._calls.put((call, self._outcome))

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, outcome = item
            try:
                _settle(outcome, call)
            except BaseException as exc:  # SystemExit, say: it would end this thread
                outcome.set_exception(exc)  # and leave take() waiting; the caller meets it
            os.write(self._write, b"!")
        with self._ending:
            self._ended = True
            if self._left:
                self._close_pipe()

    def take(self) -> T:
        assert self._outcome is not None, "nothing was submitted"
        try:
            return super().take()
        finally:  # the call has ended: its byte is in the pipe, or a moment away
            os.read(self._read, 1)

    def close(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join(timeout)
            with self._ending:
                if not self._ended:
                    # Left waiting (a daemon: it holds up no exit). The pipe
                    # stays open for the thread to write to when the call ends,
                    # if ever; then the thread closes it (a statement given up
                    # on each time the database hangs must not cost two
                    # descriptors for good).
                    self._left = True
                    return False
        self._close_pipe()
        return True

    def _close_pipe(self) -> None:
        os.close(self._read)
        os.close(self._write)


def run_within(call: Callable[[], T], seconds: float,
               meanwhile: Callable[[], float | None] | None = None) -> tuple[bool, T | None]:
    """Run ``call`` on a thread of its own and wait for it up to ``seconds``:
    (True, its result), or (False, None) if it is still running then (it is
    left to end, or not, on its daemon thread). What it raised is raised.

    ``meanwhile`` is called as the wait begins and whenever the time it
    returned (monotonic; None: none) comes, for what cannot wait that long."""
    calls: OnThread[T] = OnThread("dbqueue-call")
    calls.submit(call)
    until = time.monotonic() + seconds
    while True:
        due = meanwhile() if meanwhile is not None else None
        # A due time already past (what is due could not be done yet): a
        # short pause, not a busy loop, before it is tried again.
        wait_for = until if due is None else min(until, max(due, time.monotonic() + 0.01))
        if calls.wait(time_left(wait_for)):
            break
        if time.monotonic() >= until:
            calls.close(0)
            return False, None
    try:
        return True, calls.take()
    finally:
        calls.close()


class Bound:
    """How the supervisor's own thread waits for a statement of its own.

    A server that hangs never answers, and meanwhile that thread can neither
    read the children's answers nor heed a signal: it waits ``seconds`` at
    most, on a thread of its own (None: it runs the statement inline, as on
    an embedded database). And it calls ``meanwhile`` as it waits, for what
    must not wait that long: the children's job timeouts (see
    ``Pool.stop_overdue``)."""

    def __init__(self, seconds: float | None = None,
                 meanwhile: Callable[[], float | None] | None = None) -> None:
        self.seconds = seconds
        self.meanwhile = meanwhile

    def __call__(self, call: Callable[[], T]) -> T:
        """``call``'s result; DatabaseUnavailable if it has not ended in time
        (it is left to end, or not, on its daemon thread)."""
        if self.seconds is None:
            return call()
        ended, result = run_within(call, self.seconds, self.meanwhile)
        if not ended:
            raise DatabaseUnavailable(f"the database did not answer within {self.seconds:g} s")
        return result  # type: ignore[return-value]


class LateResult(Generic[T]):
    """What to do with the result of a call a ``Bound`` gave up on, should it
    end after all: a connection it opened must be closed, or it stays open
    (with its socket) for the life of the process, once per try.

    ``bound(late.wrap(call))``, then ``late.give_up()`` where that raised
    DatabaseUnavailable."""

    def __init__(self, close: Callable[[T], object]) -> None:
        self._close = close
        self._lock = threading.Lock()
        self._given_up = False
        self._result: tuple[T] | None = None

    def wrap(self, call: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            result = call()
            with self._lock:
                late = self._given_up
                if not late:  # the caller may take it yet, or give up on it
                    self._result = (result,)
            if late:
                self._close(result)
            return result

        return run

    def give_up(self) -> None:
        """The caller will not take the result: close it now, or once it comes."""
        with self._lock:
            self._given_up = True
            result, self._result = self._result, None
        if result is not None:  # it ended between the wait's end and this call
            self._close(result[0])


def _settle(outcome: Future[T], call: Callable[[], T]) -> None:
    try:
        outcome.set_result(call())
    except Exception as exc:  # the caller meets it at take(), as with a thread
        outcome.set_exception(exc)


def time_left(until: float | None) -> float | None:
    """Seconds left until ``until`` (monotonic; None: no limit), at least 0:
    the timeout of a wait that must end by then."""
    return None if until is None else max(0.0, until - time.monotonic())
