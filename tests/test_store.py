"""One contract per store verb, run on every backend against a real server."""

import math
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

import dbqueue
from dbqueue.store import Admin, Failure, Lease, NewJob, migrator
from dbqueue.store import dispatch as dispatch_module
from dbqueue.store import transactions as transactions_module
from dbqueue.store.dialects.types import _in_utc as in_utc
from tests.conftest import count, rows


def test_reserve_takes_queues_in_order_and_lower_priority_first(app):
    store = app.store
    store.push(NewJob("default", "noop", "{}"))
    low = store.push(NewJob("high", "noop", "{}", priority=5))
    urgent = store.push(NewJob("high", "noop", "{}", priority=-5))
    store.push(NewJob("high", "noop", "{}", delay=3600))
    taken = store.reserve(["high", "default"], 2, "t1", 90)
    assert [row.id for row in taken] == [urgent, low]
    assert [row.attempts for row in taken] == [1, 1]
    rest = store.reserve(["high", "default"], 10, "t2", 90)
    assert [row.queue for row in rest] == ["default"]
    assert store.reserve(["high", "default"], 10, "t3", 90) == []  # the delayed one waits


def test_each_reservation_leases_its_rows_under_its_own_token(app):
    # The claim statement is built once per shape and reused: the token of each
    # call must still be the one its rows get, with a timestamp per row.
    store = app.store
    ids = [store.push(NewJob("default", "noop", "{}")) for _ in range(4)]
    first = store.reserve(["default"], 2, "w.1", 90)
    second = store.reserve(["default"], 2, "w.2", 90)
    assert [row.id for row in first + second] == ids
    assert all(row.created_at.tzinfo is not None and row.reserved_at.tzinfo is not None
               for row in first + second)
    held = {row.id: row.reserved_by for row in rows(app, store.tables.jobs)}
    assert held == {ids[0]: "w.1", ids[1]: "w.1", ids[2]: "w.2", ids[3]: "w.2"}
    assert store.complete([Lease(ids[0], "w.2"), Lease(ids[2], "w.2")]) == 1


def test_a_reservation_is_leased_until_it_expires_and_then_taken_again(app):
    store = app.store
    job_id = store.push(NewJob("default", "noop", "{}"))
    first = store.reserve(["default"], 1, "a", 90)
    assert [row.id for row in first] == [job_id]
    assert store.reserve(["default"], 1, "b", 90) == []
    jobs = store.tables.jobs
    with app.engine.begin() as c:  # the holder died: its lease runs out
        c.execute(sa.update(jobs).values(available_at=store.dialect.now_plus(-1)))
    again = store.reserve(["default"], 1, "b", 90)
    # A reservation counts no attempt: the first holder never started the job
    # (had it, its worker would have counted the attempt, see the next test).
    assert [(row.id, row.attempts) for row in again] == [(job_id, 1)]


def test_only_a_started_attempt_counts_when_a_lease_runs_out(app):
    store, jobs = app.store, app.store.tables.jobs
    started, waiting = (store.push(NewJob("default", "noop", "{}")) for _ in range(2))
    first = store.reserve(["default"], 2, "a", 90)
    assert [row.attempts for row in first] == [1, 1]
    assert store.complete([], started=[(Lease(started, "a"), 1)]) == 0  # it ran a while
    with app.engine.begin() as c:  # then its worker died with both leases
        c.execute(sa.update(jobs).values(available_at=store.dialect.now_plus(-1)))
    again = store.reserve(["default"], 2, "b", 90)
    assert {row.id: row.attempts for row in again} == {started: 2, waiting: 1}


def test_an_attempt_count_at_the_integer_limit_never_blocks_a_reservation(app):
    store, jobs = app.store, app.store.tables.jobs
    poisoned = store.push(NewJob("default", "noop", "{}"))
    good = store.push(NewJob("default", "noop", "{}"))
    with app.engine.begin() as c:
        c.execute(sa.update(jobs).where(jobs.c.id == poisoned).values(attempts=2**31 - 1))
    taken = {row.id: row for row in store.reserve(["default"], 2, "t", 90)}
    assert set(taken) == {poisoned, good} and taken[poisoned].attempts == 2**31
    assert store.release(Lease(poisoned, "t"), 0, taken[poisoned].attempts)  # kept in range
    assert store.fail(taken[good], "t", Failure("E", "m", "tb"), "h:1", attempts=2**40)
    assert [row.attempts for row in rows(app, jobs)] == [2**31 - 1]
    assert [row.attempts for row in rows(app, store.tables.failed_jobs)] == [2**31 - 1]


