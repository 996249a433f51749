"""Rows nobody should have written: each fails alone, with its reason, and
every worker goes on with every other queue (README guarantee 7)."""

import json

import pytest

from dbqueue import SerializationError
from dbqueue.serializer import decode
from tests.conftest import count, rows

FAST = ("--sleep", "0.1")
NESTED = '{"args": [' + "[" * 100_000 + "]" * 100_000 + "]}"


def insert(jobs, job, payload, *, queue="poison", attempts=0):
    store, table = jobs.app.store, jobs.app.store.tables.jobs
    with jobs.app.engine.begin() as c:
        c.execute(table.insert().values(queue=queue, job=job, payload=payload,
                                        attempts=attempts, available_at=store.dialect.now(),
                                        created_at=store.dialect.now()))


def test_poison_rows_fail_alone_and_every_queue_goes_on(jobs, workers):
    insert(jobs, "record", NESTED)
    for options in ('{"retry_for": 1e12}', '{"retry_for": 1e300}', '{"timeout": NaN}',
                    '{"timeout": Infinity}', '{"timeout": 1e999}'):
        insert(jobs, "noop", f'{{"args": [], "options": {options}}}')
    insert(jobs, "noop", '{"args": []}', attempts=2**31 - 1)  # tries=1: used up long ago
    insert(jobs, "deadline", '{"args": []}', attempts=2**31 - 1)  # tries=None: it runs
    insert(jobs, "retried_for_ever", '{"args": []}', attempts=2**31 - 1)  # backoff 2**(2**31)
    insert(jobs, "record", '{"args": ["\\ud800"]}')  # a lone surrogate: no database takes one
    insert(jobs, "record", '{"args": [1e400]}')  # no float is that large
    jobs.surrogate_error.dispatch()
    jobs.app.dispatch_many([jobs.record.prepare(n) for n in range(50)])
    result = workers.run("--queue", "poison,default", "--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert "Traceback" not in result.stdout and "[SQL:" not in result.stdout
    assert count(jobs.app, jobs.effects) == 50  # every good job ran
    # The one retried for ever waits out its backoff, its count kept in range.
    (left,) = rows(jobs.app, jobs.app.store.tables.jobs)
    assert (left.job, left.attempts, left.reserved_by) == ("retried_for_ever", 2**31 - 1, None)
    failed = rows(jobs.app, jobs.app.store.tables.failed_jobs)
    reasons = sorted((row.exception_class, row.exception_message.split(": ", 1)[-1])
                     for row in failed)
    assert reasons == sorted([
        ("dbqueue.SerializationError", "payload nests lists or dicts more than 106 levels deep"),
        ("dbqueue.ConfigurationError",
         "retry_for must be at most 3,153,600,000 seconds (a hundred years), not 1000000000000.0"),
        ("dbqueue.ConfigurationError",
         "retry_for must be at most 3,153,600,000 seconds (a hundred years), not 1e+300"),
        ("dbqueue.SerializationError", "payload is not valid JSON: NaN is not a JSON value"),
        ("dbqueue.SerializationError", "payload is not valid JSON: Infinity is not a JSON value"),
        ("dbqueue.SerializationError", "payload is not valid JSON: 1e999 is too large a number"),
        ("dbqueue.SerializationError", "payload holds a lone surrogate (\\ud800-\\udfff), "
                                       "which is not a Unicode character"),
        ("dbqueue.SerializationError", "payload is not valid JSON: 1e400 is too large a number"),
        ("ValueError", "no customer named \\ud800"),
        ("dbqueue.MaxAttemptsExceeded", reasons_of(failed, "dbqueue.MaxAttemptsExceeded")),
        ("RuntimeError", reasons_of(failed, "RuntimeError")),
    ])
    assert "the most its tries=1 allow" in reasons_of(failed, "dbqueue.MaxAttemptsExceeded")
    assert "still down (no retry after retry_until" in reasons_of(failed, "RuntimeError")
    # Counts at the integer's limit stay there instead of overflowing the column.
    by_class = {row.exception_class: row.attempts for row in failed}
    assert by_class["RuntimeError"] == by_class["dbqueue.MaxAttemptsExceeded"] == 2**31 - 1


def reasons_of(failed, exception_class):
    (message,) = [row.exception_message.split(": ", 1)[-1] for row in failed
                  if row.exception_class == exception_class]
    return message


def nested(levels):
    """A list nesting ``levels`` levels deep: ``[[]]`` for 2."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_an_argument_may_nest_100_levels_deep_as_the_readme_says(app, jobs):
    deepest = nested(100)
    plain = jobs.record.dispatch(deepest, tag=deepest)
    # In a chain's later step, the first step's payload holds it six levels further down.
    chained = app.chain([jobs.noop.prepare(), jobs.record.prepare(deepest)]).dispatch()
    by_id = {row.id: decode(row.payload) for row in rows(app, app.store.tables.jobs)}
    assert by_id[plain].args == (deepest,) and by_id[plain].kwargs == {"tag": deepest}
    assert by_id[chained].flow["chain"][0]["payload"]["args"] == [deepest]
    # A row written by hand: up to those 106 levels, counted from the payload's object.
    assert decode(f'{{"args":[{json.dumps(nested(104))}]}}').args == (nested(104),)
    with pytest.raises(ValueError, match="more than 106 levels deep"):
        decode(f'{{"args":[{json.dumps(nested(105))}]}}')
    for call in [lambda: jobs.record.dispatch(nested(101)),
                 lambda: jobs.record.dispatch(1, tag=nested(101)),
                 lambda: jobs.record.dispatch({"n": nested(100)})]:
        with pytest.raises(SerializationError) as refused:
            call()
        assert str(refused.value) == (
            "the arguments of job 'record' nest lists or dicts more than 100 levels deep "
            "(or refer to themselves); pass a flatter structure")
    assert count(app, app.store.tables.jobs) == 2


def test_a_dispatch_refuses_what_a_worker_could_not_run(app, jobs):
    for call, message in [
        (lambda: jobs.record.dispatch(nested(150)), "more than 100 levels deep"),
        # Half of a UTF-16 pair: no driver can send it (it raised the driver's
        # UnicodeEncodeError before).
        (lambda: jobs.record.dispatch(1, tag="a \udc80 b"), "hold a lone surrogate"),
        (lambda: jobs.app.dispatch_many([jobs.record.prepare(1, tag="\ud800")]),
         "hold a lone surrogate"),
        (lambda: jobs.noop.options(timeout=float("nan")).dispatch(), "finite number"),
        (lambda: jobs.noop.options(retry_until=1e12).dispatch(), "at most"),
        (lambda: jobs.noop.options(delay=float("inf")).dispatch(), "finite number"),
    ]:
        try:
            call()
        except Exception as exc:
            assert message in str(exc), exc
        else:
            raise AssertionError(f"dispatch accepted what it should refuse ({message})")
    assert count(app, app.store.tables.jobs) == 0


def test_an_exception_whose_str_raises_is_recorded_as_itself(jobs, workers):
    """str() of it raised in the child, which died: the failure read
    WorkerCrashed, and the job's own exception was lost."""
    jobs.unprintable_error.dispatch()
    assert workers.run("--stop-when-empty", *FAST).returncode == 0
    (failed,) = rows(jobs.app, jobs.app.store.tables.failed_jobs)
    assert failed.exception_class == "tests.jobapp.UnprintableError"
    assert failed.exception_message == ("<tests.jobapp.UnprintableError: its str() raised "
                                        "RuntimeError>")
    assert "UnprintableError" in failed.exception


# created_at values no Python datetime holds, as a person may write them.
UNREADABLE_TIMES = {"sqlite": ["'garbage'", "42"],
                    "postgresql": ["'infinity'", "'-infinity'", "'20000-01-01 00:00:00+00'"],
                    "mysql": ["'0000-00-00 00:00:00'"], "mariadb": ["'0000-00-00 00:00:00'"]}


def test_a_created_at_no_datetime_holds_stops_no_reservation(jobs, workers):
    """The reservation read it, raised, and undid itself, at every look of
    every worker: the worker exited, or (PostgreSQL's 'infinity') looked for
    ever, and the good jobs never ran."""
    app = jobs.app
    name = app.engine.dialect.name
    table = app.engine.dialect.identifier_preparer.format_table(app.store.tables.jobs)
    with app.engine.begin() as c:
        if name in ("mysql", "mariadb"):  # a zero date, as older sql_modes let through
            c.exec_driver_sql("SET SESSION sql_mode = ''")
        for n, value in enumerate(UNREADABLE_TIMES[name]):
            c.exec_driver_sql(f"INSERT INTO {table} (queue, job, payload, attempts, priority, "
                              f"available_at, created_at) VALUES ('default', 'record', "
                              f"'{{\"args\": [{100 + n}]}}', 0, 0, {_now_sql(name)}, {value})")
        # One whose retry_until counts from its created_at: it cannot be kept.
        c.exec_driver_sql(f"INSERT INTO {table} (queue, job, payload, attempts, priority, "
                          f"available_at, created_at) VALUES ('default', 'deadline', "
                          f"'{{\"args\": []}}', 0, 0, {_now_sql(name)}, "
                          f"{UNREADABLE_TIMES[name][0]})")
    app.dispatch_many([jobs.record.prepare(n) for n in range(5)])
    result = workers.run("--stop-when-empty", *FAST)
    assert result.returncode == 0, result.stdout
    assert "Traceback" not in result.stdout
    assert count(app, jobs.effects) == 5 + len(UNREADABLE_TIMES[name])  # the odd rows too
    (failed,) = rows(app, app.store.tables.failed_jobs)
    assert (failed.job, failed.exception_class) == ("deadline", "dbqueue.MaxAttemptsExceeded")
    assert ("its created_at cannot be read as a time (see the row), and retry_until counts "
            "from it") in failed.exception_message


def _now_sql(name: str) -> str:
    return {"sqlite": "strftime('%Y-%m-%d %H:%M:%f000', 'now')",
            "postgresql": "now()"}.get(name, "UTC_TIMESTAMP(6)")
