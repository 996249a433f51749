"""The core tables: jobs, failed_jobs, job_outcomes, cache_locks, queue_workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import context, op

from dbqueue.store.dialects import UtcDateTime, dialect_for
from dbqueue.store.schema import BigId, LongText

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PREFIX = context.config.attributes.get("table_prefix", "")


def upgrade() -> None:
    now = dialect_for(op.get_context().dialect).now_default()
    op.create_table(
        f"{PREFIX}jobs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(191), nullable=False),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("payload", LongText, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("available_at", UtcDateTime, nullable=False, server_default=now),
        sa.Column("reserved_at", UtcDateTime),
        sa.Column("reserved_by", sa.String(64)),
        sa.Column("created_at", UtcDateTime, nullable=False, server_default=now),
    )
    # The claim query filters on queue and walks (priority, id) in order; the
    # lease expiry lives in available_at, checked on the rows the walk visits.
    op.create_index(f"{PREFIX}jobs_claim_idx", f"{PREFIX}jobs", ["queue", "priority", "id"])

    op.create_table(
        f"{PREFIX}failed_jobs",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("queue", sa.String(191), nullable=False),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("payload", LongText, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("exception_class", sa.String(255), nullable=False),
        sa.Column("exception_message", LongText, nullable=False),
        sa.Column("exception", LongText, nullable=False),
        sa.Column("failed_at", UtcDateTime, nullable=False, server_default=now),
        sa.Column("worker", sa.String(255), nullable=False),
    )
    op.create_index(f"{PREFIX}failed_jobs_queue_idx", f"{PREFIX}failed_jobs",
                    ["queue", "failed_at"])
    op.create_index(f"{PREFIX}failed_jobs_failed_at_idx", f"{PREFIX}failed_jobs", ["failed_at"])

    op.create_table(
        f"{PREFIX}job_outcomes",
        sa.Column("idempotency_key", sa.String(191), primary_key=True),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("result", LongText),
        sa.Column("created_at", UtcDateTime, nullable=False, server_default=now),
        sa.Column("expires_at", UtcDateTime),
    )
    op.create_index(f"{PREFIX}job_outcomes_created_at_idx", f"{PREFIX}job_outcomes",
                    ["created_at"])

    op.create_table(
        f"{PREFIX}cache_locks",
        sa.Column("key", sa.String(191), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
    )

    op.create_table(
        f"{PREFIX}queue_workers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queues", sa.String(1000), nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=False, server_default=now),
        sa.Column("last_seen_at", UtcDateTime, nullable=False, server_default=now),
        sa.Column("stop_requested_at", UtcDateTime),
    )


def downgrade() -> None:
    for name in ("queue_workers", "cache_locks", "job_outcomes", "failed_jobs", "jobs"):
        op.drop_table(f"{PREFIX}{name}")
