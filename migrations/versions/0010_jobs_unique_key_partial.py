"""PostgreSQL: the unique_key index holds only the jobs that have a key.

Most jobs have no unique key, yet each of them had an entry in this index,
and PostgreSQL writes a new one at every UPDATE that moves a job to a new
row version: the reservation's, the renewal's, a retry's. As a partial
index (WHERE unique_key IS NOT NULL) it holds only the unique jobs, and a
reservation of a plain job writes two index entries instead of three.

Uniqueness is unchanged (NULL keys never conflicted), and so is every
lookup by key: ``unique_key = 'x'`` implies the index's condition. The
INSERT ... ON CONFLICT of a unique dispatch names that condition, which the
old, full index satisfies too, so the code runs before and after this
revision. The index is rebuilt inside the migration's transaction: writes to
jobs wait meanwhile (about a second per million jobs). MySQL, MariaDB and
SQLite are left as they are (MySQL has no partial indexes; InnoDB and
SQLite write a secondary index only when its column changes).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import context, op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PREFIX = context.config.attributes.get("table_prefix", "")
JOBS = f"{PREFIX}jobs"
INDEX = f"{PREFIX}jobs_unique_key_idx"


def upgrade() -> None:
    _rebuild(partial=True)


def downgrade() -> None:
    _rebuild(partial=False)


def _rebuild(*, partial: bool) -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.drop_index(INDEX, table_name=JOBS)
    where = sa.text("unique_key IS NOT NULL") if partial else None
    op.create_index(INDEX, JOBS, ["unique_key"], unique=True, postgresql_where=where)
