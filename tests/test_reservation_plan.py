"""A reservation is an index walk that stops after LIMIT rows, at any backlog.

The jobs table is filled with 200,000 ready rows (and a small queue beside
them) and ANALYZEd; then the statement the dialect runs for a reservation is
EXPLAINed. A plan that reads the whole table (PostgreSQL's "Seq Scan", MySQL's
access type ALL), or sorts every ready row to find the first few, makes each
reservation cost as much as the backlog.

The fill is SQL of the server's own (generate_series, a recursive CTE): a
million rows through dbqueue's API would take minutes.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbqueue.store.dialects import dialect_for
from dbqueue.worker.options import WorkerOptions

pytestmark = pytest.mark.slow

BACKLOGS = (20_000, 200_000)
# 1, a worker's usual batch, and its largest (concurrency + the default prefetch).
LIMITS = (1, 10, 10 + WorkerOptions().prefetch)
QUEUES = ("default", "rare")  # the big queue, and a small one beside it
LEASE = 90.0


def test_a_reservation_walks_an_index_at_any_backlog(app: Any) -> None:
    dialect = app.store.dialect
    if dialect.name == "sqlite":
        pytest.skip("SQLite has one writer and no row locks: its planner is not the question")
    jobs = app.store.tables.jobs
    faults: list[str] = []
    try:
        _add(app, jobs, "rare", 20)
        for backlog, added in zip(BACKLOGS, _steps(BACKLOGS), strict=True):
            _add(app, jobs, "default", added)
            assert _count(app, jobs, "default") == backlog
            for queue in QUEUES:
                for limit in LIMITS:
                    statement = dialect.reserve_statement(jobs, queue, limit, "t", LEASE)
                    with app.engine.begin() as connection:
                        dialect.steer_claims(connection)  # as Leases.reserve does
                        faults += [
                            f"{backlog} ready rows, queue {queue!r}, limit {limit}: {fault}\n"
                            f"{_shown(plan)}"
                            for plan in _plans(connection, statement)
                            if (fault := _fault(connection, jobs, plan))]
    finally:
        with app.engine.begin() as connection:
            connection.execute(jobs.delete())
        _analyze(app, jobs)
    assert not faults, "\n\n".join(faults)


def test_a_reservation_walks_an_index_without_statistics(app: Any) -> None:
    """The statistics of an empty table (autovacuum often analyzes a drained
    queue), then a backlog arrives: the planner expects a few ready rows."""
    dialect = app.store.dialect
    if dialect.name == "sqlite":
        pytest.skip("SQLite has one writer and no row locks: its planner is not the question")
    jobs = app.store.tables.jobs
    faults: list[str] = []
    _automatic_statistics(app, jobs, on=False)  # nothing may analyze the table meanwhile
    try:
        with app.engine.begin() as connection:
            connection.execute(jobs.delete())
        _analyze(app, jobs)
        _add(app, jobs, "default", BACKLOGS[-1], analyze=False)
        for limit in LIMITS:
            statement = dialect.reserve_statement(jobs, "default", limit, "t", LEASE)
            with app.engine.begin() as connection:
                dialect.steer_claims(connection)
                faults += [f"limit {limit}: {fault}\n{_shown(plan)}"
                           for plan in _plans(connection, statement)
                           if (fault := _fault(connection, jobs, plan))]
    finally:
        try:
            with app.engine.begin() as connection:
                connection.execute(jobs.delete())
        finally:
            _automatic_statistics(app, jobs, on=True)
        _analyze(app, jobs)
    assert not faults, "\n\n".join(faults)


def _automatic_statistics(app: Any, jobs: sa.Table, *, on: bool) -> None:
    name = app.engine.dialect.identifier_preparer.format_table(jobs)
    if app.engine.dialect.name == "postgresql":
        statement = (f"ALTER TABLE {name} RESET (autovacuum_enabled)" if on
                     else f"ALTER TABLE {name} SET (autovacuum_enabled = false)")
    else:
        statement = f"ALTER TABLE {name} STATS_AUTO_RECALC = {'DEFAULT' if on else 0}"
    with app.engine.begin() as connection:
        connection.exec_driver_sql(statement)


def _steps(totals: tuple[int, ...]) -> list[int]:
    return [total - before for before, total in zip((0, *totals), totals, strict=False)]


def _add(app: Any, jobs: sa.Table, queue: str, count: int, *, analyze: bool = True) -> None:
    """Add ``count`` ready jobs to ``queue``, then ANALYZE the table (unless not)."""
    with app.engine.begin() as connection:
        numbers = _numbers(connection, count)
        ready = sa.type_coerce(dialect_for(connection.dialect).now_plus(-1),
                               jobs.c.available_at.type)
        connection.execute(jobs.insert().from_select(
            ["queue", "job", "payload", "priority", "attempts", "available_at", "created_at"],
            sa.select(sa.literal(queue), sa.literal("tests.plan"), sa.literal("[]"),
                      numbers.c.n % 3, sa.literal(0), ready, ready)))
    if analyze:
        _analyze(app, jobs)


def _count(app: Any, jobs: sa.Table, queue: str) -> int:
    return int(app.store.read(lambda c: c.execute(
        sa.select(sa.func.count()).select_from(jobs).where(jobs.c.queue == queue)).scalar_one()))


def _numbers(connection: Connection, count: int) -> sa.Subquery:
    """1 to ``count`` as a subquery with one column, n, made by the server."""
    if connection.dialect.name == "postgresql":
        series = sa.func.generate_series(1, count).table_valued("n").render_derived()
        return sa.select(series.c.n).subquery()
    # MySQL and MariaDB: ten digits by a recursive CTE (ten iterations, under
    # any recursion limit), crossed six times.
    places = ", ".join(f"digits p{power}" for power in range(6))
    number = " + ".join(f"{10 ** power} * p{power}.d" for power in range(6))
    return sa.text(
        "WITH RECURSIVE digits (d) AS (SELECT 0 UNION ALL SELECT d + 1 FROM digits WHERE d < 9)"
        f" SELECT 1 + {number} AS n FROM {places} WHERE {number} < :count"
    ).bindparams(count=count).columns(sa.column("n", sa.Integer)).subquery("numbers")


def _analyze(app: Any, jobs: sa.Table) -> None:
    name = app.engine.dialect.identifier_preparer.format_table(jobs)
    keyword = "ANALYZE" if app.engine.dialect.name == "postgresql" else "ANALYZE TABLE"
    with app.engine.begin() as connection:
        connection.exec_driver_sql(f"{keyword} {name}")


def _plans(connection: Connection, statement: sa.Executable) -> list[Any]:
    """The plans of ``statement``: as sent (its parameters' values known to the
    planner) and, on PostgreSQL, as a prepared statement's generic plan, which
    the server may switch to once psycopg prepares a statement it has run five
    times on a connection."""
    compiled = statement.compile(dialect=connection.dialect)
    sql, params = str(compiled), compiled.params
    if connection.dialect.name != "postgresql":
        return [connection.exec_driver_sql(f"EXPLAIN {sql}", params).mappings().all()]
    custom = "\n".join(connection.exec_driver_sql(f"EXPLAIN {sql}", params).scalars())
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    import psycopg.sql

    driver = connection.connection.driver_connection
    text = re.sub(r"%\((\w+)\)s", positional, sql).replace("%%", "%")
    literals = ", ".join(psycopg.sql.Literal(params[name]).as_string(driver) for name in names)
    connection.exec_driver_sql(f"PREPARE dbqueue_plan AS {text}")
    connection.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    generic = "\n".join(connection.exec_driver_sql(
        f"EXPLAIN EXECUTE dbqueue_plan({literals})").scalars())
    connection.exec_driver_sql("DEALLOCATE dbqueue_plan")
    return [custom, "(generic plan)\n" + generic]


def _fault(connection: Connection, jobs: sa.Table, plan: Any) -> str | None:
    if connection.dialect.name == "postgresql":
        faults = _postgresql_faults(jobs)
        return next((fault for pattern, fault in faults if re.search(pattern, plan)), None)
    for row in plan:
        if row["table"] == jobs.name and row["type"] == "ALL":
            return "a full scan of the jobs table (type ALL)"
        if row["table"] == jobs.name and "filesort" in (row["Extra"] or ""):
            return "a sort of every ready row (filesort)"
    return None


def _postgresql_faults(jobs: sa.Table) -> list[tuple[str, str]]:
    return [
        (rf"Seq Scan on {jobs.name}\b", "a sequential scan of the jobs table"),
        (r"Sort Key: .*\bpriority\b", "a sort of every ready row"),
        # Checked on the row, not in the index: every job not yet due that the
        # walk passes over costs a fetch from the table.
        (r"Filter: .*\bavailable_at\b", "available_at checked on the rows, not in the index"),
    ]


def _shown(plan: Any) -> str:
    if isinstance(plan, str):
        return plan
    return "\n".join(str(dict(row)) for row in plan)
