"""The batch group of ./scripts/bench: the same no-op jobs, dispatched as one batch.

Every job then carries its batch in its payload; the worker decodes it,
checks at each reservation whether the batch was cancelled, and counts the
jobs in the batch's row in each completion transaction (store.flows). The
ratio to the plain run of the same invocation is what a batch costs.
"""

from __future__ import annotations

import time

from bench import analyze, counts, reset, run_worker, say, throughput


def bench_batch(app, noop, jobs: int, concurrency: int,
                startup_s: float) -> dict[str, float | None]:
    reset(app)
    started = time.perf_counter()
    batch_id = app.batch([noop.prepare(i) for i in range(jobs)], name="bench").dispatch()
    dispatch_s = time.perf_counter() - started
    analyze(app)
    say(f"processing a batch of {jobs} noop jobs with concurrency {concurrency}")
    seconds = run_worker(concurrency)
    batch = app.find_batch(batch_id)
    if counts(app) != (0, 0) or (batch.pending, batch.failed, batch.finished) != (0, 0, True):
        raise SystemExit(f"error: after the worker, {counts(app)} (jobs, failed) left and the "
                         f"batch has {batch.pending} pending, {batch.failed} failed")
    return {**throughput("process_batch", jobs, seconds, startup_s),
            "batch_dispatch_per_s": round(jobs / dispatch_s, 1)}
