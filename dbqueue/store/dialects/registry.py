"""Which dbqueue dialect serves which SQLAlchemy dialect."""

from __future__ import annotations

import importlib

import sqlalchemy as sa

from ...errors import UnsupportedDatabase
from .base import Dialect

# Each dialect's module is imported when a database of its kind is first seen:
# importing SQLAlchemy's PostgreSQL dialect (every driver's, and its catalog
# tables) alone takes about 80 ms, which a worker on MySQL or SQLite, its fork
# server and every command would pay at start-up for nothing.
_BY_NAME: dict[str, tuple[str, str]] = {
    "postgresql": ("postgresql", "PostgreSQL"),
    "mysql": ("mysql", "MySQL"),
    "mariadb": ("mysql", "MariaDB"),
    "sqlite": ("sqlite", "SQLite"),
}


def lookup(sa_dialect: sa.Dialect) -> Dialect:
    name = sa_dialect.name
    # SQLAlchemy calls a MariaDB server "mysql" until it has connected and seen
    # the version string; is_mariadb is set from that first connection.
    if name == "mysql" and getattr(sa_dialect, "is_mariadb", False):
        name = "mariadb"
    try:
        module, class_name = _BY_NAME[name]
    except KeyError:
        raise UnsupportedDatabase(
            f"dbqueue does not support {sa_dialect.name!r} databases; "
            "use PostgreSQL, MySQL, MariaDB or SQLite"
        ) from None
    dialect: type[Dialect] = getattr(importlib.import_module(f".{module}", __package__),
                                     class_name)
    return dialect()
