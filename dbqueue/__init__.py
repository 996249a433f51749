"""dbqueue: background jobs in the SQL database you already run.

    import dbqueue

    app = dbqueue.App("postgresql://app@db/app")

    @app.job(queue="mail", tries=3, backoff=[10, 60])
    def send_invoice(invoice_id: int) -> None: ...

    send_invoice.dispatch(42)                                  # its own transaction
    send_invoice.options(connection=session).dispatch(42)      # inside yours

Run the jobs with ``dbqueue work --app yourmodule:app`` on every host.
"""

from .app import App
from .errors import (
    ConfigurationError,
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
from .settings import Settings

__version__ = "0.1.0"

__all__ = [
    "App",
    "BoundJob",
    "ConfigurationError",
    "DBQueueError",
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
    "SerializationError",
    "Settings",
    "ThrottlesExceptions",
    "TransactionSpoiled",
    "UnknownJob",
    "UnsupportedDatabase",
    "WithoutOverlapping",
    "WorkerCrashed",
    "__version__",
    "transaction",
]
