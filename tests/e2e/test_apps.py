"""Apps as principals on the local stack (issue 20, slice 1): one stack, two apps sharing a mailbox, the outbox
still the default app. Each app enqueues on its own queue (LocalStack(apps=...), `mailrelay send --app`,
MailClient(app=...)); the relay knows the app from the queue alone.

- an app sending as another app's sender is dead-lettered SenderNotAllowedForApp, and Graph is never called;
- an app can neither squat another's id (same mailbox, same id, other content: both delivered) nor block it (the
  same id scheduled 6 days ahead: the other app's request sent now is delivered);
- a retry (a 429 from Graph) is delivered as its app; a dead letter requeued goes back to its app's queue;
- the outbox is still the default app, sending as any allowed sender.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient
from mailrelay_client import MailClient

from devstack.stack import LocalStack, start_console
from shared.apps import status_table
from shared.cli import main
from shared.deadletters import DeadLetter, open_queues
from shared.queues import encode
from shared.status import SENT, TABLE_NAME, AppStatusStore, StatusKey, StatusRecord, TableStatusStore
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

SHARED = "orders@contoso.com"  # both apps may send as it
BILLING = "billing@contoso.com"  # app billing's alone
BILLING_OUTSIDE = "billing-archive@contoso.com"  # app billing's, outside the Exchange scope until the test fixes it
ALERTS = "alerts@contoso.com"  # on ALLOWED_SENDERS, no app's: only the outbox (the default app) sends as it
APPS = [
    {"name": "billing", "senders": [SHARED, BILLING, BILLING_OUTSIDE]},  # app A
    {"name": "bulk", "senders": [SHARED]},  # app B
]
WAIT = 30.0


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    settings = {"SEND_RETRY_BASE_SECONDS": "1"}
    with LocalStack(
        allowed_senders=(ALERTS,), mailboxes=[BILLING_OUTSIDE], apps=APPS, settings=settings, lease_seconds=5
    ) as running:
        yield running


@pytest.fixture(scope="module")
def status(stack: LocalStack) -> AppStatusStore:
    """The records as the relay routes them: the outbox's in mailstatus, each app's in its own table."""

    def table(name: str) -> TableStatusStore:
        return TableStatusStore(TableClient.from_connection_string(stack.storage_connection_string, name))

    return AppStatusStore(table(TABLE_NAME), {a["name"]: table(status_table(a["name"])) for a in APPS})


def request(sender: str, subject: str, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "from": sender,
        "to": ["ada@contoso.com"],
        "subject": subject,
        "body": {"contentType": "text", "content": f"body of {subject}"},
        **({"id": request_id} if request_id else {}),
        **extra,
    }


def client(stack: LocalStack, app: str | None = None) -> MailClient:
    return MailClient.from_connection_string(stack.storage_connection_string, stack.queue_name, app=app)


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def subjects_sent(stack: LocalStack) -> list[str]:
    return [str(entry["message"]["message"]["subject"]) for entry in stack.emulator_get("outbox")]


def send_mail_calls(stack: LocalStack) -> int:
    return int(stack.emulator_get("stats").get("graph.sendMail", 0))


def dead_letters(stack: LocalStack) -> list[DeadLetter]:
    return open_queues(stack.queue_name, connection_string=stack.storage_connection_string).scan()


def dead_letter_of(stack: LocalStack, request_id: str) -> DeadLetter | None:
    return next((d for d in dead_letters(stack) if d.matches(request_id)), None)


def sent_record(status: AppStatusStore, key: StatusKey) -> StatusRecord | None:
    record = status.get(key)
    return record if record is not None and record.state == SENT else None


def test_the_host_listens_on_each_declared_apps_queue(stack: LocalStack) -> None:
    log = stack.log_tail("host", 200)
    for app, queue in (("billing", "mail-outbox-billing"), ("bulk", "mail-outbox-bulk"), ("default", "mail-outbox")):
        function = "send_mail" if app == "default" else f"send_mail_{app}"
        assert f"polling queue {queue} for function {function}\n" in log + "\n", log
    assert stack.state()["apps"] == [
        {"name": "billing", "queue": "mail-outbox-billing", "senders": [SHARED, BILLING, BILLING_OUTSIDE]},
        {"name": "bulk", "queue": "mail-outbox-bulk", "senders": [SHARED]},
    ]
    assert json.loads(stack.host_settings()["MAILRELAY_APPS"]) == APPS


def test_an_app_sending_as_another_apps_sender_is_dead_lettered_and_graph_is_never_called(
    stack: LocalStack, status: AppStatusStore, capsys: pytest.CaptureFixture[str]
) -> None:
    request_id, subject = unique("not-mine"), unique("bulk as billing")
    calls = send_mail_calls(stack)
    client(stack, "bulk").send(request(BILLING, subject, request_id))
    wait_for(lambda: dead_letter_of(stack, request_id) is not None, WAIT, "bulk's request dead-lettered")
    letter = dead_letter_of(stack, request_id)
    assert letter is not None and (letter.code, letter.app, letter.sender) == (
        "SenderNotAllowedForApp",
        "bulk",
        BILLING,
    )
    assert "app 'bulk' may not send as billing@contoso.com" in letter.message
    assert "MAILRELAY_APPS" in letter.hint
    # Before any state and before Graph: no status record of any app, not one call to sendMail, nothing sent.
    assert status.find(request_id) == []
    assert send_mail_calls(stack) == calls and subject not in subjects_sent(stack)
    # The operator sees whose it was.
    conn = ["--connection-string", stack.storage_connection_string, "--queue", stack.queue_name]
    assert main(["dead-letters", "show", request_id, "--json", *conn]) == 0
    assert json.loads(capsys.readouterr().out)["app"] == "bulk"


def test_an_app_cannot_squat_another_apps_id_on_a_shared_mailbox(stack: LocalStack, status: AppStatusStore) -> None:
    request_id = unique("order")
    squat, own = unique("bulk squats"), unique("billing's own")
    # B sends A's id first, as the mailbox they share, with other content; then A sends its request.
    client(stack, "bulk").send(request(SHARED, squat, request_id))
    bulk_key = StatusKey.of(SHARED, request_id, None, "bulk")
    wait_for(lambda: sent_record(status, bulk_key) is not None, WAIT, "bulk's request sent")
    client(stack, "billing").send(request(SHARED, own, request_id))
    billing_key = StatusKey.of(SHARED, request_id, None, "billing")
    wait_for(lambda: sent_record(status, billing_key) is not None, WAIT, "billing's request sent")
    sent = subjects_sent(stack)
    assert sent.count(squat) == 1 and sent.count(own) == 1
    assert sorted(r.key.app for r in status.find(request_id)) == ["billing", "bulk"]
    assert dead_letter_of(stack, request_id) is None  # no DuplicateKey


def test_each_apps_records_are_in_its_own_table_where_its_client_reads_them_and_no_other_app_can(
    stack: LocalStack, status: AppStatusStore
) -> None:
    """Table storage's roles stop at the table (Azurite grants every key holder everything, so the roles themselves
    are pinned in tests/infra): the relay writes an app's records to its own table, the one its credentials read."""
    request_id = unique("invoice")
    billing = client(stack, "billing")
    billing.send(request(SHARED, unique("billing's"), request_id))
    key = StatusKey.of(SHARED, request_id, None, "billing")
    wait_for(lambda: sent_record(status, key) is not None, WAIT, "billing's request sent")
    tables = {
        name: [e["app"] for e in table.query_entities("key eq @k", parameters={"k": request_id})]
        for name in ("mailstatus", "mailstatusbilling", "mailstatusbulk")
        for table in [TableClient.from_connection_string(stack.storage_connection_string, name)]
    }
    assert tables == {"mailstatus": [], "mailstatusbilling": ["billing"], "mailstatusbulk": []}
    found = billing.status(request_id, SHARED)
    assert found is not None and (found["app"], found["state"]) == ("billing", SENT)
    assert client(stack, "bulk").status(request_id, SHARED) is None  # bulk's client reads bulk's table only
    assert client(stack).status(request_id, SHARED) is None  # and the outbox's, mailstatus


