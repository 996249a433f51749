"""The public API: its names, and the clear errors it gives for bad input."""

from decimal import Decimal

import pytest

import dbqueue
from dbqueue.settings import Settings


def test_public_names_are_pinned():
    assert sorted(dbqueue.__all__) == sorted([
        "App", "Batch", "BoundJob", "Chain", "ConfigurationError", "CurrentJob", "DBQueueError",
        "DatabaseError",
        "DatabaseUnavailable",
        "Exponential", "Fail", "InvalidArguments", "Job", "JobContext", "JobFailure", "JobSignal",
        "JobTimeout", "Lock", "LockNotAcquired", "MaxAttemptsExceeded", "Middleware", "NotFound",
        "NotMigrated", "PreparedJob", "RateLimited",
        "Release", "Schedule", "SerializationError", "Settings", "ThrottlesExceptions",
        "TransactionSpoiled",
        "UnknownJob",
        "UnsupportedDatabase",
        "WithoutOverlapping", "WorkerCrashed", "__version__", "current_job", "transaction",
    ])
    for name in dbqueue.__all__:
        assert hasattr(dbqueue, name)


def make_app(tmp_path):
    return dbqueue.App(f"sqlite:///{tmp_path / 'q.db'}")


def test_arguments_that_are_not_json_fail_at_dispatch_not_in_the_worker(tmp_path):
    app = make_app(tmp_path)

    @app.job(name="send")
    def send(when):
        pass

    with pytest.raises(dbqueue.SerializationError, match="'send' must be JSON-serialisable"):
        send.dispatch(object())
    with pytest.raises(dbqueue.SerializationError):
        send.dispatch(float("nan"))
    # JSON would turn these keys into strings: the job would get {"1": ...}.
    with pytest.raises(dbqueue.SerializationError, match="dict keys must be strings, not 1"):
        send.dispatch({1: "a"})
    with pytest.raises(dbqueue.SerializationError, match=r"not 2\.5"):
        send.prepare(when=[{"ok": {2.5: "b"}}])
    send.prepare([{"ok": {"nested": [1, 2.5, None, True]}}])
    circular: list[object] = []
    circular.append(circular)
    with pytest.raises(dbqueue.SerializationError, match="Circular reference"):
        send.dispatch(circular)


def test_arguments_that_do_not_fit_the_signature_fail_at_dispatch(tmp_path):
    app = make_app(tmp_path)

    @app.job(name="send")
    def send(invoice_id: int) -> None:
        pass

    with pytest.raises(dbqueue.InvalidArguments, match="'send' cannot take these arguments"):
        send.dispatch(1, 2)
    with pytest.raises(dbqueue.InvalidArguments,
                       match=r"unexpected keyword argument 'invoice'; it takes \(invoice_id\)$"):
        send.prepare(invoice=3)
    with pytest.raises(dbqueue.InvalidArguments):
        send.prepare()
    send.prepare(1)

    @app.job(name="notify")
    def notify(user_id: int, /, channel: str = "mail", *, urgent: bool = False) -> None:
        pass

    notify.prepare(1, "sms", urgent=True)
    with pytest.raises(dbqueue.InvalidArguments):
        notify.prepare(1, "sms", True)  # urgent is keyword-only


def test_a_unique_key_that_does_not_fit_the_arguments_fails_at_dispatch(tmp_path):
    app = make_app(tmp_path)

    @app.job(name="bill", unique_key=lambda account: account)
    def bill(account: str, note: str = "") -> None:
        pass

    with pytest.raises(dbqueue.InvalidArguments) as raised:
        bill.dispatch("acme", "rush")
    assert str(raised.value).startswith(
        "unique_key of job 'bill' cannot take these arguments: ")
    assert str(raised.value).endswith("<lambda>() takes 1 positional argument but 2 were given")
    assert isinstance(raised.value.__cause__, TypeError)

    def lookup(account: str) -> str:
        raise ConnectionError("directory unreachable")  # may pass: left as it is

    @app.job(name="bill_by_owner", unique_key=lookup)
    def bill_by_owner(account: str) -> None:
        pass

    with pytest.raises(ConnectionError, match="directory unreachable"):
        bill_by_owner.dispatch("acme")


