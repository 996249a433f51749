"""A child's answers on their way to the supervisor.

Short jobs end thousands of times a second, and a write to the pipe that
wakes the supervisor costs more than running a no-op job. So a plain "done"
is held while the next task is already in the child's inbox and its job
usually takes less than HOLD_SECONDS here, for up to HOLD_SECONDS or
HOLD_MOST answers; the held ones cross as one message, a run of DONE_FRAME
bytes. (A job that is usually short and now runs long keeps the answers
held before it waiting until it ends.) Anything else the child says (a
failure, an idempotent job's "done, uncommitted", a transaction's end) goes
at once, after what is held, so the supervisor reads every answer in the
order of the tasks.

Holding does not blur timeouts: the supervisor learns which task runs, and
since when, from the child's stamp (see worker.stamps), not from the answers.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection

from .messages import DONE_FRAME, RunHook, RunJob
from .runtimes import Runtimes

HOLD_SECONDS = 0.002
HOLD_MOST = 64


class Replies:
    def __init__(self, conn: Connection, runtimes: Runtimes) -> None:
        self.conn = conn
        self.runtimes = runtimes
        self.held = 0
        self.since = 0.0
        """When the first held answer's task ended (monotonic clock)."""

    def done(self, upcoming: RunJob | RunHook | None) -> None:
        """The task just run ended "done"; ``upcoming`` is the task after it,
        if it is here already."""
        now = time.monotonic()
        if not self.held:
            self.since = now
        self.held += 1
        if (upcoming is None or self.held >= HOLD_MOST or now - self.since >= HOLD_SECONDS
                or self.runtimes.of(upcoming) >= HOLD_SECONDS):
            self.flush()

    def send(self, message: object) -> None:
        """Any other message: after the answers held."""
        self.flush()
        self.conn.send(message)

    def flush(self) -> None:
        if self.held:
            held, self.held = self.held, 0
            self.conn.send_bytes(DONE_FRAME * held)

    def poll(self) -> bool:
        """Whether the supervisor has sent more."""
        return self.conn.poll()
