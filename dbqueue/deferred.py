"""``after_commit`` dispatch: hold jobs until a Session's transaction commits.

For a queue that lives in another database than the application's data: the
jobs are queued (in one transaction of the queue's own) right after the
application's transaction commits, and dropped if it rolls back. A rolled back
SAVEPOINT drops the jobs dispatched inside it and keeps the others.

Between the application's commit and the queue's insert there is a window: if
the process dies there, or the queue's database refuses the insert, the jobs
are lost (the insert's error is raised from ``session.commit()``). Dispatch
with ``connection=`` when the queue shares the application's database: that
has no such window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from .errors import ConfigurationError
from .store.values import current_session

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, SessionTransaction

    from .jobs import PreparedJob

_KEY = "dbqueue.after_commit"


def defer(session: Any, prepared: Sequence[PreparedJob | Callable[[], object]]) -> None:
    """Hold ``prepared`` until ``session`` next commits; drop them if it rolls back.

    An item may also be a callable (a batch's dispatch), called after the
    jobs held with it are queued.

    A Session that has not begun its transaction yet (SQLAlchemy begins it at
    the first statement) begins it now: a rollback before that statement
    would emit no event (it has nothing to roll back), and the jobs would then
    be queued by whichever transaction commits next.
    """
    session = current_session(session)
    if session is None:
        raise ConfigurationError(
            "after_commit= takes a SQLAlchemy Session; with a Connection, dispatch with "
            "connection= instead (inside the same transaction, which is safer still)"
        )
    if session.get_transaction() is None:
        if not getattr(session, "autobegin", True):
            raise ConfigurationError("after_commit= needs the Session's transaction begun: "
                                     "call session.begin() first (the Session has "
                                     "autobegin=False)")
        session.begin()
    transaction = session.get_nested_transaction() or session.get_transaction()
    # Listeners stay for the session's life (SQLAlchemy cannot remove one while
    # its event runs); with nothing held they do nothing.
    if not event.contains(session, "after_commit", _after_commit):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_soft_rollback", _after_soft_rollback)
    held = session.info.setdefault(_KEY, [])
    held.extend((transaction, job) for job in prepared)


def _after_commit(session: Session) -> None:
    # SQLAlchemy emits this for a SAVEPOINT released too: its jobs then belong
    # to the enclosing transaction, which may still roll back.
    if session.in_nested_transaction():
        return
    by_app: dict[Any, list[PreparedJob]] = defaultdict(list)
    calls = []
    for _transaction, prepared in session.info.pop(_KEY, []):
        if callable(prepared):
            calls.append(prepared)
        else:
            by_app[prepared.app].append(prepared)
    for app, prepared_jobs in by_app.items():
        app.dispatch_many(prepared_jobs)
    for call in calls:
        call()


def _within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    held = session.info.get(_KEY)
    if held:
        session.info[_KEY] = [(t, job) for t, job in held if not _within(t, previous_transaction)]
