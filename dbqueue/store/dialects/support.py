"""What the dialects share besides the Dialect class: the notices a server
sends, a session setting run on each new connection, the too-old error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Engine

from ...errors import UnsupportedDatabase


class Notices(Protocol):
    """Notifications of new jobs, heard on a connection of their own."""

    def fileno(self) -> int:
        """Readable when notifications (or the connection's end) arrived."""
        ...

    def received(self) -> set[str]:
        """The payloads received since the last call, without waiting.
        Raises the driver's error if the connection is lost."""
        ...

    def close(self) -> None: ...


def run_on_connect(engine: Engine, statement: Callable[[Any], str | None]) -> None:
    """Run the SQL ``statement(dbapi_connection)`` gives (if any) on each new
    connection of ``engine``, after SQLAlchemy's own set-up, and commit it:
    a session setting, which a rollback would undo."""

    @event.listens_for(engine, "connect")
    def _run(dbapi_connection: Any, _record: Any) -> None:
        sql = statement(dbapi_connection)
        if sql is None:
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()
        dbapi_connection.commit()


def server_too_old(what: str, version: str, minimum: str, why: str) -> UnsupportedDatabase:
    return UnsupportedDatabase(
        f"{what} {version} is too old for dbqueue: it needs {minimum} or newer ({why}); "
        f"upgrade the server, or use PostgreSQL"
    )
