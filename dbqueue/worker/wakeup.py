"""When an idle worker looks for work again: woken by the database, or polling.

On PostgreSQL the worker listens on a connection of its own (store.notices):
a dispatch's commit wakes it within milliseconds, and it polls only for jobs
that come due later (delayed, retried after a backoff), every ``--sleep``
seconds (default 1). If that connection is lost, it polls as elsewhere until
listening works again (tried every RELISTEN_EVERY seconds).

Elsewhere (MySQL, MariaDB, SQLite), or while not listening, the poll adapts:
right after finding work it looks again at once; then each empty look
doubles the pause, from FIRST_PAUSE up to ``--sleep`` (default
POLL_SLEEP: a lone job waits about half of that, and each idle worker sends
about 1 / POLL_SLEEP reservations a second).
"""

from __future__ import annotations

import logging
import select

from ..store import Store
from ..store.notices import JobNotices, listen
from .background import Bound, LateResult
from .health import DB_ERRORS, describe

log = logging.getLogger("dbqueue.worker")

FIRST_PAUSE = 0.01
POLL_SLEEP = 0.1
LISTENING_SLEEP = 1.0
RELISTEN_EVERY = 5.0


class Pace:
    """How long to wait before the next look for work."""

    def __init__(self, sleep: float | None) -> None:
        self.sleep = sleep
        """--sleep: the longest pause, or None for the default."""
        self.empty_looks = 0

    def after_look(self, found: int, listening: bool) -> float:
        """The pause after a reservation that found ``found`` jobs (and fewer
        than it asked for: else the next look goes at once)."""
        self.empty_looks = 0 if found else self.empty_looks + 1
        if listening:  # a new job wakes the worker: the poll is only for jobs coming due
            return self.longest(listening)
        return min(self.longest(listening), FIRST_PAUSE * (1 << min(self.empty_looks, 20)))

    def longest(self, listening: bool) -> float:
        """The longest pause: --sleep, or the default for how the worker waits."""
        if self.sleep is not None:
            return self.sleep
        return LISTENING_SLEEP if listening else POLL_SLEEP


class Wakeup:
    """The listening connection, where there is one (see the module's docstring)."""

    def __init__(self, store: Store, queues: tuple[str, ...]) -> None:
        self.store = store
        self.every_queue = "*" in queues
        self.queues = frozenset(queues)
        self.notices: JobNotices | None = None
        self._poller: select.poll | None = None
        self.next_try = 0.0
        self.supported = True
        self.bound = Bound()
        """Connecting runs on the supervisor's thread: see worker.background.Bound."""

    @property
    def listening(self) -> bool:
        return self.notices is not None

    def fileno(self) -> int | None:
        return None if self.notices is None else self.notices.fileno()

    def start(self, now: float, *, failing: bool = False) -> bool:
        """Listen, if the server can tell and it is time to try again; True if
        listening began now. A look for work that began before then may have
        missed a job queued meanwhile, whose notice nobody heard: the caller
        looks again.

        Not while the database is ``failing``: connecting runs on the
        supervisor's thread, which on a dark path would wait the connect
        timeout each time, jobs' timeouts and signals waiting with it. The
        worker polls meanwhile."""
        if (self.notices is not None or not self.supported or now < self.next_try
                or failing):
            return False
        self.next_try = now + RELISTEN_EVERY
        late: LateResult[JobNotices | None] = LateResult(_close)
        try:
            self.notices = self.bound(late.wrap(lambda: listen(self.store)))
        except DB_ERRORS as exc:
            late.give_up()  # a listening connection that comes after all is closed
            log.debug("cannot listen for new jobs (%s); polling", describe(exc))
            return False
        if self.notices is None:
            self.supported = False
            return False
        self._poller = select.poll()
        self._poller.register(self.notices.fileno(), select.POLLIN)
        return True

    def woken(self) -> bool:
        """Whether a job arrived on a queue this worker serves since the last call."""
        if self.notices is None or self._poller is None or not self._poller.poll(0):
            return False
        try:
            queues = self.notices.queues()
        except DB_ERRORS as exc:
            log.warning("stopped hearing of new jobs (%s); polling until listening works "
                        "again", describe(exc))
            self.stop()
            return True  # look now: a notification may have been lost with it
        mine = queues if self.every_queue else queues & self.queues
        if mine:
            log.debug("woken: new jobs on %s", ", ".join(sorted(mine)))
        return bool(mine)

    def stop(self) -> None:
        if self.notices is not None:
            self.notices.close()
        self.notices = self._poller = None


def _close(notices: JobNotices | None) -> None:
    if notices is not None:
        notices.close()
