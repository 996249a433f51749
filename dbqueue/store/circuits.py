"""job_circuits: consecutive failures per circuit, and until when it stays open."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import keys
from .store import Store


def _key(circuit: str) -> str:
    """The circuit as its row holds it (a long name as its first characters and a digest)."""
    return keys.fit(circuit, circuit[:100] + ":")


class Circuits:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = store.tables.job_circuits

    def open_for(self, key: str) -> float:
        """Seconds until circuit ``key`` closes; 0 when it is closed."""
        table, now, key = self.table, self.store._now(), _key(key)
        row = self.store.read(lambda c: c.execute(
            sa.select(table.c.opened_until, now)
            .where(table.c.key == key, table.c.opened_until > now)).first())
        return 0.0 if row is None else max(0.0, (row[0] - row[1]).total_seconds())

    def failed(self, key: str, threshold: int, decay: float) -> bool:
        """Count a failure; open the circuit for ``decay`` seconds at ``threshold``
        consecutive ones. Returns whether this failure opened it."""
        table, dialect, key = self.table, self.store.dialect, _key(key)

        def work(c: Connection) -> bool:
            dialect.increment(c, table, table.c.key, key, table.c.failures)
            return bool(c.execute(
                sa.update(table).where(table.c.key == key, table.c.failures >= threshold)
                .values(failures=0, opened_until=dialect.now_plus(decay))).rowcount)

        return self.store.transaction(work)

    def succeeded(self, key: str) -> None:
        """A success closes the count of consecutive failures."""
        table, key = self.table, _key(key)
        self.store.transaction(lambda c: c.execute(
            sa.update(table).where(table.c.key == key, table.c.failures > 0)
            .values(failures=0)))
