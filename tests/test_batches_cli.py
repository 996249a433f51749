"""``dbqueue batches``: list, show, cancel, retry and prune, through click's CliRunner."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner, Result

from dbqueue.cli import cli
from tests.conftest import PREFIX
from tests.test_workflows import finish, flows, reserve_all  # noqa: F401 (a fixture)


@pytest.fixture
def f(flows):  # noqa: F811 (the fixture imported above)
    """The workflow tests' application, on clean tables."""
    return flows


def run(url: str, *args: str) -> Result:
    variables: dict[str, str | None] = {name: None for name in os.environ
                                        if name.startswith("DBQUEUE_")}
    variables.update(DBQUEUE_URL=url, DBQUEUE_TABLE_PREFIX=PREFIX)
    return CliRunner().invoke(cli, ["batches", *args], env=variables)


def settled_batch(f, members: int, failing: int, **options) -> str:
    """A batch of ``members`` jobs whose first ``failing`` fail for good and the
    rest complete, as a worker would record them; its id."""
    batch_id = f.app.batch([f.member.prepare(n) for n in range(members)], **options).dispatch()
    reserved = [row for row in reserve_all(f.app) if row.job == "member"]
    finish(f.app, reserved[:failing], "failed")
    finish(f.app, reserved[failing:])
    return str(batch_id)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_list_and_show(f, schema):
    assert ok(run(schema)) == "No batches.\n"
    batch_id = f.app.batch([f.member.prepare(n) for n in range(4)], name="import 2026-12"
                           ).dispatch()
    finish(f.app, reserve_all(f.app)[:1])
    listed = ok(run(schema))
    assert batch_id in listed and "import 2026-12" in listed and "25%" in listed
    assert "running" in listed
    (entry,) = json.loads(ok(run(schema, "--json")))
    assert {key: entry[key] for key in ("id", "name", "total", "pending", "processed", "failed",
                                        "progress", "cancelled", "finished_at")} == {
        "id": batch_id, "name": "import 2026-12", "total": 4, "pending": 3, "processed": 1,
        "failed": 0, "progress": 25, "cancelled": False, "finished_at": None}
    shown = json.loads(ok(run(schema, "show", batch_id, "--json")))
    assert shown == entry
    for spelling in (batch_id.upper(), batch_id.replace("-", "")):  # as a user may copy it
        assert json.loads(ok(run(schema, "show", spelling, "--json"))) == entry
    f.app.batch([f.member.prepare(9)], name="second").dispatch()
    cut = run(schema, "--limit", "1")
    assert "second" in cut.stdout and "import 2026-12" not in cut.stdout
    assert cut.stdout.endswith("Only the newest 1 shown; --limit N shows more batches.\n")
    assert run(schema, "--json", "--limit", "1").stderr == cut.stdout.splitlines()[-1] + "\n"
    assert "shows more" not in ok(run(schema, "--limit", "2"))
    text = ok(run(schema, "show", batch_id))
    assert "progress:   25%" in text and "state:      running" in text
    assert "on failure: cancel the batch" in text


