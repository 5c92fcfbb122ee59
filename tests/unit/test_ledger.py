"""The idempotency ledger: nothing is sent twice. In-memory ledger and a fake Table client; no I/O."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage

from shared.bootstrap import Runtime
from shared.handlers import handle_mail_message
from shared.ledger import MemoryLedger, TableLedger, ledger_key
from shared.sending import Relay
from shared.settings import load_settings
from tests.fakes import FakeDeadLetters, FakeGraph, FakeRequeue, FakeTokens, graph_error
from tests.unit.test_settings import GOOD

REQUEST: dict[str, Any] = {
    "from": "alerts@contoso.com",
    "to": ["ops@contoso.com"],
    "subject": "Invoice 17",
    "body": {"contentType": "text", "content": "body text 17"},
}


@pytest.fixture
def rt() -> Iterator[Runtime]:
    relay = Relay(allowed_senders=frozenset({"alerts@contoso.com"}), tokens=FakeTokens(), graph=FakeGraph())
    yield Runtime(
        settings=load_settings(GOOD),
        relay=relay,
        dead_letters=FakeDeadLetters(),
        requeue=FakeRequeue(),
        ledger=MemoryLedger(),
    )


def graph_of(rt: Runtime) -> FakeGraph:
    graph = rt.relay._graph
    assert isinstance(graph, FakeGraph)
    return graph


def dead_of(rt: Runtime) -> FakeDeadLetters:
    dead = rt.dead_letters
    assert isinstance(dead, FakeDeadLetters)
    return dead


def deliver(rt: Runtime, payload: dict[str, Any], msg_id: str, dequeue_count: int = 1) -> None:
    body = json.dumps(payload).encode()
    handle_mail_message(QueueMessage(id=msg_id, body=body, dequeue_count=dequeue_count, pop_receipt="p"), rt)


def test_the_key_is_the_request_id_else_the_original_message_id() -> None:
    assert ledger_key("invoice-17", "m1") == "id:invoice-17"
    assert ledger_key(None, "m1") == "msg:m1"
    assert ledger_key("", "m1") == "msg:m1"
    assert ledger_key(None, None) is None


def test_a_redelivered_message_is_not_sent_again(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    deliver(rt, REQUEST, "m1")
    with caplog.at_level(logging.INFO, logger="mailrelay"):
        deliver(rt, REQUEST, "m1", dequeue_count=2)  # the host redelivers after a crash
    assert len(graph_of(rt).calls) == 1
    assert [getattr(r, "event", None) for r in caplog.records] == ["mail.duplicate"]
    assert "body text 17" not in caplog.text


def test_one_id_is_sent_at_most_once_whichever_message_carries_it(rt: Runtime) -> None:
    deliver(rt, {**REQUEST, "id": "invoice-17"}, "m1")
    deliver(rt, {**REQUEST, "id": "invoice-17"}, "m2")  # the app enqueued it twice
    deliver(rt, {**REQUEST, "id": "invoice-18"}, "m3")
    assert len(graph_of(rt).calls) == 2


def test_another_request_under_a_sent_id_is_dead_lettered_not_dropped(rt: Runtime) -> None:
    deliver(rt, {**REQUEST, "id": "invoice-17"}, "m1")
    deliver(rt, {**REQUEST, "id": "invoice-17", "subject": "Another mail"}, "m2")
    assert len(graph_of(rt).calls) == 1
    [envelope] = dead_of(rt).envelopes
    assert envelope["error"]["code"] == "DuplicateKey" and "invoice-17" in envelope["error"]["message"]
    assert envelope["request"]["subject"] == "Another mail"


def test_an_invalid_request_reusing_a_sent_id_is_dead_lettered_for_its_rule(rt: Runtime) -> None:
    deliver(rt, {**REQUEST, "id": "invoice-17"}, "m1")
    deliver(rt, {**REQUEST, "id": "invoice-17", "to": ["not an address"]}, "m2")
    [envelope] = dead_of(rt).envelopes
    assert envelope["error"]["code"] == "InvalidRequest" and "to[0]" in envelope["error"]["message"]


def test_a_forged_origin_cannot_make_another_mail_a_duplicate(rt: Runtime) -> None:
    # An app writes a wrapper that names the victim's queue message as its origin, with other content.
    forged = {
        "$retry": {"attempts": 1, "firstAttemptAt": "2026-01-01T00:00:00Z", "originalMessageId": "victim"},
        "request": {**REQUEST, "subject": "Forged"},
    }
    deliver(rt, forged, "m-attacker")
    deliver(rt, REQUEST, "victim")
    assert len(graph_of(rt).calls) + len(dead_of(rt).envelopes) == 2  # the victim's mail is not dropped
    assert all(e["error"]["code"] == "DuplicateKey" for e in dead_of(rt).envelopes)


def test_a_key_recorded_without_a_fingerprint_is_no_proof_of_a_duplicate(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    # A row written before fingerprints (TableLedger.lookup gives ""): which content went out is unknown, so a
    # request under that key is neither sent again nor dropped as a "duplicate": it is dead-lettered, saying why.
    rt.ledger.record("id:invoice-17", "")
    with caplog.at_level(logging.INFO, logger="mailrelay"):
        deliver(rt, {**REQUEST, "id": "invoice-17", "subject": "Another mail"}, "m2")
    assert graph_of(rt).calls == []
    [envelope] = dead_of(rt).envelopes
    assert envelope["error"]["code"] == "DuplicateKey" and "no fingerprint" in envelope["error"]["message"]
    assert "mail.duplicate" not in [getattr(r, "event", None) for r in caplog.records]


def test_requests_without_an_id_are_distinct_per_message(rt: Runtime) -> None:
    deliver(rt, REQUEST, "m1")
    deliver(rt, REQUEST, "m2")
    assert len(graph_of(rt).calls) == 2


def test_failures_are_not_recorded(rt: Runtime) -> None:
    graph_of(rt).replies.append(graph_error(403, "ErrorAccessDenied", "Access is denied."))
    deliver(rt, {**REQUEST, "id": "x-1"}, "m1")
    assert rt.ledger.lookup("id:x-1") is None


class BrokenLedger(MemoryLedger):
    def record(self, key: str, fingerprint: str) -> None:
        raise ConnectionError("table unreachable")


def test_a_failed_record_still_completes_the_sent_message(caplog: pytest.LogCaptureFixture) -> None:
    graph = FakeGraph()
    relay = Relay(allowed_senders=frozenset({"alerts@contoso.com"}), tokens=FakeTokens(), graph=graph)
    rt = Runtime(load_settings(GOOD), relay, FakeDeadLetters(), FakeRequeue(), BrokenLedger())
    with caplog.at_level(logging.INFO, logger="mailrelay"):
        deliver(rt, REQUEST, "m1")  # no exception: raising would have the host send it again
    assert len(graph.calls) == 1
    assert any(getattr(r, "event", None) == "ledger.error" for r in caplog.records)


class FakeTable:
    """The parts of azure.data.tables.TableClient the ledger uses; starts with no table at all."""

    def __init__(self) -> None:
        self.exists = False
        self.entities: dict[tuple[str, str], dict[str, Any]] = {}
        self.creates = 0

    def get_entity(self, partition_key: str, row_key: str, **_: Any) -> dict[str, Any]:
        if not self.exists or (partition_key, row_key) not in self.entities:
            raise ResourceNotFoundError("not found")
        return self.entities[partition_key, row_key]

    def upsert_entity(self, entity: dict[str, Any]) -> None:
        if not self.exists:
            raise ResourceNotFoundError("TableNotFound")
        self.entities[entity["PartitionKey"], entity["RowKey"]] = entity

    def create_table(self) -> None:
        self.creates += 1
        self.exists = True


def test_table_ledger_creates_its_table_on_the_first_record_and_stores_no_request_data() -> None:
    table = FakeTable()
    ledger = TableLedger(table)  # type: ignore[arg-type]
    assert ledger.lookup("id:invoice/17#a?") is None
    ledger.record("id:invoice/17#a?", "f1")
    ledger.record("msg:m1", "f2")
    assert table.creates == 1
    assert ledger.lookup("id:invoice/17#a?") == "f1" and ledger.lookup("msg:m1") == "f2"
    assert ledger.lookup("id:other") is None
    for (partition, row), entity in table.entities.items():
        # Hashed keys: always valid Table keys ("/", "#", "?" are not), and the id is not stored.
        assert len(row) == 64 and row.startswith(partition)
        assert set(entity) == {"PartitionKey", "RowKey", "kind", "sentAt", "fingerprint"}
