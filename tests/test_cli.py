"""The ``dbqueue`` command, run as a real subprocess, on every backend.

Failed jobs are made with the store verbs (push, reserve, fail), so only the
test of ``dbqueue work`` itself runs a worker. The error paths check the CLI's
contract from the README: a mistake exits non-zero with ONE line starting with
``Error:`` on stderr (click's usage errors add their "Usage:" lines) and never
a Python traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import Result

import dbqueue
from dbqueue.store import Failure, NewJob
from dbqueue.store.admin import FailedJob
from dbqueue.store.migrator import current_revision
from dbqueue.store.schema import REVISION
from dbqueue.store.workers import WorkerInfo
from tests import jobapp
from tests.conftest import PREFIX, ROOT, count, rows, worker_env

NO_SERVER_PG = "postgresql://nobody:s3cret@127.0.0.1:1/none"
NO_SERVER_MYSQL = "mysql://nobody@127.0.0.1:1/none"
TOKEN = "cli-test"
PAYLOAD = '{"args":[42],"kwargs":{"to":"Zoë <zoe@example.com>"}}'


# --- helpers ------------------------------------------------------------------


def dbqueue_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dbqueue", *args], cwd=ROOT, env=env,
                          capture_output=True, encoding="utf-8", timeout=120)


def cli_env(url: str) -> dict[str, str]:
    """The environment of a worker on ``url`` (and UTF-8 output, whatever the locale)."""
    return worker_env(url, PYTHONIOENCODING="utf-8")


def bare_env(**extra: str) -> dict[str, str]:
    """The test's environment without any DBQUEUE_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBQUEUE_")}
    env.update(PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", **extra)
    return env


def ok(url: str, *args: str) -> str:
    """Run ``dbqueue ARGS`` on ``url``; it must succeed. Returns its stdout."""
    result = dbqueue_cli(*args, env=cli_env(url))
    assert result.returncode == 0, f"dbqueue {' '.join(args)} failed:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result.stdout


def assert_clean_error(result: subprocess.CompletedProcess[str], *, usage: bool = False) -> str:
    """A non-zero exit with one ``Error:`` line and no traceback; returns that line.

    A dbqueue error is that line alone with exit code 1; a click usage error
    (exit code 2) comes after click's "Usage:" and "Try ... --help" lines.
    """
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    if usage:
        assert result.returncode == 2, result
        assert lines[0].startswith("Usage: dbqueue"), result.stderr
    else:
        assert result.returncode == 1, result
        assert lines == errors, result.stderr
    assert result.stdout == ""
    return errors[0]


def table(stdout: str) -> list[list[str]]:
    """The rows of a printed table (header first); columns are 2+ spaces apart."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [re.split(r"\s{2,}", line.strip()) for line in lines]


def fail_jobs(app: dbqueue.App, *specs: tuple[str, str, str, str]) -> list[FailedJob]:
    """One failed job per (queue, job, exception class, payload), in that order."""
    store = app.store
    for queue, job, exception_class, payload in specs:
        store.push(NewJob(queue, job, payload, priority=2))
        (row,) = store.reserve([queue], 1, TOKEN, 90)
        message = f"{job} broke\nsecond line of the message"
        traceback = (f"Traceback (most recent call last):\n  File \"tasks.py\", line 7\n"
                     f"{exception_class}: {job} broke")
        assert store.fail(row, TOKEN, Failure(exception_class, message, traceback), "host:1")
    return sorted(app.admin.list_failed(limit=1000), key=lambda failed: failed.id)


def failed_ids(app: dbqueue.App) -> list[int]:
    return [row.id for row in rows(app, app.store.tables.failed_jobs)]


def three_failures(app: dbqueue.App) -> list[FailedJob]:
    return fail_jobs(app, ("mail", "send_invoice", "KeyError", PAYLOAD),
                     ("mail", "send_receipt", "ValueError", PAYLOAD),
                     ("reports", "build", "myapp.errors.ReportError", "not json at all"))


# --- migrate, status, restart -------------------------------------------------------


def test_migrate_runs_again_and_says_the_revision(app, schema):
    app.store.push(NewJob("default", "noop", "{}"))
    revision = current_revision(app.store, PREFIX)
    assert revision  # the fixture migrated: this is the second run
    shown = sa.engine.make_url(schema).database if schema.startswith("sqlite") else schema
    assert ok(schema, "migrate") == (
        f"dbqueue tables (prefix {PREFIX}) in {shown} are at revision {revision}\n")
    assert count(app, app.store.tables.jobs) == 1  # nothing was dropped or recreated


def test_status_counts_jobs_per_queue_and_lists_live_workers(app, schema):
    assert ok(schema, "status") == "No jobs and no failures.\n\nNo live workers.\n"

    store = app.store
    fail_jobs(app, ("mail", "send", "KeyError", "{}"), ("dead", "send", "KeyError", "{}"))
    store.push_many([NewJob("mail", "send", "{}")] * 2 + [NewJob("mail", "send", "{}", delay=600)])
    store.push(NewJob("reports", "build", "{}"))
    store.reserve(["reports"], 1, TOKEN, 90)
    app.workers.register(WorkerInfo(id="w-cli-1", host="host-a", pid=4242,
                                    queues="mail,reports", concurrency=3))

    report = json.loads(ok(schema, "status", "--json"))
    counts = {q["queue"]: (q["ready"], q["delayed"], q["reserved"], q["failed"])
              for q in report["queues"]}
    assert counts == {"dead": (0, 0, 0, 1), "mail": (2, 1, 0, 1), "reports": (0, 0, 1, 0)}
    ages = {q["queue"]: q["oldest_ready_age"] for q in report["queues"]}
    assert ages["dead"] is None and ages["reports"] is None and ages["mail"] >= 0
    (worker,) = report["workers"]
    assert {k: worker[k] for k in ("id", "host", "pid", "queues", "concurrency")} == {
        "id": "w-cli-1", "host": "host-a", "pid": 4242, "queues": "mail,reports",
        "concurrency": 3}
    assert worker["started_at"] and worker["last_seen_at"] and worker["stop_requested_at"] is None

    queues_part, workers_part = ok(schema, "status").split("\n\n")
    assert table(queues_part) == [
        ["QUEUE", "READY", "DELAYED", "RESERVED", "FAILED", "OLDEST READY"],
        ["dead", "0", "0", "0", "1"],
        ["mail", "2", "1", "0", "1", table(queues_part)[2][5]],
        ["reports", "0", "0", "1", "0"],
    ]
    assert re.fullmatch(r"\d+\.\ds", table(queues_part)[2][5])
    header, worker_row = table(workers_part)
    assert header[:5] == ["WORKER", "HOST", "PID", "QUEUES", "CONCURRENCY"]
    assert worker_row[:5] == ["w-cli-1", "host-a", "4242", "mail,reports", "3"]


def test_restart_asks_every_live_worker_once(app, schema):
    expected = "Asked {} worker(s) to restart after their current jobs.\n"
    assert ok(schema, "restart") == expected.format(0)
    for n in (1, 2):
        app.workers.register(WorkerInfo(id=f"w-{n}", host="h", pid=n, queues="default",
                                        concurrency=1))
    assert ok(schema, "restart") == expected.format(2)
    workers = rows(app, app.store.tables.queue_workers)
    assert [w.stop_requested_at is not None for w in workers] == [True, True]
    # One killed, still registered: counted apart, as `dbqueue status` leaves it out.
    for n in (3, 4):
        app.workers.register(WorkerInfo(id=f"w-{n}", host="h", pid=n, queues="default",
                                        concurrency=1))
    table = app.store.tables.queue_workers
    app.store.transaction(lambda c: c.execute(
        sa.update(table).where(table.c.id == "w-4")
        .values(last_seen_at=app.store.dialect.now_plus(-60))))
    assert ok(schema, "restart") == expected.format(1) + (
        "1 more registered worker(s) not seen for 30 s (most likely gone; one cut off from "
        "the database reads it once back) were asked too.\n")


def test_work_runs_the_queued_jobs_and_logs_each_with_verbose(jobs, schema):
    job_id = jobs.record.dispatch(7)
    args = ("work", "--app", "tests.jobapp:app", "--stop-when-empty", "--sleep", "0.1")
    result = dbqueue_cli(*args, env=cli_env(schema))
    assert result.returncode == 0 and "completed" not in result.stderr
    assert count(jobs.app, jobs.effects, jobs.effects.c.n == 7) == 1
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0
    job_id = jobs.record.dispatch(8)
    result = dbqueue_cli(*args, "-v", env=cli_env(schema))
    assert result.returncode == 0 and f"job {job_id} (record) completed" in result.stderr


def test_work_lets_the_applications_threads_and_exit_handlers_finish(jobs, schema, tmp_path):
    """The worker ends its process itself, without the interpreter's teardown
    (see cli.work._end): the application's threads and exit handlers finish
    all the same, once, in the worker's own process, in the interpreter's
    order."""
    if not schema.startswith("sqlite"):
        pytest.skip("how the process exits does not depend on the database")
    note = tmp_path / "exit-note"
    jobs.record.dispatch(9)
    worker = dbqueue_cli("work", "--app", "tests.exit_handler_app:app", "--stop-when-empty",
                         "--sleep", "0.1",
                         env={**cli_env(schema), "DBQUEUE_TEST_EXIT_FILE": str(note)})
    assert worker.returncode == 0, worker.stderr
    assert count(jobs.app, jobs.effects, jobs.effects.c.n == 9) == 1
    pid = re.search(r"\(\S+:(\d+)\) started", worker.stderr)
    assert pid is not None, worker.stderr
    assert note.read_text().splitlines() == [f"thread {pid.group(1)}", f"atexit {pid.group(1)}"]


def test_work_started_without_a_stdout_still_exits_cleanly(jobs, schema):
    """A process manager may start the worker with its standard output closed:
    its end must not fail for that (exit code 0, no traceback)."""
    if not schema.startswith("sqlite"):
        pytest.skip("how the process exits does not depend on the database")
    jobs.record.dispatch(10)
    worker = subprocess.run(
        ["sh", "-c", 'exec "$0" -m dbqueue work --app tests.jobapp:app --stop-when-empty >&-',
         sys.executable], cwd=ROOT, env=cli_env(schema), capture_output=True, text=True,
        timeout=120)
    assert worker.returncode == 0, worker.stderr
    assert "Traceback" not in worker.stderr
    assert count(jobs.app, jobs.effects, jobs.effects.c.n == 10) == 1


# --- failed, failed show ------------------------------------------------------------


def test_failed_lists_newest_first_and_filters(app, schema):
    invoice, receipt, report = three_failures(app)

    header, *lines = table(ok(schema, "failed"))
    assert header == ["ID", "JOB ID", "QUEUE", "JOB", "ATTEMPTS", "EXCEPTION", "MESSAGE",
                      "FAILED AT", "WORKER"]
    # JOB ID: the number the worker's log gave the job.
    assert [line[1] for line in lines] == [str(f.job_id) for f in (report, receipt, invoice)]
    assert [line[:1] + line[2:7] for line in lines] == [
        [str(report.id), "reports", "build", "1", "myapp.errors.ReportError", "build broke"],
        [str(receipt.id), "mail", "send_receipt", "1", "ValueError", "send_receipt broke"],
        [str(invoice.id), "mail", "send_invoice", "1", "KeyError", "send_invoice broke"],
    ]  # the message's first line only
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line[7]) for line in lines)
    assert {line[8] for line in lines} == {"host:1"}

    def listed(*options: str) -> list[str]:
        return [line[0] for line in table(ok(schema, "failed", *options))[1:]]

    assert listed("--queue", "mail") == [str(receipt.id), str(invoice.id)]
    assert listed("--job", "send_receipt") == [str(receipt.id)]
    assert listed("--exception", "Key") == [str(invoice.id)]
    assert ok(schema, "failed", "--job", "no_such_job") == "No failed jobs match.\n"

    as_json = json.loads(ok(schema, "failed", "--json", "--limit", "2"))
    assert [r["id"] for r in as_json] == [report.id, receipt.id]  # newest first
    assert as_json[1]["uuid"] == receipt.uuid and as_json[1]["payload"] == PAYLOAD
    assert as_json[1]["exception_class"] == "ValueError"
    assert as_json[1]["exception"] == receipt.exception  # the full traceback
    assert as_json[1]["failed_at"].startswith(str(receipt.failed_at.year))


def test_failed_show_prints_the_payload_and_the_traceback(app, schema):
    invoice, _receipt, report = three_failures(app)

    out = ok(schema, "failed", "show", str(invoice.id))
    assert f"id:        {invoice.id}\n" in out
    assert f"uuid:      {invoice.uuid}\n" in out
    assert "queue:     mail\n" in out and "job:       send_invoice\n" in out
    assert "exception: KeyError\n" in out and "worker:    host:1\n" in out
    pretty = json.dumps(json.loads(PAYLOAD), indent=2, ensure_ascii=False)
    assert f"payload:\n{pretty}\n" in out and "Zoë" in out
    assert out.endswith(f"traceback:\n{invoice.exception}\n")

    by_uuid = ok(schema, "failed", "show", report.uuid)
    assert f"id:        {report.id}\n" in by_uuid
    assert ok(schema, "failed", "show", report.uuid.upper()) == by_uuid  # any spelling
    assert "payload:\nnot json at all\n" in by_uuid  # not JSON: printed as stored
    assert "myapp.errors.ReportError: build broke" in by_uuid

    as_json = json.loads(ok(schema, "failed", "show", "--json", str(invoice.id)))
    assert (as_json["id"], as_json["uuid"], as_json["payload"]) == (
        invoice.id, invoice.uuid, PAYLOAD)
    assert as_json["exception"] == invoice.exception

    # A job of a batch: the batch is named, as --json names it.
    assert "batch:" not in out
    failed_jobs, batch = app.store.tables.failed_jobs, "0b6f1c7e-9d1a-4c55-8f7e-2a7d3c1e9b40"
    with app.engine.begin() as c:
        c.execute(failed_jobs.update().where(failed_jobs.c.id == invoice.id)
                  .values(batch_id=batch))
    assert f"job:       send_invoice\nbatch:     {batch}\n" in ok(
        schema, "failed", "show", str(invoice.id))


# --- retry, forget, flush -------------------------------------------------------------


def test_retry_by_id_and_uuid_then_by_queue_then_all(app, schema):
    failures = fail_jobs(app, ("a", "send", "KeyError", '{"args":[1]}'),
                         ("a", "send", "KeyError", '{"args":[2]}'),
                         ("b", "send", "KeyError", '{"args":[3]}'),
                         ("c", "other", "KeyError", '{"args":[4]}'))
    store = app.store

    def requeued() -> list[tuple[str, str, str, int, int, str | None]]:
        return sorted((r.queue, r.job, r.payload, r.attempts, r.priority, r.reserved_by)
                      for r in rows(app, store.tables.jobs))

    out = ok(schema, "retry", failures[1].uuid, str(failures[0].id))
    # Each named, with the id the job had: the two kinds of id are easily confused.
    assert out == "".join(f"Queued failed job {f.id} (send, was job {f.job_id}) again, as a "
                          "new job.\n" for f in failures[:2])
    assert requeued() == [("a", "send", '{"args":[1]}', 0, 2, None),
                          ("a", "send", '{"args":[2]}', 0, 2, None)]
    assert failed_ids(app) == [failures[2].id, failures[3].id]

    assert ok(schema, "retry", "--queue", "b") == "Queued 1 failed job(s) again.\n"
    assert failed_ids(app) == [failures[3].id]

    assert ok(schema, "retry", "--all") == "Queued 1 failed job(s) again.\n"
    assert failed_ids(app) == []
    assert [r[:4] for r in requeued()] == [("a", "send", '{"args":[1]}', 0),
                                           ("a", "send", '{"args":[2]}', 0),
                                           ("b", "send", '{"args":[3]}', 0),
                                           ("c", "other", '{"args":[4]}', 0)]
    assert len(store.reserve(["a", "b", "c"], 10, "again", 90)) == 4  # ready at once


def test_forget_deletes_one_failed_job_by_id_or_uuid(app, schema):
    first, second, third = three_failures(app)
    assert ok(schema, "forget", str(first.id)) == f"Forgot failed job {first.id}.\n"
    assert ok(schema, "forget", third.uuid) == f"Forgot failed job {third.uuid}.\n"
    assert failed_ids(app) == [second.id]
    assert count(app, app.store.tables.jobs) == 0  # forgotten, not retried


def test_flush_deletes_all_failed_jobs_or_the_older_ones(app, schema):
    old, *recent = three_failures(app)
    failed, store = app.store.tables.failed_jobs, app.store
    with app.engine.begin() as connection:
        connection.execute(sa.update(failed).where(failed.c.id == old.id)
                           .values(failed_at=store.dialect.now_plus(-2 * 3600)))

    assert ok(schema, "flush", "--hours", "1") == "Deleted 1 failed job(s).\n"
    assert failed_ids(app) == [job.id for job in recent]
    assert ok(schema, "flush") == "Deleted 2 failed job(s).\n"
    assert ok(schema, "failed") == "No failed jobs.\n"


# --- errors that need a database ------------------------------------------------------


def test_unknown_failed_jobs_are_one_clear_error(app, schema):
    (kept,) = fail_jobs(app, ("a", "send", "KeyError", "{}"))
    env = cli_env(schema)
    for args in (["failed", "show", "999999"], ["forget", "999999"],
                 ["retry", str(kept.id), "999999"]):
        line = assert_clean_error(dbqueue_cli(*args, env=env))
        assert line.startswith(f"Error: no failed job '{args[-1]}'"), line
        assert "dbqueue failed" in line
    assert "(none of the others was retried either)" in line
    assert failed_ids(app) == [kept.id]  # the retry of a known and an unknown id did nothing
    assert count(app, app.store.tables.jobs) == 0


def test_a_job_id_given_for_a_failed_job_is_answered_with_its_failed_job(app, schema):
    """The JOB ID column, and the worker's log, name the job: an ID easily
    taken for the failed job's own."""
    fail_jobs(app, ("a", "send", "KeyError", "{}"))
    app.store.push(NewJob("elsewhere", "filler", "{}"))  # job ids move one past failure ids
    failures = fail_jobs(app, ("a", "send", "KeyError", "{}"))
    target = next(f for f in failures if f.job_id not in {other.id for other in failures})
    for args in (["retry", str(target.job_id)], ["forget", str(target.job_id)],
                 ["failed", "show", str(target.job_id)]):
        line = assert_clean_error(dbqueue_cli(*args, env=cli_env(schema)))
        assert line == (f"Error: no failed job '{target.job_id}'; JOB ID "
                        f"{target.job_id} is failed job {target.id}: if that is the one meant, "
                        f"see it with: dbqueue failed show {target.id}; list them with: "
                        "dbqueue failed"), line


def test_tables_missing_under_the_prefix_are_one_clear_error(schema):
    env = cli_env(schema)
    for args in (["status"], ["retry", "--all"]):
        result = dbqueue_cli(*args, "--table-prefix", f"{PREFIX}absent_", env=env)
        line = assert_clean_error(result)
        assert f"the dbqueue tables with the prefix '{PREFIX}absent_' are missing" in line
        assert line.endswith(f"create them with: dbqueue migrate --table-prefix {PREFIX}absent_")


# --- errors without a database --------------------------------------------------------


@pytest.fixture
def fresh_url(tmp_path: Path) -> str:
    """A SQLite file that has never been migrated."""
    (tmp_path / "fresh.db").touch()
    return f"sqlite:///{tmp_path / 'fresh.db'}"


@pytest.fixture
def migrated_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    app = dbqueue.App(url)
    app.migrate()
    app.dispose()
    return url


@pytest.mark.parametrize(("args", "expected"), [
    (["status", "--url", "not a url"], "'not a url' is not a database URL"),
    (["status", "--url", "sqlite://queue.db"],
     "'sqlite://queue.db' names a host, not a SQLite file: write sqlite:///queue.db"),
    (["status", "--url", "oracle://scott@db/orcl"], "does not support 'oracle'"),
    (["status", "--url", NO_SERVER_PG], "cannot connect to postgresql"),
    (["status", "--url", "{fresh}"], "the dbqueue tables are missing"),
    (["failed", "--url", "{fresh}"], "the dbqueue tables are missing"),
    (["status", "--url", "{fresh}", "--app", "no_such_module:app"],
     "cannot import module 'no_such_module'"),
    (["status", "--url", "{fresh}", "--app", "./tests/jobapp.py:app"],
     "not a file's path: --app tests.jobapp:app"),
    (["status", "--url", "{fresh}", "--app", "tests.jobapp:build"],
     "tests.jobapp.build is a function, not a dbqueue.App"),
    (["status", "--url", "{fresh}", "--app", "tests.jobapp:no_such_attribute"],
     "module tests.jobapp has no attribute 'no_such_attribute'"),
    (["status", "--url", "{fresh}", "--app", "tests.broken_app:app"],
     "importing tests.broken_app failed at "),
    (["status", "--url", "{fresh}", "--app", ":app"], "names no module"),
    # `dbqueue work`'s fork server imports the application beside the worker:
    # its own import of a broken module must add nothing to the line.
    (["work", "--url", "{fresh}", "--app", "no_such_module:app"],
     "cannot import module 'no_such_module'"),
    (["work", "--url", "{fresh}", "--app", "tests.broken_app:app"],
     "importing tests.broken_app failed at "),
    (["work", "--url", "{fresh}", "--app", "tests.raising_app:app"],
     "RuntimeError: the settings file is missing"),
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:build"],
     "tests.jobapp.build is a function, not a dbqueue.App"),
    (["work", "--url", "mysql://root:s3cret@127.0.0.1:abc/x", "--app", "tests.jobapp:app"],
     "the port 'abc' in 'mysql://root:***@127.0.0.1:abc/x' is not a number"),
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:app", "--concurrency", "0"],
     "--concurrency must be from 1 to 256 (each is a process of its own), not 0"),
    # A typo's hundred thousand children would take the host's memory, and
    # the database server on it, down with them.
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:app", "--concurrency", "100000"],
     "--concurrency must be from 1 to 256 (each is a process of its own), not 100000"),
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:app", "--retry-after", "inf"],
     "--retry-after must be a finite number, from 1 second to a year (31,536,000), not inf"),
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:app", "--retry-after", "1e12"],
     "--retry-after must be from 1 second to a year (31,536,000), not 1000000000000.0"),
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:app", "--grace", "nan"],
     "--grace must be a finite number, 0 seconds or more, not nan"),
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:app", "--stop-when-empty",
      "--stop-when-drained"], "--stop-when-empty and --stop-when-drained: choose one"),
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:app", "--queue", " "],
     "--queue needs at least one queue name"),
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:app", "--queue", "mail,,default"],
     "--queue has an empty name: 'mail,,default'; write the names separated by single "
     "commas"),
    (["work", "--url", "{fresh}", "--app", "tests.jobapp:app", "--queue", "mail, mail"],
     "--queue names a queue twice: mail,mail"),
    (["status", "--url", "{fresh}", "--table-prefix", "bad-prefix"],
     "Invalid value for '--table-prefix' (or DBQUEUE_TABLE_PREFIX): 'bad-prefix' is not a "
     "table prefix: use up to 21 letters"),
    # dbqueue's refusal first, not as the import of the application failing.
    (["work", "--url", "{fresh}", "--app", "tests.misconfigured_app:app"],
     "Error: table prefix 'bad-' is not valid: use up to 21 letters"),
    (["migrate", "--url", "postgresql+psycopg2://x@127.0.0.1/db"],
     "'psycopg2' is not installed; install it, or name no driver (postgresql://, mysql://)"),
    (["migrate", "--url", "sqlite:////no-such-directory-of-dbqueue/q.db"],
     "and that its directory exists and is writable"),
], ids=["malformed-url", "sqlite-url-two-slashes", "unsupported-url", "unreachable-server",
        "unmigrated-status", "unmigrated-failed", "app-module-missing", "app-file-path",
        "app-not-an-app",
        "app-attribute-missing", "app-module-broken", "app-without-module",
        "work-app-module-missing", "work-app-module-broken", "work-app-module-raises",
        "work-app-not-an-app", "work-url-bad-port", "work-concurrency-zero",
        "work-concurrency-huge",
        "work-retry-after-inf", "work-retry-after-huge", "work-grace-nan",
        "work-two-stop-conditions",
        "work-no-queue", "work-empty-queue-name", "work-queue-twice",
        "bad-table-prefix", "app-refused-setting", "driver-not-installed",
        "sqlite-directory-missing"])
