"""What a worker writes down about its jobs: one typed record per fact.

The recorder makes them (the supervisor makes Counted); the completer
(worker.completer) turns them into the store's Completion and writes them.
Records, not closures: a flush that fails puts them back as they were, and
one can be told from another.
"""

from __future__ import annotations

from typing import NamedTuple

from ..store import Failure
from .ledger import Entry


class Completed(NamedTuple):
    """The job succeeded (or, with ``entry.runtime`` None, was dropped unrun)."""

    entry: Entry


class Released(NamedTuple):
    """Back to the queue for ``delay`` seconds with ``attempts`` counted."""

    entry: Entry
    delay: float
    attempts: int
    why: str
    retry: bool
    """A failed attempt to be retried (logged at INFO), not a plain release."""
    waits_for_lock: bool = False
    """Released because another job holds its lock, or a rate limit held it
    back: not delayed by anyone's choice, so a worker told to stop once the
    queue is empty waits for it."""


class Failed(NamedTuple):
    """Failed for good, with ``attempts`` counted."""

    entry: Entry
    failure: Failure
    attempts: int
    ran: bool
    """Whether the attempt started (else the job could not even start)."""


class Counted(NamedTuple):
    """The job has run a while: count its attempt now."""

    entry: Entry
    attempt: int


class KeyFreed(NamedTuple):
    """The job started and was unique until processing: free its key."""

    entry: Entry


class Unlocked(NamedTuple):
    """A lock taken for a job that has ended."""

    key: str
    owner: str


Record = Completed | Released | Failed | Counted | KeyFreed | Unlocked
ENDINGS = (Completed, Released, Failed)
"""The records that end a job: once written, its row is gone or back in the queue."""
