"""Apps as principals, without I/O: the declaration's rules, a trigger per app, the sender policy per app, ids per
app (no squatting, no blocking), the app carried by the relay's own retry wrapper and dead letters."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.functions.queue import QueueMessage

from shared.apps import DEFAULT_APP, indexed_apps, status_table, trigger_name
from shared.handlers import handle_mail_message
from shared.pacing import Limits, MemoryPaceStore, Pacer
from shared.retries import MalformedWrapper, unwrap, wrap
from shared.settings import SettingsError, load_settings
from shared.status import SCHEDULED, SENT, AppStatusStore, MemoryStatusStore, StatusKey
from tests.unit.test_delivery import REQUEST, SENDER, Stack, make
from tests.unit.test_settings import GOOD

ROOT = Path(__file__).resolve().parents[2]
RECEIPTS = "receipts@contoso.com"
APPS = json.dumps(
    [
        {"name": "alerts", "senders": [SENDER]},
        {"name": "billing", "senders": [RECEIPTS], "principals": ["0b111111-2222-4333-8444-555555555555"]},
    ]
)


def declared(value: Any, **env: str) -> Any:
    settings = {**GOOD, "ALLOWED_SENDERS": f"{SENDER},{RECEIPTS}", **env}
    settings["MAILRELAY_APPS"] = value if isinstance(value, str) else json.dumps(value)
    return load_settings(settings)


# --- the declaration -------------------------------------------------------------------------------------------


def test_apps_are_declared_with_their_queue_and_senders() -> None:
    settings = declared(APPS)
    billing = settings.app("billing")
    assert billing.queue == "mail-outbox-billing" and billing.senders == frozenset({RECEIPTS})
    assert trigger_name(billing.name) == "send_mail_billing" and trigger_name(DEFAULT_APP) == "send_mail"
    # The outbox stays the default app, with every allowed sender: a single-app deployment is unchanged.
    default = settings.app(DEFAULT_APP)
    assert default.queue == "mail-outbox" and default.senders == settings.allowed_senders


def test_no_declaration_is_one_app_as_before() -> None:
    settings = load_settings(GOOD)
    assert settings.apps == () and settings.app(DEFAULT_APP).queue == "mail-outbox"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("not json", "must be a JSON array of apps"),
        ({"name": "billing"}, "must be a JSON array of apps"),
        (["billing"], "not an app (an object) at position 1"),
        ([{"name": "billing", "senders": [RECEIPTS], "queue": "x"}], "unknown field 'queue'"),
        ([{"name": "Billing", "senders": [RECEIPTS]}], "names app 'Billing' wrongly"),
        ([{"name": "b", "senders": [RECEIPTS]}], "wrongly"),
        ([{"name": "bill--ing", "senders": [RECEIPTS]}], "wrongly"),
        ([{"name": "retry", "senders": [RECEIPTS]}], "'retry', which is reserved"),
        ([{"name": "default", "senders": [RECEIPTS]}], "'default', which is reserved"),
        ([{"name": "billing", "senders": [RECEIPTS]}] * 2, "declares app 'billing' twice"),
        (
            [{"name": "billing", "senders": [RECEIPTS]}, {"name": "billing-poison", "senders": [RECEIPTS]}],
            "is app 'billing''s poison queue",
        ),
        ([{"name": "billing", "senders": []}], "gives app 'billing' no senders"),
        ([{"name": "billing", "senders": ["ceo@contoso.com"]}], "ceo@contoso.com, which is not on ALLOWED_SENDERS"),
        ([{"name": "billing", "senders": ["not an address"]}], "not an email address"),
        ([{"name": "billing", "senders": [RECEIPTS], "principals": ["billing-app"]}], "not Entra object ids"),
    ],
)
def test_a_bad_declaration_is_refused_naming_the_setting_and_the_app(value: Any, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        declared(value)
    assert "MAILRELAY_APPS" in str(caught.value) and says in str(caught.value)


def test_shares_are_declared_per_app() -> None:
    settings = declared([{"name": "billing", "senders": [RECEIPTS], "messagesPerMinute": 10, "recipientsPerDay": 2000}])
    billing = settings.app("billing")
    assert (billing.messages_per_minute, billing.recipients_per_day) == (10, 2000)
    assert settings.app(DEFAULT_APP).messages_per_minute is None  # the outbox shares what is left


@pytest.mark.parametrize("share", [0, 31, 2.5, True, "10"])
def test_a_share_outside_the_mailbox_limit_is_refused(share: Any) -> None:
    with pytest.raises(SettingsError, match="messagesPerMinute that is not a whole number from 1 to 30"):
        declared([{"name": "billing", "senders": [RECEIPTS], "messagesPerMinute": share}])


def test_shares_promised_beyond_a_mailbox_limit_are_refused_naming_the_mailbox() -> None:
    apps = [
        {"name": "billing", "senders": [RECEIPTS], "recipientsPerDay": 6000},
        {"name": "shop", "senders": [RECEIPTS], "recipientsPerDay": 3000},
    ]
    assert declared(apps).app("shop").recipients_per_day == 3000
    with pytest.raises(SettingsError, match=f"promises {RECEIPTS} 9000 recipientsPerDay in all"):
        declared(apps, MAILBOX_RECIPIENTS_PER_DAY="8000")


def test_an_app_whose_poison_queue_name_would_be_too_long_is_refused() -> None:
    long_queue = "q" * 40
    with pytest.raises(SettingsError, match="longer than a queue name may be"):
        declared([{"name": "billing-department-x", "senders": [RECEIPTS]}], MAIL_QUEUE_NAME=long_queue)


def test_an_undeclared_app_is_named() -> None:
    with pytest.raises(SettingsError, match="declares no app 'hr'"):
        declared(APPS).app("hr")


def test_indexing_is_lenient_so_a_bad_declaration_never_hides_every_function() -> None:
    assert indexed_apps({"MAILRELAY_APPS": APPS}) == ("alerts", "billing")
    assert indexed_apps({}) == ()
    assert indexed_apps({"MAILRELAY_APPS": "not json"}) == ()
    assert indexed_apps({"MAILRELAY_APPS": '[{"name": "retry"}, {"name": "billing"}]'}) == ("billing",)


def test_the_host_indexes_one_trigger_per_declared_app() -> None:
    # As the worker does: import function_app.py with the app settings in the environment, read its functions.
    script = (
        "import json, function_app\n"
        "print(json.dumps({f.get_function_name(): f.get_trigger().queue_name for f in function_app.app.get_functions()"
        " if f.get_trigger().type == 'queueTrigger'}))"
    )
    env = {"PATH": "/usr/bin:/bin", "MAILRELAY_APPS": APPS}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {
        "send_mail": "%MAIL_QUEUE_NAME%",
        "send_mail_alerts": "%MAIL_QUEUE_NAME%-alerts",
        "send_mail_billing": "%MAIL_QUEUE_NAME%-billing",
        "retry_mail": "%MAIL_QUEUE_NAME%-retry",
    }


# --- the relay, per app ------------------------------------------------------------------------------------------


def apps_stack() -> Stack:
    """The relay with two apps, each app's records in a store of its own, as build_runtime routes them to tables."""
    s = make(ALLOWED_SENDERS=f"{SENDER},{RECEIPTS}", MAILRELAY_APPS=APPS)
    s.status = AppStatusStore(s.status, {"alerts": MemoryStatusStore(), "billing": MemoryStatusStore()})
    s.rt = replace(s.rt, status=s.status)
    return s


