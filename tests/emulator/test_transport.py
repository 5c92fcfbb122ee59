"""Exchange's transport after Graph's 202, as the emulator plays it over HTTPS (devstack/emulator/transport.py cites
"Send mail by using the Microsoft Graph API"): a message waits in Drafts, then moves to Sent Items; a transport
failure leaves a non-delivery report in the Inbox, nothing in Sent Items, and the outbox entry bounced."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from devstack.emulator import Emulator
from shared.status import MARK_PROPERTY_ID
from tests.emulator.test_drafts import call, draft
from tests.emulator.test_emulator import CLIENT, SECRET, TENANT, http, mail, running, send, token_for

__all__ = ["http", "running"]

BOX = "alerts@contoso.com"
OTHER = "other@contoso.com"
MARK = "ef" * 32


@pytest.fixture
def emu(running: Emulator) -> Emulator:
    running.reset()
    running.add_mailbox(BOX, in_exchange_scope=True)
    running.add_mailbox(OTHER, in_exchange_scope=True)
    running.add_app(
        TENANT,
        CLIENT,
        SECRET,
        exchange_roles=("Application Mail.Send", "Application Mail.Read", "Application Mail.ReadWrite"),
    )
    return running


def marked(save: bool = True, mark: str = MARK) -> dict[str, Any]:
    body = mail(singleValueExtendedProperties=[{"id": MARK_PROPERTY_ID, "value": mark}])
    body["saveToSentItems"] = save
    return body


def folder(
    emu: Emulator, http: requests.Session, token: str, name: str, mailbox: str = BOX, select: str = "id,subject"
) -> list[dict[str, Any]]:
    """A folder's messages, read through Graph as the relay reads them (with its mark's filter, but for the Inbox)."""
    params = {"$select": select}
    if name != "inbox":
        params["$filter"] = (
            f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARK_PROPERTY_ID}' and ep/value eq '{MARK}')"
        )
    reply = http.get(
        f"{emu.url}/v1.0/users/{mailbox}/mailFolders/{name}/messages",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    value: list[dict[str, Any]] = reply.json()["value"]
    return value


def admin(emu: Emulator, http: requests.Session, route: str, body: Any) -> requests.Response:
    return http.post(f"{emu.url}/_emulator/{route}", json=body, timeout=10)


def test_a_sent_message_waits_in_drafts_during_transport_then_moves_to_sent_items(
    emu: Emulator, http: requests.Session
) -> None:
    emu.configure_exchange({"sentItemsDelaySeconds": 0.5})
    token = token_for(emu, http)
    assert send(emu, http, marked(), token, mailbox=BOX).status_code == 202
    assert len(folder(emu, http, token, "drafts")) == 1 and folder(emu, http, token, "sentitems") == []
    assert [d["inTransport"] for d in emu.drafts_view()] == [True]
    time.sleep(0.6)
    assert folder(emu, http, token, "drafts") == [] and len(folder(emu, http, token, "sentitems")) == 1
    assert folder(emu, http, token, "inbox") == [] and emu.copies_by_mark() == {MARK: 1}


def test_without_save_to_sent_items_the_message_leaves_drafts_for_nowhere(
    emu: Emulator, http: requests.Session
) -> None:
    emu.configure_exchange({"sentItemsDelaySeconds": 0.3})
    token = token_for(emu, http)
    assert send(emu, http, marked(save=False), token, mailbox=BOX).status_code == 202
    assert len(folder(emu, http, token, "drafts")) == 1  # step 1 saves it in Drafts whatever saveToSentItems says
    time.sleep(0.4)
    assert folder(emu, http, token, "drafts") == folder(emu, http, token, "sentitems") == []
    assert emu.copies_by_mark() == {MARK: 1}


def test_a_mailbox_whose_transport_fails_gets_an_ndr_and_nothing_in_sent_items(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    assert admin(emu, http, "transport", {"mailbox": BOX, "failing": True}).status_code == 200
    assert send(emu, http, marked(), token, mailbox=BOX).status_code == 202  # Graph accepted it: step 1 succeeded
    assert folder(emu, http, token, "sentitems") == []
    (ndr,) = folder(emu, http, token, "inbox")
    assert ndr["subject"] == "Undeliverable: Quarterly numbers"
    (report,) = emu.inbox_items(BOX)
    assert (
        "5.6.0" in report["bodyPreview"] and report["originalInternetMessageId"] == emu.outbox[0]["internetMessageId"]
    )
    assert "5.6.0" in emu.outbox[0]["bounced"] and emu.copies_by_mark() == {}  # accepted, never delivered
    (left,) = emu.drafts_view()  # assumed: it stays a draft, no longer in transport
    assert left["inTransport"] is False and left["singleValueExtendedProperties"][0]["value"] == MARK
    assert send(emu, http, marked(), token, mailbox=OTHER).status_code == 202
    assert len(emu.sent_items(OTHER)) == 1  # the switch is the mailbox's
    assert admin(emu, http, "transport", {"mailbox": BOX, "failing": False}).status_code == 200
    send(emu, http, marked(), token, mailbox=BOX)
    assert len(folder(emu, http, token, "sentitems")) == 1 and len(emu.inbox_items(BOX)) == 1


def test_the_next_n_messages_fail_with_the_ndr_given_then_transport_works_again(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    emu.fail_next_transports(2, ndr="550 5.7.1 delivery not authorized")
    for mailbox in (BOX, OTHER, BOX):
        assert send(emu, http, marked(), token, mailbox=mailbox).status_code == 202
    assert [e.get("bounced") for e in emu.outbox] == ["550 5.7.1 delivery not authorized"] * 2 + [None]
    assert [len(emu.inbox_items(m)) for m in (BOX, OTHER)] == [1, 1]
    assert len(emu.sent_items(BOX)) == 1 and emu.sent_items(OTHER) == []
    assert emu.transport_view()["failNext"] == []


def test_a_bounce_past_the_daily_recipients_is_an_ndr_too(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http)
    many: list[dict[str, Any]] = [{"emailAddress": {"address": f"r{i}@contoso.com"}} for i in range(500)]
    for _ in range(20):
        assert send(emu, http, mail(toRecipients=many), token, mailbox=BOX).status_code == 202
    assert send(emu, http, marked(), token, mailbox=BOX).status_code == 202
    (ndr,) = emu.inbox_items(BOX)
    assert "5.1.90" in ndr["bodyPreview"] and folder(emu, http, token, "sentitems") == []


def test_a_sent_draft_stays_in_drafts_while_in_transport_and_cannot_be_changed_or_sent_again(
    emu: Emulator, http: requests.Session
) -> None:
    emu.configure_exchange({"sentItemsDelaySeconds": 0.5})
    token = token_for(emu, http)
    draft_id = draft(emu, http, token)
    assert call(emu, http, token, "POST", f"messages/{draft_id}/send").status_code == 202
    assert [d["id"] for d in emu.drafts_view() if d["inTransport"]] == [draft_id]
    assert call(emu, http, token, "POST", f"messages/{draft_id}/send").status_code == 404  # assumed
    small = {"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.txt", "contentBytes": "aGk="}
    assert call(emu, http, token, "POST", f"messages/{draft_id}/attachments", small).status_code == 404  # assumed
    time.sleep(0.6)
    assert emu.drafts_view() == [] and len(emu.sent_items(BOX)) == 1 and len(emu.outbox) == 1


def drafts_flag(emu: Emulator, http: requests.Session, token: str, name: str = "drafts") -> list[bool]:
    """isDraft of the marked messages in a folder, selected through Graph as the relay selects it."""
    return [m["isDraft"] for m in folder(emu, http, token, name, select="id,isDraft")]


def test_is_draft_is_true_until_the_send_false_in_transport_and_true_again_after_a_failed_transport(
    emu: Emulator, http: requests.Session
) -> None:
    """The message resource's isDraft ("a draft if it hasn't been sent yet"); its value in transport is assumed
    (transport.py): false, so that a sender can tell a submitted message from a leftover draft."""
    emu.configure_exchange({"sentItemsDelaySeconds": 0.5})
    token = token_for(emu, http)
    draft_id = draft(emu, http, token, MARK)
    assert drafts_flag(emu, http, token) == [True]
    assert call(emu, http, token, "POST", f"messages/{draft_id}/send").status_code == 202
    assert drafts_flag(emu, http, token) == [False]  # still in Drafts, in transport: sent
    time.sleep(0.6)
    assert drafts_flag(emu, http, token) == [] and drafts_flag(emu, http, token, "sentitems") == [False]
    assert send(emu, http, marked(), token, mailbox=BOX).status_code == 202
    assert drafts_flag(emu, http, token) == [False]  # sendMail's message waits in Drafts the same way
    emu.fail_next_transports(1)
    failing = draft(emu, http, token, MARK)
    assert call(emu, http, token, "POST", f"messages/{failing}/send").status_code == 202
    time.sleep(0.6)
    (ndr,) = folder(emu, http, token, "inbox", select="id,isDraft")
    assert ndr["isDraft"] is False and drafts_flag(emu, http, token) == [True]  # a draft again (assumed)


def test_a_sent_draft_whose_transport_fails_stays_a_draft_with_an_ndr(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http)
    emu.set_transport_failure(BOX)
    draft_id = draft(emu, http, token)
    assert call(emu, http, token, "POST", f"messages/{draft_id}/send").status_code == 202
    assert [(d["id"], d["inTransport"]) for d in emu.drafts_view()] == [(draft_id, False)]
    assert len(emu.inbox_items(BOX)) == 1 and emu.sent_items(BOX) == [] and "bounced" in emu.outbox[0]


def test_a_message_deleted_in_transport_is_delivered_and_filed_nowhere(emu: Emulator, http: requests.Session) -> None:
    emu.configure_exchange({"sentItemsDelaySeconds": 0.3})
    token = token_for(emu, http)
    send(emu, http, marked(), token, mailbox=BOX)
    (in_drafts,) = folder(emu, http, token, "drafts")
    assert call(emu, http, token, "DELETE", f"messages/{in_drafts['id']}").status_code == 204
    time.sleep(0.4)
    # Assumed (transport.py): transport took its copy; the sender that deleted it sees it nowhere.
    assert folder(emu, http, token, "sentitems") == [] and emu.copies_by_mark() == {MARK: 1}
    assert emu.inbox_items(BOX) == []


@pytest.mark.parametrize(
    "body",
    [{}, {"mailbox": BOX}, {"failing": True}, {"count": 0}, {"count": True}, {"mailbox": "", "count": 1}],
)
def test_the_transport_switch_refuses_what_it_cannot_read(
    emu: Emulator, http: requests.Session, body: dict[str, Any]
) -> None:
    assert admin(emu, http, "transport", body).status_code == 400
    assert emu.transport_view() == {"failingMailboxes": {}, "failNext": [], "inTransport": 0}
