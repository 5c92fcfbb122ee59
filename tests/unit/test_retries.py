"""Retries: the relay-internal queue's wrapper, full-jitter backoff, Retry-After, and the retry budget. No I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.retries import (
    MAX_VISIBILITY_SECONDS,
    MalformedWrapper,
    RetryPolicy,
    budget_spent,
    is_wrapper,
    unwrap,
    wrap,
)
from shared.settings import SettingsError, load_settings
from tests.unit.test_settings import GOOD, env

T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
REQUEST: dict[str, Any] = {
    "from": "alerts@contoso.com",
    "to": ["ops@contoso.com"],
    "subject": "Backup done",
    "body": {"contentType": "text", "content": "body text 99"},
}


# --- The wrapper ---------------------------------------------------------------------------------


def test_wrapper_round_trips_the_request_and_its_origin_and_nothing_else() -> None:
    wrapped = wrap(REQUEST, "orig-1", "retrying")
    assert wrapped == {"$retry": {"originalMessageId": "orig-1", "reason": "retrying"}, "request": REQUEST}
    unwrapped = unwrap(json.dumps(wrapped).encode())
    assert json.loads(unwrapped.body) == REQUEST
    assert (unwrapped.original_message_id, unwrapped.reason, unwrapped.stored) == ("orig-1", "retrying", None)


def test_only_a_top_level_retry_key_makes_a_wrapper() -> None:
    assert is_wrapper(json.dumps(wrap(REQUEST, "m", "r")).encode())
    assert not is_wrapper(json.dumps({**REQUEST, "subject": 'mentions "$retry" in the text'}).encode())
    assert not is_wrapper(b'["$retry"]') and not is_wrapper(b'{"$retry": ')


@pytest.mark.parametrize(
    "payload",
    [
        {"$retry": {}},  # no request
        {"$retry": {}, "request": REQUEST, "x": 1},
        {"$retry": "3", "request": REQUEST},
        {"$retry": {"originalMessageId": 7}, "request": REQUEST},
        {"$retry": {"originalMessageId": "o" * 129}, "request": REQUEST},
        {"request": REQUEST},
        ["$retry"],
    ],
)
def test_a_malformed_wrapper_is_refused(payload: Any) -> None:
    with pytest.raises(MalformedWrapper):
        unwrap(json.dumps(payload).encode())


def test_text_that_is_no_json_is_no_wrapper() -> None:
    with pytest.raises(MalformedWrapper):
        unwrap(b"\xff not json")


# --- Backoff and Retry-After ---------------------------------------------------------------------


def test_backoff_is_full_jitter_over_an_exponential_window_capped_at_an_hour() -> None:
    policy = RetryPolicy(base_delay=30)
    assert [policy.backoff(n, lambda: 1.0) for n in (1, 2, 3, 4)] == [30, 60, 120, 240]
    assert policy.backoff(8, lambda: 1.0) == 3600  # 30 * 2^7 = 3840, capped
    assert policy.backoff(500, lambda: 1.0) == 3600  # no overflow
    assert policy.backoff(5, lambda: 0.0) == 0  # full jitter: anywhere from zero
    assert policy.backoff(5, lambda: 0.5) == 240


def test_delay_honours_retry_after_as_a_floor_and_rounds_up() -> None:
    policy = RetryPolicy(base_delay=30)
    assert policy.delay(1, retry_after=120, rand=lambda: 1.0) == 120  # Retry-After beats 30 s of backoff
    assert policy.delay(1, retry_after=1.2, rand=lambda: 0.0) == 2  # never undercut
    assert policy.delay(3, retry_after=5, rand=lambda: 1.0) == 120  # the backoff beats a short Retry-After
    assert policy.delay(3, retry_after=None, rand=lambda: 0.5) == 60


def test_delay_stays_within_azures_seven_day_visibility_limit() -> None:
    assert RetryPolicy().delay(1, retry_after=30 * 24 * 3600, rand=lambda: 0.0) == MAX_VISIBILITY_SECONDS
    assert MAX_VISIBILITY_SECONDS < 7 * 24 * 3600


# --- The budget ----------------------------------------------------------------------------------


def test_the_budget_is_spent_when_the_attempts_reach_it() -> None:
    policy = RetryPolicy(max_attempts=8)
    assert budget_spent(policy, 7, T0, T0) is None
    assert budget_spent(policy, 8, T0, T0) == "gave up after 8 attempts (SEND_MAX_ATTEMPTS=8)"


def test_the_budget_is_spent_when_the_request_is_too_old() -> None:
    policy = RetryPolicy(max_attempts=100, max_age=timedelta(hours=24))
    assert budget_spent(policy, 2, T0, T0 + timedelta(hours=23, minutes=59)) is None
    reason = budget_spent(policy, 2, T0, T0 + timedelta(hours=24))
    assert reason is not None and "24 hours" in reason


def test_a_budget_of_one_never_retries() -> None:
    assert budget_spent(RetryPolicy(max_attempts=1), 1, T0, T0) is not None


# --- Settings ------------------------------------------------------------------------------------


def test_budget_settings_default_and_parse() -> None:
    s = load_settings(GOOD)
    assert (s.max_attempts, s.max_age_hours, s.retry_base_seconds) == (8, 24.0, 30.0)
    s = load_settings(env(SEND_MAX_ATTEMPTS="3", SEND_MAX_AGE_HOURS="0.5", SEND_RETRY_BASE_SECONDS="0.2"))
    assert s.retry_policy == RetryPolicy(max_attempts=3, max_age=timedelta(minutes=30), base_delay=0.2)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEND_MAX_ATTEMPTS", "0"),
        ("SEND_MAX_ATTEMPTS", "many"),
        ("SEND_MAX_ATTEMPTS", "2.5"),
        ("SEND_MAX_AGE_HOURS", "-1"),
        ("SEND_MAX_AGE_HOURS", "200"),
        ("SEND_RETRY_BASE_SECONDS", "soon"),
    ],
)
def test_bad_budget_settings_are_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"Setting {name} must be"):
        load_settings(env(**{name: value}))


