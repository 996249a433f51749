"""What to say when a --queue, --job or --exception filter of the failed-job
commands matches nothing: the name typed is often a letter off, or a job's
function name where the stored name is ``module.function``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..policy.names import close_names, either

if TYPE_CHECKING:
    from ..store.admin import Admin


def hint_unmatched(admin: Admin, *, queue: str | None, job: str | None = None,
                   exception: str | None = None, err: bool = False) -> None:
    """Print a line for ``queue``, ``job`` or ``exception`` when no failed job
    has it, naming the nearest ones failed jobs have (nothing when none is near)."""
    if queue:
        close = close_names(queue, admin.failed_names("queue"))
        if close:
            click.echo(f"No failed job is in queue {queue!r}; did you mean {either(close)}?",
                       err=err)
    if job:
        close = close_names(job, admin.failed_names("job"), dotted=True)
        if close:
            click.echo(f"No failed job is named {job!r}; did you mean {either(close)}?",
                       err=err)
    if exception:
        classes = admin.failed_names("exception_class")
        # A class that contains the text is no slip: the other filters left it out.
        by_lower = {name.lower(): name for name in classes}  # the filter ignores case too
        if not any(exception.lower() in name for name in by_lower):
            close = [by_lower[name]
                     for name in close_names(exception.lower(), list(by_lower), dotted=True)]
            if close:
                click.echo(f"No failed job's exception class contains {exception!r}; "
                           f"did you mean {either(close)}?", err=err)