def test_options_are_validated_and_never_mix_with_job_arguments(tmp_path):
    app = make_app(tmp_path)

    @app.job(name="send")
    def send(queue: str, delay: int) -> None:
        pass

    bound = send.options(queue="mail", delay=30, priority=-5)
    assert bound.settings.queue == "mail" and bound.settings.delay == 30.0
    prepared = bound.prepare("an argument named queue", 7)
    assert prepared.new_job.queue == "mail" and prepared.new_job.priority == -5
    assert '"args":["an argument named queue",7]' in prepared.new_job.payload
    with pytest.raises(dbqueue.ConfigurationError, match="unknown dispatch option"):
        send.options(queueue="mail")
    with pytest.raises(dbqueue.ConfigurationError, match="delay must be"):
        send.options(delay=-1)
    with pytest.raises(dbqueue.ConfigurationError, match="not both"):
        send.options(connection=object(), after_commit=object())
    with pytest.raises(dbqueue.ConfigurationError, match="queue must be a name"):
        send.options(queue=" ")
    with pytest.raises(dbqueue.ConfigurationError, match="no space around it"):
        send.options(queue="mail ")  # no worker could serve it: --queue strips its names


def test_job_definitions_are_validated(tmp_path):
    app = make_app(tmp_path)
    with pytest.raises(dbqueue.ConfigurationError, match="tries"):
        app.job(name="a", tries=0)(lambda: None)
    with pytest.raises(dbqueue.ConfigurationError, match="timeout"):
        app.job(name="b", timeout=0)(lambda: None)
    with pytest.raises(dbqueue.ConfigurationError, match="priority must be an int"):
        app.job(name="d", priority="a")(lambda: None)
    with pytest.raises(dbqueue.ConfigurationError, match="queue must be a name"):
        app.job(name="e", queue="")(lambda: None)
    with pytest.raises(dbqueue.ConfigurationError, match="dont_retry of job 'f'"):
        app.job(name="f", dont_retry=("ValueError",))(lambda: None)
    assert app.job(name="g", dont_retry=KeyError)(lambda: None).dont_retry == (KeyError,)
    assert app.job(name="h", dont_retry=[KeyError])(lambda: None).dont_retry == (KeyError,)
    assert app.job(name="i", dont_retry={KeyError})(lambda: None).dont_retry == (KeyError,)
    app.job(name="c")(lambda: None)
    with pytest.raises(dbqueue.ConfigurationError, match="two jobs are named 'c'"):
        app.job(name="c")(lambda: None)


def test_after_commit_takes_a_session(tmp_path):
    app = make_app(tmp_path)
    job = app.job(name="x")(lambda: None)
    with pytest.raises(dbqueue.ConfigurationError, match="takes a SQLAlchemy Session"):
        job.options(after_commit=object()).dispatch()


def test_settings_come_from_the_environment_and_are_checked():
    settings = Settings.from_env({"DBQUEUE_URL": "sqlite:///x.db", "DBQUEUE_RETRY_AFTER": "30",
                                  "DBQUEUE_TABLE_PREFIX": "q_"})
    assert (settings.url, settings.retry_after, settings.table_prefix) == (
        "sqlite:///x.db", 30, "q_")
    assert Settings.from_env({}).url == "sqlite:///dbqueue.db"
    with pytest.raises(dbqueue.ConfigurationError, match="DBQUEUE_RETRY_AFTER"):
        Settings.from_env({"DBQUEUE_RETRY_AFTER": "soon"})
    for endless in ("inf", "nan"):
        with pytest.raises(dbqueue.ConfigurationError, match="finite number of seconds"):
            Settings.from_env({"DBQUEUE_RETRY_AFTER": endless})
    for endless in (float("inf"), 1e12):  # a lease no server could store the end of
        with pytest.raises(dbqueue.ConfigurationError, match="at most a year"):
            dbqueue.App("sqlite://", retry_after=endless)
    with pytest.raises(dbqueue.ConfigurationError, match="table prefix"):
        Settings(table_prefix="drop table;")
    # Numbers of any kind, read as floats; text and flags are no numbers.
    assert dbqueue.App("sqlite://", retry_after=Decimal("2.5")).settings.retry_after == 2.5
    for wrong in ("90", True, [90]):
        with pytest.raises(dbqueue.ConfigurationError, match="retry_after must be"):
            Settings(retry_after=wrong)


