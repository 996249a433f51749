"""Distributed locks: ``app.lock(key, ttl)``, shared by every host through the database."""

from __future__ import annotations

import secrets
import time
from types import TracebackType
from typing import TYPE_CHECKING

from . import keys
from .errors import ConfigurationError, LockNotAcquired
from .policy.durations import Seconds, required_seconds

if TYPE_CHECKING:
    from .store.locks import Locks


def _ttl(value: Seconds) -> float:
    return required_seconds("a lock's ttl", value, allow_zero=False)


class Lock:
    """A named lock held in ``cache_locks``, with an owner token and an expiry.

    Any key works: one longer than the key column (191 characters) is
    stored as its first 100 characters and a SHA-256 digest. Only the owner
    can release or extend it; when ``ttl`` seconds pass without
    an ``extend``, it expires (by the database clock) and anyone may take it.
    Each call runs in a short transaction of its own: a lock taken while your
    own transaction is open stays taken if that transaction rolls back, and is
    not released by its commit either. On SQLite, which has one writer at a
    time, do not take a lock while your own connection holds a write
    transaction on the same file: the lock would wait for it.

    Use it as a context manager to hold it for a block::

        with app.lock("report:daily", ttl=300, wait=10):
            build_report()
    """

    def __init__(self, locks: Locks, key: str, ttl: float, owner: str | None = None,
                 wait: float = 0.0) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"a lock's key must be a non-empty string, not {key!r}")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ConfigurationError(f"a lock's owner must be the token of lock.owner, not "
                                     f"{owner!r}")
        self._locks = locks
        self.key = keys.storable("a lock's key", key)
        self.ttl = _ttl(ttl)
        self.wait = required_seconds("a lock's wait", wait)
        self.owner = owner or secrets.token_hex(16)
        """The token that proves ownership: hand it to ``app.restore_lock`` elsewhere."""

    def acquire(self, timeout: float | None = None, poll: float = 0.1) -> bool:
        """Take the lock; return whether it was taken.

        If this owner holds it already, it is renewed for ``ttl`` seconds and
        True is returned (a lock is not counted: one ``release`` frees it).
        Without ``timeout`` it tries once. With one, it tries every ``poll``
        seconds until ``timeout`` seconds have passed.
        """
        if timeout is not None:
            timeout = required_seconds("acquire's timeout", timeout)
        poll = required_seconds("acquire's poll", poll, allow_zero=False)  # 0: a busy loop
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._locks.acquire(self.key, self.owner, self.ttl):
                return True
            if deadline is None or time.monotonic() >= deadline:
                return False
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def release(self) -> bool:
        """Release the lock if this owner holds it; return whether it did."""
        return self._locks.release(self.key, self.owner)

    def force_release(self) -> bool:
        """Release the lock whoever holds it; return whether it was held."""
        return self._locks.force_release(self.key)

    def extend(self, ttl: float | None = None) -> bool:
        """Hold the lock for ``ttl`` (default: the lock's ttl) more seconds from now.

        False if this owner no longer holds it.
        """
        return self._locks.extend(self.key, self.owner, self.ttl if ttl is None else _ttl(ttl))

    def locked(self) -> bool:
        """Whether anyone holds the lock now."""
        return self._locks.holder(self.key) is not None

    def owned(self) -> bool:
        """Whether this owner holds the lock now."""
        holder = self._locks.holder(self.key)
        return holder is not None and holder.owner == self.owner

    def __enter__(self) -> Lock:
        if not self.acquire(timeout=self.wait or None):
            raise LockNotAcquired(
                f"lock {self.key!r} is held by another owner"
                + (f" (waited {self.wait:g} s)" if self.wait else "")
            )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lock {self.key!r} owner={self.owner[:8]}… ttl={self.ttl:g}>"