def test_mistakes_print_one_error_line(args, expected, fresh_url):
    result = dbqueue_cli(*(a.format(fresh=fresh_url) for a in args), env=bare_env())
    # A worker's option out of its range is a usage error, as click's ranges are.
    line = assert_clean_error(result, usage=(args[0] == "work" and expected.startswith("--"))
                              or expected.startswith("Invalid value"))
    assert expected in line, line
    assert "s3cret" not in result.stderr  # the password is never printed


def test_a_lease_too_short_for_a_worker_is_named_as_it_was_set(migrated_url):
    """The App takes any positive retry_after; a worker needs 1 s. The error
    named --retry-after, which nobody had typed."""
    result = dbqueue_cli("work", "--app", "tests.jobapp:app", "--stop-when-empty",
                         env=bare_env(DBQUEUE_URL=migrated_url, DBQUEUE_RETRY_AFTER="0.5"))
    line = assert_clean_error(result)
    assert "retry_after (DBQUEUE_RETRY_AFTER, or App(retry_after=)) is 0.5 s" in line, line
    assert "--retry-after must" not in line


def test_a_bad_setting_in_the_environment_is_named_as_it_was_set(fresh_url):
    """Even when the application's App() reads it: then the line is the
    user's App() call, not code Python generated."""
    result = dbqueue_cli("status", "--app", "tests.jobapp:app",
                         env=bare_env(DBQUEUE_URL=fresh_url, DBQUEUE_NETWORK_TIMEOUT="0.5"))
    line = assert_clean_error(result)
    assert ("DBQUEUE_NETWORK_TIMEOUT must be a number of seconds from 1 to 2,147,483 "
            "(about 24 days), not '0.5'") in line, line
    assert "jobapp.py:" in line and "<string>" not in line, line


