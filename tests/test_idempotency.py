"""Idempotent jobs: effects written through dbqueue.transaction() happen once per key."""

import json
import os
import signal
import subprocess
import sys

import pytest

import dbqueue
from tests.conftest import ROOT, count, wait_until, worker_env

FAST = ("--sleep", "0.05")


def charges(jobs, order):
    return count(jobs.app, jobs.effects, jobs.effects.c.tag == "charge",
                 jobs.effects.c.event == str(order))


def test_the_effect_and_the_outcome_commit_together_once_per_key(jobs, workers):
    jobs.charge.dispatch(1)
    jobs.charge.dispatch(1)  # the same key: completes without charging again
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    assert charges(jobs, 1) == 1
    outcome = jobs.app.outcome("charge:1")
    assert outcome.job == "charge" and json.loads(outcome.result) == {"order": 1, "cents": 4200}
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    assert jobs.app.outcome("charge:2") is None


def test_two_copies_running_at_once_make_one_effect(jobs, workers):
    jobs.charge.dispatch(3, 0.5)
    jobs.charge.dispatch(3, 0.5)
    result = workers.run("--concurrency", "2", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert charges(jobs, 3) == 1
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0


def test_a_crash_after_the_commit_never_repeats_the_effect(jobs, workers):
    jobs.charge_then_freeze.dispatch(5)
    doomed = workers.start("--retry-after", "2", *FAST)
    wait_until(lambda: jobs.app.outcome("freeze:5"), what="the outcome to commit")
    assert count(jobs.app, jobs.app.store.tables.jobs) == 1  # never marked complete
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    rescuer = workers.run("--retry-after", "2", "--max-jobs", "1", *FAST)
    assert rescuer.returncode == 0, rescuer.stdout
    assert charges(jobs, 5) == 1
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 0


def test_transaction_outside_an_idempotent_job_is_a_clear_error():
    with pytest.raises(dbqueue.ConfigurationError, match="idempotency_key"):
        dbqueue.transaction()


def cli(url, *args):
    return subprocess.run([sys.executable, "-m", "dbqueue", *args], cwd=ROOT,
                          env=worker_env(url), capture_output=True, text=True, timeout=60)


def test_cli_shows_and_prunes_outcomes(jobs, workers, schema):
    jobs.charge.dispatch(7)
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    shown = cli(schema, "outcomes", "show", "charge:7")
    assert shown.returncode == 0 and '"cents": 4200' in shown.stdout
    assert json.loads(cli(schema, "outcomes", "show", "charge:7", "--json").stdout)["job"] == (
        "charge")
    missing = cli(schema, "outcomes", "show", "charge:8")
    assert missing.returncode == 1 and "Error: no outcome" in missing.stderr
    assert "Deleted 0" in cli(schema, "outcomes", "prune", "--older-than", "1").stdout
    assert "Deleted 1" in cli(schema, "outcomes", "prune", "--older-than", "0").stdout
    assert jobs.app.outcome("charge:7") is None
