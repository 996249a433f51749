"""Tables of another application under the names dbqueue's would take.

``jobs`` is a common name: an application may have one of its own. dbqueue
then needs a table prefix, which ``dbqueue migrate`` says before creating
anything, and which the other commands and a dispatch say too, instead of
calling the tables missing (or too old, when the other ``jobs`` lacks a
column) and sending the user to a migrate that will refuse.
"""

from __future__ import annotations

from difflib import SequenceMatcher

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..policy.names import either
from .engine import describe, migrate_command
from .schema import build_tables, version_table

_PREFIXES = ("dbq_", "dbqueue_", "dbq2_", "dbq3_")  # to suggest, when the names are taken


def table_names(connection: Connection) -> set[str]:
    """The names of the tables and views in ``connection``'s database (or
    schema), in lower case."""
    inspector = sa.inspect(connection)
    return {name.lower() for name in inspector.get_table_names() + inspector.get_view_names()}


def taken(existing: set[str], table_prefix: str) -> list[str]:
    """The names of dbqueue's tables (with ``table_prefix``) among ``existing``."""
    return [table.name for table in build_tables(table_prefix).metadata.sorted_tables
            if table.name.lower() in existing]


def prefix_advice(engine: Engine, names: list[str], existing: set[str], table_prefix: str) -> str:
    """Why dbqueue's tables cannot be created in ``engine``'s database under
    their names (``names`` are another application's tables), and the prefix
    to give them."""
    # A prefix of the user's own choosing clashes too: build on it first.
    candidates = ((f"{table_prefix}dbq_",) if table_prefix else ()) + _PREFIXES
    free = next((p for p in candidates if p != table_prefix and not taken(existing, p)),
                "myapp_dbq_")
    named = f"a table named {names[0]}" if len(names) == 1 else f"tables named {', '.join(names)}"
    return (f"{describe(engine)} already has {named}, not dbqueue's (no dbqueue revision is "
            f"recorded in {version_table(table_prefix)}); give dbqueue's tables a prefix, "
            f"created with: {migrate_command(free, engine)}, and the same prefix wherever the "
            f"app runs: App(table_prefix={free!r}) or DBQUEUE_TABLE_PREFIX={free}")


def other_prefixes(existing: set[str], table_prefix: str) -> list[str]:
    """The prefixes of other sets of dbqueue's tables among ``existing`` (each
    recorded its revision): a command given no prefix, or a wrong one, should
    say these are there before it says to create new tables."""
    marker = version_table("")
    found = {name[:-len(marker)] for name in existing if name.endswith(marker)}
    found.discard(table_prefix)
    # The nearest first: a prefix mistyped by a letter, or typed in capitals.
    return sorted(found, key=lambda prefix: (
        -SequenceMatcher(None, prefix, table_prefix.lower()).ratio(), prefix))


def other_prefixes_advice(prefixes: list[str]) -> str:
    """Where dbqueue's tables are under other prefixes, how to name them."""
    named = [prefix for prefix in prefixes if prefix]
    if not named:
        return ("dbqueue's tables without a prefix are there: if those are meant, leave out "
                "--table-prefix (DBQUEUE_TABLE_PREFIX, App(table_prefix=...))")
    also = " (and without a prefix)" if "" in prefixes else ""
    first = named[0]
    return (f"dbqueue's tables with the prefix {either(named[:3])}{also} are there: if those "
            f"are meant, give --table-prefix {first} (DBQUEUE_TABLE_PREFIX={first}, "
            f"App(table_prefix={first!r}))")