@pytest.mark.parametrize(("args", "expected"), [
    (["work"], "--app"),
    (["retry"], "give failed job IDs, or --all, or --queue NAME"),
    (["retry", "1", "--all"], "give failed job IDs, or --all, or --queue NAME"),
    (["flush", "--hours", "-1"], "'--hours': must be a number of hours from 0 to 876,000 "
                                 "(a hundred years), not -1"),
    (["failed", "--limit", "many"], "--limit"),
    (["failed", "retry", "3"], "there is no 'dbqueue failed retry': failed jobs are handled "
                               "by 'dbqueue retry'"),
    (["failed", "prune"], "handled by 'dbqueue flush'"),
], ids=["work-without-app", "retry-nothing", "retry-ids-and-all", "flush-negative-hours",
        "failed-limit-not-a-number", "failed-retry", "failed-prune"])
def test_usage_errors_print_one_error_line(args, expected, migrated_url):
    result = dbqueue_cli(*args, env=bare_env(DBQUEUE_URL=migrated_url))
    line = assert_clean_error(result, usage=True)
    assert expected in line, line


def test_a_sqlite_file_that_does_not_exist_is_not_created_but_named(tmp_path):
    typo = tmp_path / "queue-typo.db"
    for command in ("status", "failed", "locks"):
        result = dbqueue_cli(command, "--url", f"sqlite:///{typo}", env=bare_env())
        line = assert_clean_error(result)
        assert f"there is no SQLite database at {typo}" in line, line
    assert not typo.exists()
    created = dbqueue_cli("migrate", "--url", f"sqlite:///{typo}", env=bare_env())
    assert created.returncode == 0, created.stderr  # migrate creates the file
    assert typo.exists()