def from_app(s: Stack, app: str, request: dict[str, Any], msg_id: str) -> None:
    body = json.dumps(request).encode()
    handle_mail_message(QueueMessage(id=msg_id, body=body, dequeue_count=1, pop_receipt="p"), s.rt, app=app)


def test_an_app_sending_as_another_apps_sender_is_dead_lettered_before_any_state_or_graph() -> None:
    s = apps_stack()
    from_app(s, "billing", REQUEST, "q-1")  # REQUEST is from alerts@, the alerts app's sender
    assert s.graph.calls == [] and all(store.writes == 0 for store in s.status.stores)
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "SenderNotAllowedForApp" and envelope["app"] == "billing"
    assert "billing" in envelope["error"]["message"] and SENDER in envelope["error"]["message"]
    assert "MAILRELAY_APPS" in envelope["error"]["hint"]


def test_an_app_sends_as_its_own_sender_and_the_record_names_it() -> None:
    s = apps_stack()
    from_app(s, "alerts", REQUEST, "q-1")
    assert len(s.graph.calls) == 1
    record = s.record(StatusKey(SENDER, "id", "order-42", "alerts"))
    assert record.state == SENT and record.to_json()["app"] == "alerts"


def test_another_app_cannot_squat_an_id() -> None:
    # Two apps allowed the same mailbox (the default outbox and alerts): B sends A's id first, with other content.
    s = apps_stack()
    from_app(s, DEFAULT_APP, {**REQUEST, "subject": "squatter"}, "q-1")
    from_app(s, "alerts", REQUEST, "q-2")
    assert len(s.graph.calls) == 2 and s.dead.envelopes == []  # no DuplicateKey for A
    assert s.record(StatusKey(SENDER, "id", "order-42", "alerts")).state == SENT
    # Each carries its own mark, so a look-up in Sent Items finds only its own message.
    marks = [body["message"]["singleValueExtendedProperties"][0]["value"] for _, body, _ in s.graph.calls]
    assert len(set(marks)) == 2


