"""Jobs the tests dispatch and real worker processes run.

Workers load it as ``--app tests.jobapp:app``, which reads DBQUEUE_URL and
DBQUEUE_TABLE_PREFIX; the tests build their own copy with ``build(url, prefix)``.
Jobs leave their traces in the ``effects`` table, stamped by the database clock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import dbqueue
from dbqueue.store.dialects import UtcDateTime


def effects_table(metadata: sa.MetaData, prefix: str) -> sa.Table:
    return sa.Table(
        f"{prefix}effects", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tag", sa.String(100), nullable=False),
        sa.Column("n", sa.Integer, unique=True),
        sa.Column("event", sa.String(20), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("detail", sa.Text),
    )


@dataclass
class JobApp:
    app: dbqueue.App
    effects: sa.Table
    jobs: dict[str, Any]
    note: Callable[..., None]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.jobs[name]
        except KeyError:
            raise AttributeError(name) from None


def build(url: str | None = None, prefix: str | None = None) -> JobApp:
    app = dbqueue.App(url, table_prefix=prefix)
    effects = effects_table(sa.MetaData(), app.settings.table_prefix)

    def note(tag: str, event: str, n: int | None = None, detail: str | None = None) -> None:
        with app.engine.begin() as connection:
            connection.execute(effects.insert().values(
                tag=tag, n=n, event=event, pid=os.getpid(), at=app.store._now(), detail=detail))

    def count(tag: str, event: str) -> int:
        with app.engine.begin() as connection:
            return int(connection.execute(
                sa.select(sa.func.count()).select_from(effects)
                .where(effects.c.tag == tag, effects.c.event == event)).scalar_one())

    @app.job(name="noop")
    def noop() -> None:
        pass

    @app.job(name="record", tries=3)
    def record(n: int, tag: str = "record") -> None:
        note(tag, "done", n=n)

    @app.job(name="hold", tries=3, timeout=300)
    def hold(key: str, seconds: float) -> None:
        """Blocks for ``seconds`` on its first start only; later starts finish at once."""
        note(key, "start")
        if count(key, "start") == 1:
            time.sleep(seconds)
        note(key, "end")

    @app.job(name="third_time_lucky", tries=3)
    def third_time_lucky(key: str) -> None:
        note(key, "start")
        if count(key, "start") < 3:
            raise RuntimeError("not yet")

    @app.job(name="overlap", tries=1, timeout=300)
    def overlap(key: str, seconds: float) -> None:
        note(key, "start")
        time.sleep(seconds)
        note(key, "end")

    @app.job(name="wait_for_go", tries=1, timeout=300)
    def wait_for_go(key: str) -> None:
        """Runs until the test notes (key, "go")."""
        note(key, "start")
        while not count(key, "go"):
            time.sleep(0.05)
        note(key, "end")

    @app.job(name="retried_for_ever", tries=None,
             backoff=dbqueue.Exponential(base=1, factor=2, cap=60))
    def retried_for_ever() -> None:
        raise RuntimeError("still down")

    @app.job(name="surrogate_error")
    def surrogate_error() -> None:
        raise ValueError("no customer named \ud800")  # no driver can send a lone surrogate

    @app.job(name="unprintable_error", tries=1)
    def unprintable_error() -> None:
        raise UnprintableError

    @app.job(name="nap")
    def nap(seconds: float) -> None:
        """Takes a while, and needs no database (it runs through outages)."""
        time.sleep(seconds)

    @app.job(name="spin", timeout=1)
    def spin() -> None:
        while True:
            pass

    @app.job(name="spawner", tries=1, timeout=1)
    def spawner(key: str) -> None:
        """Starts a program that would outlive it (which, as this process does,
        ignores SIGTERM) and notes its pid; then hangs until its timeout."""
        import subprocess

        program = subprocess.Popen(["sleep", "300"])
        note(key, "spawned", n=program.pid)
        time.sleep(300)

    @app.job(name="escaper", tries=1, timeout=1)
    def escaper(pid_file: str) -> None:
        """Starts a program that escapes the kill (a double fork, as a daemon
        does) and keeps its copy of the child's pipe open; then hangs until
        its timeout. The program writes its pid to ``pid_file``."""
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                Path(pid_file).write_text(str(os.getpid()))
                time.sleep(300)
            os._exit(0)
        os.wait()
        time.sleep(300)

    @app.job(name="talker", tries=1, timeout=60)
    def talker(key: str) -> None:
        """Waits for (key, "go"), then prints: where the worker's output went
        away meanwhile (its terminal closed), a print fails."""
        note(key, "start")
        while not count(key, "go"):
            time.sleep(0.05)
        for n in range(1000):
            print(f"line {n}", flush=True)
        note(key, "end")

    @app.job(name="forker", tries=1, timeout=30)
    def forker() -> None:
        """Forks without exec: the copy returns from the job, as the job does,
        into the child's loop; the job waits for the copy to end."""
        copy = os.fork()
        if copy:
            os.waitpid(copy, 0)
            note("forker", "waited")

    def forking_hook(failure: Any) -> None:
        copy = os.fork()  # without exec: the copy returns from the hook too
        if copy:
            os.waitpid(copy, 0)
            note("forking_hook", "waited")

    @app.job(name="fork_hooked", tries=1, on_failure=forking_hook)
    def fork_hooked() -> None:
        raise ValueError("its hook forks")

    @app.job(name="lingering")
    def lingering() -> None:
        """Leaves a thread running, which Python waits for when the child exits."""
        import threading

        threading.Thread(target=time.sleep, args=(300,), name="left-running").start()

    @app.job(name="wordy_error", tries=1)
    def wordy_error() -> None:
        raise ValueError("z" * 3_000_000)  # as long as a response body put in a message

    @app.job(name="block", timeout=1)
    def block() -> None:
        time.sleep(60)

    @app.job(name="padded", tries=1, timeout=2)
    def padded(padding: str, stuck: bool = False) -> None:
        """Short, with long arguments; blocks past its timeout when ``stuck``."""
        if stuck:
            time.sleep(60)

    @app.job(name="crash")
    def crash() -> None:
        os.kill(os.getpid(), signal.SIGSEGV)

    @app.job(name="flaky", tries=3, backoff=[30, 60])
    def flaky() -> None:
        raise RuntimeError("upstream said 503")

    @app.job(name="release", tries=1)
    def release() -> None:
        raise dbqueue.Release(45)

    @app.job(name="nul_error")
    def nul_error() -> None:
        raise ValueError("a NUL \x00 in the message")  # PostgreSQL text cannot store it

    @app.job(name="fail", tries=5)
    def fail() -> None:
        raise dbqueue.Fail("customer was deleted")

    @app.job(name="permanent", tries=5, dont_retry=(LookupError,))
    def permanent() -> None:
        raise KeyError("no such invoice")

    @app.job(name="deadline", tries=None, backoff=100, retry_until=50)
    def deadline() -> None:
        raise RuntimeError("still down")

    def on_failure(failure: Any) -> None:
        note("hook", "failed", detail=f"{failure.job_id}:{failure.exception_class}:"
                                       f"{failure.message}:{list(failure.args)}")

    def failing_hook(failure: Any) -> None:
        raise RuntimeError(f"cannot report job {failure.job_id}")

    @app.job(name="badly_hooked", tries=1, on_failure=failing_hook)
    def badly_hooked() -> None:
        raise ValueError("broken")

    @app.job(name="hooked", tries=2, on_failure=on_failure)
    def hooked(order: int) -> None:
        raise ValueError(f"order {order} is broken")

    @app.job(name="unique_invoice", unique_key=lambda invoice_id: str(invoice_id),
             unique_for=3600)
    def unique_invoice(invoice_id: int) -> None:
        note("invoice", "done", n=invoice_id)

    @app.job(name="unique_failing", unique_key=lambda key: key)
    def unique_failing(key: str) -> None:
        raise RuntimeError("gateway down")

    def slow(key: str, seconds: float) -> None:
        note(key, "start")
        time.sleep(seconds)
        note(key, "end")

    app.job(name="unique_slow", unique_key=lambda key, seconds: key, timeout=300)(slow)
    app.job(name="unique_slow_processing", unique_key=lambda key, seconds: key, timeout=300,
            unique_until="processing")(slow)

    @app.job(name="one_at_a_time", tries=1, timeout=60,
             middleware=[dbqueue.WithoutOverlapping("shared", release_after=0.05)])
    def one_at_a_time(n: int) -> None:
        note("serial", "start")
        time.sleep(0.03)
        note("serial", "end")

    def tag_calls(context: Any, call_next: Any) -> Any:
        note("wrapped", f"before:{context.attempt}", detail=str(list(context.args)))
        result = call_next()
        note("wrapped", "after")
        return result

    def skip_odd(context: Any, call_next: Any) -> Any:
        return None if context.args[0] % 2 else call_next()

    @app.job(name="wrapped", middleware=[tag_calls, skip_odd])
    def wrapped(n: int) -> None:
        note("wrapped", "body", n=n)

    def charge_once(order: int) -> bool:
        """Record a charge through the outcome's transaction; True on the first one."""
        connection = dbqueue.transaction()
        connection.execute(effects.insert().values(
            tag="charge", event=str(order), pid=os.getpid(), at=app.store._now()))
        return connection.execute(
            sa.select(sa.func.count()).select_from(effects)
            .where(effects.c.tag == "charge", effects.c.event == str(order))).scalar_one() == 1

    @app.job(name="charge", tries=3, idempotency_key=lambda order, seconds=0: f"charge:{order}")
    def charge(order: int, seconds: float = 0) -> dict[str, int]:
        charge_once(order)
        time.sleep(seconds)
        return {"order": order, "cents": 4200}

    @app.job(name="charge_or_fail", tries=1, idempotency_key=lambda order: f"cof:{order}")
    def charge_or_fail(order: int) -> None:
        """Charges, then fails for order 13 (its charge must roll back alone)."""
        charge_once(order)
        if order == 13:
            raise RuntimeError("card declined")

    @app.job(name="charge_even", middleware=[skip_odd],
             idempotency_key=lambda order: f"even:{order}")
    def charge_even(order: int) -> None:
        charge_once(order)

    @app.job(name="key_misfit", tries=3, idempotency_key=lambda order: f"misfit:{order}")
    def key_misfit(order: int, note_: str = "") -> None:
        """Dispatched with two arguments, its key function cannot take them."""
        charge_once(order)

    @app.job(name="dispatches_badly", tries=2)
    def dispatches_badly(n: int) -> None:
        """Its own code raises InvalidArguments: an error like any other."""
        note("dispatches_badly", "start")
        noop.dispatch(n)  # noop takes no argument

    @app.job(name="charge_returns_a_set", tries=3,
             idempotency_key=lambda order: f"set:{order}")
    def charge_returns_a_set(order: int) -> set[int]:
        charge_once(order)
        return {order}  # not JSON: the outcome cannot be stored

    @app.job(name="charge_then_die", idempotency_key=lambda order: f"die:{order}")
    def charge_then_die(order: int) -> None:
        charge_once(order)
        os.kill(os.getpid(), signal.SIGKILL)

    @app.job(name="charge_then_freeze", tries=3,
             idempotency_key=lambda order: f"freeze:{order}")
    def charge_then_freeze(order: int) -> None:
        """The first run stops its own supervisor: the outcome commits, but the
        worker can never record the job as complete."""
        if charge_once(order):
            (worker,) = app.workers.live(seen_within=60)
            os.kill(worker.pid, signal.SIGSTOP)

    @app.job(name="swallow_error", tries=1, idempotency_key=lambda order: f"swallow:{order}")
    def swallow_error(order: int) -> None:
        """Charges; order 51 then runs a bad statement and carries on as if nothing
        happened (PostgreSQL has then refused the rest of the transaction)."""
        connection = dbqueue.transaction()
        charge_once(order)
        if order == 51:
            with contextlib.suppress(sa.exc.DBAPIError):
                connection.exec_driver_sql("SELECT * FROM dbqueue_no_such_table")

    @app.job(name="deferred_insert", tries=1, idempotency_key=lambda order: f"deferred:{order}")
    def deferred_insert(order: int) -> None:
        """Charges, and inserts ``order`` into a table whose unique constraint
        PostgreSQL checks at COMMIT; order 0 inserts it twice, so that only the
        commit fails."""
        charge_once(order)
        for _ in range(2 if order == 0 else 1):
            dbqueue.transaction().exec_driver_sql(
                f"INSERT INTO {app.settings.table_prefix}deferred (k) VALUES ({order:d})")

    @app.job(name="limited_charge", tries=1,
             idempotency_key=lambda order: f"limited:{order}",
             middleware=[dbqueue.RateLimited("charges", limit=100, per=1)])
    def limited_charge(order: int) -> None:
        charge_once(order)

    @app.job(name="flaky_api", tries=10, backoff=0,
             middleware=[dbqueue.ThrottlesExceptions(max_attempts=3, decay=600)])
    def flaky_api(n: int) -> None:
        note("api", "called", detail=str(n))
        raise ConnectionError("the payment API is down")

    @app.job(name="healthy_api", tries=1,
             middleware=[dbqueue.ThrottlesExceptions(max_attempts=3, decay=600, key="api")])
    def healthy_api(n: int) -> None:
        note("api", "called", detail=str(n))

    @app.job(name="drop_if_busy", middleware=[
        dbqueue.WithoutOverlapping("nightly", dont_release=True, expire_after=600)])
    def drop_if_busy(n: int) -> None:
        note("nightly", "ran", n=n)

    @app.job(name="divide", middleware=[dbqueue.WithoutOverlapping(lambda n: str(100 // n))])
    def divide(n: int) -> None:
        note("divide", "done", n=n)

    # "none" makes the key function return None, as one without a return would.
    @app.job(name="keyed", middleware=[
        dbqueue.WithoutOverlapping(lambda key: None if key == "none" else key)])
    def keyed(key: str) -> None:
        note("keyed", "done", detail=key)

    @app.job(name="lock_ttl", timeout=1, middleware=[
        dbqueue.WithoutOverlapping("ttl"), dbqueue.RateLimited("ttl", limit=1, per=1)])
    def lock_ttl() -> None:
        """Notes how long each lock it holds has left (dispatch it with a longer timeout)."""
        note_lock_ttls()

    @app.job(name="brief_lock", middleware=[dbqueue.WithoutOverlapping("brief", expire_after=1)])
    def brief_lock() -> None:
        note_lock_ttls()

    def note_lock_ttls() -> None:
        from dbqueue.store.locks import Locks

        now = app.store.now()
        for held in Locks(app.store).held():
            left = (held.expires_at - now).total_seconds()
            note("lock_ttl", held.key[-20:], detail=f"{left:.0f}")

    @app.job(name="limited", tries=1, middleware=[dbqueue.RateLimited("api", limit=5, per=1)])
    def limited(n: int) -> None:
        note("limited", "start", n=n)

    @app.job(name="rate_one", tries=1, timeout=300,
             middleware=[dbqueue.RateLimited("one", limit=1, per=2)])
    def rate_one(key: str) -> None:
        """One start per 2 s; each runs until the test notes (key, "go")."""
        note(key, "start")
        while not count(key, "go"):
            time.sleep(0.05)

    @app.job(name="async_record", tries=2)
    async def async_record(n: int) -> int:
        import asyncio

        await asyncio.sleep(0.01)
        note("async", "done", n=n)
        return n

    @app.job(name="async_flaky", tries=2)
    async def async_flaky(key: str) -> None:
        note(key, "start")
        if count(key, "start") < 2:
            raise RuntimeError("the first await failed")

    @app.job(name="async_sleep", timeout=1)
    async def async_sleep() -> None:
        import asyncio

        await asyncio.sleep(60)

    @app.job(name="async_charge", idempotency_key=lambda order: f"async:{order}")
    async def async_charge(order: int) -> dict[str, int]:
        charge_once(order)
        return {"order": order}

    @app.job(name="long_key_charge",
             idempotency_key=lambda order: "charge-with-a-long-key:" + "x" * 300 + str(order))
    def long_key_charge(order: int) -> int:
        charge_once(order)
        return order

    return JobApp(app, effects, dict(app.jobs), note)


app = build().app


class UnprintableError(Exception):
    """An exception whose message cannot be read: str() of it raises."""

    def __str__(self) -> str:
        raise RuntimeError("no message")
