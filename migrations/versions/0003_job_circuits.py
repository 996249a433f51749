"""Circuit breakers for ThrottlesExceptions: job_circuits.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import context, op

from dbqueue.store.dialects import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PREFIX = context.config.attributes.get("table_prefix", "")


def upgrade() -> None:
    op.create_table(
        f"{PREFIX}job_circuits",
        sa.Column("key", sa.String(191), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("opened_until", UtcDateTime),
    )


def downgrade() -> None:
    op.drop_table(f"{PREFIX}job_circuits")
