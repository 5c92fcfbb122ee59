"""Scheduled sends on the local stack (issue 21, first-hour defects): `mailrelay send --send-at` enqueues at once, so
the relay records the request `scheduled` right away (status shows it, with notBefore) and an app's maxScheduled
counts it. A request enqueued hidden until its time, as clients did before, is still sent at its time."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from devstack.stack import LocalStack
from shared.cli import main
from shared.queues import encode
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

ALERTS = "alerts@contoso.com"  # the outbox's (the default app's) sender
BILLING = "billing@contoso.com"  # app billing's, which may hold one scheduled request at a time
WAIT = 30.0


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    apps = [{"name": "billing", "senders": [BILLING], "maxScheduled": 1}]
    with LocalStack(allowed_senders=(ALERTS,), apps=apps, lease_seconds=5) as running:
        yield running


def conn(stack: LocalStack) -> list[str]:
    return ["--connection-string", stack.storage_connection_string, "--queue", stack.queue_name]


def status_of(stack: LocalStack, capsys: pytest.CaptureFixture[str], key: str, *extra: str) -> dict[str, Any] | None:
    code = main(["status", key, "--json", *extra, *conn(stack)])
    out = capsys.readouterr().out
    return json.loads(out) if code == 0 else None


def test_send_at_is_confirmed_and_status_shows_it_scheduled_with_its_time(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    utc = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    when = (utc + timedelta(hours=1)).replace(tzinfo=None).isoformat() + "+01:00"  # the same moment at +01:00
    subject = f"later {uuid.uuid4().hex[:8]}"
    argv = ["send", *conn(stack), "--from", ALERTS, "--to", "ada@contoso.com", "--subject", subject, "--text", "t"]
    assert main([*argv, "--send-at", when]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert f"scheduled for {utc:%Y-%m-%d %H:%M:%S} UTC" in err and f"mailrelay status {key} --from {ALERTS}" in err

    records: list[dict[str, Any]] = []

    def scheduled() -> bool:
        record = status_of(stack, capsys, key)
        records[:] = [record] if record else []
        return record is not None and record["state"] == "scheduled"

    # Minutes before its time: the relay has it (before issue 21, "no record" until then).
    wait_for(scheduled, WAIT, "the record scheduled")
    [record] = records
    assert datetime.fromisoformat(record["notBefore"].replace("Z", "+00:00")) == utc
    assert record["sender"] == ALERTS and record["attempts"] == 0
    assert subject not in json.dumps(stack.emulator_get("outbox"))  # held, not sent


def test_an_apps_max_scheduled_counts_a_request_enqueued_by_the_client(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hidden until its time, a request was not counted until then: an app could hold any number. Visible, the
    first is recorded scheduled at once, and the second, over the app's maxScheduled of 1, is refused."""
    when = (datetime.now(UTC) + timedelta(minutes=20)).isoformat()
    first, second = (f"cap-{uuid.uuid4().hex[:8]}" for _ in range(2))
    subject = "over the cap"
    argv = ["send", *conn(stack), "--app", "billing", "--from", BILLING, "--to", "ada@contoso.com", "--text", "t"]
    assert main([*argv, "--subject", subject, "--send-at", when, "--id", first]) == 0
    wait_for(
        lambda: (r := status_of(stack, capsys, first, "--app", "billing")) is not None and r["state"] == "scheduled",
        WAIT,
        "the first request scheduled",
    )
    assert main([*argv, "--subject", subject, "--send-at", when, "--id", second]) == 0
    capsys.readouterr()

    def refused() -> list[dict[str, Any]]:
        assert main(["dead-letters", "list", "--json", *conn(stack)]) == 0
        return [d for d in json.loads(capsys.readouterr().out) if d["request"].get("id") == second]

    wait_for(lambda: refused() != [], WAIT, "the second request dead-lettered")
    [letter] = refused()
    assert letter["error"]["code"] == "ScheduleLimitReached" and letter["app"] == "billing"


def test_a_request_an_older_client_enqueued_hidden_until_its_time_is_sent_then(stack: LocalStack) -> None:
    subject = f"hidden {uuid.uuid4().hex[:8]}"
    when = datetime.now(UTC) + timedelta(seconds=3)
    request = {
        "from": ALERTS,
        "to": ["ada@contoso.com"],
        "subject": subject,
        "body": {"contentType": "text", "content": "t"},
        "sendAt": when.isoformat(),
    }
    queue = QueueClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
    queue.send_message(encode(request), visibility_timeout=3, time_to_live=-1)  # as the client did before issue 21

    def sent() -> bool:
        return any(e["message"]["message"]["subject"] == subject for e in stack.emulator_get("outbox"))

    wait_for(sent, WAIT, "the hidden request sent at its time")
    assert datetime.now(UTC) >= when
