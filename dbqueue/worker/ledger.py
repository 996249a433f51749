"""The worker's ledger: every job it holds, in one place, with its state.

A job enters when it is reserved and leaves when its outcome is written (or
when it is dropped unstarted). In between it moves only along these edges::

    reserved ──► running ──► uncommitted ──► recording ──► (gone)
       │  ▲         │                           ▲
       │  └─────────┤ (its child died before    │
       │            │  starting it)             │
       └────────────┴───────────────────────────┘
       └──► (gone): dropped unstarted (lease lost, given back)

- **reserved**: leased, waiting for a child (the buffer, in order);
- **running**: handed to a child (running, or queued in that child's pipe);
- **uncommitted**: an idempotent job that is done, its effects in its child's
  transaction not yet committed;
- **recording**: its outcome is decided and waits in the completer.

Any other move is a bug and raises :class:`IllegalMove`. The ledger counts
the jobs processed (each job that ran, or was settled without running, once)
and how many it holds in each state, so the supervisor's questions ("any
running?", "anything in hand?") cost nothing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from .. import serializer
from ..policy import Rules
from ..serializer import Payload
from ..store import Lease, ReservedRow
from .clock import Deadline


class State:
    """The states, as strings: compared and hashed in C, a few times per job."""

    RESERVED: Final = "reserved"
    RUNNING: Final = "running"
    UNCOMMITTED: Final = "uncommitted"
    RECORDING: Final = "recording"
    ALL: Final = (RESERVED, RUNNING, UNCOMMITTED, RECORDING)


_GONE = None
_MOVES: dict[str | None, frozenset[str | None]] = {
    _GONE: frozenset({State.RESERVED}),
    State.RESERVED: frozenset({State.RUNNING, State.RECORDING, _GONE}),
    State.RUNNING: frozenset({State.RESERVED, State.UNCOMMITTED, State.RECORDING}),
    State.UNCOMMITTED: frozenset({State.RECORDING}),
    State.RECORDING: frozenset({_GONE}),
}


_ONE_TRY = Rules(tries=1)


class IllegalMove(AssertionError):
    """A job was moved along an edge the ledger does not have: a bug in the worker."""


@dataclass(eq=False, slots=True)
class Entry:
    """A job this worker holds a lease on."""

    row: ReservedRow
    lease: Lease
    job: Any  # dbqueue.Job, or None when the row could not be resolved
    payload: Payload | None
    """The decoded payload, once something here needed it (see ``decoded``);
    the child decodes it to run the job."""
    reserved_mono: float
    lease_until: Deadline
    """Until when the lease certainly holds: it was taken or last renewed for
    ``retry_after`` seconds by a statement sent after the instant this counts
    from. Moved forward by each renewal."""
    rules: Rules = _ONE_TRY  # immutable: one instance serves every entry until intake sets it
    timeout: float = 0.0
    locks: Sequence[tuple[str, str, float]] = ()
    """(key, owner, ttl) of the locks taken for this job before it runs."""
    state: str | None = None
    child: Any = None
    """The child it was handed to (running, uncommitted)."""
    counted: bool = False
    """Whether its attempt is counted in the table (see Completion.started)."""
    counting: bool = False
    """A record counting its attempt waits in the completer."""
    key_freed: bool = False
    """A job unique until processing: it began, and its key is freed."""
    lease_lost: bool = False
    """Another worker took the job (this one stalled) while it ran here."""
    runtime: float | None = None
    """Seconds its attempt ran, once it has ended (for the log)."""
    result: str | None = None
    """What a chain step returned, as JSON text, for the next step."""
    skipped: bool = False
    """Completed without running: its batch was cancelled."""
    id: int = field(init=False)
    """The job's id (``row.id``), read a few times per job: a plain attribute."""

    def __post_init__(self) -> None:
        self.id = self.row.id

    def decoded(self) -> Payload:
        """The payload's arguments and options (empty if it cannot be decoded:
        the job's run says why)."""
        if self.payload is None:
            try:
                self.payload = serializer.decode(self.row.payload)
            except ValueError:
                self.payload = Payload()
        return self.payload

    @property
    def flow(self) -> dict[str, Any] | None:
        """Its workflow state (see store.flows): intake decodes every payload
        that has one."""
        return None if self.payload is None else self.payload.flow

    @property
    def batch_id(self) -> str | None:
        """The batch it belongs to, if any."""
        flow = self.flow
        batch_id = flow.get("batch") if flow else None
        return batch_id if isinstance(batch_id, str) else None

    def db_now(self) -> datetime:
        """The database clock now, from the reservation's timestamp and a monotonic clock."""
        return self.row.reserved_at + timedelta(seconds=time.monotonic() - self.reserved_mono)


class Ledger:
    def __init__(self) -> None:
        self._entries: dict[int, Entry] = {}
        self.reserved: deque[Entry] = deque()
        """Reserved jobs in the order they are to run (read-only outside the ledger)."""
        self._counts = dict.fromkeys(State.ALL, 0)
        self.processed = 0
        """Jobs that ran to an end here, or were settled without running."""

    # --- questions ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def get(self, job_id: int) -> Entry | None:
        return self._entries.get(job_id)

    def count(self, *states: str) -> int:
        return sum(self._counts[state] for state in states)

    def in_state(self, *states: str) -> list[Entry]:
        return [entry for entry in self._entries.values() if entry.state in states]

    def holding(self) -> list[Entry]:
        """The jobs not finished with: reserved, running or uncommitted."""
        return self.in_state(State.RESERVED, State.RUNNING, State.UNCOMMITTED)

    # --- moves ---------------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        """A newly reserved job, queued behind the others."""
        if entry.id in self._entries:
            raise IllegalMove(f"job {entry.id} is in the ledger already")
        self._move(entry, State.RESERVED)
        self._entries[entry.id] = entry
        self.reserved.append(entry)

    def start(self, child: Any) -> Entry:
        """The first reserved job goes to ``child``."""
        entry = self.reserved.popleft()
        self._move(entry, State.RUNNING)
        entry.child = child
        return entry

    def unstart(self, entry: Entry) -> None:
        """Its child died before starting it: first in line again."""
        self._move(entry, State.RESERVED)
        entry.child = None
        self.reserved.appendleft(entry)

    def await_commit(self, entry: Entry) -> None:
        """Done, its effects in its child's open transaction."""
        self._move(entry, State.UNCOMMITTED)

    def settle(self, entry: Entry, *, ran: bool) -> None:
        """Its outcome is decided; ``ran`` counts it as processed."""
        if entry.state == State.RESERVED:
            self.reserved.remove(entry)  # rare: a job settled without running
        self._move(entry, State.RECORDING)
        entry.child = None
        if ran:
            self.processed += 1

    def forget(self, entry: Entry) -> None:
        """Its outcome is written, or it is dropped unstarted: it leaves the ledger."""
        if entry.state == State.RESERVED:
            self.reserved.remove(entry)
        self._move(entry, _GONE)
        del self._entries[entry.id]

    def _move(self, entry: Entry, to: str | None) -> None:
        if to not in _MOVES[entry.state]:
            raise IllegalMove(f"job {entry.id} cannot go from {_name(entry.state)} to "
                              f"{_name(to)}")
        if entry.state is not None:
            self._counts[entry.state] -= 1
        if to is not None:
            self._counts[to] += 1
        entry.state = to


def _name(state: str | None) -> str:
    return "gone" if state is None else state
