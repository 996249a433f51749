"""Imported only inside multiprocessing's fork server (its preload module).

systemd's default stop (KillMode=control-group) sends SIGTERM to every process
of the worker, the fork server included, Ctrl-C sends SIGINT to them all, and
the terminal they were started from sends SIGHUP as it closes.
If the fork server died, the kernel would kill the children whose jobs are
still finishing (they ask for SIGKILL when their parent, the fork server,
dies). So it ignores them, as the children do.

It cannot count on noticing the supervisor's death by itself: it exits when
its control pipe closes, but multiprocessing gives every child that pipe's
write end, so while a job runs the pipe stays open. A supervisor killed alone
(SIGKILL, the OOM killer) would leave the fork server and its running jobs
behind, and another host would start those jobs again while they still ran.
So the fork server too asks the kernel to kill it when its parent, the
supervisor, dies; the children follow it. A death before that request is
caught by comparing the parent with the supervisor's pid, which the
supervisor leaves in the environment; each child makes the same check
against the fork server's pid.

Then it imports the application, once for every child it will fork (a
connection the application opens meanwhile is closed after the import: each
child opens its own, see store/forkguard.py), and
builds the App's store: the first store built in a process imports the
database driver and SQLAlchemy's dialect (a quarter of a second with
psycopg), which each child would otherwise pay again. The store holds no
connection yet; each child forgets it at fork (App does) and builds its own.
The garbage collector is off meanwhile, and what was built is frozen.
"""

import signal

# First of all: Ctrl-C reaches the whole process group, and a fork server
# interrupted while it imports the application would print a traceback beside
# the supervisor's one line (the supervisor decides what a signal means).
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)

import contextlib  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402

from dbqueue.worker.child import die_with_parent  # noqa: E402
from dbqueue.worker.forkserver import APP, SUPERVISOR_PID  # noqa: E402

die_with_parent()
if os.environ.get(SUPERVISOR_PID, str(os.getppid())) != str(os.getppid()):
    os._exit(0)  # the supervisor is gone already: nobody to fork children for
PID = os.getpid()

# Errors are the supervisor's to report: it loads the same App and builds the
# same store itself, and says what is wrong in one line. Here they would only
# print a second, longer account (or, for any error but ImportError, take the
# fork server down: multiprocessing catches nothing else around a preload).
gc.disable()  # nothing to collect among the imports (see cli.work._settle_memory)
with contextlib.suppress(Exception):
    from dbqueue.loader import load_app
    from dbqueue.store.forkguard import guard_inherited_connections, release_imported_connections

    # A connection the application opens at import is closed here, and no
    # child uses one opened in another process (see store/forkguard.py).
    guard_inherited_connections()
    load_app(os.environ.get(APP, "")).store  # noqa: B018 (built for its side effect)
    release_imported_connections()
# Every child inherits these objects: frozen, no collection in a child walks
# them (nor copies the memory pages that hold them, as marking them would).
gc.freeze()
gc.enable()
