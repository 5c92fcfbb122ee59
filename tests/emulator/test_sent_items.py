"""Sent Items and the faults that make a send's outcome unknown, as the emulator plays them over HTTPS.

The relay's guarantees rest on these answers (shared/delivery.py): a message accepted and then answered
with a 5xx, or answered too late, must be in the outbox and, once filed, findable by its mark; a look-up
without Mail.Read must be refused as Exchange refuses it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from devstack.emulator import Emulator
from shared.status import MARK_PROPERTY_ID
from tests.emulator.test_emulator import CLIENT, SECRET, TENANT, graph_error, http, mail, running, send, token_for

__all__ = ["http", "running"]

IN = "alerts@contoso.com"
OUT = "ceo@contoso.com"
MARK = "ab" * 32


@pytest.fixture
def emu(running: Emulator) -> Emulator:
    running.reset()
    running.sent_items_delay = 0.0
    running.add_mailbox(IN, in_exchange_scope=True)
    running.add_mailbox(OUT, in_exchange_scope=False)
    running.add_app(TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send", "Application Mail.Read"))
    return running


def marked(mark: str = MARK, save: bool = True, **message: Any) -> dict[str, Any]:
    body = mail(singleValueExtendedProperties=[{"id": MARK_PROPERTY_ID, "value": mark}], **message)
    body["saveToSentItems"] = save
    return body


def lookup(
    emu: Emulator, http: requests.Session, token: str, mark: str = MARK, mailbox: str = IN, prop: str = MARK_PROPERTY_ID
) -> requests.Response:
    query = f"singleValueExtendedProperties/Any(ep: ep/id eq '{prop}' and ep/value eq '{mark}')"
    return http.get(
        f"{emu.url}/v1.0/users/{mailbox}/mailFolders/SentItems/messages",
        params={"$filter": query, "$select": "id,sentDateTime", "$top": "1"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_a_marked_message_is_found_by_its_mark_and_only_by_it(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http)
    assert send(emu, http, marked(), token, mailbox=IN).status_code == 202
    found = lookup(emu, http, token)
    assert found.status_code == 200
    (item,) = found.json()["value"]
    assert set(item) == {"id", "sentDateTime"}
    assert lookup(emu, http, token, mark=MARK.upper()).json()["value"]  # the value is case-insensitive
    assert lookup(emu, http, token, mark="cd" * 32).json()["value"] == []
    renamed = MARK_PROPERTY_ID.replace("GraphMailRelayKey", "graphmailrelaykey")
    assert lookup(emu, http, token, prop=renamed).json()["value"] == []  # the Name is case-sensitive


def test_sent_items_show_a_message_only_after_exchange_files_it(emu: Emulator, http: requests.Session) -> None:
    emu.configure_exchange({"sentItemsDelaySeconds": 0.5})
    token = token_for(emu, http)
    send(emu, http, marked(), token, mailbox=IN)
    assert lookup(emu, http, token).json()["value"] == []
    time.sleep(0.6)
    assert len(lookup(emu, http, token).json()["value"]) == 1


def test_a_message_not_saved_to_sent_items_cannot_be_found(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http)
    send(emu, http, marked(save=False), token, mailbox=IN)
    assert lookup(emu, http, token).json()["value"] == []
    assert emu.copies_by_mark()[MARK] == 1  # but it went out: the outbox is the witness


@pytest.mark.parametrize(
    ("roles", "mailbox"),
    [
        (("Application Mail.Send", "Application Mail.ReadBasic"), IN),  # ReadBasic excludes extended properties
        (("Application Mail.Send",), IN),
        (("Application Mail.Send", "Application Mail.Read"), OUT),  # outside the Exchange scope
    ],
    ids=["ReadBasic only", "no read role", "out of scope"],
)
def test_a_look_up_without_mail_read_in_scope_is_refused(
    emu: Emulator, http: requests.Session, roles: tuple[str, ...], mailbox: str
) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, exchange_roles=roles)
    reply = lookup(emu, http, token_for(emu, http), mailbox=mailbox)
    assert graph_error(reply)[:2] == (403, "ErrorAccessDenied")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("subject eq 'x'", "ErrorInvalidUrlQueryFilter"),
        (f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARK_PROPERTY_ID}')", "ErrorInvalidUrlQueryFilter"),
        (
            f"singleValueExtendedProperties/Any(ep: x/id eq '{MARK_PROPERTY_ID}' and ep/value eq 'v')",
            "ErrorInvalidUrlQueryFilter",
        ),
        ("singleValueExtendedProperties/Any(ep: ep/id eq 'unterminated", "BadRequest"),
        (
            "singleValueExtendedProperties/Any(ep: ep/id eq 'no such id' and ep/value eq 'v')",
            "ErrorInvalidExtendedProperty",
        ),
    ],
)
def test_any_other_filter_is_a_bad_request(emu: Emulator, http: requests.Session, query: str, code: str) -> None:
    reply = http.get(
        f"{emu.url}/v1.0/users/{IN}/mailFolders/sentitems/messages",
        params={"$filter": query},
        headers={"Authorization": f"Bearer {token_for(emu, http)}"},
        timeout=10,
    )
    assert graph_error(reply)[:2] == (400, code)


@pytest.mark.parametrize(
    "properties",
    [
        {"id": MARK_PROPERTY_ID, "value": MARK},  # not a collection
        [{"id": MARK_PROPERTY_ID, "value": 7}],  # a value that is no string
        [{"id": "not an id", "value": MARK}],  # an id in none of the documented formats
    ],
    ids=["not a list", "value not a string", "bad id"],
)
def test_a_malformed_mark_is_refused_as_graph_refuses_it(
    emu: Emulator, http: requests.Session, properties: Any
) -> None:
    body = mail(singleValueExtendedProperties=properties)
    reply = send(emu, http, body, token_for(emu, http), mailbox=IN)
    assert reply.status_code == 400 and emu.copies_by_mark() == {}


@pytest.mark.parametrize("status", [500, 502, 504])
def test_an_accept_fault_sends_the_message_then_answers_the_error(
    emu: Emulator, http: requests.Session, status: int
) -> None:
    emu.add_fault("graph.sendMail", status=status, accept=True, retry_after=None)
    token = token_for(emu, http)
    reply = send(emu, http, marked(), token, mailbox=IN)
    assert reply.status_code == status
    assert emu.copies_by_mark() == {MARK: 1} and lookup(emu, http, token).json()["value"]


def test_an_accept_fault_with_a_delay_answers_202_after_the_clients_timeout(
    emu: Emulator, http: requests.Session
) -> None:
    emu.add_fault("graph.sendMail", status=None, accept=True, delay=1.5)
    token = token_for(emu, http)
    with pytest.raises(requests.ReadTimeout):
        http.post(
            f"{emu.url}/v1.0/users/{IN}/sendMail",
            json=marked(),
            headers={"Authorization": f"Bearer {token}"},
            timeout=(5, 0.5),
        )
    assert emu.copies_by_mark() == {MARK: 1}  # gone out although the client gave up


def test_a_plain_fault_sends_nothing_and_the_look_up_can_fail_too(emu: Emulator, http: requests.Session) -> None:
    emu.add_fault("graph.sendMail", status=503, retry_after=1)
    emu.add_fault("graph.messages", status=503, retry_after=1)
    token = token_for(emu, http)
    assert send(emu, http, marked(), token, mailbox=IN).status_code == 503
    assert emu.copies_by_mark() == {}
    assert graph_error(lookup(emu, http, token))[:2] == (503, "ServiceUnavailable")


def test_accept_is_refused_for_services_that_accept_nothing(emu: Emulator) -> None:
    with pytest.raises(ValueError, match=r"graph\.sendMail only"):
        emu.add_fault("entra.token", status=500, accept=True)


@pytest.mark.parametrize(("value", "saved"), [("false", False), ("FALSE", False), ("true", True), ("True", True)])
def test_save_to_sent_items_as_a_string_is_read_as_graph_reads_it(
    emu: Emulator, http: requests.Session, value: str, saved: bool
) -> None:
    # Microsoft's own sendMail example posts "saveToSentItems": "false" and gets 202 (user-sendmail, Example 1).
    token = token_for(emu, http)
    body: dict[str, Any] = marked()
    body["saveToSentItems"] = value
    assert send(emu, http, body, token, mailbox=IN).status_code == 202
    assert bool(lookup(emu, http, token).json()["value"]) is saved


@pytest.mark.parametrize("value", ["no", "0", 0, 1, [], {}])
def test_save_to_sent_items_of_any_other_value_is_refused(emu: Emulator, http: requests.Session, value: Any) -> None:
    body: dict[str, Any] = marked()
    body["saveToSentItems"] = value
    reply = send(emu, http, body, token_for(emu, http), mailbox=IN)
    assert graph_error(reply)[:2] == (400, "RequestBodyRead") and emu.outbox == []
