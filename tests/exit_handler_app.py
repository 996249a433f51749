"""tests.jobapp's application, in a module that does at exit what applications
do: an exit handler (an error tracker sending the reports it holds) and, in
the worker's own process, a thread that is no daemon and finishes its work
only once the main thread is done (a metrics flusher). ``dbqueue work`` must
let both finish. Each writes a line to the file named by
DBQUEUE_TEST_EXIT_FILE, with the pid of the process it ran in (the fork
server and the children import this module too, and must not be the ones).
"""

from __future__ import annotations

import atexit
import os
import threading

from dbqueue.worker.forkserver import SUPERVISOR_PID
from tests.jobapp import app

__all__ = ["app"]


def _leave_a_note(what: str) -> None:
    with open(os.environ["DBQUEUE_TEST_EXIT_FILE"], "a") as note:
        note.write(f"{what} {os.getpid()}\n")


def _flush_when_the_main_thread_ends() -> None:
    threading.main_thread().join()
    _leave_a_note("thread")


atexit.register(_leave_a_note, "atexit")
if os.environ.get(SUPERVISOR_PID) == str(os.getpid()):  # the worker's own process
    threading.Thread(target=_flush_when_the_main_thread_ends, daemon=False).start()