def test_bad_urls_and_missing_tables_give_errors_that_name_the_fix(tmp_path):
    with pytest.raises(dbqueue.ConfigurationError, match="not a database URL"):
        _ = dbqueue.App("not a url").store
    with pytest.raises(dbqueue.ConfigurationError, match=r"does not support 'oracle'"):
        _ = dbqueue.App("oracle://x@y/z").store
    app = make_app(tmp_path)
    job = app.job(name="x")(lambda: None)
    with pytest.raises(dbqueue.NotMigrated, match="dbqueue migrate"):
        job.dispatch()
    for url in ("postgresql://nobody@127.0.0.1:1/none", "mysql://nobody@127.0.0.1:1/none"):
        with pytest.raises(dbqueue.DatabaseUnavailable, match="cannot connect"):
            dbqueue.App(url).admin.status()
        lone = dbqueue.App(url).job(name="x")(lambda: None)
        with pytest.raises(dbqueue.DatabaseUnavailable, match=r"cannot connect.*127\.0\.0\.1:1"):
            lone.dispatch()  # a lone dispatch connects on a path of its own


def test_an_unknown_job_name_suggests_the_registered_one_it_may_mean():
    app = dbqueue.App("sqlite://")

    @app.job(name="app.jobs.send_email")
    def send_email(to: str) -> None:
        pass

    with pytest.raises(dbqueue.UnknownJob) as caught:
        app.lookup("jobs.send_email")  # the module imported by another path
    assert "did you mean 'app.jobs.send_email'?" in str(caught.value)
    with pytest.raises(dbqueue.UnknownJob) as caught:
        app.lookup("invoices.render")
    assert "did you mean" not in str(caught.value)
    assert "--app imports the module that defines it" in str(caught.value)


def test_key_functions_that_cannot_take_a_dispatchs_arguments_are_refused_at_dispatch():
    # Accepted, each such job failed for good in the worker, with no try used.
    app = dbqueue.App("sqlite://")

    @app.job(name="sync", middleware=[dbqueue.WithoutOverlapping(lambda account: str(account))])
    def sync(account: int, page: int = 0) -> None:
        pass

    @app.job(name="invoice", idempotency_key=lambda n: f"inv:{n}")
    def invoice(n: int, crash: bool = False) -> None:
        pass

    @app.job(name="report", idempotency_key=lambda *args, **kwargs: repr(args))
    def report(day: str, *, full: bool = False) -> None:
        pass

    with pytest.raises(dbqueue.InvalidArguments,
                       match=r"^the key of WithoutOverlapping of job 'sync' cannot take these "
                             r"arguments: too many positional arguments$"):
        sync.prepare(7, 2)
    with pytest.raises(dbqueue.InvalidArguments,
                       match=r"^idempotency_key of job 'invoice' cannot take these arguments: "
                             r"got an unexpected keyword argument 'crash'$"):
        invoice.prepare(12, crash=True)
    # The job's own signature is told of first: its key function would only echo it.
    with pytest.raises(dbqueue.InvalidArguments,
                       match=r"^job 'invoice' cannot take these arguments: unexpected keyword "
                             r"argument 'oid'"):
        invoice.prepare(oid=12)
    sync.prepare(7)
    invoice.prepare(12)
    report.prepare("2026-12-05", full=True)
