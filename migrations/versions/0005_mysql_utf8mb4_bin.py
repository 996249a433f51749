"""MySQL/MariaDB: every table utf8mb4, with the binary collation utf8mb4_bin.

Until now the tables followed the database's default character set. On a
latin1 database a job argument outside Latin-1 failed at dispatch (error
1366); under the usual case-insensitive collations "Charge:1" and "charge:1"
were one idempotency key, and lock and unique-job keys likewise. utf8mb4 holds
any Unicode text and utf8mb4_bin compares keys byte for byte, as PostgreSQL
and SQLite do (trailing spaces aside: it is a PAD SPACE collation). Tables
created by later revisions get the same (dbqueue.migrations.charset).

CONVERT TO rewrites each table with its indexes, and writes to a table wait
while it does: flush old failed jobs first if failed_jobs is large. The
downgrade returns the tables to the database's default character set and
collation (but a downgrade to base only drops them); on a database whose
default cannot hold some stored text, it fails with error 1366 at the first
table holding such text, which it leaves as it was. PostgreSQL and SQLite
store Unicode text and compare it exactly already: there this revision does
nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PREFIX = context.config.attributes.get("table_prefix", "")

# The tables as of revision 0004. Spelled out here, not taken from
# dbqueue.migrations.charset, so that this revision stays what it was.
TABLES = ("jobs", "failed_jobs", "job_outcomes", "cache_locks", "queue_workers", "job_circuits")


def upgrade() -> None:
    _convert("utf8mb4 COLLATE utf8mb4_bin")


def downgrade() -> None:
    if op.get_context().opts.get("destination_rev") == "base":
        return  # 0001's downgrade drops every table: nothing to convert, nothing to fail
    _convert("DEFAULT")  # the database's default character set, with its default collation


def _convert(character_set: str) -> None:
    migration = op.get_context()
    if migration.dialect.name not in ("mysql", "mariadb"):
        return
    quote = migration.dialect.identifier_preparer.quote
    # Alembic's version table too, so that every dbqueue table reads the same.
    for table in (*(f"{PREFIX}{name}" for name in TABLES), migration.version_table):
        op.execute(f"ALTER TABLE {quote(table)} CONVERT TO CHARACTER SET {character_set}")
