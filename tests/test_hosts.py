"""Several hosts on one database: no job twice at once, nothing lost when a host dies.

Each `dbqueue work` process here stands for one host; they share nothing but
the database, exactly as on separate machines.
"""

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import count, rows, wait_until

FAST = ("--sleep", "0.1")


def test_three_hosts_drain_3000_jobs_exactly_once(jobs, workers):
    jobs.app.dispatch_many([jobs.record.prepare(n) for n in range(3000)])
    hosts = [workers.start("--concurrency", "2", "--stop-when-empty", *FAST) for _ in range(3)]
    for host in hosts:
        output, _ = host.communicate(timeout=300)
        assert host.returncode == 0, output
        assert "Error" not in output and "IntegrityError" not in output
    done = rows(jobs.app, jobs.effects)
    assert len(done) == 3000 and {row.n for row in done} == set(range(3000))
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0
    assert len({row.pid for row in done}) > 1  # the work really was shared


def test_a_killed_hosts_job_is_finished_by_another_after_retry_after(jobs, workers):
    jobs.hold.dispatch("crash-me", 300)  # blocks on its first start only
    doomed = workers.start("--retry-after", "2", *FAST)
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == "crash-me"),
               what="the job to start on the first host")
    os.killpg(doomed.pid, signal.SIGKILL)  # supervisor, fork server and children at once
    doomed.wait()
    (held,) = rows(jobs.app, jobs.app.store.tables.jobs)
    assert held.reserved_by is not None  # still leased to the dead host
    rescuer = workers.start("--retry-after", "2", "--max-jobs", "1", *FAST)
    output, _ = rescuer.communicate(timeout=120)
    assert rescuer.returncode == 0, output
    events = [r.event for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "crash-me")]
    assert events == ["start", "start", "end"]
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0


def live_processes_in_group(pgid):
    """The processes of process group ``pgid`` that still run (zombies excluded)."""
    live = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, _parent, group = stat.rpartition(")")[2].split()[:3]
        if int(group) == pgid and state != "Z":
            live.append(int(entry))
    return live


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_supervisor_killed_alone_takes_its_running_jobs_with_it(jobs, workers):
    """The OOM killer kills one process, not a group: the jobs of a dead
    supervisor must stop too, or they would run on while another host runs them again."""
    jobs.hold.dispatch("orphan", 300)  # blocks on its first start only
    doomed = workers.start("--retry-after", "2", *FAST)
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == "orphan"),
               what="the job to start")
    os.kill(doomed.pid, signal.SIGKILL)  # the supervisor alone
    doomed.wait()
    wait_until(lambda: not live_processes_in_group(doomed.pid), timeout=30,
               what="the fork server and the child running the job to die with it")
    rescuer = workers.start("--retry-after", "2", "--max-jobs", "1", *FAST)
    output, _ = rescuer.communicate(timeout=120)
    assert rescuer.returncode == 0, output
    events = [r.event for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "orphan")]
    assert events == ["start", "start", "end"]


def test_a_long_job_on_a_live_host_is_never_started_twice(jobs, workers):
    retry_after = 1.0
    jobs.overlap.dispatch("long", 3 * retry_after + 0.5)
    first = workers.start("--retry-after", str(retry_after), *FAST)
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == "long"),
               what="the long job to start")
    second = workers.start("--retry-after", str(retry_after), *FAST)
    wait_until(lambda: count(jobs.app, jobs.effects,
                             jobs.effects.c.tag == "long", jobs.effects.c.event == "end"),
               timeout=120, what="the long job to end")
    # The second host polled all along; give it one more full lease period of
    # polling after the job ended, by waiting for the queue to be seen empty.
    wait_until(lambda: count(jobs.app, jobs.app.store.tables.jobs) == 0, what="completion")
    for host in (first, second):
        os.killpg(host.pid, signal.SIGTERM)
        output, _ = host.communicate(timeout=60)
        assert host.returncode == 0, output
    events = [r.event for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "long")]
    assert events == ["start", "end"]


def test_a_worker_that_stalled_past_retry_after_keeps_its_running_job(jobs, workers):
    """A frozen supervisor (a long GC pause, a suspended VM) whose job nobody else
    took goes on with it when it wakes, and never starts it a second time."""
    jobs.wait_for_go.dispatch("stall")
    host = workers.start("--retry-after", "1", "--concurrency", "2", *FAST)
    wait_until(lambda: count(jobs.app, jobs.effects, jobs.effects.c.tag == "stall"),
               what="the job to start")
    table, store = jobs.app.store.tables.jobs, jobs.app.store

    def lease_expired() -> bool:
        (row,) = rows(jobs.app, table)
        return row.available_at < store.now()

    os.kill(host.pid, signal.SIGSTOP)  # the supervisor only: its child keeps running
    try:
        wait_until(lease_expired, what="the lease to expire")
    finally:
        os.kill(host.pid, signal.SIGCONT)
    wait_until(lambda: not lease_expired(), what="the worker to renew its lease")
    jobs.note("stall", "go")
    wait_until(lambda: count(jobs.app, table) == 0, what="the job to complete")
    os.killpg(host.pid, signal.SIGTERM)
    output, _ = host.communicate(timeout=60)
    assert host.returncode == 0, output
    assert "Traceback" not in output
    events = [r.event for r in rows(jobs.app, jobs.effects, jobs.effects.c.tag == "stall")]
    assert events == ["start", "go", "end"]
