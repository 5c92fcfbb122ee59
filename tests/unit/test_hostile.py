"""Hostile input on the whole message path: the relay's own dead letter at the first delivery, never a crash.

The queues here are the relay's real adapters (QueueDeadLetters, QueueRequeue) over a fake QueueClient that
refuses what Azure Storage refuses (over 64 KiB), so a write that would fail in Azure fails here too.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.functions.queue import QueueMessage

from shared.bootstrap import Runtime
from shared.handlers import handle_mail_message, handle_retry_message
from shared.queues import QueueDeadLetters, QueueRequeue
from shared.sending import Relay
from shared.settings import load_settings
from shared.status import MemoryStatusStore
from tests.fakes import FakeGraph, FakeTokens, MemoryOverflow
from tests.unit.test_settings import GOOD

ALLOWED = "alerts@contoso.com"
REQUEST: dict[str, Any] = {
    "from": ALLOWED,
    "to": ["ops@contoso.com"],
    "subject": "Backup done",
    "body": {"contentType": "text", "content": "body"},
}
QUEUE_LIMIT = 64 * 1024


class StorageQueue:
    """The parts of azure.storage.queue.QueueClient the relay uses, refusing as Azure Storage does."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def send_message(self, content: str, **kwargs: Any) -> None:
        if len(content.encode("utf-8")) > QUEUE_LIMIT:
            raise HttpResponseError(message="The request body is too large and exceeds the maximum permissible limit.")
        self.messages.append((content, kwargs))

    def create_queue(self) -> None:
        pass

    def decoded(self) -> list[Any]:
        return [json.loads(base64.b64decode(text)) for text, _ in self.messages]


@pytest.fixture
def rt() -> Iterator[Runtime]:
    relay = Relay(allowed_senders=frozenset({ALLOWED}), tokens=FakeTokens(), graph=FakeGraph())
    overflow = MemoryOverflow()
    yield Runtime(
        settings=load_settings(GOOD),
        relay=relay,
        dead_letters=QueueDeadLetters(StorageQueue(), overflow),  # type: ignore[arg-type]
        retries=QueueRequeue(StorageQueue()),  # type: ignore[arg-type]
        status=MemoryStatusStore(),
        overflow=overflow,
    )


def queue_of(adapter: Any) -> StorageQueue:
    queue = adapter._client
    assert isinstance(queue, StorageQueue)
    return queue


def graph_of(rt: Runtime) -> FakeGraph:
    graph = rt.relay._graph
    assert isinstance(graph, FakeGraph)
    return graph


