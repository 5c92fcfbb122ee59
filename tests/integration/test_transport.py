"""What the relay does with Exchange's transport after Graph's 202 (devstack/emulator/transport.py: a message waits in
Drafts, then moves to Sent Items; a transport failure leaves an NDR in the sender's Inbox and nothing in Sent Items).

Driven end to end (Azurite, the local host, function_app.py, the emulator), because what matters is the status
record and the resolution of an unknown outcome, which live in Table storage.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mailrelay_client import MailClient

from devstack.azurite import Azurite
from devstack.host import LocalHost
from shared import bootstrap
from shared.status import SENT, StatusKey, StatusRecord
from tests.e2e.conftest import ALERTS, CLIENT, SECRET, TENANT, RelayEnv, azurite, local_host, relay_env, wait_for

pytestmark = pytest.mark.e2e  # Azurite and the local host
__all__ = ["azurite", "local_host", "relay_env"]

MB = 1024 * 1024
# relay_env's GRAPH_TIMEOUT_SECONDS (5) + SEND_UNKNOWN_SETTLE_SECONDS (1): when an unknown send is looked up.
SETTLING = 6.0


@pytest.fixture(autouse=True)
def read_access(relay_env: RelayEnv) -> None:
    """The app may read Sent Items (Mail.Read) and write drafts (Mail.ReadWrite) in its scope, so that an unknown
    outcome is looked up, not guessed, and large messages can go through a draft."""
    roles = ("Application Mail.Send", "Application Mail.Read", "Application Mail.ReadWrite")
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, exchange_roles=roles)


def record(request_id: str) -> StatusRecord | None:
    return bootstrap.runtime().status.get(StatusKey.of(ALERTS, request_id, None))


def settled(request_id: str, timeout: float = 60) -> StatusRecord:
    wait_for(lambda: (r := record(request_id)) is not None and r.state == SENT, timeout, f"{request_id} sent")
    done = record(request_id)
    assert done is not None
    return done


def mark(request_id: str) -> str:
    return StatusKey.of(ALERTS, request_id, None).mark


def send(relay_env: RelayEnv, subject: str) -> str:
    request_id = f"{subject}-{uuid.uuid4().hex[:8]}"
    relay_env.enqueue(relay_env.request(subject, id=request_id))
    return request_id


def test_a_normal_send_waits_in_drafts_then_lands_in_sent_items(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    emu = relay_env.emulator
    emu.configure_exchange({"sentItemsDelaySeconds": 1.0})
    local_host()
    request_id = send(relay_env, "normal")
    assert settled(request_id).attempts == 1
    wait_for(lambda: bool(emu.sent_items(ALERTS)), 5, "the message in Sent Items")
    (filed,) = emu.sent_items(ALERTS)
    assert filed["singleValueExtendedProperties"][0]["value"] == mark(request_id)
    assert emu.drafts_view() == [] and emu.inbox_items(ALERTS) == [] and emu.copies_by_mark() == {mark(request_id): 1}


def test_a_transport_failure_is_sent_for_the_relay_and_an_ndr_for_the_mailbox_owner(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    emu = relay_env.emulator
    emu.set_transport_failure(ALERTS)
    local_host()
    request_id = send(relay_env, "bounces")
    done = settled(request_id)
    # Graph answered 202: the relay records sent and does not try again; the NDR is the mailbox owner's to see.
    assert done.attempts == 1 and emu.stats["graph.sendMail"] == 1 and relay_env.poison_messages() == []
    (entry,) = emu.outbox
    assert "5.6.0" in entry["bounced"] and emu.copies_by_mark() == {}
    (ndr,) = emu.inbox_items(ALERTS)
    assert ndr["subject"] == "Undeliverable: " + entry["message"]["message"]["subject"]
    assert emu.sent_items(ALERTS) == []


def test_an_unknown_send_that_bounced_is_not_in_sent_items_so_it_is_sent_again_after_settling(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    emu = relay_env.emulator
    emu.fail_next_transports(1)
    emu.add_fault("graph.sendMail", status=504, retry_after=None, accept=True)  # accepted, then the answer is lost
    local_host()
    request_id = send(relay_env, "unknown-bounced")
    done = settled(request_id)
    assert done.attempts == 2 and done.resolution is not None and "sent again" in done.resolution
    first, second = emu.outbox
    assert "bounced" in first and "bounced" not in second
    assert emu.copies_by_mark() == {mark(request_id): 1}  # one copy delivered, to recipients who got none before
    assert len(emu.inbox_items(ALERTS)) == 1 and len(emu.sent_items(ALERTS)) == 1


def content(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def send_large(azurite: Azurite, relay_env: RelayEnv, tmp_path: Path, subject: str) -> str:
    """A 4 MB attachment: the relay's draft flow (draft, upload session, send), marked like every try."""
    request_id = f"{subject}-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "big.bin"
    path.write_bytes(content(4 * MB, subject))
    client = MailClient.from_connection_string(azurite.connection_string, relay_env.queue_name)
    client.send(relay_env.request(subject, id=request_id), files=[path])
    return request_id


