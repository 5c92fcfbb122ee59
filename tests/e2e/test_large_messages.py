"""Large messages, inline images and scheduled sends end to end: the client library and `mailrelay send` store
claim checks in Azurite's mail-payloads container, the local host runs function_app.py, and the emulator plays
Graph's drafts and upload sessions. What arrived is compared by SHA-256 in the emulator's outbox."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import ContainerClient
from mailrelay_client import File, MailClient

from devstack.azurite import Azurite
from devstack.host import LocalHost
from shared import bootstrap
from shared.cli import main
from shared.handlers import handle_status_cleanup
from shared.payloads import PAYLOAD_CONTAINER
from shared.queues import decode
from tests.e2e.conftest import ALERTS, CLIENT, SECRET, TENANT, RelayEnv, wait_for

pytestmark = pytest.mark.e2e
MB = 1024 * 1024


def content(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture(autouse=True)
def large_message_roles(relay_env: RelayEnv) -> None:
    """The app as README's permissions table sets it up for large messages: Mail.ReadWrite over the scope too."""
    relay_env.emulator.add_app(
        TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send", "Application Mail.ReadWrite")
    )


@pytest.fixture
def big_file(tmp_path: Path) -> Callable[[int, str], Path]:
    def make(size: int, name: str = "report.pdf") -> Path:
        path = tmp_path / name
        path.write_bytes(content(size, name))
        return path

    return make


def client(azurite: Azurite, relay_env: RelayEnv) -> MailClient:
    return MailClient.from_connection_string(azurite.connection_string, relay_env.queue_name)


def payload_blobs(azurite: Azurite) -> set[str]:
    container = ContainerClient.from_connection_string(azurite.connection_string, PAYLOAD_CONTAINER)
    return {b.name for b in container.list_blobs()} if container.exists() else set()


def delivered(relay_env: RelayEnv, subject: str, timeout: float = 60) -> dict[str, Any]:
    wait_for(lambda: relay_env.subjects_sent()[subject] >= 1, timeout, f"{subject!r} in the outbox")
    (entry,) = [e for e in relay_env.emulator.outbox if e["message"]["message"]["subject"] == subject]
    return entry


def dead_letter(relay_env: RelayEnv, timeout: float = 30) -> dict[str, Any]:
    wait_for(lambda: bool(relay_env.poison_messages()), timeout, "a dead letter")
    (letter,) = relay_env.poison_messages()
    assert isinstance(letter, dict)
    return letter


def test_mailrelay_send_attach_delivers_10_mb_through_an_upload_session_byte_identical(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], big_file: Any
) -> None:
    local_host()
    pdf = big_file(10 * MB, "big.pdf")
    argv = ["--connection-string", azurite.connection_string, "--queue", relay_env.queue_name]
    flags = ["--from", ALERTS, "--to", "ada@contoso.com", "--subject", "ten megabytes", "--text", "attached"]
    before = payload_blobs(azurite)
    assert main(["send", *argv, *flags, "--attach", str(pdf)]) == 0
    (mine,) = payload_blobs(azurite) - before
    entry = delivered(relay_env, "ten megabytes")
    (attachment,) = entry["attachments"]
    assert entry["via"] == "draft"
    assert attachment["name"] == "big.pdf" and attachment["size"] == 10 * MB
    assert attachment["sha256"] == hashlib.sha256(pdf.read_bytes()).hexdigest()
    stats = relay_env.emulator.stats
    assert stats["graph.upload"] == 3 and stats["graph.sendMail"] == 0  # 4 + 4 + 2 MB, no sendMail
    wait_for(lambda: mine not in payload_blobs(azurite), 10, "the payload blob deleted once sent")
    assert relay_env.emulator.drafts_view() == []


