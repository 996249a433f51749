"""The worker's row in the workers' registry: joined at the start, left at the stop.

Joining also checks the server and the tables: a worker that cannot work
here says so before it takes any job.
"""

from __future__ import annotations

import logging
import select
import time

from ..store import Store, WorkerInfo, WorkerRegistry
from .background import run_within, time_left
from .health import DB_ERRORS, TRANSIENT, Health
from .sidetasks import DEAD_AFTER
from .signals import StopSignals

log = logging.getLogger("dbqueue.worker")


class Registration:
    def __init__(self, store: Store, registry: WorkerRegistry, health: Health,
                 signals: StopSignals, info: WorkerInfo) -> None:
        self.store, self.registry, self.health = store, registry, health
        self.signals, self.info = signals, info
        self.gave_up = False
        """Whether ``join`` returned False because ``until`` came, not a signal."""

    def join(self, until: float | None = None) -> bool:
        """Check the server and the tables, and join the registry; False if
        told to stop first, or still waiting for the database at ``until``
        (monotonic clock; a worker's --max-time).

        A worker that starts while the database cannot be reached (a restart, a
        failover, the whole fleet booting) waits for it, saying so once, as a
        running worker would: exiting would make a process manager restart it
        in a tight loop until it gives up for good. Anything else (tables
        missing, a server too old) is an error to fix, not to wait for. A stop
        (SIGTERM, Ctrl-C) ends the wait.
        """
        while not self.signals.received:
            try:
                self.store.check_server()
                self.store.check_schema()
                self.registry.prune(silent_for=DEAD_AFTER)
                self.registry.register(self.info)
            except TRANSIENT as exc:
                if getattr(exc, "lasting", False):
                    raise  # a wrong password or database name: waiting will not help
                pause = self.health.failed("start", exc)
                if until is not None and time.monotonic() + pause >= until:
                    select.select([self.signals.wake_fd], [], [], time_left(until))
                    self.gave_up = not self.signals.received
                    return False
                select.select([self.signals.wake_fd], [], [], pause)
                continue
            self.health.succeeded()
            return True
        return False

    def leave(self, until: float) -> None:
        """Leave the registry, waiting on the server until ``until`` at most:
        a row left behind is pruned as a dead worker's."""
        try:
            if self.store.dialect.embedded:
                self.registry.unregister(self.info.id)
            elif not run_within(lambda: self.registry.unregister(self.info.id),
                                time_left(until) or 0.0)[0]:
                log.warning("could not leave the workers' registry: the database did not "
                            "answer (the row is pruned as a dead worker's)")
        except DB_ERRORS as exc:  # the row is pruned as a dead worker's in two minutes
            self.health.failed("unregister", exc)
