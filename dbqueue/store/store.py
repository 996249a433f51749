"""The queue's storage verbs: the only code that reads or writes the jobs tables.

Each verb either runs in the caller's transaction (``connection=``: a
SQLAlchemy Connection or Session, never committed here) or in a short
transaction of its own, retried on deadlocks and lock-wait timeouts (see
transactions.py). A failure of the database comes out as dbqueue's error:
DatabaseUnavailable when it cannot be reached now, DatabaseError when it
refused, NotMigrated when the tables are missing or too old.

The verbs live by theme: queueing jobs in dispatch.py, the worker's verbs
about reserved jobs in leases.py; Store gathers them.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from .engine import connect, tables_missing, translating
from .leases import Leases
from .schema import REVISION
from .transactions import tables_outdated

# Where these names were defined before the verbs were split by theme.
from .values import Executor as Executor
from .values import Failure as Failure
from .values import Lease as Lease
from .values import NewJob as NewJob
from .values import _attempts as _attempts
from .values import _chunks as _chunks
from .values import _text as _text
from .values import held_locks as held_locks


class Store(Leases):
    """dbqueue's tables in one database, and the verbs that change them."""

    def check_server(self) -> None:
        """Raise UnsupportedDatabase if the server cannot give dbqueue's guarantees."""
        with translating(self.engine, self.prefix), connect(self.engine) as connection:
            self.dialect.check_server(connection)

    def check_schema(self) -> None:
        """Raise NotMigrated unless the tables are at a revision this code works
        with (SchemaOutdated if they are merely too old).

        Newer ones pass: each migration keeps older code working, so during a
        rolling deploy the hosts still on the old code go on while one migrates.
        """
        current = self.read(self.read_revision)
        if current is None:
            raise tables_missing(self.engine, self.prefix)
        if current < REVISION:
            raise tables_outdated(self.engine, self.prefix, current, REVISION)

    def now(self) -> datetime:
        """The database server's current time (UTC)."""
        return self.read(lambda c: c.execute(sa.select(self._now())).scalar_one())