def test_cancel_retry_prune_and_unknown_ids(f, schema):
    batch_id = settled_batch(f, 3, 2, allow_failures=True)
    assert f.app.find_batch(batch_id).finished
    assert ok(run(schema, "retry", batch_id)) == (
        f"Queued 2 failed job(s) of batch {batch_id} again.\n")
    batch = f.app.find_batch(batch_id)
    assert (batch.pending, batch.failed, batch.finished) == (2, 0, False)
    assert ok(run(schema, "cancel", batch_id)) == f"Cancelled batch {batch_id}.\n"
    assert ok(run(schema, "cancel", batch_id)) == f"Batch {batch_id} was cancelled already.\n"
    assert f.app.find_batch(batch_id).cancelled
    assert ok(run(schema, "prune", "--hours", "0")) == "Deleted 0 finished batch(es).\n"
    finish(f.app, reserve_all(f.app, "u"), token="u")
    assert f.app.find_batch(batch_id).finished
    f.app.store.transaction(lambda c: c.execute(  # as if it had not been cancelled
        f.app.store.tables.job_batches.update().values(cancelled_at=None)))
    assert ok(run(schema, "cancel", batch_id)) == (
        f"Batch {batch_id} has finished: nothing to cancel.\n")
    # Finished a moment ago: --hours 0 takes every finished batch.
    assert ok(run(schema, "prune", "--hours", "0")) == "Deleted 1 finished batch(es).\n"
    # A pruned batch's failed jobs can still be retried.
    failed = f.app.store.tables.failed_jobs
    f.app.store.transaction(lambda c: c.execute(failed.insert().values(
        uuid="u-1", queue="default", job="member", priority=0, payload='{"args":[5]}',
        attempts=1, exception_class="RuntimeError", exception_message="no", exception="",
        failed_at=f.app.store.dialect.now(), worker="w", batch_id="pruned")))
    assert ok(run(schema, "retry", "pruned")) == "Queued 1 failed job(s) of batch pruned again.\n"
    for args in (("show", "nope"), ("cancel", "nope"), ("retry", "nope")):
        result = run(schema, *args)
        assert result.exit_code == 1, result.output
        assert result.stderr.splitlines() == [
            "Error: no batch 'nope'; list them with: dbqueue batches"], result.stderr


@pytest.mark.parametrize("hours", ["-1", "inf", "nan", "1e308", "876001"])
def test_prune_refuses_bad_hours(schema, hours):
    result = run(schema, "prune", "--hours", hours)
    assert result.exit_code == 2 and "--hours" in result.stderr


def test_retry_of_a_batch_whose_failures_were_flushed_says_so(f, schema):
    batch_id = settled_batch(f, 2, 1, allow_failures=True)
    f.app.admin.flush()
    assert f.app.find_batch(batch_id).failed == 1  # the count stays; the row is gone
    assert ok(run(schema, "retry", batch_id)) == (
        f"Queued 0 failed job(s) of batch {batch_id} again: its 1 failed job(s) are no "
        "longer in failed_jobs (forgotten or flushed).\n")


def test_show_tells_what_became_of_each_callback_even_after_a_retry_reopened_it(f, schema):
    """A failure cancels a batch and withholds ``then`` for good; a retry opens
    the batch again (no longer cancelled), and nothing said ``then`` would
    still never run."""
    batch_id = f.app.batch([f.member.prepare(1), f.member.prepare(2)],
                           then=f.callback.prepare("then"),
                           finally_=f.callback.prepare("finally")).dispatch()
    assert f.app.find_batch(batch_id).callback_states() == {"then": "not yet",
                                                            "finally": "not yet"}
    reserved = [row for row in reserve_all(f.app) if row.job == "member"]
    finish(f.app, reserved[:1], "failed")
    finish(f.app, reserved[1:])
    assert ok(run(schema, "retry", batch_id)).startswith("Queued 1 failed job(s)")
    batch = f.app.find_batch(batch_id)
    assert not batch.cancelled  # opened again by the retry
    never = "never (the batch was cancelled before a retry reopened it)"
    assert batch.callback_states() == {"then": never, "finally": "queued"}
    shown = ok(run(schema, "show", batch_id))
    assert f"then:       {never}\n" in shown and "finally:    queued\n" in shown
    assert json.loads(ok(run(schema, "show", batch_id, "--json")))["callbacks"] == {
        "then": never, "finally": "queued"}
    assert f.app.find_batch(batch_id).cancel()
    assert f.app.find_batch(batch_id).callback_states()["then"] == (
        "never (the batch is cancelled)")


def test_a_then_that_ran_is_not_shown_as_never_once_the_reopened_batch_is_cancelled(f, schema):
    """A batch that allows failures queues ``then`` when it finishes; a retry
    opens it again, and a cancel then withholds nothing: ``then`` was queued."""
    batch_id = settled_batch(f, 2, 1, allow_failures=True, then=f.callback.prepare("then"))
    assert f.app.find_batch(batch_id).callback_states() == {"then": "queued"}
    assert ok(run(schema, "retry", batch_id)).startswith("Queued 1 failed job(s)")
    assert f.app.find_batch(batch_id).cancel()
    assert f.app.find_batch(batch_id).callback_states() == {"then": "queued"}
