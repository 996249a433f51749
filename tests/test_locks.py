"""Distributed locks on cache_locks, on every backend: one holder at a time."""

import subprocess
import sys

import pytest
import sqlalchemy as sa

import dbqueue
from dbqueue.store.locks import Locks
from tests.conftest import ROOT, rows, worker_env


def expire(app, key):
    """Make a lock's time run out now (a test cannot wait for its ttl)."""
    table, dialect = app.store.tables.cache_locks, app.store.dialect
    with app.engine.begin() as c:
        c.execute(sa.update(table).where(table.c.key == key)
                  .values(expires_at=dialect.now_plus(-1)))


def test_one_holder_until_release_and_only_the_owner_releases(app):
    first, second = app.lock("invoices", ttl=60), app.lock("invoices", ttl=60)
    assert first.acquire() and first.owned() and first.locked()
    assert not second.acquire()
    assert not second.release() and first.owned()
    assert first.release() and not first.locked()
    assert second.acquire() and second.owned()


def test_the_owner_acquiring_again_renews_its_hold(app):
    lock, other = app.lock("renew", ttl=1), app.lock("renew", ttl=600)
    assert lock.acquire()
    lock.ttl = 600
    assert lock.acquire() and not other.acquire()
    (held,) = app.store.read(lambda c: c.execute(sa.select(app.store.tables.cache_locks)).all())
    assert held.owner == lock.owner
    assert (held.expires_at - app.store.now()).total_seconds() > 590


def test_an_expired_lock_is_taken_over_and_its_old_owner_cannot_touch_it(app):
    old, new = app.lock("sync", ttl=60), app.lock("sync", ttl=60)
    assert old.acquire()
    expire(app, "sync")
    assert not old.locked()  # expired: held by nobody
    assert new.acquire()
    assert not old.release() and not old.extend()
    assert new.owned()


def test_extend_force_release_and_restore(app):
    lock = app.lock("report", ttl=1)
    assert lock.acquire()
    assert lock.extend(600)
    table = app.store.tables.cache_locks
    expires = app.store.read(lambda c: c.execute(sa.select(table.c.expires_at)).scalar_one())
    assert (expires - app.store.now()).total_seconds() > 590
    restored = app.restore_lock("report", lock.owner)
    assert restored.owned() and restored.release() and not lock.locked()
    assert lock.acquire()
    assert app.lock("report").force_release() and not lock.locked()
    assert lock.acquire()
    expire(app, "report")
    assert not app.lock("report").force_release()  # expired: it was held by nobody
    assert app.store.read(lambda c: c.execute(sa.select(table)).all()) == []  # row gone too


def test_with_block_takes_and_releases_or_raises(app):
    with app.lock("block", ttl=60) as held:
        assert held.owned()
        with (pytest.raises(dbqueue.LockNotAcquired, match="'block' is held"),
              app.lock("block", ttl=60)):
            pass
    assert not held.locked()


def test_a_lock_survives_the_rollback_of_the_callers_transaction(app, schema):
    if schema.startswith("sqlite"):
        pytest.skip("SQLite has one writer: the lock would wait for the caller's transaction")
    with app.engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(sa.text("SELECT 1"))
        lock = app.lock("kept", ttl=60)
        assert lock.acquire()
        transaction.rollback()
    assert lock.owned()


def test_concurrent_processes_never_hold_a_lock_together(jobs, schema):
    script = (
        "import sys, time\n"
        "from tests import jobapp\n"
        "jobs = jobapp.build()\n"
        "app = jobs.app\n"
        "for _ in range(6):\n"
        "    lock = app.lock('shared', ttl=60)\n"
        "    assert lock.acquire(timeout=120, poll=0.01)\n"
        "    jobs.jobs['overlap'].func('holder', 0.02)\n"
        "    assert lock.release()\n"
    )
    processes = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                                  env=worker_env(schema)) for _ in range(4)]
    for process in processes:
        assert process.wait(timeout=300) == 0
    events = rows(jobs.app, jobs.effects, jobs.effects.c.tag == "holder")
    assert len(events) == 4 * 6 * 2
    # Ordered by the database clock (and id for equal times), a start is always
    # followed by its own end: no two holders overlapped.
    ordered = sorted(events, key=lambda r: (r.at, r.id))
    for start, end in zip(ordered[::2], ordered[1::2], strict=True):
        assert (start.event, end.event, start.pid) == ("start", "end", end.pid)


def cli(url, *args):
    return subprocess.run([sys.executable, "-m", "dbqueue", *args], cwd=ROOT,
                          env=worker_env(url), capture_output=True, text=True, timeout=60)