def test_another_app_cannot_block_an_id_with_a_schedule() -> None:
    s = apps_stack()
    later = (s.clock.now + timedelta(days=6)).isoformat()
    from_app(s, DEFAULT_APP, {**REQUEST, "subject": "blocker", "sendAt": later}, "q-1")
    assert s.record(StatusKey(SENDER, "id", "order-42")).state == SCHEDULED
    from_app(s, "alerts", REQUEST, "q-2")
    assert len(s.graph.calls) == 1 and s.dead.envelopes == []
    sent = s.record(StatusKey(SENDER, "id", "order-42", "alerts"))
    waiting = s.record(StatusKey(SENDER, "id", "order-42"))
    # Two records: A's sent now, B's still waiting for its own time, neither touching the other.
    assert sent.state == SENT and waiting.state == SCHEDULED and sent.fingerprint != waiting.fingerprint


def test_each_apps_records_live_in_a_table_of_their_own() -> None:
    """Table storage's roles stop at the table: an app's credentials can be kept to its records only if no other
    app's record is in its table, and none of its records in another's."""
    s = apps_stack()
    from_app(s, DEFAULT_APP, REQUEST, "q-1")
    from_app(s, "alerts", REQUEST, "q-2")  # the same sender and id, another app
    outbox, alerts, billing = s.status.stores
    assert [r.key.app for r in outbox.since(s.clock.now - timedelta(hours=1))] == [DEFAULT_APP]
    assert [r.key.app for r in alerts.since(s.clock.now - timedelta(hours=1))] == ["alerts"]
    assert len(billing) == 0
    assert {r.key.app for r in s.status.find("order-42", SENDER)} == {DEFAULT_APP, "alerts"}  # an operator sees all
    with pytest.raises(ValueError, match="'hr' is not declared"):
        s.status.get(StatusKey(SENDER, "id", "order-42", "hr"))


def test_status_tables_are_named_for_their_app_and_two_that_would_collide_are_refused() -> None:
    assert [status_table(a) for a in (DEFAULT_APP, "billing", "billing-eu")] == [
        "mailstatus",
        "mailstatusbilling",
        "mailstatusbillingeu",
    ]
    with pytest.raises(SettingsError, match=r"'billing-eu' and 'billingeu'.*share the table mailstatusbillingeu"):
        declared([{"name": "billing-eu", "senders": [RECEIPTS]}, {"name": "billingeu", "senders": [RECEIPTS]}])


def paced(s: Stack) -> MemoryPaceStore:
    """Pacing on, its rows in the default app's table (the outbox's store), as in Table `mailstatus`."""
    rows = MemoryPaceStore(s.status.stores[0].rows)
    s.rt = replace(s.rt, pacer=Pacer(rows, Limits()))
    return rows


def test_a_declared_apps_outcome_frees_its_pace_slot_after_the_record() -> None:
    """A transaction holds one table: the app's record first, then the slot freed in the pace row (a merge, or the
    row under its ETag), one round trip more than the default app's outcome and the same row after it."""
    s = apps_stack()
    pace = paced(s)
    from_app(s, "alerts", REQUEST, "q-1")
    assert s.record(StatusKey(SENDER, "id", "order-42", "alerts")).state == SENT
    state, _ = pace.read(SENDER)
    assert state.slots == {} and len(state.sends) == 1 and sum(b[1] for b in state.recipients) == 3  # REQUEST's
    outbox, alerts, _ = s.status.stores
    assert (alerts.writes, outbox.writes) == (2, 0)  # the claim and the outcome, in the app's table only


