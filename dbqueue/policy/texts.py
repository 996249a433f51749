"""How much of a failure's text is kept: enough for a person, never a write's worth.

An exception's message can be anything a job put in it: a whole response
body, a file. Kept whole, a message of 20 MB crossed the child's pipe and was
the INSERT of a failed_jobs row that MySQL refused (over max_allowed_packet,
it drops the connection), so no outcome of any job could be written. The
message keeps its start, where its gist is; a traceback its start and its
end, where the exception is.
"""

from __future__ import annotations

MESSAGE_CHARACTERS = 10_000
TRACEBACK_CHARACTERS = 100_000
_SAYING_SO = 1_000
"""Room for the note of what was cut, and for what the worker adds to a message
(why it is not retried): a text shortened once is not cut again (the child
shortens, and the store, which takes failures from elsewhere too)."""


def shortened_message(text: str) -> str:
    """``text`` cut to MESSAGE_CHARACTERS at most, saying how much was cut."""
    if len(text) <= MESSAGE_CHARACTERS + _SAYING_SO:
        return text
    cut = len(text) - MESSAGE_CHARACTERS
    return f"{text[:MESSAGE_CHARACTERS]}… [{cut:,} more characters cut]"


def shortened_traceback(text: str) -> str:
    """``text`` cut to TRACEBACK_CHARACTERS at most, its start and its end kept."""
    if len(text) <= TRACEBACK_CHARACTERS + _SAYING_SO:
        return text
    half = TRACEBACK_CHARACTERS // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n… [{cut:,} characters cut] …\n{text[-half:]}"