def test_an_app_cannot_block_another_apps_id_by_scheduling_it_days_ahead(
    stack: LocalStack, status: AppStatusStore
) -> None:
    request_id = unique("alert")
    blocker, own = unique("bulk blocks"), unique("billing now")
    # B enqueues A's id with a sendAt 6 days ahead, visible at once (as a hostile app would, past the client), so
    # the relay records it now and holds it for later.
    later = (datetime.now(UTC) + timedelta(days=6)).isoformat()
    bulk_queue = QueueClient.from_connection_string(stack.storage_connection_string, stack.app_queue("bulk"))
    bulk_queue.send_message(encode(request(SHARED, blocker, request_id, sendAt=later)), time_to_live=-1)
    bulk_key = StatusKey.of(SHARED, request_id, None, "bulk")
    wait_for(lambda: status.get(bulk_key) is not None, WAIT, "bulk's scheduled request recorded")
    client(stack, "billing").send(request(SHARED, own, request_id))
    billing_key = StatusKey.of(SHARED, request_id, None, "billing")
    wait_for(lambda: sent_record(status, billing_key) is not None, WAIT, "billing's request sent now")
    assert own in subjects_sent(stack) and blocker not in subjects_sent(stack)
    held = status.get(bulk_key)
    assert held is not None and held.state != SENT  # still waiting for its time
    assert dead_letter_of(stack, request_id) is None


