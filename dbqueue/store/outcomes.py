"""job_outcomes: what an idempotent job did, under a unique key that outlives the job.

The outcome row is written in the same transaction as the job's own database
effects, so the two commit together or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import keys
from ..policy.durations import age_seconds
from .store import Store

COMPLETED = "completed"
_UNBUILT = object()


@dataclass(frozen=True, slots=True)
class Outcome:
    idempotency_key: str
    job: str
    job_id: int | None
    status: str
    result_json: str | None
    """The job's return value as stored: JSON text, or None (NULL) when it
    returned None."""
    created_at: datetime
    expires_at: datetime | None

    @property
    def result(self) -> Any:
        """The job's return value, decoded from JSON (lists for tuples)."""
        return None if self.result_json is None else json.loads(self.result_json)


class Outcomes:
    """job_outcomes' verbs. ``get`` and ``prune`` run in a transaction of their
    own and raise dbqueue's errors; the others run in the caller's (the
    idempotent jobs' transaction) and leave its failures as SQLAlchemy raised
    them, for idempotency.OutcomeBatch to tell a deadlock from a refusal."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = store.tables.job_outcomes
        self._claim: Any = None
        self._claim_many: Any = _UNBUILT

    def claim(self, connection: Connection, key: str, job: str, job_id: int) -> bool:
        """In the caller's transaction, take ``key`` for this run; False if an outcome
        exists already. A run holding the key uncommitted makes this wait for it."""
        table, dialect = self.table, self.store.dialect
        if self._claim is None:  # built once: a worker's child claims a key per job
            self._claim = dialect.insert_if_absent_statement(
                table, self._claim_values(), table.c.idempotency_key, table.c.idempotency_key)
        return dialect.run_insert_if_absent(
            connection, self._claim, {"key": key, "job": job, "job_id": job_id},
            table.c.idempotency_key) is not None

    def claim_many(self, connection: Connection,
                   claims: list[tuple[str, str, int]]) -> set[str] | None:
        """In the caller's transaction, take each distinct ``(key, job, job_id)``'s
        key in one statement; return the keys taken (the others have an outcome),
        or None if this server cannot tell (MySQL): then claim one by one."""
        if self._claim_many is _UNBUILT:
            self._claim_many = self.store.dialect.insert_many_if_absent_statement(
                self.table, self._claim_values(), self.table.c.idempotency_key)
        if self._claim_many is None:
            return None
        return set(connection.execute(self._claim_many, [
            {"key": key, "job": job, "job_id": job_id} for key, job, job_id in claims
        ]).scalars())

    def _claim_values(self) -> dict[str, Any]:
        return {"idempotency_key": sa.bindparam("key"), "job": sa.bindparam("job"),
                "job_id": sa.bindparam("job_id"), "status": COMPLETED,
                "created_at": self.store.dialect.now()}

    # A savepoint around each job's own writes, so that a failing job is
    # undone alone. Named, so that RELEASE and ROLLBACK TO reach it whatever
    # savepoints the job nested inside it.
    _SAVEPOINT = "dbqueue_job"

    def savepoint(self, connection: Connection) -> None:
        connection.exec_driver_sql(f"SAVEPOINT {self._SAVEPOINT}")

    def keep_savepoint(self, connection: Connection) -> None:
        connection.exec_driver_sql(f"RELEASE SAVEPOINT {self._SAVEPOINT}")

    def undo_savepoint(self, connection: Connection) -> None:
        connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {self._SAVEPOINT}")

    def unclaim(self, connection: Connection, key: str) -> None:
        """In the caller's transaction, give up ``key`` (the run failed)."""
        table = self.table
        connection.execute(sa.delete(table).where(table.c.idempotency_key == key))

    def record(self, connection: Connection, key: str, result_json: str) -> bool:
        """In the caller's transaction, store the run's result under ``key``;
        False if the claim on ``key`` is not there."""
        table = self.table
        return connection.execute(sa.update(table).where(table.c.idempotency_key == key)
                                  .values(result=result_json)).rowcount == 1

    def newest(self, limit: int) -> list[Outcome]:
        """The ``limit`` outcomes recorded last, newest first."""
        table = self.table
        rows = self.store.read(lambda c: c.execute(
            sa.select(table).order_by(table.c.created_at.desc(), table.c.idempotency_key)
            .limit(limit)).all())
        return [_outcome(row) for row in rows]

    def get(self, key: str) -> Outcome | None:
        """The outcome recorded under ``key``: the key as the job's function gave
        it, or as stored (a long key is stored as its digest, see keys.fit)."""
        table, stored = self.table, keys.fit(key)
        row = self.store.read(lambda c: c.execute(
            sa.select(table).where(table.c.idempotency_key == stored)).first())
        return None if row is None else _outcome(row)

    def prune(self, older_than_days: float) -> int:
        """Delete outcomes recorded more than ``older_than_days`` days ago."""
        table = self.table
        age = age_seconds("older_than_days", older_than_days, "days")
        cutoff = self.store.dialect.now_plus(-age)
        return self.store.transaction(
            lambda c: c.execute(sa.delete(table).where(table.c.created_at < cutoff)).rowcount)


def _outcome(row: Any) -> Outcome:
    fields = dict(row._mapping)
    fields["result_json"] = fields.pop("result")
    return Outcome(**fields)
