"""The locks jobs' middleware asks the worker to hold for them.

A middleware declares the locks a job needs by having a ``lock_requests(context)``
method (WithoutOverlapping does); the worker knows no middleware class.

The worker takes the keys of a whole batch of reserved jobs in one statement
before any of them reaches a child, renews them with its leases, and frees
them in the transaction that records the jobs' outcome (see Recorder.unlock).
A job whose key another job holds, here or on any host, never reaches a child:
it is released or dropped, as its middleware says. Released with no
``release_after`` of its own, it comes back after a pause that starts at
HELD_FIRST_PAUSE and doubles each time its key is found held again, up to
HELD_LONGEST_PAUSE: at once, it would be reserved, refused and released over
and over while the holder runs.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from ..middleware import LOCK_MARGIN, JobContext, LockRequest
from ..store import Failure
from ..store.locks import Locks
from .background import Bound
from .health import DB_ERRORS, Health
from .ledger import Entry
from .messages import class_name, described
from .recorder import Recorder

HELD_FIRST_PAUSE = 0.05
HELD_LONGEST_PAUSE = 5.0
_KEYS_REMEMBERED = 10_000  # refusals counted per key; forgotten beyond this many keys
_MOST_DOUBLINGS = math.ceil(math.log2(HELD_LONGEST_PAUSE / HELD_FIRST_PAUSE))
_IN_A_ROW_WITHIN = 2 * HELD_LONGEST_PAUSE  # a refusal longer ago starts the count again


class JobLocks:
    def __init__(self, app: Any, locks: Locks, recorder: Recorder, health: Health,
                 worker_id: str, heartbeat_every: float) -> None:
        self.app = app
        self.locks = locks
        self.recorder = recorder
        self.health = health
        self.worker_id = worker_id
        # The least a job's lock is taken for: it is renewed with the leases,
        # so it must outlast two heartbeats, whatever ``expire_after`` says.
        self.floor = 2 * heartbeat_every + LOCK_MARGIN
        self.bound = Bound()
        """Locks are taken on the supervisor's thread: see worker.background.Bound."""
        self.refusals: dict[str, tuple[int, float]] = {}
        """Per key: how many batches in a row found it held (see the module's
        text), and when the last did (monotonic clock)."""

    def take(self, admitted: Sequence[Entry]) -> tuple[list[Entry], int]:
        """Take the locks the jobs ask for, for the whole batch in one statement;
        return the jobs that may run (every one that asks for none), and how
        many went back to the queue because another job holds their key."""
        ready: list[Entry] = []
        asking: list[tuple[Entry, list[LockRequest]]] = []
        keys: set[str] = set()
        refused: list[tuple[Entry, LockRequest]] = []
        for held in admitted:
            requests = self._requests(held)
            if requests is None:
                continue
            if not requests:
                ready.append(held)
            elif keys.isdisjoint(request.key for request in requests):
                keys.update(request.key for request in requests)
                owner = f"{self.worker_id}:{held.row.id}"
                held.locks = [(request.key, owner, max(request.ttl, self.floor))
                              for request in requests]
                asking.append((held, requests))
            else:  # a job of this same batch has the key
                refused.append((held, requests[0]))
        if asking:
            try:
                wanted = [lock for held, _ in asking for lock in held.locks]
                taken = self.bound(lambda: self.locks.acquire_many(wanted))
            except DB_ERRORS as exc:
                self.health.failed("take job locks", exc)
                self.recorder.give_back([held for held, _ in asking])
                asking, taken = [], set()
            for held, requests in asking:
                missing = [request for request in requests if request.key not in taken]
                if missing:
                    held.locks = [lock for lock in held.locks if lock[0] in taken]
                    refused.append((held, missing[0]))
                else:
                    ready.append(held)
            for key in taken:
                self.refusals.pop(key, None)
        return ready, self._refuse(refused)

    def _refuse(self, refused: list[tuple[Entry, LockRequest]]) -> int:
        """Release or drop the jobs whose key another job holds; how many were
        released. A key's pause (for jobs with no ``release_after`` of their
        own) grows once per batch, however many of its jobs the batch held."""
        pauses: dict[str, float] = {}
        now = time.monotonic()
        for _, request in refused:
            if request.release_after or request.dont_release or request.key in pauses:
                continue
            found, last = self.refusals.get(request.key, (0, now))
            if now - last > _IN_A_ROW_WITHIN:
                found = 0
            pauses[request.key] = min(HELD_LONGEST_PAUSE, HELD_FIRST_PAUSE * 2 ** found)
            # Counted no further than the longest pause needs.
            pauses_in_a_row = min(found + 1, _MOST_DOUBLINGS)
            if len(self.refusals) >= _KEYS_REMEMBERED:
                self.refusals.clear()
            self.refusals[request.key] = (pauses_in_a_row, now)
        released = 0
        for held, request in refused:
            why = f"another job holds {request.key}"
            if request.dont_release:
                self.recorder.dropped(held, f"{why} (dont_release)")
                continue
            # A pause of our choosing, not a delay of the user's: see Released.
            self.recorder.released(held, request.release_after or pauses[request.key], False,
                                   why, waits_for_lock=not request.release_after)
            released += 1
        return released

    def _requests(self, held: Entry) -> list[LockRequest] | None:
        """The locks the job's middleware asks for (the first request of a key
        wins); None when one raised (the job then fails, the worker goes on)."""
        if held.job is None or not held.job.middleware:
            return []
        try:
            by_key: dict[str, LockRequest] = {}
            context: JobContext | None = None
            for middleware in held.job.middleware:
                declare = getattr(middleware, "lock_requests", None)
                if declare is None:
                    continue
                payload = held.decoded()
                context = context or JobContext(self.app, held.job, held.id, payload.args,
                                                payload.kwargs, held.row.attempts, held.timeout)
                for request in declare(context):
                    by_key.setdefault(request.key, request)
            return list(by_key.values())
        # SystemExit included: signals never raise here.
        except BaseException as exc:
            self.recorder.failed(held, Failure(
                class_name(exc), f"the lock key of job {held.row.id} could not be computed: "
                f"{described(exc)}", traceback.format_exc()), ran=False)
            return None

    def renewal(self, holding: Sequence[Entry]) -> Callable[[], set[tuple[str, str]] | None]:
        """The statements that renew the locks ``holding`` hold now, to run
        apart (see worker.sidetasks): they return None if every lock was
        renewed, else the ``(key, owner)`` pairs still held (see ``lost``)."""
        by_ttl: dict[float, list[tuple[str, str]]] = {}
        for held in holding:
            for key, owner, ttl in held.locks:
                by_ttl.setdefault(ttl, []).append((key, owner))
        asked = [pair for pairs in by_ttl.values() for pair in pairs]

        def renew() -> set[tuple[str, str]] | None:
            renewed = sum(self.locks.renew(locks, ttl) for ttl, locks in by_ttl.items())
            return None if renewed == len(asked) else self.locks.still_held(asked)

        return renew

    def lost(self, holding: Sequence[Entry], kept: set[tuple[str, str]] | None,
             ) -> list[tuple[Entry, str]]:
        """The jobs of ``holding`` whose renewal (``renewal``) found a lock no
        longer theirs (this worker stalled past its expiry, and another may
        have it), with its key; those locks are forgotten."""
        if kept is None:
            return []
        lost = []
        for held in holding:
            gone = [key for key, owner, _ in held.locks if (key, owner) not in kept]
            if gone:
                held.locks = [lock for lock in held.locks if lock[0] not in gone]
                lost.append((held, gone[0]))
        return lost
