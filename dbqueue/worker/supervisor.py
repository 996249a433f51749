"""The supervisor: one process per host that leases jobs and feeds child processes.

It owns every database write about a job: children only run code. The jobs
it holds are in one ledger (worker.ledger); each turn of its loop

1. takes in the outcomes written since the last turn, and starts writing
   those that are due (the completer);
2. runs the side tasks that are due (lease renewal first: after a stall it
   keeps what is still ours, so the reservation cannot take it twice);
3. takes in the rows of the last reservation, starts the next one if more
   jobs are wanted (the reserver), and hands jobs to children (the handout);
4. waits for an answer, a deadline, a signal or the end of a write or a
   reservation, and takes in what came back.

Once registered, the supervisor sends its first reservation, then starts its
start-up chores (worker.chores) on a thread of its own, beside its first
turns: none is needed before the first job.

On a database server the writes and the reservations run on threads of their
own (worker.background), one of each at a time, so that the server's work
overlaps the supervisor's; everything they mean for the ledger is decided
here, on the main thread. A job released for an immediate retry while a
reservation is on its way is found by the next one.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections import deque
from typing import Any

from ..errors import NotMigrated
from ..store import WorkerInfo, WorkerRegistry
from ..store.locks import Locks
from .background import Bound
from .chores import StartUpChores
from .completer import FLUSH_DELAY, BatchCompleter
from .handout import Handout
from .health import Health
from .joblocks import JobLocks
from .ledger import Ledger, State
from .messages import RunHook
from .options import WorkerOptions
from .pool import Pool
from .recorder import Recorder
from .records import Counted
from .registration import Registration
from .reserver import Reserver
from .scheduler import Scheduler
from .sidetasks import Control, LeaseRenewal, Pruning, SideTask
from .signals import REPEAT_AFTER, StopSignals
from .wakeup import Wakeup

log = logging.getLogger("dbqueue.worker")


class Supervisor:
    def __init__(self, app: Any, app_reference: str, options: WorkerOptions,
                 signals: StopSignals | None = None) -> None:
        self.signals = signals or StopSignals()
        """Installed by ``dbqueue work`` before anything else, or at ``run``."""
        # The pool starts the fork server (if `dbqueue work` has not already):
        # before the store, whose engines import the database driver, so that
        # the fork server's imports overlap that instead of following it.
        self.pool = Pool(app_reference, options.concurrency,
                         measure_memory=options.memory_mb is not None,
                         stop_requested=lambda: self.signals.received is not None)
        self.app, self.store, self.options = app, app.worker_store(), options
        self.registry = WorkerRegistry(self.store)
        self.health = Health()
        self.id = secrets.token_hex(8)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.registration = Registration(self.store, self.registry, self.health, self.signals,
                                         WorkerInfo(self.id, socket.gethostname(), os.getpid(),
                                                    ",".join(options.queues),
                                                    options.concurrency))
        self.ledger = Ledger()
        self.hooks: deque[RunHook] = deque()
        self.completer = BatchCompleter(self.store, self.health, self.name)
        apart = not self.store.dialect.embedded  # see worker.sidetasks
        # The longest the supervisor's own thread waits on the database, and
        # how long the stop may wait on it after the grace period: a server
        # that hangs never answers (see worker.background).
        self.wait_at_most = app.settings.network_timeout
        # Meanwhile the children's job timeouts are kept all the same.
        bound = Bound(self.wait_at_most if apart else None, meanwhile=self.pool.stop_overdue)
        self.recorder = Recorder(self.ledger, self.completer, self.store, self.health,
                                 self.hooks, bound=bound)
        job_locks = JobLocks(app, Locks(self.store), self.recorder, self.health, self.id,
                             options.heartbeat_every)
        job_locks.bound = bound
        self.wakeup = Wakeup(self.store, options.queues)
        self.reserver = Reserver(app, options, self.id, ledger=self.ledger,
                                 recorder=self.recorder, job_locks=job_locks,
                                 health=self.health, wakeup=self.wakeup)
        self.wakeup.bound = self.reserver.cancels.bound = bound
        self.renewal = LeaseRenewal(options.heartbeat_every, self.health, ledger=self.ledger,
                                    recorder=self.recorder, job_locks=job_locks,
                                    lease=options.retry_after, completer=self.completer,
                                    apart=apart)
        self.control = Control(options.heartbeat_every, self.health, registry=self.registry,
                               worker_id=self.id, apart=apart)
        self.pruning = Pruning(self.health, store=self.store, apart=apart)
        self.side_tasks: tuple[SideTask, ...] = (self.renewal, self.control, self.pruning)
        self.scheduler: Scheduler | None = None
        if options.schedule and app.schedules:
            self.scheduler = Scheduler(self.health, store=self.store,
                                       schedules=list(app.schedules.values()), apart=apart)
            self.side_tasks += (self.scheduler,)
        self.handout = Handout(self.pool, options, ledger=self.ledger, recorder=self.recorder,
                               reserver=self.reserver, renewal=self.renewal,
                               health=self.health, hooks=self.hooks)
        self.stopping: str | None = None
        self.stop_deadline = 0.0
        self.cut_short = ""
        """Why the grace period ended early, if it did."""
        self.outdated: NotMigrated | None = None
        """Why the worker stopped, if its tables were taken back under it."""
        self.chores = StartUpChores(app, options, self.registry, self.pruning)
        self.started = time.monotonic()

    # --- life cycle -------------------------------------------------------------

    def run(self) -> int:
        """Work until told to stop; return the process exit code (0)."""
        self.signals.install()
        self.pool.start_aside()  # the children start while the worker registers
        registered = False
        try:
            registered = self._register()
        finally:
            if not registered:  # stopped first, or cannot work here
                self.pool.stop()
        if not registered:
            log.info("stopped before it started (%s)",
                     f"ran for {self.options.max_time:g} s" if self.registration.gave_up
                     else f"received {self.signals.received}")
            return 0
        log.info("worker %s (%s) started: queues %s, concurrency %d", self.id, self.name,
                 ",".join(self.options.queues), self.options.concurrency)
        try:
            # The first reservation goes out before anything else: it takes the
            # connection that registering used, and its round trip overlaps the
            # children's start (what it brings is given back if that fails).
            self.reserver.refill(time.monotonic())
            self.chores.start()
            self.pool.start()  # if it fails, the worker leaves the registry at once, too
            while not self._finished():
                self._turn_unless_outdated()
        finally:
            self._shutdown()
        unrun = self.recorder.failed_unrun
        log.info("worker %s stopped (%s) after %d job(s)%s", self.id, self.stopping,
                 self.ledger.processed, f"; {unrun} more failed without running (see: "
                 "dbqueue failed)" if unrun else "")
        if self.outdated is not None:
            raise self.outdated  # the command's error: exit 1, and how to fix it
        return 0

    def _turn_unless_outdated(self) -> None:
        """A turn; tables taken back under the worker (a migration downgraded
        them) stop it as a signal would: its running jobs finish (within the
        grace period) and are written, and the worker exits with the error.
        What a statement meant for them is left undone, as in an outage."""
        try:
            self._turn()
        except NotMigrated as exc:
            if self.outdated is None:
                self.outdated = exc
                log.error("%s", exc)
            if not self.stopping:
                self._stop("the tables are older than this dbqueue needs")

    def _finished(self) -> bool:
        now = time.monotonic()
        return (self.stopping is not None
                and (not self.reserver.fetching
                     or now >= self._fetch_waited_until(self.stop_deadline))
                and not self.ledger.count(State.RUNNING, State.UNCOMMITTED)
                and (not self._hooks_left() or now >= self.stop_deadline))

    def _fetch_waited_until(self, limit: float) -> float:
        """How long a stop waits for the reservation on its way (its jobs are
        then given back at once): until ``limit`` (monotonic), or, sooner, the
        network timeout after it began, when the database does not answer;
        its jobs then come back when their leases run out."""
        began = self.reserver.fetching_since
        return limit if began is None else min(limit, began + self.wait_at_most)

    def _register(self) -> bool:
        """Join the registry (see Registration.join); False if told to stop
        first, or if --max-time ran out while the database could not be reached."""
        until = (None if self.options.max_time is None
                 else self.started + self.options.max_time)
        if not self.registration.join(until):
            return False
        self.control.done(time.monotonic())  # registered and pruned: its first beat
        self.pruning.done(time.monotonic())  # see worker.chores
        return True

    def _turn(self) -> None:
        self._heed_signals()
        self._flush()
        now = time.monotonic()
        for task in self.side_tasks:
            task.tick(now)
        if self.scheduler is not None and self.scheduler.take_queued():
            self.reserver.look_again()  # ready now: before the queue can count as empty
        if self.wakeup.woken():
            self.reserver.look_again()
        if self.control.restart_requested and not self.stopping:
            self._stop("restart requested")
        # A renewal that has not answered for a whole period leaves this
        # worker's leases in doubt: no new work until it does (the loop goes
        # on timing jobs, reading answers and heeding signals). Else this
        # worker would reserve its own jobs again once their leases lapse,
        # while their outcomes wait to be written under the old ones.
        new_work = not self.stopping and not self.renewal.stuck(now)
        self.reserver.refill(now, reserve=new_work)
        # After the refill, so that at the start the first reservation's round
        # trip overlaps the LISTEN's (see Wakeup.start for the look again).
        if self.wakeup.start(now, failing=self.health.failing):
            self.reserver.look_again()
        # After the refill: its reservation may have run before these jobs were
        # back in the queue (a retry, a next step, a job given back unstarted).
        if self.completer.take_requeued() | self.recorder.take_given_back():
            self.reserver.look_again()
        for due, waits_for_lock in self.completer.take_coming_due():
            self.reserver.expect(due, waits_for_lock=waits_for_lock)
        if self.stopping and self.ledger.reserved:  # rows of a reservation on its way
            self.recorder.give_back(list(self.ledger.reserved))
        self.handout.assign(jobs=new_work)
        if new_work:
            self.handout.hand_back_if_stalled(now)
        self._check_limits()
        wake = (self.signals.wake_fd, self.wakeup.fileno(), self.reserver.fileno(),
                self.completer.fileno(), *(task.fileno() for task in self.side_tasks))
        ended = self.pool.wait(self._wait_timeout(), *(fd for fd in wake if fd is not None))
        self.signals.drain()
        self.handout.take_in(ended)
        if (self.stopping and self.ledger.count(State.RUNNING, State.UNCOMMITTED)
                and time.monotonic() >= self.stop_deadline):
            self.handout.abandon(self.cut_short or "did not finish within the grace period")

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
            self.cut_short = f"was still running at the second {signals.received}"
        elif signals.repeats_ignored:
            signals.repeats_ignored = 0
            log.info("received %s again within %g s of the first: taken as the same request "
                     "(a process manager may have sent both); once more to stop at once",
                     signals.received, REPEAT_AFTER)

    def _stop(self, reason: str) -> None:
        self.stopping = reason
        self.stop_deadline = time.monotonic() + self.options.grace
        # Jobs queued in children and not started come back (Returned), to be
        # given back with the reserved ones.
        self.pool.halt()
        # One task at most runs in each child; the others queued come back.
        running = sum(1 for child in self.pool.children if child.tasks)
        log.info("stopping (%s): %d running job(s) get up to %.0f s to finish", reason,
                 running, self.options.grace)
        self.recorder.give_back(list(self.ledger.reserved))

    def _shutdown(self) -> None:
        # However the database behaves, the stop waits on it for the network
        # timeout at most: what is still on its way then is left to the leases.
        until = time.monotonic() + self.wait_at_most
        # No task is handed out from here on: the children exit meanwhile.
        self.pool.dismiss()
        try:
            try:
                self.reserver.close(self._fetch_waited_until(until))
            finally:  # whatever became of the reservation on its way
                # Tasks a dead child never started, rows of a reservation on its way.
                self.recorder.give_back(list(self.ledger.reserved))
                for entry in self.completer.drain(until=until):
                    self.ledger.forget(entry)
                self.completer.close(until)
                for task in self.side_tasks:  # a statement on its way ends first
                    task.close(until)
            self.chores.join()
            self.registration.leave(until)
            self.completer.tell_unwritten(reservation_left=self.reserver.fetching)
        finally:  # whatever went wrong above, no child outlives the worker
            self.wakeup.stop()
            self.pool.stop()
            self.signals.uninstall()

    # --- outcomes and limits ------------------------------------------------------

    def _flush(self) -> None:
        now = time.monotonic()
        running = [(entry, began) for entry, began, begun in self._running() if begun]
        for entry, _ in running:  # a job unique until processing: its key goes now
            self.recorder.began(entry)
        # A job that has run a while gets its attempt counted (see Completion.started).
        started = [entry for entry, began in running
                   if not entry.counted and not entry.counting and now - began >= FLUSH_DELAY]
        for entry in started:  # one record each, however long the write takes
            entry.counting = True
            self.completer.add(Counted(entry, entry.row.attempts))
        busy = bool(self.ledger.count(State.RESERVED, State.RUNNING)) and not self.stopping
        finished = self.completer.collect()  # a write that ended since the last turn
        if started or self.completer.due(now, busy=busy):
            finished += self.completer.flush(now)
        for entry in finished:
            self.ledger.forget(entry)
        for record in self.completer.take_failed_instead():
            self.recorder.hook_failure(record.entry, record.failure, record.attempts)

    def _running(self) -> list[tuple[Any, float, bool]]:
        """The job each child runs or is about to, since when, and whether it
        has begun.

        One whose attempt the table does not count yet, nor is being counted
        (that write's end wakes the supervisor), is counted FLUSH_DELAY after
        it began: most end before that, and their outcome says all. Only once
        it has begun: one about to begin may yet come back unstarted."""
        runs = []
        for task, began, begun in self.pool.started():
            entry = self.ledger.get(getattr(task, "job_id", -1))
            if entry is not None and entry.state == State.RUNNING:
                runs.append((entry, began, begun))
        return runs

    def _check_limits(self) -> None:
        if self.stopping:
            return
        options, ledger = self.options, self.ledger
        if options.max_jobs is not None and ledger.processed >= options.max_jobs:
            self._stop(f"processed {ledger.processed} job(s)")
        elif options.max_time is not None and time.monotonic() - self.started >= options.max_time:
            self._stop(f"ran for {options.max_time:g} s")
        # Done jobs whose commit is awaited are not over yet: a failed commit
        # puts them back for an immediate retry.
        elif (options.stop_when_empty and self.reserver.drained and not self.reserver.fetching
              and not self.reserver.waiting_for_locks and not self._more_to_come()
              and not ledger.count(State.RESERVED, State.RUNNING, State.UNCOMMITTED)
              and not self.completer.requeues()):
            self._stop("queue empty")
        elif (options.stop_when_drained and self.reserver.queues_empty and not ledger
              and not self.reserver.fetching and not self._more_to_come()):
            self._stop("queues drained")

    def _more_to_come(self) -> bool:
        """Failure hooks to run, or a pass of the scheduler on its way (it may
        queue runs that are due)."""
        return self._hooks_left() or (self.scheduler is not None and self.scheduler.calls.busy)

    def _hooks_left(self) -> bool:
        """Failure hooks waiting for a child, or given to one and not answered."""
        return bool(self.hooks) or any(type(task) is RunHook for child in self.pool.children
                                       for task, _ in child.tasks)

    def _wait_timeout(self) -> float:
        if self._finished():
            return 0.0  # nothing left to wait for: the loop ends after this turn
        now = time.monotonic()
        wake = [now + self.reserver.longest_pause(), *(task.next_at for task in self.side_tasks)]
        if (self.ledger.count(State.RUNNING) < self.options.concurrency and not self.stopping
                and not self.reserver.fetching  # else its end wakes the wait
                and self.reserver.wanted() > 0):
            wake.append(self.reserver.next_poll)
        if self.ledger.reserved and self.handout.stall_check_at > now:  # behind stalled children?
            wake.append(self.handout.stall_check_at)
        flush_at = self.completer.next_wake()
        if flush_at is not None and self.ledger.count(State.RUNNING):
            wake.append(flush_at)
        # Also for one about to begin: the wait ends in time to count it,
        # should it begin meanwhile (looking every FLUSH_DELAY, not at once
        # again and again, while a child is slow to begin it).
        began = [began if begun else max(began, now) for entry, began, begun in self._running()
                 if not entry.counted and not entry.counting]
        if began:  # count a long job's attempt in time
            wake.append(max(min(began) + FLUSH_DELAY, self.completer.retry_at))
        if self.stopping and (self._hooks_left()
                              or self.ledger.count(State.RUNNING, State.UNCOMMITTED)):
            wake.append(self.stop_deadline)  # (else there is nothing left to cut short)
        if self.stopping and self.reserver.fetching:
            wake.append(self._fetch_waited_until(self.stop_deadline))
        deadline = self.pool.next_deadline()
        if deadline is not None:
            wake.append(deadline)
        return max(0.0, min(wake) - now)
