"""Wrong input to the Python API: dbqueue's ConfigurationError naming the fix,
the same on every backend, never a raw AttributeError or a database's refusal."""

import importlib
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import dbqueue
from tests.conftest import count, rows

LONGEST_QUEUE = "q" * 191
LOWEST, HIGHEST = -(2**31), 2**31 - 1


@pytest.fixture
def sqlite_app(tmp_path):
    app = dbqueue.App(f"sqlite:///{tmp_path / 'q.db'}")
    app.migrate()
    yield app
    app.dispose()


@pytest.mark.parametrize("given", ["engine", "sqlite3", "url"])
def test_connection_must_be_a_sqlalchemy_connection_or_session(sqlite_app, given):
    app = sqlite_app
    job = app.job(name="add")(lambda a, b: None)
    with closing(sqlite3.connect(":memory:")) as raw:
        _refused_everywhere(app, job, {"engine": app.engine, "sqlite3": raw,
                                       "url": "sqlite:///q.db"}[given], given)
    assert count(app, app.store.tables.jobs) == 0

    with app.engine.begin() as connection:
        job.options(connection=connection).dispatch(1, 2)
    with Session(app.engine) as session, session.begin():
        app.dispatch_many([job.prepare(3, 4)], connection=session)
    scoped = scoped_session(sessionmaker(app.engine))  # Flask-SQLAlchemy's db.session
    app.chain([job.prepare(5, 6)]).dispatch(connection=scoped)
    scoped.commit()
    scoped.remove()
    assert count(app, app.store.tables.jobs) == 3


def _refused_everywhere(app, job, wrong, given):
    kind = {"engine": "sqlalchemy.engine.base.Engine", "sqlite3": "sqlite3.Connection",
            "url": "str"}[given]
    message = (f"connection= takes the SQLAlchemy Connection or Session whose transaction "
               f"to queue in, not {kind}; leave it out")
    dispatches = [
        lambda: job.options(connection=wrong).dispatch(1, 2),
        lambda: app.dispatch_many([job.prepare(1, 2)], connection=wrong),
        # Nothing to queue, but the same mistake: it would fail with the first job.
        lambda: app.dispatch_many([], connection=wrong),
        lambda: app.batch([job.prepare(1, 2)]).dispatch(connection=wrong),
        lambda: app.chain([job.prepare(1, 2)]).dispatch(connection=wrong),
    ]
    for dispatch in dispatches:
        with pytest.raises(dbqueue.ConfigurationError, match=re.escape(message)):
            dispatch()


def test_dispatch_many_takes_prepared_jobs_as_chain_and_batch_do(sqlite_app):
    app = sqlite_app
    job = app.job(name="add")(lambda a, b: None)
    for mistake in (lambda: app.chain([job]), lambda: app.batch([job]),
                    lambda: app.dispatch_many([job])):
        with pytest.raises(dbqueue.ConfigurationError,
                           match=r"takes prepared jobs, such as my_job\.prepare\(\.\.\.\) or "
                                 r"my_job\.options\(queue=\.\.\.\)\.prepare\(\.\.\.\), not Job$"):
            mistake()
    with pytest.raises(dbqueue.ConfigurationError,
                       match=r"^dispatch_many takes a list of prepared jobs.* not PreparedJob$"):
        app.dispatch_many(job.prepare(1, 2))
    assert count(app, app.store.tables.jobs) == 0


def test_values_past_their_columns_are_refused_alike_on_every_backend(jobs):
    app, table = jobs.app, jobs.app.store.tables.jobs
    longest_name = app.job(name="n" * 255)(lambda: None)
    longest_name.options(queue=LONGEST_QUEUE, priority=HIGHEST).dispatch()
    jobs.noop.options(priority=LOWEST).dispatch()
    assert [(r.job, r.queue, r.priority) for r in rows(app, table)] == [
        ("n" * 255, LONGEST_QUEUE, HIGHEST), (jobs.noop.name, "default", LOWEST)]

    with pytest.raises(dbqueue.ConfigurationError,
                       match=r"^queue must be a name of at most 191 characters, not one of 300$"):
        jobs.noop.options(queue="x" * 300).dispatch()
    for priority in (HIGHEST + 1, LOWEST - 1, 2**40, 10**20):
        with pytest.raises(dbqueue.ConfigurationError,
                           match=r"^priority must be from -2,147,483,648 to 2,147,483,647 "
                                 rf"\(lower runs first\), not {priority}$"):
            jobs.noop.options(priority=priority).dispatch()
    assert count(app, table) == 2


