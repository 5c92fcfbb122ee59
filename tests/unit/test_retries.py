"""Transient failures: the retry wrapper, full-jitter backoff, Retry-After, and the retry budget. No I/O."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.functions.queue import QueueMessage

from shared import bootstrap
from shared.bootstrap import Runtime
from shared.handlers import handle_mail_message
from shared.ledger import MemoryLedger
from shared.retries import (
    MAX_VISIBILITY_SECONDS,
    GiveUp,
    MalformedWrapper,
    Retry,
    RetryPolicy,
    RetryState,
    after_transient,
    unwrap,
    wrap,
)
from shared.sending import Relay
from shared.settings import SettingsError, load_settings
from tests.fakes import FakeDeadLetters, FakeGraph, FakeRequeue, FakeTokens, graph_error
from tests.unit.test_settings import GOOD, env

T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
REQUEST: dict[str, Any] = {
    "from": "alerts@contoso.com",
    "to": ["ops@contoso.com"],
    "subject": "Backup done",
    "body": {"contentType": "text", "content": "body text 99"},
}
THROTTLED = {"code": "ApplicationThrottled", "message": "slow down"}


def state(attempts: int, first: datetime = T0, original: str | None = "orig-1") -> RetryState:
    return RetryState(attempts=attempts, first_attempt_at=first, original_message_id=original, last_error=THROTTLED)


# --- The wrapper ---------------------------------------------------------------------------------


def test_wrapper_round_trips_the_request_and_its_state() -> None:
    wrapped = wrap(REQUEST, state(3))
    assert set(wrapped) == {"$retry", "request"}
    assert wrapped["$retry"] == {
        "attempts": 3,
        "firstAttemptAt": "2025-03-01T10:00:00Z",
        "originalMessageId": "orig-1",
        "lastError": THROTTLED,
    }
    delivery = unwrap(json.dumps(wrapped).encode())
    assert json.loads(delivery.body) == REQUEST
    assert delivery.state == state(3)


def test_a_plain_request_is_a_first_delivery_byte_for_byte() -> None:
    raw = json.dumps({**REQUEST, "subject": 'mentions "$retry" in the text'}).encode()
    delivery = unwrap(raw)
    assert delivery.body == raw and delivery.state is None


@pytest.mark.parametrize(
    "payload",
    [
        {"$retry": {"attempts": 1, "firstAttemptAt": "2025-03-01T10:00:00Z"}},  # no request
        {"$retry": {"attempts": 1, "firstAttemptAt": "2025-03-01T10:00:00Z"}, "request": REQUEST, "x": 1},
        {"$retry": "3", "request": REQUEST},
        {"$retry": {"attempts": 0, "firstAttemptAt": "2025-03-01T10:00:00Z"}, "request": REQUEST},
        {"$retry": {"attempts": True, "firstAttemptAt": "2025-03-01T10:00:00Z"}, "request": REQUEST},
        {"$retry": {"attempts": 1, "firstAttemptAt": "yesterday"}, "request": REQUEST},
    ],
)
def test_a_malformed_wrapper_is_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(MalformedWrapper):
        unwrap(json.dumps(payload).encode())


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


def test_first_transient_failure_starts_the_state() -> None:
    decision = after_transient(
        RetryPolicy(), None, attempts_now=1, message_id="m1", error=THROTTLED, retry_after=7, now=T0, rand=lambda: 0
    )
    assert decision == Retry(RetryState(1, T0, "m1", THROTTLED), delay=7)


def test_later_failures_keep_the_first_time_and_original_id() -> None:
    later = T0 + timedelta(minutes=5)
    decision = after_transient(
        RetryPolicy(), state(2), attempts_now=1, message_id="m9", error=THROTTLED, retry_after=None, now=later
    )
    assert isinstance(decision, Retry)
    assert decision.state.attempts == 3
    assert decision.state.first_attempt_at == T0 and decision.state.original_message_id == "orig-1"


def test_a_crashed_delivery_counts_as_an_attempt() -> None:
    decision = after_transient(
        RetryPolicy(), state(2), attempts_now=2, message_id="m9", error=THROTTLED, retry_after=None, now=T0
    )
    assert isinstance(decision, Retry) and decision.state.attempts == 4


def test_gives_up_when_the_attempts_reach_the_budget() -> None:
    policy = RetryPolicy(max_attempts=8)
    assert isinstance(
        after_transient(policy, state(6), attempts_now=1, message_id="m", error=THROTTLED, retry_after=None, now=T0),
        Retry,
    )
    decision = after_transient(
        policy, state(7), attempts_now=1, message_id="m", error=THROTTLED, retry_after=None, now=T0
    )
    assert decision == GiveUp(8, "gave up after 8 attempts (SEND_MAX_ATTEMPTS=8)")


def test_gives_up_when_the_request_is_too_old() -> None:
    policy = RetryPolicy(max_attempts=100, max_age=timedelta(hours=24))
    decision = after_transient(
        policy,
        state(2),
        attempts_now=1,
        message_id="m",
        error=THROTTLED,
        retry_after=None,
        now=T0 + timedelta(hours=24),
    )
    assert isinstance(decision, GiveUp) and "24 hours" in decision.reason


def test_a_budget_of_one_never_retries() -> None:
    decision = after_transient(
        RetryPolicy(max_attempts=1), None, attempts_now=1, message_id="m", error=THROTTLED, retry_after=None
    )
    assert isinstance(decision, GiveUp) and decision.attempts == 1


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


# --- The handler: re-queue, then give up ---------------------------------------------------------


@pytest.fixture
def rt() -> Iterator[Runtime]:
    relay = Relay(allowed_senders=frozenset({"alerts@contoso.com"}), tokens=FakeTokens(), graph=FakeGraph())
    settings = load_settings(env(SEND_MAX_ATTEMPTS="3"))
    yield Runtime(
        settings=settings, relay=relay, dead_letters=FakeDeadLetters(), requeue=FakeRequeue(), ledger=MemoryLedger()
    )
    bootstrap.reset()


def deliver(rt: Runtime, payload: dict[str, Any], msg_id: str, dequeue_count: int = 1) -> None:
    msg = QueueMessage(id=msg_id, body=json.dumps(payload).encode(), dequeue_count=dequeue_count, pop_receipt="p")
    handle_mail_message(msg, rt)


def parts(rt: Runtime) -> tuple[FakeGraph, FakeDeadLetters, FakeRequeue]:
    graph, dead, requeue = rt.relay._graph, rt.dead_letters, rt.requeue
    assert isinstance(graph, FakeGraph) and isinstance(dead, FakeDeadLetters) and isinstance(requeue, FakeRequeue)
    return graph, dead, requeue


def test_throttled_request_is_requeued_until_the_budget_then_dead_lettered_with_the_original(rt: Runtime) -> None:
    graph, dead, requeue = parts(rt)
    graph.replies.extend([graph_error(429, "ApplicationThrottled", "slow down", retry_after="2")] * 3)
    deliver(rt, REQUEST, "m1")
    for n in (2, 3):
        payload, _ = requeue.puts[-1]
        deliver(rt, payload, f"m{n}")  # the re-queued copy is a new queue message
    assert [p["$retry"]["attempts"] for p, _ in requeue.puts] == [1, 2]
    assert all(p["$retry"]["originalMessageId"] == "m1" for p, _ in requeue.puts)
    assert all(delay >= 2 for _, delay in requeue.puts)
    (envelope,) = dead.envelopes
    assert envelope["request"] == REQUEST  # the request as received, not the wrapper
    assert envelope["attempts"] == 3
    assert envelope["error"]["code"] == "ApplicationThrottled" and "SEND_MAX_ATTEMPTS" in envelope["error"]["message"]
    assert len(graph.calls) == 3


def test_permanent_failure_on_a_retry_counts_every_attempt(rt: Runtime) -> None:
    graph, dead, _ = parts(rt)
    graph.replies.append(graph_error(403, "ErrorAccessDenied", "Access is denied."))
    deliver(rt, wrap(REQUEST, state(2)), "m5")
    (envelope,) = dead.envelopes
    assert envelope["attempts"] == 3 and envelope["request"] == REQUEST


def test_a_malformed_wrapper_is_dead_lettered_without_calling_graph(rt: Runtime) -> None:
    graph, dead, requeue = parts(rt)
    deliver(rt, {"$retry": {"attempts": "x"}, "request": REQUEST}, "m1")
    (envelope,) = dead.envelopes
    assert envelope["error"]["code"] == "InvalidRequest" and "$retry" in envelope["error"]["message"]
    assert graph.calls == [] and requeue.puts == []


def test_a_retry_that_succeeds_is_sent_once_and_recorded_under_the_original_id(rt: Runtime) -> None:
    graph, dead, requeue = parts(rt)
    graph.replies.append(graph_error(503, "ServiceUnavailable", "busy"))
    deliver(rt, REQUEST, "m1")
    payload, _ = requeue.puts[0]
    deliver(rt, payload, "m2")
    assert len(graph.calls) == 2 and dead.envelopes == []
    assert rt.ledger.lookup("msg:m1")
    # The original, redelivered after a crash between re-queue and completion, is not sent again.
    deliver(rt, REQUEST, "m1", dequeue_count=2)
    assert len(graph.calls) == 2
