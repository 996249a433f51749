"""Unique jobs: while one job holds a key, a second dispatch is not queued."""

import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import dbqueue
from tests import jobapp
from tests.conftest import PREFIX, count, rows, stopped_while_running, wait_until

FAST = ("--sleep", "0.1")


def queued(jobs):
    return rows(jobs.app, jobs.app.store.tables.jobs)


def test_a_second_dispatch_is_not_queued_until_the_first_completes(jobs, workers):
    first = jobs.unique_invoice.dispatch(7)
    assert isinstance(first, int)
    assert jobs.unique_invoice.dispatch(7) is None
    assert isinstance(jobs.unique_invoice.dispatch(8), int)  # another key
    assert [row.unique_key for row in queued(jobs)] == ["unique_invoice:7", "unique_invoice:8"]
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    assert isinstance(jobs.unique_invoice.dispatch(7), int)  # completed: the key is free


def test_the_key_is_freed_by_final_failure_and_by_rollback(jobs, workers):
    assert jobs.unique_failing.dispatch("acme") is not None
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    assert count(jobs.app, jobs.app.store.tables.failed_jobs) == 1
    assert jobs.unique_failing.dispatch("acme") is not None  # failed for good: free
    with Session(jobs.app.engine) as session:
        assert jobs.unique_invoice.options(connection=session).dispatch(9) is not None
        session.rollback()
    assert jobs.unique_invoice.dispatch(9) is not None


def test_a_taken_key_does_not_break_the_callers_transaction(jobs):
    jobs.unique_invoice.dispatch(10)
    with jobs.app.engine.connect() as connection, connection.begin():
        assert jobs.unique_invoice.options(connection=connection).dispatch(10) is None
        connection.execute(jobs.effects.insert().values(tag="after", event="x", pid=1,
                                                        at=jobs.app.store.now()))
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "after") == 1


def test_a_unique_dispatch_in_the_callers_transaction_works_before_the_app_connects(jobs):
    """A web process whose only dispatches are in its requests' transactions never
    connects the App's engine, which then could not tell MariaDB from MySQL: on
    MariaDB 10.x every such dispatch failed on a variable only MySQL has."""
    fresh = jobapp.build(jobs.app.settings.url, PREFIX)
    try:
        assert fresh.app.engine.dialect.server_version_info is None
        # The application's own engine (here another App's), connected by its requests.
        with jobs.app.engine.begin() as connection:
            assert fresh.unique_invoice.options(connection=connection).dispatch(40) is not None
            assert fresh.unique_invoice.options(connection=connection).dispatch(40) is None
    finally:
        fresh.app.dispose()
    assert [row.unique_key for row in rows(jobs.app, jobs.app.store.tables.jobs)] == [
        fresh.unique_invoice.unique_id((40,), {})]


def test_unique_for_frees_the_key_after_it_passes(jobs):
    table, dialect = jobs.app.store.tables.jobs, jobs.app.store.dialect
    held = jobs.unique_invoice.dispatch(11)
    with jobs.app.engine.begin() as c:
        c.execute(sa.update(table).values(unique_expires_at=dialect.now_plus(-1)))
    fresh = jobs.unique_invoice.dispatch(11)
    assert fresh is not None and fresh != held
    assert [(r.id, r.unique_key) for r in queued(jobs)] == [(held, None),
                                                             (fresh, "unique_invoice:11")]


def test_unique_until_processing_frees_the_key_when_the_job_starts(jobs, workers):
    for name, frees in (("unique_slow", False), ("unique_slow_processing", True)):
        job = jobs.jobs[name]
        assert job.dispatch(name, 1.5) is not None
        worker = workers.start(*FAST)
        wait_until(lambda n=name: count(jobs.app, jobs.effects, jobs.effects.c.tag == n),
                   what=f"{name} to start")
        # The worker frees a processing job's key once it has begun.
        if frees:
            wait_until(lambda: all(r.unique_key is None for r in queued(jobs)),
                       what="the key to be freed")
        assert (job.dispatch(name, 0) is not None) is frees
        worker.terminate()
        worker.communicate(timeout=60)
        with jobs.app.engine.begin() as c:
            c.execute(jobs.app.store.tables.jobs.delete())