def test_unmigrated_database_error_also_comes_from_the_environment(fresh_url):
    line = assert_clean_error(dbqueue_cli("status", env=bare_env(DBQUEUE_URL=fresh_url)))
    assert "the dbqueue tables are missing" in line


@pytest.mark.parametrize("url", [NO_SERVER_PG, NO_SERVER_MYSQL, "sqlite:///{tmp}/never.db"],
                         ids=["postgresql", "mysql", "sqlite"])
def test_migrate_sql_prints_the_ddl_without_a_server(url, tmp_path):
    url = url.format(tmp=tmp_path)
    result = dbqueue_cli("migrate", "--sql", "--url", url, "--table-prefix", "dbq_",
                         env=bare_env())
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for name in ("jobs", "failed_jobs", "queue_workers", "dbqueue_alembic_version"):
        assert f"CREATE TABLE dbq_{name} (" in result.stdout
    assert not (tmp_path / "never.db").exists()


def test_migrate_sql_prints_a_downgrade_or_the_steps_from_a_revision():
    env, url = bare_env(), NO_SERVER_PG
    down = dbqueue_cli("migrate", "--sql", "--downgrade", "0001", "--url", url, env=env)
    assert down.returncode == 0, down.stderr
    assert "DROP TABLE job_circuits;" in down.stdout and "CREATE TABLE" not in down.stdout
    assert "dbqueue_alembic_version;" not in down.stdout  # still needed at 0001
    base = dbqueue_cli("migrate", "--sql", "--downgrade", "base", "--url", url, env=env)
    assert base.returncode == 0, base.stderr
    assert base.stdout.rstrip().endswith(
        "DROP TABLE jobs;\n\n"
        "DELETE FROM dbqueue_alembic_version WHERE dbqueue_alembic_version.version_num = '0001';"
        "\n\nDROP TABLE IF EXISTS dbqueue_alembic_version;\n\nCOMMIT;")
    up = dbqueue_cli("migrate", "--sql", "--revision", "0002:head", "--url", url, env=env)
    assert up.returncode == 0, up.stderr
    assert "CREATE TABLE job_circuits" in up.stdout and "CREATE TABLE jobs" not in up.stdout


