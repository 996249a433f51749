"""The values the store's verbs take, and the small rules they share."""

from __future__ import annotations

import sys
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeAlias, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

T = TypeVar("T")
Executor: TypeAlias = "Connection | Session"


def current_session(value: object) -> Session | None:
    """``value`` as an ORM Session: itself, or a scoped_session's current one
    (Flask-SQLAlchemy's db.session is a scoped_session); None if neither.

    A Session exists only once sqlalchemy.orm is loaded: looking it up keeps
    that import (a tenth of a second) out of workers and scripts that never
    use the ORM."""
    orm = sys.modules.get("sqlalchemy.orm")
    if orm is None:
        return None
    if isinstance(value, orm.scoped_session):
        return value()  # type: ignore[no-any-return]
    return value if isinstance(value, orm.Session) else None

_IN_CHUNK = 500  # ids per IN (...) list: well under every server's parameter limit


class NewJob(NamedTuple):
    """A job to insert. ``delay`` counts from the database server's clock.

    With a ``unique_key`` the job is inserted only if no queued or running
    job holds that key (or its holder's ``unique_for`` seconds have passed).
    """

    queue: str
    job: str
    payload: str
    priority: int = 0
    delay: float = 0.0
    unique_key: str | None = None
    unique_for: float | None = None


class Lease(NamedTuple):
    """A reservation: the job's id and the token its worker holds it by."""

    id: int
    token: str


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a job failed, as failed_jobs records it."""

    exception_class: str
    message: str
    traceback: str


def _chunks(items: Sequence[T], size: int = _IN_CHUNK) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _by_token(leases: Iterable[Lease]) -> Mapping[str, list[int]]:
    grouped: dict[str, list[int]] = defaultdict(list)
    for lease in leases:
        grouped[lease.token].append(lease.id)
    return grouped


def canonical_uuid(ref: str) -> str:
    """``ref`` as dbqueue writes a uuid (lower case, with dashes) if it is one
    in any spelling (``9C2FDD2E-…``, without dashes), else ``ref`` itself."""
    try:
        return str(uuid.UUID(ref.strip()))
    except (ValueError, AttributeError):
        return ref


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL characters, and an exception message may;
    # no driver can send a lone surrogate (from a job's "\ud800", say).
    value = value.replace("\x00", "\\x00")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode(errors="backslashreplace").decode()
    return value


def held_locks(locks: sa.Table, held: Sequence[tuple[str, str]]) -> sa.ColumnElement[bool]:
    """The cache_locks rows of these ``(key, owner)`` pairs."""
    return sa.tuple_(locks.c.key, locks.c.owner).in_(list(held))


def free_locks(c: Connection, locks: sa.Table, held: Sequence[tuple[str, str]]) -> None:
    """Delete the cache_locks rows of these ``(key, owner)`` pairs."""
    for chunk in _chunks(held):
        c.execute(sa.delete(locks).where(held_locks(locks, chunk)))


_MAX_ATTEMPTS = 2**31 - 1  # an INTEGER column


def _attempts(value: int) -> int:
    """An attempt count the column can hold: a row someone set to the largest
    INTEGER runs (with tries=None) without its count overflowing."""
    return max(0, min(value, _MAX_ATTEMPTS))
