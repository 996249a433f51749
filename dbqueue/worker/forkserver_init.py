"""Imported only inside multiprocessing's fork server (as a preload module).

systemd's default stop (KillMode=control-group) sends SIGTERM to every process
of the worker, the fork server included. If the fork server died, the kernel
would kill the children whose jobs are still finishing (they ask for SIGKILL
when their parent dies). So it ignores SIGTERM, as the children do; it still
exits when the supervisor goes, because its control pipe closes then.
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