def test_migrate_downgrade_base_drops_the_tables(migrated_url):
    env = bare_env(DBQUEUE_URL=migrated_url)
    result = dbqueue_cli("migrate", "--downgrade", "base", "--yes", env=env)
    path = sa.engine.make_url(migrated_url).database
    assert (result.returncode, result.stdout) == (
        0, f"dbqueue tables in {path} downgraded to base\n")
    line = assert_clean_error(dbqueue_cli("status", env=env))
    assert "the dbqueue tables are missing" in line
    engine = sa.create_engine(migrated_url)
    assert sa.inspect(engine).get_table_names() == []  # Alembic's version table too
    engine.dispose()


def test_the_advice_to_upgrade_names_the_table_prefix(tmp_path):
    env = bare_env(DBQUEUE_URL=f"sqlite:///{tmp_path / 'prefixed.db'}",
                   DBQUEUE_TABLE_PREFIX="dbq_")
    assert dbqueue_cli("migrate", env=env).returncode == 0
    assert dbqueue_cli("migrate", "--downgrade", "0002", "--yes", env=env).returncode == 0
    line = assert_clean_error(dbqueue_cli("work", "--app", "tests.jobapp:app", "--once", env=env))
    assert line.endswith("upgrade them with: dbqueue migrate --app tests.jobapp:app "
                         "--table-prefix dbq_"), line


