"""What the worker says when the database goes away and comes back."""

from __future__ import annotations

import logging
import time

from dbqueue.errors import DatabaseUnavailable
from dbqueue.worker.health import Health

LOGGER = "dbqueue.worker"


def said(caplog) -> list[str]:
    return [record.getMessage().split(" (")[0] for record in caplog.records
            if record.levelno >= logging.WARNING]


def test_one_line_when_the_database_goes_and_one_when_it_is_back(caplog):
    caplog.set_level(logging.INFO, LOGGER)
    health = Health()
    health.failed("reserve jobs", DatabaseUnavailable("connection refused"))
    health.failed("record job outcomes", DatabaseUnavailable("connection refused"))
    assert health.failing
    health.succeeded()
    assert not health.failing
    assert said(caplog) == ["the database is unreachable",
                            "the database is reachable again, after 0.0 s"]


def test_a_call_begun_while_it_was_away_that_fails_after_it_is_back_is_old_news(caplog):
    """A connection attempt whose packets a dead network path lost fails
    after its timeout, though another call has seen the database back
    meanwhile: no second outage to report."""
    caplog.set_level(logging.INFO, LOGGER)
    health = Health()
    health.failed("reserve jobs", DatabaseUnavailable("timeout expired"))
    begun_while_away = time.monotonic()
    health.succeeded()
    caplog.clear()
    health.failed("reserve jobs", DatabaseUnavailable("timeout expired"),
                  began=begun_while_away)
    assert said(caplog) == []
    # Failing all the same: jobs are started with a lease margin for a
    # database that may be away.
    assert health.failing
    health.succeeded()
    assert said(caplog) == []
    # A call begun since it was back that fails is a new outage.
    health.failed("reserve jobs", DatabaseUnavailable("timeout expired"),
                  began=time.monotonic())
    assert said(caplog) == ["the database is unreachable"]
