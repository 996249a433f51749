"""The chaos scenarios: queue jobs, start workers, inject faults, drain, judge.

Each scenario runs on a fresh database of its server with three workers of
two children (``dbqueue work -c 2``). Good jobs take a few milliseconds; one in
twenty takes 100-400 ms, so that some are running at every fault. The faults
go on until the queue is empty (kill) or a set number has been made, then the
script waits for the queue to drain: until ``jobs`` is empty, or its row count
has not changed for ``stuck_after`` seconds (longer than a lease, so that a
dead worker's jobs had time to come back).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from chaos_app import effects, register
from chaos_fleet import MAX_EXITS, Fleet, pause
from chaos_report import EndState, Fault, judge, problems, working_groups

import dbqueue

CHUNK = 5000  # jobs per dispatch_many
# Alembic keeps its migration context in module globals: one migration at a
# time in this process, whatever the backend.
_migrating = threading.Lock()


@dataclass(frozen=True)
class Scale:
    quick: bool
    jobs: int

    @property
    def outage_s(self) -> float:
        return 5.0 if self.quick else 30.0

    @property
    def restarts(self) -> int:
        return 2 if self.quick else 4

    @property
    def stall_rounds(self) -> int:
        return 1 if self.quick else 3

    @property
    def kills(self) -> int | None:
        """At most this many kills: the last jobs of a quick run are few, and
        each kill of their holder would make them wait for its lease again."""
        return 4 if self.quick else None


@dataclass
class Run:
    """One scenario on one backend, while it runs."""

    name: str
    scale: Scale
    server: Any
    app: dbqueue.App
    fleet: Fleet
    retry_after: float
    say: Callable[[str], None]
    faults: list[Fault] = field(default_factory=list)
    _count: int | None = None
    _changed: float = field(default_factory=time.monotonic)

    @property
    def stuck_after(self) -> float:
        # Past a lease, with time to poll: a dead worker's jobs come back by then.
        return self.retry_after + 10 if self.scale.quick else 2 * self.retry_after + 30

    def fault(self, kind: str, start: float, end: float, pgid: int | None = None) -> None:
        self.faults.append(Fault(kind, start, end, pgid))
        what = f" of worker group {pgid}" if pgid else ""
        self.say(f"{kind}{what}, {end - start:.1f} s")

    def remaining(self) -> int | None:
        """Rows in jobs, or None while the database does not answer."""
        jobs = self.app.store.tables.jobs
        try:
            with self.app.engine.connect() as connection:
                return connection.execute(sa.select(sa.func.count()).select_from(jobs)).scalar()
        except sa.exc.DBAPIError:
            return None

    def progressing(self) -> bool:
        """Whether jobs remain, their number changed within ``stuck_after``, and
        workers run (they are replaced only so many times)."""
        count = self.remaining()
        if count is not None and count != self._count:
            self._count, self._changed = count, time.monotonic()
        return (self._count != 0 and time.monotonic() - self._changed < self.stuck_after
                and len(self.fleet.exits) < MAX_EXITS)

    def wait(self, seconds: float) -> bool:
        """Tend the workers for ``seconds``; False as soon as the queue is empty or stuck."""
        end = time.monotonic() + seconds
        while self.progressing():
            self.fleet.tend()
            if time.monotonic() >= end:
                return True
            pause(min(0.25, end - time.monotonic()))
        return False

    def warm_up(self, records: Path, timeout: float = 60.0) -> None:
        """Wait until every worker has started a job: a fault before then would
        hit workers still starting, and test their start-up instead."""
        deadline = time.monotonic() + timeout
        while {w.pgid for w in self.fleet.alive()} - working_groups(records):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not start working within {timeout:.0f} s")
            self.fleet.tend()
            pause(0.1)

    def drain(self) -> None:
        self._changed = time.monotonic()  # the wait for a drain starts now
        while self.wait(5.0):
            pass
        if self._count and len(self.fleet.exits) >= MAX_EXITS:
            self.say(f"{self._count} job(s) still queued; stopped after {MAX_EXITS} worker exits")
        elif self._count:
            self.say(f"{self._count} job(s) still queued after {self.stuck_after:.0f} s "
                     "without progress")


# --- faults -----------------------------------------------------------------------


def kill_workers(run: Run) -> None:
    """SIGKILL a random worker's group every 1-3 s and start a replacement,
    until the queue is empty (or, --quick, a few times)."""
    while len(run.faults) != run.scale.kills and run.wait(random.uniform(1, 3)):
        worker = run.fleet.pick()[0]
        at = time.time()
        run.fleet.kill(worker)
        # It ends when killpg has returned (no process of the group runs a line
        # after that), not at ``at``: a job may start between the two.
        run.fault("kill", at, time.time(), worker.pgid)
        run.fleet.fill()


def restart_database(run: Run) -> None:
    """An immediate restart (PostgreSQL: immediate mode; MariaDB: kill -9), a few times."""
    for _ in range(run.scale.restarts):
        if not run.wait(random.uniform(1, 2)):
            return
        at = time.time()
        run.server.crash()
        run.fault("db-restart", at, time.time())


def stop_database(run: Run) -> None:
    """The server stops (cleanly) and stays down for outage_s."""
    if not run.wait(1.5):
        return
    at = time.time()
    run.server.stop()
    pause(run.scale.outage_s - (time.time() - at))
    run.server.start()
    run.fault("outage", at, time.time())


def cut_network(run: Run) -> None:
    """The network path to the server goes dark for outage_s: packets vanish,
    no connection is closed (a failover, a firewall that starts dropping)."""
    if not run.wait(1.5):
        return
    at = time.time()
    run.server.island.cut()
    try:
        pause(run.scale.outage_s - (time.time() - at))
    finally:  # or the backend's next scenarios would find it dark
        run.server.island.heal()
    run.fault("partition", at, time.time())


def stall_workers(run: Run) -> None:
    """SIGSTOP one worker's supervisor and another's whole group for longer than
    their lease, then SIGCONT both, while the third works on."""
    for _ in range(run.scale.stall_rounds):
        if not run.wait(1.0):
            return
        supervisor_only, whole = run.fleet.pick(2)
        at = time.time()
        run.fleet.freeze(supervisor_only, whole_group=False)
        run.fleet.freeze(whole, whole_group=True)
        pause(run.retry_after + 2)
        run.fleet.thaw(supervisor_only)
        run.fleet.thaw(whole)
        end = time.time()
        run.fault("stall", at, end, supervisor_only.pgid)
        run.fault("stall", at, end, whole.pgid)


def no_faults(run: Run) -> None:
    pass


# --- the scenarios ------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    drive: Callable[[Run], None]
    retry_after: Callable[[Scale], float]
    """The workers' --retry-after (the lease), chosen per scenario: see SCENARIOS."""
    job: str = "work"
    server_faults: bool = False  # not on SQLite
    poison: bool = False
    network_timeout: float | None = None
    """The workers' DBQUEUE_NETWORK_TIMEOUT (None: the default); set, the
    scenario cuts the server's network path (see chaos_network)."""


