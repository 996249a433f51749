"""The jobs of ./scripts/bench: no-ops, so that only dbqueue's own cost is measured.

``noop`` is a plain job; ``overlap_noop`` adds the cost of WithoutOverlapping
(a lock on a key of its own), and ``idempotent_noop`` that of idempotency_key
(it writes nothing but its outcome). ``stamp`` appends its argument and the
time it started to the file named by DBQUEUE_BENCH_STAMPS (pickup latency).
The queue is wherever DBQUEUE_URL and DBQUEUE_TABLE_PREFIX point
(scripts/bench sets both); workers load it with ``dbqueue work --app
bench_app:app``.
"""

from __future__ import annotations

import os
import time

import dbqueue

app = dbqueue.App()  # DBQUEUE_URL, DBQUEUE_TABLE_PREFIX


@app.job(name="noop")
def noop(i: int) -> None:
    pass


@app.job(name="overlap_noop", middleware=[dbqueue.WithoutOverlapping(lambda i: str(i))])
def overlap_noop(i: int) -> None:
    pass


@app.job(name="idempotent_noop", idempotency_key=lambda i: f"bench:{i}")
def idempotent_noop(i: int) -> None:
    pass


@app.job(name="stamp")
def stamp(i: int) -> None:
    started = time.time()
    # One short write in append mode: lines from concurrent children never mix.
    with open(os.environ["DBQUEUE_BENCH_STAMPS"], "a") as stamps:
        stamps.write(f"{i} {started!r}\n")