def test_fenced_leases_a_stale_holder_changes_nothing(app):
    store, jobs = app.store, app.store.tables.jobs
    job_id = store.push(NewJob("default", "noop", "{}"))
    (stale,) = store.reserve(["default"], 1, "old", 90)
    with app.engine.begin() as c:
        c.execute(sa.update(jobs).values(available_at=store.dialect.now_plus(-1)))
    (_current,) = store.reserve(["default"], 1, "new", 90)
    old = Lease(job_id, "old")
    assert store.complete([old]) == 0
    assert store.release(old, 0, 1) is False
    assert store.fail(stale, "old", Failure("X", "m", "tb"), "h:1") is False
    assert store.heartbeat([old], 90) == set()
    assert store.release_all([old]) == 0
    assert store.complete([], started=[(old, 1)]) == 0
    (row,) = rows(app, jobs)
    assert (row.reserved_by, row.attempts) == ("new", 0)
    assert count(app, store.tables.failed_jobs) == 0
    assert store.complete([Lease(job_id, "new")]) == 1
    assert count(app, jobs) == 0


def test_heartbeat_moves_the_lease_forward(app):
    store, jobs = app.store, app.store.tables.jobs
    job_id = store.push(NewJob("default", "noop", "{}"))
    store.reserve(["default"], 1, "t", 5)
    (before,) = rows(app, jobs)
    assert store.heartbeat([Lease(job_id, "t"), Lease(job_id + 1, "t")], 600) == {job_id}
    (after,) = rows(app, jobs)
    assert after.available_at - after.reserved_at == timedelta(seconds=600)
    assert after.available_at > before.available_at


def test_release_records_the_attempts_and_delays_by_the_db_clock(app):
    store, jobs = app.store, app.store.tables.jobs
    job_id = store.push(NewJob("default", "noop", "{}"))
    (row,) = store.reserve(["default"], 1, "t", 90)
    assert store.release(Lease(job_id, "t"), 120, row.attempts)
    (stored,) = rows(app, jobs)
    assert stored.attempts == 1 and stored.reserved_by is None and stored.reserved_at is None
    delay = (stored.available_at - row.reserved_at).total_seconds()
    assert 120 <= delay < 130


def test_fail_moves_the_job_to_failed_jobs_in_one_step(app):
    store = app.store
    job_id = store.push(NewJob("mail", "send", '{"args":[42],"kwargs":{}}', priority=3))
    (row,) = store.reserve(["mail"], 1, "t", 90)
    assert store.fail(row, "t", Failure("ValueError", "bad invoice", "Traceback..."), "web1:77")
    assert count(app, store.tables.jobs) == 0
    (failed,) = rows(app, store.tables.failed_jobs)
    assert (failed.job_id, failed.queue, failed.job, failed.attempts, failed.priority) == (
        job_id, "mail", "send", 1, 3)
    assert (failed.exception_class, failed.exception_message, failed.worker) == (
        "ValueError", "bad invoice", "web1:77")
    assert failed.payload == '{"args":[42],"kwargs":{}}' and len(failed.uuid) == 36


def test_payloads_and_tracebacks_past_64_kib_are_kept_whole(app):
    # MySQL's TEXT stops at 64 KiB: the long text columns are LONGTEXT there.
    store, big = app.store, "x" * 70_000
    payload = '{"args":["' + big + '"],"kwargs":{}}'
    store.push(NewJob("default", "send", payload))
    (row,) = store.reserve(["default"], 1, "t", 90)
    assert row.payload == payload
    assert store.fail(row, "t", Failure("ValueError", big, "Traceback " + big), "web1:77")
    (failed,) = rows(app, store.tables.failed_jobs)
    # (A message keeps its first 10,000 characters: see policy.texts.)
    assert (failed.payload, failed.exception_message, failed.exception) == (
        payload, big[:10_000] + "… [60,000 more characters cut]", "Traceback " + big)


@pytest.mark.parametrize(("url", "long_text"), [
    ("postgresql://u@host/db", "TEXT"), ("mysql://u@host/db", "LONGTEXT"),
    ("mariadb://u@host/db", "LONGTEXT"), ("sqlite:///never.db", "TEXT")])
