"""Pure decisions (backoff, the fate of a failed attempt): no I/O, the clock passed in."""

from .backoff import Backoff, Exponential, backoff_delay, refuse_endless_retries, validate_backoff
from .outcome import Decision, Ended, GiveUp, Retry, Rules, decide, refuse_attempt

__all__ = [
    "Backoff",
    "Decision",
    "Ended",
    "Exponential",
    "GiveUp",
    "Retry",
    "Rules",
    "backoff_delay",
    "decide",
    "refuse_attempt",
    "refuse_endless_retries",
    "validate_backoff",
]