def test_a_retry_after_a_graph_fault_is_delivered_as_its_app(stack: LocalStack, status: AppStatusStore) -> None:
    request_id, subject = unique("retried"), unique("billing retried")
    calls = send_mail_calls(stack)
    stack.emulator_post(
        "faults",
        {"service": "graph.sendMail", "status": 429, "count": 1, "retryAfter": 1, "code": "ApplicationThrottled"},
    )
    client(stack, "billing").send(request(BILLING, subject, request_id))
    key = StatusKey.of(BILLING, request_id, None, "billing")
    wait_for(lambda: sent_record(status, key) is not None, WAIT, "the retried request sent")
    record = status.get(key)
    assert record is not None and record.key.app == "billing"
    # Through the relay's retry queue: the throttled call, then the retry's, later (a 429 is not counted as an
    # attempt: Graph refused it before sending).
    assert send_mail_calls(stack) == calls + 2
    assert record.first_attempt_at is not None and record.last_attempt_at is not None
    assert record.last_attempt_at > record.first_attempt_at and "throttling" in (record.last_error_hint or "")
    assert subjects_sent(stack).count(subject) == 1
    assert [r.key.app for r in status.find(request_id)] == ["billing"]


def test_a_dead_letter_requeued_goes_back_to_its_apps_queue_and_is_delivered(
    stack: LocalStack, status: AppStatusStore, capsys: pytest.CaptureFixture[str]
) -> None:
    request_id, subject = unique("archived"), unique("billing archive")
    # billing may send as it, the relay allows it, but Exchange's scope does not include it yet: ErrorAccessDenied.
    client(stack, "billing").send(request(BILLING_OUTSIDE, subject, request_id))
    wait_for(lambda: dead_letter_of(stack, request_id) is not None, WAIT, "the request dead-lettered")
    letter = dead_letter_of(stack, request_id)
    assert letter is not None and (letter.code, letter.app) == ("ErrorAccessDenied", "billing")
    conn = ["--connection-string", stack.storage_connection_string, "--queue", stack.queue_name]
    assert main(["dead-letters", "list", "--all", *conn]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(letter.key))
    assert " billing " in row and "ErrorAccessDenied" in row
    console = start_console(stack)
    try:
        page = requests.get(f"{console.url}dead-letters", timeout=10).text
    finally:
        console.stop()
    assert f"<tr><td>{letter.key}</td><td>billing</td><td><b>ErrorAccessDenied</b>" in page

    stack.set_exchange_scope(BILLING_OUTSIDE, True)  # the admin fixes the scope, then requeues
    assert main(["dead-letters", "requeue", request_id, *conn]) == 0
    assert capsys.readouterr().out.strip().endswith(" on mail-outbox-billing")
    key = StatusKey.of(BILLING_OUTSIDE, request_id, None, "billing")
    wait_for(lambda: sent_record(status, key) is not None, WAIT, "the requeued request sent as billing")
    assert subjects_sent(stack).count(subject) == 1
    assert dead_letter_of(stack, request_id) is None


