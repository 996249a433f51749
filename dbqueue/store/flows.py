"""Workflows moved by job outcomes: chains, batches and scheduled runs.

A job that is part of a workflow carries its state in its payload's
``"flow"`` object, readable with plain SQL like the rest of the payload:

``chain``     the steps still to run after this one, in order (see :func:`step`)
``catch``     the step to queue if a step of the chain fails for good
``previous``  what the step before this one returned (JSON)
``failed``    in a ``catch`` job (of a chain or a batch): which job failed, why, and
              its failed_jobs row's uuid (``dbqueue retry UUID``)
``batch``     the id of the batch this job belongs to (job_batches)
``callback``  in a batch's then/catch/finally job: the id of that batch
``schedule``, ``tick``  the schedule that queued this run, and its tick

When such a job ends for good (completed, failed for good, or completed
without running because its batch was cancelled), the worker's completion
transaction calls :func:`advance` with a :class:`FlowEnd` for it, after the
job's own row is written and only for jobs whose lease still held: the next
step is queued, the batch's counters change and its callbacks are queued in
the very transaction that records the outcome, so a crash in between loses
nothing and two workers never both move the same workflow on.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import serializer
from ..policy.texts import shortened_message
from .values import NewJob, _text

if TYPE_CHECKING:
    from .dispatch import Dispatch


class FlowEnd(NamedTuple):
    """A job with a flow that ended for good."""

    job_id: int
    flow: dict[str, Any]
    outcome: str
    """"done", "failed" (for good), or "skipped" (completed without running)."""
    result: str | None = None
    """What it returned, as JSON text: only for a step with steps after it."""
    failure: tuple[str, str] | None = None
    """(exception class, message) of a failed job."""


# Bits of job_batches.fired: which callbacks were queued (each at most once).
THEN, CATCH, FINALLY = 1, 2, 4
CALLBACKS = {"then": THEN, "catch": CATCH, "finally": FINALLY}
THEN_WITHHELD = 8
"""Set with THEN when ``then`` will never run (the batch was cancelled), so
that a batch a retry has opened again still says so; unknown to, and so
ignored by, code older than it."""


def withheld(fired: int) -> int:
    """The bits to add to ``fired`` when the batch is cancelled: ``then`` will not
    run, unless it was queued already (a batch with allow_failures, retried)."""
    return 0 if fired & THEN else THEN | THEN_WITHHELD


_STEP_KEYS: dict[str, tuple[type, ...]] = {
    "job": (str,), "queue": (str,), "priority": (int,), "delay": (int, float),
    "payload": (dict,)}


def flow_problem(flow: dict[str, Any]) -> str | None:
    """What is wrong with a flow read from a row (anyone with SQL access can
    write one), or None: a worker fails such a job rather than trip over it
    in the transaction that records its outcome."""
    chain = flow.get("chain", [])
    if not isinstance(chain, list):
        return "'chain' must be a list of steps"
    for index, spec in enumerate(chain):
        why = _step_problem(spec)
        if why is not None:
            return f"chain step {index + 1}: {why}"
    if flow.get("catch") is not None:
        why = _step_problem(flow["catch"])
        if why is not None:
            return f"'catch': {why}"
    for key in ("batch", "callback", "schedule", "tick"):
        if key in flow and not isinstance(flow[key], str):
            return f"{key!r} must be a string"
    return None


def _step_problem(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return "a step must be an object"
    for key, kind in _STEP_KEYS.items():
        if not isinstance(spec.get(key), kind) or isinstance(spec.get(key), bool):
            return f"{key!r} is missing or not a {kind[-1].__name__}"
    return None


def step(new_job: NewJob) -> dict[str, Any]:
    """A job to queue later (a chain's step, a batch's callback), as JSON."""
    return {"job": new_job.job, "queue": new_job.queue, "priority": new_job.priority,
            "delay": new_job.delay, "payload": json.loads(new_job.payload)}


def from_step(spec: dict[str, Any], flow: dict[str, Any] | None) -> NewJob:
    """The job to insert for ``spec`` (see :func:`step`), with ``flow``."""
    payload = dict(spec["payload"])
    if flow:
        payload["flow"] = flow
    return NewJob(queue=spec["queue"], job=spec["job"],
                  payload=serializer.encode_value("a workflow step", payload),
                  priority=spec["priority"], delay=spec["delay"])


def with_flow(new_job: NewJob, flow: dict[str, Any]) -> NewJob:
    """``new_job`` carrying ``flow`` in its payload."""
    return new_job._replace(payload=serializer.with_flow(new_job.payload, flow))


def steps_after(flow: dict[str, Any]) -> int:
    """How many steps of its chain come after the job with ``flow``."""
    return len(flow.get("chain") or ())


def lock_batches(store: Dispatch, c: Connection, ends: Sequence[FlowEnd]) -> None:
    """Lock the rows of the batches ``ends`` count in, first of all in the
    completion's transaction. A batch row may be held for long (by an
    application's transaction that adds to the batch, say): while the
    transaction waits for it, it holds no job's row, so the heartbeat renews
    those jobs' leases meanwhile, and none runs out to another worker should
    the wait end in a timeout. In the order of their ids, as ``advance``."""
    batches = store.tables.job_batches
    for batch_id in sorted({end.flow["batch"] for end in ends
                            if isinstance(end.flow.get("batch"), str)}):
        c.execute(sa.select(batches.c.id).where(batches.c.id == batch_id).with_for_update())


def advance(store: Dispatch, c: Connection, ends: Sequence[FlowEnd], recorded: set[int],
            failed_as: dict[int, str] | None = None) -> None:
    """Move on the workflows of ``ends`` whose outcome took effect (``recorded``);
    ``failed_as`` maps the failed ones to the uuid of their failed_jobs row."""
    failed_as = failed_as or {}
    ends = [end for end in ends if end.job_id in recorded]
    if not ends:
        return
    by_batch: dict[str, list[FlowEnd]] = defaultdict(list)
    for end in ends:
        if isinstance(end.flow.get("batch"), str):
            by_batch[end.flow["batch"]].append(end)
    cancelled = set()
    queued: list[NewJob] = []
    # In the order of their ids: two workers lock the batch rows they share in
    # the same order, so they never deadlock on them.
    for batch_id in sorted(by_batch):
        if _count(store, c, batch_id, by_batch[batch_id], queued, failed_as):
            cancelled.add(batch_id)
    for end in ends:
        queued += _chain_moves(end, cancelled, failed_as)
    if queued:
        store.insert_jobs(c, queued)
    schedule_ends = [end for end in ends if "schedule" in end.flow]
    if schedule_ends:
        from .schedules import record_runs  # imports this module: at first use

        _unless_tables_gone(store, c, lambda: record_runs(store, c, schedule_ends))


def _unless_tables_gone(store: Dispatch, c: Connection, write: Callable[[], object]) -> None:
    """``write`` (the schedules' bookkeeping) in a savepoint: tables taken back
    under the worker (a downgrade during a deploy; the schedules' came in
    0009) must not keep the jobs' own outcomes from being written. Those runs
    go unrecorded; the worker stops on the next statement that needs them."""
    try:
        with c.begin_nested():
            write()
    except sa.exc.DBAPIError as exc:
        if not store.dialect.is_missing_table(exc):
            raise


def _failure(end: FlowEnd, failed_as: dict[int, str]) -> dict[str, Any]:
    """What a catch job learns of the failure (``current_job().failed``)."""
    exception_class, message = end.failure or ("", "")
    # As failed_jobs keeps them: no database takes a lone surrogate, say.
    return {"job_id": end.job_id, "failed_job": failed_as.get(end.job_id),
            "exception_class": _text(exception_class), "message": _text(shortened_message(message))}


def _chain_moves(end: FlowEnd, cancelled: set[str], failed_as: dict[int, str]) -> list[NewJob]:
    """The next step of ``end``'s chain, or its ``catch`` step, if any is due."""
    flow = end.flow
    chain, catch = flow.get("chain") or [], flow.get("catch")
    batch = flow.get("batch")
    if end.outcome == "done" and chain and batch not in cancelled:
        rest = {"chain": chain[1:], "catch": catch, "batch": batch,
                "previous": None if end.result is None else json.loads(end.result)}
        return [from_step(chain[0], _lean(rest))]
    if end.outcome == "failed" and catch:
        return [from_step(catch, {"failed": _failure(end, failed_as)})]
    return []


def _lean(flow: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in flow.items() if value not in (None, [])}


def _count(store: Dispatch, c: Connection, batch_id: str, ends: Sequence[FlowEnd],
           queued: list[NewJob], failed_as: dict[int, str]) -> bool:
    """Count ``ends`` in their batch and queue the callbacks now due; return
    whether the batch is cancelled (its chains stop)."""
    batches = store.tables.job_batches
    row = c.execute(sa.select(batches).where(batches.c.id == batch_id).with_for_update()
                    ).one_or_none()
    if row is None:  # pruned, or deleted by hand: nothing to count
        return False
    failures = sum(end.outcome == "failed" for end in ends)
    cancel = bool(failures) and not row.allow_failures and row.cancelled_at is None
    cancelled = cancel or row.cancelled_at is not None
    # A chain that stops here (this job failed, or the batch is cancelled, maybe
    # by a failure in this same flush): its remaining steps never run, and
    # count as finished now.
    finished = sum(1 + (steps_after(end.flow) if end.outcome != "done" or cancelled else 0)
                   for end in ends)
    pending, failed = row.pending - finished, row.failed + failures
    fired = _due_callbacks(row, pending, failed, cancelled=cancelled)
    # A cancelled batch never runs ``then``, even once a retry has opened it again.
    done = row.fired | fired | (withheld(row.fired) if cancelled else 0)
    values: dict[str, Any] = {"pending": pending, "failed": failed, "fired": done}
    if cancel:
        values["cancelled_at"] = store.dialect.now()
    if pending <= 0 and row.finished_at is None:
        values["finished_at"] = store.dialect.now()
    c.execute(sa.update(batches).where(batches.c.id == batch_id).values(**values))
    first_failure = next((end for end in ends if end.outcome == "failed"), None)
    queued += callback_jobs(json.loads(row.callbacks), fired, batch_id, None if (
        first_failure is None) else _failure(first_failure, failed_as))
    return cancelled


def callback_jobs(callbacks: dict[str, dict[str, Any]], due: int, batch_id: str,
                  failed: dict[str, Any] | None = None) -> list[NewJob]:
    """The jobs of a batch's callbacks whose bits are set in ``due``; ``catch``
    learns of ``failed`` (``current_job().failed``)."""
    jobs = []
    for name, bit in CALLBACKS.items():
        if due & bit and callbacks.get(name):
            flow: dict[str, Any] = {"callback": batch_id}
            if bit == CATCH and failed is not None:
                flow["failed"] = failed
            jobs.append(from_step(callbacks[name], flow))
    return jobs


def _due_callbacks(row: Any, pending: int, failed: int, *, cancelled: bool) -> int:
    """The callbacks to queue now, as bits of job_batches.fired."""
    due = 0
    if failed > row.failed:
        due |= CATCH
    if pending <= 0:
        due |= FINALLY
        if not cancelled and (failed == 0 or row.allow_failures):
            due |= THEN
    return due & ~int(row.fired)
