"""What a child's jobs print: never their failure when the output went away."""

import errno
import os

import pytest

from dbqueue.worker.childio import _Forgiving


def test_a_job_keeps_what_it_asks_of_its_output_and_loses_none_of_its_own_errors():
    read, write = os.pipe()
    stream = open(write, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    forgiving = _Forgiving(stream)
    try:
        # What jobs and libraries read of sys.stdout: the stream's own.
        assert (forgiving.encoding, forgiving.buffer) == ("utf-8", stream.buffer)
        forgiving.writelines(["a\n", "b\n"])
        forgiving.flush()
        assert os.read(read, 100) == b"a\nb\n"
        os.close(read)  # the reader left (a terminal that closed says EIO)
        forgiving.write("x" * 100_000)
        forgiving.flush()
        forgiving.write("and on\n")  # dropped from now on, not tried again
    finally:
        stream.close()


class _Full:
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_an_error_other_than_the_outputs_going_away_is_the_jobs():
    with pytest.raises(OSError, match="No space left"):
        _Forgiving(_Full()).write("x")  # type: ignore[arg-type]
