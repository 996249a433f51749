"""Unique jobs: jobs.unique_key (unique index) and jobs.unique_expires_at.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import context, op

from dbqueue.store.dialects import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PREFIX = context.config.attributes.get("table_prefix", "")


def upgrade() -> None:
    # NULL for ordinary jobs: every backend lets a unique index hold many NULLs.
    op.add_column(f"{PREFIX}jobs", sa.Column("unique_key", sa.String(191)))
    op.add_column(f"{PREFIX}jobs", sa.Column("unique_expires_at", UtcDateTime))
    op.create_index(f"{PREFIX}jobs_unique_key_idx", f"{PREFIX}jobs", ["unique_key"], unique=True)


def downgrade() -> None:
    op.drop_index(f"{PREFIX}jobs_unique_key_idx", f"{PREFIX}jobs")
    with op.batch_alter_table(f"{PREFIX}jobs") as batch:  # SQLite rebuilds the table
        batch.drop_column("unique_expires_at")
        batch.drop_column("unique_key")
