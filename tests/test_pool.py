"""The pool of children, driven as the supervisor drives it: which task a
child runs, read from its stamp with no process; then real child processes
(tests.jobapp's "nap" needs no database) with no supervisor, and a worker."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from dbqueue.worker import pool as pool_module
from dbqueue.worker.childend import Child, Task
from dbqueue.worker.messages import RunJob
from dbqueue.worker.pool import Pool
from dbqueue.worker.stamps import Stamp
from tests.conftest import rows, wait_until

LONG_ENOUGH = 60.0  # seconds any of these tests may take: they end long before


def nap(job_id: int, seconds: float) -> RunJob:
    return RunJob(job_id, "nap", json.dumps({"args": [seconds], "kwargs": {}}), 1, 1.0)


def padded(job_id: int) -> RunJob:
    """A short job with 2,000 characters of arguments (tests.jobapp's "padded")."""
    return RunJob(job_id, "padded", json.dumps({"args": ["x" * 2000], "kwargs": {}}), 1, 10.0)


def answered(pool: Pool, count: int) -> list[Task]:
    """The tasks of the next ``count`` answers, as the supervisor takes them in."""
    tasks: list[Task] = []
    give_up = time.monotonic() + LONG_ENOUGH
    while len(tasks) < count and time.monotonic() < give_up:
        tasks += [task for _, task, _, _ in pool.wait(1.0).finished]
    return tasks


@pytest.fixture
def pool(tmp_path, monkeypatch) -> Iterator[Pool]:
    """A started pool of one child (tests.jobapp's jobs, on a SQLite file)."""
    monkeypatch.setenv("DBQUEUE_URL", f"sqlite:///{tmp_path}/queue.db")
    started = Pool("tests.jobapp:app", 1)
    started.start()
    yield started
    started.stop()


def short_tasks_then_a_hung_one(pool: Pool) -> tuple[Child, list[Task], Task]:
    """Give ``pool``'s one child two short tasks, then one that hangs, each
    with a timeout of 1 s, once it has learnt that "nap" is short (so that it
    holds the short ones' answers while the next runs): (the child, the
    short ones, the hung one)."""
    [child] = pool.children
    for job_id in range(3):  # one at a time
        pool.give(child, nap(job_id, 0.0), 1.0)
        assert answered(pool, 1) == [nap(job_id, 0.0)]
    short, long = [nap(10, 0.0), nap(11, 0.0)], nap(12, 30.0)
    for task in [*short, long]:
        pool.give(child, task, 1.0)
    return child, short, long


def stamped_child(*tasks: Task) -> tuple[Child, Stamp]:
    """A child with ``tasks`` queued (each with a timeout of 10 s), no process."""
    stamp = Stamp.shared(multiprocessing.get_context("spawn"))
    child = Child(process=None, conn=None, stamp=Stamp(stamp.cells),  # type: ignore[arg-type]
                  started=100.0)
    child.tasks.extend((task, 10.0) for task in tasks)
    return child, stamp


def test_the_running_task_is_the_one_begun_last_and_not_ended_nor_answered() -> None:
    a, b, c = nap(1, 0.0), nap(2, 0.0), nap(3, 0.0)
    child, stamp = stamped_child(a, b, c)
    assert child.running() == (0, 100.0, False)  # not begun yet: since it was given
    stamp.begin(101.0)
    assert child.running() == (0, 101.0, True)
    stamp.end(101.5)  # its answer held...
    stamp.begin(102.0)
    assert child.running() == (1, 102.0, True)  # ...while the next one runs
    assert child.deadline() == 112.0
    stamp.end(102.5)
    assert child.running() == (2, 102.5, False)  # between two tasks: the next one's time
    child.tasks.popleft()  # the answer to the first arrives at 103.0
    child.answers, child.started = 1, 103.0
    assert child.running() == (1, 103.0, False)


def test_a_task_answered_before_its_end_was_stamped_is_not_running() -> None:
    """A child killed between its answer and its stamp's "ended": the task
    after it has not begun, and is not the one that was running."""
    a, b = nap(1, 0.0), nap(2, 0.0)
    child, stamp = stamped_child(a, b)
    stamp.begin(101.0)
    child.tasks.popleft()  # answered at 101.2, not stamped ended
    child.answers, child.started = 1, 101.2
    assert child.running() == (0, 101.2, False)


def test_a_task_given_to_a_child_idle_for_long_counts_from_when_it_was_given() -> None:
    child, stamp = stamped_child()
    stamp.begin(50.0)
    stamp.end(50.1)
    child.answers = 1
    child.tasks.append((nap(2, 0.0), 10.0))
    child.started = 100.0  # given long after the last task ended
    assert child.running() == (0, 100.0, False)
    assert child.deadline() == 110.0


@pytest.mark.slow  # starts processes
def test_a_timeout_counts_from_when_its_task_began_though_answers_before_it_are_held(pool: Pool):
    """Answers to short jobs are held while the next task runs. The timeout
    that kills the child must be that task's, counted from when it began, not
    that of the first task whose answer has not arrived."""
    child, short, long = short_tasks_then_a_hung_one(pool)
    finished: list[Task] = []
    give_up = time.monotonic() + LONG_ENOUGH
    while not pool.overdue() and time.monotonic() < give_up:
        deadline = pool.next_deadline()
        assert deadline is not None
        finished += [task for _, task, _, _ in
                     pool.wait(max(0.0, deadline - time.monotonic())).finished]
    [overdue] = pool.overdue()
    killed = pool.kill(overdue)
    assert [(dead, task) for dead, task, _ in killed.died] == [(child, long)]
    assert killed.unstarted == []
    # Answered, or held by the child when it was killed (and so done):
    # never both, never neither.
    finished += [task for _, task, _, _ in killed.finished]
    assert sorted(finished + killed.held) == short
    assert pool.children[0] is not child  # replaced


@pytest.mark.slow  # starts processes
def test_a_task_past_its_timeout_is_killed_while_the_supervisor_waits_elsewhere(pool: Pool):
    """While the supervisor waits on a statement of its own (up to the network
    timeout on a hung server), ``stop_overdue`` kills the child at its task's
    deadline; the next ``wait`` reports the death, and the answers read
    meanwhile, as ``kill`` would have."""
    child, short, long = short_tasks_then_a_hung_one(pool)
    # Sends them; from here on only stop_overdue looks.
    finished = [task for _, task, _, _ in pool.wait(0.0).finished]
    give_up = time.monotonic() + LONG_ENOUGH
    while not child.timed_out and time.monotonic() < give_up:
        due = pool.stop_overdue()
        assert due is not None or child.timed_out
        if due is not None:  # the supervisor's statement waits until then
            time.sleep(max(0.0, due - time.monotonic()))
    assert child.timed_out
    assert pool.stop_overdue() is None  # killed once: nothing runs now
    died: list[tuple[Child, Task | None, str]] = []
    held: list[Task] = []
    while not died and time.monotonic() < give_up:
        ended = pool.wait(1.0)
        died += ended.died
        finished += [task for _, task, _, _ in ended.finished]
        held += ended.held
    assert [(dead, task) for dead, task, _ in died] == [(child, long)]
    assert sorted(finished + held) == short
    assert pool.children[0] is not child  # replaced


@pytest.mark.slow  # starts processes
def test_a_child_killed_meanwhile_is_replaced_though_a_program_holds_its_pipe_open(
        tmp_path, monkeypatch):
    """A program the job started that escaped the kill (a daemon) keeps the
    killed child's pipe open: ``wait`` never sees its end. ``overdue`` still
    names it, for the supervisor to replace it and fail its job."""
    monkeypatch.setenv("DBQUEUE_URL", f"sqlite:///{tmp_path}/queue.db")
    pid_file = tmp_path / "escaped.pid"
    pool = Pool("tests.jobapp:app", 1)
    pool.start()
    try:
        [child] = pool.children
        task = RunJob(1, "escaper", json.dumps({"args": [str(pid_file)], "kwargs": {}}), 1, 1.0)
        pool.give(child, task, 1.0)
        pool.wait(0.0)
        wait_until(lambda: pid_file.exists() and pid_file.read_text(),
                   what="the escaped program to start")
        give_up = time.monotonic() + LONG_ENOUGH
        while not child.timed_out and time.monotonic() < give_up:
            due = pool.stop_overdue()
            time.sleep(max(0.0, (due or time.monotonic()) - time.monotonic()))
        assert child.timed_out
        assert pool.wait(0.5).died == []  # its pipe is still open
        assert pool.overdue() == [child]
        killed = pool.kill(child)
        assert [(dead, lost) for dead, lost, _ in killed.died] == [(child, task)]
        assert pool.children[0] is not child
    finally:
        pool.stop()
        if pid_file.exists() and pid_file.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.slow  # starts processes
def test_a_halted_child_sends_back_the_jobs_queued_in_it_and_starts_none(pool: Pool):
    [child] = pool.children
    running, queued = nap(1, 0.5), [nap(2, 0.0), nap(3, 0.0), nap(4, 0.0)]
    for task in [running, *queued]:
        pool.give(child, task, 10.0)
    pool.wait(0.0)  # sends them
    wait_until(lambda: child.running()[2], what="the child to begin its first task")
    pool.halt()
    finished: list[Task] = []
    unstarted: list[Task] = []
    give_up = time.monotonic() + LONG_ENOUGH
    while len(finished) + len(unstarted) < 4 and time.monotonic() < give_up:
        ended = pool.wait(1.0)
        finished += [task for _, task, _, _ in ended.finished]
        unstarted += ended.unstarted
    assert finished == [running]
    assert unstarted == queued
    assert not child.tasks
    assert pool.children == [child]  # alive, and still answering
    pool.give(child, nap(5, 0.0), 10.0)
    assert answered(pool, 1) == [nap(5, 0.0)]


@pytest.mark.slow  # starts processes
def test_what_a_busy_childs_full_pipe_cannot_take_waits_without_holding_up_the_pool(pool: Pool):
    """A child reads its pipe only between tasks. While one hangs, what is sent
    behind it fills the pipe: the rest must wait in the supervisor, which
    would otherwise wait for room there, and never end the hang."""
    [child] = pool.children
    hung = nap(1, 3 * LONG_ENOUGH)  # ended by its timeout, killed
    pool.give(child, hung, 1.0)
    pool.wait(0.0)
    wait_until(lambda: child.running()[2], what="the child to begin its first task")
    queued = [padded(n) for n in range(2, 402)]  # 800 kB: more than a pipe holds
    for task in queued:
        pool.give(child, task, 10.0)
    sending = threading.Thread(target=pool.wait, args=(0.0,), daemon=True)
    sending.start()
    sending.join(LONG_ENOUGH)
    assert not sending.is_alive(), "the pool waited for room in the busy child's pipe"
    assert child.outbox  # what the pipe could not take
    wait_until(lambda: pool.overdue() == [child], what="the hung task's timeout")
    ended = pool.kill(child)
    assert [running for _, running, _ in ended.died] == [hung]
    assert ended.unstarted == queued
    [replacement] = pool.children
    pool.give(replacement, padded(500), 10.0)
    assert answered(pool, 1) == [padded(500)]


@pytest.mark.slow  # starts processes
def test_children_started_aside_work_exit_when_dismissed_and_never_outlive_a_stop(
        tmp_path, monkeypatch):
    """The supervisor starts its children while it registers (start_aside) and
    dismisses them as its stop begins; a worker stopped before it registered
    stops the children still being started."""
    monkeypatch.setenv("DBQUEUE_URL", f"sqlite:///{tmp_path}/queue.db")
    pool = Pool("tests.jobapp:app", 2)
    pool.start_aside()
    pool.start()  # waits for them
    try:
        children = list(pool.children)
        assert len(children) == 2
        for n, child in enumerate(children):
            pool.give(child, nap(n, 0.0), 10.0)
        assert sorted(task.job_id for task in answered(pool, 2)) == [0, 1]
        pool.dismiss()
        for child in children:  # they exit without being waited for
            child.process.join(LONG_ENOUGH)
            assert child.process.exitcode == 0
    finally:
        pool.stop()

    before = set(multiprocessing.active_children())
    stopped = Pool("tests.jobapp:app", 2)
    stopped.start_aside()
    stopped.stop()  # at once: the children are still being started
    assert not [thread for thread in threading.enumerate() if thread.name == "dbqueue-start"]
    assert set(multiprocessing.active_children()) <= before


@pytest.mark.slow  # starts processes
def test_a_stop_asked_for_while_children_start_ends_the_start(tmp_path, monkeypatch):
    """Each child takes milliseconds to start: a worker of many that gets
    SIGTERM meanwhile starts no more of them, and neither does one whose stop
    began while they were being started aside."""
    monkeypatch.setenv("DBQUEUE_URL", f"sqlite:///{tmp_path}/queue.db")
    pool = Pool("tests.jobapp:app", 50, stop_requested=lambda: len(pool.children) >= 2)
    try:
        pool.start()
        assert len(pool.children) == 2
    finally:
        pool.stop()

    aside = Pool("tests.jobapp:app", 50)
    spawn, started = aside._spawn, []

    def spawn_until_stopped() -> Child:
        child = spawn()
        started.append(child)
        wait_until(lambda: aside._stopped, what="the stop")  # the stop comes during the start
        return child

    monkeypatch.setattr(aside, "_spawn", spawn_until_stopped)
    aside.start_aside()
    wait_until(lambda: started, what="the first child")
    aside.stop()
    assert len(started) == 1
    assert aside.children == []
    assert all(child.process.exitcode is not None for child in started)


def test_a_start_the_fork_server_never_answers_holds_up_no_stop(monkeypatch):
    """A worker told to stop while it registers waits for the children still
    being started, but not for ever: a fork server stuck importing the
    application (at its import, a call that never returns) would otherwise keep
    it from heeding SIGTERM."""
    forked = threading.Event()
    monkeypatch.setattr(pool_module, "_START_WAIT_AT_STOP", 0.05)
    pool = Pool("tests.jobapp:app", 2)
    monkeypatch.setattr(pool, "_start", forked.wait)  # the fork server never answers
    pool.start_aside()
    stopping = threading.Thread(target=pool.stop, daemon=True)
    stopping.start()
    stopping.join(LONG_ENOUGH)
    assert not stopping.is_alive(), "the stop waits for a start that never ends"
    assert pool.children == []
    forked.set()  # the start ends: its thread too
    wait_until(lambda: not [t for t in threading.enumerate() if t.name == "dbqueue-start"],
               what="the start's thread to end")


def test_a_start_that_failed_is_told_by_a_stop_that_came_first(monkeypatch, caplog):
    """A worker stopped while it registers never calls ``start``, which would
    have raised the start's error: the stop says it instead."""
    pool = Pool("tests.jobapp:app", 2)

    def cannot_fork() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(pool, "_start", cannot_fork)
    pool.start_aside()
    with caplog.at_level(logging.WARNING, logger="dbqueue.worker"):
        pool.stop()
    assert [record.getMessage() for record in caplog.records] == [
        "the children could not be started: [Errno 24] Too many open files"]
    assert pool.children == []


def test_a_worker_completes_the_jobs_whose_answers_a_timed_out_child_held(jobs, workers):
    """Hundreds of naps the children learn are short, their answers sent in
    groups, and one nap of the same kind that runs past its timeout: only that
    one fails (as a timeout), and every other is completed, none run again."""
    short = [jobs.nap.prepare(0.0) for _ in range(400)]
    long = jobs.nap.options(timeout=1, tries=1).prepare(30.0)
    jobs.app.dispatch_many([*short[:200], long, *short[200:]])
    done = workers.run("--stop-when-empty", "--concurrency", "1", "--sleep", "0.1")
    assert done.returncode == 0, done.stdout
    failed = rows(jobs.app, jobs.app.store.tables.failed_jobs)
    assert [(row.job, row.exception_class) for row in failed] == [("nap", "dbqueue.JobTimeout")]
    assert rows(jobs.app, jobs.app.store.tables.jobs) == []
    assert "died" not in done.stdout  # no child died but the one killed for its timeout


@pytest.mark.slow  # starts processes
def test_a_child_that_dies_before_its_first_task_is_charged_with_it(tmp_path, monkeypatch):
    """A child that cannot even start (its application fails to import) must
    fail its jobs in the end, not send them round a loop of new children."""
    monkeypatch.setenv("DBQUEUE_URL", f"sqlite:///{tmp_path}/queue.db")
    pool = Pool("tests.broken_app:app", 1)
    pool.start()
    try:
        first, second = nap(1, 0.0), nap(2, 0.0)
        pool.give(pool.children[0], first, 1.0)
        pool.give(pool.children[0], second, 1.0)
        died: list[tuple[Task | None, list[Task]]] = []
        give_up = time.monotonic() + LONG_ENOUGH
        while not died and time.monotonic() < give_up:
            ended = pool.wait(1.0)
            died += [(task, ended.unstarted) for _, task, _ in ended.died]
        assert died == [(first, [second])]
    finally:
        pool.stop()


def test_beside_another_thread_the_fork_server_is_not_forked():
    # A fork copies only the calling thread: a lock another thread held at that
    # moment would stay held in the fork server, and in its children, for good.
    from multiprocessing import forkserver as module

    from dbqueue.worker import forkserver

    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert forkserver._fork_server(module) is False  # started the usual way instead
    finally:
        stop.set()
        thread.join()
