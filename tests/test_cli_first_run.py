"""What a new user meets first on the command line: typos in the URL, which
database ``migrate`` touched, names already taken, downgrades that delete
jobs, a broken ``--app``, long lists of failures and queues nobody works.

Through click's CliRunner where no real process is needed; a real terminal
(a pseudo-terminal) where the behaviour depends on having one.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

import dbqueue
from dbqueue.cli import cli
from dbqueue.errors import ConfigurationError
from dbqueue.store import Failure, NewJob
from dbqueue.store.admin import RETRY_CHUNK
from dbqueue.store.engine import unavailable, where
from dbqueue.store.migrator import current_revision
from dbqueue.store.workers import WorkerInfo
from tests.conftest import PREFIX, ROOT, count, rows
from tests.test_cli import bare_env, fail_jobs

BAD_PORT = "mysql://root:s3cret@127.0.0.1:abc/x"
IPV6_UNCLOSED = "postgresql://postgres@[::1:5433/x"


def run(*args: str, **env: str) -> Result:
    """``dbqueue ARGS`` in this process; DBQUEUE_* variables are only those in
    ``env``, and whatever the command sets in the environment is undone."""
    variables: dict[str, str | None] = {name: None for name in os.environ
                                        if name.startswith("DBQUEUE_")}
    variables.update(DBQUEUE_URL=None, DBQUEUE_APP=None, DBQUEUE_TABLE_PREFIX=None)
    variables.update(env)
    return CliRunner().invoke(cli, list(args), env=variables)


def error_line(result: Result) -> str:
    """The one ``Error:`` line of a failed command (exit code 1, nothing else printed)."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def succeeded(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def in_terminal(*args: str, env: dict[str, str], typed: str = "") -> tuple[int, str]:
    """Run ``dbqueue ARGS`` on a pseudo-terminal, ``typed`` already typed ahead;
    return its exit code and everything it wrote to the terminal."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "dbqueue", *args], cwd=ROOT, env=env,
                               stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    os.write(controller, typed.encode())
    output = b""
    deadline = time.monotonic() + 60
    while True:
        ready, _, _ = select.select([controller], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:  # it waits for more than was typed: a failure, not a hang
            process.kill()
            process.wait()
            raise AssertionError(f"dbqueue {' '.join(args)} still runs after 60 s:\n{output!r}")
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process has exited and closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    return process.wait(timeout=60), output.decode("utf-8", "replace")


@pytest.fixture
def migrated_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    app = dbqueue.App(url)
    app.migrate()
    app.dispose()
    yield url


@pytest.fixture
def own_prefix(backend_url: str) -> Iterator[tuple[dbqueue.App, str]]:
    """dbqueue's tables under a prefix of this test's own, on every backend, so
    that the test may drop them without disturbing the session's."""
    prefix = f"{PREFIX}own_"
    app = dbqueue.App(backend_url, table_prefix=prefix)
    app.downgrade("base")  # whatever an interrupted run left behind
    app.migrate()
    yield app, prefix
    app.downgrade("base")
    app.dispose()


def table_names(url: str) -> set[str]:
    engine = dbqueue.store.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


# --- 1. URLs that do not parse --------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["status"], ["failed"], ["locks"], ["migrate"], ["migrate", "--sql"],
    ["migrate", "--downgrade", "base", "--yes"], ["retry", "--all"],
], ids=lambda args: "-".join(a.strip("-") for a in args))
@pytest.mark.parametrize(("url", "expected"), [
    (BAD_PORT, "the port 'abc' in 'mysql://root:***@127.0.0.1:abc/x' is not a number; "
               "write host:3306"),
    (IPV6_UNCLOSED, "an IPv6 address needs brackets closed before the port, as in "
                    "postgresql://user@[::1]:5432/db"),
    ("postgresql://postgres@127.0.0.1:70000/x", "is 70000, outside 1-65535"),
], ids=["port-not-a-number", "ipv6-unclosed", "port-out-of-range"])
def test_a_url_with_a_bad_port_is_one_error_line(args, url, expected):
    for result in (run(*args, "--url", url), run(*args, DBQUEUE_URL=url)):
        line = error_line(result)
        assert expected in line, line
        assert "DBQUEUE_URL (or --url)" in line
        assert "s3cret" not in line


