"""tests.jobapp's application, in a module that registers an exit handler, as
an error tracker does to send the reports it holds: ``dbqueue work`` must run
it when it exits. It writes the pid of the process that ran it to the file
named by DBQUEUE_TEST_EXIT_FILE (the fork server and the children import this
module too, and must not be the ones)."""

from __future__ import annotations

import atexit
import os

from tests.jobapp import app

__all__ = ["app"]


def _leave_a_note() -> None:
    with open(os.environ["DBQUEUE_TEST_EXIT_FILE"], "a") as note:
        note.write(f"{os.getpid()}\n")


atexit.register(_leave_a_note)