def via_draft(emu: Any) -> list[dict[str, Any]]:
    return [e for e in emu.outbox if e["via"] == "draft"]


def test_a_large_unknown_send_filed_before_the_settling_time_is_found_and_not_sent_again(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], tmp_path: Path
) -> None:
    emu = relay_env.emulator
    emu.configure_exchange({"sentItemsDelaySeconds": SETTLING / 2})  # transport done before the relay looks
    emu.add_fault("graph.sendMail", status=504, retry_after=None, accept=True)  # the draft's send, answer lost
    local_host()
    request_id = send_large(azurite, relay_env, tmp_path, "large-found")
    done = settled(request_id)
    assert done.resolution is not None and "Sent Items" in done.resolution
    assert len(via_draft(emu)) == 1 and emu.copies_by_mark() == {mark(request_id): 1}
    assert emu.drafts_view() == []


def test_a_large_unknown_send_still_in_transport_when_the_relay_looks_is_left_alone_and_delivered_once(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], tmp_path: Path
) -> None:
    """Exchange's transport takes longer than the relay's settling time: the sent draft is still in Drafts, carrying
    the request's mark, and not in Sent Items. The emulator assumes (transport.py) that deleting a message in
    transport does not stop its delivery, so deleting it as a leftover and sending again would deliver two copies
    (this test asserted that before the fix). The relay reads isDraft false (sent, in transport), leaves it alone and
    sends nothing (StillInTransport: the outcome stays unknown), then finds it in Sent Items once transport is done.
    SEND_UNKNOWN_SETTLE_SECONDS should cover Exchange's transport time: each round here spends a try."""
    emu = relay_env.emulator
    emu.configure_exchange({"sentItemsDelaySeconds": SETTLING * 3})  # transport slower than the settling time
    emu.add_fault("graph.sendMail", status=504, retry_after=None, accept=True)
    local_host()
    request_id = send_large(azurite, relay_env, tmp_path, "large-in-transport")
    done = settled(request_id)
    assert done.resolution == "found in Sent Items" and done.last_error_code == "StillInTransport"
    assert done.attempts >= 2  # the first send, then at least one round that found it in transport
    assert len(via_draft(emu)) == 1 and emu.copies_by_mark() == {mark(request_id): 1}  # delivered once
    assert emu.drafts_view() == [] and len(emu.sent_items(ALERTS)) == 1 and relay_env.poison_messages() == []


def test_a_large_send_that_stays_in_transport_ends_at_the_retry_budget_with_its_code_and_is_not_sent_again(
    azurite: Azurite,
    relay_env: RelayEnv,
    local_host: Callable[..., LocalHost],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bounded: the rounds that find the earlier try in transport spend the retry budget (SEND_MAX_ATTEMPTS here),
    then the request is dead-lettered with StillInTransport's code and hint, without a second copy."""
    monkeypatch.setenv("SEND_MAX_ATTEMPTS", "2")
    bootstrap.reset()
    emu = relay_env.emulator
    emu.configure_exchange({"sentItemsDelaySeconds": 120})  # transport outlasts the whole budget
    emu.add_fault("graph.sendMail", status=504, retry_after=None, accept=True)
    local_host()
    request_id = send_large(azurite, relay_env, tmp_path, "large-stuck")
    wait_for(lambda: bool(relay_env.poison_messages()), 60, "the dead letter")
    (letter,) = relay_env.poison_messages()
    assert letter["error"]["code"] == "StillInTransport" and "SEND_UNKNOWN_SETTLE_SECONDS" in letter["error"]["hint"]
    assert letter["attempts"] == 2
    assert len(via_draft(emu)) == 1 and emu.copies_by_mark() == {mark(request_id): 1}  # the one in transport
    assert [d["inTransport"] for d in emu.drafts_view()] == [True]  # left alone, not deleted