def test_a_processing_job_handed_back_unstarted_keeps_its_key(jobs, workers):
    """Its key is freed once it begins, not once it is handed to a child:
    queued behind a running job when the worker stops, it comes back
    unstarted, still unique."""
    processing = jobs.unique_slow_processing
    # One call each, in this order (a call may insert unique jobs apart).
    jobs.app.dispatch_many([processing.prepare(f"warm-up-{n}", 0) for n in range(20)])
    jobs.app.dispatch_many([jobs.hold.prepare(f"short-{n}", 0) for n in range(20)])
    jobs.hold.dispatch("ends-in-grace", 1.5)  # of a kind seen short: jobs queue behind it
    jobs.app.dispatch_many([processing.prepare(f"behind-{n}", 0) for n in range(20)])
    stopped_while_running(jobs, workers, "ends-in-grace", "--grace", "60", *FAST)
    behind = [row for row in queued(jobs) if row.job == "unique_slow_processing"]
    assert len(behind) == 20
    assert all(row.unique_key is not None and row.attempts == 0 for row in behind)
    assert processing.dispatch("behind-0", 0) is None  # still unique


def test_eight_threads_dispatching_the_same_job_leave_exactly_one(jobs):
    barrier = threading.Barrier(8)
    results = []

    def dispatch():
        barrier.wait()
        results.append(jobs.unique_invoice.dispatch(12))

    threads = [threading.Thread(target=dispatch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is not None for r in results) == 1
    assert len(queued(jobs)) == 1


def test_bulk_dispatch_skips_taken_keys_and_queues_the_rest(jobs):
    jobs.unique_invoice.dispatch(13)
    prepared = [jobs.unique_invoice.prepare(n) for n in (13, 14, 14)] + [jobs.noop.prepare()]
    assert jobs.app.dispatch_many(prepared) == 2
    assert sorted(str(r.unique_key) for r in queued(jobs)) == [
        "None", "unique_invoice:13", "unique_invoice:14"]


def test_on_postgresql_a_key_holds_with_the_key_index_full_or_partial(jobs):
    # ON CONFLICT names the condition of a partial index on unique_key, which
    # the full index satisfies too: the code works with either, so the index
    # can be made partial (no entries for jobs without a key) by a later
    # revision without breaking the code that runs during the upgrade.
    app = jobs.app
    if app.store.dialect.name != "postgresql":
        return
    table = app.store.tables.jobs.name
    index = f"{table}_unique_key_idx"

    def rebuild(where: str) -> None:
        with app.engine.begin() as c:
            c.execute(sa.text(f"DROP INDEX {index}"))
            c.execute(sa.text(f"CREATE UNIQUE INDEX {index} ON {table} (unique_key){where}"))

    jobs.noop.dispatch()
    assert jobs.unique_invoice.dispatch(11) is not None
    assert jobs.unique_invoice.dispatch(11) is None
    rebuild(" WHERE unique_key IS NOT NULL")
    try:
        assert jobs.unique_invoice.dispatch(11) is None
        assert jobs.unique_invoice.dispatch(12) is not None
        assert jobs.unique_invoice.dispatch(12) is None
    finally:
        rebuild("")


def _without_waiting(connection, backend: str) -> None:
    """Make ``connection`` give up on a row lock after a second (the test's
    way to see a wait: no real write here waits for one)."""
    connection.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1" if backend == "mysql"
                               else "SET lock_timeout = '1s'")
    connection.commit()  # (the setting is the session's: it stays)


