"""Measure dbqueue's throughput on one database; run it through ./scripts/bench.

    ./scripts/bench [--url URL] [--jobs N] [--concurrency C] [--table-prefix P]
                    [--only enqueue,process,locks,overlap,idempotent,batch,latency,pgqueuer]
                    [--backlog TOTAL] [--rounds R]

Every table it uses carries its own prefix (default ``bench_``): they are
dropped and created at the start and dropped at the end, so real data is never
touched. With the jobs of scripts/bench_app.py, and ``--only`` to run some of
the groups below (default: all but pgqueuer), it measures:

enqueue
  enqueue_single_per_s        ``noop.dispatch(i)``, each in its own transaction,
                              for min(N, 2000) jobs, after one untimed dispatch
                              that connects
  enqueue_single_driver_per_s the same INSERT as many times with the bare driver,
                              in turns of 250 with the dispatches and on the
                              connection they use: what the server allows (null
                              on SQLite; then the tables are reset)
  enqueue_bulk_per_s          ``app.dispatch_many`` of N jobs in chunks of 5,000
                              (only the calls are timed, not preparing the jobs)
process, overlap, idempotent, batch, --backlog (any of them)
  startup_s                   ``dbqueue work --stop-when-empty`` on an empty queue:
                              the worker's start-up and shutdown
process, overlap, idempotent (any of them)
  baseline_per_s              N no-op jobs, bulk-dispatched, emptied by a bare
  (+ _s, _retries)            SELECT ... FOR UPDATE SKIP LOCKED / DELETE loop of
                              the raw driver in 2 processes, batches of 100, with
                              dbqueue's own claim query: the server's ceiling.
                              A program of its own, timed from launch to exit
                              like the worker (see scripts/bench_baseline.py;
                              null on SQLite)
  baseline_per_s_excl_startup the same, timed from the loops' common start, once
  (+ baseline_loop_s)         connected, to the last one's end: the loops alone
  lease_baseline_per_s        the same jobs run by the lease loop: the same claim
  (+ _excl_startup, _s,       query, but the claim is committed as a lease (UPDATE
  _loop_s, _retries)          reserved_by, reserved_at, available_at = now + 60 s)
                              before the jobs run (each payload decoded, a no-op
                              called), and each batch then deleted in a second
                              transaction: the least a crash-safe queue with leases
                              must do (see scripts/bench_baseline.py; null on SQLite)
process
  process_per_s               N no-op jobs, bulk-dispatched, / wall clock of
                              ``dbqueue work --concurrency C --stop-when-empty
                              --sleep 0.05`` from start to exit (process_s)
  process_per_s_excl_startup  the same without startup_s (null if that leaves no time)
  process_ratio               process_per_s / baseline_per_s, both wall clock
  (+ _excl_startup)           from launch to exit; _excl_startup: both without
                              their start-up (null without a baseline)
  process_lease_ratio         the same against the lease loop
  (+ _excl_startup)           (null without a lease loop)
overlap
  process_overlap_per_s       the same for N jobs under ``WithoutOverlapping``,
  (+ _excl_startup, _s,       each on a key of its own (so none waits)
  _ratio..., _lease_ratio...)
idempotent
  process_idempotent_per_s    the same for N jobs with an ``idempotency_key``
  (+ _excl_startup, _s,       that write nothing but their outcome
  _ratio..., _lease_ratio...)
batch (see scripts/bench_batch.py)
  process_batch_per_s         the N no-op jobs dispatched as one batch
  (+ _excl_startup, _s)       (``app.batch([...]).dispatch()``), processed as above
  batch_dispatch_per_s        jobs per second of that one dispatch (one transaction)
  process_batch_ratio         process_batch_per_s / process_per_s of the same run
  (+ _excl_startup)           (null unless process ran too)
--backlog TOTAL (TOTAL >= N: every queued job, as in "with a million jobs
queued"; in addition to the groups)
  backlog_per_s               N jobs / wall clock of ``dbqueue work --concurrency C
  (+ _excl_startup, _s)       --max-jobs N --sleep 0.05`` on a table of TOTAL ready
                              no-op jobs: the worker takes the first N by (priority,
                              id) and leaves TOTAL - N. The table is filled with N
                              jobs by ``dispatch_many``, then, to TOTAL, with
                              copies of them made by INSERT ... SELECT in the
                              database, 200,000 rows a statement: the same rows
                              the worker would see, at the server's pace, with no
                              job prepared in Python
  backlog_fill_s              the seconds that filling took
  backlog_ratio               backlog_per_s / process_per_s of the same run: what a
  (+ _excl_startup)           deep table costs (null unless process ran too)
locks
  lock_pairs_per_s_1proc      ``app.lock(key, ttl=60)``: ``acquire()`` then
                              ``release()``, min(N, 2000) times, in one process
  lock_pairs_per_s_4proc      the same in each of 4 processes at once, on keys of
                              their own (throughput, not contention): total pairs
                              / wall clock from their common start to the last end
latency (see scripts/bench_latency.py)
  latency_p50_ms, _p99_ms,    one ``dbqueue work --concurrency C`` with default
  _max_ms                     options, idle, gets 50 lone dispatches 50-300 ms
                              apart: each job's start - its dispatch's return
  idle_10_workers_qps         statements per second that 10 idle ``dbqueue work
                              -c 1`` send, counted by a relay between them and the
                              server (null on SQLite)
  idle_10_workers_server_qps  what they add to the server's own counter per second
                              (MySQL/MariaDB ``Questions``; PostgreSQL transactions,
                              ``xact_commit``), less its rate just before: only
                              meaningful on a server nobody else uses
--rounds R (default 1)
  The figures the table sets side by side (startup_s, the two loops, process,
  overlap, idempotent and PgQueuer) are measured R times, in rounds that run
  each of them once, back to back: each figure printed is its median over the
  rounds, and each ratio the ratio of two medians (process_per_s and
  startup_s in batch's and --backlog's are medians too; those, enqueue, locks
  and latency run once). With R > 1, ``rounds`` and ``round_rates`` (each
  round's rates and start-ups) are printed too.
pgqueuer (only when named in --only; PostgreSQL only, null elsewhere; see
scripts/bench_pgqueuer.py for what exactly is run and timed)
  pgqueuer_per_s              N no-op jobs bulk-enqueued into PgQueuer (its tables
  (+ _excl_startup, _s,       in a database of their own, pgq_bench), / wall clock
  _startup_s)                 of its consumer process (batches of 100, asyncpg,
                              drain mode) from spawn to exit; its start-up the same
                              way on an empty queue. PgQueuer runs in a virtualenv
                              of its own (.venv-bench-pgqueuer, made at first use)
  pgqueuer_enqueue_bulk_per_s its bulk enqueue of the N jobs
  process_pgqueuer_ratio      process_per_s / pgqueuer_per_s
  (+ _excl_startup)           (null unless process ran too)

Every processing run, and each baseline, starts on fresh tables, filled, then
analyzed (ANALYZE: see analyze() for why). After it, the jobs and failed_jobs
tables must be empty (hold TOTAL - N jobs after the backlog run), cache_locks
too after the overlap jobs, and job_outcomes must hold one outcome per
idempotent job. Prints one JSON line on stdout; progress goes to stderr, and at
the end a table of the throughputs beside the baselines (and PgQueuer's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

SCRIPTS = Path(__file__).resolve().parent
GROUPS = ("enqueue", "process", "locks", "overlap", "idempotent", "batch", "latency")
OPTIONAL_GROUPS = ("pgqueuer",)  # run only when named in --only
SAMPLE = 2000  # single dispatches, and lock pairs per process
TURN = 250  # single dispatches, then as many bare driver INSERTs, in turns
CHUNK = 5000
COPY_ROWS = 200_000  # rows per INSERT ... SELECT that fills a backlog


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reset(app) -> None:
    """Drop the bench tables (if any) and create them afresh."""
    try:
        app.downgrade("base")
    except Exception as exc:  # a fresh database: nothing to drop
        say(f"(downgrade skipped: {type(exc).__name__})")
    app.migrate()


def worker_env() -> dict[str, str]:
    """The environment of a worker: this one, and bench_app importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))}


