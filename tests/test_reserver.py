"""The reserver with its reservation on a thread of its own (on a server):
what a reservation that ran before the queue changed may not conclude, and
a job reserved again while its release is being written. Real database, no
worker process: the reserver, its ledger and its completer, driven by hand."""

import select
import time
from collections import deque
from typing import Any

import pytest
import sqlalchemy as sa

from dbqueue.store.locks import Locks
from dbqueue.worker.completer import BatchCompleter
from dbqueue.worker.health import Health
from dbqueue.worker.joblocks import JobLocks
from dbqueue.worker.ledger import Ledger
from dbqueue.worker.messages import RunJob
from dbqueue.worker.options import WorkerOptions
from dbqueue.worker.recorder import Recorder
from dbqueue.worker.reserver import Reserver
from dbqueue.worker.wakeup import Wakeup
from tests.conftest import count, rows

NOOP = RunJob(0, "noop", "{}", 1, 60.0)
"""A task of the kind the tests dispatch, to tell the reserver one ran."""


def parts(app: Any, **options: Any) -> tuple[Reserver, Ledger, Recorder]:
    health, ledger = Health(), Ledger()
    completer = BatchCompleter(app.store, health, "host:1")
    recorder = Recorder(ledger, completer, app.store, health, deque())
    worker_options = WorkerOptions(queues=("default",), **options)
    reserver = Reserver(app, worker_options, "w", ledger=ledger, recorder=recorder,
                        job_locks=JobLocks(app, Locks(app.store), recorder, health, "w", 10.0),
                        health=health, wakeup=Wakeup(app.store, ("default",)))
    return reserver, ledger, recorder


def ended(fd: int | None) -> None:
    """Wait until the call behind ``fd`` has ended (not taken in)."""
    assert fd is None or select.select([fd], [], [], 10)[0]


def test_a_look_that_ran_before_a_job_was_queued_does_not_say_the_queue_is_empty(jobs):
    app = jobs.app
    reserver, ledger, _ = parts(app, stop_when_drained=True)
    reserver.refill(time.monotonic())  # the statement runs: nothing is ready
    ended(reserver.fileno())
    jobs.noop.dispatch()  # queued after that (a retry's release, a chain's next step)
    reserver.look_again()  # what the worker does when such a write is taken in
    reserver.collect()
    assert not reserver.drained and not reserver.queues_empty
    assert reserver.next_poll == 0.0 and not ledger  # and it looks again at once:
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)
    assert len(ledger.reserved) == 1
    reserver.close()


def test_without_news_an_empty_look_says_the_queue_is_empty(app):
    reserver, _, _ = parts(app, stop_when_drained=True)
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)
    assert reserver.drained and reserver.queues_empty and reserver.next_poll > 0
    reserver.close()


def test_a_job_reserved_again_while_its_release_is_being_written_goes_back(jobs):
    app = jobs.app
    reserver, ledger, recorder = parts(app)
    completer = recorder.completer
    if completer.fileno() is None:
        pytest.skip("SQLite writes inline: a write has always been taken in")
    jobs.noop.dispatch()
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)
    [entry] = ledger.reserved
    token = entry.lease.token
    recorder.released(entry, 0.0, False, "try again")
    completer.flush()
    ended(completer.fileno())  # released and committed, but not taken in yet
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)  # the same job, under a new lease
    assert entry.lease.token == token  # not taken for this worker's after a stall
    assert not ledger.reserved and not reserver.drained
    jobs_table = app.store.tables.jobs
    [row] = rows(app, jobs_table)
    assert row.reserved_by is None  # back in the queue, for the next look
    assert completer.collect() == [entry]
    assert app.store.read(lambda c: c.execute(
        sa.select(sa.func.count()).select_from(jobs_table)).scalar_one()) == 1
    reserver.close()
    completer.close()


def test_a_job_given_back_is_news_once(jobs):
    app = jobs.app
    reserver, ledger, recorder = parts(app)
    jobs.noop.dispatch()
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)
    assert not recorder.take_given_back()
    recorder.give_back(list(ledger.reserved))  # e.g. its lock expired while it waited
    assert recorder.take_given_back() and not recorder.take_given_back()
    assert not ledger and rows(app, app.store.tables.jobs)[0].reserved_by is None
    reserver.close()


def test_the_next_reservation_is_on_its_way_while_rows_are_admitted(jobs):
    """Admitting a few thousand rows takes milliseconds: the next reservation
    goes out first, asking only for what the arrived rows do not cover."""
    app = jobs.app
    reserver, ledger, _ = parts(app, concurrency=2, prefetch=10)
    if reserver.fileno() is None:
        pytest.skip("SQLite reserves inline: no reservation is ever on its way")
    for _ in range(30):
        jobs.noop.dispatch()
    reserver.refill(time.monotonic())  # no runtime known yet: one job per child
    ended(reserver.fileno())
    reserver.ran(NOOP, 0.0001)  # short jobs: ten more in hand
    on_its_way: list[bool] = []
    add = ledger.add
    ledger.add = lambda entry: (on_its_way.append(reserver.fetching), add(entry))[1]
    reserver.refill(time.monotonic())
    assert on_its_way == [True, True]
    reserver.collect(wait=True)
    assert len(ledger.reserved) == 12
    reserver.refill(time.monotonic())  # 12 in hand: nothing more wanted
    assert not reserver.fetching
    reserver.close()


