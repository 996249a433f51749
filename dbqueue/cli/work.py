"""``dbqueue work``: run jobs."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from typing import NoReturn

import click

from ..errors import ConfigurationError
from ..loader import search_cwd
from ..worker import forkserver
from ..worker.signals import StopSignals
from .options import EnvOption, connection_options, export_settings, friendly_errors


@click.command()
@connection_options
@click.option("--queue", "-q", "queues", default="default", show_default=True,
              help="Queues to work, comma-separated, highest priority first; '*' stands "
                   "for every other queue that holds jobs.")
@click.option("--concurrency", "-c", default=1, show_default=True, type=int,
              help="Child processes running jobs at once.")
@click.option("--sleep", default=None, type=float,
              help="Longest pause between looks for work when none is ready. "
                   "[default: 1 on PostgreSQL, where new jobs wake the worker; 0.1 "
                   "elsewhere]")
@click.option("--retry-after", type=float, default=None,
              help="Lease seconds: a crashed worker's jobs run again after this. "
                   "[default: the App's, 90]")
@click.option("--max-jobs", type=int, default=None, help="Stop after this many jobs.")
@click.option("--max-time", type=float, default=None, help="Stop after this many seconds.")
@click.option("--memory", type=float, default=None, metavar="MB",
              help="Replace a child process whose memory grows past this.")
@click.option("--grace", type=float, default=30.0, show_default=True,
              help="Seconds running jobs get to finish when the worker is told to stop.")
@click.option("--prefetch", type=int, default=5000, show_default=True,
              help="Most jobs reserved ahead of free children (only when jobs are short).")
@click.option("--stop-when-empty", is_flag=True, help="Exit once no job is ready or running.")
@click.option("--stop-when-drained", is_flag=True,
              help="Exit once the queues hold no job at all: waits for delayed jobs and "
                   "retries in backoff too.")
@click.option("--once", is_flag=True,
              help="Run the next job, then exit (waits for one if none is ready; with "
                   "--stop-when-empty, exits instead).")
@click.option("--no-schedule", is_flag=True, envvar="DBQUEUE_NO_SCHEDULE", cls=EnvOption,
              help="Do not run the scheduler on this host (the application's schedules "
                   "are queued by the workers of other hosts). [env: DBQUEUE_NO_SCHEDULE]")
@friendly_errors
def work(  # noqa: PLR0913 (click passes each of the command's options)
        url: str | None, app_reference: str | None, table_prefix: str | None, queues: str,
        concurrency: int, sleep: float | None, retry_after: float | None, max_jobs: int | None,
        max_time: float | None, memory: float | None, grace: float, prefetch: int,
        stop_when_empty: bool, stop_when_drained: bool, once: bool, no_schedule: bool,
        verbose: bool) -> None:
    """Run jobs from the queues until stopped (SIGTERM, Ctrl-C or `dbqueue restart`).

    Start one on every host; they share the work through the database.
    """
    # First: a SIGTERM while the worker starts (a deploy, systemd stopping it)
    # or a SIGHUP (its terminal closed) is heeded once it can be, with a clean
    # exit, not an exit by signal. Ctrl-C still aborts the start-up at once
    # (see the README).
    signals = StopSignals()
    signals.install(signal.SIGTERM, signal.SIGHUP)
    if not app_reference:
        raise click.UsageError("name your application with --app module:attr (or DBQUEUE_APP)")
    # The fork server imports the application while this process does the
    # same: both need the settings and the working directory's modules first.
    export_settings(url, app_reference, table_prefix)
    search_cwd()

    gc.disable()  # start-up makes little garbage (see _settle_memory)
    try:
        from ..worker.options import WorkerOptions
        from ..worker.supervisor import Supervisor
        from .common import open_app

        # SQLAlchemy and dbqueue are imported; no thread, no connection, and
        # the application is not imported yet: the fork server is forked now,
        # with what it needs already loaded (see worker.forkserver).
        forkserver.start(app_reference, fork=True)
        # After the fork: the worker's log format and level are not the jobs'.
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        app = open_app(url, app_reference, table_prefix)
        if retry_after is None and app.settings.retry_after < 1:  # named as it was set
            raise ConfigurationError(
                f"the App's retry_after (DBQUEUE_RETRY_AFTER, or App(retry_after=)) is "
                f"{app.settings.retry_after:g} s; a worker needs a lease of at least 1 "
                "second: raise it, or give --retry-after")
        # What WorkerOptions refuses was typed on the command line: a usage
        # error, as a value outside click's own ranges is (failed --limit 0).
        try:
            options = WorkerOptions(
                queues=tuple(q.strip() for q in queues.split(",")),  # empty names refused
                concurrency=concurrency, sleep=sleep,
                retry_after=retry_after if retry_after is not None else app.settings.retry_after,
                max_jobs=1 if once else max_jobs, max_time=max_time, memory_mb=memory,
                stop_when_empty=stop_when_empty, stop_when_drained=stop_when_drained, once=once,
                grace=grace, prefetch=prefetch, schedule=not no_schedule,
            )
        except ConfigurationError as exc:
            raise click.UsageError(str(exc)) from None
        supervisor = Supervisor(app, app_reference, options, signals)
    except BaseException:
        gc.enable()
        raise
    _settle_memory()
    # The supervisor's threads mostly wait for the database; each answer then
    # waits for the interpreter lock, which the busy main thread gives up
    # every 5 ms by default: a reservation's rows, the outcomes' commit.
    sys.setswitchinterval(_SWITCH_INTERVAL)
    code = supervisor.run()
    app.dispose()  # say goodbye to the server rather than vanish at exit
    _end(code)


_SWITCH_INTERVAL = 0.001  # seconds


def _end(code: int) -> NoReturn:
    """End the worker's process with ``code``, its work done.

    Not through the interpreter's own teardown of every module and object
    SQLAlchemy and the application made: 15 ms of a short run, spent on
    memory about to be given back whole. And after a stop that gave up on
    statements a hung server never answered, that teardown, around the
    threads still blocked inside the driver, has crashed (SIGSEGV). What comes
    before the teardown is done here, in the interpreter's order: waiting for
    the threads the application started (not daemons) and its thread pools'
    work, then the exit handlers (an error tracker sending its reports; the
    log's own), then flushing the standard streams.
    """
    wait_for_threads = getattr(threading, "_shutdown", None)
    if wait_for_threads is None:  # another Python: its own exit, teardown and all
        sys.exit(code)
    wait_for_threads()
    atexit._run_exitfuncs()  # logging's among them: it flushes and closes the log
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or None when started without one
            stream.flush()
    os._exit(code)


# A collection of the youngest objects every this many allocations, not
# Python's 700.
_YOUNG_COLLECTION_EVERY = 10_000


def _settle_memory() -> None:
    """Set the garbage collector up for the worker's loop.

    Start-up builds objects that live as long as the process: modules,
    SQLAlchemy's tables and compiled statements, the application. Collected
    during the imports, they cost a tenth of a second; frozen afterwards, no
    later collection walks them again. (The price: reference cycles that
    start-up left as garbage are kept too; dbqueue and SQLAlchemy leave a few
    hundred objects. An application that turns the collector off at import
    finds it on again.) Then the supervisor keeps up to
    ``--prefetch`` reserved jobs in hand, each a few objects that outlive the
    youngest generation: with Python's thresholds, full collections of
    everything alive came back again and again. Measured on 100,000 no-op jobs
    (PostgreSQL, ``-c 2``), the collector held the interpreter lock for about
    1.2 s of the run's 9; frozen and with fewer young collections, 0.2 s. The
    loop makes almost no reference cycles (a few thousand objects per 100,000
    jobs), so collecting less often keeps little garbage longer.
    """
    gc.freeze()
    gc.set_threshold(_YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])
    gc.enable()
