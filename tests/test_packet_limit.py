"""A bulk enqueue on a MySQL server whose max_allowed_packet is small: each
multi-row INSERT stays under the limit, so every job is queued.

The test starts a MariaDB server of its own (scripts/chaos_servers.py, on a
spare port under a temporary directory), as the limit is the server's: a
session cannot change it, and the shared server is never touched.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import dbqueue
from tests.conftest import IN_CI, PREFIX, ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from chaos_servers import MariaDB

pytestmark = pytest.mark.slow

LIMIT = 1_048_576  # 1 MB: the least a server takes is 1 KB; MariaDB's default is 16 MB


@pytest.fixture(scope="module")
def small_packets() -> Iterator[str]:
    if not MariaDB.installed():
        if IN_CI:
            pytest.fail("MariaDB's server programs are not installed (CI=true)")
        pytest.skip("MariaDB's server programs are not installed")
    root = Path(tempfile.mkdtemp(prefix="dbqueue-packet-"))
    own = None
    try:
        own = MariaDB(root / "mariadb")
        own._sql(f"SET GLOBAL max_allowed_packet = {LIMIT}")  # for the sessions to come
        yield own.database("packets")
    finally:
        if own is not None:
            own.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def app(small_packets: str) -> Iterator[dbqueue.App]:
    made = dbqueue.App(small_packets, table_prefix=PREFIX)
    made.migrate()
    yield made
    made.dispose()


def test_a_bulk_enqueue_is_split_under_the_servers_packet_limit(app: dbqueue.App) -> None:
    @app.job(name="store")
    def store(text: str) -> None:
        pass

    statements: list[int] = []
    sa.event.listen(app.engine, "before_cursor_execute",
                    lambda _c, _cursor, text, *_: statements.append(len(text.encode())))
    # Each under the size dbqueue measures alone, all of them together three
    # times the limit; in two alphabets, as a character may take more than a byte.
    texts = ["a" * 60_000, "é" * 30_000, "'" * 30_000] * 18
    queued = app.dispatch_many([store.prepare(text) for text in texts])

    assert queued == len(texts)
    with app.engine.connect() as connection:
        stored = connection.execute(sa.select(app.store.tables.jobs.c.payload)
                                    .order_by(app.store.tables.jobs.c.id)).scalars().all()
    assert [json.loads(payload)["args"] for payload in stored] == [[text] for text in texts]
    inserts = [size for size in statements if size > 10_000]
    assert len(inserts) > 3 and max(inserts) < LIMIT

