"""Runs dbqueue's migrations, online on a connection dbqueue hands over, or
offline (``dbqueue migrate --sql``) as SQL text for a DBA."""

import sqlalchemy as sa
from alembic import context

config = context.config
prefix = config.attributes.get("table_prefix", "")
# A table of its own, so dbqueue's revisions never mix with the application's
# own Alembic history in the same database.
version_table = f"{prefix}dbqueue_alembic_version"


def run_migrations() -> None:
    with context.begin_transaction():
        context.run_migrations()
        if context.get_context().opts.get("destination_rev") == "base":
            # Alembic empties its version table but leaves it: "base" means
            # that no dbqueue table is left at all.
            context.execute(
                sa.schema.DropTable(sa.Table(version_table, sa.MetaData()), if_exists=True)
            )


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        version_table=version_table,
        output_buffer=config.output_buffer,
    )
else:
    context.configure(connection=config.attributes["connection"], version_table=version_table)
run_migrations()
