"""What a worker does once at start but need not do before its first job.

A hint about queues that no worker serves (and about a mistyped --queue), the
first prune of expired locks, and, for an application without schedules,
deleting the rows of those it had (no Scheduler runs to do it, see
worker.scheduler). They run on a thread of their own beside the supervisor's
first turns (inline on SQLite: one writer). A failure here is left to the
worker's own statements to report: a failed deletion leaves the rows to the
next worker's start.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from ..policy.names import close_names
from ..store import WorkerRegistry
from ..store.queues import Queues
from .health import DB_ERRORS
from .options import WorkerOptions
from .scheduler import forget_schedules
from .sidetasks import Pruning

log = logging.getLogger("dbqueue.worker")

_LIVE_WITHIN = 30.0  # seconds since a worker's last heartbeat for it to count as serving
_WAIT_AT_STOP = 2.0  # at most, at the stop, for the chores to end


class StartUpChores:
    def __init__(self, app: Any, options: WorkerOptions, registry: WorkerRegistry,
                 pruning: Pruning) -> None:
        self.app, self.store, self.options = app, app.worker_store(), options
        self.registry, self.pruning = registry, pruning
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.store.dialect.embedded:  # one writer: no statement on another thread
            self._run()
        else:
            self._thread = threading.Thread(target=self._run, name="dbqueue-chores",
                                            daemon=True)
            self._thread.start()

    def join(self) -> None:
        """At the stop (they look for this worker among the live ones): not for
        long, as on a database that does not answer each of their statements
        would hold the stop up to the network timeout."""
        if self._thread is not None:
            self._thread.join(_WAIT_AT_STOP)

    def _run(self) -> None:
        self._hint_unserved_queues()
        with contextlib.suppress(*DB_ERRORS):
            self.pruning.run()
        if self.options.schedule and not self.app.schedules:
            with contextlib.suppress(*DB_ERRORS):
                forget_schedules(self.store)

    def _hint_unserved_queues(self) -> None:
        """Say which queues have ready jobs that no worker serves: a new user's
        worker serves only "default" and would wait there in silence."""
        try:
            ready = Queues(self.store).with_ready_jobs()
            workers = self.registry.live(seen_within=_LIVE_WITHIN)
        except DB_ERRORS:
            return  # only a hint: the worker's own statements report an outage
        unserved = [queue for queue in ready
                    if not any(worker.serves(queue) for worker in workers)]
        if unserved:
            log.warning("queue(s) %s have ready jobs that no worker serves; add them to "
                        "--queue (or use --queue '*' for every queue)", ", ".join(unserved))
        # A typo in --queue: a queue nothing is ready in and no job is defined
        # on, beside one that has or is.
        known = set(ready) | {job.queue for job in self.app.jobs.values()}
        for queue in set(self.options.queues) - known - {"*"}:
            close = close_names(queue, sorted(known))
            if close:
                log.warning("queue %r has no ready job and no job of the application is "
                            "defined on it: did you mean %r?", queue, close[0])
