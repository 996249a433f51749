"""An application that connects at import, as a tutorial's ``create_all`` does:
in every process that imports it, the worker's fork server included, its
engine's pool holds a connection. ``whose_session`` appends the child's pid
and its server session's id to $DBQUEUE_TEST_MARKERS/sessions, then waits
(holding the connection) until two children have written theirs."""

import os
import time

import sqlalchemy as sa

import dbqueue

app = dbqueue.App()

_url = sa.make_url(os.environ["DBQUEUE_URL"])
_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql",
            "mariadb": "mysql+pymysql"}
# pool_pre_ping, as often advised for MySQL: a child would ping an inherited
# connection before any checkout hook could set it aside.
engine = sa.create_engine(_url.set(drivername=_DRIVERS[_url.get_backend_name()]),
                          pool_pre_ping=True)
_SESSION_ID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
with engine.connect() as _connection:  # the import-time query; back to the pool
    _connection.execute(sa.text("SELECT 1"))


@app.job(name="whose_session")
def whose_session() -> None:
    path = os.path.join(os.environ["DBQUEUE_TEST_MARKERS"], "sessions")
    with engine.connect() as connection:
        session = connection.execute(sa.text(_SESSION_ID[engine.dialect.name])).scalar_one()
        with open(path, "a") as sessions:
            sessions.write(f"{os.getpid()} {session}\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # both jobs hold their connection at once
            with open(path) as sessions:
                if len(sessions.readlines()) >= 2:
                    break
            time.sleep(0.01)
        connection.execute(sa.text("SELECT 1"))  # on a shared socket, answers would cross


# A connection left checked out at import (a module-level Session, say): no job
# may use it, as every child would share it.
held = engine.connect()
held.execute(sa.text("SELECT 1"))


@app.job(name="on_held_connection")
def on_held_connection() -> None:
    held.execute(sa.text("SELECT 1"))
