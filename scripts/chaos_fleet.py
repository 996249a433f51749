"""The workers of one chaos scenario: real ``dbqueue work`` processes.

Each worker runs in a session (and so a process group) of its own, with its
fork server and children, so that a fault can hit one worker's whole group
with ``killpg`` and a Ctrl-C at the terminal reaches none of them: the script
stops them itself. Every worker ever started is also kept in ``STARTED``, so
that the script can kill whatever is left, from any thread, when it ends.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
STOP = threading.Event()
"""Set when the whole run must end (Ctrl-C, SIGTERM, an error elsewhere)."""
STARTED: list[subprocess.Popen[bytes]] = []
MAX_EXITS = 10
"""Workers that exit by themselves are replaced until this many have: a worker
that crashes on every start would otherwise be restarted until the end."""
_started_lock = threading.Lock()


class Aborted(Exception):
    """The run is being stopped: leave the scenario at once."""


def pause(seconds: float) -> None:
    """Sleep, unless the run is stopped meanwhile."""
    if STOP.wait(max(seconds, 0.0)):
        raise Aborted


@dataclass(eq=False)
class Worker:
    process: subprocess.Popen[bytes]
    number: int
    killed: bool = False  # by us: its exit is no surprise

    @property
    def pgid(self) -> int:
        return self.process.pid  # the leader of its own session


class Fleet:
    """``size`` workers of ``concurrency`` children each on one queue database."""

    def __init__(self, url: str, records: Path, logs: Path, retry_after: float,
                 size: int = 3, concurrency: int = 2, env: dict[str, str] | None = None) -> None:
        self.url, self.records, self.logs = url, records, logs
        self.env = env or {}
        """Set in each worker's environment, over this process's."""
        self.retry_after, self.size, self.concurrency = retry_after, size, concurrency
        self.workers: list[Worker] = []
        self.exits: list[int] = []
        """The exit codes of workers that exited without being told to."""
        logs.mkdir(parents=True, exist_ok=True)

    def alive(self) -> list[Worker]:
        return [w for w in self.workers if not w.killed and w.process.poll() is None]

    def start_one(self) -> Worker:
        number = len(self.workers) + 1
        env = {**os.environ, "DBQUEUE_URL": self.url, "CHAOS_RECORDS": str(self.records),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS),
                                                           os.environ.get("PYTHONPATH")]))}
        for name in ("DBQUEUE_APP", "DBQUEUE_TABLE_PREFIX", "DBQUEUE_RETRY_AFTER",
                     "DBQUEUE_NETWORK_TIMEOUT"):
            env.pop(name, None)
        env.update(self.env)
        # A worker that does not heed SIGTERM at the end gets SIGABRT first,
        # which makes Python print every thread's stack into its log (close()).
        env["PYTHONFAULTHANDLER"] = "1"
        # --sleep 0.5: an idle worker polls twice a second, so a queue that
        # drains or a lease that expires is seen soon, without busy polling.
        command = [sys.executable, "-m", "dbqueue", "work", "--app", "chaos_app:app",
                   "--concurrency", str(self.concurrency), "--sleep", "0.5",
                   "--retry-after", str(self.retry_after)]
        with open(self.logs / f"worker-{number}.log", "ab") as log, _started_lock:
            if STOP.is_set():
                raise Aborted
            # cwd: the scenario's directory, not the repository's, so that the
            # dbqueue imported is the one on sys.path (and PYTHONPATH) here too.
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=self.logs,
                                       start_new_session=True)
            STARTED.append(process)
        worker = Worker(process, number)
        self.workers.append(worker)
        return worker

    def fill(self) -> None:
        """Start workers until ``size`` are alive."""
        for _ in range(self.size - len(self.alive())):
            self.start_one()

    def tend(self) -> None:
        """Note workers that exited by themselves and replace them, as systemd's
        Restart=always would, up to MAX_EXITS times. Call it only while the
        database is up: a worker started during an outage exits at once."""
        for worker in self.workers:
            if not worker.killed and worker.process.poll() is not None:
                worker.killed = True  # noted once
                self.exits.append(worker.process.returncode)
        if len(self.exits) < MAX_EXITS:
            self.fill()

    def pick(self, count: int = 1) -> list[Worker]:
        return random.sample(self.alive(), count)

    def kill(self, worker: Worker) -> None:
        """SIGKILL the worker's whole process group: supervisor, fork server, children."""
        worker.killed = True
        signal_group(worker.process, signal.SIGKILL)
        worker.process.wait()

    def freeze(self, worker: Worker, whole_group: bool) -> None:
        """SIGSTOP the worker's supervisor, or its whole group."""
        if whole_group:
            signal_group(worker.process, signal.SIGSTOP)
        else:
            worker.process.send_signal(signal.SIGSTOP)

    def thaw(self, worker: Worker) -> None:
        signal_group(worker.process, signal.SIGCONT)

    def close(self) -> None:
        """Stop every worker: SIGTERM (they have nothing left to do), then SIGKILL."""
        for worker in self.workers:
            if worker.process.poll() is None:
                signal_group(worker.process, signal.SIGCONT)
                signal_group(worker.process, signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # Stuck: where each of its threads is goes to its log, the
                # supervisor's only (see start_one), then the group dies.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(timeout=5)
                signal_group(worker.process, signal.SIGKILL)
                worker.process.wait()
            # Children of a group whose supervisor exited first.
            signal_group(worker.process, signal.SIGKILL)

    def log_lines(self) -> int:
        """Lines the workers wrote to their logs (stdout and stderr)."""
        total = 0
        for path in self.logs.glob("worker-*.log"):
            with open(path, "rb") as log:
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 20), b""))
        return total


def signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(process.pid, signum)


def kill_everything() -> None:
    """SIGKILL every worker group ever started (the end of the run, any thread)."""
    with _started_lock:
        for process in STARTED:
            signal_group(process, signal.SIGKILL)
        for process in STARTED:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
