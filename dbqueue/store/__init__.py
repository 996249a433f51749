"""The storage layer: the only code in dbqueue that builds or runs SQL."""

from .admin import Admin, FailedJob, QueueStatus
from .dialects import LONG_AGO, ReservedRow
from .engine import create_engine, describe
from .schema import Tables, build_tables
from .store import Store
from .values import Executor, Failure, Lease, NewJob
from .workers import WorkerInfo, WorkerRegistry

__all__ = [
    "LONG_AGO",
    "Admin",
    "Executor",
    "FailedJob",
    "Failure",
    "Lease",
    "NewJob",
    "QueueStatus",
    "ReservedRow",
    "Store",
    "Tables",
    "WorkerInfo",
    "WorkerRegistry",
    "build_tables",
    "create_engine",
    "describe",
]