def test_a_dispatch_in_an_open_transaction_holds_no_lock_on_the_holder(jobs, schema):
    """A unique dispatch in the caller's transaction, which stays open, must
    not lock the row of the job holding its key: that job's worker must still
    renew its lease and record its end. On MySQL a taken key's duplicate-key
    error left a shared lock on the holder's key, and on both servers freeing
    an expired key locked the holder's row, until the caller's commit."""
    backend = "mysql" if schema.startswith("mysql") else schema.partition(":")[0]
    if backend == "sqlite":
        pytest.skip("one writer at a time: the caller's transaction holds the whole database")
    table, dialect = jobs.app.store.tables.jobs, jobs.app.store.dialect
    live = jobs.unique_invoice.dispatch(21)
    expired = jobs.unique_invoice.dispatch(22)
    with jobs.app.engine.begin() as c:
        c.execute(sa.update(table).where(table.c.id == expired)
                  .values(unique_expires_at=dialect.now_plus(-1)))
    with Session(jobs.app.engine) as session:
        assert jobs.unique_invoice.options(connection=session).dispatch(21) is None
        assert jobs.unique_invoice.options(connection=session).dispatch(22) is not None
        with jobs.app.engine.connect() as holder:  # the holders' worker, meanwhile
            _without_waiting(holder, backend)
            with holder.begin():
                holder.execute(sa.update(table).where(table.c.id.in_([live, expired]))
                               .values(available_at=dialect.now_plus(60)))
                holder.execute(sa.delete(table).where(table.c.id.in_([live, expired])))
        session.commit()
    assert [r.unique_key for r in queued(jobs)] == ["unique_invoice:22"]


def test_unique_dispatches_in_open_transactions_do_not_deadlock(jobs, schema):
    """Two callers' transactions at the server's default isolation (MySQL's
    REPEATABLE READ), each dispatching unique jobs with keys no job holds:
    freeing expired keys in them locked the gap where a key would go, and
    each INSERT then waited for the other's gap (a deadlock, which on
    InnoDB rolls back the caller's whole transaction)."""
    if schema.startswith("sqlite"):
        pytest.skip("one writer at a time: no two open write transactions")
    engine = sa.create_engine(jobs.app.engine.url, isolation_level="REPEATABLE READ")
    first, second = Session(engine), Session(engine)
    try:
        assert jobs.unique_invoice.options(connection=first).dispatch(31) is not None
        assert jobs.unique_invoice.options(connection=second).dispatch(32) is not None
        done = threading.Event()

        def then_first() -> None:
            jobs.unique_invoice.options(connection=first).dispatch(33)
            done.set()

        thread = threading.Thread(target=then_first, daemon=True)
        thread.start()
        assert jobs.unique_invoice.options(connection=second).dispatch(34) is not None
        thread.join(30)
        assert done.is_set()
        second.commit()
        first.commit()
    finally:
        first.close()
        second.close()
        engine.dispose()
    assert sorted(r.unique_key for r in queued(jobs)) == [
        f"unique_invoice:{n}" for n in (31, 32, 33, 34)]


def test_a_dispatch_in_an_older_snapshot_queues_once_the_holder_is_gone(jobs, schema):
    """At REPEATABLE READ (MySQL's default) a plain read sees the snapshot the
    caller's transaction took at its first read: a holder that completed since
    is still there. The key is free all the same, and the job is queued."""
    if schema.startswith("sqlite"):
        pytest.skip("one writer at a time: no snapshot older than the last write")
    table = jobs.app.store.tables.jobs
    holder = jobs.unique_invoice.dispatch(41)
    engine = sa.create_engine(jobs.app.engine.url, isolation_level="REPEATABLE READ")
    try:
        with Session(engine) as session:
            session.execute(sa.select(table.c.id)).all()  # the snapshot: the holder in it
            with jobs.app.engine.begin() as c:  # the holder completes meanwhile
                c.execute(sa.delete(table).where(table.c.id == holder))
            assert jobs.unique_invoice.options(connection=session).dispatch(41) is not None
            session.commit()
    finally:
        engine.dispose()
    assert [r.unique_key for r in queued(jobs)] == ["unique_invoice:41"]


