"""MySQL/MariaDB with PyMySQL: many rows in multi-row INSERTs built as literals.

PyMySQL escapes and formats every value of an executemany in Python, after
SQLAlchemy has processed each row's parameters: the client, not the server,
set the pace (about 30,000 rows/s here). Built here, each distinct value of
a column is converted and escaped once, by the driver's own escaping (the
very one its executemany uses, which follows the server's
NO_BACKSLASH_ESCAPES mode): over twice the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .base import BULK_ROWS

# A bulk INSERT stays under this many bytes, as PyMySQL's executemany keeps
# its own, and under the session's max_allowed_packet where that is smaller.
_BULK_BYTES = 1_000_000
# What a bulk INSERT leaves of max_allowed_packet: the packet's own header,
# and room to spare.
_PACKET_SLACK = 1024
PACKET_LIMIT = "dbqueue_max_allowed_packet"
"""Where a connection keeps its max_allowed_packet: a session's value is read
only, fixed when it connects."""


def insert_literal_rows(connection: Connection, table: sa.Table,
                        rows: Sequence[dict[str, Any]], limit: tuple[int, str] | None) -> None:
    """Insert ``rows`` (all with the same keys) in multi-row INSERTs of at most
    BULK_ROWS rows, each under ``limit`` (the server's statement limit, and
    its name) where it is known."""
    columns = list(rows[0])
    to_sql = [_literal_maker(connection, table.c[name].type) for name in columns]
    preparer = connection.dialect.identifier_preparer
    head = (f"INSERT INTO {preparer.format_table(table)} "
            f"({', '.join(preparer.quote(name) for name in columns)}) VALUES ")
    budget = min(_BULK_BYTES, limit[0] - _PACKET_SLACK) - len(head) if limit else _BULK_BYTES
    values: list[str] = []
    size = 0
    for row in rows:
        text = "(" + ",".join(literal(row[name]) for name, literal in zip(
            columns, to_sql, strict=True)) + ")"
        length = len(text) if text.isascii() else len(text.encode())
        if values and (len(values) >= BULK_ROWS or size + length > budget):
            _run_literal(connection, head, values)
            values, size = [], 0
        values.append(text)
        size += length + 1
    _run_literal(connection, head, values)


def _literal_maker(connection: Connection, column_type: sa.types.TypeEngine[Any],
                   ) -> Callable[[Any], str]:
    """A function from a value of a column to its SQL literal, escaped by the
    driver; it converts and escapes each distinct value once."""
    process = column_type.bind_processor(connection.dialect)
    escape = connection.connection.driver_connection.escape  # type: ignore[union-attr]
    seen: dict[tuple[type, Any], str] = {}

    def convert(value: Any) -> str:
        return escape(process(value) if process else value)  # type: ignore[no-any-return]

    def literal(value: Any) -> str:
        key = (type(value), value)  # 1, True and 1.0 are equal keys, not equal literals
        try:
            text = seen.get(key)
        except TypeError:  # unhashable: nothing to share
            return convert(value)
        if text is None:
            text = seen[key] = convert(value)
        return text

    return literal


def _run_literal(connection: Connection, head: str, values: list[str]) -> None:
    # no_parameters: the driver must not read the text for %s placeholders
    # (a payload may well contain "%s").
    connection.exec_driver_sql(head + ",".join(values),
                               execution_options={"no_parameters": True})