def test_a_slot_not_freed_after_a_declared_apps_outcome_keeps_the_outcome_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = apps_stack()
    pace = paced(s)
    outbox = s.status.stores[0]

    def unreachable(partition: str, write: Any) -> Any:
        raise ConnectionError("storage went away")

    outbox.write_row = unreachable  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="mailrelay"):
        from_app(s, "alerts", REQUEST, "q-1")
    assert s.record(StatusKey(SENDER, "id", "order-42", "alerts")).state == SENT and len(s.graph.calls) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pace.release")]
    assert "stays taken until its lease ends: ConnectionError" in line
    state, _ = pace.read(SENDER)
    assert len(state.slots) == 1  # held until its lease lapses, as a dead worker's


def test_the_default_apps_keys_are_what_they_were() -> None:
    # Records and Sent Items marks written before apps stay valid for the single-app deployment.
    old = StatusKey(SENDER, "id", "order-42")
    assert old.app == DEFAULT_APP and old.entity_keys()[1] == StatusKey.of(SENDER, "order-42", None).entity_keys()[1]
    assert StatusKey(SENDER, "id", "order-42", "alerts").entity_keys() != old.entity_keys()


def test_a_retry_goes_back_to_its_app() -> None:
    s = apps_stack()
    from tests.fakes import graph_error

    s.graph.replies = [graph_error(503, "ServiceUnavailable", "try later")]
    from_app(s, "alerts", REQUEST, "q-1")
    (wrapper, _) = s.pending[0]
    assert wrapper["$retry"]["app"] == "alerts"
    s.clock.advance(3600)
    s.run_retries()
    assert s.record(StatusKey(SENDER, "id", "order-42", "alerts")).state == SENT


def test_a_retry_of_an_app_no_longer_declared_is_dead_lettered_naming_it() -> None:
    s = apps_stack()
    s.pending.append((wrap(REQUEST, "q-1", "transient", "hr"), s.clock.now))
    s.run_retries()
    assert s.graph.calls == []
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "AppNotDeclared" and envelope["app"] == "hr"


@pytest.mark.parametrize("forged", ["Billing", "../x", 7, "retry"])
def test_a_wrapper_naming_no_valid_app_is_malformed(forged: Any) -> None:
    body = json.dumps({"$retry": {"originalMessageId": "q-1", "reason": "x", "app": forged}, "request": REQUEST})
    with pytest.raises(MalformedWrapper, match="app"):
        unwrap(body.encode())


def test_a_dead_letter_of_the_default_app_names_it() -> None:
    s = apps_stack()
    from_app(s, DEFAULT_APP, {**REQUEST, "from": "ceo@contoso.com"}, "q-1")
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "SenderNotAllowed" and envelope["app"] == DEFAULT_APP
    assert s.status.get(StatusKey("ceo@contoso.com", "id", "order-42")) is None


# --- an app's own Graph registration -----------------------------------------------------------------------------

BILLING_CLIENT = "0c222222-3333-4444-8555-666666666666"
IDENTITY = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def test_an_app_may_bring_its_own_registration_configured_like_the_relays() -> None:
    own = {"credential": "federated", "clientId": BILLING_CLIENT}
    graph = (
        declared([{"name": "billing", "senders": [RECEIPTS], "graph": own}], AZURE_CLIENT_ID=IDENTITY)
        .app("billing")
        .graph
    )
    assert graph is not None and (graph.name, graph.mode, graph.client_id) == ("billing", "federated", BILLING_CLIENT)
    assert graph.tenant_id == GOOD["GRAPH_TENANT_ID"] and graph.identity_client_id == IDENTITY


