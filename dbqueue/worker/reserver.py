"""Reserving jobs: how many to ask for, and what to do with the rows that come back.

The reserver keeps enough jobs in the ledger for every child, plus, when
jobs are short, about ``_BUFFER_SECONDS`` of work ahead so that no child
waits for a round trip. Each row is admitted (decoded, resolved, checked
against its tries) and its middleware's locks are taken for the batch in one
statement; what cannot run is settled at once.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..store import Lease, ReservedRow, Store
from ..store.batches import Batches
from ..store.queues import Queues
from .background import Inline, OnThread, time_left
from .cancels import CancelledBatches
from .clock import Deadline
from .health import DB_ERRORS, Health
from .intake import Postponed, UnknownJobs, admit
from .joblocks import JobLocks
from .ledger import Entry, Ledger, State
from .messages import RunJob
from .options import WorkerOptions
from .queues import QueueChoice
from .recorder import Recorder
from .runtimes import Runtimes
from .wakeup import Pace, Wakeup

log = logging.getLogger("dbqueue.worker")

_BUFFER_SECONDS = 0.2  # prefetch about this much work when jobs are short
STALLED_AFTER = 5.0
"""Seconds after which children that have all run their current job that long
are stalled: the jobs reserved ahead of them wait, while another worker may be
idle (see Handout.hand_back_if_stalled). Long enough that short jobs a moment
slower never send their buffer back and forth."""


class Reserver:
    def __init__(self, app: Any, options: WorkerOptions, worker_id: str, *, ledger: Ledger,
                 recorder: Recorder, job_locks: JobLocks, health: Health,
                 wakeup: Wakeup) -> None:
        self.app = app
        self.store: Store = app.store
        self.options = options
        self.worker_id = worker_id
        self.ledger = ledger
        self.recorder = recorder
        self.job_locks = job_locks
        self.queues = QueueChoice(options.queues, Queues(self.store))
        self.cancels = CancelledBatches(Batches(self.store))
        self.health = health
        self.wakeup = wakeup
        self.pace = Pace(options.sleep)
        self.sequence = 0
        self.next_poll = 0.0
        self.drained = False
        """The last reservation found fewer ready jobs than it asked for."""
        self.queues_empty = False
        """--stop-when-drained: no job at all is left in the queues."""
        self.avg_runtime: float | None = None
        self.runtimes = Runtimes()
        """How long each kind of job takes here (the handout's too)."""
        self._unmeasured: set[str] = set()
        self._unmeasured_until = 0.0
        """Kinds given back before any ran here, and until when (monotonic) they
        keep the prefetch off, at most (see _hand_back_unmeasured)."""
        self.stalled = False
        """Every child has run its current job STALLED_AFTER seconds: no prefetch."""
        self._said_waiting = False
        self.unknown = UnknownJobs()
        # One reservation at a time, on a thread of its own where the database
        # is a server (see worker.background).
        self.calls: Inline[tuple[list[ReservedRow], bool | None]] = (
            Inline() if self.store.dialect.embedded else OnThread("dbqueue-reserve"))
        self._asked: _Asked | None = None
        self._stale = False
        self._expected: list[float] = []
        """A heap: when (monotonic) jobs this worker released for a while come due."""
        self._lock_waits_until = 0.0
        """When the last job released for a held lock comes due, until a look
        after that time (0: none waits)."""

    def longest_pause(self) -> float:
        return self.pace.longest(self.wakeup.listening)

    def ran(self, task: RunJob, runtime: float) -> None:
        """``task`` ran ``runtime`` seconds: the prefetch follows the average,
        and the handout the runtime of each kind."""
        self.avg_runtime = runtime if self.avg_runtime is None else (
            0.9 * self.avg_runtime + 0.1 * runtime)
        self.runtimes.add(task, runtime)

    def prefetch(self) -> int:
        if self.avg_runtime is None or self.options.once or self.stalled:
            return 0
        if self._unmeasured:
            self._unmeasured = {name for name in self._unmeasured
                                if self.runtimes.of_job(name) == math.inf}
            if self._unmeasured and time.monotonic() < self._unmeasured_until:
                return 0
        ahead = self.options.concurrency * _BUFFER_SECONDS / max(self.avg_runtime, 1e-4)
        return min(self.options.prefetch, int(ahead))

    def wanted(self, coming: int = 0) -> int:
        """How many jobs to ask for now (0: none), with ``coming`` more reserved
        than the ledger holds yet."""
        options, ledger = self.options, self.ledger
        have = ledger.count(State.RESERVED, State.RUNNING) + coming
        want = options.concurrency + self.prefetch() - have
        if options.max_jobs is not None:
            want = min(want, options.max_jobs - ledger.processed - have)
        uncovered = options.concurrency - have
        # With every child covered, the prefetch is topped up once a tenth of it
        # is missing: on short jobs a reservation takes about as long as running
        # what it brings, so the next one must go out early; a tenth keeps each
        # worth its round trip.
        topped_up = len(ledger.reserved) + coming > self.prefetch() * 9 // 10
        if want <= 0 or (uncovered <= 0 and topped_up):
            return 0
        return want

    @property
    def fetching(self) -> bool:
        """Whether a reservation is on its way (its rows not taken in yet)."""
        return self.calls.busy

    @property
    def fetching_since(self) -> float | None:
        """When (monotonic) the reservation on its way began; None: none is."""
        return self.calls.began if self.calls.busy else None

    def fileno(self) -> int | None:
        """Readable once a reservation on its way has ended (None: none runs apart)."""
        return self.calls.fileno()

    def look_again(self) -> None:
        """Jobs may be ready now (a notice, a job released, a workflow's next
        step queued): look at once, and let no reservation already on its way,
        whose statement may have run before they were, say the queue is empty."""
        self.next_poll, self.drained, self.queues_empty, self._stale = 0.0, False, False, True

    def expect(self, due: float, *, waits_for_lock: bool = False) -> None:
        """A job this worker released comes due at ``due`` (monotonic clock):
        an idle worker looks then, not at its next poll (a second away when it
        listens for new jobs, which a release does not announce). One that
        ``waits_for_lock`` keeps the queue from counting as drained until a
        look after it (see ``waiting_for_locks``)."""
        heapq.heappush(self._expected, due)
        if waits_for_lock:
            self._lock_waits_until = max(self._lock_waits_until, due)
        self.next_poll = min(self.next_poll, due) if self.next_poll else 0.0

    @property
    def waiting_for_locks(self) -> bool:
        """Whether jobs released because another job held their lock may be
        ready, with no look for them since (--stop-when-empty waits for them:
        nobody chose to delay them)."""
        return self._lock_waits_until > 0.0

    def refill(self, now: float, *, reserve: bool = True) -> None:
        """Take in the rows of a reservation that has ended; then, if ``reserve``
        and more jobs are wanted, start the next one (on the database's thread,
        see worker.background: its rows are taken in at a later turn).

        The next reservation goes out before the rows that came back are
        admitted: admitting a few thousand rows takes milliseconds, which
        would otherwise pass with no reservation on its way."""
        arrived = self._receive()
        if reserve and not self.calls.busy and now >= self.next_poll:
            self._ask(arrived)
        if arrived is not None:
            self._take(*arrived)
        if self.calls.fileno() is None:
            self.collect()  # inline (SQLite): the rows are here already

    def _ask(self, arrived: _Arrived | None) -> None:
        """Start a reservation, if more jobs are wanted than are in hand
        (``arrived``: rows taken from the database but not yet admitted)."""
        coming = len(arrived[0]) if arrived is not None else 0
        want = self.wanted(coming)
        if want <= 0:
            return
        self.sequence += 1
        now = time.monotonic()
        while self._expected and self._expected[0] <= now:  # this look finds them
            heapq.heappop(self._expected)
        if self._lock_waits_until and now >= self._lock_waits_until:
            self._lock_waits_until = 0.0
        asked = _Asked(want, f"{self.worker_id}.{self.sequence}",
                       # Read before the statement goes out: the lease, counted by
                       # the server's clock from when it ran, lasts at least until this.
                       Deadline.after(self.options.retry_after),
                       # After an empty look, a poll first asks whether anything is
                       # ready (one cheap statement); it reserves only when something is.
                       idle=self.pace.empty_looks > 0 and not self.wakeup.listening,
                       look_further=not self.ledger and not coming and not self.recorder.hooks)
        self._asked, self._stale = asked, False
        self.calls.submit(lambda: self._fetch(asked))

    def _fetch(self, asked: _Asked) -> tuple[list[ReservedRow], bool | None]:
        """The reservation's statements, on the database's thread: the rows, and
        (for --stop-when-drained, when none was found) whether any job is left."""
        queues = self.queues.current()
        rows = (self.store.reserve(queues, asked.want, asked.token, self.options.retry_after)
                if not asked.idle or self.queues.any_ready(queues) else [])
        left = None
        if not rows and asked.look_further and self.options.stop_when_drained:
            left = self.queues.hold_jobs()
        return rows, left

    def collect(self, *, wait: bool = False, until: float | None = None) -> None:
        """Take in the rows of the reservation on its way, if it has ended (or,
        with ``wait``, once it has; at most until ``until``, monotonic)."""
        arrived = self._receive(wait=wait, until=until)
        if arrived is not None:
            self._take(*arrived)

    def _receive(self, *, wait: bool = False, until: float | None = None) -> _Arrived | None:
        """The rows of the reservation on its way, if it has ended (or, with
        ``wait``, once it has), not admitted yet; None if none came back."""
        if not self.calls.busy or not ((wait and self.calls.wait(time_left(until)))
                                       or self.calls.done()):
            return None
        asked, now = self._asked, time.monotonic()
        assert asked is not None
        try:
            rows, left = self.calls.take()
        except DB_ERRORS as exc:
            self.next_poll = now + self.health.failed("reserve jobs", exc,
                                                      began=self.calls.began)
            return None
        self.health.succeeded()
        stale = self._stale  # see look_again
        if not rows and asked.look_further and not stale:
            self._look_for_any_job(left)
        self.drained = len(rows) < asked.want and not stale
        pause = self.pace.after_look(len(rows), self.wakeup.listening) if self.drained else 0.0
        # Not now + 0 when more may be ready: the caller's clock, read before
        # this call, would say the next look is not due yet.
        self.next_poll = now + pause if pause and not stale else 0.0
        if self._expected and self.next_poll > self._expected[0]:  # see expect
            self.next_poll = max(self._expected[0], now)
        return rows, asked.token, asked.lease_until

    def close(self, until: float | None = None) -> bool:
        """Take in the rows of a reservation still on its way (the supervisor
        then gives them back), and end the database's thread; by ``until``
        (monotonic) at the latest. False if the reservation was left waiting
        on the database then: the jobs it leases come back when the leases
        run out (a reservation counts no attempt)."""
        self.collect(wait=True, until=until)
        return self.calls.close(time_left(until))

    def _take(self, rows: list[ReservedRow], token: str, lease_until: Deadline) -> None:
        admitted: list[Entry] = []
        for row in rows:
            if row.id in self.ledger:
                self._again(row, Lease(row.id, token), lease_until)
                continue
            entry, failure = admit(self.app, row, token, lease_until)
            self.ledger.add(entry)
            if failure is None:
                admitted.append(entry)
            elif isinstance(failure, Postponed):
                self._postpone(entry, failure)
            else:
                self.recorder.failed(entry, failure, ran=False)
        _, released = self.job_locks.take(self._skip_cancelled(admitted))
        if released:  # back in the queue, maybe ready at once
            self.drained = False
        if self.avg_runtime is not None:  # else nothing was reserved ahead
            self._hand_back_unmeasured(admitted)

    def _hand_back_unmeasured(self, admitted: list[Entry]) -> None:
        """The prefetch follows the runtimes of the jobs run here so far: after
        short jobs it reserves a burst of slow ones of a new kind whole, and
        this worker's children would run them one after the other while
        another worker is idle. So jobs of a kind that has not run here yet,
        reserved beyond the children free for them, go back to the queue at
        once. Nothing is then reserved ahead (it would take them again) until
        each such kind has run once here, or for STALLED_AFTER seconds should
        none come back to this worker."""
        names = {entry.row.job for entry in admitted}
        new = {name for name in names if self.runtimes.of_job(name) == math.inf}
        if not new:
            return
        unmeasured = [entry for entry in self.ledger.reserved if entry.row.job in new]
        free = max(0, self.options.concurrency - self.ledger.count(State.RUNNING))
        if len(unmeasured) > free and not self.health.failing:
            self.recorder.give_back(unmeasured[free:])
            self._unmeasured |= {entry.row.job for entry in unmeasured[free:]}
            self._unmeasured_until = time.monotonic() + STALLED_AFTER

    def _postpone(self, entry: Entry, postponed: Postponed) -> None:
        self.unknown.put_back(entry, postponed)
        self.recorder.released(entry, postponed.delay, False, postponed.why, for_others=True)

    def _skip_cancelled(self, admitted: list[Entry]) -> list[Entry]:
        """Complete, without running them, the jobs of cancelled batches."""
        batch_ids = {batch_id for entry in admitted if (batch_id := entry.batch_id)}
        if not batch_ids:
            return admitted
        try:
            cancelled = self.cancels.which(batch_ids)
        except DB_ERRORS as exc:  # cannot tell: back to the queue, not run
            self.health.failed("check for cancelled batches", exc)
            self.recorder.give_back(admitted)
            return []
        keep = []
        for entry in admitted:
            if entry.batch_id in cancelled:
                entry.skipped = True
                self.recorder.dropped(entry, "its batch was cancelled")
            else:
                keep.append(entry)
        return keep

    def _again(self, row: ReservedRow, lease: Lease, lease_until: Deadline) -> None:
        """A job still in the ledger was reserved again.

        If its outcome is being written, that write committed before this
        statement ran and put it back (released for a retry; or, after a
        stall, another outcome whose lease this reservation overtook): it goes
        back as it was (a reservation counts no attempt), for the next look,
        once the ledger is done with it. Else this worker stalled: see
        ``_adopt``.
        """
        if row.id not in self.recorder.completer.ending_ids():
            self._adopt(row, lease, lease_until)
            return
        try:
            self.recorder.bound(lambda: self.store.release_all([lease]))
        except DB_ERRORS as exc:  # its lease runs out: it comes back all the same
            self.health.failed("give back a reserved job", exc)
        self.drained = False

    def _adopt(self, row: ReservedRow, lease: Lease, lease_until: Deadline) -> None:
        """Take a new lease on a job this worker still holds under an old one.

        That happens only when this worker stalled past ``retry_after``: it
        goes on under the new token instead of running a second time (a
        reservation counts no attempt). Another worker may have run an attempt
        of it meanwhile: then its run here is the next attempt, not the same.
        """
        entry = self.ledger.get(row.id)
        assert entry is not None
        entry.lease, entry.lease_until, entry.lease_lost = lease, lease_until, False
        if row.attempts > entry.row.attempts:
            entry.row, entry.counted = entry.row._replace(attempts=row.attempts), False
        log.warning("job %d was reserved again after this worker stalled; kept", lease.id)

    def _look_for_any_job(self, left: bool | None) -> None:
        """Nothing was ready and nothing is in hand: say so once to a --once
        worker's user, and see whether --stop-when-drained may stop (``left``:
        whether any job is in the queues, when that was asked)."""
        if left is not None:
            self.queues_empty = not left
        options = self.options
        # With either stop option the user has chosen already: --stop-when-empty
        # stops now, and --stop-when-drained waits only for jobs already queued
        # (and refuses --stop-when-empty beside it).
        if (options.once and not options.stop_when_empty and not options.stop_when_drained
                and not self._said_waiting):
            self._said_waiting = True
            log.info("no job is ready on queue(s) %s; waiting for one (--once runs the next "
                     "job to arrive; add --stop-when-empty to exit instead)",
                     ",".join(options.queues))


_Arrived: TypeAlias = tuple[list[ReservedRow], str, Deadline]
"""A reservation's rows, its token and how long its leases last."""


@dataclass(frozen=True)
class _Asked:
    """A reservation on its way: what it asked for, under which token."""

    want: int
    token: str
    lease_until: Deadline
    idle: bool
    look_further: bool
    """Nothing was in hand: an empty answer is news (see _look_for_any_job)."""
