"""How the worker starts its child processes: from a fork server.

Children fork from a small clean process (multiprocessing's fork server) that
has imported the application once, so a replacement starts in milliseconds
and never inherits the supervisor's database connections.

Multiprocessing starts its fork server as a new interpreter, which imports
SQLAlchemy again: on two cores, that and the supervisor's own imports were
most of a worker's start-up. ``dbqueue work`` instead forks it from the
supervisor once SQLAlchemy and dbqueue are imported, while the process is
still clean (one thread, no connection, the application not imported): the
fork server then only imports the application, beside the supervisor, which
does the same. Multiprocessing's resource tracker, another new interpreter,
is forked the same way just before. Where that cannot be done safely
(another thread, a platform or Python version whose fork server this module
does not know), it starts the usual way.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any, NoReturn

from .signals import STOPS, ignore_stops

SUPERVISOR_PID = "DBQUEUE_SUPERVISOR_PID"
"""Where the supervisor leaves its pid for the fork server to check (forkserver_init)."""
APP = "DBQUEUE_FORKSERVER_APP"
"""Where the supervisor leaves the ``module:attr`` of the App the fork server imports."""
PRELOAD = "dbqueue.worker.forkserver_init"

# The attributes of multiprocessing's ForkServer (3.11, 3.12) that a fork server
# started by fork must set, as its ensure_running() would.
_SERVER_STATE = ("_forkserver_pid", "_forkserver_address", "_forkserver_alive_fd",
                 "_preload_modules")


def start(app_reference: str, *, fork: bool = False) -> BaseContext:
    """The multiprocessing context the worker's children start in, with its fork
    server (if there is one) started now, importing the application in the
    background. With ``fork``, the fork server is forked from this process if
    that is safe (see the module's text). Calling it again changes nothing.

    The fork server takes ``sys.path`` and the environment as they are now: the
    supervisor's settings (DBQUEUE_URL...) must be in the environment already.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    # Read by the fork server when it starts (it inherits this environment).
    os.environ[SUPERVISOR_PID] = str(os.getpid())
    os.environ[APP] = app_reference
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([PRELOAD])
    from multiprocessing import forkserver

    if not (fork and _fork_server(forkserver)):
        forkserver.ensure_running()
    return context


def _fork_server(module: Any) -> bool:
    """Start multiprocessing's fork server as a fork of this process, as its
    ``ensure_running`` would start it otherwise; False, having done nothing,
    where that is not safe."""
    server: Any = getattr(module, "_forkserver", None)
    if (sys.platform != "linux" or not (3, 11) <= sys.version_info[:2] <= (3, 12)
            or threading.active_count() != 1
            or not all(hasattr(server, name) for name in _SERVER_STATE)):
        return False
    from multiprocessing import connection, resource_tracker, util

    # ensure_running()'s lock is not taken (no other thread can call it): a
    # fork server forked while it was held would keep it held for good.
    if server._forkserver_pid is not None:
        return True
    _start_resource_tracker(resource_tracker)  # its descriptor is then passed to every child
    with socket.socket(socket.AF_UNIX) as listener:
        address = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]
        listener.bind(address)
        if not util.is_abstract_socket_namespace(address):
            os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        try:
            pid = _fork(lambda: _serve(module, listener.fileno(), alive_r))
        finally:
            os.close(alive_r)
    server._forkserver_address = address
    server._forkserver_alive_fd = alive_w
    server._forkserver_pid = pid
    return True


def _start_resource_tracker(module: Any) -> None:
    """Start multiprocessing's resource tracker (which removes the named
    semaphores and shared memory that a dead process leaves) as a fork of this
    process too: its ``ensure_running`` would start yet another interpreter,
    a few dozen milliseconds of a start-up bound by the CPU."""
    tracker: Any = getattr(module, "_resource_tracker", None)
    if not (hasattr(tracker, "_fd") and hasattr(tracker, "_pid") and hasattr(module, "main")):
        module.ensure_running()
        return
    if tracker._fd is not None:
        return
    track_r, track_w = os.pipe()

    def track() -> None:
        # It ends once every write end is closed: this process's and its
        # children's, never its own.
        _close_inherited(keep=(track_r,))
        module.main(track_r)

    try:
        pid = _fork(track)
    except BaseException:
        os.close(track_w)
        raise
    finally:
        os.close(track_r)
    tracker._fd, tracker._pid = track_w, pid


def _fork(run: Callable[[], object]) -> int:
    """Fork a helper process that runs ``run`` and exits; return its pid.

    A stop signal arriving as it forks is this process's to take, not the
    helper's, which ignores them (the supervisor decides when to stop).
    """
    stops = set(STOPS)
    _flush_std_streams()  # or each child would write what is buffered again
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        pid = os.fork()
        if pid == 0:
            _run_then_exit(run)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    return pid


def _run_then_exit(run: Callable[[], object]) -> NoReturn:
    """In a forked helper: run, then exit without running anything of the
    supervisor's (its atexit handlers, the ``finally`` blocks of the stack it
    was forked from)."""
    code = 0
    try:
        # The supervisor's signal handling is not ours (see forkserver_init).
        signal.set_wakeup_fd(-1)
        ignore_stops()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOPS))
        run()
    except SystemExit as exc:  # how the fork server's main() ends, once the supervisor is gone
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            _flush_std_streams()
        finally:
            os._exit(code)


def _serve(module: Any, listener_fd: int, alive_r: int) -> None:
    """In the forked fork server: serve until the supervisor is gone."""
    from multiprocessing import resource_tracker

    # Among what is closed: the write ends of the alive pipe (the supervisor's
    # and its children's: once they are all gone, the fork server stops), and
    # of the resource tracker's pipe, which each child is sent anew. Kept, the
    # latter would keep the tracker from ending before the fork server, and a
    # Python that waits for its tracker at exit (3.12.10 and later) would wait
    # for the fork server, which waits for it.
    _close_inherited(keep=(listener_fd, alive_r))
    tracker: Any = getattr(resource_tracker, "_resource_tracker", None)
    if hasattr(tracker, "_fd"):
        tracker._fd = None
    if hasattr(tracker, "_pid"):
        tracker._pid = None
    # What a fork server started anew preloads, for any fork server a child
    # starts in turn: not the worker's (see forkserver_init).
    module._forkserver._preload_modules = ["__main__"]
    module.main(listener_fd, alive_r, [PRELOAD])


def _close_inherited(keep: tuple[int, ...]) -> None:
    """In a forked helper: close every descriptor of the supervisor's but the
    standard streams and ``keep``, as a new interpreter would have none of
    them (its signal pipe, descriptors its own parent left it: a helper that
    outlives it would hold them open)."""
    for name in os.listdir("/proc/self/fd"):  # Linux: the only place helpers are forked
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own, closed already
                os.close(fd)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing to keep
            stream.flush()