def test_cli_lists_and_releases_locks(app, schema):
    assert cli(schema, "locks").stdout.strip() == "No locks are held."
    lock = app.lock("nightly:export", ttl=600)
    assert lock.acquire()
    listing = cli(schema, "locks")
    assert "nightly:export" in listing.stdout and lock.owner in listing.stdout
    assert cli(schema, "locks", "--json").stdout.count('"owner"') == 1
    released = cli(schema, "locks", "release", "nightly:export")
    assert released.returncode == 0 and "Released lock 'nightly:export'" in released.stdout
    assert not lock.locked()
    missing = cli(schema, "locks", "release", "nightly:export")
    assert missing.returncode == 1 and "Error: no lock 'nightly:export' is held" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_another_process_restores_the_lock_by_its_owner_token(app, schema):
    lock = app.lock("handed:over", ttl=600)
    assert lock.acquire()
    script = ("import sys\nimport dbqueue\n"
              "app = dbqueue.App()\n"
              "restored = app.restore_lock('handed:over', sys.argv[1])\n"
              "assert restored.owned() and restored.extend(900) and restored.release()\n"
              "assert not app.restore_lock('handed:over', 'not-the-owner').release()\n")
    done = subprocess.run([sys.executable, "-c", script, lock.owner], cwd=ROOT,
                          env=worker_env(schema), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not lock.locked()


def test_workers_prune_expired_locks(app, workers):
    held, expired = app.lock("still:held", ttl=600), app.lock("long:gone", ttl=600)
    assert held.acquire() and expired.acquire()
    expire(app, "long:gone")
    assert workers.run("--stop-when-empty", "--sleep", "0.1").returncode == 0
    keys = app.store.read(lambda c: c.execute(
        sa.select(app.store.tables.cache_locks.c.key)).scalars().all())
    assert keys == ["still:held"]


def test_a_lock_key_of_any_length_is_one_lock(app):
    long_key = "export:" + "k" * 400
    first, second = app.lock(long_key, ttl=60), app.lock(long_key, ttl=60)
    assert first.acquire() and not second.acquire()
    assert app.lock(long_key + "!", ttl=60).acquire()  # another key, another lock
    assert first.locked() and first.owned() and first.extend()
    assert first.release() and second.acquire()
    with pytest.raises(dbqueue.ConfigurationError, match="non-empty string"):
        app.lock("", ttl=60)


def test_a_lock_refuses_durations_it_could_not_honour_before_touching_the_database(app):
    """As a job's durations are: each raised the server's error, Python's
    OverflowError or TypeError, or (a negative extend) freed the lock."""
    for make, message in [
        (lambda: app.lock("k", ttl=float("inf")), "ttl must be a finite number"),
        (lambda: app.lock("k", ttl=1e12), "ttl must be at most"),
        (lambda: app.lock("k", ttl="10"), "ttl must be seconds"),  # type: ignore[arg-type]
        (lambda: app.lock("k", ttl=0), "ttl must be > 0"),
        (lambda: app.lock("k", ttl=60, wait=-1), "wait must be >= 0"),
        (lambda: app.restore_lock("k", None), "needs the owner's token"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(dbqueue.ConfigurationError, match=message):
            make()
    lock = app.lock("k", ttl=60)
    assert lock.acquire()
    for call, message in [(lambda: lock.extend(-5), "ttl must be > 0"),
                          (lambda: lock.extend(float("nan")), "finite number"),
                          (lambda: lock.acquire(timeout=-1), "timeout must be >= 0"),
                          (lambda: lock.acquire(timeout=1, poll=0), "poll must be > 0")]:
        with pytest.raises(dbqueue.ConfigurationError, match=message):
            call()
    assert lock.owned()  # still held, for its whole ttl


def test_on_mysql_a_taken_over_lock_is_held_whatever_the_assignment_order(app, schema):
    """MariaDB's SIMULTANEOUS_ASSIGNMENT mode assigns an upsert's columns all
    at once: a lock taken over from an expired owner kept the old expiry, and
    a third worker took it over again while the second held it."""
    if not schema.startswith("mysql"):
        pytest.skip("MySQL/MariaDB's ON DUPLICATE KEY UPDATE")
    store, table = app.store, app.store.tables.cache_locks
    with app.engine.connect() as c:
        if not c.exec_driver_sql("SELECT VERSION()").scalar_one().count("MariaDB"):
            pytest.skip("SIMULTANEOUS_ASSIGNMENT is MariaDB's")
        c.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',SIMULTANEOUS_ASSIGNMENT')")
        c.commit()
        assert store.dialect.acquire_locks(c, table, [("report", "a", 60)]) == {"report"}
        c.commit()
        expire(app, "report")
        assert store.dialect.acquire_locks(c, table, [("report", "b", 60)]) == {"report"}
        c.commit()
        assert store.dialect.acquire_locks(c, table, [("report", "c", 60)]) == set()
        c.commit()
        c.invalidate()  # its sql_mode is this test's: not for the pool's next user
    assert app.store.read(lambda c: c.execute(sa.select(table.c.owner)).scalars().all()) == ["b"]


def test_on_mysql_a_key_spelt_with_trailing_spaces_is_the_lock_the_server_holds(app, schema):
    """utf8mb4_bin ignores trailing spaces: taking over an expired 'acct:7' as
    'acct:7 ' made the row the new owner's while acquire said False, and
    nobody freed it; still_held did not know it either."""
    if not schema.startswith("mysql"):
        pytest.skip("MySQL/MariaDB's PAD SPACE collation")
    locks = Locks(app.store)
    assert locks.acquire("acct:7", "a", 60)
    expire(app, "acct:7")
    assert locks.acquire("acct:7 ", "b", 60)
    assert locks.still_held([("acct:7 ", "b"), ("acct:7 ", "a")]) == {("acct:7 ", "b")}
    assert locks.release("acct:7 ", "b")
    assert not locks.held()