def test_a_claim_checked_1_mb_attachment_and_an_inline_image_go_in_one_send_mail(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], big_file: Any
) -> None:
    local_host()
    pdf, logo = big_file(1 * MB, "invoice.pdf"), big_file(20_000, "logo.png")
    request = relay_env.request("invoice", body={"contentType": "html", "content": '<img src="cid:logo">'})
    client(azurite, relay_env).send(request, files=[pdf, File(logo, content_id="logo")])
    entry = delivered(relay_env, "invoice")
    assert entry["via"] == "sendMail"
    by_name = {a["name"]: a for a in entry["attachments"]}
    assert by_name["invoice.pdf"]["sha256"] == hashlib.sha256(pdf.read_bytes()).hexdigest()
    assert (by_name["logo.png"]["isInline"], by_name["logo.png"]["contentId"]) == (True, "logo")
    assert by_name["logo.png"]["sha256"] == hashlib.sha256(logo.read_bytes()).hexdigest()


def test_an_inline_attachment_small_enough_for_the_queue_stays_in_the_request(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], big_file: Any
) -> None:
    local_host()
    note = big_file(2_000, "note.txt")
    before = payload_blobs(azurite)
    client(azurite, relay_env).send(relay_env.request("small"), files=[note])
    assert payload_blobs(azurite) == before  # nothing was claim-checked
    entry = delivered(relay_env, "small")
    assert entry["attachments"][0]["sha256"] == hashlib.sha256(note.read_bytes()).hexdigest()


def test_a_corrupted_blob_is_dead_lettered_and_keeps_its_blob(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], big_file: Any
) -> None:
    pdf = big_file(5 * MB, "tampered.pdf")
    before = payload_blobs(azurite)
    client(azurite, relay_env).send(relay_env.request("tampered", id="tampered-1"), files=[pdf])
    (name,) = payload_blobs(azurite) - before
    container = ContainerClient.from_connection_string(azurite.connection_string, PAYLOAD_CONTAINER)
    container.upload_blob(name, b"X" + pdf.read_bytes()[1:], overwrite=True)  # same size, other bytes
    local_host()
    letter = dead_letter(relay_env)
    assert letter["error"]["code"] == "PayloadMismatch" and "SHA-256" in letter["error"]["message"]
    assert relay_env.emulator.outbox == [] and relay_env.emulator.drafts_view() == []  # the draft was deleted
    assert name in payload_blobs(azurite)  # kept for a requeue
    # The clean-up timer leaves it within PAYLOAD_RETENTION_DAYS, and deletes it after.
    rt = bootstrap.runtime()
    handle_status_cleanup(rt=replace(rt, clock=lambda: datetime.now(UTC) + timedelta(days=29)))
    assert name in payload_blobs(azurite)
    handle_status_cleanup(rt=replace(rt, clock=lambda: datetime.now(UTC) + timedelta(days=31)))
    assert name not in payload_blobs(azurite)


def test_a_missing_blob_is_dead_lettered_before_graph_is_called(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    attachment = {
        "name": "gone.pdf",
        "contentType": "application/pdf",
        "blob": f"{uuid.uuid4().hex}/gone.pdf",
        "size": 4 * MB,
        "sha256": "0" * 64,
    }
    relay_env.enqueue(relay_env.request("gone", attachments=[attachment]))
    local_host()
    letter = dead_letter(relay_env)
    assert letter["error"]["code"] == "PayloadMissing" and "mail-payloads" in letter["error"]["message"]
    assert relay_env.emulator.stats["graph.drafts"] == 0


def test_an_oversize_request_is_refused_before_anything_is_uploaded(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], big_file: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MAX_MESSAGE_SIZE_MB", "5")
    local_host()
    client(azurite, relay_env).send(relay_env.request("too big"), files=[big_file(4 * MB, "four.bin")])
    letter = dead_letter(relay_env)
    assert letter["error"]["code"] == "MessageTooLarge" and "MAX_MESSAGE_SIZE_MB (5)" in letter["error"]["message"]
    stats = relay_env.emulator.stats
    assert stats["graph.drafts"] == 0 and stats["graph.upload"] == 0


def test_the_mailbox_maximum_in_exchange_refuses_what_the_relay_let_through(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], big_file: Any
) -> None:
    """MAX_MESSAGE_SIZE_MB above the mailbox's real limit: Graph's own ErrorMessageSizeExceeded, with its hint."""
    relay_env.emulator.configure_drafts({"maxMessageSizeBytes": 5 * MB})
    local_host()
    client(azurite, relay_env).send(relay_env.request("over the mailbox"), files=[big_file(4 * MB, "four.bin")])
    letter = dead_letter(relay_env)
    assert letter["error"]["code"] == "ErrorMessageSizeExceeded" and "MaxSendSize" in letter["error"]["hint"]
    assert relay_env.emulator.outbox == [] and relay_env.emulator.drafts_view() == []


