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
from collections import deque
from typing import Any

from ..errors import JobTimeout, WorkerCrashed
from ..store import Lease, ReservedRow, WorkerInfo, WorkerRegistry
from ..store.locks import Locks
from ..store.queues import Queues
from .child import Committed, Finished, RunHook, RunJob
from .clock import Deadline
from .health import DB_ERRORS, LONGEST_WAIT, TRANSIENT, Health
from .intake import Held, admit
from .joblocks import JobLocks
from .options import WorkerOptions
from .pool import Child, Pool
from .queues import QueueChoice
from .recorder import FLUSH_DELAY, Recorder
from .signals import REPEAT_AFTER, StopSignals

log = logging.getLogger("dbqueue.worker")

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
        self.queues = QueueChoice(options.queues, Queues(self.store))
        self.health = Health()
        self._margin = min(1.0, options.retry_after / 10)
        self.id = secrets.token_hex(8)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.signals = StopSignals()
        self.buffer: deque[Held] = deque()
        self.running: dict[int, Held] = {}  # by job id: handed to a child, not yet answered
        # Idempotent jobs that are done, in a child's transaction not yet committed.
        self.uncommitted: dict[int, tuple[Child, Held]] = {}
        self.hooks: deque[RunHook] = deque()
        self.recorder = Recorder(self.store, self.health, self.name, self.hooks)
        self.job_locks = JobLocks(app, Locks(self.store), self.recorder, self.health, self.id,
                                  options.heartbeat_every)
        self.processed = 0
        self.stopping: str | None = None
        self.stop_deadline = 0.0
        self.started = time.monotonic()
        self.next_poll = 0.0
        self.next_beat = 0.0
        self.next_housekeeping = 0.0
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
                if getattr(exc, "lasting", False):
                    raise  # a wrong password or database name: waiting will not help
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
                    if not any(worker.serves(queue) for worker in workers)]
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
        self.recorder.give_back(list(self.buffer))
        self.buffer.clear()

    def _shutdown(self) -> None:
        self.recorder.give_back(list(self.buffer))  # tasks a dead child never started
        self.buffer.clear()
        self.recorder.drain()
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
        # Read before the statement goes out: the lease, counted by the server's
        # clock from when it ran, lasts at least until this.
        lease_until = Deadline.after(self.options.retry_after)
        try:
            rows = self.store.reserve(self.queues.current(), want, token, self.options.retry_after)
            if not rows and self._in_hand() == 0:
                self._look_for_any_job()
        except DB_ERRORS as exc:
            self.next_poll = now + max(self.options.sleep, self.health.failed("reserve jobs", exc))
            return
        self.health.succeeded()
        self.drained = len(rows) < want
        self.next_poll = now + self.options.sleep if self.drained else 0.0
        admitted: list[Held] = []
        held_here = self._held_ids() if rows else set()
        for row in rows:
            if row.id in held_here and self._adopt(row, Lease(row.id, token), lease_until):
                continue
            held, failure = admit(self.app, row, token, lease_until)
            if failure is None:
                admitted.append(held)
            else:
                self.recorder.failed(held, failure, ran=False)
        self.buffer.extend(self.job_locks.take(admitted))
        if self.job_locks.released:  # back in the queue, maybe ready at once
            self.drained = False
        self.processed += self.job_locks.dropped  # they complete without running
        self.job_locks.released = self.job_locks.dropped = 0

    def _in_hand(self) -> int:
        """Jobs and hooks this worker holds, in any state."""
        return (len(self.buffer) + len(self.running) + len(self.uncommitted) + len(self.hooks)
                + len(self.recorder))

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

    def _held_ids(self) -> set[int]:
        """Every job this worker holds a lease on: buffered, running, done but
        not yet written. Gathered once per reservation, so that looking each
        new row up costs nothing (the buffer alone holds hundreds)."""
        return {*self.running, *self.uncommitted, *(held.row.id for held in self.buffer),
                *(lease.id for lease in self.recorder.outbox.leases())}

    def _adopt(self, row: ReservedRow, lease: Lease, lease_until: Deadline) -> bool:
        """Take a new lease on a job this worker still holds under an old one.

        That happens only when this worker stalled past ``retry_after``: it
        goes on under the new token instead of running a second time (a
        reservation counts no attempt). Another worker may have run an attempt
        of it meanwhile: then its run here is the next attempt, not the same.
        """
        held = (self.running.get(lease.id) or self.uncommitted.get(lease.id, (None, None))[1]
                or next((h for h in self.buffer if h.row.id == lease.id), None))
        if held is not None:
            held.lease, held.lease_until, held.lease_lost = lease, lease_until, False
            if row.attempts > held.row.attempts:
                held.row, held.counted = held.row._replace(attempts=row.attempts), False
        elif lease.id in {old.id for old in self.recorder.outbox.leases()}:
            self.recorder.outbox.adopt(lease)
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
        # Inline, not Deadline methods: this runs for every job handed out.
        margin = self._lease_margin()
        start_by, start_by_wall = head.lease_until.mono - margin, head.lease_until.wall - margin
        if time.monotonic() >= start_by or time.time() >= start_by_wall:
            # This worker was stopped a while (SIGSTOP, a paused VM, a stuck
            # statement): the lease may be another worker's now. Renew first
            # (unless renewing has just failed: it is retried in its own time);
            # the heartbeat drops the jobs whose leases were lost.
            if not self.health.failing:
                self.next_beat = 0.0
            return False
        held = self.buffer.popleft()
        payload = held.payload
        locks = frozenset(key for key, _, _ in held.locks) if held.locks else frozenset()
        self.pool.give(child, RunJob(held.row.id, held.row.job, payload.args, payload.kwargs,
                                     held.row.attempts, held.timeout, locks, start_by,
                                     start_by_wall),
                       held.timeout)
        self.running[held.row.id] = held
        self.recorder.started(held)
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
        """How long before its lease runs out a job may no longer be started:
        a moment, or, while the database does not answer, long enough that
        the lease outlives the heartbeat's next try or two."""
        if self.health.failing:
            return min(self.options.heartbeat_every + LONGEST_WAIT, self.options.retry_after / 2)
        return self._margin

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
            self._renew_leases()
            self._lost_locks(self.job_locks.renew(self._holding()))
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

    def _renew_leases(self) -> None:
        """Renew every lease held; drop the jobs not started whose lease was lost."""
        holding = [held for held in self._holding() if not held.lease_lost]
        leases = {held.lease.id: held.lease for held in holding}
        for lease in self.recorder.outbox.leases():  # outcomes not written yet
            leases.setdefault(lease.id, lease)
        until = Deadline.after(self.options.retry_after)  # read before the statement
        renewed = self.store.heartbeat(list(leases.values()), self.options.retry_after)
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
        run; writing its outcome changes nothing (the lease is fenced), and it
        is reported once.
        """
        gone = {held.row.id for held in lost}
        waiting = [held for held in self.buffer if held.row.id in gone]
        if waiting:
            self.buffer = deque(held for held in self.buffer if held.row.id not in gone)
            for held in waiting:
                self.recorder.unlock(held)
        for held in lost:
            held.lease_lost = True
        log.warning("%d job lease(s) were lost to other workers: this worker stalled longer "
                    "than --retry-after; %d job(s) not yet started were dropped, %d running "
                    "one(s) may also run elsewhere", count, len(waiting),
                    sum(held.row.id in gone for held in self.running.values()))

    def _lost_locks(self, lost: list[tuple[Held, str]]) -> None:
        """Some locks expired while this worker stalled, and may be another's now.

        A job that has not started yet goes back to the queue (its attempt not
        counted); one already running cannot be stopped safely and goes on.
        """
        for held, key in lost:
            if held in self.buffer:
                log.warning("job %d (%s) lost its lock %s while it waited; put back",
                            held.row.id, held.row.job, key)
                self.buffer.remove(held)
                self.recorder.give_back([held])
            else:
                log.warning("job %d (%s) lost its lock %s while it ran (this worker "
                            "stalled): another job with that key may run beside it",
                            held.row.id, held.row.job, key)

    def _flush(self) -> None:
        now = time.monotonic()
        # A job that has run a while gets its attempt counted (see Store.complete).
        started = [held for held, began in self._uncounted() if now - began >= FLUSH_DELAY]
        busy = bool(self.running or self.buffer)
        if started or self.recorder.due(now, busy=busy, stopping=bool(self.stopping)):
            self.recorder.flush(now, started)

    def _uncounted(self) -> list[tuple[Held, float]]:
        """Running jobs whose attempt the table does not count yet, with when each
        began. One is counted FLUSH_DELAY after it began: most end before that,
        and their outcome says all."""
        runs = []
        for task, began in self.pool.started():
            held = self.running.get(task.job_id) if isinstance(task, RunJob) else None
            if held is not None and not held.counted:
                runs.append((held, began))
        return runs

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
        if self.recorder and self.running:
            wake.append(self.recorder.next_wake())
        began = [began for _, began in self._uncounted()]
        if began:  # count a long job's attempt in time
            wake.append(max(min(began) + FLUSH_DELAY, self.recorder.next_flush))
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
                # Put back as it was (had the heartbeat counted it meanwhile,
                # the count is taken back): it never started.
                self.recorder.released(held, 0.0, False, "not started: its lease may have run "
                                       "out while it waited")
                return
            self.avg_runtime = runtime if self.avg_runtime is None else (
                0.9 * self.avg_runtime + 0.1 * runtime)
            self.processed += 1
            held.runtime = runtime
            if answer.uncommitted:
                self.uncommitted[held.row.id] = (child, held)
            elif answer.kind == "done":
                self.recorder.completed(held)
            else:
                self._ended(held, answer)
        limit = self.options.memory_mb
        if (limit is not None and answer.rss_mb > limit and not child.tasks
                and all(owner is not child for owner, _ in self.uncommitted.values())):
            log.info("child using %.0f MB (over --memory %g): replacing it", answer.rss_mb, limit)
            self.pool.retire(child)

    def _on_committed(self, committed: Committed) -> None:
        for job_id in committed.job_ids:
            _, held = self.uncommitted.pop(job_id, (None, None))
            if held is None:
                continue
            if committed.failure is None:
                self.recorder.completed(held)
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
            self.recorder.released(held, 0.0, False, "")
        self.running.clear()

    def _ended(self, held: Held, answer: Finished) -> None:
        """The attempt ended without completing the job: retry, release or fail it."""
        if self.recorder.ended(held, answer):
            self.drained = False  # it may be ready again at once: look before stopping
