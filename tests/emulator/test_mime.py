"""The emulator takes MIME as Graph documents it (user-sendmail, user-post-messages, outlook-send-mime-message):
"Content-Type: text/plain", the MIME base64-encoded; its errors and limits; recipients from the headers; the outbox
keeps the MIME as received and as delivered (no Bcc header), each with its SHA-256."""

from __future__ import annotations

import base64
import hashlib

import pytest
import requests

from devstack.emulator import Emulator
from shared.status import MARK_PROPERTY_ID
from tests.emulator.test_emulator import CLIENT, SECRET, TENANT, graph_error, http, running, token_for

__all__ = ["http", "running"]

MAILBOX = "scanner@contoso.com"
MARK = "ef" * 32
MIME = (
    b"From: Scanner <scanner@contoso.com>\r\n"
    b"To: Ada <ada@contoso.com>\r\n"
    b"Cc: bob@contoso.com\r\n"
    b"Subject: Scan 0042\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Your scan.\r\n"
)


@pytest.fixture
def emu(running: Emulator) -> Emulator:
    running.reset()
    running.add_mailbox(MAILBOX, in_exchange_scope=True)
    running.add_app(TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send", "Application Mail.ReadWrite"))
    return running


def post_mime(
    emu: Emulator, http: requests.Session, token: str, path: str, body: bytes, content_type: str = "text/plain"
) -> requests.Response:
    return http.post(
        f"{emu.url}/v1.0/users/{MAILBOX}/{path}",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        timeout=30,
    )


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_send_mail_takes_base64_mime_and_derives_the_recipients_from_its_headers(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    mime = b"Bcc: eve@contoso.com\r\n" + MIME
    # Microsoft's own example wraps the base64 at 76 characters: line breaks in it are read past.
    wrapped = b"\r\n".join(b64(mime)[i : i + 76] for i in range(0, len(b64(mime)), 76))
    assert post_mime(emu, http, token, "sendMail", wrapped).status_code == 202
    (entry,) = emu.outbox
    message = entry["message"]["message"]
    assert [r["emailAddress"]["address"] for r in message["toRecipients"]] == ["ada@contoso.com"]
    assert [r["emailAddress"]["address"] for r in message["ccRecipients"]] == ["bob@contoso.com"]
    assert [r["emailAddress"]["address"] for r in message["bccRecipients"]] == ["eve@contoso.com"]
    assert entry["mime"]["sha256"] == hashlib.sha256(mime).hexdigest()
    assert base64.b64decode(entry["mime"]["content"]) == mime
    # What the recipients get: the Bcc header is not transmitted, every other byte is.
    assert entry["mime"]["delivered"]["sha256"] == hashlib.sha256(MIME).hexdigest()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"this is not base64!", 400, "ErrorMimeContentInvalidBase64String"),
        (b64(b"no headers, no blank line"), 400, "ErrorMimeContentInvalid"),
        (b64(b""), 400, "ErrorMimeContentInvalid"),
        (b64(b"From: scanner@contoso.com\r\nSubject: nobody\r\n\r\nx"), 400, "ErrorInvalidRecipients"),
        (b64(MIME.replace(b"Scanner <scanner@", b"<ceo@")), 403, "ErrorSendAsDenied"),
        (b64(MIME + b"x" * (3 * 1024 * 1024 + 1)), 413, "BadRequest"),
    ],
)
def test_send_mail_refuses_mime_as_graph_does(
    emu: Emulator, http: requests.Session, body: bytes, status: int, code: str
) -> None:
    reply = post_mime(emu, http, token_for(emu, http), "sendMail", body)
    assert graph_error(reply)[:2] == (status, code)
    assert emu.outbox == []


def test_a_mime_draft_marked_by_patch_is_found_by_its_mark_and_sent_as_received(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    mime = b"Bcc: eve@contoso.com\r\n" + MIME
    created = post_mime(emu, http, token, "messages", b64(mime))
    assert created.status_code == 201, created.text
    draft_id = created.json()["id"]
    assert created.json()["isDraft"] is True
    patched = http.patch(
        f"{emu.url}/v1.0/users/{MAILBOX}/messages/{draft_id}",
        json={"singleValueExtendedProperties": [{"id": MARK_PROPERTY_ID, "value": MARK}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert patched.status_code == 200, patched.text
    query = f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARK_PROPERTY_ID}' and ep/value eq '{MARK}')"
    found = http.get(
        f"{emu.url}/v1.0/users/{MAILBOX}/mailFolders/drafts/messages",
        params={"$filter": query, "$select": "id"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert found.json()["value"] == [{"id": draft_id}]
    sent = http.post(
        f"{emu.url}/v1.0/users/{MAILBOX}/messages/{draft_id}/send",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert sent.status_code == 202, sent.text
    (entry,) = emu.outbox
    assert entry["via"] == "draft"
    assert entry["mime"]["sha256"] == hashlib.sha256(mime).hexdigest()
    assert entry["mime"]["delivered"]["sha256"] == hashlib.sha256(MIME).hexdigest()


def test_a_mime_draft_refuses_bad_base64_and_an_unknown_patch(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http)
    reply = post_mime(emu, http, token, "messages", b"%%%")
    assert graph_error(reply)[:2] == (400, "ErrorMimeContentInvalidBase64String")
    patched = http.patch(
        f"{emu.url}/v1.0/users/{MAILBOX}/messages/AAMkDraftnone",
        json={"singleValueExtendedProperties": [{"id": MARK_PROPERTY_ID, "value": MARK}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert graph_error(patched)[:2] == (404, "ErrorItemNotFound")
    assert emu.drafts_view() == []