SCENARIOS = [
    # 5 s: a killed worker's jobs come back soon, and the heartbeat (every
    # retry_after / 3) is still far from the worker's pace.
    Scenario("kill", kill_workers, lambda s: 5.0),
    # 10 s: a restart takes a second or two; leases must survive it.
    Scenario("db-restart", restart_database, lambda s: 10.0, server_faults=True),
    # Longer than the outage: the workers' leases must survive it, so that a
    # job taken again afterwards is a bug, not the lease doing its job.
    Scenario("outage", stop_database, lambda s: s.outage_s + 10, server_faults=True),
    # As outage; and a network timeout shorter than the cut, so that the
    # workers' connections die in it (a longer cut only makes them wait).
    Scenario("partition", cut_network, lambda s: s.outage_s + 10, server_faults=True,
             network_timeout=2.0),
    # Short, so that a stall outlives the lease quickly.
    Scenario("stall", stall_workers, lambda s: 3.0 if s.quick else 5.0),
    Scenario("poison", no_faults, lambda s: 5.0, poison=True),
    Scenario("idempotent", kill_workers, lambda s: 5.0, job="effect"),
]
BY_NAME = {s.name: s for s in SCENARIOS}


def durations(count: int) -> list[int]:
    """Milliseconds per job: a few, and 100-400 for one job in twenty."""
    return [random.randint(100, 400) if random.random() < 0.05 else random.randint(1, 5)
            for _ in range(count)]


POISON = {
    "100,000 nested arrays": ("chaos.noop", '{"args":[' + "[" * 100_000 + "]" * 100_000 + "]}"),
    "retry_for 1e12": ("chaos.noop", '{"args":[],"options":{"retry_for":1e12}}'),
    "retry_for 1e300": ("chaos.noop", '{"options":{"retry_for":1e300}}'),
    "timeout NaN": ("chaos.noop", '{"options":{"timeout":NaN}}'),
    "timeout Infinity": ("chaos.noop", '{"options":{"timeout":Infinity}}'),
    "attempts 2147483647": ("chaos.noop", '{"args":[]}'),
    "invalid JSON": ("chaos.noop", '{"args":[1,'),
    "unknown job": ("chaos.no_such_job", '{"args":[]}'),
}


