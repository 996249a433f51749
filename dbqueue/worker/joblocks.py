"""The locks jobs' middleware asks the worker to hold for them (WithoutOverlapping).

The worker takes the keys of a whole batch of reserved jobs in one statement
before any of them reaches a child, renews them with its leases, and frees
them in the transaction that records the jobs' outcome (see Recorder.unlock).
A job whose key another job holds, here or on any host, never reaches a child:
it is released or dropped, as its middleware says.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any

from ..middleware import LOCK_MARGIN, LockRequest
from ..store import Failure
from ..store.locks import Locks
from .child import class_name
from .health import DB_ERRORS, Health
from .intake import Held
from .recorder import Recorder


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
        self.released = 0
        self.dropped = 0
        """Jobs released or dropped because another held their key, since the
        caller last reset these."""

    def take(self, admitted: Sequence[Held]) -> list[Held]:
        """Take the locks the jobs ask for, for the whole batch in one statement;
        return the jobs that may run (every one that asks for none)."""
        ready: list[Held] = []
        asking: list[tuple[Held, list[LockRequest]]] = []
        keys: set[str] = set()
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
                self._refused(held, requests[0])
        if not asking:
            return ready
        try:
            taken = self.locks.acquire_many([lock for held, _ in asking for lock in held.locks])
        except DB_ERRORS as exc:
            self.health.failed("take job locks", exc)
            self.recorder.give_back([held for held, _ in asking])
            return ready
        for held, requests in asking:
            refused = [request for request in requests if request.key not in taken]
            if refused:
                held.locks = [lock for lock in held.locks if lock[0] in taken]
                self._refused(held, refused[0])
            else:
                ready.append(held)
        return ready

    def _requests(self, held: Held) -> list[LockRequest] | None:
        """The locks the job asks for; None when its key function raised (the
        job then fails, the worker goes on)."""
        try:
            return held.lock_requests(self.app)
        # SystemExit included: signals never raise here.
        except BaseException as exc:
            self.recorder.failed(held, Failure(
                class_name(exc), f"the lock key of job {held.row.id} could not be computed: "
                f"{exc}", traceback.format_exc()), ran=False)
            return None

    def _refused(self, held: Held, request: LockRequest) -> None:
        """Another job holds ``request.key``: release this one or drop it."""
        why = f"another job holds {request.key}"
        if request.dont_release:
            self.dropped += 1
            self.recorder.dropped(held, f"{why} (dont_release)")
        else:
            self.released += 1
            self.recorder.released(held, request.release_after, False, why)

    def renew(self, holding: Sequence[Held]) -> list[tuple[Held, str]]:
        """Renew the locks of the jobs held; return those that lost one, with
        its key (this worker stalled past its expiry, and another may have it)."""
        by_ttl: dict[float, list[tuple[str, str]]] = {}
        for held in holding:
            for key, owner, ttl in held.locks:
                by_ttl.setdefault(ttl, []).append((key, owner))
        renewed = sum(self.locks.renew(locks, ttl) for ttl, locks in by_ttl.items())
        if renewed == sum(len(locks) for locks in by_ttl.values()):
            return []
        kept = self.locks.still_held(
            [(key, owner) for held in holding for key, owner, _ in held.locks])
        lost = []
        for held in holding:
            gone = [key for key, owner, _ in held.locks if (key, owner) not in kept]
            if gone:
                held.locks = [lock for lock in held.locks if lock[0] not in gone]
                lost.append((held, gone[0]))
        return lost
