"""Hearing of new jobs as they are committed, where the server can tell.

On PostgreSQL, revision 0007's trigger notifies on the jobs table's name when
a committed INSERT made jobs ready, with each queue's name as the payload
(see migrations/versions/0007_jobs_notify.py). An idle worker waits on this
connection's socket instead of polling. Elsewhere :func:`listen` gives None,
and workers poll.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ..errors import DatabaseError
from .dialects import Notices
from .engine import unavailable

if TYPE_CHECKING:
    from .store import Store


class JobNotices:
    """A connection of its own that hears which queues received ready jobs."""

    def __init__(self, store: Store, notices: Notices) -> None:
        self.store = store
        self.notices = notices

    def fileno(self) -> int:
        return self.notices.fileno()

    def queues(self) -> set[str]:
        """The queues that received ready jobs since the last call (no waiting).
        DatabaseUnavailable when the connection is lost: listen again later."""
        try:
            return self.notices.received()
        except Exception as exc:
            raise unavailable(self.store.engine, exc) from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a lost connection is closed already
            self.notices.close()


def listen(store: Store) -> JobNotices | None:
    """Start listening, or None where the server cannot notify.
    DatabaseError if it cannot be reached now."""
    try:
        notices = store.dialect.listen(store.engine, store.tables.jobs.name)
    except DatabaseError:
        raise
    except Exception as exc:
        raise unavailable(store.engine, exc) from exc
    return None if notices is None else JobNotices(store, notices)