def insert_poison(app: dbqueue.App, label: str) -> int:
    """Insert one poison row by hand, as anyone with SQL access could; its id."""
    name, payload = POISON[label]
    now = datetime.now(UTC) - timedelta(seconds=1)
    # An unknown job dispatched moments ago waits for a worker that knows it:
    # this one was queued an hour ago, by code since removed, and fails.
    created = now - timedelta(hours=1) if label == "unknown job" else now
    with app.engine.begin() as connection:
        return connection.execute(app.store.tables.jobs.insert().values(
            queue="default", job=name, payload=payload, priority=0, available_at=now,
            created_at=created, attempts=2147483647 if label.startswith("attempts") else 0,
        )).inserted_primary_key[0]


def enqueue(app: dbqueue.App, job: Any, keys: int, poison: bool) -> dict[int, str]:
    """Queue ``keys`` good jobs, with the poison rows mixed among them if asked;
    return the poison rows' ids and labels."""
    prepared = [job.prepare(key, ms) for key, ms in enumerate(durations(keys))]
    labels = list(POISON) if poison else []
    step = max(1, len(prepared) // (len(labels) + 1))
    chunks = [prepared[i:i + min(step, CHUNK)] for i in range(0, len(prepared), min(step, CHUNK))]
    poison_ids = {}
    for i, chunk in enumerate(chunks):
        app.dispatch_many(chunk)
        if i < len(labels):
            poison_ids[insert_poison(app, labels[i])] = labels[i]
    for label in labels[len(chunks):]:  # fewer chunks than poison rows: the rest at the end
        poison_ids[insert_poison(app, label)] = label
    return poison_ids


def key_of(payload: str) -> int | None:
    try:
        return int(json.loads(payload)["args"][0])
    except (ValueError, TypeError, LookupError, RecursionError):
        return None


def end_state(app: dbqueue.App, poison: dict[int, str], with_effects: bool) -> EndState:
    tables = app.store.tables
    failed, jobs = tables.failed_jobs, tables.jobs
    with app.engine.connect() as c:
        failed_rows = c.execute(sa.select(failed.c.job_id, failed.c.payload,
                                          failed.c.exception_class,
                                          failed.c.exception_message)).all()
        left_rows = c.execute(sa.select(jobs.c.id, jobs.c.job, jobs.c.payload,
                                        jobs.c.attempts, jobs.c.reserved_by)).all()
        effect_rows = c.execute(sa.select(effects.c.key, sa.func.count()).group_by(
            effects.c.key)).all() if with_effects else None
    return EndState(
        failed=[{"job_id": r.job_id, "exception_class": r.exception_class,
                 "message": r.exception_message,
                 "key": None if r.job_id in poison else key_of(r.payload)} for r in failed_rows],
        left=[{"id": r.id, "job": r.job, "attempts": r.attempts, "reserved_by": r.reserved_by,
               "key": None if r.id in poison else key_of(r.payload)} for r in left_rows],
        effects=None if effect_rows is None else {key: n for key, n in effect_rows})


def run_scenario(scenario: Scenario, server: Any, scale: Scale, directory: Path,
                 say: Callable[[str], None]) -> dict:
    """Run one scenario on one server; return its result (the JSON line's fields)."""
    records = directory / "records"
    records.mkdir(parents=True)
    app = dbqueue.App(server.database("chaos_" + scenario.name.replace("-", "_")))
    try:
        job = getattr(register(app), scenario.job)
        with _migrating:
            app.migrate()
        effects.metadata.create_all(app.engine)
        poison = enqueue(app, job, scale.jobs, scenario.poison)
        retry_after = scenario.retry_after(scale)
        env = ({} if scenario.network_timeout is None
               else {"DBQUEUE_NETWORK_TIMEOUT": str(scenario.network_timeout)})
        fleet = Fleet(app.settings.url, records, directory, retry_after, env=env)
        run = Run(scenario.name, scale, server, app, fleet, retry_after, say)
        started = time.monotonic()
        try:
            fleet.fill()
            run.warm_up(records)
            scenario.drive(run)
            run.drain()
        finally:
            fleet.close()
        seconds = round(time.monotonic() - started, 1)
        # Beside the records, for whoever keeps the directory to debug (--keep).
        (directory / "faults.json").write_text(json.dumps([vars(f) for f in run.faults]))
        state = end_state(app, poison, scenario.job == "effect")
    finally:
        app.dispose()
    result = judge(scenario.name, server.backend, scale.jobs, poison, records, run.faults, state)
    result.update(seconds=seconds, worker_exits=len(fleet.exits), exits=fleet.exits,
                  log_lines=fleet.log_lines())
    result["problems"] = problems(result, scenario.poison, fleet.exits)
    result["passed"] = not result["problems"]
    return result