def test_the_long_text_columns_are_each_servers_longest_text(url, long_text):
    script = migrator.upgrade_sql(url, "p_", "base:0001")
    for column in ("payload", "exception_message", "exception"):
        assert re.search(rf"^ +{column} {long_text} NOT NULL,", script, re.MULTILINE), column


def test_push_many_inserts_every_row_with_its_own_options(app):
    store = app.store
    jobs = [NewJob("q1", "noop", f'{{"args":[{i}]}}', priority=i % 3, delay=3600 if i % 2 else 0)
            for i in range(2500)]
    assert store.push_many(jobs) == 2500
    assert count(app, store.tables.jobs) == 2500
    ready = store.reserve(["q1"], 5000, "t", 90)
    assert len(ready) == 1250 and {row.priority for row in ready} == {0, 1, 2}


def test_push_many_keeps_every_character_and_every_row_of_a_large_batch(app, jobs):
    """Bulk INSERTs are built as text on MySQL: quotes, backslashes, percent
    signs and non-ASCII text must arrive as sent, in statements of bounded size."""
    awkward = ["it's", 'say "hi"', "C:\\temp\\new", "50% off %s %(x)s %%", "Zoë ☕ 😀",
               "line\nbreak\ttab", "", "--", "'); DROP TABLE jobs; --"]
    prepared = [jobs.record.prepare(n, tag=tag) for n, tag in enumerate(awkward)]
    big = "x" * 5000  # 300 of these: more than one statement's worth of text
    prepared += [jobs.record.options(queue=f"q{n % 3}", priority=n % 4, delay=n % 2 * 60)
                 .prepare(1000 + n, tag=big) for n in range(300)]
    assert app.dispatch_many(prepared) == len(prepared)
    stored = {(row.queue, row.payload, row.priority, row.available_at > row.created_at)
              for row in rows(app, app.store.tables.jobs)}
    sent = {(p.new_job.queue, p.new_job.payload, p.new_job.priority, p.new_job.delay > 0)
            for p in prepared}
    assert stored == sent and len(sent) == len(prepared)


def test_retry_forget_and_flush_failed_jobs(app):
    store, admin = app.store, Admin(app.store)
    for queue in ("a", "a", "b"):
        store.push(NewJob(queue, "send", "{}", priority=2))
    for row in store.reserve(["a", "b"], 10, "t", 90):
        store.fail(row, "t", Failure("KeyError", "gone", "tb"), "h:1")
    failed = admin.list_failed()
    assert len(failed) == 3 and len(admin.list_failed(queue="a")) == 2
    assert admin.list_failed(exception="Key") and not admin.list_failed(exception="Value")
    assert admin.retry([str(failed[0].id), failed[1].uuid]) == 2
    requeued = rows(app, store.tables.jobs)
    assert [(r.attempts, r.priority, r.reserved_by) for r in requeued] == [(0, 2, None)] * 2
    assert admin.retry(queue="nope") == 0
    last = admin.list_failed()[0]
    admin.forget(str(last.id))
    assert admin.list_failed() == []
    for row in store.reserve(["a", "b"], 10, "t2", 90):
        store.fail(row, "t2", Failure("KeyError", "gone", "tb"), "h:1")
    assert admin.flush(older_than_hours=1) == 0
    # An age no server can subtract from its clock is refused alike on every backend
    # (NaN deleted nothing on SQLite and was "interval out of range" on PostgreSQL).
    refused = dbqueue.ConfigurationError
    for bad in (float("nan"), float("inf"), 1e308, -1):
        with pytest.raises(refused, match="older_than_hours must be a number of hours"):
            admin.flush(older_than_hours=bad)
        with pytest.raises(refused, match="older_than_days must be a number of days"):
            admin.prune_outcomes(bad)
        with pytest.raises(refused, match="hours must be a number of hours"):
            app.prune_batches(bad)
    assert admin.flush() == 2


