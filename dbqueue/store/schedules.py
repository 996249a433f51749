"""Schedules: recurring jobs, their ticks and their last runs (see dbqueue.schedule)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from .flows import FlowEnd


def record_runs(store: Any, connection: Connection, ends: Sequence[FlowEnd]) -> None:
    """Record how the scheduled runs ``ends`` ended, in the completion's transaction."""
