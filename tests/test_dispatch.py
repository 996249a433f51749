"""Transactional dispatch: commit -> the job exists and runs; rollback -> it never did."""

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import dbqueue
from tests.conftest import count, rows


def ran(jobs, n):
    return count(jobs.app, jobs.effects, jobs.effects.c.n == n)


def test_dispatch_with_a_connection_commits_with_it(jobs, workers):
    with jobs.app.engine.connect() as connection:
        with connection.begin():
            jobs.record.options(connection=connection).dispatch(1)
        transaction = connection.begin()
        jobs.record.options(connection=connection).dispatch(2)
        assert count(jobs.app, jobs.app.store.tables.jobs) == 1  # not visible before commit
        transaction.rollback()
    assert count(jobs.app, jobs.app.store.tables.jobs) == 1
    assert workers.run("--stop-when-empty", "--sleep", "0.1").returncode == 0
    assert (ran(jobs, 1), ran(jobs, 2)) == (1, 0)


def test_dispatch_with_a_session_never_commits_or_flushes_it(jobs, workers):
    with Session(jobs.app.engine) as session:
        jobs.record.options(connection=session).dispatch(3)
        assert session.in_transaction()
        session.commit()
    with Session(jobs.app.engine) as session:
        jobs.record.options(connection=session).dispatch(4)
        session.rollback()
    assert workers.run("--stop-when-empty", "--sleep", "0.1").returncode == 0
    assert (ran(jobs, 3), ran(jobs, 4)) == (1, 0)
    assert count(jobs.app, jobs.app.store.tables.jobs) == 0


def test_after_commit_pushes_on_commit_and_drops_on_rollback(jobs, workers):
    jobs_table = jobs.app.store.tables.jobs
    with Session(jobs.app.engine) as session:
        assert jobs.record.options(after_commit=session).dispatch(5) is None
        session.execute(sa.text("SELECT 1"))
        assert count(jobs.app, jobs_table) == 0  # held until the commit
        savepoint = session.begin_nested()
        jobs.record.options(after_commit=session).dispatch(6)
        savepoint.rollback()  # only what was dispatched inside the savepoint goes
        session.commit()
    assert count(jobs.app, jobs_table) == 1
    with Session(jobs.app.engine) as session:
        jobs.record.options(after_commit=session).dispatch(7)
        session.execute(sa.text("SELECT 1"))
        session.rollback()
    assert count(jobs.app, jobs_table) == 1
    assert workers.run("--stop-when-empty", "--sleep", "0.1").returncode == 0
    assert (ran(jobs, 5), ran(jobs, 6), ran(jobs, 7)) == (1, 0, 0)


def test_after_commit_waits_for_the_outermost_commit_whatever_savepoints_do(jobs):
    """SQLAlchemy emits after_commit for a released SAVEPOINT too: the jobs were
    queued there, and kept when the transaction then rolled back."""
    app, jobs_table = jobs.app, jobs.app.store.tables.jobs
    with Session(app.engine) as session:
        jobs.record.options(after_commit=session).dispatch(1)
        with session.begin_nested():  # any savepoint, released
            jobs.record.options(after_commit=session).dispatch(2)
        app.batch([jobs.record.prepare(3)]).dispatch(after_commit=session)
        with session.begin_nested():
            pass
        assert count(app, jobs_table) == 0
        session.rollback()
    assert count(app, jobs_table) == 0
    with Session(app.engine) as session:
        with session.begin_nested():
            jobs.record.options(after_commit=session).dispatch(4)
        assert count(app, jobs_table) == 0
        session.commit()
    (queued,) = rows(app, jobs_table)
    assert queued.payload == jobs.record.prepare(4).new_job.payload


def test_after_commit_before_any_statement_is_dropped_by_a_rollback(jobs):
    """A rollback with no transaction begun emits no event: the job waited, and
    the next commit of unrelated work queued it."""
    app, jobs_table = jobs.app, jobs.app.store.tables.jobs
    with Session(app.engine) as session:
        jobs.record.options(after_commit=session).dispatch(1)  # the first use of the session
        session.rollback()
        session.execute(sa.text("SELECT 1"))
        session.commit()
    assert count(app, jobs_table) == 0
    with Session(app.engine, autobegin=False) as session, pytest.raises(
            dbqueue.ConfigurationError, match=r"call session\.begin\(\) first"):
        jobs.record.options(after_commit=session).dispatch(2)


def test_after_commit_takes_a_scoped_session_as_flask_sqlalchemy_hands_out(jobs):
    jobs_table = jobs.app.store.tables.jobs
    scoped = scoped_session(sessionmaker(jobs.app.engine))  # what db.session is
    try:
        assert jobs.record.options(after_commit=scoped).dispatch(8) is None
        scoped.execute(sa.text("SELECT 1"))
        assert count(jobs.app, jobs_table) == 0  # held until the commit
        scoped.commit()
        assert count(jobs.app, jobs_table) == 1
        jobs.app.batch([jobs.record.prepare(9)]).dispatch(after_commit=scoped)
        scoped.execute(sa.text("SELECT 1"))
        scoped.rollback()
        assert count(jobs.app, jobs_table) == 1
    finally:
        scoped.remove()


