"""Large messages through the relay with fakes (no I/O): claim checks read from the payload store, Graph's size
rules (one sendMail under 3 MB, else draft + upload sessions + send), and every way that path can fail."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import requests

from shared.graph import GraphReply
from shared.outcomes import Permanent, Sent, Transient
from shared.payloads import RANGE_BYTES, MemoryPayloads
from shared.sending import Relay
from shared.status import StatusKey
from tests.fakes import FakeDrafts, FakeTokens, graph_error

SENDER = "alerts@contoso.com"
MB = 1024 * 1024
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def payload(size: int, seed: int = 7) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def claim_check(store: MemoryPayloads, blob: str, data: bytes) -> dict[str, Any]:
    """Store `data` as `blob` and return the reference a request names it by."""
    store.put(blob, data, NOW)
    return {"blob": blob, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def setup(
    *sizes: int, max_mb: float = 35, scope_model: str = "rbac"
) -> tuple[Relay, FakeDrafts, MemoryPayloads, dict[str, Any]]:
    store = MemoryPayloads()
    attachments = []
    for i, size in enumerate(sizes):
        stored = claim_check(store, f"{i:032x}/file{i}.bin", payload(size, i))
        attachments.append({"name": f"file{i}.bin", "contentType": "application/octet-stream", **stored})
    request = {
        "id": "report-1",
        "from": SENDER,
        "to": ["ada@contoso.com"],
        "subject": "Report",
        "body": {"contentType": "text", "content": "attached"},
        "attachments": attachments,
    }
    graph = FakeDrafts()
    relay = Relay(
        allowed_senders=frozenset({SENDER}),
        tokens=FakeTokens(),
        graph=graph,
        scope_model=scope_model,
        payloads=store,
        max_message_bytes=int(max_mb * MB),
    )
    return relay, graph, store, request


MARK = StatusKey.of(SENDER, "report-1", None).mark


def deliver(relay: Relay, request: dict[str, Any]) -> Any:
    checked = relay.check(json.dumps(request).encode())
    assert not hasattr(checked, "outcome"), checked
    return relay.deliver(checked, MARK).outcome  # type: ignore[arg-type]


def test_a_claim_checked_1_mb_attachment_goes_in_one_send_mail_with_its_bytes() -> None:
    relay, graph, store, request = setup(1 * MB)
    assert deliver(relay, request) == Sent(202)
    ((_, body, _),) = graph.calls
    import base64

    sent = base64.b64decode(body["message"]["attachments"][0]["contentBytes"])
    assert sent == store.blobs[request["attachments"][0]["blob"]][0]
    assert graph.steps == []  # no draft


def test_a_10_mb_attachment_goes_through_an_upload_session_in_ranges_under_4_mb() -> None:
    relay, graph, store, request = setup(10 * MB, 200_000)
    assert deliver(relay, request) == Sent(202)
    assert graph.calls == []  # no sendMail
    assert graph.steps == [
        "find_drafts",
        "create_draft",
        "create_upload_session",
        "upload_range",
        "upload_range",
        "upload_range",
        "add_attachment",
        "send_draft",
    ]
    # "less than 4 MB" per range, whichever MB is meant: 3,932,160 bytes (shared/payloads.py)
    r = RANGE_BYTES
    assert r < 4_000_000
    assert graph.puts == [(0, r), (r, r), (2 * r, 10 * MB - 2 * r)]
    (sent,) = graph.sent_drafts
    by_name = {a["name"]: a for a in sent["attachments"]}
    assert by_name["file0.bin"]["sha256"] == request["attachments"][0]["sha256"]
    assert by_name["file1.bin"]["sha256"] == request["attachments"][1]["sha256"]
    assert sent["message"]["singleValueExtendedProperties"][0]["value"] == MARK
    # one range in memory at a time: every read of the store is one range at most
    assert max(length for _, _, length in store.reads) <= RANGE_BYTES


def test_next_expected_ranges_is_honoured_when_the_service_asks_for_bytes_again() -> None:
    relay, graph, _, request = setup(9 * MB)
    graph.rewind = [3 * MB]  # after the first range, the service kept only 3 MB of it
    assert deliver(relay, request) == Sent(202)
    assert graph.puts[:2] == [(0, RANGE_BYTES), (3 * MB, RANGE_BYTES)]
    assert graph.sent_drafts[0]["attachments"][0]["sha256"] == request["attachments"][0]["sha256"]


def test_a_corrupted_blob_is_caught_by_its_hash_the_draft_deleted_and_nothing_sent() -> None:
    relay, graph, store, request = setup(5 * MB)
    name = request["attachments"][0]["blob"]
    data = bytearray(store.blobs[name][0])
    data[4 * MB + 1] ^= 0xFF  # same size, one bit flipped in the second range
    store.put(name, bytes(data), NOW)
    outcome = deliver(relay, request)
    assert isinstance(outcome, Permanent) and outcome.code == "PayloadMismatch"
    assert "SHA-256" in outcome.message and "upload the file again" in outcome.hint
    assert graph.sent_drafts == [] and graph.drafts == {} and "delete_message" in graph.steps


def test_a_missing_blob_or_a_wrong_size_is_refused_before_graph_is_called() -> None:
    relay, graph, store, request = setup(5 * MB)
    store.delete(request["attachments"][0]["blob"])
    outcome = deliver(relay, request)
    assert isinstance(outcome, Permanent) and outcome.code == "PayloadMissing"
    relay, graph, store, request = setup(1 * MB)
    request["attachments"][0]["size"] += 1
    outcome = deliver(relay, request)
    assert isinstance(outcome, Permanent) and outcome.code == "PayloadMismatch" and "holds" in outcome.message
    assert graph.steps == [] and graph.calls == []


def test_an_oversize_message_is_refused_before_anything_is_read_or_uploaded() -> None:
    relay, graph, store, request = setup(27 * MB)  # 36 MB once base64-encoded for mail: over 35
    outcome = deliver(relay, request)
    assert isinstance(outcome, Permanent) and outcome.code == "MessageTooLarge"
    assert "MAX_MESSAGE_SIZE_MB (35)" in outcome.message
    assert graph.steps == [] and graph.calls == [] and store.reads == []
    relay, graph, _, request = setup(27 * MB, max_mb=40)  # an admin raised the limit
    assert deliver(relay, request) == Sent(202)


def test_403_on_the_draft_says_mail_read_write_is_needed() -> None:
    relay, graph, _, request = setup(4 * MB)
    denied = graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
    graph.faults["find_drafts"] = [denied]
    outcome = deliver(relay, request)
    assert isinstance(outcome, Permanent) and outcome.code == "ErrorAccessDenied"
    assert "Mail.ReadWrite" in outcome.hint and "-GrantLargeMessages" in outcome.hint


def test_a_draft_left_by_an_earlier_try_is_deleted_before_the_new_one_is_made() -> None:
    relay, graph, _, request = setup(4 * MB)
    graph.faults["upload_range"] = [requests.ConnectionError("reset")]
    graph.faults["delete_message"] = [requests.ConnectionError("reset")]  # and the clean-up fails too
    first = deliver(relay, request)
    assert isinstance(first, Transient) and not first.maybe_sent  # a draft step sends nothing
    assert len(graph.drafts) == 1  # the crash's leftover
    assert deliver(relay, request) == Sent(202)
    assert graph.drafts == {} and len(graph.sent_drafts) == 1  # one copy only


def test_a_timeout_on_send_is_unknown_and_keeps_the_draft_for_the_lookup() -> None:
    relay, graph, _, request = setup(4 * MB)
    graph.faults["send_draft"] = [requests.ReadTimeout("slow")]
    outcome = deliver(relay, request)
    assert isinstance(outcome, Transient) and outcome.maybe_sent
    assert "delete_message" not in graph.steps


def test_a_5xx_while_uploading_is_retried_later_and_deletes_the_draft() -> None:
    relay, graph, _, request = setup(4 * MB)
    graph.faults["upload_range"] = [GraphReply(503, None, "3", "req")]
    outcome = deliver(relay, request)
    assert isinstance(outcome, Transient) and not outcome.maybe_sent and outcome.retry_after == 3
    assert graph.drafts == {}


def test_a_claim_checked_body_is_read_and_sent_as_the_body() -> None:
    relay, graph, store, request = setup()
    html = "<p>" + "é" * 40_000 + "</p>"
    request["body"] = {"contentType": "html", **claim_check(store, "bodies/b1.html", html.encode())}
    assert deliver(relay, request) == Sent(202)
    assert graph.calls[0][1]["message"]["body"] == {"contentType": "html", "content": html}


def test_a_claim_checked_body_that_is_not_utf8_is_refused_with_a_reason() -> None:
    relay, graph, store, request = setup()
    request["body"] = {"contentType": "text", **claim_check(store, "bodies/b2.txt", "café".encode("latin-1"))}
    outcome = deliver(relay, request)
    assert isinstance(outcome, Permanent) and outcome.code == "PayloadMismatch" and "not UTF-8" in outcome.message
    assert graph.calls == []


# --- An earlier try still in Exchange's transport -------------------------------------------------------------


def found(*items: dict[str, Any]) -> GraphReply:
    """find_drafts' answer: the marked messages in Drafts, with the isDraft the relay selects."""
    return GraphReply(200, None, None, "req-f", value={"value": list(items)})


