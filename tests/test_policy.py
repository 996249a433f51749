"""The failure policy is pure: tested with a fixed clock and no database."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from dbqueue import ConfigurationError, Exponential
from dbqueue.policy import (
    Ended,
    GiveUp,
    Retry,
    Rules,
    backoff_delay,
    decide,
    refuse_attempt,
    validate_backoff,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_list_backoff_is_per_attempt_and_its_last_value_repeats():
    backoff = validate_backoff([5, 30, 120])
    delays = [backoff_delay(backoff, attempt) for attempt in (1, 2, 3, 4, 9)]
    assert delays == [5, 30, 120, 120, 120]


def test_exponential_backoff_grows_is_capped_and_jitters_within_half():
    plain = Exponential(base=2, factor=3, cap=100, jitter=False)
    assert [backoff_delay(plain, a) for a in (1, 2, 3, 4, 5)] == [2, 6, 18, 54, 100]
    jittered = Exponential(base=10, jitter=True)
    rng = random.Random(7)
    delays = [backoff_delay(jittered, 3, rng) for _ in range(200)]
    assert all(20 <= d <= 40 for d in delays) and len(set(delays)) > 100
    # A job retried for ever, or a count set by hand, reaches the cap, not an overflow.
    assert backoff_delay(plain, 2**31) == 100
    assert backoff_delay(Exponential(base=1, factor=10, cap=7, jitter=False), 1200) == 7


@pytest.mark.parametrize("bad", [-1, [], [1, -2], "10", True, {"a": 1}, float("nan"),
                                 float("inf"), [1, float("inf")],
                                 # No server could store when the retry is due:
                                 1e12, [5, 1e12]])
def test_bad_backoff_is_refused_with_a_clear_message(bad):
    with pytest.raises(ConfigurationError, match="backoff"):
        validate_backoff(bad)
    for made in (lambda: Exponential(cap=float("inf")), lambda: Exponential(cap=1e12),
                 lambda: Exponential(base=1e12)):
        with pytest.raises(ConfigurationError, match="finite numbers"):
            made()


def test_errors_retry_while_tries_remain_then_give_up():
    rules = Rules(tries=3, backoff=(10.0, 20.0))
    assert decide(Ended("error", 1), rules, NOW) == Retry(10.0)
    assert decide(Ended("timeout", 2), rules, NOW) == Retry(20.0)
    assert decide(Ended("crash", 3), rules, NOW) == GiveUp()


def test_release_never_counts_and_fail_or_permanent_give_up_at_once():
    rules = Rules(tries=1)
    assert decide(Ended("release", 1, delay=45), rules, NOW) == Retry(45, counts=False)
    assert decide(Ended("fail", 1), Rules(tries=9), NOW) == GiveUp()
    assert decide(Ended("permanent", 1), Rules(tries=9), NOW) == GiveUp()


def test_retry_until_forbids_an_attempt_that_would_start_after_it():
    rules = Rules(tries=None, backoff=100.0, deadline=NOW + timedelta(seconds=50))
    decision = decide(Ended("error", 1), rules, NOW)
    assert isinstance(decision, GiveUp) and "retry_until" in decision.why
    assert decide(Ended("error", 1), Rules(tries=None, backoff=10.0,
                                           deadline=NOW + timedelta(seconds=50)), NOW) == Retry(10)


def test_a_reserved_job_past_its_tries_or_deadline_is_refused():
    assert refuse_attempt(2, Rules(tries=2), NOW) is None
    assert "tries=2" in refuse_attempt(3, Rules(tries=2), NOW)
    assert refuse_attempt(1, Rules(tries=None, deadline=NOW - timedelta(seconds=1)), NOW)
    assert refuse_attempt(50, Rules(tries=None), NOW) is None


def test_a_failure_text_is_cut_once_and_says_how_much() -> None:
    """The child cuts a message, the worker adds why it is not retried, and the
    store cuts what reaches it: a message cut once is not cut again."""
    from dbqueue.policy.texts import shortened_message, shortened_traceback

    cut = shortened_message("z" * 3_000_000)
    assert cut == "z" * 10_000 + "… [2,990,000 more characters cut]"
    reasoned = cut + " (no retry after retry_until (3,600 s after dispatch))"
    assert shortened_message(reasoned) == reasoned
    assert shortened_message("é" * 20_000).endswith("é… [10,000 more characters cut]")
    traceback = shortened_traceback("T" + "x" * 300_000 + "E")
    assert traceback.startswith("Tx") and traceback.endswith("xE")
    assert "\n… [200,002 characters cut] …\n" in traceback
    assert shortened_traceback(traceback) == traceback


def test_close_names_finds_a_slip_or_the_same_function_by_another_path() -> None:
    from dbqueue.policy.names import close_names

    names = ["app.jobs.send_email", "app.jobs.resize", "reports"]
    assert close_names("reprots", names) == ["reports"]
    assert close_names("reports", names) == []  # an exact name needs no hint
    assert close_names("send_email", names) == []  # the last part only when dotted
    assert close_names("send_email", names, dotted=True) == ["app.jobs.send_email"]
    assert close_names("jobs.send_email", names, dotted=True) == ["app.jobs.send_email"]
    assert close_names("billing", names, dotted=True) == []
    # A module part typed counts: a slip in the function's name keeps to its module.
    assert close_names("tasks.ad", ["tasks.add", "billing.add"], dotted=True) == ["tasks.add"]