def test_job_definitions_past_the_columns_are_refused(sqlite_app):
    app = sqlite_app
    with pytest.raises(dbqueue.ConfigurationError, match="queue must be a name of at most 191"):
        app.job(name="a", queue="x" * 192)(lambda: None)
    with pytest.raises(dbqueue.ConfigurationError, match="priority must be from"):
        app.job(name="b", priority=2**31)(lambda: None)
    with pytest.raises(dbqueue.ConfigurationError,
                       match=r"^a job's name is stored in 255 characters; 'n{40}'\.\.\. has 256: "
                             r"give it a shorter one with @app\.job\(name=\.\.\.\)$"):
        app.job(name="n" * 256)(lambda: None)
    with pytest.raises(dbqueue.ConfigurationError, match="name must be a non-empty string"):
        app.job(name=b"bytes")(lambda: None)
    assert app.job(name="n" * 255, queue=LONGEST_QUEUE)(lambda: None).name == "n" * 255



@pytest.mark.parametrize("backoff", [0, [5, 0], dbqueue.Exponential(base=0)])
def test_a_job_retried_for_ever_at_once_is_refused(sqlite_app, backoff):
    # A failing job would run again and again, as fast as the worker can.
    with pytest.raises(dbqueue.ConfigurationError,
                       match=r"^job 'hot' would be retried for ever, each time at once .*; "
                             r"set retry_until= \(seconds\), a backoff, or a number of tries$"):
        sqlite_app.job(name="hot", tries=None, backoff=backoff)(lambda: None)
    # Bounded in time, or paced: what the user chose.
    sqlite_app.job(name="until", tries=None, backoff=backoff, retry_until=60)(lambda: None)
    sqlite_app.job(name="paced", tries=None, backoff=[0, 5])(lambda: None)
    assert set(sqlite_app.jobs) == {"until", "paced"}


def test_a_transaction_on_another_database_is_named_when_it_lacks_the_tables(sqlite_app,
                                                                              tmp_path):
    # The App's database has the tables; the caller's Session is on another file.
    job = sqlite_app.job(name="add")(lambda a, b: None)
    other = sa.create_engine(f"sqlite:///{tmp_path / 'appdata.db'}")
    with Session(other) as session, session.begin(), pytest.raises(
            dbqueue.NotMigrated, match=re.escape(str(tmp_path / "appdata.db"))) as refused:
        job.options(connection=session).dispatch(1, 2)
    other.dispose()
    # Creating the tables there would queue jobs where no worker of the App looks:
    # the way out comes first.
    message = str(refused.value)
    assert f"while the App's ({sqlite_app.database.where()}) has them" in message, message
    assert message.index("after_commit=session") < message.index("dbqueue migrate"), message