def deliver(rt: Runtime, body: bytes | str, msg_id: str = "m1") -> None:
    """A message on the outbox (what an app wrote), or, if it is a retry wrapper, on the relay's retry queue:
    a wrapper on the outbox is refused outright (tests/unit/test_delivery.py), so the hostile ones are tried
    where they would be read."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    message = QueueMessage(id=msg_id, body=raw, dequeue_count=1, pop_receipt="p")
    if raw.lstrip().startswith(b'{"$retry"'):
        handle_retry_message(message, rt)
    else:
        handle_mail_message(message, rt)


def the_dead_letter(rt: Runtime) -> dict[str, Any]:
    [envelope] = queue_of(rt.dead_letters).decoded()
    assert graph_of(rt).calls == []  # refused before Graph
    assert queue_of(rt.retries).messages == []
    return envelope


def with_field(**fields: Any) -> str:
    return json.dumps({**REQUEST, **fields})


DEEP = 100_000


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("[" * DEEP + "]" * DEEP, "(message)", "nests"),
        ('{"from": "a@contoso.com", "x": ' + "[" * DEEP + "]" * DEEP + "}", "(message)", "nests"),
        (with_field(subject=[[[[[[[[[["deep"]]]]]]]]]]), "subject", "nests"),
        ("1" * 5000, "(message)", "4,300 digits"),
        ('{"subject": ' + "9" * 5000 + "}", "(message)", "4,300 digits"),
        (with_field(subject="\ud800 half a pair"), "subject", "surrogate"),
        (with_field(**{"from": "ceo\udfff@contoso.com"}), "from", "surrogate"),
        (with_field(id="key-\ud83d"), "id", "surrogate"),
        (
            with_field(to=["ops@contoso.com"], body={"contentType": "text", "content": "\udc00"}),
            "body.content",
            "surrogate",
        ),
        (
            json.dumps(
                {
                    "$retry": {"attempts": 1, "firstAttemptAt": "2026-01-01T00:00:00Z"},
                    "request": {**REQUEST, "subject": "\ud800"},
                }
            ),
            "subject",
            "surrogate",
        ),
        (
            json.dumps({"$retry": {"attempts": 1, "firstAttemptAt": "2026-01-01T00:00:00Z"}, "request": "[" * DEEP}),
            "",
            "retry wrapper",
        ),
    ],
    ids=[
        "deep array",
        "deep field",
        "nested subject",
        "huge number",
        "huge number in a field",
        "surrogate subject",
        "surrogate sender",
        "surrogate id",
        "surrogate body",
        "surrogate in a retry wrapper",
        "deep wrapper",
    ],
)
def test_hostile_json_is_dead_lettered_at_the_first_delivery_naming_the_rule(
    rt: Runtime, text: str, field: str, words: str
) -> None:
    deliver(rt, text)
    envelope = the_dead_letter(rt)
    assert envelope["error"]["code"] in ("InvalidRequest", "InvalidEncoding")
    assert words in envelope["error"]["message"]
    assert envelope["error"]["message"].startswith(field) or f"\n{field}" in envelope["error"]["message"]
    assert envelope["attempts"] == 0  # refused before any try


def test_a_refused_sender_with_a_surrogate_elsewhere_is_dead_lettered_not_looped(rt: Runtime) -> None:
    deliver(rt, json.dumps({**REQUEST, "from": "ceo@contoso.com", "subject": "\ud800"}))
    envelope = the_dead_letter(rt)
    assert envelope["error"]["code"] == "InvalidRequest"
    assert envelope["request"]["subject"] == "\ud800"  # kept exactly, written with an ASCII escape


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (
            {
                "attachments": [
                    {"name": "a.txt\r\nBcc: evil@contoso.com", "contentType": "text/plain", "contentBytes": ""}
                ]
            },
            "attachments[0].name",
        ),
        (
            {
                "attachments": [
                    {"name": "a.txt", "contentType": "text/plain\r\nBcc: evil@contoso.com", "contentBytes": ""}
                ]
            },
            "attachments[0].contentType",
        ),
        ({"subject": "Hi\u0085Bcc: x"}, "subject"),
        ({"subject": "Hi\u2028there"}, "subject"),
        ({"subject": "Hi\u2029there"}, "subject"),
        ({"headers": {"X-A": "x\u2028Bcc: y"}}, 'headers["X-A"]'),
        ({"id": "key\r\n"}, "id"),
        ({"id": "key\x1b[31m"}, "id"),
        ({"id": "key\x00"}, "id"),
    ],
)
def test_contract_gaps_are_closed(rt: Runtime, fields: dict[str, Any], field: str) -> None:
    deliver(rt, json.dumps({**REQUEST, **fields}))
    envelope = the_dead_letter(rt)
    assert envelope["error"]["code"] == "InvalidRequest"
    assert envelope["error"]["message"].startswith(f"{field}: must not contain")


def test_no_exception_escapes_on_a_valid_request_with_non_bmp_text(rt: Runtime) -> None:
    deliver(rt, json.dumps({**REQUEST, "subject": "\U0001f600 ok"}))  # a proper pair: valid, sent
    assert len(graph_of(rt).calls) == 1 and queue_of(rt.dead_letters).messages == []


def test_log_lines_of_hostile_input_stay_one_line(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mailrelay"):
        deliver(rt, "1" * 5000, "id\nCRITICAL mailrelay: secret.expiry: FORGED")
    assert caplog.records and all("\n" not in r.getMessage() for r in caplog.records)


# --- The relay's own writes fit in a queue message, and nothing is lost -------------------------------


def test_an_envelope_too_large_for_the_queue_keeps_its_reason_and_stores_the_request(rt: Runtime) -> None:
    bad = {**REQUEST, "to": [f"recipient {i:03d} at contoso dot com, invalid" for i in range(500)]}  # 500 violations
    text = json.dumps(bad)
    assert 20_000 < len(text) < 40_000
    deliver(rt, text)
    envelope = the_dead_letter(rt)
    assert envelope["error"]["code"] == "InvalidRequest"
    assert envelope["error"]["message"].startswith("to[0]: ")  # the reason stays on the queue, cut
    assert envelope["error"]["hint"] and envelope["request"] is None
    assert rt.overflow is not None
    stored = json.loads(rt.overflow.get(envelope["stored"]))
    assert stored["request"] == bad  # the original request, whole
    assert stored["error"]["message"].count("\n") == 499  # and every violation


def near_limit_request(rt: Runtime) -> dict[str, Any]:
    """A valid request whose queue text is just under 64 KiB, as an app may write with the Storage SDK."""
    from shared.queues import encode

    size = 48_000
    while len(encode({**REQUEST, "body": {"contentType": "text", "content": "x" * (size + 1)}})) <= QUEUE_LIMIT:
        size += 1
    return {**REQUEST, "body": {"contentType": "text", "content": "x" * size}}


def test_a_retry_too_large_for_the_queue_goes_through_the_overflow_and_keeps_its_delay(rt: Runtime) -> None:
    from tests.fakes import graph_error

    request = near_limit_request(rt)
    graph_of(rt).replies.append(graph_error(429, "ApplicationThrottled", "over the limit", retry_after="30"))
    deliver(rt, json.dumps(request))
    [(text, kwargs)] = queue_of(rt.retries).messages
    assert kwargs["visibility_timeout"] >= 30  # Retry-After honoured: the relay re-queued, not the host
    wrapper = json.loads(base64.b64decode(text))
    assert set(wrapper) == {"$retry", "requestStored"}
    # The next delivery of that wrapper reads the stored request, sends it, and removes the stored copy.
    rt = Runtime(**{**rt.__dict__, "clock": lambda: datetime.now(UTC) + timedelta(hours=1)})
    handle_retry_message(QueueMessage(id="m2", body=base64.b64decode(text), dequeue_count=1, pop_receipt="p"), rt)
    assert len(graph_of(rt).calls) == 2 and graph_of(rt).calls[1][1]["message"]["body"]["content"] == "x" * len(
        request["body"]["content"]
    )
    assert isinstance(rt.overflow, MemoryOverflow) and rt.overflow.blobs == {}


def test_a_forged_or_altered_stored_reference_is_dead_lettered_not_sent(rt: Runtime) -> None:
    assert isinstance(rt.overflow, MemoryOverflow)
    ref = rt.overflow.put(json.dumps(REQUEST).encode())
    forged = {
        "$retry": {"attempts": 1, "firstAttemptAt": "2026-01-01T00:00:00Z"},
        "requestStored": {**ref, "sha256": "0" * 64},
    }
    deliver(rt, json.dumps(forged))
    envelope = the_dead_letter(rt)
    assert "cannot be read" in envelope["error"]["message"]


def test_the_client_leaves_room_for_what_the_relay_adds() -> None:
    from mailrelay_client import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES

    from shared.queues import MAX_QUEUE_TEXT, RELAY_OVERHEAD_BYTES, encode
    from shared.retries import MAX_MESSAGE_ID_LENGTH, wrap

    assert MAX_MESSAGE_BYTES == MAX_QUEUE_TEXT and MAX_REQUEST_BYTES == MAX_QUEUE_TEXT - RELAY_OVERHEAD_BYTES
    # The largest wrapper the relay writes around a request: every field at its longest.
    overhead = len(encode(wrap({}, "m" * MAX_MESSAGE_ID_LENGTH, "r" * 40))) - len(encode({}))
    assert overhead < RELAY_OVERHEAD_BYTES


# --- Log lines: one physical line, whatever an app or a service put in a field ----------------------

NASTY = "a\rb\nc\u0085d\u2028e\u2029f\x1b[31mg\x00h"


def test_every_logged_field_is_escaped(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    from tests.fakes import graph_error

    wrapper = {
        "$retry": {"attempts": 1, "firstAttemptAt": "2026-01-01T00:00:00Z", "originalMessageId": f"orig{NASTY}"},
        "request": {**REQUEST, "id": "ok-id"},
    }
    graph_of(rt).replies.extend(
        [graph_error(503, f"Code{NASTY}", f"message{NASTY}", retry_after="1"), graph_error(400, f"Bad{NASTY}")]
    )
    with caplog.at_level(logging.DEBUG):
        deliver(rt, json.dumps(wrapper), f"queue{NASTY}")  # retried: code, retryAfter, originalMessageId
        deliver(rt, json.dumps({**REQUEST, "id": "id-2"}), "m2")  # dead-lettered: code and hint from Graph
        deliver(rt, json.dumps({**REQUEST, "from": f"x{NASTY}@contoso.com"}), "m3")  # sender an app wrote
        deliver(rt, "1" * 5000, "m4")
    texts = [r.getMessage() for r in caplog.records if r.name.startswith("mailrelay")]
    assert len(texts) >= 4
    for text in texts:
        assert not set(text) & set("\r\n\u0085\u2028\u2029\x1b\x00"), repr(text)
    assert any("orig\\x0da\\x0ab" in t or "orig" in t for t in texts)
    # Structured fields (`extra`) are escaped too: a sink that renders them cannot be forged either.
    for record in caplog.records:
        for key in ("originalMessageId", "sender", "code", "hint"):
            value = getattr(record, key, "")
            assert not isinstance(value, str) or not set(value) & set("\r\n\u0085\u2028\u2029\x1b")


def test_fields_are_capped() -> None:
    from shared.logs import MAX_FIELD_CHARS, safe

    assert len(safe("x" * 10_000)) == MAX_FIELD_CHARS + 1  # the cut is marked with an ellipsis
    assert safe("\ud800") == "\\ud800"


# --- Outages end, if they never clear, in a dead letter that names the service ----------------------


@pytest.mark.parametrize("code", ["EntraUnavailable", "ManagedIdentityUnavailable", "KeyVaultUnavailable"])
def test_an_outage_that_never_clears_is_dead_lettered_naming_the_service(rt: Runtime, code: str) -> None:
    from shared.outcomes import RelayFailure, transient

    tokens = rt.relay._tokens
    assert isinstance(tokens, FakeTokens)
    tokens.failure = RelayFailure(transient(code, "down"))
    deliver(rt, json.dumps(REQUEST))
    [(text, _)] = queue_of(rt.retries).messages  # first: retried by the relay, with its backoff
    # A day later (SEND_MAX_AGE_HOURS) the outage still holds: the retry spends the budget.
    later = Runtime(**{**rt.__dict__, "clock": lambda: datetime.now(UTC) + timedelta(hours=25)})
    handle_retry_message(QueueMessage(id="r1", body=base64.b64decode(text), dequeue_count=1, pop_receipt="p"), later)
    envelope = the_dead_letter_after_retries(rt)
    assert envelope["error"]["code"] == code and "SEND_MAX_AGE_HOURS" in envelope["error"]["message"]
    service = {"EntraUnavailable": "Entra ID", "ManagedIdentityUnavailable": "managed identity"}
    assert service.get(code, "Key Vault") in envelope["error"]["hint"]


def the_dead_letter_after_retries(rt: Runtime) -> dict[str, Any]:
    [envelope] = queue_of(rt.dead_letters).decoded()
    return envelope


# --- What a forged wrapper or an odd service answer could still break (found in a second audit) ------------


def wrapper(request: dict[str, Any] | None = None, **meta: Any) -> str:
    """A retry wrapper as the relay writes it a minute after the first attempt, with `meta` replaced."""
    from datetime import UTC, datetime, timedelta

    first = (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds")
    return json.dumps({"$retry": {"attempts": 1, "firstAttemptAt": first, **meta}, "request": request or REQUEST})


def test_attempt_counts_written_in_a_wrapper_steer_nothing(rt: Runtime) -> None:
    """Retry state lives in the status record; whatever a wrapper says about attempts is not read."""
    deliver(rt, wrapper(attempts=10_000, firstAttemptAt="1970-01-01T00:00:00Z"))
    assert len(graph_of(rt).calls) == 1 and queue_of(rt.dead_letters).messages == []


def test_an_overlong_original_message_id_is_refused_and_the_envelope_fits(rt: Runtime) -> None:
    from tests.fakes import graph_error

    graph_of(rt).replies.append(graph_error(429, "ApplicationThrottled", "slow down", retry_after="1"))
    deliver(rt, wrapper(originalMessageId="o" * 60_000))  # a queue message id is a GUID: 36 characters
    envelope = the_dead_letter(rt)
    assert envelope["error"]["code"] == "InvalidRequest" and "originalMessageId" in envelope["error"]["message"]
    assert len(envelope.get("queueMessageId") or "") <= 128


@pytest.mark.parametrize("retry_after", ["inf", "1e999", "-inf", "nan", "1e300"])
def test_any_retry_after_a_service_sends_gives_a_bounded_delay(rt: Runtime, retry_after: str) -> None:
    from shared.retries import MAX_VISIBILITY_SECONDS
    from tests.fakes import graph_error

    graph_of(rt).replies.append(graph_error(429, "ApplicationThrottled", "slow down", retry_after=retry_after))
    deliver(rt, json.dumps(REQUEST))
    [(_, kwargs)] = queue_of(rt.retries).messages
    assert 0 <= kwargs["visibility_timeout"] <= MAX_VISIBILITY_SECONDS


def test_an_envelope_fits_whatever_size_the_services_error_code_has(rt: Runtime) -> None:
    from tests.fakes import graph_error

    graph_of(rt).replies.append(graph_error(400, "C" * 70_000, "m" * 70_000))
    deliver(rt, json.dumps(REQUEST))
    [envelope] = queue_of(rt.dead_letters).decoded()
    assert envelope["error"]["code"].startswith("CCCC") and envelope["error"]["hint"]
    assert rt.overflow is not None
    stored = json.loads(rt.overflow.get(envelope["stored"]))
    assert stored["error"]["code"] == "C" * 70_000 and stored["request"] == REQUEST  # kept whole in the store


@pytest.mark.parametrize(
    "ref",
    [
        {"container": "mail-relay-overflow", "blob": "../azure-webjobs-secrets/host.json", "size": 2, "sha256": "0"},
        {"container": "other", "blob": "3f2504e0-4f89-41d3-9a0c-0305e82c3301.json", "size": 2, "sha256": "0" * 64},
        {"blob": ["x"], "size": "2", "sha256": None},
    ],
    ids=["path traversal", "another container", "not a reference"],
)
def test_a_stored_reference_the_relay_did_not_write_is_refused_before_the_store_is_read(
    rt: Runtime, ref: dict[str, Any]
) -> None:
    class Untouchable(MemoryOverflow):
        def get(self, ref: Any) -> bytes:
            raise AssertionError(f"the store was read for {ref!r}")

        def delete(self, ref: Any) -> None:
            raise AssertionError(f"the store was asked to delete {ref!r}")

    rt = Runtime(**{**rt.__dict__, "overflow": Untouchable()})
    deliver(rt, json.dumps({"$retry": {"attempts": 1, "firstAttemptAt": "2026-01-01T00:00:00Z"}, "requestStored": ref}))
    envelope = the_dead_letter(rt)
    assert envelope["error"]["code"] == "InvalidRequest" and "requestStored" in envelope["error"]["message"]


def test_the_blob_store_reads_and_deletes_only_names_it_gave() -> None:
    from shared.queues import BlobOverflow, StoredPayloadError

    class Container:
        container_name = "mail-relay-overflow"
        calls: list[str] = []

        def __getattr__(self, name: str) -> Any:
            return lambda *args, **kwargs: self.calls.append(f"{name}{args}")

    container = Container()
    store = BlobOverflow(container)  # type: ignore[arg-type]
    forged = {
        "container": "mail-relay-overflow",
        "blob": "../app-package-x/released.zip",
        "size": 1,
        "sha256": "0" * 64,
    }
    with pytest.raises(StoredPayloadError, match="blob"):
        store.get(forged)
    with pytest.raises(StoredPayloadError, match="blob"):
        store.delete(forged)
    assert container.calls == []
    ref = store.put(b"{}")
    assert container.calls == [f"upload_blob('{ref['blob']}', b'{{}}')"]
    store.delete(ref)  # a name it gave: deleted
    assert container.calls[-1] == f"delete_blob('{ref['blob']}',)"
