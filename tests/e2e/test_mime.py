"""MIME sent as is, end to end (docs/mime.md): the client library's send_mime and `mailrelay send --mime` store the
MIME as a claim check in Azurite, the local host runs function_app.py, and the emulator plays Graph's MIME draft.
What arrived is compared by SHA-256 in the emulator's outbox: as received, and as the recipients get it."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.azurite import Azurite
from devstack.host import LocalHost
from shared.cli import main
from tests.e2e.conftest import ALERTS, CLIENT, SECRET, TENANT, RelayEnv, wait_for
from tests.e2e.test_large_messages import client, delivered, payload_blobs

pytestmark = pytest.mark.e2e

MIME = (
    b"From: Alerts <alerts@contoso.com>\r\n"
    b"To: Ada <ada@contoso.com>\r\n"
    b"Subject: %s\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Scanned document attached.\r\n"
    b"--b1\r\n"
    b"Content-Type: application/pdf\r\n"
    b'Content-Disposition: attachment; filename="scan.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQKJcOkw7zDtsOfCg==\r\n"
    b"--b1--\r\n"
)


@pytest.fixture(autouse=True)
def draft_roles(relay_env: RelayEnv) -> None:
    """A MIME request goes through a draft: Mail.ReadWrite over the scope, as for large messages."""
    relay_env.emulator.add_app(
        TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send", "Application Mail.ReadWrite")
    )


def mime(subject: str) -> bytes:
    return MIME % subject.encode("ascii")


def addresses(message: dict[str, Any], key: str) -> list[str]:
    return [r["emailAddress"]["address"] for r in message.get(key) or []]


def test_send_mime_delivers_once_byte_identical_with_a_bcc_only_recipient_absent_from_the_headers(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    local_host()
    data = mime("scan 0042")
    before = payload_blobs(azurite)
    client(azurite, relay_env).send_mime(data, ALERTS, to=["ada@contoso.com"], bcc=["eve@contoso.com"], id="scan-42")
    (stored,) = payload_blobs(azurite) - before  # the MIME travelled as a claim check
    entry = delivered(relay_env, "scan 0042")
    assert entry["via"] == "draft"
    message = entry["message"]["message"]
    assert addresses(message, "toRecipients") == ["ada@contoso.com"]
    assert addresses(message, "bccRecipients") == ["eve@contoso.com"]  # delivered to the envelope's Bcc
    # What the recipients get is the app's MIME, byte for byte: the Bcc header the relay added is not in it.
    assert entry["mime"]["delivered"]["sha256"] == hashlib.sha256(data).hexdigest()
    # Graph received the MIME with one Bcc header in front, which named the envelope-only recipient.
    assert base64.b64decode(entry["mime"]["content"]) == b"Bcc: eve@contoso.com\r\n" + data
    wait_for(lambda: stored not in payload_blobs(azurite), 10, "the MIME's blob deleted once sent")
    assert relay_env.emulator.drafts_view() == []
    assert sum(1 for e in relay_env.emulator.outbox if e["message"]["message"]["subject"] == "scan 0042") == 1


def test_mailrelay_send_mime_sends_a_file_as_is(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost], tmp_path: Path
) -> None:
    local_host()
    path = tmp_path / "scan.eml"
    path.write_bytes(mime("from the cli"))
    argv = ["--connection-string", azurite.connection_string, "--queue", relay_env.queue_name]
    assert main(["send", *argv, "--mime", str(path), "--from", ALERTS, "--to", "ada@contoso.com"]) == 0
    entry = delivered(relay_env, "from the cli")
    assert entry["mime"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # nothing added: same bytes


def test_a_header_recipient_outside_the_envelope_is_dead_lettered_and_nothing_sent(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    from mailrelay_client import ContractError

    before = payload_blobs(azurite)
    with pytest.raises(ContractError, match="MIME's To, Cc or Bcc"):  # the client library refuses it first
        client(azurite, relay_env).send_mime(mime("not for ada"), ALERTS, to=["bob@contoso.com"])
    assert payload_blobs(azurite) == before and relay_env.queue_length() == 0
    # An app that writes the queue itself is not stopped by the client: the relay refuses it again.
    inline = {"contentBytes": base64.b64encode(mime("not for ada")).decode("ascii")}
    relay_env.enqueue({"from": ALERTS, "to": ["bob@contoso.com"], "mime": inline})
    local_host()
    wait_for(lambda: bool(relay_env.poison_messages()), 30, "a dead letter")
    (letter,) = relay_env.poison_messages()
    assert letter["error"]["code"] == "MimeRecipientNotInEnvelope"
    assert "ada@" not in letter["error"]["message"]
    assert relay_env.emulator.outbox == [] and relay_env.emulator.drafts_view() == []


def test_mailrelay_send_mime_refuses_malformed_mime_before_anything_is_stored(
    azurite: Azurite, relay_env: RelayEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.eml"
    path.write_bytes(b"From: <<<\r\nTo: ada@contoso.com\r\n\r\nbody")
    argv = ["--connection-string", azurite.connection_string, "--queue", relay_env.queue_name]
    before = payload_blobs(azurite)
    assert main(["send", *argv, "--mime", str(path), "--from", ALERTS, "--to", "ada@contoso.com"]) == 1
    assert "mime.contentBytes" in capsys.readouterr().err
    assert payload_blobs(azurite) == before and relay_env.queue_length() == 0


def test_a_lost_answer_to_the_drafts_send_is_found_in_sent_items_by_its_mark_and_not_sent_again(
    azurite: Azurite, relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    # Graph takes the send, then the answer is lost (a 504 after Exchange accepted it): the outcome is unknown,
    # and only the mark the relay PATCHed on the MIME draft can find the message in Sent Items.
    relay_env.emulator.add_fault("graph.sendMail", status=504, retry_after=None, accept=True)
    mail = client(azurite, relay_env)
    mail.send_mime(mime("lost answer"), ALERTS, to=["ada@contoso.com"], id="scan-lost")
    local_host()
    wait_for(lambda: (mail.status("scan-lost", ALERTS) or {}).get("state") == "sent", 60, "the unknown send resolved")
    record = mail.status("scan-lost", ALERTS) or {}
    assert record.get("resolution") == "found in Sent Items", record
    assert relay_env.subjects_sent()["lost answer"] == 1