def test_a_job_whose_key_is_held_comes_back_after_a_pause_that_grows(jobs):
    """Released at once, it would be reserved, refused and released again and
    again while the holder runs (``release_after`` is 0 here)."""
    app = jobs.app
    reserver, ledger, recorder = parts(app)
    completer = recorder.completer
    key = "dbqueue:overlap:divide:50"  # divide(2)'s key
    holder = app.lock(key, ttl=600)  # held by a job elsewhere
    assert holder.acquire()
    jobs.divide.dispatch(2)
    jobs_table, dialect = app.store.tables.jobs, app.store.dialect

    def look() -> float:
        """Reserve the job and take its locks; the pause it was released for."""
        reserver.refill(time.monotonic())
        reserver.collect(wait=True)
        [record] = completer.pending
        for entry in completer.flush() + completer.collect(wait=True):
            ledger.forget(entry)
        [row] = rows(app, jobs_table)
        assert row.reserved_by is None and row.attempts == 0  # released, no try used
        with app.engine.begin() as c:  # due again at once, for the next look
            c.execute(sa.update(jobs_table).values(available_at=dialect.now_plus(-1)))
        return float(record.delay)

    # Doubled each time in a row, up to 5 s; counted no further than that needs.
    assert [look() for _ in range(10)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert reserver.job_locks.refusals[key][0] == 7
    holder.release()
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)
    [entry] = ledger.reserved  # the key is free: it runs, and its next wait starts short
    assert entry.locks and key not in reserver.job_locks.refusals
    reserver.close()
    completer.close()


def test_an_idle_worker_looks_again_when_a_job_it_released_comes_due(app):
    """Not at its next poll, which may be seconds away (--sleep, or a second
    when it listens for new jobs: a release announces nothing)."""
    reserver, _, _ = parts(app, sleep=30)
    reserver.pace.empty_looks = 20  # idle for long: the next pause is --sleep
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)
    assert reserver.drained and reserver.next_poll > time.monotonic() + 20
    due = time.monotonic() + 5
    reserver.expect(due)
    assert reserver.next_poll == due
    reserver.look_again()  # a look before it comes due finds nothing...
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)
    assert reserver.drained and reserver.next_poll == due  # ...and the wait still ends then
    reserver.close()


def test_the_prefetch_is_topped_up_once_a_tenth_of_it_is_missing(app):
    """On short jobs a reservation takes about as long as running what it
    brings: the next must go out early, not once half the batch is gone."""
    reserver, _, _ = parts(app, concurrency=1, prefetch=10)
    reserver.ran(NOOP, 0.0001)  # short jobs: the whole prefetch ahead
    assert reserver.prefetch() == 10
    assert reserver.wanted(coming=9) == 2  # one more for the child, one to top up
    assert reserver.wanted(coming=10) == 0  # nine tenths in hand: no round trip for one
    reserver.close()


def test_a_burst_of_a_kind_not_run_here_yet_is_not_kept_ahead_of_busy_children(jobs):
    """After short jobs the prefetch is large: a burst of slow jobs of a new
    kind was reserved whole, and ran on this worker's children one after the
    other while another worker sat idle."""
    app = jobs.app
    reserver, ledger, _ = parts(app, concurrency=2, prefetch=50)
    reserver.ran(NOOP, 0.001)  # short jobs so far
    assert reserver.prefetch() == 50
    app.dispatch_many([jobs.nap.prepare(1) for _ in range(30)])  # never run here
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)
    assert len(ledger.reserved) == 2  # one for each free child
    table = app.store.tables.jobs
    assert count(app, table, table.c.reserved_by.is_(None)) == 28  # for any worker
    assert reserver.prefetch() == 0 and reserver.wanted() == 0
    reserver.ran(RunJob(0, "nap", "{}", 1, 60.0), 1.5)  # one has run: measured
    assert reserver.prefetch() > 0
    reserver.close()


def test_giving_back_jobs_another_worker_took_says_they_were_lost(jobs, caplog):
    """A worker that stalled past its leases and gives its reserved jobs back
    (a stop, or every child busy) before its renewal tells it so: the jobs
    are the other worker's now, and the log says it, as the renewal would."""
    app = jobs.app
    reserver, ledger, recorder = parts(app, concurrency=2)
    jobs.noop.dispatch()
    jobs.noop.dispatch()
    reserver.refill(time.monotonic())
    reserver.collect(wait=True)
    taken, kept = ledger.reserved
    table = app.store.tables.jobs
    with app.engine.begin() as c:  # its lease ran out, and another worker reserved it
        c.execute(table.update().where(table.c.id == taken.id).values(reserved_by="other.1"))
    with caplog.at_level("WARNING", "dbqueue.worker"):
        recorder.give_back([taken, kept])
    assert "1 job lease(s) were lost to other workers" in caplog.text
    assert [row.reserved_by for row in rows(app, table, table.c.id == kept.id)] == [None]
    assert [row.reserved_by for row in rows(app, table, table.c.id == taken.id)] == ["other.1"]
    reserver.close()
