"""Jobs of the workflow tests (chains and batches), run by real workers.

Workers load it as ``--app tests.flowapp:app``, which reads DBQUEUE_URL and
DBQUEUE_TABLE_PREFIX; tests build their own copy with ``build(url, prefix)``.
Each job notes what it saw in the ``effects`` table (see tests.jobapp).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import sqlalchemy as sa

import dbqueue
from dbqueue.serializer import MAX_DEPTH
from tests.jobapp import JobApp, effects_table


def unstorable(kind: str) -> Any:
    """A lone surrogate, or lists nested deeper than an argument may."""
    if kind == "surrogate":
        return "half of a pair: \ud800"
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    return deep


def raise_after(context: Any, call_next: Any) -> None:
    """A middleware that fails once the job's body has returned."""
    call_next()
    raise RuntimeError("the middleware raised after the body")


def add_edge_jobs(app: dbqueue.App) -> None:
    """Jobs whose result, or whose failure's message, no database can store;
    an idempotent one whose middleware raises after its body."""

    @app.job(name="tally_then_raise", idempotency_key=lambda n: f"tally_then_raise:{n}",
             middleware=[raise_after])
    def tally_then_raise(n: int) -> dict[str, int]:
        return {"value": n * 10}

    @app.job(name="shaped")
    def shaped(kind: str) -> Any:
        return unstorable(kind)

    @app.job(name="garbled")
    def garbled() -> None:
        raise RuntimeError("bad \ud800 byte")


def build(url: str | None = None, prefix: str | None = None) -> JobApp:
    app = dbqueue.App(url, table_prefix=prefix)
    effects = effects_table(sa.MetaData(), app.settings.table_prefix)

    def note(tag: str, event: str, n: int | None = None, detail: Any = None) -> None:
        with app.engine.begin() as connection:
            connection.execute(effects.insert().values(
                tag=tag, n=n, event=event, pid=os.getpid(), at=app.store._now(),
                detail=None if detail is None else json.dumps(detail)))

    @app.job(name="fetch")
    def fetch(url: str) -> dict[str, Any]:
        note("chain", "fetch", detail=dbqueue.current_job().previous)
        return {"url": url, "size": len(url)}

    @app.job(name="parse")
    def parse() -> list[int]:
        page = dbqueue.current_job().previous
        note("chain", "parse", detail=page)
        return [page["size"], page["size"] * 2]

    @app.job(name="store")
    def store() -> None:
        note("chain", "store", detail=dbqueue.current_job().previous)

    @app.job(name="explode")
    def explode(key: str) -> None:
        """Fails until the effects table holds a ``fixed`` row for ``key``."""
        with app.engine.begin() as connection:
            fixed = connection.execute(effects.select().where(
                effects.c.tag == key, effects.c.event == "fixed")).first()
        if fixed is None:
            raise RuntimeError(f"{key} is broken")
        note("chain", "explode")
        return None

    @app.job(name="alert")
    def alert(tag: str) -> None:
        current = dbqueue.current_job()
        note(tag, "catch", detail=current.failed or current.batch_id)

    @app.job(name="member")
    def member(n: int, fail_on: int = -1, group: str = "batch") -> int:
        if n == fail_on:
            raise RuntimeError(f"member {n} fails")
        note(group, "member", detail=n)  # not in the unique column: a rerun may come
        return n

    @app.job(name="callback")
    def callback(tag: str) -> None:
        note(tag, "callback", detail=dbqueue.current_job().batch_id)

    @app.job(name="grow")
    def grow(extra: int) -> None:
        """A batch job that adds ``extra`` members to its own batch."""
        batch = app.find_batch(dbqueue.current_job().batch_id)  # type: ignore[arg-type]
        batch.add([member.prepare(1000 + i) for i in range(extra)])
        note("batch", "grow")

    @app.job(name="nap")
    def nap(seconds: float) -> float:
        """Long enough for an idle worker to look for more work meanwhile."""
        time.sleep(seconds)
        return seconds

    @app.job(name="uniq", unique_key=lambda n: f"uniq:{n}")
    def uniq(n: int) -> None:
        pass

    @app.job(name="tally", idempotency_key=lambda n: f"tally:{n}")
    def tally(n: int) -> dict[str, int]:
        dbqueue.transaction().execute(effects.insert().values(  # with its outcome
            tag="tally", event="ran", pid=os.getpid(), at=app.store._now()))
        return {"value": n * 10}

    add_edge_jobs(app)
    return JobApp(app, effects, dict(app.jobs), note)


app = build().app