def test_tables_at_an_older_revision_are_one_clear_error(migrated_url):
    env = bare_env(DBQUEUE_URL=migrated_url)
    assert dbqueue_cli("migrate", "--downgrade", "0002", "--yes", env=env).returncode == 0
    line = assert_clean_error(dbqueue_cli("work", "--app", "tests.jobapp:app", "--once", env=env))
    assert f"are at revision 0002, but this dbqueue needs {REVISION} or newer" in line, line
    assert "dbqueue migrate" in line
    status = dbqueue_cli("status", env=env)  # it only reads: it warns, and answers
    assert status.returncode == 0 and "Traceback" not in status.stderr
    assert "Warning: the dbqueue tables" in status.stderr and "No jobs" in status.stdout
    # A table or a column that came later is missing: not "the tables are missing".
    for command in ("batches", "failed"):
        line = assert_clean_error(dbqueue_cli(command, env=env))
        assert f"are at revision 0002, but this dbqueue needs {REVISION} or newer" in line, line
    old = jobapp.build(migrated_url, "")
    old.app.downgrade("0001")  # before unique jobs: no jobs.unique_key
    with pytest.raises(dbqueue.NotMigrated, match="are at revision 0001, but this dbqueue"):
        old.unique_invoice.dispatch(1)
    old.app.dispose()


def test_url_or_prefix_an_app_would_ignore_is_one_clear_error(migrated_url, tmp_path):
    (tmp_path / "fixed_app.py").write_text(
        f"import dbqueue\napp = dbqueue.App({migrated_url!r}, table_prefix='')\n")
    env = bare_env()
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    line = assert_clean_error(dbqueue_cli("status", "--app", "fixed_app:app", "--url", other,
                                          env=env))
    assert "--url differs from the database fixed_app:app is built on" in line, line
    assert not (tmp_path / "other.db").exists()
    line = assert_clean_error(dbqueue_cli("status", "--app", "fixed_app:app",
                                          "--table-prefix", "q_", env=env))
    assert "--table-prefix 'q_' differs from the prefix fixed_app:app is built with" in line
    # The same URL is fine; one from the environment (documented as ignored) is
    # said to be ignored: a unit file's Environment= may think it chooses.
    same = dbqueue_cli("status", "--app", "fixed_app:app", "--url", migrated_url, env=env)
    assert same.returncode == 0 and "Warning" not in same.stderr
    env.update(DBQUEUE_URL=other, DBQUEUE_TABLE_PREFIX="q_")
    ignored = dbqueue_cli("status", "--app", "fixed_app:app", env=env)
    assert ignored.returncode == 0, ignored.stderr
    assert ignored.stderr.splitlines() == [
        f"Warning: DBQUEUE_URL is ignored: fixed_app:app is built on its own database "
        f"({sa.make_url(migrated_url).database})",
        "Warning: DBQUEUE_TABLE_PREFIX=q_ is ignored: fixed_app:app is built with its own "
        "prefix ('')"], ignored.stderr


