"""SQLite: ids of jobs and failed jobs are never handed out twice (AUTOINCREMENT).

Without it SQLite gives the next row the id of the newest deleted one: once the
queue empties, a new job takes the id of one that completed or failed, and
failed_jobs.job_id, job_outcomes.job_id and the logs name two jobs. PostgreSQL
and MySQL never reuse ids; there this revision does nothing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import context, op

from dbqueue.store.dialects import UtcDateTime, dialect_for

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PREFIX = context.config.attributes.get("table_prefix", "")


def upgrade() -> None:
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)


def _rebuild(*, autoincrement: bool) -> None:
    if op.get_context().dialect.name != "sqlite":
        return
    # The tables as of revision 0003, given in full so that the rebuild (SQLite
    # cannot alter a primary key in place) also works offline, for --sql.
    for table in _tables(dialect_for(op.get_context().dialect).now_default()):
        with op.batch_alter_table(table.name, recreate="always", copy_from=table,
                                  table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass


def _tables(now: sa.TextClause) -> list[sa.Table]:
    metadata = sa.MetaData()
    jobs = sa.Table(
        f"{PREFIX}jobs", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("queue", sa.String(191), nullable=False),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("available_at", UtcDateTime, nullable=False, server_default=now),
        sa.Column("reserved_at", UtcDateTime),
        sa.Column("reserved_by", sa.String(64)),
        sa.Column("created_at", UtcDateTime, nullable=False, server_default=now),
        sa.Column("unique_key", sa.String(191)),
        sa.Column("unique_expires_at", UtcDateTime),
        sa.Index(f"{PREFIX}jobs_claim_idx", "queue", "priority", "id"),
        sa.Index(f"{PREFIX}jobs_unique_key_idx", "unique_key", unique=True),
    )
    failed_jobs = sa.Table(
        f"{PREFIX}failed_jobs", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("queue", sa.String(191), nullable=False),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("exception_class", sa.String(255), nullable=False),
        sa.Column("exception_message", sa.Text, nullable=False),
        sa.Column("exception", sa.Text, nullable=False),
        sa.Column("failed_at", UtcDateTime, nullable=False, server_default=now),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Index(f"{PREFIX}failed_jobs_queue_idx", "queue", "failed_at"),
        sa.Index(f"{PREFIX}failed_jobs_failed_at_idx", "failed_at"),
    )
    return [jobs, failed_jobs]
