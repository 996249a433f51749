"""Which dbqueue dialect serves which SQLAlchemy dialect."""

from __future__ import annotations

import sqlalchemy as sa

from ...errors import UnsupportedDatabase
from .base import Dialect
from .mysql import MariaDB, MySQL
from .postgresql import PostgreSQL
from .sqlite import SQLite

_BY_NAME: dict[str, type[Dialect]] = {
    "postgresql": PostgreSQL,
    "mysql": MySQL,
    "mariadb": MariaDB,
    "sqlite": SQLite,
}


def lookup(sa_dialect: sa.Dialect) -> Dialect:
    name = sa_dialect.name
    # SQLAlchemy calls a MariaDB server "mysql" until it has connected and seen
    # the version string; is_mariadb is set from that first connection.
    if name == "mysql" and getattr(sa_dialect, "is_mariadb", False):
        name = "mariadb"
    try:
        return _BY_NAME[name]()
    except KeyError:
        raise UnsupportedDatabase(
            f"dbqueue does not support {sa_dialect.name!r} databases; "
            "use PostgreSQL, MySQL, MariaDB or SQLite"
        ) from None
