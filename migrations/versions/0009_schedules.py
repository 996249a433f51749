"""Schedules: schedules and schedule_ticks.

``schedules`` has one row per schedule the application declares: its
definition (when it changes, ticks count from then on), the last tick dealt
with and what became of it, the last run queued and the last one that ended
(outcome and time): "did it run?" in one row.

``schedule_ticks`` has one row per tick claimed, under the primary key
(schedule, tick): however many workers run the scheduler, a tick is claimed,
and its run queued, once. A tick's run is queued in the same transaction that
claims it. Rows older than a day are pruned.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import context, op

from dbqueue.migrations.charset import TABLE_OPTIONS
from dbqueue.store.dialects import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PREFIX = context.config.attributes.get("table_prefix", "")


def upgrade() -> None:
    op.create_table(
        f"{PREFIX}schedules",
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
        **TABLE_OPTIONS,
    )
    op.create_table(
        f"{PREFIX}schedule_ticks",
        sa.Column("schedule", sa.String(191), primary_key=True),
        sa.Column("tick", UtcDateTime, primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("job_id", sa.BigInteger),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("outcome", sa.String(20)),
        sa.Column("ended_at", UtcDateTime),
        **TABLE_OPTIONS,
    )
    op.create_index(f"{PREFIX}schedule_ticks_created_at_idx", f"{PREFIX}schedule_ticks",
                    ["created_at"])


def downgrade() -> None:
    op.drop_index(f"{PREFIX}schedule_ticks_created_at_idx", f"{PREFIX}schedule_ticks")
    op.drop_table(f"{PREFIX}schedule_ticks")
    op.drop_table(f"{PREFIX}schedules")
