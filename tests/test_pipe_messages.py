"""What crosses the pipe between the supervisor and a child, read as the
supervisor reads it: no process is started, only a pipe."""

from __future__ import annotations

import multiprocessing
import pickle
from typing import Any

from dbqueue.worker.childend import Child
from dbqueue.worker.messages import (
    DONE,
    DONE_FRAME,
    Committed,
    Finished,
    RunJob,
    from_wire,
    to_wire,
)


def _pipe() -> tuple[Child, Any]:
    ours, theirs = multiprocessing.Pipe(duplex=True)
    return Child(process=None, conn=ours), theirs  # type: ignore[arg-type]


def test_a_plain_done_is_one_byte_and_reads_as_done_between_pickled_answers() -> None:
    child, end = _pipe()
    failed = Finished("error", exception_class="ValueError", message="bad")
    end.send_bytes(DONE_FRAME)
    end.send(failed)
    end.send(Committed((7,)))
    end.send_bytes(DONE_FRAME)
    assert child.readable()
    assert child.messages() == [DONE, failed, Committed((7,)), DONE]
    assert not child.readable()


def test_an_answer_cut_across_two_reads_is_read_whole() -> None:
    child, end = _pipe()
    failed = Finished("error", message="x" * 100_000)  # larger than one read
    end.send(failed)
    end.send_bytes(DONE_FRAME)
    read: list[Any] = []
    while len(read) < 2:
        read += child.messages()
    assert read == [failed, DONE]


def test_a_task_crosses_as_a_plain_tuple_and_arrives_as_a_run_job() -> None:
    task = RunJob(3, "noop", '{"args":[1],"kwargs":{}}', 2, 60.0, frozenset({"k"}), 1.0, 2.0)
    wire = to_wire(task)
    assert type(wire) is tuple
    assert b"RunJob" not in pickle.dumps([wire])  # no class to look up, no Python call
    assert from_wire(pickle.loads(pickle.dumps(wire))) == task
    assert from_wire(None) is None


def test_a_run_of_done_bytes_reads_as_that_many_answers_in_order() -> None:
    child, end = _pipe()
    failed = Finished("error", message="bad")
    end.send_bytes(DONE_FRAME * 3)  # answers a child held and sent together
    end.send(failed)
    end.send_bytes(DONE_FRAME)
    assert child.messages() == [DONE, DONE, DONE, failed, DONE]


def test_a_large_answer_in_many_reads_is_read_whole_with_what_follows_it() -> None:
    """A chain step's result of megabytes comes in a hundred reads and more:
    each is appended to what came before (copying it all at every read took
    minutes for 200 MB, while no timeout was enforced)."""
    import threading

    child, end = _pipe()
    large = Finished("done", result='"' + "r" * 6_000_000 + '"')
    failed = Finished("error", message="after it")
    writer = threading.Thread(target=lambda: (end.send(large), end.send(failed),
                                              end.send_bytes(DONE_FRAME)), daemon=True)
    writer.start()
    read: list[Any] = []
    reads = 0
    while len(read) < 3:
        read += child.messages()
        reads += 1
    writer.join(60)
    assert read == [large, failed, DONE]
    assert reads > 50 and not child.unread