def test_a_dispatch_to_a_sqlite_file_that_does_not_exist_names_it_and_creates_nothing(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url, path in ((f"sqlite:///{tmp_path / 'typo.db'}", tmp_path / "typo.db"),
                      ("sqlite:///relative.db", tmp_path / "relative.db")):
        app = dbqueue.App(url, table_prefix="dbq_")
        job = app.job(name="add")(lambda a, b: None)
        with pytest.raises(dbqueue.NotMigrated) as refused:
            job.dispatch(1, 2)
        assert str(refused.value).startswith(f"there is no SQLite database at {path}"), refused
        assert str(refused.value).endswith(" --table-prefix dbq_"), refused
        assert ("relative path" in str(refused.value)) == (url == "sqlite:///relative.db")
        assert not path.exists()
        app.downgrade("base")  # nothing to drop: no file made either
        assert not path.exists()
        app.migrate()  # the one way to create it
        job.dispatch(1, 2)
        assert app.admin.totals() == (1, 0)
        app.dispose()

def test_a_transaction_on_the_apps_own_database_spelt_otherwise_is_told_to_migrate(
        tmp_path, monkeypatch):
    # The App's URL is relative, the caller's engine names the same file by its
    # absolute path: not another database, only tables not created yet.
    monkeypatch.chdir(tmp_path)
    sqlite3.connect(tmp_path / "shared.db").close()
    app = dbqueue.App("sqlite:///shared.db")
    job = app.job(name="add")(lambda a, b: None)
    theirs = sa.create_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    with Session(theirs) as session, session.begin(), pytest.raises(
            dbqueue.NotMigrated, match="create them with: dbqueue migrate") as refused:
        job.options(connection=session).dispatch(1, 2)
    assert "while the App's" not in str(refused.value)
    theirs.dispose()
    app.dispose()

def test_an_unknown_job_option_is_named_with_the_options(sqlite_app):
    # A typo of an option must not read as a TypeError from inside dbqueue.
    options = ("name, queue, tries, backoff, timeout, retry_until, priority, dont_retry, "
               "on_failure, unique_key, unique_for, unique_until, middleware, idempotency_key")
    with pytest.raises(dbqueue.ConfigurationError,
                       match=rf"^unknown job option\(s\) quue; the options are {options}$"):
        sqlite_app.job(quue="mail")
    with pytest.raises(dbqueue.ConfigurationError, match=r"^unknown job option\(s\) a, b; "):
        sqlite_app.job(lambda: None, b=1, a=2)  # type: ignore[call-overload]
    assert sqlite_app.jobs == {}


@pytest.mark.parametrize(("option", "returned", "message"), [
    ("unique_key", None, "unique_key of job 'k' returned None (has it a return statement?)"),
    ("idempotency_key", None, "idempotency_key of job 'k' returned None"),
    ("idempotency_key", "", "idempotency_key of job 'k' returned an empty string"),
    ("unique_key", "a\x00b", "unique_key of job 'k' 'a\\x00b' holds a NUL character"),
    ("idempotency_key", "\udc80", "is not valid Unicode (surrogates not allowed at position 0)"),
], ids=["unique-none", "idempotency-none", "idempotency-empty", "unique-nul",
        "idempotency-surrogate"])
def test_a_key_function_that_makes_no_usable_key_is_refused_at_dispatch(
        sqlite_app, option, returned, message):
    """"None" would be one key for every call: the jobs would share one unique
    slot, or one outcome (later jobs completing without running)."""
    job = sqlite_app.job(name="k", **{option: lambda n: returned})(lambda n: None)
    with pytest.raises(dbqueue.ConfigurationError, match=re.escape(message)):
        job.dispatch(1)
    with pytest.raises(dbqueue.ConfigurationError, match=re.escape(message)):
        sqlite_app.dispatch_many([job.prepare(2)])
    assert count(sqlite_app, sqlite_app.store.tables.jobs) == 0


def test_an_empty_unique_key_is_the_jobs_name_alone_and_int_keys_read_as_text(sqlite_app):
    job = sqlite_app.job(name="k", unique_key=lambda n: "")(lambda n: None)
    assert job.dispatch(1) is not None and job.dispatch(2) is None  # one at a time
    assert sqlite_app.outcome(7) is None  # the key 7 is "7", as an int key is stored
    with pytest.raises(dbqueue.ConfigurationError, match="an idempotency key is a string"):
        sqlite_app.outcome(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("middleware", "message"), [
    (lambda: dbqueue.WithoutOverlapping("a\x00"), "WithoutOverlapping's key 'a\\x00' holds a NUL"),
    (lambda: dbqueue.ThrottlesExceptions(key=lambda n: n),  # type: ignore[arg-type]
     "ThrottlesExceptions' key must be a fixed key (a string), not a function"),
    (lambda: dbqueue.RateLimited("api", 10, 1, key="customer"),  # type: ignore[arg-type]
     "RateLimited's key must be a function of the job's arguments"),
    (lambda: dbqueue.RateLimited("a\x00", 10, 1), "RateLimited's name 'a\\x00' holds a NUL"),
], ids=["overlap-nul", "throttle-function", "rate-string-key", "rate-nul"])
def test_a_middlewares_key_of_the_wrong_kind_is_refused_where_it_is_declared(middleware,
                                                                             message):
    with pytest.raises(dbqueue.ConfigurationError, match=re.escape(message)):
        middleware()


def test_a_fixed_middleware_key_of_any_value_is_its_text():
    assert dbqueue.WithoutOverlapping(42).key == "42"
    assert dbqueue.ThrottlesExceptions(key=7).key == "7"


def test_a_rate_limits_key_function_is_checked_against_the_arguments_at_dispatch(sqlite_app):
    limited = sqlite_app.job(name="charge", middleware=[
        dbqueue.RateLimited("api", 10, 1, key=lambda customer: customer)])(
        lambda customer, amount: None)
    with pytest.raises(dbqueue.InvalidArguments, match="the key of RateLimited"):
        limited.dispatch(1, 2)


def test_a_prepared_job_refuses_the_options_of_the_call_that_queues_it(sqlite_app):
    """They were dropped: the job was committed whatever the caller's transaction did."""
    job = sqlite_app.job(name="add")(lambda a, b: None)
    with sqlite_app.engine.connect() as connection:
        for option in ("connection", "after_commit"):
            value = connection if option == "connection" else Session(sqlite_app.engine)
            with pytest.raises(dbqueue.ConfigurationError,
                               match=rf"^{option}= applies to \.dispatch\(\), not to "
                                     rf"\.prepare\(\): .* app\.dispatch_many\(jobs, {option}="):
                job.options(**{option: value}).prepare(1, 2)


@pytest.mark.parametrize(("define", "message"), [
    (lambda app: app.job(name="gen")(_yields), "is a generator function"),
    (lambda app: app.job(name="")(lambda: None), "a job's name must be a non-empty string"),
    (lambda app: app.job(name="a\x00")(lambda: None), "a job's name 'a\\x00' holds a NUL"),
    (lambda app: app.job(name="star", queue="*")(lambda: None), "queue '*' cannot be served"),
    (lambda app: app.job(name="r", retry_until=0)(lambda: None), "retry_until must be > 0"),
], ids=["generator", "empty-name", "nul-name", "star-queue", "retry-until-zero"])
def test_job_definitions_a_worker_could_not_run_are_refused(sqlite_app, define, message):
    with pytest.raises(dbqueue.ConfigurationError, match=re.escape(message)):
        define(sqlite_app)
    assert sqlite_app.jobs == {}


def _yields() -> Iterator[int]:
    yield 1


def test_dispatch_options_a_worker_would_refuse_are_refused_at_dispatch(sqlite_app):
    job = sqlite_app.job(name="add")(lambda a, b: None)
    past = datetime.now(UTC) - timedelta(seconds=1)
    for options, message in [({"retry_until": 0}, "retry_until must be > 0"),
                             ({"retry_until": past}, "has passed already"),
                             ({"queue": "*"}, "queue '*' cannot be served"),
                             ({"tries": 0}, "or None for the job's own, not 0")]:
        with pytest.raises(dbqueue.ConfigurationError, match=re.escape(message)):
            job.options(**options).dispatch(1, 2)
    assert count(sqlite_app, sqlite_app.store.tables.jobs) == 0


def test_a_reloaded_module_registers_its_jobs_again(sqlite_app, tmp_path, monkeypatch):
    (tmp_path / "reloaded_jobs.py").write_text("def send(n):\n    return n\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("reloaded_jobs")
    first = sqlite_app.job(module.send)
    importlib.reload(module)  # what a development server's autoreload does
    again = sqlite_app.job(module.send)
    assert again is not first and sqlite_app.lookup(first.name).func is module.send
    with pytest.raises(dbqueue.ConfigurationError, match="two jobs are named"):
        sqlite_app.job(name=first.name)(lambda: None)


def test_functions_a_factory_makes_are_two_jobs_not_a_reload(sqlite_app):
    """They share one qualified name (make.<locals>.handler): taken for a
    reload, the second silently ran for the first's dispatches."""

    def make(tag):
        def handler(n):
            return f"{tag}:{n}"
        return handler

    first = sqlite_app.job(make("a"))
    with pytest.raises(dbqueue.ConfigurationError, match="two jobs are named"):
        sqlite_app.job(make("b"))
    assert sqlite_app.lookup(first.name).func(1) == "a:1"


def test_a_key_function_that_raises_at_dispatch_is_left_to_the_worker(sqlite_app):
    """It may look something up that fails a while: the worker retries that
    as the job's own error, as before the key was checked at dispatch."""

    def key(order):
        raise LookupError("the order service is down")

    job = sqlite_app.job(name="charge", idempotency_key=key)(lambda order: None)
    assert job.dispatch(1) is not None


@pytest.mark.parametrize("given", [Path("jobs.db"), b"sqlite:///jobs.db", 5])
def test_an_app_given_no_url_nor_engine_says_what_it_takes(given):
    hint = "; for a SQLite file: App('sqlite:///jobs.db')" if isinstance(given, Path) else ""
    with pytest.raises(dbqueue.ConfigurationError,
                       match=re.escape(f"a SQLAlchemy URL or Engine, or None for $DBQUEUE_URL; "
                                       f"not {given!r}{hint}")):
        dbqueue.App(given)  # type: ignore[arg-type]


def test_an_app_takes_a_sqlalchemy_url(tmp_path):
    app = dbqueue.App(sa.make_url(f"sqlite:///{tmp_path / 'q.db'}"), table_prefix="dbq_")
    assert app.settings.url == f"sqlite:///{tmp_path / 'q.db'}"