def test_the_revision_the_code_needs_is_a_shipped_migration():
    from importlib import resources

    from dbqueue.store.schema import REVISION

    versions = resources.files("dbqueue.migrations") / "versions"
    assert REVISION in {f.name[:4] for f in versions.iterdir() if f.name[:4].isdigit()}


def test_version_and_help_name_every_command():
    env = bare_env()
    version = dbqueue_cli("--version", env=env)
    assert (version.returncode, version.stdout) == (0, f"dbqueue, version {dbqueue.__version__}\n")
    usage = dbqueue_cli("--help", env=env)
    assert usage.returncode == 0
    for command in ("work", "migrate", "status", "restart", "failed", "retry", "forget", "flush",
                    "locks", "outcomes"):
        assert re.search(rf"^  {command} ", usage.stdout, re.MULTILINE), command


def test_the_command_line_loads_sqlalchemy_only_for_the_command_that_runs():
    # `dbqueue --help`, and a usage error, answer without loading SQLAlchemy:
    # dbqueue and its command line import their parts when first used.
    probe = ("import sys, dbqueue, dbqueue.cli, dbqueue.cli.options, dbqueue.loader; "
             "print(sorted(m for m in ('sqlalchemy', 'dbqueue.app') if m in sys.modules))")
    lazy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert lazy.stdout.strip() == "[]"
    # ...and every public name is still there when asked for.
    names = subprocess.run([sys.executable, "-c", "import dbqueue; print(sorted("
                            "n for n in dbqueue.__all__ if getattr(dbqueue, n, None) is None))"],
                           capture_output=True, text=True, check=True, cwd=ROOT)
    assert names.stdout.strip() == "[]"


# --- odd input ------------------------------------------------------------------------


def one_failed_job(url: str) -> FailedJob:
    app = dbqueue.App(url)
    (failed,) = fail_jobs(app, ("a", "send", "KeyError", "{}"))
    app.dispose()
    return failed


@pytest.mark.parametrize("command", [["forget"], ["retry"], ["failed", "show"]])
def test_a_unicode_digit_id_is_a_clean_error(command, migrated_url):
    result = dbqueue_cli(*command, "²", env=bare_env(DBQUEUE_URL=migrated_url))
    assert_clean_error(result)


def test_a_huge_id_is_a_clean_error_on_sqlite(migrated_url):
    result = dbqueue_cli("forget", "9" * 25, env=bare_env(DBQUEUE_URL=migrated_url))
    assert_clean_error(result)


def test_retry_accepts_an_id_with_leading_zeros_like_forget_does(migrated_url):
    failed = one_failed_job(migrated_url)
    result = dbqueue_cli("retry", f"00{failed.id}", env=bare_env(DBQUEUE_URL=migrated_url))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("option", ["--revision", "--downgrade"])
def test_an_unknown_revision_is_a_clean_error(option, migrated_url):
    result = dbqueue_cli("migrate", option, "nosuch", env=bare_env(DBQUEUE_URL=migrated_url))
    assert_clean_error(result)


def test_failed_show_takes_url_after_show(migrated_url):
    failed = one_failed_job(migrated_url)
    result = dbqueue_cli("failed", "show", str(failed.id), "--url", migrated_url,
                         env=bare_env())
    assert result.returncode == 0, result.stderr


def test_options_before_a_subcommand_reach_it_and_beat_the_environment(migrated_url, tmp_path):
    failed = one_failed_job(migrated_url)
    # DBQUEUE_URL names another database: --url typed before `show` must win.
    elsewhere = bare_env(DBQUEUE_URL=f"sqlite:///{tmp_path}/elsewhere.db")
    result = dbqueue_cli("failed", "--url", migrated_url, "--json", "show", str(failed.id),
                         env=elsewhere)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["id"] == failed.id  # the group's --json too
    released = dbqueue_cli("locks", "--url", migrated_url, "release", "nobody:holds:this",
                           env=elsewhere)
    assert "no lock 'nobody:holds:this' is held" in assert_clean_error(released)
    missing = dbqueue_cli("outcomes", "--url", migrated_url, "show", "no-such-key",
                          env=elsewhere)
    assert "no outcome is recorded under 'no-such-key'" in assert_clean_error(missing)


def test_urls_that_name_one_database_in_two_ways_are_the_same():
    from dbqueue.store.engine import same_database

    assert same_database("postgresql://u@db:5432/app", "postgresql+psycopg://u@db/app")
    assert same_database("mysql://u@db/app", "mysql+pymysql://u@db:3306/app")
    assert same_database("mariadb://u@db/app", "mysql://u@db/app")
    assert not same_database("postgresql://u@db/app", "postgresql://u@db:6432/app")
    assert not same_database("mysql://u@db/app", "mysql://u@db/other")
    assert not same_database("postgresql://u@db/app", "mysql://u@db/app")  # other ports
    here = os.getcwd()  # a relative SQLite path names a file from here
    assert same_database("sqlite:///q.db", f"sqlite:///{here}/q.db")
    assert not same_database("sqlite:///q.db", "sqlite:////elsewhere/q.db")


# --- filters that match nothing -------------------------------------------------------


def in_process(url: str, *args: str) -> Result:
    """``dbqueue ARGS`` on ``url`` through click's CliRunner."""
    # Imported here: that module imports this one.
    from tests.test_cli_first_run import run

    return run(*args, DBQUEUE_URL=url, DBQUEUE_TABLE_PREFIX=PREFIX)