def worker_command(concurrency: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "dbqueue", "work", "--app", "bench_app:app",
            "--concurrency", str(concurrency), *options]


def run_worker(concurrency: int, *options: str) -> float:
    """Run a worker to its end (by default: until the queue is empty); return its
    wall-clock seconds."""
    command = worker_command(concurrency, *(options or ("--stop-when-empty", "--sleep", "0.05")))
    started = time.perf_counter()
    # The worker's stdout goes to stderr too: stdout carries only the result.
    subprocess.run(command, env=worker_env(), check=True, stdout=sys.stderr)
    return time.perf_counter() - started


def rows(app, table: sa.Table) -> int:
    return app.store.read(
        lambda c: c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def counts(app) -> tuple[int, int]:
    """Jobs still in the jobs table, and failed jobs."""
    status = app.admin.status()
    return (sum(q.ready + q.delayed + q.reserved for q in status),
            sum(q.failed for q in status))


def dispatch_bulk(app, job, jobs: int) -> float:
    """Queue ``job(i)`` for i < jobs with dispatch_many; return the seconds in its calls."""
    bulk_s = 0.0
    for start in range(0, jobs, CHUNK):
        prepared = [job.prepare(i) for i in range(start, min(start + CHUNK, jobs))]
        started = time.perf_counter()
        app.dispatch_many(prepared)
        bulk_s += time.perf_counter() - started
    if counts(app) != (jobs, 0):
        raise SystemExit(f"error: expected {jobs} queued jobs, found {counts(app)} (jobs, failed)")
    return bulk_s


ANALYZE = {"postgresql": "ANALYZE {}", "mysql": "ANALYZE TABLE {}", "mariadb": "ANALYZE TABLE {}"}


def analyze(app) -> None:
    """Refresh the server's statistics of the jobs table after a fill, as autovacuum
    (or InnoDB's own recalculation) soon would on a running server: on the
    statistics of an empty table, PostgreSQL plans the claim query as a bitmap
    scan of every ready row and a sort, at each claim (the bare loop then ran
    at ~1,600 jobs/s on 200,000 jobs, and ~20,000/s after ANALYZE). dbqueue's
    own claims turn sorting off (PostgreSQL.steer_claims); the loops' raw
    claims do not."""
    statement = ANALYZE.get(app.engine.dialect.name)
    if statement:
        jobs = app.engine.dialect.identifier_preparer.format_table(app.store.tables.jobs)
        with app.engine.connect() as connection:
            result = connection.exec_driver_sql(statement.format(jobs))
            if result.returns_rows:  # MySQL reports each table's outcome
                result.all()
            connection.commit()


def driver_inserts(app):
    """A function that runs the INSERT of a lone dispatch ``count`` times straight
    on the driver connection the dispatches use: how fast this server takes
    single jobs with no dbqueue code around them. The same connection, because
    two sessions of one server differ by up to 15 % in turns of a few hundred
    INSERTs (which backend runs on which core): on two connections the ratio
    measured that, not dbqueue. None where dispatches take another path
    (SQLite), or before a dispatch has kept a connection."""
    store = app.store
    fast = store._fast_push
    if fast is None or fast.sql is None or not store.dialect.autocommit_single_statements:
        return None
    if not fast.idle:
        return None
    params = {"queue": "default", "job": "noop", "payload": '{"args":[0]}',
              "priority": 0, "delay": 0.0}

    def insert(count: int) -> None:
        kept = fast.idle.pop()  # the dispatches' own; given back for the next turn
        try:
            cursor = kept[1]
            for _ in range(count):
                cursor.execute(fast.sql, params)
                if fast.returning:
                    cursor.fetchone()
        finally:
            fast.idle.append(kept)

    return insert


def bench_enqueue(app, noop, jobs: int) -> dict[str, float | None]:
    reset(app)
    sample = min(jobs, SAMPLE)
    noop.dispatch(-1)  # connect before the clock starts, as a running application has
    driver = driver_inserts(app)
    say(f"single dispatch of {sample} jobs" + (", and as many driver INSERTs" if driver else ""))
    # In turns, so that both see the same moments of the server's disk.
    single_s = driver_s = 0.0
    for start in range(0, sample, TURN):
        count = min(TURN, sample - start)
        started = time.perf_counter()
        for i in range(start, start + count):
            noop.dispatch(i)
        single_s += time.perf_counter() - started
        if driver:
            started = time.perf_counter()
            driver(count)
            driver_s += time.perf_counter() - started
    reset(app)  # time the bulk dispatch on empty tables
    say(f"bulk dispatch of {jobs} jobs")
    bulk_s = dispatch_bulk(app, noop, jobs)
    return {"enqueue_single_per_s": round(sample / single_s, 1),
            "enqueue_single_driver_per_s": round(sample / driver_s, 1) if driver else None,
            "enqueue_bulk_per_s": round(jobs / bulk_s, 1)}


def bench_processing(app, job, name: str, jobs: int, concurrency: int,
                     startup_s: float) -> dict[str, float | None]:
    """Process ``jobs`` bulk-dispatched ``job``s; keys named ``name``_per_s etc."""
    reset(app)  # also empties cache_locks and job_outcomes
    dispatch_bulk(app, job, jobs)
    analyze(app)
    say(f"processing {jobs} {job.name} jobs with concurrency {concurrency}")
    process_s = run_worker(concurrency)
    left, failed = counts(app)
    if left or failed:
        raise SystemExit(f"error: after the worker, {left} job(s) left and {failed} failed")
    tables = app.store.tables
    outcomes, locks = rows(app, tables.job_outcomes), rows(app, tables.cache_locks)
    expected = jobs if job.idempotency_key is not None else 0
    if (outcomes, locks) != (expected, 0):
        raise SystemExit(f"error: after the worker, {outcomes} outcome(s) (expected "
                         f"{expected}) and {locks} lock(s) (expected 0)")
    return throughput(name, jobs, process_s, startup_s)


def throughput(name: str, jobs: int, seconds: float,
               startup_s: float) -> dict[str, float | None]:
    """``name``_per_s, _per_s_excl_startup and _s of a worker run."""
    working_s = seconds - startup_s  # <= 0 when too few jobs to tell from start-up noise
    return {f"{name}_per_s": round(jobs / seconds, 1),
            f"{name}_per_s_excl_startup": round(jobs / working_s, 1) if working_s > 0 else None,
            f"{name}_s": round(seconds, 3)}


def ratio(results: dict[str, float | None], name: str, reference: str,
          suffix: str) -> float | None:
    """``name``'s rate (_per_s + ``suffix``) over ``reference``'s (the same, or its
    _per_s if it has no such rate); None if either is missing."""
    rate = results.get(f"{name}_per_s{suffix}")
    base = results.get(f"{reference}_per_s{suffix}", results.get(f"{reference}_per_s"))
    return rate / base if rate and base else None


def ratios(results: dict[str, float | None], name: str, reference: str,
           key: str | None = None) -> None:
    """Add ``key`` (default ``name``_ratio) and ``key``_excl_startup: ``name``'s
    rates over ``reference``'s (its _per_s, or _per_s_excl_startup if it has one)."""
    for suffix in ("", "_excl_startup"):
        value = ratio(results, name, reference, suffix)
        results[f"{key or name + '_ratio'}{suffix}"] = round(value, 3) if value else None


def bench_baseline(app, noop, jobs: int, lease: bool = False) -> dict[str, float | None]:
    """The bare SKIP LOCKED loop on N bulk-dispatched jobs, or with ``lease`` the
    lease loop (see bench_baseline.py)."""
    from bench_baseline import BATCH, PROCESSES, baseline_seconds, lease_baseline_seconds

    name, loop = ("lease_baseline", "lease loop") if lease else ("baseline", "baseline")
    reset(app)
    dispatch_bulk(app, noop, jobs)
    analyze(app)
    say(f"{loop}: {jobs} jobs " + ("leased, run and deleted by a SKIP LOCKED loop with "
                                   "leases" if lease else "deleted by a bare SKIP LOCKED loop")
        + f" in {PROCESSES} processes, batches of {BATCH}")
    measure = lease_baseline_seconds if lease else baseline_seconds
    measured = measure(app, app.engine.url.render_as_string(hide_password=False), jobs)
    if measured is None:
        say(f"(no {loop}: this database has no SKIP LOCKED)")
        return {f"{name}_per_s": None, f"{name}_per_s_excl_startup": None, f"{name}_s": None,
                f"{name}_loop_s": None, f"{name}_retries": None}
    if counts(app) != (0, 0):
        raise SystemExit(f"error: after the {loop}, {counts(app)} (jobs, failed) left")
    return {f"{name}_per_s": round(jobs / measured.seconds, 1),
            f"{name}_per_s_excl_startup": round(jobs / measured.loop_seconds, 1),
            f"{name}_s": round(measured.seconds, 3),
            f"{name}_loop_s": round(measured.loop_seconds, 3), f"{name}_retries": measured.retries}


def fill(app, job, total: int, head: int) -> None:
    """Queue ``total`` ready ``job``s: ``head`` by dispatch_many, the others copied
    from the first rows in the database (at most COPY_ROWS a statement)."""
    dispatch_bulk(app, job, head)
    jobs = app.store.tables.jobs
    columns = [jobs.c[name] for name in (
        "queue", "job", "payload", "attempts", "priority", "available_at", "created_at")]
    have = head
    while have < total:
        count = min(have, total - have, COPY_ROWS)
        copy = sa.insert(jobs).from_select(
            columns, sa.select(*columns).order_by(jobs.c.id).limit(count))
        app.store.transaction(lambda c, copy=copy: c.execute(copy))
        have += count
    if counts(app) != (total, 0):
        raise SystemExit(f"error: expected {total} queued jobs, found {counts(app)} (jobs, failed)")


def bench_backlog(app, noop, total: int, jobs: int, concurrency: int,
                  startup_s: float) -> dict[str, float | None]:
    """Process ``jobs`` of ``total`` queued jobs, the others left waiting."""
    reset(app)
    say(f"filling the table with {total} jobs")
    started = time.perf_counter()
    fill(app, noop, total, jobs)
    fill_s = time.perf_counter() - started
    analyze(app)
    say(f"processing {jobs} of {total} queued jobs with concurrency {concurrency}")
    seconds = run_worker(concurrency, "--max-jobs", str(jobs), "--sleep", "0.05")
    if counts(app) != (total - jobs, 0):
        raise SystemExit(f"error: after the worker, {counts(app)} (jobs, failed) left, "
                         f"expected ({total - jobs}, 0)")
    return {**throughput("backlog", jobs, seconds, startup_s),
            "backlog_fill_s": round(fill_s, 3)}


def head_to_head(app, only: set[str], processed: list, jobs: int,
                 concurrency: int) -> dict[str, float | None]:
    """One round of the runs compared with each other: the worker's start-up,
    the two loops, each processing group and PgQueuer, back to back."""
    from bench_app import noop

    results: dict[str, float | None] = {}
    reset(app)
    say("worker start-up and shutdown on an empty queue")
    startup_s = run_worker(concurrency)
    results["startup_s"] = round(startup_s, 3)
    if processed:
        results.update(bench_baseline(app, noop, jobs))
        results.update(bench_baseline(app, noop, jobs, lease=True))
        for _, job, name in processed:
            results.update(bench_processing(app, job, name, jobs, concurrency, startup_s))
    if "pgqueuer" in only:  # next to the processing runs: the same moments of the disk
        from bench_pgqueuer import bench_pgqueuer

        results.update(bench_pgqueuer(app.engine.url.render_as_string(hide_password=False), jobs))
    return results


def medians(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Each figure's median over ``runs`` (None where no run has it)."""
    merged: dict[str, float | None] = {}
    for key in runs[0]:
        values = [run[key] for run in runs if run.get(key) is not None]
        merged[key] = round(statistics.median(values), 3) if values else None
    return merged


def in_rounds(app, only: set[str], processed: list, jobs: int, concurrency: int,
              rounds: int) -> dict[str, float | None]:
    """``rounds`` of head_to_head, each figure as its median over them.

    The machine's pace drifts from minute to minute: each round runs the
    figures compared with each other side by side, and the ratios are then
    taken of the medians."""
    runs = []
    for number in range(1, rounds + 1):
        if rounds > 1:
            say(f"--- round {number} of {rounds}")
        runs.append(head_to_head(app, only, processed, jobs, concurrency))
    results = medians(runs)
    if rounds > 1:
        results["rounds"] = rounds
        kept = ("_per_s", "_excl_startup", "startup_s")
        results["round_rates"] = [{key: value for key, value in run.items()
                                   if key.endswith(kept)} for run in runs]
    return results


def bench(app, only: set[str], jobs: int, concurrency: int, backlog: int | None,
          rounds: int) -> dict[str, float | None]:
    from bench_app import idempotent_noop, noop, overlap_noop, stamp

    results: dict[str, float | None] = {}
    if "enqueue" in only:
        results.update(bench_enqueue(app, noop, jobs))
    processed = [(group, job, name) for group, job, name in (
        ("process", noop, "process"), ("overlap", overlap_noop, "process_overlap"),
        ("idempotent", idempotent_noop, "process_idempotent")) if group in only]
    if processed or backlog or "batch" in only or "pgqueuer" in only:
        results.update(in_rounds(app, only, processed, jobs, concurrency, rounds))
        startup_s = results["startup_s"]
    for _, _, name in processed:
        ratios(results, name, "baseline")
        ratios(results, name, "lease_baseline", f"{name}_lease_ratio")
    if "pgqueuer" in only and "process" in only:
        ratios(results, "process", "pgqueuer", "process_pgqueuer_ratio")
    if "batch" in only:
        from bench_batch import bench_batch

        results.update(bench_batch(app, noop, jobs, concurrency, startup_s))
        if "process" in only:
            ratios(results, "process_batch", "process")
    if backlog:
        results.update(bench_backlog(app, noop, backlog, jobs, concurrency, startup_s))
        if "process" in only:
            ratios(results, "backlog", "process")
    if "locks" in only:
        from bench_locks import LOCK_PROCESSES, lock_rate

        reset(app)
        pairs = min(jobs, SAMPLE)
        results["lock_pairs_per_s_1proc"] = lock_rate(1, pairs)
        results[f"lock_pairs_per_s_{LOCK_PROCESSES}proc"] = lock_rate(LOCK_PROCESSES, pairs)
    if "latency" in only:
        from bench_latency import idle_cost, pickup_latency

        reset(app)
        say(f"pickup latency of one idle worker with concurrency {concurrency}")
        results.update(pickup_latency(stamp, worker_command(concurrency), worker_env()))
        reset(app)
        results.update(idle_cost(app, worker_command(1), worker_env()))
    return results


def table(results: dict[str, float | None]) -> None:
    """The throughputs beside the baselines' (and PgQueuer's), and the latencies,
    for a reader (on stderr)."""
    # "/ baseline" always (a dash where there is none), the others where measured.
    columns = [(reference, heading) for reference, heading in (
        ("baseline", "/ baseline"), ("lease_baseline", "/ lease loop"),
        ("pgqueuer", "/ PgQueuer")) if reference == "baseline" or results.get(f"{reference}_per_s")]
    lines = []
    for label, key in (("bare SKIP LOCKED loop", "baseline"),
                       ("SKIP LOCKED loop with leases", "lease_baseline"),
                       ("PgQueuer", "pgqueuer"),
                       ("process", "process"),
                       ("process, WithoutOverlapping", "process_overlap"),
                       ("process, idempotency_key", "process_idempotent"),
                       ("process, one batch", "process_batch"),
                       ("process, deep backlog", "backlog")):
        for suffix, note in (("", ""), ("_excl_startup", " (excl. start-up)")):
            rate = results.get(f"{key}_per_s{suffix}")
            if rate is not None:
                cells = [ratio(results, key, reference, suffix) for reference, _ in columns]
                lines.append(f"{label + note:46}{rate:>10.0f}" + "".join(
                    f"{'-' if cell is None else f'{cell:.2f}':>14}" for cell in cells))
    if lines:
        lines.insert(0, f"{'':46}{'jobs/s':>10}" + "".join(
            f"{heading:>14}" for _, heading in columns))
        if results.get("rounds"):
            lines.insert(0, f"medians of {results['rounds']} rounds (each ratio: of two medians)")
    if "backlog_ratio" in results:
        lines.append(f"deep backlog / process: {results['backlog_ratio']} "
                     f"(excl. start-up: {results['backlog_ratio_excl_startup']})")
    if "latency_p50_ms" in results:
        lines.append(f"pickup latency: p50 {results['latency_p50_ms']} ms, "
                     f"p99 {results['latency_p99_ms']} ms")
    if results.get("idle_10_workers_qps") is not None:
        lines.append(f"10 idle workers send {results['idle_10_workers_qps']} statements/s "
                     f"(the server's counter: {results['idle_10_workers_server_qps']:+}/s)")
    if lines:
        say("\n".join(lines))


def groups(text: str) -> set[str]:
    chosen = {name.strip() for name in text.split(",") if name.strip()}
    if not chosen or chosen - set(GROUPS + OPTIONAL_GROUPS):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list among "
                                         f"{','.join(GROUPS + OPTIONAL_GROUPS)}, not {text!r}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL [default: SQLite in a temporary directory]")
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--table-prefix", default="bench_")
    parser.add_argument("--only", type=groups, default=set(GROUPS), metavar="GROUPS",
                        help=f"run only these, comma-separated, among "
                             f"{','.join(GROUPS + OPTIONAL_GROUPS)} [default: {','.join(GROUPS)}]")
    parser.add_argument("--backlog", type=int, default=None, metavar="TOTAL",
                        help="also process --jobs of TOTAL queued jobs [default: no]")
    parser.add_argument("--rounds", type=int, default=1, metavar="R",
                        help="run the start-up, the loops, the processing groups and "
                             "PgQueuer R times, side by side, and report each figure's "
                             "median [default: 1]")
    args = parser.parse_args()
    if args.jobs < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--jobs, --concurrency and --rounds must be at least 1")
    if args.backlog is not None and args.backlog < args.jobs:
        parser.error("--backlog counts every queued job: it must be at least --jobs")
    if not args.table_prefix:
        parser.error("--table-prefix must not be empty: the bench drops its tables")

    with tempfile.TemporaryDirectory(prefix="dbqueue-bench-") as tmp:
        # bench_app's App, the workers and the lock processes read where the
        # queue is from here.
        os.environ["DBQUEUE_URL"] = args.url or f"sqlite:///{tmp}/bench.db"
        os.environ["DBQUEUE_TABLE_PREFIX"] = args.table_prefix
        os.environ.pop("DBQUEUE_APP", None)
        sys.path.insert(0, str(SCRIPTS))
        from bench_app import app

        try:
            results = bench(app, args.only, args.jobs, args.concurrency, args.backlog,
                            args.rounds)
            dialect = app.engine.dialect
            backend = "mariadb" if getattr(dialect, "is_mariadb", False) else dialect.name
        finally:
            app.downgrade("base")
            app.dispose()
    table(results)
    print(json.dumps({"backend": backend, "jobs": args.jobs, "backlog": args.backlog,
                      "concurrency": args.concurrency, **results}))


if __name__ == "__main__":
    main()