@pytest.mark.parametrize(
    ("graph", "identity", "says"),
    [
        ({"credential": "federated", "clientId": BILLING_CLIENT}, "", "AZURE_CLIENT_ID is missing"),
        ({"credential": "secret", "clientId": BILLING_CLIENT}, IDENTITY, "GRAPH_CLIENT_SECRET_NAME is missing"),
        ({"credential": "federated", "clientId": "billing"}, IDENTITY, "GRAPH_CLIENT_ID must be a GUID"),
        ({"credential": "federated", "tenant": "x"}, IDENTITY, "a graph that is not an object of credential, clientId"),
        ("federated", IDENTITY, "a graph that is not an object"),
    ],
)
def test_an_unusable_registration_is_refused_naming_the_app(graph: Any, identity: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        declared([{"name": "billing", "senders": [RECEIPTS], "graph": graph}], AZURE_CLIENT_ID=identity)
    assert "app 'billing'" in str(caught.value) and says in str(caught.value)


def test_an_app_with_its_own_registration_sends_with_its_tokens() -> None:
    from tests.fakes import FakeTokens

    s = apps_stack()
    own = FakeTokens()
    own.cached = "billing-token"
    s.rt = replace(s.rt, app_relays={"billing": s.rt.relay.for_app(tokens=own)})
    from_app(s, "billing", {**REQUEST, "from": RECEIPTS}, "q-1")
    from_app(s, "alerts", REQUEST, "q-2")
    assert [token for _, _, token in s.graph.calls] == ["billing-token", "token-1"]


# --- payloads per app ---------------------------------------------------------------------------------------------


def test_an_app_reads_its_payloads_from_its_own_container_only() -> None:
    from shared.payloads import MemoryPayloads, payload_container
    from tests.unit.test_large_messages import claim_check, payload

    assert (payload_container("billing"), payload_container(DEFAULT_APP)) == ("mail-payloads-billing", "mail-payloads")
    s = apps_stack()
    shared_store, billing_store = MemoryPayloads(), MemoryPayloads()
    s.rt = replace(s.rt, payloads=shared_store, app_relays={"billing": s.rt.relay.for_app(payloads=billing_store)})
    data = payload(1000)
    # The default app's blob, named by billing: billing's container has no such blob, so billing cannot use it.
    ref = claim_check(shared_store, "0" * 32 + "/report.pdf", data)
    attachment = {"name": "report.pdf", "contentType": "application/pdf", **ref}
    from_app(s, "billing", {**REQUEST, "from": RECEIPTS, "attachments": [attachment]}, "q-1")
    assert s.graph.calls == []
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "PayloadMissing" and envelope["app"] == "billing"
    # The same bytes in billing's own container: sent, and then deleted from there, not from the shared one.
    claim_check(billing_store, "1" * 32 + "/report.pdf", data)
    own = {**attachment, "blob": "1" * 32 + "/report.pdf"}
    from_app(s, "billing", {**REQUEST, "id": "order-43", "from": RECEIPTS, "attachments": [own]}, "q-2")
    assert len(s.graph.calls) == 1
    assert billing_store.blobs == {} and "0" * 32 + "/report.pdf" in shared_store.blobs


def test_the_clean_up_reaches_every_apps_container() -> None:
    from shared.handlers import handle_status_cleanup
    from shared.payloads import MemoryPayloads
    from tests.unit.test_large_messages import claim_check, payload

    s = apps_stack()
    shared_store, billing_store = MemoryPayloads(), MemoryPayloads()
    claim_check(billing_store, "2" * 32 + "/old.bin", payload(10))
    s.rt = replace(s.rt, payloads=shared_store, app_relays={"billing": s.rt.relay.for_app(payloads=billing_store)})
    s.clock.advance(86_400 * 60)
    handle_status_cleanup(None, s.rt)
    assert billing_store.blobs == {}


# --- the scheduled-request cap ------------------------------------------------------------------------------------


def test_an_app_over_its_scheduled_cap_is_dead_lettered_and_the_outbox_has_none() -> None:
    capped = json.dumps([{"name": "alerts", "senders": [SENDER], "maxScheduled": 2}])
    s = make(ALLOWED_SENDERS=f"{SENDER},{RECEIPTS}", MAILRELAY_APPS=capped)
    later = (s.clock.now + timedelta(days=3)).isoformat()
    for i in range(3):
        from_app(s, "alerts", {**REQUEST, "id": f"remind-{i}", "sendAt": later}, f"q-{i}")
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "ScheduleLimitReached" and envelope["app"] == "alerts"
    assert "maxScheduled" in envelope["error"]["message"] and "maxScheduled" in envelope["error"]["hint"]
    assert s.status.get(StatusKey(SENDER, "id", "remind-2", "alerts")) is None
    # A redelivery of one already scheduled is not one more.
    from_app(s, "alerts", {**REQUEST, "id": "remind-0", "sendAt": later}, "q-0")
    assert len(s.dead.envelopes) == 1
    # Another app's schedule is its own count; the outbox (the default app) has no cap, as before apps.
    for i in range(3):
        from_app(s, DEFAULT_APP, {**REQUEST, "id": f"outbox-{i}", "sendAt": later}, f"o-{i}")
    assert len(s.dead.envelopes) == 1


def test_the_cap_defaults_for_declared_apps_and_is_checked() -> None:
    from shared.apps import DEFAULT_MAX_SCHEDULED

    assert declared(APPS).app("billing").max_scheduled == DEFAULT_MAX_SCHEDULED
    with pytest.raises(SettingsError, match="maxScheduled that is not a whole number from 1 to 100000"):
        declared([{"name": "billing", "senders": [RECEIPTS], "maxScheduled": 0}])
