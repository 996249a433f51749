"""worker.background: one call at a time, inline or on a thread of its own;
the result or the error comes back through take(), and the thread's
descriptor is readable exactly while an ended call awaits its take()."""

import os
import select
import sys
import threading
import time

import pytest

from dbqueue.errors import DatabaseUnavailable
from dbqueue.worker.background import Bound, Inline, LateResult, OnThread, run_within
from dbqueue.worker.cancels import CancelledBatches


def readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_inline_runs_the_call_at_once():
    calls = Inline()
    calls.submit(lambda: 42)
    assert calls.busy and calls.done() and calls.fileno() is None
    assert calls.take() == 42 and not calls.busy


def test_a_call_on_a_thread_ends_in_its_own_time_and_wakes_the_wait():
    calls = OnThread("test")
    release = threading.Event()
    calls.submit(lambda: release.wait(10) and threading.current_thread().name)
    assert calls.busy and not calls.done()
    assert not readable(calls.fileno())
    release.set()
    assert readable(calls.fileno(), 10)
    assert calls.done()
    assert calls.take().startswith("test")  # it ran on the thread, not here
    assert not readable(calls.fileno()) and not calls.busy  # the wake-up was taken
    calls.close()


@pytest.mark.parametrize("kind", ["inline", "thread"])
def test_what_the_call_raised_is_raised_by_take(kind):
    calls = Inline() if kind == "inline" else OnThread("test")

    def fail():
        raise LookupError("no such row")

    calls.submit(fail)
    with pytest.raises(LookupError, match="no such row"):
        calls.take()
    assert not calls.busy
    calls.submit(lambda: "next")  # usable again
    assert calls.take() == "next"
    if kind == "thread":
        assert not readable(calls.fileno())
    calls.close()


def test_a_call_on_a_thread_that_raises_systemexit_is_answered_not_left_waiting():
    calls = OnThread("test")
    calls.submit(lambda: sys.exit(3))
    assert calls.wait(10), "the call's thread died without an answer"
    with pytest.raises(SystemExit):
        calls.take()
    calls.submit(lambda: "next")  # its thread lives on
    assert calls.take() == "next"
    calls.close()


def test_one_call_at_a_time():
    calls = OnThread("test")
    release = threading.Event()
    calls.submit(lambda: release.wait(10))
    with pytest.raises(AssertionError, match="one call at a time"):
        calls.submit(lambda: None)
    release.set()
    assert calls.take() is True
    calls.close()


def test_a_call_that_never_ends_is_waited_for_only_as_long_as_asked():
    """A server that hangs never answers: the stop must not wait for ever."""
    calls = OnThread("test")
    never = threading.Event()
    calls.submit(lambda: never.wait(60))
    assert calls.wait(0.01) is False and calls.busy
    assert calls.close(0.01) is False  # left on its thread
    stuck = [thread for thread in threading.enumerate() if thread.name == "test"]
    assert stuck and all(thread.daemon for thread in stuck)  # it holds up no exit
    never.set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")
def test_a_call_left_running_closes_its_descriptors_once_it_ends():
    """Each statement given up on while the database hangs left its pipe open
    for good: two descriptors per call, growing for as long as the hang lasted."""

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    for thread in threading.enumerate():  # calls of earlier tests close theirs too
        if thread.name in ("dbqueue-call", "test"):
            thread.join(10)
    before, hang = descriptors(), threading.Event()
    for _ in range(20):
        with pytest.raises(DatabaseUnavailable):
            Bound(0.001)(lambda: hang.wait(60))
    assert descriptors() >= before + 40  # each left call holds its pipe meanwhile
    hang.set()
    for thread in threading.enumerate():
        if thread.name == "dbqueue-call":
            thread.join(10)
    assert descriptors() <= before


def test_what_a_call_given_up_on_opens_after_all_is_closed():
    """The worker's LISTEN connection: a connect that ended after the wait for
    it was given up left a server session open, once per try."""
    closed, answer = [], threading.Event()
    late = LateResult(closed.append)
    with pytest.raises(DatabaseUnavailable):
        Bound(0.001)(late.wrap(lambda: answer.wait(60) and "connection"))
    late.give_up()
    answer.set()
    for thread in threading.enumerate():
        if thread.name == "dbqueue-call":
            thread.join(10)
    assert closed == ["connection"]
    # Taken in time, it is the caller's: nothing is closed.
    taken = LateResult(closed.append)
    assert Bound(10)(taken.wrap(lambda: "mine")) == "mine"
    assert closed == ["connection"]


def test_a_call_that_ends_in_time_is_waited_for():
    calls = OnThread("test")
    calls.submit(lambda: 7)
    assert calls.wait(10) is True
    assert calls.take() == 7
    assert calls.close(10) is True


def test_run_within_gives_the_result_or_says_it_is_still_running():
    assert run_within(lambda: 5, 10) == (True, 5)
    never = threading.Event()
    assert run_within(lambda: never.wait(60), 0.01) == (False, None)
    never.set()

    def fail():
        raise LookupError("no such row")

    with pytest.raises(LookupError, match="no such row"):
        run_within(fail, 10)


def test_a_bound_runs_inline_or_gives_up_as_the_database_unreachable():
    assert Bound(None)(lambda: 3) == 3  # an embedded database: inline
    assert Bound(10)(lambda: threading.current_thread().name) != threading.current_thread().name
    never = threading.Event()
    with pytest.raises(DatabaseUnavailable, match=r"did not answer within 0\.01 s"):
        Bound(0.01)(lambda: never.wait(60))
    never.set()


def test_a_bound_does_what_is_due_while_the_statement_waits():
    """A job's timeout falls while the supervisor waits on its own statement
    (for up to the network timeout on a hung server): the wait makes way for
    it, at the time it is due, however long the statement takes."""
    answer, calls = threading.Event(), []

    def meanwhile() -> float | None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            answer.set()  # the statement ends once the third is done
        return time.monotonic() + 0.01 if len(calls) < 3 else None

    assert Bound(10, meanwhile)(lambda: answer.wait(60) and "rows") == "rows"
    assert len(calls) == 3  # once as the wait began, then each time it was due


def test_the_supervisors_own_questions_give_up_on_a_server_that_hangs():
    """Asked on the supervisor's thread (before a batch's job is handed out),
    a question a hung server never answers would stop it timing jobs and
    heeding signals."""

    class Hung:
        def __init__(self) -> None:
            self.answer = threading.Event()

        def cancelled(self, batch_ids: set[str]) -> set[str]:
            self.answer.wait(60)
            return set()

    hung = Hung()
    cancels = CancelledBatches(hung)  # type: ignore[arg-type]
    cancels.bound = Bound(0.01)
    with pytest.raises(DatabaseUnavailable):
        cancels.cancelled("b1", now=0.0)
    hung.answer.set()
