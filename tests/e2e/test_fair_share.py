"""The fair share of a shared mailbox on the local stack (issue 20, item 5, "Done when"): with app B flooding the
mailbox it shares with app A, A's mail waits no longer than A's own share requires, and B's spreads over B's windows.

Time-scaled as the throttling tests are (tests/e2e/test_queue_semantics.py): the emulator's minute lasts
60 / SCALE seconds (`timeScale`) and the relay's MAILBOX_RATE_WINDOW_SECONDS is that same WINDOW, so the emulator
counts Exchange's 30 a minute over the window the relay paces by. The figures are printed for the closing note
(`pytest -s`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from azure.storage.queue import QueueClient

from devstack.stack import LocalStack
from shared.queues import encode
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

MAILBOX = "alerts@contoso.com"
SCALE = 6.0
WINDOW = 60 / SCALE  # 10 s: a scaled minute, long beside the queue's whole-second delays and polls
A_SHARE, B_SHARE = 10, 20  # 30 together: the mailbox's whole minute (the default outbox keeps none of it)
B_COUNT, A_COUNT = 60, 5  # B: three of its windows' worth; A: within its share


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    apps = [
        {"name": "billing", "senders": [MAILBOX], "messagesPerMinute": A_SHARE},  # A
        {"name": "bulk", "senders": [MAILBOX], "messagesPerMinute": B_SHARE},  # B
    ]
    settings = {"MAILBOX_RATE_WINDOW_SECONDS": f"{WINDOW:g}", "SEND_RETRY_BASE_SECONDS": "1"}
    with LocalStack(allowed_senders=(MAILBOX,), apps=apps, settings=settings) as running:
        running.emulator_post("throttling", {"timeScale": SCALE, "graphLatencySeconds": 0.05})
        yield running


def test_an_app_flooding_a_shared_mailbox_never_holds_the_other_apps_mail(stack: LocalStack) -> None:
    queues = {
        app: QueueClient.from_connection_string(stack.storage_connection_string, stack.app_queue(app))
        for app in ("billing", "bulk")
    }
    enqueued: dict[str, float] = {}

    def enqueue(app: str, i: int) -> None:
        subject = f"{app} {i:02d}"
        request = {
            "id": f"fair-{app}-{i}",
            "from": MAILBOX,
            "to": ["ada@contoso.com"],
            "subject": subject,
            "body": {"contentType": "text", "content": "fair share"},
            "saveToSentItems": False,
        }
        enqueued[subject] = time.time()
        queues[app].send_message(encode(request), time_to_live=-1)

    def sent() -> dict[str, float]:
        return {
            e["message"]["message"]["subject"]: datetime.fromisoformat(e["receivedAt"]).timestamp()
            for e in stack.emulator_get("outbox")
        }

    for i in range(B_COUNT):
        enqueue("bulk", i)
    # A enqueues once B has spent its share of the minute: the moment B's flood would have held A's mail.
    wait_for(lambda: len(sent()) >= B_SHARE, 3 * WINDOW, "B's share of the first window")
    for i in range(A_COUNT):
        enqueue("billing", i)
    wait_for(lambda: len(sent()) >= B_COUNT + A_COUNT, 6 * WINDOW + 30, "every request sent")
    time.sleep(0.5)
    at = sent()
    assert len(at) == len(stack.emulator_get("outbox")) == B_COUNT + A_COUNT  # each sent, and once

    waits = {app: [at[s] - enqueued[s] for s in at if s.startswith(app)] for app in ("billing", "bulk")}
    a_waits, b_waits = waits["billing"], waits["bulk"]
    b_times = sorted(at[s] for s in at if s.startswith("bulk"))
    a_times = sorted(at[s] for s in at if s.startswith("billing"))
    throttling = stack.emulator_get("throttling")
    print(
        f"\nfair share, window {WINDOW:g} s (a scaled minute), A share {A_SHARE}, B share {B_SHARE}:"
        f"\n  B: {B_COUNT} requests, waits enqueue to sent min {min(b_waits):.2f} s, median "
        f"{statistics.median(b_waits):.2f} s, max {max(b_waits):.2f} s; sends spread over "
        f"{b_times[-1] - b_times[0]:.2f} s ({(b_times[-1] - b_times[0]) / WINDOW:.2f} windows)"
        f"\n  A: {A_COUNT} requests enqueued after B's first {B_SHARE} were sent, waits min {min(a_waits):.2f} s, "
        f"median {statistics.median(a_waits):.2f} s, max {max(a_waits):.2f} s"
        f"\n  emulator: 429s {throttling['concurrency429'] + throttling['requests429']}, delayed over 30/min "
        f"{throttling['delayed']}, bounced {throttling['bounced']}"
    )

    # A's 5 are within its share of 10: its share requires no wait at all; what is measured is the queue's polling
    # and the send (about 1 s here). Held by B's flood, A would wait for B's minute to end: 8.8 to 9.3 s when this
    # test was run with the shares left out of the pacing (and that run failed here and below).
    assert max(a_waits) < WINDOW / 2, a_waits
    # B never had more than its share in any window (the relay counts from Graph's answer, after the emulator
    # received the call: in received times too, no window holds more than 20 of B's)...
    assert all(sum(1 for u in b_times if t - WINDOW < u <= t) <= B_SHARE for t in b_times)
    # ...so its 60 spread over more than two windows after its first send.
    assert b_times[-1] - b_times[0] > 2 * WINDOW
    # The mailbox's own limits held for both apps together: Exchange delayed nothing, Graph refused nothing.
    assert all(sum(1 for u in sorted(b_times + a_times) if t - WINDOW < u <= t) <= 30 for t in b_times + a_times)
    assert throttling["delayed"] == 0 and throttling["concurrency429"] == 0 and throttling["requests429"] == 0
