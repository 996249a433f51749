"""The worker's ledger: every job it holds, its state, and the legal moves.

Pure: no database, no processes.
"""

from datetime import UTC, datetime, timedelta

import pytest

from dbqueue.serializer import Payload
from dbqueue.store import Lease, ReservedRow
from dbqueue.worker.clock import Deadline
from dbqueue.worker.ledger import Entry, IllegalMove, Ledger, State

CHILD = object()


def entry(job_id: int) -> Entry:
    row = ReservedRow(id=job_id, queue="default", job="noop", payload="{}", priority=0,
                      attempts=1, created_at=datetime(2026, 1, 1),
                      reserved_at=datetime(2026, 1, 1))
    return Entry(row, Lease(job_id, "t"), None, Payload(), 0.0, Deadline(1e9, 1e12))


def test_a_job_goes_from_reserved_to_running_to_recording_and_leaves():
    ledger = Ledger()
    job = entry(1)
    ledger.add(job)
    assert (job.state, ledger.count(State.RESERVED), list(ledger.reserved)) == (
        State.RESERVED, 1, [job])
    assert ledger.start(CHILD) is job
    assert (job.state, job.child, ledger.count(State.RUNNING), len(ledger.reserved)) == (
        State.RUNNING, CHILD, 1, 0)
    ledger.settle(job, ran=True)
    assert (job.state, job.child, ledger.processed) == (State.RECORDING, None, 1)
    assert 1 in ledger and len(ledger) == 1  # its lease is still held until written
    ledger.forget(job)
    assert 1 not in ledger and len(ledger) == 0 and ledger.count(*State.ALL) == 0


def test_jobs_are_started_in_the_order_reserved_and_an_unstarted_one_goes_first_again():
    ledger = Ledger()
    first, second, third = entry(1), entry(2), entry(3)
    for job in (first, second, third):
        ledger.add(job)
    assert ledger.start(CHILD) is first
    assert ledger.start(CHILD) is second
    ledger.unstart(second)  # its child died before starting it
    assert list(ledger.reserved) == [second, third]
    assert second.state is State.RESERVED and second.child is None


def test_an_idempotent_job_waits_for_its_commit_before_it_is_settled():
    ledger = Ledger()
    job = entry(1)
    ledger.add(job)
    ledger.start(CHILD)
    ledger.await_commit(job)
    assert ledger.count(State.UNCOMMITTED) == 1 and job.child is CHILD
    ledger.settle(job, ran=True)
    assert ledger.count(State.UNCOMMITTED) == 0 and ledger.processed == 1


def test_a_reserved_job_may_be_settled_or_dropped_without_running():
    ledger = Ledger()
    failed, dropped, kept = entry(1), entry(2), entry(3)
    for job in (failed, dropped, kept):
        ledger.add(job)
    ledger.settle(failed, ran=False)  # cannot run (an unknown job, say)
    ledger.forget(dropped)  # its lease was lost to another worker
    assert list(ledger.reserved) == [kept]
    assert ledger.processed == 0 and len(ledger) == 2


@pytest.mark.parametrize("move", [
    lambda ledger, job: ledger.await_commit(job),  # reserved -> uncommitted
    lambda ledger, job: ledger.unstart(job),  # reserved -> reserved
    lambda ledger, job: ledger.add(job),  # twice
])
def test_illegal_moves_from_reserved_raise(move):
    ledger = Ledger()
    job = entry(1)
    ledger.add(job)
    with pytest.raises(IllegalMove, match="job 1"):
        move(ledger, job)
    assert job.state is State.RESERVED and ledger.count(State.RESERVED) == 1


def test_a_job_being_recorded_can_only_leave():
    ledger = Ledger()
    job = entry(1)
    ledger.add(job)
    ledger.start(CHILD)
    ledger.settle(job, ran=True)
    for move in (ledger.unstart, ledger.await_commit, lambda j: ledger.settle(j, ran=True)):
        with pytest.raises(IllegalMove, match="cannot go from recording"):
            move(job)
    with pytest.raises(IllegalMove, match="cannot go from running to running"):
        other = entry(2)
        ledger.add(other)
        ledger.start(CHILD)
        ledger._move(other, State.RUNNING)
    assert ledger.processed == 1


def test_an_uncommitted_job_cannot_go_back_to_a_child():
    ledger = Ledger()
    job = entry(1)
    ledger.add(job)
    ledger.start(CHILD)
    ledger.await_commit(job)
    with pytest.raises(IllegalMove, match="from uncommitted to reserved"):
        ledger.unstart(job)
    with pytest.raises(IllegalMove, match="from uncommitted to gone"):
        ledger.forget(job)


def test_an_unknown_job_waits_only_in_the_minutes_after_its_dispatch():
    """Put back for a worker with newer code while young; failed once old, and
    at once when its created_at is ahead of the clock (written by hand, in
    another time zone), which would otherwise keep it waiting for hours."""
    import dbqueue
    from dbqueue.store import ReservedRow
    from dbqueue.worker.clock import Deadline
    from dbqueue.worker.intake import UNKNOWN_GRACE, Postponed, admit

    app = dbqueue.App("sqlite://")
    now = datetime(2026, 12, 5, 12, tzinfo=UTC)

    def outcome(created_ago: float) -> object:
        row = ReservedRow(1, "default", "reports.digest", "{}", 0, 1,
                          now - timedelta(seconds=created_ago), now)
        return admit(app, row, "token", Deadline.after(60))[1]

    young = outcome(30)
    assert isinstance(young, Postponed) and young.delay > 0
    assert "put back for a worker that knows it" in young.why
    for created_ago in (UNKNOWN_GRACE + 1, -3600):
        old = outcome(created_ago)
        assert not isinstance(old, Postponed) and old is not None
        assert old.exception_class == "dbqueue.UnknownJob"
