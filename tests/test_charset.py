"""Any Unicode text fits, and keys compare exactly, whatever the database's default.

On MySQL/MariaDB the tables are utf8mb4 with the binary collation utf8mb4_bin
(revision 0005), tested in a database of their own whose default character set
is latin1. PostgreSQL and SQLite must behave the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import dbqueue
from dbqueue.migrations.charset import TABLE_OPTIONS
from dbqueue.store import create_engine, migrator
from dbqueue.store.outcomes import Outcomes
from tests.conftest import PREFIX

TEXT = "Zoë 日本 😀"  # Latin-1, then three and four bytes of UTF-8
TABLES = ("jobs", "failed_jobs", "job_outcomes", "cache_locks", "queue_workers", "job_circuits",
          "dbqueue_alembic_version")
TABLE_PREFIX = f"{PREFIX}cs_"


@pytest.fixture
def fresh_app(backend_url: str, tmp_path: Path) -> Iterator[dbqueue.App]:
    """An App on tables of its own, not yet migrated: on MySQL/MariaDB in a
    database of its own, created with latin1 as its default character set."""
    url = make_url(backend_url)
    server = None
    if url.get_backend_name() == "sqlite":
        app_url = f"sqlite:///{tmp_path / 'charset.db'}"
    elif url.get_backend_name() == "postgresql":
        app_url = backend_url
    else:
        server = create_engine(backend_url)
        database = f"{PREFIX}latin1"
        with server.begin() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}")
            connection.exec_driver_sql(f"CREATE DATABASE {database} CHARACTER SET latin1")
        app_url = url.set(database=database).render_as_string(hide_password=False)
    app = dbqueue.App(app_url, table_prefix=TABLE_PREFIX)

    @app.job(name="greet", unique_key=lambda name, **_: name)
    def greet(name: str, note: str = "") -> None:
        pass

    app.downgrade("base")  # whatever an interrupted run left behind
    try:
        yield app
    finally:
        app.downgrade("base")  # even over text its database's default cannot hold
        app.dispose()
        if server is not None:
            with server.begin() as connection:
                connection.exec_driver_sql(f"DROP DATABASE {database}")
            server.dispose()


def test_text_outside_latin1_is_stored_and_read_back_intact(fresh_app):
    app, greet = fresh_app, fresh_app.jobs["greet"]
    app.migrate()
    app.store.check_schema()  # what a worker checks first: the code works on these tables
    job_id = greet.dispatch(TEXT, note=TEXT)
    (row,) = app.store.reserve(["default"], 1, "token", 60)
    assert row.id == job_id
    assert json.loads(row.payload) == {"args": [TEXT], "kwargs": {"note": TEXT}}
    assert greet.dispatch(TEXT) is None  # the job holds its key, TEXT and all
    assert app.lock(f"report:{TEXT}").acquire()
    assert app.lock(f"report:{TEXT}").locked()
    with app.engine.begin() as connection:
        assert Outcomes(app.store).claim(connection, f"charge:{TEXT}", "greet", job_id)
    outcome = app.outcome(f"charge:{TEXT}")
    assert outcome is not None and outcome.idempotency_key == f"charge:{TEXT}"


def test_keys_that_differ_only_in_case_or_accent_are_distinct(fresh_app):
    app, greet = fresh_app, fresh_app.jobs["greet"]
    app.migrate()
    outcomes = Outcomes(app.store)
    with app.engine.begin() as connection:
        assert outcomes.claim(connection, "Charge:1", "charge", 1)
        assert outcomes.claim(connection, "charge:1", "charge", 2)
        assert not outcomes.claim(connection, "charge:1", "charge", 3)  # the same key
    assert [app.outcome(key).job_id for key in ("Charge:1", "charge:1")] == [1, 2]
    assert app.lock("Report:daily").acquire() and app.lock("report:daily").acquire()
    assert all(greet.dispatch(name) for name in ("Zoë", "zoë", "ZOË", "Zoe"))
    assert greet.dispatch("zoë") is None


def mysql_only(app: dbqueue.App) -> None:
    if app.engine.dialect.name not in ("mysql", "mariadb"):
        pytest.skip("PostgreSQL and SQLite have no per-table character set: "
                    "revision 0005 does nothing there")


def collations(app: dbqueue.App) -> dict[str, set[str]]:
    """Each dbqueue table's collation, with its text columns' (MySQL/MariaDB)."""
    with app.engine.connect() as connection:
        tables = connection.execute(sa.text(
            "SELECT table_name, table_collation FROM information_schema.tables "
            "WHERE table_schema = DATABASE()")).all()
        columns = connection.execute(sa.text(
            "SELECT table_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND collation_name IS NOT NULL")).all()
    found = {name: {collation} for name, collation in tables if name.startswith(TABLE_PREFIX)}
    for name, collation in columns:
        found[name].add(collation)
    return found


def database_default(app: dbqueue.App) -> str:
    with app.engine.connect() as connection:
        return str(connection.exec_driver_sql("SELECT @@collation_database").scalar_one())


def test_on_mysql_every_table_is_utf8mb4_bin_whatever_the_database_default(fresh_app):
    app = fresh_app
    mysql_only(app)
    app.migrate()
    assert database_default(app).startswith("latin1_")
    found = collations(app)
    assert set(found) >= {f"{TABLE_PREFIX}{name}" for name in TABLES}
    assert {name: {"utf8mb4_bin"} for name in found} == found  # later revisions' tables too
    # What a later revision that creates a table passes to op.create_table.
    later = sa.Table(f"{TABLE_PREFIX}later", sa.MetaData(), sa.Column("key", sa.String(191)),
                     **TABLE_OPTIONS)
    later.create(app.engine)
    try:
        assert collations(app)[later.name] == {"utf8mb4_bin"}
    finally:
        later.drop(app.engine)


def test_on_mysql_revision_0005_converts_existing_tables_and_its_downgrade_restores_them(
        fresh_app):
    app, greet = fresh_app, fresh_app.jobs["greet"]
    mysql_only(app)
    app.migrate("0004")
    default = database_default(app)
    assert set().union(*collations(app).values()) == {default}
    job_id = greet.dispatch("Zoë")  # Latin-1: it fits before the conversion
    app.migrate()
    assert set().union(*collations(app).values()) == {"utf8mb4_bin"}
    assert payloads(app) == {job_id: ["Zoë"]}
    app.downgrade("0004")
    assert set().union(*collations(app).values()) == {default}
    assert payloads(app) == {job_id: ["Zoë"]}


def payloads(app: dbqueue.App) -> dict[int, Any]:
    jobs = app.store.tables.jobs
    with app.engine.connect() as connection:
        return {row.id: json.loads(row.payload)["args"]
                for row in connection.execute(sa.select(jobs.c.id, jobs.c.payload))}


def test_on_mysql_the_sql_printed_for_a_dba_converts_and_restores_the_tables(fresh_app):
    app = fresh_app
    mysql_only(app)
    app.migrate("0004")
    url = app.settings.url
    up = migrator.upgrade_sql(url, TABLE_PREFIX, "0004:head")
    assert (f"ALTER TABLE {TABLE_PREFIX}jobs CONVERT TO CHARACTER SET utf8mb4 "
            "COLLATE utf8mb4_bin;") in up
    run_script(app, up)
    assert set().union(*collations(app).values()) == {"utf8mb4_bin"}
    assert migrator.current_revision(app.store, TABLE_PREFIX) >= "0005"
    run_script(app, migrator.downgrade_sql(url, TABLE_PREFIX, "0004"))
    assert set().union(*collations(app).values()) == {database_default(app)}
    assert migrator.current_revision(app.store, TABLE_PREFIX) == "0004"


def run_script(app: dbqueue.App, script: str) -> None:
    """Run SQL text as a DBA would: statement by statement, comments skipped."""
    lines = [line for line in script.splitlines() if not line.startswith("--")]
    with app.engine.begin() as connection:
        for statement in "\n".join(lines).split(";\n"):
            if statement.strip():
                connection.exec_driver_sql(statement)


@pytest.mark.parametrize("url", ["mysql://u@host/db", "mariadb://u@host/db",
                                 "postgresql://u@host/db", "sqlite:///never.db"])
def test_revision_0005_converts_on_mysql_and_mariadb_only(url):
    up = migrator.upgrade_sql(url, "p_", "0004:0005")
    down = migrator.downgrade_sql(url, "p_", "0004", start="0005")
    converts = url.startswith(("mysql", "mariadb"))
    for table in TABLES:
        assert (f"ALTER TABLE p_{table} CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;"
                in up) is converts
        assert (f"ALTER TABLE p_{table} CONVERT TO CHARACTER SET DEFAULT;" in down) is converts


@pytest.mark.parametrize("url", ["mysql://", "mariadb://"])
def test_table_options_name_utf8mb4_bin_for_both_dialect_names(url):
    table = sa.Table("t", sa.MetaData(), sa.Column("k", sa.String(10)), **TABLE_OPTIONS)
    ddl = str(sa.schema.CreateTable(table).compile(dialect=make_url(url).get_dialect()()))
    assert "CHARSET=utf8mb4 COLLATE utf8mb4_bin" in ddl