def test_a_marked_message_in_drafts_that_was_sent_is_left_alone_and_the_outcome_stays_unknown() -> None:
    """Exchange keeps a sent message in Drafts until its transport is done ("Things to know about sendMail"):
    isDraft false. Deleting it would not stop its delivery and a new draft would be a second copy."""
    relay, graph, _, request = setup(4 * MB)
    graph.faults["find_drafts"] = [found({"id": "sent-earlier", "isDraft": False})]
    outcome = deliver(relay, request)
    assert isinstance(outcome, Transient) and outcome.code == "StillInTransport"
    assert outcome.maybe_sent and not outcome.throttled  # delivery resolves it in Sent Items, after settling
    assert "SEND_UNKNOWN_SETTLE_SECONDS" in outcome.hint and "transport" in outcome.message
    assert graph.steps == ["find_drafts"]  # nothing deleted, no draft created, nothing sent
    assert graph.drafts == {} and graph.sent_drafts == []


def test_a_leftover_draft_beside_a_message_in_transport_is_not_deleted_either() -> None:
    relay, graph, _, request = setup(4 * MB)
    graph.faults["find_drafts"] = [found({"id": "left", "isDraft": True}, {"id": "sent-earlier", "isDraft": False})]
    outcome = deliver(relay, request)
    assert isinstance(outcome, Transient) and outcome.code == "StillInTransport" and outcome.maybe_sent
    assert graph.steps == ["find_drafts"]


