"""The job of ./scripts/bench: a no-op, so that only dbqueue's own cost is measured.

The queue is wherever DBQUEUE_URL and DBQUEUE_TABLE_PREFIX point (scripts/bench
sets both); workers load it with ``dbqueue work --app bench_app:app``.
"""

from __future__ import annotations

import dbqueue

app = dbqueue.App()  # DBQUEUE_URL, DBQUEUE_TABLE_PREFIX


@app.job(name="noop")
def noop(i: int) -> None:
    pass