def test_a_url_with_a_bad_port_beside_an_app_is_one_error_line(migrated_url, tmp_path,
                                                              monkeypatch):
    (tmp_path / "dbqb_fixed_app.py").write_text(
        f"import dbqueue\napp = dbqueue.App({migrated_url!r})\n")
    (tmp_path / "dbqb_bad_port_app.py").write_text(
        f"import dbqueue\napp = dbqueue.App({BAD_PORT!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    line = error_line(run("status", "--app", "dbqb_fixed_app:app", "--url", BAD_PORT))
    assert "the port 'abc' in 'mysql://root:***@127.0.0.1:abc/x'" in line
    line = error_line(run("status", "--app", "dbqb_bad_port_app:app"))
    assert "the port 'abc' in 'mysql://root:***@127.0.0.1:abc/x'" in line


def test_the_url_helpers_name_the_database_without_its_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert where("postgresql://app:s3cret@db/app") == "postgresql://app:***@db/app"
    # libpq's own parameter: in the query
    assert where("postgresql://app@db/app?password=s3cret&sslmode=require") == (
        "postgresql://app@db/app?password=***&sslmode=require")
    assert "s3cret" not in str(refusal_of(
        "postgresql://app@db:99999/app?password=s3cret"))
    assert where("sqlite:///queue.db") == str(tmp_path / "queue.db")
    from dbqueue.store.engine import same_database

    with pytest.raises(ConfigurationError, match="the port 'abc'"):
        same_database(BAD_PORT, "mysql://root@127.0.0.1/x")


def refusal_of(url: str) -> ConfigurationError:
    from dbqueue.store.engine import parse_url

    with pytest.raises(ConfigurationError) as raised:
        parse_url(url)
    return raised.value


def test_a_password_with_an_unencoded_at_sign_is_neither_shown_nor_left_unexplained():
    # "p@ss": the URL's password ends at its first "@", and "ss@127.0.0.1" is
    # taken for the host, which the driver then names in its error.
    url = "mysql+pymysql://root:p@ss@127.0.0.1:3306/test"
    assert where(url) == "mysql+pymysql://root:***@127.0.0.1:3306/test"
    engine = sa.create_engine(url)  # connects to nothing
    error = unavailable(engine, OSError(
        "(2003, \"Can't connect to MySQL server on 'ss@127.0.0.1' (Name or service not known)\")"))
    assert "ss@" not in str(error), str(error)
    assert "percent-encoded (@ as %40)" in str(error)
    assert error.lasting  # a worker stops at once: no such host will ever answer


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite+pysqlite://"])
@pytest.mark.parametrize("args", [["status"], ["migrate"], ["failed"]],
                         ids=lambda args: args[0])
def test_a_database_in_memory_is_refused_on_the_command_line(args, url):
    """Each command is a process of its own: it would migrate, or look at, an
    empty database that vanishes with it."""
    line = error_line(run(*args, "--url", url))
    assert line == (f"Error: {url.partition(':')[0]}:///:memory: is a database inside one "
                    "process: each dbqueue command and worker, a process of its own, would "
                    "see an empty one; name a file instead, e.g. sqlite:///queue.db")
    assert where(url).endswith(":///:memory:")  # not sqlite:///%3Amemory%3A


# --- 2. which database migrate touched ------------------------------------------------


def test_migrate_names_the_sqlite_file_and_says_when_it_created_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    created = tmp_path / "dbqueue.db"
    first = succeeded(run("migrate")).splitlines()
    assert first[0] == (f"Created {created} (the default database: choose another with "
                        "--url or DBQUEUE_URL)")
    assert first[1].startswith(f"dbqueue tables in {created} are at revision ")
    again = succeeded(run("migrate", "--url", "sqlite:///dbqueue.db"))
    assert again == f"{first[1]}\n"  # no longer new
    other = tmp_path / "other.db"
    lines = succeeded(run("migrate", "--table-prefix", "q_", DBQUEUE_URL="sqlite:///other.db"))
    assert lines.splitlines()[0] == f"Created {other}"  # chosen: not the default
    assert lines.splitlines()[1].startswith(f"dbqueue tables (prefix q_) in {other} are at")


def test_an_upgrade_to_an_older_revision_says_the_tables_stay_newer(migrated_url):
    # Exit code 0 and "at revision 0009" alone read as if 0002 had been reached.
    lines = succeeded(run("migrate", "--revision", "0002", "--url", migrated_url)).splitlines()
    assert lines[1] == ("(newer than 0002, which an upgrade leaves as they are; to go back: "
                        "dbqueue migrate --downgrade 0002)"), lines
    assert len(succeeded(run("migrate", "--url", migrated_url)).splitlines()) == 1


def test_migrate_names_the_server_database(own_prefix, backend_url):
    _, prefix = own_prefix
    output = succeeded(run("migrate", "--url", backend_url, "--table-prefix", prefix))
    assert output.startswith(f"dbqueue tables (prefix {prefix}) in {where(backend_url)} are at "
                             "revision ")
    assert "Created" not in output


# --- 3. table names the application already uses --------------------------------------


def test_migrate_refuses_names_the_application_already_uses(backend_url):
    prefix = f"{PREFIX}taken_"
    engine = dbqueue.store.create_engine(backend_url)
    drop_prefixed(engine, prefix)  # whatever an interrupted run left behind
    theirs = sa.Table(f"{prefix}failed_jobs", sa.MetaData(), sa.Column("id", sa.Integer))
    theirs.create(engine)
    try:
        line = error_line(run("migrate", "--url", backend_url, "--table-prefix", prefix))
        assert f"already has a table named {prefix}failed_jobs, not dbqueue's" in line, line
        assert f"no dbqueue revision is recorded in {prefix}dbqueue_alembic_version" in line
        assert f"created with: dbqueue migrate --url {backend_url} --table-prefix " in line
        assert "App(table_prefix=" in line and "DBQUEUE_TABLE_PREFIX=" in line
        # Nothing was created beside it (MySQL cannot roll back a CREATE TABLE).
        names = table_names(backend_url)
        assert f"{prefix}failed_jobs" in names
        assert not {f"{prefix}jobs", f"{prefix}dbqueue_alembic_version"} & names
    finally:
        drop_prefixed(engine, prefix)
        engine.dispose()


def test_a_table_of_the_application_named_jobs_gets_the_prefix_advice_everywhere(
        backend_url, tmp_path, monkeypatch):
    """Not "the tables are missing" (or "older than this dbqueue", the other
    jobs table lacking dbqueue's columns), which sends the user to a migrate
    that refuses: the same advice as that migrate's, at the first step."""
    prefix = f"{PREFIX}theirs_"
    engine = dbqueue.store.create_engine(backend_url)
    drop_prefixed(engine, prefix)
    sa.Table(f"{prefix}jobs", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("title", sa.String(50))).create(engine)
    module = f"theirs_{sa.make_url(backend_url).get_backend_name()}"  # one per backend:
    # Python imports a module once per process.
    (tmp_path / f"{module}.py").write_text(
        "import dbqueue\n"
        f"app = dbqueue.App({backend_url!r}, table_prefix={prefix!r})\n"
        "@app.job()\ndef hello(x):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = dbqueue.App(backend_url, table_prefix=prefix)
    try:
        @app.job()
        def hello(x: int) -> None:
            pass

        advice = (f"already has a table named {prefix}jobs, not dbqueue's (no dbqueue "
                  f"revision is recorded in {prefix}dbqueue_alembic_version); give dbqueue's "
                  "tables a prefix, created with: dbqueue migrate ")
        with pytest.raises(dbqueue.NotMigrated, match=advice.replace("(", r"\(")
                           .replace(")", r"\)")) as raised:
            hello.dispatch(1)  # an INSERT naming columns that table does not have
        assert f"--table-prefix {prefix}dbq_," in str(raised.value)
        for command in ("status", "failed", "locks"):
            line = error_line(run(command, "--app", f"{module}:app"))
            assert advice + f"--app {module}:app --table-prefix {prefix}dbq_," in line, line
        line = error_line(run("migrate", "--app", f"{module}:app"))
        assert advice + f"--app {module}:app --table-prefix {prefix}dbq_," in line, line
    finally:
        app.dispose()
        drop_prefixed(engine, prefix)
        engine.dispose()


def drop_prefixed(engine: sa.Engine, prefix: str) -> None:
    with engine.begin() as connection:
        for name in sa.inspect(connection).get_table_names():
            if name.startswith(prefix):
                connection.execute(sa.text(f"DROP TABLE {name}"))


def test_a_mistyped_prefix_is_told_where_dbqueues_tables_are(own_prefix, backend_url):
    """Told only "the tables are missing; create them with: dbqueue migrate",
    a user with a prefix forgotten or mistyped made a second, empty queue."""
    _, prefix = own_prefix
    typo = prefix.replace("own_", "onw_")
    line = error_line(run("status", "--url", backend_url, "--table-prefix", typo))
    assert f"the dbqueue tables with the prefix {typo!r} are missing in " in line, line
    assert f"; dbqueue's tables with the prefix {prefix!r}" in line, line  # the nearest first
    assert (f"are there: if those are meant, give --table-prefix {prefix} "
            f"(DBQUEUE_TABLE_PREFIX={prefix}, App(table_prefix={prefix!r}))") in line, line
    if backend_url.startswith("postgresql"):  # names in capitals are other names there
        line = error_line(run("status", "--url", backend_url, "--table-prefix", prefix.upper()))
        assert f"; dbqueue's tables with the prefix {prefix!r}" in line, line


def test_tables_of_the_prefix_partly_there_get_no_other_prefix_hint(own_prefix, backend_url):
    app, prefix = own_prefix
    with app.engine.begin() as connection:  # one of them dropped by hand
        connection.execute(sa.text(f"DROP TABLE {prefix}job_outcomes"))
    line = error_line(run("outcomes", "--url", backend_url, "--table-prefix", prefix))
    assert "missing" in line and "are there: if those are meant" not in line, line
    with app.engine.begin() as connection:  # for the fixture's downgrade
        app.store.tables.job_outcomes.create(connection)


def test_a_forgotten_prefix_is_told_where_dbqueues_tables_are(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    app = dbqueue.App(url, table_prefix="billing_")
    app.migrate()
    app.dispose()
    line = error_line(run("status", "--url", url))
    assert ("are missing in " in line and "; dbqueue's tables with the prefix 'billing_' are "
            "there: if those are meant, give --table-prefix billing_ (DBQUEUE_TABLE_PREFIX="
            "billing_, App(table_prefix='billing_')); else create them with: dbqueue migrate "
            f"--url {url}") in line, line
    dbqueue.App(url).migrate()  # unprefixed ones too: a wrong prefix hears of both
    line = error_line(run("status", "--url", url, "--table-prefix", "bill_"))
    assert "with the prefix 'billing_' (and without a prefix) are there" in line, line


def test_migrate_suggests_a_prefix_that_is_free(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for name in ("jobs", "dbq_cache_locks"):
            connection.execute(sa.text(f"CREATE TABLE {name} (id INTEGER)"))
        # Left empty by a first migration that failed half-way on an older dbqueue.
        connection.execute(sa.text("CREATE TABLE dbqueue_alembic_version (version_num TEXT)"))
    engine.dispose()
    line = error_line(run("migrate", "--url", url))
    assert f"{tmp_path / 'app.db'} already has a table named jobs, not dbqueue's" in line
    assert f"dbqueue migrate --url {url} --table-prefix dbqueue_," in line  # dbq_ is taken
    assert "App(table_prefix='dbqueue_') or DBQUEUE_TABLE_PREFIX=dbqueue_" in line
    with engine.begin() as connection:  # a prefix of the user's own is taken as well
        connection.execute(sa.text("CREATE TABLE billing_jobs (id INTEGER)"))
    engine.dispose()
    line = error_line(run("migrate", "--url", url, "--table-prefix", "billing_"))
    assert "--table-prefix billing_dbq_," in line
    succeeded(run("migrate", "--url", url, "--table-prefix", "dbqueue_"))


# --- 4. downgrades ask first ----------------------------------------------------------


def test_a_downgrade_to_base_without_a_terminal_needs_yes(own_prefix, backend_url):
    app, prefix = own_prefix
    fail_jobs(app, ("mail", "send", "KeyError", "{}"))
    app.store.push_many([NewJob("mail", "send", "{}")] * 2)
    options = ("--url", backend_url, "--table-prefix", prefix)
    line = error_line(run("migrate", "--downgrade", "base", *options))
    assert "deletes 2 queued job(s) and 1 failed job(s)" in line, line
    assert line.endswith("with no terminal to confirm it on, run it again with --yes")
    assert count(app, app.store.tables.jobs) == 2  # nothing was dropped

    line = error_line(run("migrate", "--downgrade", "0003", *options))
    assert "to 0003 drops what the later revisions added" in line, line
    assert "(the 2 queued job(s) and 1 failed job(s) stay)" in line
    current = current_revision(app.store, prefix)
    assert succeeded(run("migrate", "--downgrade", current, *options)).endswith(
        f"are at revision {current} already: nothing to downgrade.\n")

    output = succeeded(run("migrate", "--downgrade", "base", "--yes", *options))
    assert output == (f"dbqueue tables (prefix {prefix}) in {where(backend_url)} "
                      "downgraded to base\n")
    assert not {name for name in table_names(backend_url) if name.startswith(prefix)}
    again = succeeded(run("migrate", "--downgrade", "base", *options))
    assert again.endswith("nothing to downgrade.\n")


def test_a_downgrade_on_a_terminal_asks_and_obeys_the_answer(migrated_url):
    app = dbqueue.App(migrated_url)
    app.store.push(NewJob("mail", "send", "{}"))
    env = bare_env(DBQUEUE_URL=migrated_url)
    code, output = in_terminal("migrate", "--downgrade", "base", env=env, typed="n\n")
    assert code == 1 and "Aborted" in output, output
    path = sa.engine.make_url(migrated_url).database
    assert (f"Dropping the dbqueue tables in {path} deletes 1 queued job(s) and 0 failed "
            "job(s). Go on? [y/N]") in output
    assert count(app, app.store.tables.jobs) == 1
    app.dispose()
    code, output = in_terminal("migrate", "--downgrade", "base", env=env, typed="y\n")
    assert code == 0, output
    assert f"dbqueue tables in {path} downgraded to base" in output
    assert table_names(migrated_url) == set()


def test_flushing_every_failure_on_a_terminal_asks_first(migrated_url):
    app = dbqueue.App(migrated_url)

    def fail_one() -> None:
        app.store.push(NewJob("default", "send", "{}"))
        (row,) = app.store.reserve(["default"], 1, "t", 60)
        app.store.fail(row, "t", Failure("KeyError", "gone", "tb"), "h:1")

    fail_one()
    env = bare_env(DBQUEUE_URL=migrated_url)
    code, output = in_terminal("flush", env=env, typed="n\n")
    assert code == 1 and "Delete all 1 failed job(s)? [y/N]" in output and "Aborted" in output
    assert count(app, app.store.tables.failed_jobs) == 1
    code, output = in_terminal("flush", "--hours", "0", env=env)  # an age: no question
    assert code == 0 and output.strip() == "Deleted 1 failed job(s).", output
    fail_one()
    code, output = in_terminal("flush", "--yes", env=env)
    assert code == 0 and output.strip() == "Deleted 1 failed job(s).", output
    code, output = in_terminal("flush", env=env)
    assert code == 0 and output.strip() == "No failed jobs.", output
    app.dispose()


# --- 5. a broken --app, and --verbose -------------------------------------------------


@pytest.fixture
def broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An application module whose import fails inside the standard library."""
    module = tmp_path / "dbqb_json_app.py"
    module.write_text('import json\n\nimport dbqueue\n\napp = dbqueue.App()\njson.loads("{")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return module


def test_a_broken_app_points_at_the_users_line(broken_module):
    line = error_line(run("status", "--app", "dbqb_json_app:app"))
    assert f"importing dbqb_json_app failed at {broken_module}:6: JSONDecodeError" in line, line


def test_an_app_named_with_a_dot_for_the_colon_is_told_the_colon(tmp_path, monkeypatch):
    package = tmp_path / "dbqdot_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text("import dbqueue\napp = dbqueue.App()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    line = error_line(run("status", "--app", "dbqdot_pkg.tasks.app"))
    assert line == ("Error: --app 'dbqdot_pkg.tasks.app': there is no module "
                    "'dbqdot_pkg.tasks.app', but module dbqdot_pkg.tasks has 'app': name an "
                    "attribute after a colon, --app dbqdot_pkg.tasks:app"), line
    # A module merely misspelt is not taken for an attribute.
    assert "fix the module path" in error_line(run("status", "--app", "dbqdot_pkg.taks"))


def test_verbose_prints_the_whole_traceback_before_the_error_line(broken_module):
    result = run("status", "--app", "dbqb_json_app:app", "-v")
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert f'File "{broken_module}", line 6' in result.stderr
    assert f"json{os.sep}decoder.py" in result.stderr  # where it was raised, too
    assert lines[-1].startswith("Error: --app 'dbqb_json_app:app': importing dbqb_json_app")


@pytest.mark.parametrize("args", [
    ["status"], ["restart"], ["migrate", "--downgrade", "base"], ["failed"],
    ["failed", "show", "1"], ["retry", "--all"], ["forget", "1"], ["flush"], ["locks"],
    ["locks", "release", "k"], ["outcomes", "show", "k"],
    ["outcomes", "prune", "--older-than", "1"],
], ids=lambda args: "-".join(a.strip("-") for a in args))
def test_every_command_takes_verbose(args, tmp_path):
    missing = tmp_path / "missing.db"
    for verbose in ("-v", "--verbose"):
        result = run(*args, verbose, "--url", f"sqlite:///{missing}")
        assert result.exit_code == 1, (result.output, result.exception)
        lines = result.stderr.splitlines()
        assert lines[0] == "Traceback (most recent call last):", result.stderr
        assert lines[-1] == (f"Error: there is no SQLite database at {missing}; check the URL, "
                             "or create it and dbqueue's tables with: dbqueue migrate "
                             f"--url sqlite:///{missing}")
    error_line(run(*args, "--url", f"sqlite:///{missing}"))  # without it, the line alone
    assert not missing.exists()


def test_the_migrate_command_suggested_is_for_the_database_typed(tmp_path):
    # Copied without the --url typed, it would create the default database instead.
    queue = tmp_path / "queue.db"
    line = error_line(run("status", "--url", f"sqlite:///{queue}"))
    command = line.partition("with: ")[2]
    assert command == f"dbqueue migrate --url sqlite:///{queue}", line
    succeeded(run(*shlex.split(command)[1:]))
    assert succeeded(run("status", "--url", f"sqlite:///{queue}"))
    # From the environment, the copied command inherits it: nothing to add.
    line = error_line(run("status", DBQUEUE_URL=f"sqlite:///{tmp_path / 'other.db'}"))
    assert line.endswith("with: dbqueue migrate"), line


def test_an_app_given_its_url_in_code_is_told_the_migrate_command_for_it(tmp_path,
                                                                         monkeypatch):
    """Run as written, a bare ``dbqueue migrate`` would create the tables of
    DBQUEUE_URL's database (or the default one), not of the App's."""
    monkeypatch.delenv("DBQUEUE_URL", raising=False)
    monkeypatch.delenv("DBQUEUE_TABLE_PREFIX", raising=False)
    queue = tmp_path / "queue.db"
    app = dbqueue.App(f"sqlite:///{queue}", table_prefix="q_")
    job = app.job(name="add")(lambda a, b: None)
    try:
        with pytest.raises(dbqueue.NotMigrated) as raised:
            job.dispatch(1, 2)
        command = str(raised.value).partition("with: ")[2]
        assert command == f"dbqueue migrate --url sqlite:///{queue} --table-prefix q_"
        succeeded(run(*shlex.split(command)[1:]))
        job.dispatch(1, 2)
        # Where the environment names it already, nothing to add.
        monkeypatch.setenv("DBQUEUE_URL", f"sqlite:///{queue}")
        other = dbqueue.App(f"sqlite:///{queue}", table_prefix="r_")
        other_job = other.job(name="add")(lambda a, b: None)
        with pytest.raises(dbqueue.NotMigrated, match=r"with: dbqueue migrate --table-prefix r_$"):
            other_job.dispatch(1, 2)
        other.dispose()
    finally:
        app.dispose()


def test_the_migrate_command_suggested_does_not_echo_a_password(backend_url):
    url = sa.make_url(backend_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("the test servers take a password they do not check only on PostgreSQL")
    with_password = url.set(password="s3cret").render_as_string(hide_password=False)
    # libpq takes it as a parameter too
    in_query = url.update_query_dict({"password": "s3cret"}).render_as_string()
    for typed in (with_password, in_query):
        line = error_line(run("status", "--url", typed, "--table-prefix", f"{PREFIX}none_"))
        assert line.endswith(f"with: dbqueue migrate --url <the same URL> --table-prefix "
                             f"{PREFIX}none_"), line
        assert "s3cret" not in line


def test_work_help_shows_one_verbose_option_for_both_meanings():
    help_text = " ".join(succeeded(run("work", "--help")).split())
    assert help_text.count("--verbose") == 1
    assert "traceback" in help_text and "logs every job" in help_text


# --- 6. long lists of failures --------------------------------------------------------


def test_failed_says_how_many_match_when_the_limit_cuts_the_list(app, schema):
    fail_jobs(app, ("mail", "a", "KeyError", "{}"), ("mail", "b", "KeyError", "{}"),
              ("other", "c", "ValueError", "{}"))
    options = ("--url", schema, "--table-prefix", PREFIX)
    note = "{} of {} failed jobs shown (newest first); --limit N shows more"
    assert succeeded(run("failed", "--limit", "2", *options)).splitlines()[-1] == note.format(2, 3)
    listed = succeeded(run("failed", "--queue", "mail", "--limit", "1", *options)).splitlines()
    assert listed[-1] == note.format(1, 2)  # counted with the same filters
    assert "shows more" not in succeeded(run("failed", "--limit", "3", *options))
    assert "shows more" not in succeeded(run("failed", "--queue", "mail", *options))
    as_json = run("failed", "--limit", "2", "--json", *options)
    assert len(json.loads(succeeded(as_json))) == 2  # stdout stays JSON
    assert as_json.stderr == note.format(2, 3) + "\n"


def many_failures(app: dbqueue.App, number: int, queue: str = "bulk") -> list[dict[str, Any]]:
    """``number`` failed jobs written straight into failed_jobs (the quick way)."""
    now = app.store.now()
    made = [{"uuid": f"00000000-0000-4000-8000-{queue[:4]}{i:08d}", "job_id": i, "queue": queue,
             "job": f"tasks.job{i % 3}", "priority": i % 5 - 2,
             "payload": f'{{"args":[{i}],"kwargs":{{}}}}', "attempts": 3,
             "exception_class": "KeyError", "exception_message": "boom",
             "exception": "Traceback", "failed_at": now, "worker": "host:1"}
            for i in range(number)]
    app.store.transaction(
        lambda c: app.store.dialect.insert_many(c, app.store.tables.failed_jobs, made))
    return made


def test_retry_all_moves_many_in_chunks_and_reports_progress(app, schema):
    number = 2 * RETRY_CHUNK + RETRY_CHUNK // 2
    made = many_failures(app, number)
    result = run("retry", "--all", "--url", schema, "--table-prefix", PREFIX)
    assert succeeded(result) == f"Queued {number:,} failed job(s) again.\n"
    assert result.stderr.splitlines() == [f"retried {RETRY_CHUNK * n:,} of {number:,}"
                                          for n in (1, 2)]
    assert count(app, app.store.tables.failed_jobs) == 0
    queued = rows(app, app.store.tables.jobs)
    assert sorted((j.queue, j.job, j.payload, j.priority, j.attempts) for j in queued) == sorted(
        (f["queue"], f["job"], f["payload"], f["priority"], 0) for f in made)
    assert all(j.reserved_by is None and j.unique_key is None for j in queued)


def test_retry_of_a_queue_leaves_the_others_and_says_nothing_more_when_short(app, schema):
    many_failures(app, 3, queue="mail")
    many_failures(app, 2, queue="other")
    result = run("retry", "--queue", "mail", "--url", schema, "--table-prefix", PREFIX)
    assert succeeded(result) == "Queued 3 failed job(s) again.\n"
    assert result.stderr == ""  # one chunk: no progress to show
    assert [f.queue for f in rows(app, app.store.tables.failed_jobs)] == ["other", "other"]
    assert {j.queue for j in rows(app, app.store.tables.jobs)} == {"mail"}


def test_retry_of_a_job_name_takes_its_failures_alone_and_with_a_queue_both(app, schema):
    fail_jobs(app, ("mail", "tasks.send", "KeyError", "{}"), ("mail", "tasks.resize", "E", "{}"),
              ("other", "tasks.send", "KeyError", "{}"))
    options = ("--url", schema, "--table-prefix", PREFIX)
    # The function's name alone matches nothing, and is told the stored one.
    assert succeeded(run("retry", "--job", "send", *options)) == (
        "Queued 0 failed job(s) again.\n"
        "No failed job is named 'send'; did you mean 'tasks.send'?\n")
    assert succeeded(run("retry", "--queue", "other", "--job", "tasks.send", *options)) == (
        "Queued 1 failed job(s) again.\n")
    assert succeeded(run("retry", "--job", "tasks.send", *options)) == (
        "Queued 1 failed job(s) again.\n")
    assert [(f.queue, f.job) for f in rows(app, app.store.tables.failed_jobs)] == [
        ("mail", "tasks.resize")]
    assert sorted((j.queue, j.job) for j in rows(app, app.store.tables.jobs)) == [
        ("mail", "tasks.send"), ("other", "tasks.send")]
    both = run("retry", "--all", "--job", "tasks.resize", *options)
    assert both.exit_code == 2 and "(one of these)" in both.stderr


def test_a_job_failing_again_during_a_retry_stays_failed(app):
    many_failures(app, RETRY_CHUNK + 1)
    failed = app.store.tables.failed_jobs
    arrived: list[int] = []

    def fail_one_more(done: int, total: int) -> None:
        if not arrived:  # after the first chunk: a job fails while the retry runs
            (late,) = fail_jobs(app, ("late", "send", "KeyError", "{}"))[-1:]
            arrived.append(late.id)

    assert app.admin.retry(everything=True, progress=fail_one_more) == RETRY_CHUNK + 1
    assert [f.id for f in rows(app, failed)] == arrived
    assert count(app, app.store.tables.jobs) == RETRY_CHUNK + 1


def test_retry_shows_a_progress_bar_on_a_terminal(migrated_url):
    app = dbqueue.App(migrated_url)
    many_failures(app, 2 * RETRY_CHUNK)
    app.dispose()
    code, output = in_terminal("retry", "--all", env=bare_env(DBQUEUE_URL=migrated_url))
    assert code == 0, output
    assert "Retrying" in output and "100%" in output, output
    assert f"Queued {2 * RETRY_CHUNK:,} failed job(s) again." in output


# --- 7. queues that no worker serves --------------------------------------------------


def register(app: dbqueue.App, worker_id: str, queues: str) -> None:
    app.workers.register(WorkerInfo(id=worker_id, host="h", pid=1, queues=queues,
                                    concurrency=1))


def test_status_flags_ready_queues_that_no_live_worker_serves(app, schema):
    options = ("--url", schema, "--table-prefix", PREFIX)
    app.store.push_many([NewJob("mail", "send", "{}")] * 2 + [NewJob("default", "x", "{}")]
                        + [NewJob("later", "x", "{}", delay=600)])
    text = succeeded(run("status", *options))
    assert text.endswith(
        "\nQueue default has 1 ready job(s) and no worker serves it: start one with: "
        "dbqueue work --app MODULE:ATTR --queue default\n"
        "Queue mail has 2 ready job(s) and no worker serves it: start one with: "
        "dbqueue work --app MODULE:ATTR --queue mail\n"), text

    register(app, "w-default", "default,reports")
    text = succeeded(run("status", *options))
    assert text.endswith("\n\nQueue mail has 2 ready job(s) and no worker serves it: add it to "
                         "a worker's --queue (or --queue '*')\n"), text
    assert "Queue default" not in text and "Queue later" not in text  # served; not ready
    report = json.loads(succeeded(run("status", "--json", *options)))
    assert report["unserved"] == [{"queue": "mail", "ready": 2}]

    register(app, "w-every", "*")
    assert "no worker serves" not in succeeded(run("status", *options))
    report = json.loads(succeeded(run("status", "--json", *options)))
    assert report["unserved"] == []


def test_status_ignores_workers_that_are_no_longer_live(app, schema):
    app.store.push(NewJob("mail", "send", "{}"))
    register(app, "w-gone", "mail")
    workers = app.store.tables.queue_workers
    app.store.transaction(lambda c: c.execute(
        workers.update().values(last_seen_at=app.store.dialect.now_plus(-3600))))
    unserved = app.admin.unserved(seen_within=30)
    assert [(u.queue, u.ready) for u in unserved] == [("mail", 1)]


@pytest.mark.parametrize("ref", ["7", "0b8f1a9e-2c4d-4e6f-8a1b-3c5d7e9f0a2b"])
def test_a_failed_jobs_id_in_place_of_a_subcommand_names_failed_show(ref):
    result = run("failed", "--limit", "5", ref)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stdout == ""
    assert result.stderr.startswith("Usage: "), result.stderr
    assert result.stderr.endswith(
        f"\nError: No such command '{ref}'; to see failed job {ref}: "
        f"dbqueue failed show {ref}\n"), result.stderr
    assert run("failed", "seven").stderr.endswith("\nError: No such command 'seven'.\n")


@pytest.mark.parametrize("args, flags, group, command", [
    (["batches", "--json", "cancel", "some-id"], "--json", "batches", "batches cancel"),
    (["failed", "--queue", "mail", "show", "3"], "--queue", "failed", "failed show"),
    (["failed", "--limit", "2", "--job", "x", "show", "3"], "--limit and --job", "failed",
     "failed show"),
    (["locks", "--json", "release", "k"], "--json", "locks", "locks release"),
])
def test_a_listing_option_before_a_subcommand_that_ignores_it_is_refused(
        migrated_url, args, flags, group, command):
    # Dropped in silence, `failed --queue mail show 3` showed a job of another queue.
    result = run(*args, DBQUEUE_URL=migrated_url)
    assert result.exit_code == 2, (result.output, result.exception)
    is_are = "is an option" if " and " not in flags else "are options"
    assert result.stderr.splitlines()[-1] == (
        f"Error: {flags} {is_are} of 'dbqueue {group}' itself (its listing), "
        f"not of 'dbqueue {command}'")


@pytest.mark.parametrize("args, expected", [
    (["flush", "--hours", "nan"], "'--hours': must be a number of hours from 0 to 876,000 "
                                  "(a hundred years), not nan"),
    (["flush", "--hours", "1e400"], "not 1e400"),
    (["flush", "--hours", "soon"], "'--hours': 'soon' is not a number of hours"),
    (["outcomes", "prune", "--older-than", "inf"], "'--older-than': must be a number of days "
                                                   "from 0 to 36,500 (a hundred years), not inf"),
    (["batches", "prune", "--hours", "-1"], "'--hours': must be a number of hours"),
    (["failed", "--limit", "100000000000000000000"], "'--limit': 100000000000000000000 is not "
                                                      "in the range 1<=x<=2147483647"),
    (["outcomes", "--limit", "0"], "'--limit': 0 is not in the range"),
    (["batches", "--limit", "99999999999"], "'--limit': 99999999999 is not in the range"),
])
def test_ages_and_limits_out_of_range_are_usage_errors_before_any_query(
        migrated_url, args, expected):
    # Before: a traceback on SQLite (a LIMIT past 64 bits), "bigint out of range" or
    # a syntax error from the server; NaN hours deleted nothing on SQLite only.
    result = run(*args, DBQUEUE_URL=migrated_url)
    assert result.exit_code == 2, (result.output, result.exception)
    assert expected in result.stderr.splitlines()[-1], result.stderr


@pytest.mark.parametrize("args, expected", [
    (["batches", "3f2a1b2c-5d6e-4f70-8a9b-0c1d2e3f4a5b"],
     "to see batch 3f2a1b2c-5d6e-4f70-8a9b-0c1d2e3f4a5b: dbqueue batches show "
     "3f2a1b2c-5d6e-4f70-8a9b-0c1d2e3f4a5b"),
    (["outcomes", "charge:7"], "to see the outcome of charge:7: dbqueue outcomes show charge:7"),
    (["outcomes", "prnue"], "Did you mean 'prune'?"),  # a slip of a subcommand stays one
])
def test_an_id_where_a_subcommand_goes_names_the_show_command(args, expected):
    result = run(*args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.splitlines()[-1].endswith(expected), result.stderr


def test_completion_of_an_id_is_not_a_usage_error():
    result = CliRunner().invoke(cli, [], prog_name="dbqueue", env={
        "_DBQUEUE_COMPLETE": "bash_complete", "COMP_WORDS": "dbqueue batches 3f2a --",
        "COMP_CWORD": "3"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert "plain,--url" in result.output


def test_a_mistyped_command_is_answered_with_the_nearest_one():
    result = run("falied")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: No such command 'falied'; did you mean 'failed'?")
    assert run("zzz").stderr.splitlines()[-1] == "Error: No such command 'zzz'."


def test_a_misspelled_setting_in_the_environment_is_named_with_the_right_one(tmp_path):
    """Ignored in silence, DBQUEUE_TABLEPREFIX left the unprefixed tables in
    force, and the advice was to create them."""
    result = run("status", DBQUEUE_URL=f"sqlite:///{tmp_path}/q.db",
                 DBQUEUE_TABLEPREFIX="nu33_", DBQUEUE_SOMETHING_OF_MINE="1")
    assert result.stderr.splitlines()[0] == (
        "Warning: DBQUEUE_TABLEPREFIX is set, but dbqueue reads no such variable; did you "
        "mean DBQUEUE_TABLE_PREFIX? (it is ignored)")
    assert "DBQUEUE_SOMETHING_OF_MINE" not in result.stderr  # nothing like a setting of ours
    # Two letters swapped in a short name: too unlike by a ratio, a typo all the same.
    result = run("status", DBQUEUE_ULR=f"sqlite:///{tmp_path}/q.db", DBQUEUE_USER="me")
    assert result.stderr.splitlines()[0] == (
        "Warning: DBQUEUE_ULR is set, but dbqueue reads no such variable; did you "
        "mean DBQUEUE_URL? (it is ignored)")
    assert "DBQUEUE_USER" not in result.stderr


def test_a_bad_value_of_a_flag_set_in_the_environment_names_the_variable(tmp_path):
    result = run("work", "--app", "tests.jobapp:app", DBQUEUE_URL=f"sqlite:///{tmp_path}/q.db",
                 DBQUEUE_NO_SCHEDULE="banana")
    assert result.exit_code == 2
    assert ("Invalid value for '--no-schedule' (or DBQUEUE_NO_SCHEDULE): 'banana' is not a "
            "valid boolean") in result.stderr


@pytest.mark.parametrize("args", [["schedule", "list"], ["schedule", "run", "nightly"],
                                  ["work", "--stop-when-empty"]])
def test_a_command_that_needs_the_application_without_app_is_a_usage_error(args):
    """As with every command that needs it: exit code 2, the usage first."""
    result = run(*args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.startswith("Usage: ") and "with --app module:attr" in result.stderr