def test_status_counts_ready_delayed_reserved_and_failed(app):
    store, admin = app.store, Admin(app.store)
    store.push_many([NewJob("q", "noop", "{}")] * 3 + [NewJob("q", "noop", "{}", delay=600)])
    (row,) = store.reserve(["q"], 1, "t", 90)
    store.push(NewJob("other", "noop", "{}"))
    (status_other, status_q) = admin.status()
    assert (status_q.queue, status_q.ready, status_q.delayed, status_q.reserved) == ("q", 2, 1, 1)
    assert status_q.oldest_ready_age is not None and status_q.oldest_ready_age >= 0
    assert (status_other.queue, status_other.ready) == ("other", 1)
    store.fail(row, "t", Failure("E", "m", "tb"), "h:1")
    assert admin.status()[1].failed == 1


# --- the store is the error boundary: dbqueue's errors, never SQLAlchemy's ---

CLOSED_PORTS = ["postgresql://postgres@127.0.0.1:1/test", "mysql://root@127.0.0.1:1/test"]


@pytest.mark.parametrize("url", CLOSED_PORTS, ids=["postgresql", "mysql"])
def test_every_kind_of_verb_against_an_unreachable_server_raises_database_unavailable(url):
    app = dbqueue.App(url)
    store = app.store
    verbs = {
        "push": lambda: store.push(NewJob("default", "noop", "{}")),  # the lone-dispatch path
        "push_many": lambda: store.push_many([NewJob("default", "noop", "{}")] * 2),
        "reserve": lambda: store.reserve(["default"], 1, "t", 90),
        "heartbeat": lambda: store.heartbeat([Lease(1, "t")], 90),
        "check_server": store.check_server,
        "check_schema": store.check_schema,
        "status": app.admin.status,
        "revision": app.admin.revision,
        "locks": app.admin.locks,
    }
    try:
        for name, verb in verbs.items():
            with pytest.raises(dbqueue.DatabaseUnavailable) as raised:
                verb()
            error = raised.value
            assert not error.lasting, name  # waiting for the server may help
            assert isinstance(error, dbqueue.DatabaseError)
            assert "127.0.0.1:1" in str(error) and "\n" not in str(error), (name, str(error))
    finally:
        app.dispose()


REFUSED = NewJob("default", "noop", None)  # payload is NOT NULL: every server refuses it


def test_a_refused_statement_raises_database_error_with_the_driver_error_as_cause(app):
    store = app.store
    attempts = {
        "push": lambda: store.push(REFUSED),
        "push_many": lambda: store.push_many([REFUSED]),
        "push in the caller's transaction": lambda: _in_transaction(app, REFUSED),
    }
    for name, attempt in attempts.items():
        with pytest.raises(dbqueue.DatabaseError) as raised:
            attempt()
        error = raised.value
        assert not isinstance(error, dbqueue.DatabaseUnavailable), name
        assert isinstance(error.__cause__, sa.exc.DBAPIError), name
        message = str(error)
        assert "refused the statement" in message and "\n" not in message, (name, message)
        assert "INSERT" not in message.upper(), message  # no statement, no parameters
    assert count(app, store.tables.jobs) == 0


def _in_transaction(app, job):
    with app.engine.begin() as connection:
        app.store.push(job, connection=connection)


def test_missing_tables_are_still_not_migrated(app, monkeypatch):
    other = dbqueue.App(app.settings.url, table_prefix="te_none_")
    try:
        with pytest.raises(dbqueue.NotMigrated, match="dbqueue migrate"):
            other.store.reserve(["default"], 1, "t", 90)

        # Whether another application's tables take the names is asked on a
        # connection of its own: if that fails, the tables are still missing.
        def unreachable(_connection):
            raise dbqueue.DatabaseUnavailable("too many clients already (injected)")

        monkeypatch.setattr(transactions_module, "table_names", unreachable)
        with pytest.raises(dbqueue.NotMigrated, match="dbqueue migrate"):
            other.store.reserve(["default"], 1, "t", 90)
    finally:
        other.dispose()


def _over_the_packet_limit(app):
    if app.engine.dialect.name not in ("mysql", "mariadb"):
        pytest.skip("only MySQL and MariaDB file this refusal with the lost connections")
    limit = app.store.read(lambda c: c.exec_driver_sql("SELECT @@max_allowed_packet").scalar())
    return '"' + "a" * (int(limit) + 1024) + '"'


def _dropped_connections(engine):
    """Why each pooled connection of ``engine`` invalidated from now on was."""
    dropped = []
    sa.event.listen(engine, "invalidate",
                    lambda _dbapi, _record, reason: dropped.append(str(reason)))
    return dropped


