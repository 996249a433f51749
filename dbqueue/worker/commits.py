"""How a child commits idempotent jobs: alone, or sharing one transaction.

The plain path: an idempotent job's effects, its key and its result commit in
a transaction of its own, before the child answers (OutcomeBatch.run does
that whenever the batch is not *sharing*: on SQLite, or for a while after a
shared commit failed).

The strategy, all of it here: consecutive short idempotent jobs share one
transaction and its one commit. The child answers each "done, uncommitted"
at once, and sends ``Committed`` for the lot after the commit; the supervisor
completes them only then (the ledger's *uncommitted* state). A transaction is
committed as soon as no further short idempotent job is already waiting in
the child's pipe, when it is due (``OutcomeBatch.MAX_JOBS`` or
``MAX_SECONDS``), or before any other task runs.
"""

from __future__ import annotations

import itertools
import traceback
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from .. import serializer
from ..idempotency import CommitFailed, OutcomeBatch
from .messages import Committed, Finished, RunHook, RunJob, class_name, described
from .replies import Replies
from .runtimes import Runtimes


class Commits:
    def __init__(self, app: Any, runtimes: Runtimes) -> None:
        self.app = app
        self.batch = OutcomeBatch(app)
        self.runtimes = runtimes
        """How long each kind of job takes here: only an idempotent one known
        to be short joins a transaction that earlier jobs' effects wait in."""

    def idempotent(self, task: Any) -> bool:
        if not isinstance(task, RunJob):
            return False
        job = self.app.jobs.get(task.name)
        return job is not None and job.idempotency_key is not None

    def short(self, task: Any) -> bool:
        """Idempotent, and short enough to join an open transaction."""
        return (self.idempotent(task)
                and self.runtimes.of(task) < OutcomeBatch.MAX_SECONDS)

    def wrap(self, job: Any, job_id: int, args: tuple[Any, ...], kwargs: dict[str, Any],
             body: Callable[[], Any]) -> Callable[[], Any]:
        """``body`` run once per idempotency key, in the batch's transaction."""
        return partial(self.batch.run, job, job_id, args, kwargs, body)

    def holds(self, task: RunJob) -> bool:
        """Whether the job's outcome waits in the open transaction for its commit."""
        pending = self.batch.pending
        return bool(pending) and pending[-1] == task.job_id

    # --- the child's loop ------------------------------------------------------------

    def before_waiting(self, replies: Replies, inbox: deque[Any]) -> None:
        """An open transaction waits for the next job only if it is already here."""
        batch = self.batch
        if batch.lost or (batch.open and (batch.due() or (not inbox and not replies.poll()))):
            self.end(replies)

    def before_running(self, task: Any, inbox: deque[Any], replies: Replies) -> None:
        """Commit first if ``task`` does not join the open transaction (one that
        turned out slow does not: its claims are given back); claim the keys of
        the short idempotent jobs queued behind it, in one statement."""
        batch = self.batch
        if batch.open and not self.short(task):
            self.end(replies)
        if self.idempotent(task) and task.job_id not in batch.preclaimed:
            runs = []
            for queued in [task, *itertools.takewhile(self.short, inbox)]:
                try:  # one that cannot be decoded claims nothing: its run says why
                    payload = serializer.decode(queued.payload)
                except ValueError:
                    continue
                runs.append((self.app.jobs[queued.name], queued.job_id, payload.args,
                             payload.kwargs))
            replies.flush()  # before waiting on the database (see end)
            batch.preclaim(runs)

    def after_running(self, task: RunJob | RunHook, seconds: float) -> None:
        self.runtimes.add(task, seconds)
        if isinstance(task, RunJob) and self.idempotent(task):  # (only their keys are claimed)
            self.batch.unused(task.job_id)

    def end(self, replies: Replies) -> None:
        """Commit the open transaction, if any, and tell the supervisor.

        The answers held go first: a COMMIT that hangs must not keep them,
        nor the tasks they answer queued in the supervisor's view of this
        child (a child is killed for a stuck COMMIT only once it has none;
        see Handout._kill_stuck_commits)."""
        replies.flush()
        for message in self._end():
            replies.send(message)

    def close(self) -> None:
        self.batch.discard()

    def _end(self) -> list[Committed]:
        batch = self.batch
        batch.give_back_claims()  # may roll back (a lost connection): then all are lost
        messages = []
        if batch.lost:  # rolled back with a failing job's transaction: not their fault
            messages.append(Committed(tuple(batch.lost), Finished("release")))
            batch.lost = []
        if batch.open:
            ids, failure = tuple(batch.pending), None
            try:
                batch.commit()
            except CommitFailed as exc:
                failure = self._failed_commit(exc, alone=len(ids) == 1)
            batch.pending = []
            if ids:
                messages.append(Committed(ids, failure))
        return messages

    def _failed_commit(self, exc: CommitFailed, *, alone: bool) -> Finished:
        """What a failed COMMIT means for its jobs.

        A dropped connection, a deadlock: whether the COMMIT took effect is
        unknown, and it is none of the jobs' fault; they run again, without
        using a try (their keys make that safe). Anything else (a deferred
        constraint) is a job's doing: alone, it fails its attempt; in a shared
        transaction, all go back and the next ones commit one by one for a
        while, so that the culprit is found.
        """
        if not (exc.transient or alone):
            self.batch.alone_for_a_while()
        # Named as the same failure is when the job commits by itself.
        cause = exc.__cause__ or exc
        return Finished("release" if exc.transient or not alone else "error",
                        exception_class=class_name(cause), message=described(cause),
                        traceback="".join(traceback.format_exception(cause)))
