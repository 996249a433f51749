"""The locks group of ./scripts/bench: ``app.lock()`` acquire + release pairs,
in one process and in several at once, each on keys of its own (throughput,
not contention)."""

from __future__ import annotations

import multiprocessing
import sys
import time

LOCK_PROCESSES = 4
LOCK_KEYS = 50  # per process


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_start = None  # in a lock process: the barrier that all of them leave together


def _set_start(barrier) -> None:
    global _start
    _start = barrier


def lock_pairs(process: int, pairs: int) -> tuple[float, float]:
    """In a lock process: time ``pairs`` acquire + release on this process's own keys."""
    from bench_app import app

    keys = [f"bench:{process}:{i}" for i in range(LOCK_KEYS)]
    warm = app.lock(keys[0], ttl=60)  # connect before the clock starts
    warm.acquire()
    warm.release()
    _start.wait(timeout=120)
    started = time.time()  # the wall clock: comparable across processes
    for i in range(pairs):
        lock = app.lock(keys[i % LOCK_KEYS], ttl=60)
        if not (lock.acquire() and lock.release()):
            raise RuntimeError(f"lock {lock.key!r}: acquire or release failed")
    return started, time.time()


def lock_rate(processes: int, pairs: int) -> float:
    """Total acquire + release pairs per second of ``processes`` processes at once."""
    say(f"{pairs} lock acquire + release pairs in each of {processes} process(es)")
    context = multiprocessing.get_context("spawn")  # each process its own App and pool
    # A barrier is shared by inheritance only: each process gets it when it starts.
    with context.Pool(processes, _set_start, (context.Barrier(processes),)) as pool:
        spans = pool.starmap(lock_pairs, [(p, pairs) for p in range(processes)])
    started, ended = min(s for s, _ in spans), max(e for _, e in spans)
    return round(processes * pairs / (ended - started), 1)