def test_an_expired_key_is_freed_though_a_worker_holds_its_row_a_moment(jobs, schema):
    """A worker renewing or completing the holder locks its row for
    milliseconds: the key whose unique_for has passed is freed once it is
    done, not taken for held."""
    if schema.startswith("sqlite"):
        pytest.skip("one writer at a time")
    table, dialect = jobs.app.store.tables.jobs, jobs.app.store.dialect
    holder = jobs.unique_invoice.dispatch(42)
    with jobs.app.engine.begin() as c:
        c.execute(sa.update(table).where(table.c.id == holder)
                  .values(unique_expires_at=dialect.now_plus(-1)))
    locked, release = threading.Event(), threading.Event()

    def worker() -> None:
        with jobs.app.engine.begin() as c:
            c.execute(sa.select(table.c.id).where(table.c.id == holder).with_for_update())
            locked.set()
            release.wait(30)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    assert locked.wait(30)
    threading.Timer(0.05, release.set).start()  # the worker's statement ends
    with Session(jobs.app.engine) as session:
        fresh = jobs.unique_invoice.options(connection=session).dispatch(42)
        session.commit()
    thread.join(30)
    assert fresh is not None
    assert [(r.id, r.unique_key) for r in queued(jobs)] == [(holder, None),
                                                             (fresh, "unique_invoice:42")]


def _expired_holder(jobs, invoice: int) -> int:
    table, dialect = jobs.app.store.tables.jobs, jobs.app.store.dialect
    holder = jobs.unique_invoice.dispatch(invoice)
    with jobs.app.engine.begin() as c:
        c.execute(sa.update(table).where(table.c.id == holder)
                  .values(unique_expires_at=dialect.now_plus(-1)))
    return holder


def test_with_a_pool_of_one_connection_an_expired_key_is_freed_in_the_callers_transaction(
        jobs, schema):
    """A StaticPool hands everyone its one connection: a transaction of
    dbqueue's own to free the key would be the caller's, and its commit
    commit the caller's work."""
    if schema.startswith("sqlite"):
        pytest.skip("SQLite frees in the caller's transaction whatever the pool")
    _expired_holder(jobs, 51)
    engine = sa.create_engine(jobs.app.engine.url, poolclass=sa.pool.StaticPool)
    app = dbqueue.App(engine, table_prefix=jobs.app.settings.table_prefix)
    job = app.job(name="unique_invoice", unique_key=lambda invoice_id: str(invoice_id),
                  unique_for=3600)(lambda invoice_id: None)
    try:
        with Session(engine) as session:
            session.execute(jobs.effects.insert().values(tag="caller", event="x", pid=1,
                                                         at=jobs.app.store.now()))
            assert job.options(connection=session).dispatch(51) is not None
            session.rollback()
    finally:
        app.dispose()
        engine.dispose()
    assert count(jobs.app, jobs.effects, jobs.effects.c.tag == "caller") == 0
    assert [r.unique_key for r in queued(jobs)] == ["unique_invoice:51"]  # as it was


def test_an_expired_key_that_cannot_be_freed_for_want_of_a_connection_is_an_error(
        jobs, schema):
    """Not a silent None ("taken"), which would drop the job: the App's pool
    had no connection to spare for the transaction that frees the key."""
    if schema.startswith("sqlite"):
        pytest.skip("SQLite frees in the caller's transaction")
    _expired_holder(jobs, 52)
    engine = sa.create_engine(jobs.app.engine.url, pool_size=1, max_overflow=0,
                              pool_timeout=0.5)
    app = dbqueue.App(engine, table_prefix=jobs.app.settings.table_prefix)
    job = app.job(name="unique_invoice", unique_key=lambda invoice_id: str(invoice_id),
                  unique_for=3600)(lambda invoice_id: None)
    try:
        with Session(engine) as session, pytest.raises(dbqueue.DatabaseUnavailable):
            job.options(connection=session).dispatch(52)
    finally:
        app.dispose()
        engine.dispose()


def test_the_same_server_and_database_whatever_the_user_driver_or_parameters():
    from dbqueue.store.transactions import _server_and_database as where

    url = sa.make_url
    same = where(url("mysql+pymysql://app@127.0.0.1:3306/shop"))
    assert where(url("mysql+pymysql://root:pw@localhost/shop?charset=utf8mb4")) == same
    assert where(url("mariadb+pymysql://app@127.0.0.1/shop")) == same
    assert where(url("mysql+pymysql://app@127.0.0.1:3307/shop")) != same
    assert where(url("mysql+pymysql://app@127.0.0.1/other")) != same
    assert where(url("mysql+pymysql://app@db.internal/shop")) != same