def _unmeasured(monkeypatch):
    """Send what dbqueue would refuse before sending (see Dispatch._check_sizes),
    as a statement it does not measure: the server's own refusal is met."""
    monkeypatch.setattr(dispatch_module, "_MEASURED_ABOVE", math.inf)


def test_a_payload_over_the_servers_statement_limit_is_refused_before_it_is_sent(app):
    limit = int(app.store.read(lambda c: c.exec_driver_sql("SELECT @@max_allowed_packet")
                                .scalar())) if app.engine.dialect.name in (
        "mysql", "mariadb") else 16 * 2**20
    # Three times over: the server would drop the connection while it is sent,
    # which the driver reports as lost (and retrying could never help).
    far_over = NewJob("default", "noop", '"' + "a" * (3 * limit) + '"')
    quoted = NewJob("default", "noop", '"' + '\\"' * (limit // 3) + '"')  # escaped: 4/3 over
    if app.engine.dialect.name not in ("mysql", "mariadb"):
        app.store.push(far_over)  # no such limit: stored
        assert count(app, app.store.tables.jobs) == 1
        return
    dropped = _dropped_connections(app.store.autocommit_engine)
    for job in (far_over, quoted):
        for connection in (None, "the caller's"):
            with app.engine.connect() as theirs, theirs.begin(), pytest.raises(
                    dbqueue.DatabaseError, match=r"^job 'noop' cannot be queued: its arguments "
                    r"take [\d,]+ bytes in the INSERT, more than the server reads in one "
                    r"statement \(max_allowed_packet is [\d,]+\); queue a reference") as refused:
                app.store.push(job, theirs if connection else None)
            assert not isinstance(refused.value, dbqueue.DatabaseUnavailable)
    with pytest.raises(dbqueue.DatabaseError, match="cannot be queued"):
        app.store.push_many([NewJob("default", "noop", "{}"), far_over])
    assert dropped == []  # nothing was sent: no connection lost
    with app.engine.connect() as theirs, theirs.begin():  # the caller's transaction lives on
        app.store.push(NewJob("default", "noop", "{}"), theirs)
    assert count(app, app.store.tables.jobs) == 1


def test_a_payload_is_measured_as_the_sessions_sql_mode_escapes_it(app):
    too_long = _over_the_packet_limit(app)  # (skips all but MySQL and MariaDB)
    quotes = NewJob("default", "noop", '"' * int(len(too_long) * 0.6))  # escaped: 1.2 times
    with app.engine.connect() as theirs, theirs.begin():
        with pytest.raises(dbqueue.DatabaseError, match="cannot be queued"):
            app.store.push(quotes, theirs)  # backslash escapes: \" each
        theirs.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        app.store.push(quotes, theirs)  # sent as it is: it fits
    assert count(app, app.store.tables.jobs) == 1

def test_a_statement_over_the_servers_packet_limit_is_refused_not_unavailable(app, monkeypatch):
    too_long = NewJob("default", "noop", _over_the_packet_limit(app))
    _unmeasured(monkeypatch)
    dropped = _dropped_connections(app.store.autocommit_engine)
    with pytest.raises(dbqueue.DatabaseError) as raised:
        app.store.push(too_long)
    assert not isinstance(raised.value, dbqueue.DatabaseUnavailable)  # retrying cannot help
    assert "max_allowed_packet" in str(raised.value)
    # The server closes the connection after its answer, at a moment of its
    # own: the next statement must not be sent on it.
    assert len(dropped) == 1 and "max_allowed_packet" in dropped[0]
    app.store.push(NewJob("default", "noop", "{}"))  # the next statement is served
    assert count(app, app.store.tables.jobs) == 1


def test_a_refused_statement_on_sqlalchemys_path_drops_its_connection_alone(app):
    too_long = _over_the_packet_limit(app)
    app.store.read(lambda c: c.exec_driver_sql("SELECT 1"))
    dropped = _dropped_connections(app.engine)
    with pytest.raises(sa.exc.OperationalError), app.engine.connect() as connection:
        connection.exec_driver_sql("SELECT %s", (too_long,))
    # Dropped for the refusal itself, not after a failed reset on its way back.
    assert len(dropped) == 1 and "max_allowed_packet" in dropped[0]
    with app.engine.connect() as connection:  # the pool's other connections stay
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    assert len(dropped) == 1


def test_a_refusal_that_ends_the_callers_transaction_is_said_at_its_next_dispatch(
        app, monkeypatch):
    too_long = NewJob("default", "noop", _over_the_packet_limit(app))
    _unmeasured(monkeypatch)
    with app.engine.connect() as connection:
        transaction = connection.begin()
        with pytest.raises(dbqueue.DatabaseError, match=r"max_allowed_packet.*; the server "
                           r"closed the connection, and the transaction of the connection= "
                           r"given with it$"):
            app.store.push(too_long, connection)
        # The server closed the connection: the transaction is gone, which is
        # said in dbqueue's words, not SQLAlchemy's.
        with pytest.raises(dbqueue.DatabaseError, match=r"the transaction of the "
                           r"connection= given has failed already \(.*\); roll it back"):
            app.store.push(NewJob("default", "noop", "{}"), connection)
        transaction.rollback()
    app.store.push(NewJob("default", "noop", "{}"))
    assert count(app, app.store.tables.jobs) == 1


def test_a_jobs_table_of_another_kind_in_sqlite_is_not_migrated_not_unavailable(tmp_path):
    url = f"sqlite:///{tmp_path / 'theirs.db'}"
    theirs = sa.create_engine(url)
    with theirs.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE jobs (id INTEGER PRIMARY KEY, title TEXT)")
    theirs.dispose()
    app = dbqueue.App(url)
    try:
        with pytest.raises(dbqueue.NotMigrated, match="dbqueue migrate"):
            app.store.push(NewJob("default", "noop", "{}"))
    finally:
        app.dispose()


def test_a_sqlite_file_locked_past_the_busy_timeout_is_not_waited_for_again(tmp_path):
    # Often the caller's own transaction on another connection: it will not
    # end while dbqueue waits, so dbqueue says so after one wait, not eight.
    path = tmp_path / "queue.db"
    app = dbqueue.App(sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 1.5}))
    app.migrate()
    begins = []
    sa.event.listen(app.engine, "begin", lambda connection: begins.append(1))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(dbqueue.DatabaseUnavailable) as raised:
            app.store.push(NewJob("default", "noop", "{}"))
    finally:
        holder.rollback()
        holder.close()
    assert len(begins) == 1
    assert "pass it as connection=" in str(raised.value)
    app.store.push(NewJob("default", "noop", "{}"))  # the lock is free: served at once
    assert count(app, app.store.tables.jobs) == 1
    app.dispose()


