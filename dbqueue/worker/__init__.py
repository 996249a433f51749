"""The worker: a supervisor process per host and the child processes it runs jobs in."""

from .options import WorkerOptions
from .supervisor import Supervisor

__all__ = ["Supervisor", "WorkerOptions"]
