"""A child's stamp, read as the supervisor reads it: no process is started."""

from __future__ import annotations

import ctypes
import multiprocessing

from dbqueue.worker.stamps import PROGRESS_BITS, Stamp


def test_the_reader_sees_how_many_tasks_began_and_whether_and_when_the_latest_ended() -> None:
    stamp = Stamp.shared(multiprocessing.get_context("spawn"))
    assert stamp.read() == (0, False, 0.0)
    stamp.begin(10.5)
    stamp.end(11.0)
    stamp.begin(12.25)
    assert stamp.read() == (2, False, 12.25)
    stamp.end(13.0)
    assert stamp.read() == (2, True, 13.0)


def test_the_stamp_is_one_word_so_no_read_sees_half_a_write() -> None:
    stamp = Stamp.shared(multiprocessing.get_context("spawn"))
    assert ctypes.sizeof(stamp.cells) == 8
    stamp.begin(5.0)
    word = stamp.cells[0]
    stamp.end(6.0)
    assert Stamp(type(stamp.cells)(word)).read() == (1, False, 5.0)  # one load: all old
    assert stamp.read() == (1, True, 6.0)  # or all new


def test_a_time_is_rounded_up_to_the_millisecond_so_no_timeout_is_early() -> None:
    stamp = Stamp.shared(multiprocessing.get_context("spawn"))
    stamp.begin(7.0001)
    assert stamp.read() == (1, False, 7.001)


def test_the_count_of_tasks_begun_goes_on_past_the_words_wrap() -> None:
    stamp = Stamp.shared(multiprocessing.get_context("spawn"))
    wrap = 1 << (PROGRESS_BITS - 1)
    stamp.progress = 2 * (wrap - 1) + 1  # as a child leaves it after wrap - 1 tasks
    stamp.begin(1.0)
    assert stamp.read(answered=wrap - 1) == (wrap, False, 1.0)
    stamp.end(2.0)
    stamp.begin(3.0)
    assert stamp.read(answered=wrap - 1) == (wrap + 1, False, 3.0)  # one answer in the pipe
    assert stamp.read(answered=wrap + 1) == (wrap + 1, False, 3.0)
