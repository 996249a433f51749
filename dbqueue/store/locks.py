"""cache_locks: named locks shared by every host through the database.

Every verb runs in a short transaction of its own, never in the caller's: a
lock must not vanish because the caller's transaction rolled back, nor keep
a caller's transaction open. Expiry is by the database server's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import keys
from .store import Store, held_locks


def stored_key(key: str) -> str:
    """The key as cache_locks holds it: itself, or when too long for the column,
    its first characters and a digest (still one lock per distinct key)."""
    return keys.fit(key, key[:100] + ":")


@dataclass(frozen=True, slots=True)
class LockInfo:
    key: str
    owner: str
    expires_at: datetime


class Locks:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = store.tables.cache_locks

    def acquire(self, key: str, owner: str, ttl: float) -> bool:
        """Take ``key`` for ``owner`` for ``ttl`` seconds if it is free or expired."""
        key = stored_key(key)
        return key in self.acquire_many([(key, owner, ttl)])

    def acquire_many(self, wanted: Sequence[tuple[str, str, float]]) -> set[str]:
        """Take each distinct ``(key, owner, ttl)`` that is free or expired, in one
        transaction; return the keys taken."""
        if not wanted:
            return set()
        # In key order: two workers upserting overlapping keys then lock the
        # rows in the same order, and cannot deadlock each other.
        ordered = sorted(wanted)
        return self.store.transaction(
            lambda c: self.store.dialect.acquire_locks(c, self.table, ordered))

    def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> int:
        """Make each ``(key, owner)`` still held last ``ttl`` seconds from now;
        return how many were."""
        if not held:
            return 0
        return self.store.transaction(lambda c: c.execute(
            sa.update(self.table).where(held_locks(self.table, held))
            .values(expires_at=self.store.dialect.now_plus(ttl))).rowcount)

    def still_held(self, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these ``(key, owner)`` pairs still hold their key (expired or not)."""
        if not pairs:
            return set()
        table, compared = self.table, self.store.dialect.compared_key
        found = self.store.read(lambda c: {(compared(key), owner) for key, owner in c.execute(
            sa.select(table.c.key, table.c.owner).where(held_locks(table, pairs)))})
        # As asked: the row may spell the key otherwise (see Dialect.compared_key).
        return {(key, owner) for key, owner in pairs if (compared(key), owner) in found}

    def release(self, key: str, owner: str) -> bool:
        """Free ``key`` if ``owner`` holds it; return whether it did."""
        table, key = self.table, stored_key(key)
        return self.store.transaction(lambda c: c.execute(
            sa.delete(table).where(table.c.key == key, table.c.owner == owner)).rowcount == 1,
            single_statement=True)

    def force_release(self, key: str) -> bool:
        """Free ``key`` whoever holds it; return whether it was held (an expired
        row, also deleted, was not)."""
        table, key = self.table, stored_key(key)

        def work(c: Connection) -> bool:
            held = c.execute(sa.delete(table).where(
                table.c.key == key, table.c.expires_at > self.store._now())).rowcount == 1
            c.execute(sa.delete(table).where(table.c.key == key))
            return held

        return self.store.transaction(work)

    def extend(self, key: str, owner: str, ttl: float) -> bool:
        """Make ``owner``'s hold on ``key`` last ``ttl`` seconds from now.

        False if ``owner`` no longer holds it (another process took it over).
        """
        table, key = self.table, stored_key(key)
        return self.store.transaction(lambda c: c.execute(
            sa.update(table).where(table.c.key == key, table.c.owner == owner)
            .values(expires_at=self.store.dialect.now_plus(ttl))).rowcount == 1,
            single_statement=True)

    def free_in(self, lock_keys: list[str]) -> float:
        """Seconds until the first of ``lock_keys`` expires (0 if one is free already)."""
        table, now = self.table, self.store._now()
        stored = [stored_key(key) for key in lock_keys]
        row = self.store.read(lambda c: c.execute(
            sa.select(sa.func.min(table.c.expires_at), sa.func.count(), now)
            .where(table.c.key.in_(stored), table.c.expires_at > now)).first())
        soonest, held, db_now = row  # type: ignore[misc]
        if held < len(stored) or soonest is None:
            return 0.0
        return max(0.0, float((soonest - db_now).total_seconds()))

    def holder(self, key: str) -> LockInfo | None:
        """Who holds ``key`` now (an expired row holds nothing)."""
        table, key = self.table, stored_key(key)
        row = self.store.read(lambda c: c.execute(
            sa.select(table).where(table.c.key == key,
                                   table.c.expires_at > self.store._now())).first())
        return LockInfo(**row._mapping) if row else None

    def held(self) -> list[LockInfo]:
        table = self.table
        rows = self.store.read(lambda c: c.execute(
            sa.select(table).where(table.c.expires_at > self.store._now())
            .order_by(table.c.key)).all())
        return [LockInfo(**row._mapping) for row in rows]

    def prune(self) -> int:
        """Delete expired rows."""
        table = self.table

        def work(c: Connection) -> int:
            return int(c.execute(sa.delete(table).where(
                table.c.expires_at <= self.store.dialect.now())).rowcount)

        return self.store.transaction(work)
