"""dbqueue's tables as SQLAlchemy Core objects (the migrations create them).

Times are UTC from the database server's clock. ``jobs.available_at`` is when a
queued job may start; for a reserved job it is when the lease expires, so one
range condition finds both ready jobs and jobs whose worker died.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from .dialects import LongText, UtcDateTime

# LongText too: migration 0001 imports it from here.
__all__ = ["REVISION", "BigId", "LongText", "Tables", "build_tables", "version_table"]

REVISION = "0009"
"""The oldest revision of the tables this code works with: workers refuse
older ones. Raise it with a migration this code cannot run without (0004 only
stops SQLite from reusing ids, 0006 only changes an index, 0007 only adds a
trigger: the code works without them; it writes failed_jobs.batch_id, 0008, and
its scheduler the schedules tables, 0009)."""


def version_table(prefix: str = "") -> str:
    """Where Alembic records the tables' revision."""
    return f"{prefix}dbqueue_alembic_version"


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only


@dataclass(frozen=True)
class Tables:
    metadata: sa.MetaData
    jobs: sa.Table
    failed_jobs: sa.Table
    job_outcomes: sa.Table
    cache_locks: sa.Table
    queue_workers: sa.Table
    job_circuits: sa.Table
    job_batches: sa.Table
    schedules: sa.Table
    schedule_ticks: sa.Table


def build_tables(prefix: str = "") -> Tables:
    """The tables, named with ``prefix`` (for applications whose table names clash)."""
    metadata = sa.MetaData()
    jobs = sa.Table(
        f"{prefix}jobs", metadata,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(191), nullable=False),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("payload", LongText, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("priority", sa.Integer, nullable=False, default=0),
        sa.Column("available_at", UtcDateTime, nullable=False),
        sa.Column("reserved_at", UtcDateTime),
        sa.Column("reserved_by", sa.String(64)),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("unique_key", sa.String(191)),
        sa.Column("unique_expires_at", UtcDateTime),
        # A reservation walks (queue, priority, id) in order; available_at, last,
        # lets the walk pass over jobs not yet due inside the index (0006).
        sa.Index(f"{prefix}jobs_ready_idx", "queue", "priority", "id", "available_at"),
        sa.Index(f"{prefix}jobs_unique_key_idx", "unique_key", unique=True),
        # On SQLite, ids are never reused (AUTOINCREMENT, migration 0004). Not
        # declared here: these objects never create a table, and the option
        # would make SQLAlchemy import its SQLite dialect in every process.
    )
    failed_jobs = sa.Table(
        f"{prefix}failed_jobs", metadata,
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("queue", sa.String(191), nullable=False),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, default=0),
        sa.Column("payload", LongText, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("exception_class", sa.String(255), nullable=False),
        sa.Column("exception_message", LongText, nullable=False),
        sa.Column("exception", LongText, nullable=False),
        sa.Column("failed_at", UtcDateTime, nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("batch_id", sa.String(36)),  # 0008: `dbqueue batches retry` finds them
        sa.Index(f"{prefix}failed_jobs_queue_idx", "queue", "failed_at"),
        sa.Index(f"{prefix}failed_jobs_batch_idx", "batch_id"),
        sa.Index(f"{prefix}failed_jobs_failed_at_idx", "failed_at"),
    )
    job_outcomes = sa.Table(
        f"{prefix}job_outcomes", metadata,
        sa.Column("idempotency_key", sa.String(191), primary_key=True),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("result", LongText),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime),
        sa.Index(f"{prefix}job_outcomes_created_at_idx", "created_at"),
    )
    cache_locks = sa.Table(
        f"{prefix}cache_locks", metadata,
        sa.Column("key", sa.String(191), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
    )
    queue_workers = sa.Table(
        f"{prefix}queue_workers", metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queues", sa.String(1000), nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("last_seen_at", UtcDateTime, nullable=False),
        sa.Column("stop_requested_at", UtcDateTime),
    )
    job_circuits = sa.Table(
        f"{prefix}job_circuits", metadata,
        sa.Column("key", sa.String(191), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, default=0),
        sa.Column("opened_until", UtcDateTime),
    )
    job_batches = sa.Table(
        f"{prefix}job_batches", metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("pending", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False, default=0),
        sa.Column("allow_failures", sa.Boolean, nullable=False),
        sa.Column("callbacks", LongText, nullable=False),
        sa.Column("fired", sa.Integer, nullable=False, default=0),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("cancelled_at", UtcDateTime),
        sa.Column("finished_at", UtcDateTime),
        sa.Index(f"{prefix}job_batches_created_at_idx", "created_at"),
    )
    schedules, schedule_ticks = schedule_tables(metadata, prefix)
    return Tables(metadata, jobs, failed_jobs, job_outcomes, cache_locks, queue_workers,
                  job_circuits, job_batches, schedules, schedule_ticks)


def schedule_tables(metadata: sa.MetaData, prefix: str) -> tuple[sa.Table, sa.Table]:
    """schedules: one row per schedule, its last tick and last run (revision 0009);
    schedule_ticks: each tick claimed, under its unique key (schedule, tick)."""
    schedules = sa.Table(
        f"{prefix}schedules", metadata,
        sa.Column("name", sa.String(191), primary_key=True),
        sa.Column("definition", sa.String(255), nullable=False),
        sa.Column("declared_at", UtcDateTime, nullable=False),
        sa.Column("last_tick", UtcDateTime),
        sa.Column("last_status", sa.String(20)),
        sa.Column("last_job_id", sa.BigInteger),
        sa.Column("last_run_tick", UtcDateTime),
        sa.Column("last_queued_at", UtcDateTime),
        sa.Column("last_ended_tick", UtcDateTime),
        sa.Column("last_outcome", sa.String(20)),
        sa.Column("last_ended_at", UtcDateTime),
    )
    schedule_ticks = sa.Table(
        f"{prefix}schedule_ticks", metadata,
        sa.Column("schedule", sa.String(191), primary_key=True),
        sa.Column("tick", UtcDateTime, primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("outcome", sa.String(20)),
        sa.Column("ended_at", UtcDateTime),
        sa.Index(f"{prefix}schedule_ticks_created_at_idx", "created_at"),
    )
    return schedules, schedule_ticks
