"""The supervisor: one process per host that leases jobs and feeds child processes.

It owns every database write about a job: children only run code. Per turn
of its loop it tops up a small buffer of reserved jobs, hands them to idle
children, records outcomes (completions in batches), renews its leases, and
waits for the next answer, deadline or signal.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
import traceback
from collections import deque
from functools import partial
from typing import Any

from ..errors import JobTimeout, WorkerCrashed
from ..middleware import LOCK_MARGIN, LockRequest
from ..policy import Ended, GiveUp, decide
from ..store import Failure, Lease, WorkerInfo, WorkerRegistry
from ..store.locks import Locks
from ..store.queues import Queues
from .child import Committed, Finished, JobFailure, RunHook, RunJob, class_name
from .health import DB_ERRORS, TRANSIENT, Health
from .intake import Held, admit
from .options import WorkerOptions
from .outbox import Completion, Outbox, duration
from .pool import Child, Pool
from .queues import QueueChoice, serves
from .signals import REPEAT_AFTER, StopSignals

log = logging.getLogger("dbqueue.worker")

_FLUSH_BATCH = 256
_FLUSH_DELAY = 0.05  # seconds a completion may wait to share a transaction with others
_BUFFER_SECONDS = 0.2  # prefetch about this much work when jobs are short
_PIPELINE_SECONDS = 0.02  # queue about this much work in each child when jobs are short
_MAX_DEPTH = 16
_PIPELINE_BYTES = 2048  # larger payloads wait for an idle child: a full pipe would block us
_HOOK_TIMEOUT = 60.0
_HOUSEKEEPING_EVERY = 60.0
_DEAD_AFTER = 120.0  # seconds without a heartbeat after which a worker is forgotten
_COMMIT_TIMEOUT = 60.0  # seconds an idle child may take to commit its idempotent jobs
_LIVE_WITHIN = 30.0  # seconds since a worker's last heartbeat for it to count as serving


class Supervisor:
    def __init__(self, app: Any, app_reference: str, options: WorkerOptions) -> None:
        # The pool starts the fork server (if `dbqueue work` has not already):
        # before the store, whose engines import the database driver, so that
        # the fork server's imports overlap that instead of following it.
        self.pool = Pool(app_reference, options.concurrency,
                         measure_memory=options.memory_mb is not None)
        self.app, self.store, self.options = app, app.store, options
        self.registry = WorkerRegistry(self.store)
        self.locks = Locks(self.store)
        self.queues = QueueChoice(options.queues, Queues(self.store))
        self.health = Health()
        self.id = secrets.token_hex(8)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.signals = StopSignals()
        self.buffer: deque[Held] = deque()
        self.running: dict[int, Held] = {}  # by job id: handed to a child, not yet answered
        # Idempotent jobs that are done, in a child's transaction not yet committed.
        self.uncommitted: dict[int, tuple[Child, Held]] = {}
        self.hooks: deque[RunHook] = deque()
        self.outbox = Outbox()
        self.processed = 0
        self.stopping: str | None = None
        self.stop_deadline = 0.0
        self.started = time.monotonic()
        self.next_poll = 0.0
        self.next_beat = 0.0
        self.next_housekeeping = 0.0
        self.next_flush = 0.0  # after a failed write, when to try again
        self.first_unflushed = 0.0
        self.drained = False
        self.queues_empty = False  # --stop-when-drained: no job at all is left in them
        self.said_waiting = False
        self.avg_runtime: float | None = None
        self.sequence = 0

    # --- life cycle -------------------------------------------------------------

    def run(self) -> int:
        """Work until told to stop; return the process exit code (0)."""
        self._register()
        log.info("worker %s (%s) started: queues %s, concurrency %d", self.id, self.name,
                 ",".join(self.options.queues), self.options.concurrency)
        self._hint_unserved_queues()
        self.pool.start()
        self.signals.install()
        try:
            while not self._finished():
                self._turn()
        finally:
            self._shutdown()
        log.info("worker %s stopped (%s) after %d job(s)", self.id, self.stopping, self.processed)
        return 0

    def _finished(self) -> bool:
        return self.stopping is not None and not self.running and not self.uncommitted and (
            not self.hooks or time.monotonic() >= self.stop_deadline)

    def _register(self) -> None:
        """Check the server and the tables, and join the workers' registry.

        A worker that starts while the database cannot be reached (a restart, a
        failover, the whole fleet booting) waits for it, saying so once, as a
        running worker would: exiting would make a process manager restart it
        in a tight loop until it gives up for good. Anything else (tables
        missing, a server too old) is an error to fix, not to wait for.
        """
        while True:
            try:
                self.store.check_server()
                self.store.check_schema()
                self.registry.prune(silent_for=_DEAD_AFTER)
                self.registry.register(WorkerInfo(
                    self.id, socket.gethostname(), os.getpid(), ",".join(self.options.queues),
                    self.options.concurrency))
            except TRANSIENT as exc:
                time.sleep(self.health.failed("start", exc))
                continue
            self.health.succeeded()
            return

    def _hint_unserved_queues(self) -> None:
        """Say which queues have ready jobs that no worker serves: a new user's
        worker serves only "default" and would wait there in silence."""
        try:
            ready = Queues(self.store).with_ready_jobs()
            workers = self.registry.live(seen_within=_LIVE_WITHIN)
        except DB_ERRORS:
            return  # only a hint: the worker's own statements report an outage
        unserved = [queue for queue in ready
                    if not any(serves(worker.queues, queue) for worker in workers)]
        if unserved:
            log.warning("queue(s) %s have ready jobs that no worker serves; add them to "
                        "--queue (or use --queue '*' for every queue)", ", ".join(unserved))

    def _turn(self) -> None:
        self._heed_signals()
        # Outcomes first: a job released for an immediate retry must be back in
        # the table before the next reservation looks for work.
        self._flush()
        # Renew leases before reserving: after a stall the renewal keeps what
        # is still ours, and the reservation cannot take it a second time.
        self._beat()
        if not self.stopping:
            self._refill()
        self._assign()
        self._check_limits()
        ended = self.pool.wait(self._wait_timeout(), self.signals.wake_fd)
        self.signals.drain()
        for child, task, answer, runtime in ended.finished:
            self._on_answer(child, task, answer, runtime)
        for committed in ended.committed:
            self._on_committed(committed)
        for child, lost, how in ended.died:
            if lost is not None:
                self._on_death(lost, how)
            self._lost_with(child)
        self._requeue(ended.unstarted)
        for child in self.pool.overdue():
            self._on_timeout(child)
        self._kill_stuck_commits()
        if (self.stopping and (self.running or self.uncommitted)
                and time.monotonic() >= self.stop_deadline):
            self._abandon_running()

    def _heed_signals(self) -> None:
        signals = self.signals
        if signals.received and not self.stopping:
            self._stop(f"received {signals.received}")
            log.info("%s again stops at once: running jobs are then killed and put back",
                     "Ctrl-C" if signals.received == "SIGINT" else signals.received)
        elif signals.again and self.stopping and self.stop_deadline > time.monotonic():
            # A second Ctrl-C: the person at the terminal will not wait.
            log.warning("received %s again: stopping now; running jobs are put back",
                        signals.received)
            self.stop_deadline = time.monotonic()
        elif signals.repeats_ignored:
            signals.repeats_ignored = 0
            log.info("received %s again within %g s of the first: taken as the same request "
                     "(a process manager may have sent both); once more to stop at once",
                     signals.received, REPEAT_AFTER)

    def _stop(self, reason: str) -> None:
        self.stopping = reason
        self.stop_deadline = time.monotonic() + self.options.grace
        log.info("stopping (%s): %d running job(s) get up to %.0f s to finish", reason,
                 len(self.running), self.options.grace)
        self._give_back(list(self.buffer))
        self.buffer.clear()

    def _shutdown(self) -> None:
        self._give_back(list(self.buffer))  # tasks a dead child never started, put back
        self.buffer.clear()
        for _ in range(3):
            if not self.outbox:
                break
            try:
                self.outbox.flush(self.store.complete)
            except DB_ERRORS as exc:
                time.sleep(min(1.0, self.health.failed("record job outcomes", exc)))
        try:
            self.registry.unregister(self.id)
        except DB_ERRORS as exc:  # the row is pruned as a dead worker's in two minutes
            self.health.failed("unregister", exc)
        self.pool.stop()
        self.signals.uninstall()

    # --- leasing ------------------------------------------------------------------

    def _prefetch(self) -> int:
        if self.avg_runtime is None or self.options.once:
            return 0
        ahead = self.options.concurrency * _BUFFER_SECONDS / max(self.avg_runtime, 1e-4)
        return min(self.options.prefetch, int(ahead))

    def _refill(self) -> None:
        now = time.monotonic()
        if now < self.next_poll:
            return
        capacity = self.options.concurrency + self._prefetch()
        have = len(self.running) + len(self.buffer)
        want = capacity - have
        if self.options.max_jobs is not None:
            want = min(want, self.options.max_jobs - self.processed - have)
        uncovered = self.options.concurrency - have
        if want <= 0 or (uncovered <= 0 and len(self.buffer) > self._prefetch() // 2):
            return
        self.sequence += 1
        token = f"{self.id}.{self.sequence}"
        try:
            rows = self.store.reserve(self.queues.current(), want, token, self.options.retry_after)
            if not rows and self._in_hand() == 0:
                self._look_for_any_job()
        except DB_ERRORS as exc:
            self.next_poll = now + max(self.options.sleep, self.health.failed("reserve jobs", exc))
            return
        self.health.succeeded()
        # `now` was read before the statement went out: the lease, counted by the
        # server's clock from when it ran, lasts at least until this.
        lease_until = now + self.options.retry_after
        self.drained = len(rows) < want
        self.next_poll = now + self.options.sleep if self.drained else 0.0
        admitted: list[Held] = []
        held_here = self._held_ids() if rows else set()
        for row in rows:
            if row.id in held_here and self._adopt(Lease(row.id, token), lease_until):
                continue
            held, failure = admit(self.app, row, token, lease_until)
            if failure is None:
                admitted.append(held)
            else:
                self._record_failure(held, failure, ran=False)
        self.buffer.extend(self._take_locks(admitted))

    def _in_hand(self) -> int:
        """Jobs and hooks this worker holds, in any state."""
        return (len(self.buffer) + len(self.running) + len(self.uncommitted) + len(self.hooks)
                + len(self.outbox))

    def _look_for_any_job(self) -> None:
        """Nothing was ready and nothing is in hand: say so once to a --once
        worker's user, and see whether --stop-when-drained may stop."""
        if self.options.stop_when_drained:
            self.queues_empty = not self.queues.hold_jobs()
        if self.options.once and not self.said_waiting:
            self.said_waiting = True
            log.info("no job is ready on queue(s) %s; waiting for one (--once runs the next "
                     "job to arrive; add --stop-when-empty to exit instead)",
                     ",".join(self.options.queues))

    def _take_locks(self, admitted: list[Held]) -> list[Held]:
        """Take the locks the jobs' middleware asks for (WithoutOverlapping), for
        the whole batch in one statement; return the jobs that may run.

        A job whose key another job holds, here or on any host, is released
        back or dropped, as its middleware says, without reaching a child.
        """
        ready: list[Held] = []
        asking: list[tuple[Held, list[LockRequest]]] = []
        keys: set[str] = set()
        for held in admitted:
            try:
                requests = held.lock_requests(self.app)
            # The application's key function raised: its job fails, the worker
            # goes on (SystemExit included; signals never raise here).
            except BaseException as exc:
                self._record_failure(held, Failure(
                    class_name(exc), f"the lock key of job {held.row.id} could not be "
                    f"computed: {exc}", traceback.format_exc()), ran=False)
                continue
            if not requests:
                ready.append(held)
            elif keys.isdisjoint(request.key for request in requests):
                keys.update(request.key for request in requests)
                owner = f"{self.id}:{held.row.id}"
                held.locks = [(request.key, owner, max(request.ttl, self._lock_floor()))
                              for request in requests]
                asking.append((held, requests))
            else:  # a job of this same batch has the key
                self._busy(held, requests[0])
        if not asking:
            return ready
        try:
            taken = self.locks.acquire_many([lock for held, _ in asking for lock in held.locks])
        except DB_ERRORS as exc:
            self.health.failed("take job locks", exc)
            self._give_back([held for held, _ in asking])
            return ready
        for held, requests in asking:
            refused = [request for request in requests if request.key not in taken]
            if refused:
                held.locks = [lock for lock in held.locks if lock[0] in taken]
                self._busy(held, refused[0])
            else:
                ready.append(held)
        return ready

    def _lock_floor(self) -> float:
        """The least a job's lock is taken for: it is renewed with the leases, so
        it must outlast two heartbeats, whatever ``expire_after`` says."""
        return 2 * self.options.heartbeat_every + LOCK_MARGIN

    def _busy(self, held: Held, request: LockRequest) -> None:
        """Another job holds ``request.key``: release this one or drop it."""
        self._note_write()
        self._unlock(held)
        if request.dont_release:
            log.debug("job %d (%s) dropped: another job holds %s (dont_release)",
                      held.row.id, held.row.job, request.key)
            self.outbox.completions.append(Completion(held.lease, held.row.job, None))
            self.processed += 1
        else:
            why = f"another job holds {request.key}"
            self.outbox.writes.append((held.lease, partial(
                self._release, held, request.release_after, False, why)))
            self.drained = False

    def _unlock(self, held: Held) -> None:
        """The job is leaving this worker: free its locks with the next completions."""
        if held.locks:
            self._note_write()
            self.outbox.unlock += [(key, owner) for key, owner, _ in held.locks]
            held.locks = []

    def _give_back(self, helds: list[Held]) -> None:
        """Put reserved jobs that did not start back in the queue, as they were."""
        if helds:
            for held in helds:
                self._unlock(held)
            try:
                self.store.release_all([held.lease for held in helds])
            except DB_ERRORS as exc:  # their leases run out: they come back all the same
                self.health.failed("give back reserved jobs", exc)

    def _held_ids(self) -> set[int]:
        """Every job this worker holds a lease on: buffered, running, done but
        not yet written. Gathered once per reservation, so that looking each
        new row up costs nothing (the buffer alone holds hundreds)."""
        return {*self.running, *self.uncommitted, *(held.row.id for held in self.buffer),
                *(lease.id for lease in self.outbox.leases())}

    def _adopt(self, lease: Lease, lease_until: float) -> bool:
        """Take a new lease on a job this worker still holds under an old one.

        That happens only when this worker stalled past ``retry_after`` and no
        other worker took the job meanwhile: it goes on under the new token
        instead of running a second time (a reservation counts no attempt).
        """
        held = (self.running.get(lease.id) or self.uncommitted.get(lease.id, (None, None))[1]
                or next((h for h in self.buffer if h.row.id == lease.id), None))
        if held is not None:
            held.lease, held.lease_until = lease, lease_until
        elif lease.id in {old.id for old in self.outbox.leases()}:
            self.outbox.adopt(lease)
        else:
            return False
        log.warning("job %d was reserved again after this worker stalled; kept", lease.id)
        return True

    def _depth(self) -> int:
        """Tasks to queue per child: 1, or a few when jobs take milliseconds."""
        if self.avg_runtime is None or self.options.memory_mb is not None:
            return 1  # a child replaced for its memory must have nothing queued
        return max(1, min(_MAX_DEPTH, int(_PIPELINE_SECONDS / max(self.avg_runtime, 1e-6))))

    def _assign(self) -> None:
        # Idle children first, so work spreads; then queue more where jobs are short.
        for child in self.pool.idle():
            if self.hooks:
                self.pool.give(child, self.hooks.popleft(), _HOOK_TIMEOUT)
            elif not self._give_job(child):
                return
        depth = self._depth()
        if depth > 1:
            for child in self.pool.children:
                while len(child.tasks) < depth and self._give_job(child, queued=True):
                    pass

    def _give_job(self, child: Child, *, queued: bool = False) -> bool:
        if not self.buffer or self.stopping:
            return False
        head = self.buffer[0]
        if queued and len(head.row.payload) > _PIPELINE_BYTES:
            return False
        start_by = head.lease_until - self._lease_margin()
        if time.monotonic() >= start_by:
            # This worker was stopped a while (SIGSTOP, a paused VM, a stuck
            # statement): the lease may be another worker's now. Renew first;
            # the heartbeat drops the jobs whose leases were lost.
            self.next_beat = 0.0
            return False
        held = self.buffer.popleft()
        payload = held.payload
        locks = frozenset(key for key, _, _ in held.locks) if held.locks else frozenset()
        self.pool.give(child, RunJob(held.row.id, held.row.job, payload.args, payload.kwargs,
                                     held.row.attempts, held.timeout, locks, start_by),
                       held.timeout)
        self.running[held.row.id] = held
        if held.job.unique and held.job.unique_until == "processing":
            self._note_write()
            self.outbox.writes.append((held.lease, self._drop_unique_key))
        return True

    def _requeue(self, tasks: list[Any]) -> None:
        """Put back tasks that were queued in a child that died before starting them."""
        for task in reversed(tasks):
            if isinstance(task, RunJob):
                held = self.running.pop(task.job_id, None)
                if held is not None:
                    self.buffer.appendleft(held)
            else:
                self.hooks.appendleft(task)

    def _lease_margin(self) -> float:
        """How long before its lease runs out a job may no longer be started."""
        return min(1.0, self.options.retry_after / 10)

    def _holding(self) -> list[Held]:
        """The jobs this worker holds and has not finished with."""
        return [*self.buffer, *self.running.values(),
                *(held for _, held in self.uncommitted.values())]

    def _beat(self) -> None:
        now = time.monotonic()
        if now < self.next_beat:
            return
        self.next_beat = now + self.options.heartbeat_every
        try:
            self._renew_leases(now)
            self._renew_locks()
            if self.registry.beat(self.id) and not self.stopping:
                self._stop("restart requested")
            self.registry.prune(silent_for=_DEAD_AFTER)
            if now >= self.next_housekeeping:
                self.next_housekeeping = now + _HOUSEKEEPING_EVERY
                Locks(self.store).prune()  # expired rows hold nothing; keep the table small
        except DB_ERRORS as exc:
            wait = self.health.failed("renew leases", exc)
            self.next_beat = now + min(self.options.heartbeat_every, wait)
            return
        self.health.succeeded()

    def _renew_leases(self, now: float) -> None:
        """Renew every lease held; drop the jobs not started whose lease was lost."""
        holding = self._holding()
        leases = [held.lease for held in holding] + self.outbox.leases()
        renewed = self.store.heartbeat(leases, self.options.retry_after)
        until = now + self.options.retry_after  # `now` was read before the statement
        lost = []
        for held in holding:
            if held.row.id in renewed:
                held.lease_until = until
            else:
                lost.append(held)
        if len(renewed) < len(leases):
            self._drop_lost(lost, len(leases) - len(renewed))

    def _drop_lost(self, lost: list[Held], count: int) -> None:
        """Another worker took these jobs after this one stalled past --retry-after.

        One not started yet is dropped: it is the other worker's to run. One
        running cannot be recalled: it goes on, and may run beside the other's
        run; writing its outcome changes nothing (the lease is fenced).
        """
        gone = {held.row.id for held in lost}
        waiting = [held for held in self.buffer if held.row.id in gone]
        if waiting:
            self.buffer = deque(held for held in self.buffer if held.row.id not in gone)
            for held in waiting:
                self._unlock(held)
        log.warning("%d job lease(s) were lost to other workers: this worker stalled longer "
                    "than --retry-after; %d job(s) not yet started were dropped, %d running "
                    "one(s) may also run elsewhere", count, len(waiting),
                    sum(held.row.id in gone for held in self.running.values()))

    def _renew_locks(self) -> None:
        by_ttl: dict[float, list[tuple[str, str]]] = {}
        holding = self._holding()
        for held in holding:
            for key, owner, ttl in held.locks:
                by_ttl.setdefault(ttl, []).append((key, owner))
        renewed = sum(self.locks.renew(locks, ttl) for ttl, locks in by_ttl.items())
        if renewed < sum(len(locks) for locks in by_ttl.values()):
            self._lost_locks(holding)

    def _lost_locks(self, holding: list[Held]) -> None:
        """Some locks expired while this worker stalled, and may be another's now.

        A job that has not started yet goes back to the queue (its attempt not
        counted); one already running cannot be stopped safely and goes on.
        """
        kept = self.locks.still_held(
            [(key, owner) for held in holding for key, owner, _ in held.locks])
        for held in holding:
            lost = [key for key, owner, _ in held.locks if (key, owner) not in kept]
            if not lost:
                continue
            held.locks = [lock for lock in held.locks if lock[0] not in lost]
            if held in self.buffer:
                log.warning("job %d (%s) lost its lock %s while it waited; put back",
                            held.row.id, held.row.job, lost[0])
                self.buffer.remove(held)
                self._give_back([held])
            else:
                log.warning("job %d (%s) lost its lock %s while it ran (this worker "
                            "stalled): another job with that key may run beside it",
                            held.row.id, held.row.job, lost[0])

    def _flush(self) -> None:
        now = time.monotonic()
        started = self._uncounted(now)
        if (not self.outbox and not started) or now < self.next_flush:
            return
        # Completions wait a little to share one DELETE; failures and retries
        # go at once (a retry may be due now), and so does everything when no
        # other work is in hand. A job that has run a while gets its attempt
        # counted (see Store.complete).
        due = (started or self.outbox.writes or len(self.outbox) >= _FLUSH_BATCH
               or self.stopping or (not self.running and not self.buffer)
               or now - self.first_unflushed >= _FLUSH_DELAY)
        if not due:
            return
        try:
            self.outbox.flush(self.store.complete, [(h.lease, h.row.attempts) for h in started])
        except DB_ERRORS as exc:
            self.next_flush = now + self.health.failed("record job outcomes", exc)
            return
        for held in started:
            held.counted = True
        self.health.succeeded()

    def _next_count_due(self) -> float | None:
        """When the attempt of a running job is next due to be counted."""
        due = [began + _FLUSH_DELAY for task, began in self.pool.started()
               if isinstance(task, RunJob) and not getattr(
                   self.running.get(task.job_id), "counted", True)]
        return min(due, default=None)

    def _uncounted(self, now: float) -> list[Held]:
        """Running jobs whose attempt the table does not count yet, started at
        least _FLUSH_DELAY ago. Those started since then are not counted yet:
        most end before that, and their outcome says all."""
        started = []
        for task, began in self.pool.started():
            if isinstance(task, RunJob) and now - began >= _FLUSH_DELAY:
                held = self.running.get(task.job_id)
                if held is not None and not held.counted:
                    started.append(held)
        return started

    def _check_limits(self) -> None:
        if self.stopping:
            return
        options = self.options
        if options.max_jobs is not None and self.processed >= options.max_jobs:
            self._stop(f"processed {self.processed} job(s)")
        elif options.max_time is not None and time.monotonic() - self.started >= options.max_time:
            self._stop(f"ran for {options.max_time:g} s")
        # Done jobs whose commit is awaited are not over yet: a failed commit
        # puts them back for an immediate retry.
        elif (options.stop_when_empty and self.drained and not self.buffer and not self.running
              and not self.uncommitted and not self.hooks):
            self._stop("queue empty")
        elif options.stop_when_drained and self.queues_empty and not self._in_hand():
            self._stop("queues drained")

    def _wait_timeout(self) -> float:
        if self._finished():
            return 0.0  # nothing left to wait for: the loop ends after this turn
        now = time.monotonic()
        wake = [self.next_beat, now + self.options.sleep]
        if len(self.running) < self.options.concurrency and not self.stopping:
            wake.append(self.next_poll)
        if self.outbox and self.running:
            wake.append(max(self.first_unflushed + _FLUSH_DELAY, self.next_flush))
        count_due = self._next_count_due()
        if count_due is not None:  # count a long job's attempt in time
            wake.append(max(count_due, self.next_flush))
        if self.stopping:
            wake.append(self.stop_deadline)
        deadline = self.pool.next_deadline()
        if deadline is not None:
            wake.append(deadline)
        return max(0.0, min(wake) - now)

    # --- outcomes -----------------------------------------------------------------

    def _on_answer(self, child: Child, task: Any, answer: Finished, runtime: float) -> None:
        if isinstance(task, RunHook):
            if answer.kind != "done":
                log.error("on_failure hook of job %d raised %s: %s", task.failure.job_id,
                          answer.exception_class, answer.message)
        else:
            held = self.running.pop(task.job_id, None)
            if held is None:
                return
            if answer.kind == "expired":
                log.debug("job %d (%s) was not started: its lease may have run out while "
                          "it waited; put back", held.row.id, held.row.job)
                self._give_back([held])
                return
            self.avg_runtime = runtime if self.avg_runtime is None else (
                0.9 * self.avg_runtime + 0.1 * runtime)
            self.processed += 1
            held.runtime = runtime
            if answer.uncommitted:
                self.uncommitted[held.row.id] = (child, held)
            elif answer.kind == "done":
                self._completed(held)
            else:
                self._ended(held, answer)
        limit = self.options.memory_mb
        if (limit is not None and answer.rss_mb > limit and not child.tasks
                and all(owner is not child for owner, _ in self.uncommitted.values())):
            log.info("child using %.0f MB (over --memory %g): replacing it", answer.rss_mb, limit)
            self.pool.retire(child)

    def _completed(self, held: Held) -> None:
        self._note_write()
        self._unlock(held)
        self.outbox.completions.append(Completion(held.lease, held.row.job, held.runtime))

    def _on_committed(self, committed: Committed) -> None:
        for job_id in committed.job_ids:
            _, held = self.uncommitted.pop(job_id, (None, None))
            if held is None:
                continue
            if committed.failure is None:
                self._completed(held)
            else:
                self._ended(held, committed.failure)

    def _lost_with(self, child: Child) -> None:
        """A child died with an open transaction: its done idempotent jobs were
        rolled back with it. Not their failure: they go back without using a try."""
        for job_id, (owner, held) in list(self.uncommitted.items()):
            if owner is child:
                del self.uncommitted[job_id]
                log.warning("job %d (%s) was rolled back when its process died; it runs again",
                            job_id, held.row.job)
                self._ended(held, Finished("release"))

    def _committing(self) -> list[Child]:
        """Children holding done idempotent jobs in a transaction not yet committed."""
        owners = {id(child): child for child, _ in self.uncommitted.values()}
        return list(owners.values())

    def _kill_stuck_commits(self) -> None:
        """An idle child commits its jobs at once; one that has not within
        _COMMIT_TIMEOUT (a hung COMMIT, say) would hold their leases and locks
        for ever. Its jobs run again: their idempotency keys make that safe."""
        now = time.monotonic()
        for child in self._committing():
            if not child.tasks and now - child.answered >= _COMMIT_TIMEOUT:
                log.error("a child has not committed its idempotent jobs within %.0f s; "
                          "killing it", _COMMIT_TIMEOUT)
                self._requeue(self.pool.kill(child)[2])
                self._lost_with(child)

    def _on_timeout(self, child: Child) -> None:
        task, how, unstarted = self.pool.kill(child)
        self._lost_with(child)
        self._requeue(unstarted)
        held = self.running.pop(task.job_id, None) if isinstance(task, RunJob) else None
        if held is not None:
            message = f"job ran longer than its timeout of {held.timeout:g} s and was killed"
            self.processed += 1
            self._ended(held, Finished("timeout", exception_class="dbqueue.JobTimeout",
                                       message=message,
                                       traceback=f"{JobTimeout.__name__}: {message}"))
        elif isinstance(task, RunHook):
            log.error("on_failure hook of job %d timed out (%s)", task.failure.job_id, how)

    def _on_death(self, task: Any, how: str) -> None:
        held = self.running.pop(task.job_id, None) if isinstance(task, RunJob) else None
        if held is not None:
            message = f"the process running the job died ({how})"
            self.processed += 1
            self._ended(held, Finished("crash", exception_class="dbqueue.WorkerCrashed",
                                       message=message,
                                       traceback=f"{WorkerCrashed.__name__}: {message}"))
        elif isinstance(task, RunHook):
            log.error("on_failure hook of job %d died (%s)", task.failure.job_id, how)

    def _abandon_running(self) -> None:
        """The grace period is over: kill what still runs and put its jobs back."""
        committing = self._committing()
        for child in list(self.pool.children):
            if child.tasks or any(child is owner for owner in committing):
                self.pool.kill(child)
                self._lost_with(child)
        for held in self.running.values():
            log.warning("job %d (%s) did not finish within the grace period; put back",
                        held.row.id, held.row.job)
            self._unlock(held)
            self.outbox.writes.append((held.lease, partial(self._release, held, 0.0, False, "")))
        self.running.clear()

    def _ended(self, held: Held, answer: Finished) -> None:
        """The attempt ended without completing the job: retry, release or fail it."""
        self._note_write()
        self._unlock(held)
        ended = Ended(answer.kind, held.row.attempts, answer.delay)  # type: ignore[arg-type]
        failure = Failure(answer.exception_class, answer.message, answer.traceback)
        decision = decide(ended, held.rules, held.db_now())
        if isinstance(decision, GiveUp):
            if decision.why:
                failure = Failure(failure.exception_class,
                                  f"{failure.message} ({decision.why})", failure.traceback)
            self._record_failure(held, failure, ran=True)
            return
        why = answer.message if ended.kind == "release" else (
            f"attempt {held.row.attempts} failed ({failure.exception_class}: {failure.message})")
        self.outbox.writes.append((held.lease, partial(
            self._release, held, decision.delay, decision.counts, why)))
        self.drained = False  # it may be ready again at once: look before stopping when empty

    def _record_failure(self, held: Held, failure: Failure, *, ran: bool) -> None:
        """Fail the job for good; ``ran`` says whether this attempt started (and counts)."""
        self._note_write()
        self.outbox.writes.append((held.lease, partial(self._fail, held, failure, ran)))
        if held.job is not None and held.job.on_failure is not None:
            self.hooks.append(RunHook(JobFailure(
                held.row.id, held.row.job, held.payload.args, held.payload.kwargs,
                held.row.attempts if ran else held.row.attempts - 1,
                failure.exception_class, failure.message)))

    # The outbox's writes: each is handed the lease its job is held by when it
    # runs, and logs what it recorded once it is recorded.

    def _release(self, held: Held, delay: float, counts: bool, why: str, lease: Lease) -> None:
        # The attempt's number if it counts; one less if not (a release, a job
        # put back unfinished), whatever the heartbeat counted meanwhile.
        attempts = held.row.attempts if counts else held.row.attempts - 1
        if not self.store.release(lease, delay, attempts):
            return  # another worker holds it now: nothing of ours to record
        if counts:
            log.info("job %d (%s) %s; retrying in %.1f s", held.row.id, held.row.job, why, delay)
        else:
            log.debug("job %d (%s) released for %.1f s%s", held.row.id, held.row.job, delay,
                      f": {why}" if why else "")

    def _fail(self, held: Held, failure: Failure, ran: bool, lease: Lease) -> None:
        row = held.row
        attempts = row.attempts if ran else row.attempts - 1
        if not self.store.fail(row, lease.token, failure, self.name, attempts):
            return
        if ran:
            log.warning("job %d (%s) failed after %d attempt(s)%s: %s: %s", row.id, row.job,
                        attempts, f" in {duration(held.runtime)}" if held.runtime else "",
                        failure.exception_class, failure.message)
        else:
            log.warning("job %d (%s) cannot run: %s", row.id, row.job, failure.message)

    def _drop_unique_key(self, lease: Lease) -> None:
        self.store.drop_unique_keys([lease])

    def _note_write(self) -> None:
        if not self.outbox:
            self.first_unflushed = time.monotonic()