def test_timestamps_read_on_postgresql_are_utc_and_a_naive_one_counts_as_utc(app):
    # The lean reading of UtcDateTime on servers that return aware values: a
    # column or expression without a time zone still means UTC, whatever TZ is.
    from datetime import UTC, datetime

    from dbqueue.store.dialects.types import UtcDateTime

    if app.store.dialect.name != "postgresql":
        return
    with app.engine.connect() as c:
        naive, aware = c.execute(sa.select(
            sa.type_coerce(sa.text("timestamp '2020-01-01 00:00'"), UtcDateTime),
            sa.type_coerce(sa.text("timestamptz '2020-01-01 00:00+02'"), UtcDateTime))).one()
    assert naive == datetime(2020, 1, 1, tzinfo=UTC) and naive.tzinfo is UTC
    assert aware == datetime(2019, 12, 31, 22, tzinfo=UTC) and aware.tzinfo is UTC


def test_a_reserved_rows_times_are_aware_and_in_utc(jobs):
    jobs.noop.dispatch()
    [row] = jobs.app.store.reserve(["default"], 1, "token", 60.0)
    for moment in (row.created_at, row.reserved_at):
        assert moment.tzinfo is UTC
        assert abs(moment - datetime.now(UTC)) < timedelta(minutes=5)
    assert (row.created_at, row.reserved_at) == _stored_times(jobs.app, row.id)


def _stored_times(app, job_id):
    """A job's created_at and reserved_at as a plain SELECT reads them."""
    table = app.store.tables.jobs
    return app.store.read(lambda c: c.execute(
        sa.select(table.c.created_at, table.c.reserved_at).where(table.c.id == job_id)).one())


