"""dbqueue: background jobs in the SQL database you already run.

    import dbqueue

    app = dbqueue.App("postgresql://app@db/app")

    @app.job(queue="mail", tries=3, backoff=[10, 60])
    def send_invoice(invoice_id: int) -> None: ...

    send_invoice.dispatch(42)                                  # its own transaction
    send_invoice.options(connection=session).dispatch(42)      # inside yours

Run the jobs with ``dbqueue work --app yourmodule:app`` on every host.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name, and the module that defines it. They are imported on first
# use (PEP 562): `dbqueue work` must start its fork server before SQLAlchemy is
# imported, so that both imports run at once; and a command line that only
# asks for --version or --help imports nothing heavy.
_EXPORTS = {
    "App": "app",
    "CurrentJob": "current",
    "current_job": "current",
    "ConfigurationError": "errors",
    "DatabaseError": "errors",
    "DatabaseUnavailable": "errors",
    "DBQueueError": "errors",
    "Fail": "errors",
    "InvalidArguments": "errors",
    "JobSignal": "errors",
    "JobTimeout": "errors",
    "LockNotAcquired": "errors",
    "MaxAttemptsExceeded": "errors",
    "NotFound": "errors",
    "NotMigrated": "errors",
    "Release": "errors",
    "SerializationError": "errors",
    "TransactionSpoiled": "errors",
    "UnknownJob": "errors",
    "UnsupportedDatabase": "errors",
    "WorkerCrashed": "errors",
    "transaction": "idempotency",
    "BoundJob": "jobs",
    "Job": "jobs",
    "JobFailure": "jobs",
    "PreparedJob": "jobs",
    "Lock": "locks",
    "JobContext": "middleware",
    "Middleware": "middleware",
    "RateLimited": "middleware",
    "ThrottlesExceptions": "middleware",
    "WithoutOverlapping": "middleware",
    "Exponential": "policy",
    "Settings": "settings",
    "Schedule": "schedule",
    "Batch": "workflows",
    "Chain": "workflows",
}

if TYPE_CHECKING:
    from .app import App
    from .current import CurrentJob, current_job
    from .errors import (
        ConfigurationError,
        DatabaseError,
        DatabaseUnavailable,
        DBQueueError,
        Fail,
        InvalidArguments,
        JobSignal,
        JobTimeout,
        LockNotAcquired,
        MaxAttemptsExceeded,
        NotFound,
        NotMigrated,
        Release,
        SerializationError,
        TransactionSpoiled,
        UnknownJob,
        UnsupportedDatabase,
        WorkerCrashed,
    )
    from .idempotency import transaction
    from .jobs import BoundJob, Job, JobFailure, PreparedJob
    from .locks import Lock
    from .middleware import (
        JobContext,
        Middleware,
        RateLimited,
        ThrottlesExceptions,
        WithoutOverlapping,
    )
    from .policy import Exponential
    from .schedule import Schedule
    from .settings import Settings
    from .workflows import Batch, Chain


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dbqueue' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "App",
    "Batch",
    "BoundJob",
    "Chain",
    "ConfigurationError",
    "CurrentJob",
    "DBQueueError",
    "DatabaseError",
    "DatabaseUnavailable",
    "Exponential",
    "Fail",
    "InvalidArguments",
    "Job",
    "JobContext",
    "JobFailure",
    "JobSignal",
    "JobTimeout",
    "Lock",
    "LockNotAcquired",
    "MaxAttemptsExceeded",
    "Middleware",
    "NotFound",
    "NotMigrated",
    "PreparedJob",
    "RateLimited",
    "Release",
    "Schedule",
    "SerializationError",
    "Settings",
    "ThrottlesExceptions",
    "TransactionSpoiled",
    "UnknownJob",
    "UnsupportedDatabase",
    "WithoutOverlapping",
    "WorkerCrashed",
    "__version__",
    "current_job",
    "transaction",
]
