"""The MIME form of the send request (docs/mime.md): the contract, the client's agreement with it, and the relay's
send through a MIME draft, with FakeGraph."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from mailrelay_client.validation import violations as client_violations

from shared.contract import MAX_MIME_BYTES, MIME_EXCLUDED, ContractError, MimeRequest, parse_request
from shared.graph import GraphReply
from shared.outcomes import Permanent, Sent, Transient
from shared.payloads import MemoryPayloads
from shared.sending import Relay, RelayFailure, prepare_mime
from shared.status import StatusKey
from tests.fakes import FakeDrafts, FakeTokens, graph_error

SENDER = "scanner@contoso.com"
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
MIME = (
    b"From: Scanner <scanner@contoso.com>\r\n"
    b"To: Ada <ada@contoso.com>\r\n"
    b"Cc: bob@contoso.com\r\n"
    b"Subject: Scan 0042\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Your scan.\r\n"
    b"--b1\r\n"
    b"Content-Type: application/pdf\r\n"
    b'Content-Disposition: attachment; filename="scan.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--b1--\r\n"
)


def inline(data: bytes = MIME) -> dict[str, str]:
    return {"contentBytes": base64.b64encode(data).decode("ascii")}


def request(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "from": SENDER,
        "to": ["ada@contoso.com"],
        "cc": ["bob@contoso.com"],
        "mime": inline(),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def fields(document: dict[str, Any]) -> set[str]:
    try:
        parse_request(document)
    except ContractError as exc:
        return {v.field for v in exc.violations}
    return set()


# --- The contract ----------------------------------------------------------------------------------------


def test_a_mime_request_parses_to_its_envelope() -> None:
    parsed = parse_request(request(bcc=["Eve <EVE@contoso.com>"]))
    assert isinstance(parsed, MimeRequest)
    assert parsed.envelope() == ["ada@contoso.com", "bob@contoso.com", "eve@contoso.com"]
    assert parsed.mime.inline_bytes() == MIME
    assert parsed.save_to_sent_items is True  # a sent draft goes to Sent Items, where an unknown outcome is found


@pytest.mark.parametrize("name", MIME_EXCLUDED)
def test_each_field_the_mime_carries_is_refused_by_name(name: str) -> None:
    value: Any = {"contentType": "text", "content": "x"} if name == "body" else "x"
    with pytest.raises(ContractError) as caught:
        parse_request(request(**{name: value}))
    assert [v.field for v in caught.value.violations] == [name]
    assert "MIME" in caught.value.violations[0].rule


@pytest.mark.parametrize(
    ("mime", "words"),
    [
        (b"", "empty"),
        (b"just some text without headers", "blank line"),
        (b"no header here\r\n\r\nbody", "header line"),
        (b"From: <<<bad\r\nTo: ada@contoso.com\r\n\r\nbody", "not well-formed"),
        (b"To: ada@contoso.com\r\n\r\nbody", "no From"),
        (b"From: a@contoso.com\r\nFrom: b@contoso.com\r\nTo: x@contoso.com\r\n\r\nbody", "more than one From"),
    ],
)
def test_mime_that_cannot_be_read_is_refused_naming_why(mime: bytes, words: str) -> None:
    document = request(mime={"contentBytes": base64.b64encode(mime).decode("ascii") or "AA=="})
    if not mime:
        document["mime"] = {"contentBytes": ""}
    with pytest.raises(ContractError) as caught:
        parse_request(document)
    rules = {v.field: v.rule for v in caught.value.violations}
    assert "mime.contentBytes" in rules, rules
    assert words in rules["mime.contentBytes"]


def test_a_claim_checked_mime_is_blob_size_and_sha256_and_at_most_the_mime_limit() -> None:
    reference = {"blob": "a1/message.eml", "size": 1000, "sha256": "c" * 64}
    assert isinstance(parse_request(request(mime=reference)), MimeRequest)
    assert fields(request(mime={**reference, "size": MAX_MIME_BYTES + 1})) == {"mime.size"}
    assert fields(request(mime={"blob": "a1/message.eml", "size": 10})) == {"mime.sha256"}
    assert fields(request(mime={**reference, **inline()})) == {"mime.blob"}


def test_an_inline_mime_over_the_limit_is_refused() -> None:
    big = MIME + b"x" * (MAX_MIME_BYTES - len(MIME) + 1)
    with pytest.raises(ContractError) as caught:
        parse_request(request(mime=inline(big)))
    rules = [str(v) for v in caught.value.violations]
    assert any("3000000" in r for r in rules), rules


def test_an_unknown_field_in_a_mime_request_lists_the_mime_forms_fields() -> None:
    with pytest.raises(ContractError) as caught:
        parse_request(request(priority="high"))
    (violation,) = caught.value.violations
    assert violation.field == "priority" and "mime" in violation.rule and "subject" not in violation.rule


def test_a_mime_request_still_needs_a_recipient_and_an_allowed_kind_of_from() -> None:
    assert fields(request(to=None, cc=None)) == {"to/cc/bcc"}
    assert fields(request(**{"from": "Scanner <scanner@contoso.com>"})) == {"from"}


def test_a_json_request_still_needs_subject_and_body() -> None:
    document = {"from": SENDER, "to": ["ada@contoso.com"]}
    assert fields(document) == {"subject", "body"}


CORPUS: list[tuple[str, dict[str, Any]]] = [
    ("valid inline", request()),
    ("valid claim check", request(mime={"blob": "a1/m.eml", "size": 5, "sha256": "a" * 64})),
    ("subject given", request(subject="x")),
    ("body and attachments given", request(body={"contentType": "text", "content": "x"}, attachments=[])),
    ("no recipient", request(to=None, cc=None)),
    ("not base64", request(mime={"contentBytes": "not base64!"})),
    ("no blank line", request(mime=inline(b"From: scanner@contoso.com"))),
    ("bad From", request(mime=inline(b"From: <<<\r\nTo: ada@contoso.com\r\n\r\nx"))),
    ("half a claim check", request(mime={"blob": "a1/m.eml", "sha256": "a" * 64})),
    ("unknown field in mime", request(mime={**inline(), "name": "x"})),
    ("mime not an object", request(mime="x")),
]


@pytest.mark.parametrize("document", [c[1] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_the_client_and_the_relay_give_the_same_answers(document: dict[str, Any]) -> None:
    client_fields = {v.field for v in client_violations(document)}
    assert client_fields == fields(document)


def test_the_schema_refuses_what_the_mime_carries_and_requires_subject_without_mime() -> None:
    from jsonschema import Draft202012Validator

    from shared.contract import json_schema

    validator = Draft202012Validator(json_schema())
    assert validator.is_valid(request())
    assert not validator.is_valid(request(subject="x"))
    assert not validator.is_valid({"from": SENDER, "to": ["ada@contoso.com"]})


# --- The envelope wins (prepare_mime) ---------------------------------------------------------------------


def mime_request(**overrides: Any) -> MimeRequest:
    parsed = parse_request(request(**overrides))
    assert isinstance(parsed, MimeRequest)
    return parsed


def test_headers_that_name_the_whole_envelope_leave_the_mime_byte_identical() -> None:
    assert prepare_mime(MIME, mime_request()) == MIME


def test_an_envelope_only_recipient_goes_in_a_bcc_header_added_in_front_and_nothing_else_changes() -> None:
    sent = prepare_mime(MIME, mime_request(bcc=["eve@contoso.com", "Mallory <mallory@contoso.com>"]))
    assert sent.endswith(MIME)
    assert sent[: -len(MIME)] == b"Bcc: eve@contoso.com,\r\n mallory@contoso.com\r\n"


def test_the_added_header_follows_the_mimes_own_line_breaks() -> None:
    lf = MIME.replace(b"\r\n", b"\n")
    sent = prepare_mime(lf, mime_request(mime=inline(lf), bcc=["eve@contoso.com"]))
    assert sent == b"Bcc: eve@contoso.com\n" + lf


def test_a_header_recipient_the_envelope_lacks_is_refused_without_naming_it() -> None:
    with pytest.raises(RelayFailure) as caught:
        prepare_mime(MIME, mime_request(cc=None))
    outcome = caught.value.outcome
    assert isinstance(outcome, Permanent) and outcome.code == "MimeRecipientNotInEnvelope"
    assert "bob" not in outcome.message and "1 recipient" in outcome.message


def test_a_mime_from_another_mailbox_is_refused() -> None:
    other = MIME.replace(b"From: Scanner <scanner@contoso.com>", b"From: ceo@contoso.com")
    with pytest.raises(RelayFailure) as caught:
        prepare_mime(other, mime_request(mime=inline(other)))
    assert isinstance(caught.value.outcome, Permanent) and caught.value.outcome.code == "MimeSenderMismatch"


# --- Sending (FakeGraph) ----------------------------------------------------------------------------------


@dataclass
class FakeMimeDrafts(FakeDrafts):
    """FakeDrafts that takes MIME drafts and PATCHes marks: the calls the relay makes for a MIME request."""

    mimes: dict[str, bytes] = field(default_factory=dict)

    def create_mime_draft(self, sender: str, mime: bytes, token: str) -> GraphReply:
        fault = self._fault("create_mime_draft")
        if fault:
            return fault
        draft_id = f"mime-{len(self.drafts) + len(self.sent_drafts) + 1}"
        self.drafts[draft_id] = {"sender": sender, "message": {}, "attachments": []}
        self.mimes[draft_id] = mime
        return GraphReply(201, None, None, "req-m", value={"id": draft_id})

    def mark_message(self, sender: str, message_id: str, mark: str, token: str) -> GraphReply:
        fault = self._fault("mark_message")
        if fault:
            return fault
        from shared.status import MARK_PROPERTY_ID

        self.drafts[message_id]["message"]["singleValueExtendedProperties"] = [{"id": MARK_PROPERTY_ID, "value": mark}]
        return GraphReply(200, None, None, "req-k", value={"id": message_id})


MARK = StatusKey.of(SENDER, "scan-42", None).mark


def setup(max_mb: float = 35) -> tuple[Relay, FakeMimeDrafts, MemoryPayloads]:
    store = MemoryPayloads()
    graph = FakeMimeDrafts()
    relay = Relay(
        allowed_senders=frozenset({SENDER}),
        tokens=FakeTokens(),
        graph=graph,
        payloads=store,
        max_message_bytes=int(max_mb * 1024 * 1024),
    )
    return relay, graph, store


def deliver(relay: Relay, document: dict[str, Any]) -> Any:
    checked = relay.check(json.dumps({"id": "scan-42", **document}).encode())
    assert not hasattr(checked, "outcome"), checked
    return relay.deliver(checked, MARK).outcome  # type: ignore[arg-type]


def test_a_mime_request_is_a_marked_mime_draft_then_its_send() -> None:
    relay, graph, _ = setup()
    outcome = deliver(relay, request(bcc=["eve@contoso.com"]))
    assert isinstance(outcome, Sent)
    assert graph.steps == ["find_drafts", "create_mime_draft", "mark_message", "send_draft"]
    (mime,) = graph.mimes.values()
    assert mime == b"Bcc: eve@contoso.com\r\n" + MIME
    assert graph.sent_items[SENDER] == [MARK]  # the mark reached Sent Items: an unknown outcome can be looked up
    assert graph.calls == []  # never the JSON sendMail


def test_a_claim_checked_mime_is_read_and_checked_by_its_hash() -> None:
    relay, graph, store = setup()
    store.put("a1/message.eml", MIME, NOW)
    reference = {"blob": "a1/message.eml", "size": len(MIME), "sha256": hashlib.sha256(MIME).hexdigest()}
    assert isinstance(deliver(relay, request(mime=reference)), Sent)
    assert list(graph.mimes.values()) == [MIME]

    relay, graph, store = setup()
    store.put("a1/message.eml", MIME.replace(b"0042", b"0043"), NOW)
    outcome = deliver(relay, request(mime=reference))
    assert isinstance(outcome, Permanent) and outcome.code == "PayloadMismatch"
    assert graph.steps == []


def test_a_malformed_claim_checked_mime_is_refused_before_graph() -> None:
    relay, graph, store = setup()
    bad = b"From: <<<\r\nTo: ada@contoso.com\r\n\r\nx"
    store.put("a1/message.eml", bad, NOW)
    reference = {"blob": "a1/message.eml", "size": len(bad), "sha256": hashlib.sha256(bad).hexdigest()}
    outcome = deliver(relay, request(mime=reference))
    assert isinstance(outcome, Permanent) and outcome.code == "InvalidMime"
    assert graph.steps == []


def test_a_mime_over_max_message_size_is_too_large_before_graph() -> None:
    relay, graph, store = setup(max_mb=1)
    big = MIME + b"x" * (1024 * 1024)
    store.put("a1/big.eml", big, NOW)
    reference = {"blob": "a1/big.eml", "size": len(big), "sha256": hashlib.sha256(big).hexdigest()}
    outcome = deliver(relay, request(mime=reference))
    assert isinstance(outcome, Permanent) and outcome.code == "MessageTooLarge"
    assert "user-post-messages" in outcome.message
    assert graph.steps == []


def test_the_added_bcc_header_counts_against_the_mime_limit() -> None:
    relay, _, store = setup()
    exact = MIME + b"x" * (MAX_MIME_BYTES - len(MIME))
    store.put("a1/exact.eml", exact, NOW)
    reference = {"blob": "a1/exact.eml", "size": len(exact), "sha256": hashlib.sha256(exact).hexdigest()}
    assert isinstance(deliver(relay, request(mime=reference)), Sent)
    relay, _, store = setup()
    store.put("a1/exact.eml", exact, NOW)
    outcome = deliver(relay, request(mime=reference, bcc=["eve@contoso.com"]))
    assert isinstance(outcome, Permanent) and outcome.code == "MessageTooLarge"


def test_a_refused_send_deletes_the_draft_and_a_timeout_keeps_it_for_the_lookup() -> None:
    import requests

    relay, graph, _ = setup()
    graph.faults["send_draft"] = [graph_error(400, "ErrorInvalidRecipients", "At least one recipient is not valid.")]
    outcome = deliver(relay, request())
    assert isinstance(outcome, Permanent) and outcome.code == "ErrorInvalidRecipients"
    assert graph.drafts == {}

    relay, graph, _ = setup()
    graph.faults["send_draft"] = [requests.ReadTimeout()]
    outcome = deliver(relay, request())
    assert isinstance(outcome, Transient) and outcome.maybe_sent
    assert len(graph.drafts) == 1  # marked: the next try finds it (or Sent Items does)


def test_a_failed_mark_deletes_the_unmarked_draft_and_sends_nothing() -> None:
    relay, graph, _ = setup()
    graph.faults["mark_message"] = [graph_error(503, "ServiceUnavailable", "try later")]
    outcome = deliver(relay, request())
    assert isinstance(outcome, Transient) and not outcome.maybe_sent
    assert graph.drafts == {} and graph.sent_drafts == []


# --- The client checks the envelope as the relay does (mailrelay_client.validation.envelope_problem) ----------

ENVELOPE_CASES = [
    ("headers name the envelope", MIME, {}),
    ("an envelope-only bcc", MIME, {"bcc": ["eve@contoso.com"]}),
    ("a header recipient missing", MIME, {"cc": None}),
    ("another From", MIME.replace(b"From: Scanner <scanner@contoso.com>", b"From: ceo@contoso.com"), {}),
    ("From in another case", MIME.replace(b"scanner@contoso.com", b"SCANNER@Contoso.com", 1), {}),
    ("two addresses in From", MIME.replace(b"From: Scanner <scanner@contoso.com>", b"From: a@x.com, b@x.com"), {}),
    ("a Bcc header the envelope lacks", b"Bcc: eve@contoso.com\r\n" + MIME, {}),
]


@pytest.mark.parametrize(("mime", "overrides"), [c[1:] for c in ENVELOPE_CASES], ids=[c[0] for c in ENVELOPE_CASES])
def test_the_client_refuses_the_envelopes_the_relay_refuses(mime: bytes, overrides: dict[str, Any]) -> None:
    from mailrelay_client.validation import envelope_problem

    req = mime_request(mime=inline(mime), **overrides)
    try:
        prepare_mime(mime, req)
        relay = None
    except RelayFailure as failure:
        assert isinstance(failure.outcome, Permanent)
        relay = (failure.outcome.code, failure.outcome.message)
    assert envelope_problem(mime, req.sender, req.envelope()) == relay