def test_without_mail_read_write_the_upload_flow_is_refused_with_the_permission_named(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], big_file: Any
) -> None:
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send",))
    local_host()
    client(azurite, relay_env).send(relay_env.request("no readwrite"), files=[big_file(4 * MB, "four.bin")])
    letter = dead_letter(relay_env)
    assert letter["error"]["code"] == "ErrorAccessDenied"
    assert "Mail.ReadWrite" in letter["error"]["hint"] and "-GrantLargeMessages" in letter["error"]["hint"]


def test_a_send_that_fails_after_the_upload_is_retried_with_one_copy_only(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], big_file: Any
) -> None:
    """The draft's send answers 503 (unknown: it may have gone out), then a 504 after Exchange took it: the relay
    looks in Sent Items, finds nothing the first time and sends a fresh draft after deleting the old one; the
    second time finds it. One copy in the outbox, no draft left."""
    emulator = relay_env.emulator
    for entry in ({"status": 503, "count": 1}, {"status": 504, "accept": True, "count": 1}):
        emulator._apply_fault({"service": "graph.sendMail", "retryAfter": None, **entry})
    local_host()
    pdf = big_file(4 * MB, "retry.pdf")
    before = payload_blobs(azurite)
    client(azurite, relay_env).send(relay_env.request("retried", id="retried-1"), files=[pdf])
    (mine,) = payload_blobs(azurite) - before
    wait_for(lambda: emulator.copies_by_mark() != {} and mine not in payload_blobs(azurite), 60, "sent, cleaned up")
    assert list(emulator.copies_by_mark().values()) == [1]
    assert emulator.drafts_view() == [] and relay_env.poison_messages() == []
    (entry,) = emulator.outbox
    assert entry["attachments"][0]["sha256"] == hashlib.sha256(pdf.read_bytes()).hexdigest()


def test_send_at_in_the_future_is_held_scheduled_and_the_past_and_too_far_are_refused(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    from azure.data.tables import TableClient

    from shared.status import TABLE_NAME, StatusKey, TableStatusStore

    local_host()
    now = datetime.now(UTC)
    relay_env.enqueue(relay_env.request("later", id="later-1", sendAt=(now + timedelta(seconds=4)).isoformat()))
    status = TableStatusStore(TableClient.from_connection_string(azurite.connection_string, TABLE_NAME))
    key = StatusKey.of(ALERTS, "later-1", None)
    wait_for(lambda: (r := status.get(key)) is not None and r.state == "scheduled", 10, "the record scheduled")
    assert relay_env.subjects_sent()["later"] == 0
    delivered(relay_env, "later", timeout=30)
    sent_at = status.get(key)
    assert sent_at is not None and sent_at.state == "sent" and sent_at.sent_at is not None
    assert sent_at.sent_at >= now + timedelta(seconds=4)
    relay_env.enqueue(relay_env.request("past", sendAt=(now - timedelta(hours=1)).isoformat()))
    relay_env.enqueue(relay_env.request("far", sendAt=(now + timedelta(days=8)).isoformat()))
    wait_for(lambda: len(relay_env.poison_messages()) == 2, 30, "two dead letters")
    codes = sorted(letter["error"]["code"] for letter in relay_env.poison_messages())
    assert codes == ["SendAtInPast", "SendAtTooFar"]


def test_the_client_enqueues_a_send_at_visible_at_once(azurite: Azurite, relay_env: RelayEnv) -> None:
    """The relay holds it (recorded scheduled, on its retry queue): hidden until its time, it looked lost."""
    when = datetime.now(UTC) + timedelta(minutes=30)
    client(azurite, relay_env).send(relay_env.request("scheduled", sendAt=when.isoformat()))
    [message] = relay_env.queue.peek_messages(max_messages=5)
    assert json.loads(decode(message.content) or "{}")["sendAt"] == when.isoformat()
