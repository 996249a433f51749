"""PostgreSQL: a new ready job wakes idle workers (LISTEN/NOTIFY).

An INSERT into jobs sends one notification per queue it filled with ready
jobs, on the channel named like the jobs table, with the queue's name as
the payload. PostgreSQL delivers notifications when the inserting
transaction commits, and never for one rolled back, so a worker woken by one
finds the job committed; it merges a transaction's identical notifications
into one, so a bulk insert of thousands of jobs wakes workers once.

A statement-level trigger reads the inserted rows from a transition table:
one call per INSERT statement, whatever its number of rows. Jobs dispatched
with a delay send nothing: workers find them by polling when they come due.
MySQL, MariaDB and SQLite have no such mechanism; there this revision does
nothing, and workers poll.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import context, op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PREFIX = context.config.attributes.get("table_prefix", "")
JOBS = f"{PREFIX}jobs"
FUNCTION = f"{PREFIX}jobs_notify"
TRIGGER = f"{PREFIX}jobs_notify"


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    quote = op.get_context().dialect.identifier_preparer.quote
    op.execute(f"""
        CREATE FUNCTION {quote(FUNCTION)}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify(TG_TABLE_NAME, queue)
            FROM (SELECT DISTINCT queue FROM inserted WHERE available_at <= now()) AS ready;
            RETURN NULL;
        END
        $$""")
    op.execute(f"""
        CREATE TRIGGER {quote(TRIGGER)} AFTER INSERT ON {quote(JOBS)}
        REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION {quote(FUNCTION)}()""")


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    quote = op.get_context().dialect.identifier_preparer.quote
    op.execute(f"DROP TRIGGER IF EXISTS {quote(TRIGGER)} ON {quote(JOBS)}")
    op.execute(f"DROP FUNCTION IF EXISTS {quote(FUNCTION)}()")