def test_a_reserved_rows_times_are_exact_however_the_session_prints_numbers(jobs, schema):
    # To the microsecond, whatever a reservation reads them as (PostgreSQL's
    # floats lose digits with a low extra_float_digits).
    if not schema.startswith("postgresql"):
        pytest.skip("only PostgreSQL sessions choose how many digits of a float they print")
    job_id = jobs.noop.dispatch()
    other = dbqueue.App(f"{schema}?options=-c%20extra_float_digits%3D-3",
                        table_prefix=jobs.app.settings.table_prefix)
    try:
        [row] = other.store.reserve(["default"], 1, "token", 60.0)
    finally:
        other.dispose()
    assert row.id == job_id
    assert (row.created_at, row.reserved_at) == _stored_times(jobs.app, job_id)


def test_a_time_read_in_another_time_zone_is_the_same_instant_in_utc():
    kolkata = datetime(2026, 12, 3, 21, 0, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert in_utc(kolkata) == datetime(2026, 12, 3, 15, 30, tzinfo=UTC)
    assert in_utc(kolkata).tzinfo is UTC
    assert in_utc(datetime(2026, 12, 3, 15, 30)) == datetime(2026, 12, 3, 15, 30, tzinfo=UTC)
    in_etc_utc = datetime(2026, 12, 3, 15, 30, tzinfo=ZoneInfo("Etc/UTC"))
    assert in_utc(in_etc_utc).tzinfo is UTC
    utc = datetime(2026, 12, 3, 15, 30, tzinfo=UTC)
    assert in_utc(utc) is utc


def test_a_refusal_of_the_values_a_statement_carries_is_told_apart(app):
    """What the completer fails a workflow step for, instead of leaving it to
    run again: only a refusal of the data itself, never one of the statement
    (a duplicate key, a read-only server)."""
    if app.store.dialect.embedded:
        pytest.skip("SQLite stores a string of any length in a VARCHAR column")
    jobs = app.store.tables.jobs
    row = {"queue": "default", "job": "noop", "payload": "{}", "priority": 0, "attempts": 0}
    with pytest.raises(dbqueue.DatabaseError) as too_long:
        app.store.transaction(lambda c: c.execute(jobs.insert().values(
            {**row, "queue": "q" * 300})))
    assert too_long.value.data, too_long.value
    first = app.store.transaction(
        lambda c: c.execute(jobs.insert().values(row)).inserted_primary_key[0])
    with pytest.raises(dbqueue.DatabaseError) as duplicate:
        app.store.transaction(lambda c: c.execute(jobs.insert().values({**row, "id": first})))
    assert not duplicate.value.data, duplicate.value


def test_jobs_given_back_are_free_of_their_locks_in_the_same_transaction(app):
    """A worker giving back jobs it reserved (stalled, or stopping) frees the
    locks it took for them with the rows: freed a moment later, a worker that
    takes a job at once finds its WithoutOverlapping key held, and drops it
    (dont_release) or puts it off."""
    store = app.store
    store.push(NewJob("default", "noop", "{}"))
    (row,) = store.reserve(["default"], 1, "w.1", 90)
    taken = app.lock("dbqueue:overlap:noop:1", ttl=60)
    other = app.lock("dbqueue:overlap:noop:2", ttl=60)  # another job's: it stays
    assert taken.acquire() and other.acquire()
    assert store.release_all([Lease(row.id, "w.1")], [(taken.key, taken.owner)]) == 1
    assert not taken.locked() and other.owned()
    (again,) = store.reserve(["default"], 1, "w.2", 90)  # another worker, at once
    assert again.id == row.id


def test_a_statement_the_server_refuses_is_a_refusal_not_an_outage(app):
    """PyMySQL files every server error it has no class for (an unknown
    variable, a table not granted) as OperationalError, the class of the
    outages: they were reported as "unavailable, try again"."""
    statement = {"mysql": "SELECT @@no_such_variable_here",
                 # 54023: too many arguments, filed by psycopg as OperationalError
                 "postgresql": "SELECT concat(" + ", ".join(["1"] * 101) + ")",
                 "sqlite": "SELECT no_such_function()"}[app.engine.dialect.name]
    with pytest.raises(dbqueue.DatabaseError) as raised:
        app.store.read(lambda c: c.exec_driver_sql(statement).all())
    assert not isinstance(raised.value, dbqueue.DatabaseUnavailable)
    assert "refused the statement" in str(raised.value)
    assert app.store.now() is not None  # and the connection is sound
