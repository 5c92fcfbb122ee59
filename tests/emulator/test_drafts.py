"""Graph's large-message flow as the emulator plays it over HTTPS (devstack/emulator/drafts.py has the rules and
their sources): drafts, attachments, upload sessions with their range rules and expiry, sending a draft, and
Exchange's maximum message size."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import pytest
import requests

from devstack.emulator import Emulator
from shared.status import MARK_PROPERTY_ID
from tests.emulator.test_emulator import CLIENT, SECRET, TENANT, graph_error, http, mail, running, send, token_for

__all__ = ["http", "running"]

MAILBOX = "alerts@contoso.com"
MB = 1024 * 1024
MARK = "cd" * 32


@pytest.fixture
def emu(running: Emulator) -> Emulator:
    running.reset()
    running.add_mailbox(MAILBOX, in_exchange_scope=True)
    running.add_app(TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send", "Application Mail.ReadWrite"))
    return running


def call(
    emu: Emulator, http: requests.Session, token: str, method: str, path: str, body: Any = None
) -> requests.Response:
    return http.request(
        method,
        f"{emu.url}/v1.0/users/{MAILBOX}/{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def draft(emu: Emulator, http: requests.Session, token: str, mark: str = MARK) -> str:
    message = mail(singleValueExtendedProperties=[{"id": MARK_PROPERTY_ID, "value": mark}])["message"]
    reply = call(emu, http, token, "POST", "messages", message)
    assert reply.status_code == 201, reply.text
    draft_id: str = reply.json()["id"]
    return draft_id


def session(emu: Emulator, http: requests.Session, token: str, draft_id: str, size: int) -> dict[str, Any]:
    item = {"attachmentType": "file", "name": "big.bin", "size": size}
    reply = call(
        emu, http, token, "POST", f"messages/{draft_id}/attachments/createUploadSession", {"AttachmentItem": item}
    )
    assert reply.status_code == 201, reply.text
    value: dict[str, Any] = reply.json()
    return value


def put(http: requests.Session, url: str, data: bytes, start: int, total: int, **headers: str) -> requests.Response:
    content_range = f"bytes {start}-{start + len(data) - 1}/{total}"
    return http.put(url, data=data, headers={"Content-Range": content_range, **headers}, timeout=30)


def test_a_10_mb_attachment_arrives_byte_identical_through_ranges_of_4_mb(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    data = hashlib.sha256(b"seed").digest() * (10 * MB // 32)
    draft_id = draft(emu, http, token)
    small = {"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.txt", "contentType": "text/plain"}
    small["contentBytes"] = base64.b64encode(b"hello").decode()
    assert call(emu, http, token, "POST", f"messages/{draft_id}/attachments", small).status_code == 201
    opened = session(emu, http, token, draft_id, len(data))
    assert opened["nextExpectedRanges"] == ["0-"] and opened["uploadUrl"].startswith("https://")
    middle = put(http, opened["uploadUrl"], data[: 4 * MB], 0, len(data))
    assert middle.status_code == 200 and middle.json()["nextExpectedRanges"] == [str(4 * MB)]
    assert put(http, opened["uploadUrl"], data[4 * MB : 8 * MB], 4 * MB, len(data)).status_code == 200
    last = put(http, opened["uploadUrl"], data[8 * MB :], 8 * MB, len(data))
    assert last.status_code == 201 and "Attachments(" in last.headers["Location"]
    sent = call(emu, http, token, "POST", f"messages/{draft_id}/send")
    assert sent.status_code == 202
    (entry,) = emu.outbox
    assert entry["via"] == "draft"
    assert [(a["name"], a["size"]) for a in entry["attachments"]] == [("a.txt", 5), ("big.bin", 10 * MB)]
    assert entry["attachments"][1]["sha256"] == hashlib.sha256(data).hexdigest()
    assert emu.copies_by_mark() == {MARK: 1} and emu.drafts_view() == []
    (filed,) = emu.sent_items(MAILBOX)  # a sent draft is saved to Sent Items, with the relay's mark
    assert filed["singleValueExtendedProperties"] == [{"id": MARK_PROPERTY_ID, "value": MARK}]


def test_ranges_out_of_order_too_large_or_with_the_wrong_total_are_refused_and_change_nothing(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    total = 9 * MB
    url = session(emu, http, token, draft(emu, http, token), total)["uploadUrl"]
    assert put(http, url, b"x" * MB, 0, total).status_code == 200
    skipped = put(http, url, b"x" * MB, 2 * MB, total)
    assert skipped.status_code == 416 and skipped.json()["nextExpectedRanges"] == [str(MB)]
    assert put(http, url, b"x" * (4 * MB + 1), MB, total).status_code == 413
    assert put(http, url, b"x" * MB, MB, total + 1).status_code == 400
    assert put(http, url, b"x" * MB, MB, total).json()["nextExpectedRanges"] == [str(2 * MB)]


def test_the_upload_url_is_pre_authenticated_and_refuses_a_bearer_token_or_a_wrong_one(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    url = session(emu, http, token, draft(emu, http, token), 3 * MB)["uploadUrl"]
    assert put(http, url, b"x" * MB, 0, 3 * MB, Authorization=f"Bearer {token}").status_code == 401
    forged = url.split("authtoken=")[0] + "authtoken=forged"
    assert put(http, forged, b"x" * MB, 0, 3 * MB).status_code == 404


def test_an_expired_or_cancelled_session_takes_no_more_ranges(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http)
    emu.configure_drafts({"uploadSessionSeconds": 0.3})
    draft_id = draft(emu, http, token)
    opened = session(emu, http, token, draft_id, 3 * MB)
    url = opened["uploadUrl"]
    first = put(http, url, b"x" * MB, 0, 3 * MB)
    assert first.status_code == 200
    assert first.json()["expirationDateTime"] == opened["expirationDateTime"]  # a range does not extend it
    time.sleep(0.4)
    assert put(http, url, b"x" * MB, MB, 3 * MB).status_code == 404
    emu.configure_drafts({"uploadSessionSeconds": 60})
    url = session(emu, http, token, draft_id, 3 * MB)["uploadUrl"]
    assert http.delete(url, timeout=10).status_code == 204
    assert put(http, url, b"x" * MB, 0, 3 * MB).status_code == 404


def test_ranges_do_not_extend_the_sessions_expiry(emu: Emulator, http: requests.Session) -> None:
    """Outlook's expiry stays as created (drafts.py's docstring): a range at 1.2 s of a 2 s session is taken, and
    the next one at 2.4 s is refused, though it comes only 1.2 s after the last range."""
    token = token_for(emu, http)
    emu.configure_drafts({"uploadSessionSeconds": 2})
    url = session(emu, http, token, draft(emu, http, token), 3 * MB)["uploadUrl"]
    started = time.monotonic()
    assert put(http, url, b"x" * MB, 0, 3 * MB).status_code == 200
    time.sleep(max(0.0, 1.2 - (time.monotonic() - started)))
    assert put(http, url, b"x" * MB, MB, 3 * MB).status_code == 200
    time.sleep(max(0.0, 2.4 - (time.monotonic() - started)))
    assert put(http, url, b"x" * MB, 2 * MB, 3 * MB).status_code == 404


def test_a_session_for_under_3_mb_or_over_150_mb_is_refused(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http)
    draft_id = draft(emu, http, token)
    for size, code in (
        (MB, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"),
        (151 * MB, "ErrorAttachmentSizeExceeded"),
    ):
        item = {"attachmentType": "file", "name": "f", "size": size}
        reply = call(
            emu, http, token, "POST", f"messages/{draft_id}/attachments/createUploadSession", {"AttachmentItem": item}
        )
        assert graph_error(reply)[:2] == (400, code)


def test_without_mail_read_write_drafts_are_refused_as_exchange_refuses_them(
    emu: Emulator, http: requests.Session
) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send",))
    token = token_for(emu, http)
    reply = call(emu, http, token, "POST", "messages", mail()["message"])
    assert graph_error(reply) == (403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")


def test_over_the_maximum_message_size_graph_answers_error_message_size_exceeded(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    emu.configure_drafts({"maxMessageSizeBytes": 4 * MB})
    draft_id = draft(emu, http, token)
    item = {"attachmentType": "file", "name": "f", "size": 3 * MB + 1}  # 4 MB and more once base64-encoded
    reply = call(
        emu, http, token, "POST", f"messages/{draft_id}/attachments/createUploadSession", {"AttachmentItem": item}
    )
    assert graph_error(reply)[:2] == (400, "ErrorMessageSizeExceeded")
    attachment = {"@odata.type": "#microsoft.graph.fileAttachment", "name": "f", "contentType": "x/y"}
    attachment["contentBytes"] = base64.b64encode(b"x" * (3 * MB + 1)).decode()  # over 4 MB of base64 JSON
    assert call(emu, http, token, "POST", f"messages/{draft_id}/attachments", attachment).status_code == 413
    # sendMail is held to the same maximum
    emu.configure_drafts({"maxMessageSizeBytes": MB})
    attachment["contentBytes"] = base64.b64encode(b"x" * MB).decode()
    reply = send(emu, http, mail(attachments=[attachment]), token, mailbox=MAILBOX)
    assert graph_error(reply)[:2] == (400, "ErrorMessageSizeExceeded")
    assert emu.outbox == []


def test_a_draft_is_found_by_its_mark_deleted_once_and_then_unknown(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http)
    draft_id = draft(emu, http, token)
    query = f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARK_PROPERTY_ID}' and ep/value eq '{MARK}')"
    found = http.get(
        f"{emu.url}/v1.0/users/{MAILBOX}/mailFolders/drafts/messages",
        params={"$filter": query, "$select": "id"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert found.json()["value"] == [{"id": draft_id}]
    assert call(emu, http, token, "DELETE", f"messages/{draft_id}").status_code == 204
    assert graph_error(call(emu, http, token, "DELETE", f"messages/{draft_id}"))[:2] == (404, "ErrorItemNotFound")
    assert graph_error(call(emu, http, token, "POST", f"messages/{draft_id}/send"))[:2] == (404, "ErrorItemNotFound")
    assert emu.outbox == []


def test_a_draft_over_the_maximum_message_size_is_refused_at_send_and_stays_a_draft(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    draft_id = draft(emu, http, token)
    attachment = {"@odata.type": "#microsoft.graph.fileAttachment", "name": "f", "contentType": "x/y"}
    attachment["contentBytes"] = base64.b64encode(b"x" * MB).decode()
    assert call(emu, http, token, "POST", f"messages/{draft_id}/attachments", attachment).status_code == 201
    emu.configure_drafts({"maxMessageSizeBytes": MB})  # the mailbox's limit lowered under the draft
    reply = call(emu, http, token, "POST", f"messages/{draft_id}/send")
    assert graph_error(reply)[:2] == (400, "ErrorMessageSizeExceeded")
    assert emu.outbox == [] and emu.sent_items(MAILBOX) == []
    assert [d["id"] for d in emu.drafts_view()] == [draft_id]


def test_send_mail_outbox_entries_carry_attachment_hashes_and_not_large_bytes(
    emu: Emulator, http: requests.Session
) -> None:
    small, large = b"hello", hashlib.sha256(b"large").digest() * (100 * 1024 // 32)
    attachments = [
        {"@odata.type": "#microsoft.graph.fileAttachment", "name": n, "contentBytes": base64.b64encode(d).decode()}
        for n, d in (("small.txt", small), ("large.bin", large))
    ]
    assert send(emu, http, mail(attachments=attachments), token_for(emu, http), mailbox=MAILBOX).status_code == 202
    (entry,) = emu.outbox
    assert entry["via"] == "sendMail"
    assert [(a["name"], a["size"], a["sha256"]) for a in entry["attachments"]] == [
        ("small.txt", 5, hashlib.sha256(small).hexdigest()),
        ("large.bin", len(large), hashlib.sha256(large).hexdigest()),
    ]
    kept = entry["message"]["message"]["attachments"]
    assert "contentBytes" in kept[0] and "contentBytes" not in kept[1]