def test_the_outbox_is_still_the_default_app_sending_as_any_allowed_sender(
    stack: LocalStack, status: AppStatusStore, capsys: pytest.CaptureFixture[str]
) -> None:
    by_client, by_cli = unique("default client"), unique("default cli")
    client(stack).send(request(ALERTS, by_client, by_client))
    conn = ["--connection-string", stack.storage_connection_string, "--queue", stack.queue_name]
    argv = ["send", *conn, "--from", ALERTS, "--to", "ada@contoso.com", "--subject", by_cli, "--text", "hi"]
    assert main([*argv, "--id", by_cli]) == 0
    for request_id in (by_client, by_cli):
        key = StatusKey.of(ALERTS, request_id, None)
        wait_for(lambda key=key: sent_record(status, key) is not None, WAIT, f"{request_id} sent")  # type: ignore[misc]
        assert [r.key.app for r in status.find(request_id)] == ["default"]
    sent = subjects_sent(stack)
    assert sent.count(by_client) == 1 and sent.count(by_cli) == 1
    # `mailrelay send --app` to an app's queue, and status --app finds that app's record only.
    as_app = unique("cli as bulk")
    assert (
        main(
            [
                "send",
                *conn,
                "--app",
                "bulk",
                "--from",
                SHARED,
                "--to",
                "ada@contoso.com",
                "--subject",
                as_app,
                "--text",
                "hi",
                "--id",
                as_app,
            ]
        )
        == 0
    )
    key = StatusKey.of(SHARED, as_app, None, "bulk")
    wait_for(lambda: sent_record(status, key) is not None, WAIT, "the CLI's request sent as bulk")
    capsys.readouterr()
    assert main(["status", as_app, "--app", "bulk", "--json", *conn]) == 0
    assert json.loads(capsys.readouterr().out)["app"] == "bulk"
    assert main(["status", as_app, "--app", "billing", *conn]) == 1


def test_an_apps_attachment_goes_through_its_own_payload_container(
    stack: LocalStack, status: AppStatusStore, tmp_path: Any
) -> None:
    from azure.storage.blob import ContainerClient

    # Over 16 KiB: the client stores it as a blob (a claim check), in the app's own container, where the relay
    # reads it for this app, and deletes it once sent.
    path = tmp_path / "invoice.pdf"
    path.write_bytes(b"%PDF-1.7 " + bytes(range(256)) * 200)
    subject = unique("billing-attachment")
    client(stack, "billing").send(request(BILLING, subject, unique("inv")), files=[path])
    wait_for(lambda: subject in subjects_sent(stack), WAIT, f"{subject!r} sent")
    (entry,) = [e for e in stack.emulator_get("outbox") if e["message"]["message"]["subject"] == subject]
    (attachment,) = entry["message"]["message"]["attachments"]
    assert attachment["name"] == "invoice.pdf" and len(attachment["contentBytes"]) > 0
    own = ContainerClient.from_connection_string(stack.storage_connection_string, "mail-payloads-billing")
    shared = ContainerClient.from_connection_string(stack.storage_connection_string, "mail-payloads")
    wait_for(lambda: not list(own.list_blobs()), WAIT, "the app's blob deleted once sent")
    assert not shared.exists() or not list(shared.list_blobs())  # nothing went through the shared container


def test_what_the_host_moves_from_an_apps_queue_is_listed_and_requeued_as_that_apps(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Text that is not base64 on billing's queue: the host moves it to billing's own poison queue without calling
    # the function. `dead-letters --app billing` finds it there as billing's (a unit test shows a forged "app"
    # inside changes nothing), and requeue sends it back, encoded, on billing's queue.
    subject = unique("moved raw")
    raw = json.dumps(request(BILLING, subject, unique("raw")))
    QueueClient.from_connection_string(stack.storage_connection_string, stack.app_queue("billing")).send_message(raw)
    poison = QueueClient.from_connection_string(stack.storage_connection_string, "mail-outbox-billing-poison")
    wait_for(lambda: bool(poison.peek_messages()), WAIT, "the raw message in billing's poison queue")
    conn = ["--connection-string", stack.storage_connection_string, "--queue", stack.queue_name]
    assert main(["dead-letters", "list", *conn]) == 0
    assert "InvalidEncoding" not in capsys.readouterr().out  # the outbox's poison queue does not hold it
    assert main(["dead-letters", "list", "--app", "billing", "--json", *conn]) == 0
    (letter,) = json.loads(capsys.readouterr().out)
    assert (letter["error"]["code"], letter["app"]) == ("InvalidEncoding", "billing")
    assert main(["dead-letters", "requeue", "--all", "--app", "billing", *conn]) == 0
    assert "on mail-outbox-billing" in capsys.readouterr().out
    wait_for(lambda: subject in subjects_sent(stack), WAIT, f"{subject!r} sent as billing")
    assert main(["dead-letters", "list", "--app", "billing", "--retries", *conn]) == 2  # one poison queue at a time