def test_a_job_filter_that_matches_nothing_names_the_near_job_names(app, schema):
    fail_jobs(app, ("default", "tasks.add", "KeyError", "{}"),
              ("mail", "billing.add", "KeyError", "{}"),
              ("mail", "tasks.send_invoice", "KeyError", "{}"))

    def listed(*options: str, stream: str = "stdout") -> str:
        result = in_process(schema, "failed", *options)
        assert result.exit_code == 0, (result.output, result.exception)
        return str(getattr(result, stream))

    # The stored name is module.function: the function's name finds it.
    assert listed("--job", "add") == (
        "No failed jobs match.\n"
        "No failed job is named 'add'; did you mean 'billing.add' or 'tasks.add'?\n")
    assert listed("--job", "tasks.ad").endswith(
        "No failed job is named 'tasks.ad'; did you mean 'tasks.add'?\n")
    assert listed("--json", "--job", "add") == "[]\n"  # stdout stays JSON
    assert listed("--json", "--job", "add", stream="stderr") == (
        "No failed job is named 'add'; did you mean 'billing.add' or 'tasks.add'?\n")
    # Names that some failed job has, only not together; a name near none: no guess.
    assert listed("--queue", "default", "--job", "billing.add") == "No failed jobs match.\n"
    assert listed("--job", "no_such_job") == "No failed jobs match.\n"


def test_a_queue_filter_that_matches_nothing_names_the_near_queues(app, schema):
    fail_jobs(app, ("default", "tasks.add", "KeyError", "{}"),
              ("mail", "tasks.send", "KeyError", "{}"))
    hint = "No failed job is in queue 'defualt'; did you mean 'default'?\n"

    listed = in_process(schema, "failed", "--queue", "defualt")
    assert (listed.exit_code, listed.stdout) == (0, f"No failed jobs match.\n{hint}")
    retried = in_process(schema, "retry", "--queue", "defualt")
    assert (retried.exit_code, retried.stdout) == (0, f"Queued 0 failed job(s) again.\n{hint}")
    assert len(failed_ids(app)) == 2

    # No failed jobs at all: nothing to point at.
    assert ok(schema, "flush") == "Deleted 2 failed job(s).\n"
    retried = in_process(schema, "retry", "--queue", "defualt")
    assert (retried.exit_code, retried.stdout) == (0, "Queued 0 failed job(s) again.\n")


def test_an_exception_filter_ignores_case_and_names_the_near_classes(app, schema):
    """Case is ignored on every server alike (LIKE ignores it on MySQL only)."""
    fail_jobs(app, ("default", "tasks.add", "myapp.errors.PaymentError", "{}"),
              ("mail", "tasks.send", "KeyError", "{}"))

    def listed(*options: str) -> str:
        result = in_process(schema, "failed", *options)
        assert result.exit_code == 0, (result.output, result.exception)
        return result.stdout

    assert [row[3] for row in table(listed("--exception", "paymenterror"))[1:]] == ["tasks.add"]
    assert listed("--exception", "PaymentEror") == (
        "No failed jobs match.\nNo failed job's exception class contains 'PaymentEror'; "
        "did you mean 'myapp.errors.PaymentError'?\n")
    assert listed("--exception", "PAYMENTEROR").endswith(
        "did you mean 'myapp.errors.PaymentError'?\n")  # in any case, as the filter
    # A class that has the text, left out by another filter, is no slip.
    assert listed("--queue", "mail", "--exception", "Payment") == "No failed jobs match.\n"


@pytest.mark.parametrize("args", [["failed", "--queue", ""], ["failed", "--job", " "],
                                  ["failed", "--exception", ""], ["retry", "--queue", ""]],
                         ids=["failed-queue", "failed-job", "failed-exception", "retry-queue"])
def test_an_empty_filter_is_refused_not_taken_for_none(args, schema):
    """An unset shell variable ($QUEUE) must not list, or retry, every failure."""
    result = in_process(schema, *args)
    assert result.exit_code == 2, result.output
    assert f"is empty; give a name, or leave {args[1]} out" in result.stderr


def test_releasing_a_lock_nobody_holds_names_the_near_held_keys(app, schema):
    assert app.lock("report:2026-12", ttl=600).acquire()
    result = in_process(schema, "locks", "release", "report:2026-11")
    assert result.exit_code == 1, result.output
    assert ("no lock 'report:2026-11' is held; did you mean 'report:2026-12'? "
            "List them with: dbqueue locks") in result.stderr
    assert app.lock("report:2026-12").locked()  # the near one is left alone


def test_an_application_that_cannot_be_imported_leaves_the_queue_readable(migrated_url):
    """A broken deploy: DBQUEUE_APP names a module that fails to import, and
    every command failed with it, `failed` included, when it was most needed."""
    env = bare_env(DBQUEUE_URL=migrated_url, DBQUEUE_APP="tests.broken_app:app")
    line = assert_clean_error(dbqueue_cli("failed", env=env))
    assert "importing tests.broken_app failed at " in line, line
    assert "to reach the queue without it, give --app '' and the database's --url" in line
    result = dbqueue_cli("failed", "--app", "", env=env)
    assert result.returncode == 0 and result.stdout == "No failed jobs.\n", result.stderr
    # Typed, it is meant; a worker needs it; a bad setting fails without it too.
    typed = assert_clean_error(dbqueue_cli("failed", "--app", "tests.broken_app:app", env=env))
    assert "--app ''" not in typed, typed
    worker = assert_clean_error(dbqueue_cli("work", env=env))
    assert "--app ''" not in worker, worker
    setting = assert_clean_error(dbqueue_cli(
        "failed", env={**env, "DBQUEUE_APP": "tests.jobapp:app", "DBQUEUE_RETRY_AFTER": "abc"}))
    assert setting.startswith("Error: DBQUEUE_RETRY_AFTER must be") and "--app ''" not in setting
    # dbqueue refusing the application's own code: that module is in the way.
    refused = assert_clean_error(dbqueue_cli(
        "failed", env={**env, "DBQUEUE_APP": "tests.misconfigured_app:app"}))
    assert "table prefix 'bad-'" in refused and "give --app ''" in refused, refused