def test_a_leftover_that_is_still_a_draft_is_deleted_and_the_message_sent_once() -> None:
    relay, graph, _, request = setup(4 * MB)
    graph.faults["upload_range"] = [requests.ConnectionError("reset")]
    graph.faults["delete_message"] = [requests.ConnectionError("reset")]  # the crashed try's clean-up failed
    assert isinstance(deliver(relay, request), Transient)
    (left,) = graph.drafts
    graph.faults["find_drafts"] = [found({"id": left, "isDraft": True})]  # never sent: a draft
    assert deliver(relay, request) == Sent(202)
    assert graph.steps.count("delete_message") == 2 and graph.drafts == {} and len(graph.sent_drafts) == 1


def test_find_drafts_selects_is_draft() -> None:
    from shared.graph import GraphClient

    class Session:
        params: dict[str, str] = {}

        def get(self, url: str, *, params: dict[str, str], **_: Any) -> Any:
            Session.params = params
            reply = requests.Response()
            reply.status_code, reply._content = 200, b'{"value": []}'
            return reply

    client = GraphClient(Session(), "https://graph.example")  # type: ignore[arg-type]
    client.find_drafts(SENDER, MARK, "token")
    assert Session.params["$select"] == "id,isDraft" and MARK in Session.params["$filter"]
    client.find_sent(SENDER, MARK, "token")
    assert Session.params["$select"] == "id,sentDateTime"  # Sent Items' look-up is unchanged


def test_odata_disabled_on_the_draft_flow_is_not_read_as_a_missing_mail_read_write() -> None:
    """Under an access policy, the first call of the draft flow (the leftover look-up) meets the policy's denial,
    whose text is EWS/REST's too: the hint names both, not Mail.ReadWrite."""
    relay, graph, _, request = setup(4 * MB, scope_model="policy")
    graph.faults["find_drafts"] = [graph_error(403, "ErrorAccessDenied", "Access to OData is disabled.")]
    outcome = deliver(relay, request)
    assert isinstance(outcome, Permanent) and "Test-ApplicationAccessPolicy" in outcome.hint
    assert "EwsEnabled" in outcome.hint and "Mail.ReadWrite" not in outcome.hint
