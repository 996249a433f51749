"""Handing reserved jobs to children, and taking in what became of them.

Idle children first, so that work spreads; then, when jobs take
milliseconds, a few more queued in each child's pipe so that no child waits
while the supervisor talks to the database (only jobs of kinds seen to be
short, and never behind a slow one). A job is handed out only while
its lease certainly holds (by both clocks, see worker.clock); every answer,
death and timeout moves the job along the ledger and goes to the recorder.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from ..errors import JobTimeout, WorkerCrashed
from .childend import Child, Task
from .health import DB_ERRORS, LONGEST_WAIT, Health
from .ledger import Entry, Ledger, State
from .messages import Committed, Finished, RunHook, RunJob
from .options import WorkerOptions
from .pool import Ended, Pool
from .recorder import Recorder
from .reserver import STALLED_AFTER, Reserver
from .runtimes import Runtimes
from .sidetasks import LeaseRenewal

log = logging.getLogger("dbqueue.worker")

# Queue about this much work in each child when jobs are short: enough to
# outlast the supervisor's round trips to the database (a reservation of a few
# hundred rows takes milliseconds), so that no child waits for them.
_PIPELINE_SECONDS = 0.05
_MAX_DEPTH = 256
_PIPELINE_BYTES = 2048  # larger payloads wait for an idle child: a full pipe would block us
_QUEUED_SECONDS = 0.02
"""A job waits in a child's pipe behind another only if both are of kinds
that take less than this here on average: a slow job, or one not seen yet,
waits for an idle child, and none waits behind it."""
_HOOK_TIMEOUT = 60.0
COMMIT_TIMEOUT = 60.0  # seconds an idle child may take to commit its idempotent jobs


def _failure(kind: str, error: type[Exception], message: str) -> Finished:
    return Finished(kind, exception_class=f"dbqueue.{error.__name__}", message=message,
                    traceback=f"{error.__name__}: {message}")


class Handout:
    def __init__(self, pool: Pool, options: WorkerOptions, *, ledger: Ledger,
                 recorder: Recorder, reserver: Reserver, renewal: LeaseRenewal,
                 health: Health, hooks: deque[RunHook]) -> None:
        self.pool = pool
        self.options = options
        self.ledger = ledger
        self.recorder = recorder
        self.reserver = reserver
        self.renewal = renewal
        self.health = health
        self.runtimes: Runtimes = reserver.runtimes
        self.hooks = hooks
        self.margin = min(1.0, options.retry_after / 10)
        self.stall_check_at = 0.0
        """When (monotonic) to look again whether the children are stalled."""

    # --- handing out -----------------------------------------------------------------

    def assign(self, *, jobs: bool = True) -> None:
        """Give children work: failure hooks, and reserved jobs unless ``jobs``
        is False (a stopping worker starts none: it gives them back)."""
        for child in self.pool.idle():
            if self.hooks:
                self.pool.give(child, self.hooks.popleft(), _HOOK_TIMEOUT)
            elif not jobs or not self._give_job(child):
                return
        depth = self._depth()
        if jobs and depth > 1:
            for child in self.pool.children:
                while (len(child.tasks) < depth and not child.timed_out
                       and self._give_job(child, queued=True)):
                    pass

    def hand_back_if_stalled(self, now: float) -> None:
        """The prefetch follows the average runtime of the jobs run so far: a
        worker that ran short jobs reserves slow ones, or kinds it has never
        run, ahead too. Once each child has run its current job STALLED_AFTER
        seconds, the jobs reserved ahead go back to the queue, where another
        worker may take them, and none are reserved ahead until a child is
        free. Looked at every tenth of a second (see stall_check_at)."""
        if now < self.stall_check_at:
            return
        self.stall_check_at = now + 0.1
        # Jobs the ledger counts as running, as the reservation does: a child
        # busy with a failure hook leaves a job's place free, and the jobs
        # reserved for it would be reserved again at once.
        runs = [(began, begun) for task, began, begun in self.pool.started()
                if type(task) is RunJob and self._running(task) is not None]
        self.reserver.stalled = len(runs) >= self.options.concurrency and all(
            begun and now - began >= STALLED_AFTER for began, begun in runs)
        if self.reserver.stalled and self.ledger.reserved and not self.health.failing:
            log.debug("every child runs a long job: %d reserved job(s) go back to the queue",
                      len(self.ledger.reserved))
            self.recorder.give_back(list(self.ledger.reserved))

    def _depth(self) -> int:
        """Tasks to queue per child: 1, or a few when jobs take milliseconds."""
        runtime = self.reserver.avg_runtime
        if runtime is None or self.options.memory_mb is not None:
            return 1  # a child replaced for its memory must have nothing queued
        return max(1, min(_MAX_DEPTH, int(_PIPELINE_SECONDS / max(runtime, 1e-6))))

    def _give_job(self, child: Child, *, queued: bool = False) -> bool:
        while self.ledger.reserved and self._cancelled(self.ledger.reserved[0]):
            pass
        if not self.ledger.reserved:
            return False
        head = self.ledger.reserved[0]
        if queued and not self._may_queue(head, child):
            return False
        # Inline, not Deadline methods: this runs for every job handed out.
        margin = self._lease_margin()
        start_by, start_by_wall = head.lease_until.mono - margin, head.lease_until.wall - margin
        if time.monotonic() >= start_by or time.time() >= start_by_wall:
            # This worker was stopped a while (SIGSTOP, a paused VM, a stuck
            # statement): the lease may be another worker's now. Renew first
            # (unless renewing has just failed: it is retried in its own time);
            # the renewal drops the jobs whose leases were lost.
            if not self.health.failing:
                self.renewal.soon()
            return False
        entry = self.ledger.start(child)
        locks = frozenset(key for key, _, _ in entry.locks) if entry.locks else frozenset()
        self.pool.give(child, RunJob(entry.id, entry.row.job, entry.row.payload,
                                     entry.row.attempts, entry.timeout, locks, start_by,
                                     start_by_wall),
                       entry.timeout)
        return True

    def _may_queue(self, entry: Entry, child: Child) -> bool:
        """Whether ``entry`` may wait in ``child``'s pipe behind its tasks.

        Only a job handed to an idle child can be slow: every job queued
        behind it is short. So the first of the child's tasks says whether
        all of them are."""
        if len(entry.row.payload) > _PIPELINE_BYTES:
            return False
        if self.runtimes.of_job(entry.row.job) >= _QUEUED_SECONDS:
            return False
        return not child.tasks or self.runtimes.of(child.tasks[0][0]) < _QUEUED_SECONDS

    def _cancelled(self, entry: Entry) -> bool:
        """Complete ``entry`` unrun if its batch was cancelled since it was
        reserved (see worker.cancels); True if so."""
        batch_id = entry.batch_id
        if batch_id is None:
            return False
        try:
            if not self.reserver.cancels.cancelled(batch_id, time.monotonic()):
                return False
        except DB_ERRORS as exc:  # cannot tell: it was not cancelled when reserved
            self.health.failed("check for a cancelled batch", exc)
            return False
        entry.skipped = True
        self.recorder.dropped(entry, "its batch was cancelled")
        return True

    def _lease_margin(self) -> float:
        """How long before its lease runs out a job may no longer be started:
        a moment, or, while the database does not answer, long enough that
        the lease outlives the renewal's next try or two."""
        if self.health.failing:
            return min(self.options.heartbeat_every + LONGEST_WAIT, self.options.retry_after / 2)
        return self.margin

    # --- what came back ----------------------------------------------------------------

    def take_in(self, ended: Ended) -> None:
        """Everything ``Pool.wait`` saw, then the children overdue or stuck."""
        self._take(ended)
        for child in self.pool.overdue():
            self._timed_out(child)
        self._kill_stuck_commits()

    def _take(self, ended: Ended) -> None:
        """What came back. A child's death fails the job it ran as a crash,
        unless it was killed for its job's timeout."""
        for child, task, answer, runtime in ended.finished:
            self._answered(child, task, answer, runtime)
        for committed in ended.committed:
            self._committed(committed)
        for task in ended.held:  # done: the child died holding the answer
            entry = self._running(task)
            if entry is not None:
                self.recorder.completed(entry)
        for child, lost, how in ended.died:
            if child.timed_out and lost is not None:
                self._timed_out_job(lost, how)
            elif lost is not None:
                self._died(lost, how)
            self._rolled_back(child)
        self._requeue(ended.unstarted)

    def _running(self, task: Task) -> Entry | None:
        if isinstance(task, RunHook):
            return None
        entry = self.ledger.get(task.job_id)
        return entry if entry is not None and entry.state == State.RUNNING else None

    def _answered(self, child: Child, task: Task, answer: Finished, runtime: float) -> None:
        entry = self._running(task)
        if isinstance(task, RunHook):
            if answer.kind != "done":  # kept nowhere else: with -v, its traceback too
                log.error("on_failure hook of job %d raised %s: %s%s", task.failure.job_id,
                          answer.exception_class, answer.message,
                          f"\n{answer.traceback.rstrip()}"
                          if answer.traceback and log.isEnabledFor(logging.DEBUG) else "")
        elif entry is not None and answer.kind == "expired":
            # Put back as it was (had the renewal counted it meanwhile, the
            # count is taken back): it never started.
            self.recorder.released(entry, 0.0, False, "not started: its lease may have run "
                                   "out while it waited")
        elif entry is not None:
            self.recorder.began(entry)
            self.reserver.ran(task, runtime)
            entry.runtime, entry.result = runtime, answer.result
            if answer.uncommitted:
                self.ledger.await_commit(entry)
            elif answer.kind == "done":
                self.recorder.completed(entry)
            else:
                self._ended(entry, answer)
        limit = self.options.memory_mb
        if (limit is not None and answer.rss_mb > limit and not child.tasks
                and not self._committing(child) and child in self.pool.children):
            log.info("child using %.0f MB (over --memory %g): replacing it", answer.rss_mb, limit)
            self.pool.retire(child)

    def _committed(self, committed: Committed) -> None:
        for job_id in committed.job_ids:
            entry = self.ledger.get(job_id)
            if entry is None or entry.state != State.UNCOMMITTED:
                continue
            if committed.failure is None:
                self.recorder.completed(entry)
            else:
                self._ended(entry, committed.failure)

    def _committing(self, child: Child) -> list[Entry]:
        """Done idempotent jobs in ``child``'s transaction, not yet committed."""
        return [entry for entry in self.ledger.in_state(State.UNCOMMITTED)
                if entry.child is child]

    def _rolled_back(self, child: Child) -> None:
        """A child died with an open transaction: its done idempotent jobs were
        rolled back with it. Not their failure: they go back without using a try."""
        for entry in self._committing(child):
            log.warning("job %d (%s) was rolled back when its process died; it runs again",
                        entry.id, entry.row.job)
            self._ended(entry, Finished("release"))

    def _kill_stuck_commits(self) -> None:
        """An idle child commits its jobs at once; one that has not within
        COMMIT_TIMEOUT (a hung COMMIT, say) would hold their leases and locks
        for ever. Its jobs run again: their idempotency keys make that safe."""
        if not self.ledger.count(State.UNCOMMITTED):
            return
        now = time.monotonic()
        owners = {id(entry.child): entry.child for entry in self.ledger.in_state(State.UNCOMMITTED)}
        for child in owners.values():
            if not child.tasks and now - child.answered >= COMMIT_TIMEOUT:
                log.error("a child has not committed its idempotent jobs within %.0f s; "
                          "killing it", COMMIT_TIMEOUT)
                self._take(self.pool.kill(child))

    def _timed_out(self, child: Child) -> None:
        child.timed_out = True
        self._take(self.pool.kill(child))

    def _timed_out_job(self, task: Task, how: str) -> None:
        entry = self._running(task)
        if entry is not None:
            self._ended(entry, _failure("timeout", JobTimeout, f"job ran longer than its "
                                        f"timeout of {entry.timeout:g} s and was killed"))
        elif isinstance(task, RunHook):
            log.error("on_failure hook of job %d timed out (%s)", task.failure.job_id, how)

    def _died(self, task: Task, how: str) -> None:
        entry = self._running(task)
        if entry is not None:
            self._ended(entry, _failure("crash", WorkerCrashed,
                                        f"the process running the job died ({how})"))
        elif isinstance(task, RunHook):
            log.error("on_failure hook of job %d died (%s)", task.failure.job_id, how)

    def _requeue(self, tasks: list[Any]) -> None:
        """Put back tasks that were queued in a child that died before starting them."""
        for task in reversed(tasks):
            entry = self._running(task)
            if entry is not None:
                self.ledger.unstart(entry)
            elif isinstance(task, RunHook):
                self.hooks.appendleft(task)

    def abandon(self, why: str = "did not finish within the grace period") -> None:
        """The grace period is over (or was cut short): kill what still runs
        and put its jobs back."""
        for child in list(self.pool.children):
            if child.tasks or self._committing(child):
                ended = self.pool.kill(child)
                ended.died.clear()  # its job is not failed: put back below
                ended.unstarted.clear()  # (still running in the ledger: put back too)
                self._take(ended)
                self._rolled_back(child)
        for entry in self.ledger.in_state(State.RUNNING):
            log.warning("job %d (%s) %s; put back", entry.id, entry.row.job, why)
            self.recorder.released(entry, 0.0, False, "")

    def _ended(self, entry: Entry, answer: Finished) -> None:
        """The attempt ended without completing the job: retry, release or fail it."""
        self.recorder.began(entry)  # it ran (a death, a timeout, a rollback)
        if self.recorder.ended(entry, answer):
            self.reserver.look_again()  # it may be ready again at once: look before stopping
