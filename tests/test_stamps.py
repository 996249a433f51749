"""A child's stamp, read as the supervisor reads it: no process is started."""

from __future__ import annotations

import multiprocessing

from dbqueue.worker.stamps import Stamp


def test_the_reader_sees_how_many_tasks_began_and_whether_and_when_the_latest_ended() -> None:
    stamp = Stamp.shared(multiprocessing.get_context("spawn"))
    assert stamp.read() == (0, False, 0.0)
    stamp.begin(10.5)
    stamp.end(11.0)
    stamp.begin(12.25)
    assert stamp.read() == (2, False, 12.25)
    stamp.end(13.0)
    assert stamp.read() == (2, True, 13.0)


def test_a_stamp_being_written_is_not_read_but_its_progress_is_exact() -> None:
    stamp = Stamp.shared(multiprocessing.get_context("spawn"))
    stamp.begin(1.0)
    stamp.cells[0] += 1  # as a child leaves it when it dies between its writes
    stamp.cells[1] += 1
    assert stamp.read() is None
    assert stamp.last() == (1, True, 1.0)
    stamp.cells[2] = 2.0
    stamp.cells[0] += 1
    assert stamp.read() == (1, True, 2.0)