def test_bulk_dispatch_of_several_kinds_in_the_callers_transaction(jobs):
    app, jobs_table = jobs.app, jobs.app.store.tables.jobs
    prepared = [jobs.record.prepare(i) for i in range(10)] + [
        jobs.noop.options(queue="low", delay=60).prepare()]
    with app.engine.connect() as connection:
        with connection.begin():
            assert app.dispatch_many(prepared, connection=connection) == 11
        with connection.begin() as transaction:
            app.dispatch_many([jobs.noop.prepare()], connection=connection)
            transaction.rollback()
    stored = rows(app, jobs_table)
    assert len(stored) == 11
    assert [r.queue for r in stored].count("low") == 1


def test_dispatch_returns_the_id_and_stores_options(jobs):
    job_id = jobs.record.options(queue="high", delay=30, priority=-5).dispatch(42, tag="x")
    (row,) = rows(jobs.app, jobs.app.store.tables.jobs)
    assert row.id == job_id and (row.queue, row.priority, row.job) == ("high", -5, "record")
    assert row.payload == '{"args":[42],"kwargs":{"tag":"x"}}'
    assert 30 <= (row.available_at - row.created_at).total_seconds() < 31


@pytest.mark.parametrize("option", ["tries", "timeout"])
def test_per_dispatch_overrides_travel_in_the_payload(jobs, option):
    jobs.noop.options(**{option: 7}).dispatch()
    (row,) = rows(jobs.app, jobs.app.store.tables.jobs)
    assert f'"options":{{"{option}":7' in row.payload


def test_dispatch_to_missing_tables_names_the_fix_on_every_backend(jobs, schema):
    elsewhere = dbqueue.App(schema, table_prefix="nowhere_")
    job = elsewhere.job(name="lonely")(lambda: None)
    with pytest.raises(dbqueue.NotMigrated, match="dbqueue migrate"):
        job.dispatch()
    with pytest.raises(dbqueue.NotMigrated):
        elsewhere.dispatch_many([job.prepare()])
    elsewhere.dispose()


def test_a_new_job_never_takes_the_id_of_one_that_is_gone(jobs):
    """Failed jobs, outcomes and logs name jobs by id: SQLite too must not give
    the newest deleted row's id to the next job (AUTOINCREMENT)."""
    first = jobs.record.dispatch(1)
    with jobs.app.engine.begin() as connection:
        connection.execute(jobs.app.store.tables.jobs.delete())
    assert jobs.record.dispatch(2) > first


def test_a_connection_that_commits_each_statement_is_refused_and_queues_nothing(jobs, schema):
    """In autocommit mode the caller's rollback would leave the job queued: no
    transaction holds it. Set on the connection, or on the engine (where only
    the driver's own state tells, which SQLite's cannot)."""
    jobs_table = jobs.app.store.tables.jobs
    with jobs.app.engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(dbqueue.ConfigurationError, match="autocommit mode"):
            jobs.record.options(connection=autocommit).dispatch(1)
    if not schema.startswith("sqlite"):
        engine = sa.create_engine(jobs.app.engine.url, isolation_level="AUTOCOMMIT")
        try:
            with Session(engine) as session, pytest.raises(dbqueue.ConfigurationError,
                                                           match="autocommit mode"):
                jobs.record.options(connection=session).dispatch(2)
        finally:
            engine.dispose()
    assert count(jobs.app, jobs_table) == 0
    with Session(jobs.app.engine) as session:  # a transaction, as ever
        jobs.record.options(connection=session).dispatch(3)
        session.rollback()
    assert count(jobs.app, jobs_table) == 0


def test_a_connection_to_another_kind_of_server_is_named_as_the_mistake(jobs, schema, tmp_path):
    """A job queued in a transaction goes into that transaction's database: one
    on another kind of server than the App's failed on the first SQL function
    the two spell differently ("unavailable", "older than this dbqueue")."""
    if schema.startswith("sqlite"):
        pytest.skip("needs a server beside the App's SQLite file")
    embedded = dbqueue.App(f"sqlite:///{tmp_path}/queue.db", table_prefix="kinds_")
    embedded.migrate()
    job = embedded.job(name="lonely")(lambda: None)
    try:
        with Session(jobs.app.engine) as session:
            with pytest.raises(dbqueue.ConfigurationError,
                               match=r"is to (PostgreSQL|MySQL/MariaDB) .* but this App's "
                                     r"queue is in SQLite .*after_commit=session"):
                job.options(connection=session).dispatch()
            assert job.options(after_commit=session).dispatch() is None
            session.commit()
        assert count(embedded, embedded.store.tables.jobs) == 1
    finally:
        embedded.dispose()
