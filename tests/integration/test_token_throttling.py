"""MSAL's throttle cache against the emulator's Entra ID: a try MSAL answers without calling Entra spends no
retry, and a retry waits as long as MSAL keeps answering from that cache.

MSAL (msal/throttled_http_client.py) remembers a 429 or 5xx of the token endpoint for its Retry-After (5 s
without one, for a confidential client) and answers the same token request from memory until then. These
tests drive shared.delivery through the queue handlers with the real relay (MSAL, Key Vault, Graph against
the emulator) and in-memory storage; the retry queue is honoured in real time, as MSAL's cache runs on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from azure.functions.queue import QueueMessage

from devstack.emulator import Emulator
from shared.bootstrap import Runtime
from shared.handlers import handle_mail_message, handle_retry_message
from shared.status import DEAD_LETTERED, RETRYING, SENT, MemoryStatusStore, StatusKey, StatusRecord
from tests.fakes import FakeDeadLetters, FakeRequeue
from tests.integration.test_send_path import ALERTS
from tests.integration.test_send_path import stack as send_stack

pytestmark = pytest.mark.integration

stack = send_stack  # the same seeded emulator and runtime
MSAL_DEFAULT_SECONDS = 5  # msal/application.py: default_throttle_time for a ConfidentialClientApplication


@dataclass
class RealTimeRetries(FakeRequeue):
    """The retry queue: each message becomes visible `delay` real seconds after it was put."""

    pending: list[tuple[dict[str, Any], float]] = field(default_factory=list)

    def put(self, payload: dict[str, Any], delay_seconds: int) -> None:
        super().put(payload, delay_seconds)
        self.pending.append((payload, time.monotonic() + delay_seconds))


@dataclass
class Delivery:
    emu: Emulator
    rt: Runtime
    retries: RealTimeRetries
    dead: FakeDeadLetters
    status: MemoryStatusStore

    def outbox(self, request_id: str) -> None:
        body = {
            "id": request_id,
            "from": ALERTS,
            "to": ["ada@contoso.com"],
            "subject": f"Report {request_id}",
            "body": {"contentType": "text", "content": "the report"},
        }
        message = QueueMessage(id=f"q-{request_id}", body=json.dumps(body).encode(), dequeue_count=1, pop_receipt="p")
        handle_mail_message(message, self.rt)

    def run_retries(self) -> list[tuple[int, int]]:
        """Deliver each retry when the queue would show it; per retry, (its delay, token calls Entra saw before)."""
        seen: list[tuple[int, int]] = []
        while self.retries.pending:
            payload, due = min(self.retries.pending, key=lambda p: p[1])
            self.retries.pending.remove((payload, due))
            time.sleep(max(0.0, due - time.monotonic()))
            delay = next(d for p, d in self.retries.puts if p is payload)
            seen.append((delay, self.emu.stats.get("entra.token", 0)))
            message = QueueMessage(
                id=f"r-{len(seen)}", body=json.dumps(payload).encode(), dequeue_count=1, pop_receipt="p"
            )
            handle_retry_message(message, self.rt)
        return seen

    def record(self, request_id: str) -> StatusRecord:
        found = self.status.get(StatusKey(ALERTS, "id", request_id))
        assert found is not None
        return found


@pytest.fixture
def delivery(stack: tuple[Emulator, Runtime]) -> Iterator[Delivery]:
    emu, rt = stack
    retries, dead, status = RealTimeRetries(), FakeDeadLetters(), MemoryStatusStore()
    runtime = Runtime(
        settings=replace(rt.settings, max_attempts=3, retry_base_seconds=1.0),
        relay=rt.relay,
        dead_letters=dead,
        retries=retries,
        status=status,
    )
    yield Delivery(emu, runtime, retries, dead, status)


@pytest.mark.parametrize("retry_after", [2, None], ids=["Retry-After 2", "no Retry-After"])
def test_every_try_a_request_spends_reached_entra(delivery: Delivery, retry_after: int | None) -> None:
    # Entra answers 503 twice, then recovers: SEND_MAX_ATTEMPTS=3 is enough, if each try reaches Entra. A retry
    # after the relay's own backoff (SEND_RETRY_BASE_SECONDS=1) would come back inside MSAL's cache window and
    # be answered 503 from it, spending a try on a call Entra never saw.
    delivery.emu.add_fault("entra.token", 503, count=2, retry_after=retry_after)
    delivery.outbox("report-1")
    assert delivery.record("report-1").state == RETRYING
    retries = delivery.run_retries()

    held = retry_after or MSAL_DEFAULT_SECONDS
    assert [delay >= held for delay, _ in retries] == [True, True], retries  # no retry inside MSAL's window
    record = delivery.record("report-1")
    assert record.state == SENT and delivery.dead.envelopes == []
    # Two 503s and the token: each try counted against the budget is a call Entra answered.
    assert delivery.emu.stats["entra.token"] == record.attempts == 3
    assert delivery.emu.stats["graph.sendMail"] == 1


def test_a_try_msal_answers_from_its_cache_is_counted_throttled_and_spends_no_budget(delivery: Delivery) -> None:
    # One try each (SEND_MAX_ATTEMPTS=1): the first request meets Entra's 503 and is dead-lettered, its budget
    # spent on a real call. The second, at once, is answered the same 503 by MSAL without a call to Entra: that
    # try is not the request's, so it waits out MSAL's window and is sent.
    delivery.rt = replace(delivery.rt, settings=replace(delivery.rt.settings, max_attempts=1))
    delivery.emu.add_fault("entra.token", 503, count=1, retry_after=2)
    delivery.outbox("first")
    assert delivery.record("first").state == DEAD_LETTERED
    assert delivery.emu.stats["entra.token"] == 1

    delivery.outbox("second")
    assert delivery.emu.stats["entra.token"] == 1  # MSAL answered from its cache
    waiting = delivery.record("second")
    assert waiting.state == RETRYING and (waiting.attempts, waiting.throttled) == (1, 1), waiting
    ((delay, calls_before),) = delivery.run_retries()
    assert delay >= 2 and calls_before == 1

    record = delivery.record("second")
    assert record.state == SENT and (record.attempts, record.throttled) == (2, 1)
    assert delivery.emu.stats["entra.token"] == 2
    (dead,) = delivery.dead.envelopes
    assert dead["request"]["id"] == "first" and dead["error"]["code"] == "EntraUnavailable"
