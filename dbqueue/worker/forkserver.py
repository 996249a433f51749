"""How the worker starts its child processes: from a fork server, started early.

Children fork from a small clean process (multiprocessing's fork server) that
has imported the application once, so a replacement starts in milliseconds
and never inherits the supervisor's database connections. ``dbqueue work``
starts it first thing, before it imports SQLAlchemy itself: the two processes
then import at the same time, on two cores, and the first children are ready
about when the supervisor is.

This module imports nothing heavy, for that reason.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext

SUPERVISOR_PID = "DBQUEUE_SUPERVISOR_PID"
"""Where the supervisor leaves its pid for the fork server to check (forkserver_init)."""
APP = "DBQUEUE_FORKSERVER_APP"
"""Where the supervisor leaves the ``module:attr`` of the App the fork server imports."""


def start(app_reference: str) -> BaseContext:
    """The multiprocessing context the worker's children start in, with its fork
    server (if there is one) started now, importing the application in the
    background. Calling it again changes nothing.

    The fork server takes ``sys.path`` and the environment as they are now: the
    supervisor's settings (DBQUEUE_URL...) must be in the environment already.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    # Read by the fork server when it starts (it inherits this environment).
    os.environ[SUPERVISOR_PID] = str(os.getpid())
    os.environ[APP] = app_reference
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dbqueue.worker.forkserver_init"])
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return context
