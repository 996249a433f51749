"""Batches: job_batches, and failed_jobs.batch_id.

A batch is one row: how many of its jobs there are, how many have not
finished yet and how many failed for good; its callbacks (then, catch,
finally) as queued-job specs in JSON, and which of them were queued
(``fired``, a bitmask), so that each is queued once. Workers change the
counters in the transaction that records their jobs' outcomes.

failed_jobs.batch_id lets ``dbqueue batches retry`` find a batch's failed
jobs without reading every payload.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

from dbqueue.migrations.charset import TABLE_OPTIONS
from dbqueue.store.dialects import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

PREFIX = context.config.attributes.get("table_prefix", "")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        f"{PREFIX}job_batches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("pending", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("allow_failures", sa.Boolean, nullable=False),
        sa.Column("callbacks", LongText, nullable=False),
        sa.Column("fired", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("cancelled_at", UtcDateTime),
        sa.Column("finished_at", UtcDateTime),
        **TABLE_OPTIONS,
    )
    op.create_index(f"{PREFIX}job_batches_created_at_idx", f"{PREFIX}job_batches",
                    ["created_at"])
    with op.batch_alter_table(f"{PREFIX}failed_jobs") as table:
        table.add_column(sa.Column("batch_id", sa.String(36)))
        table.create_index(f"{PREFIX}failed_jobs_batch_idx", ["batch_id"])


def downgrade() -> None:
    # SQLite rebuilds the table to drop a column: keep AUTOINCREMENT (0004) on it.
    with op.batch_alter_table(f"{PREFIX}failed_jobs",
                              table_kwargs={"sqlite_autoincrement": True}) as table:
        table.drop_index(f"{PREFIX}failed_jobs_batch_idx")
        table.drop_column("batch_id")
    op.drop_index(f"{PREFIX}job_batches_created_at_idx", f"{PREFIX}job_batches")
    op.drop_table(f"{PREFIX}job_batches")
