"""One send per key: the claim, unknown outcomes resolved through Sent Items, and retries apps cannot forge.

Everything runs against fakes with Table storage's semantics (insert-if-absent, ETag conditions) and a
clock the test moves, so every path is made to happen, races included, without I/O or sleeping.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from azure.functions.queue import QueueMessage

from shared.bootstrap import Runtime
from shared.graph import GraphReply
from shared.handlers import handle_mail_message, handle_retry_message, handle_status_cleanup
from shared.outcomes import Sent
from shared.pacing import Over
from shared.sending import Checked, ClaimLost, Relay
from shared.settings import load_settings
from shared.status import (
    DEAD_LETTERED,
    RETRYING,
    SENDING,
    SENT,
    UNKNOWN,
    MemoryStatusStore,
    StatusKey,
    StatusRecord,
    to_entity,
)
from tests.fakes import Accepted, FakeDeadLetters, FakeDrafts, FakeGraph, FakeRequeue, FakeTokens, graph_error
from tests.unit.test_settings import GOOD

SENDER = "alerts@contoso.com"
REQUEST: dict[str, Any] = {
    "id": "order-42",
    "from": SENDER,
    "to": ["ops@contoso.com", "Boss@Fabrikam.example"],
    "bcc": ["audit@contoso.com"],
    "subject": "Receipt for order 42",
    "body": {"contentType": "text", "content": "secret-body-text"},
}
KEY = StatusKey(SENDER, "id", "order-42")
NO_ACCESS = graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 12, 5, 9, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Stack:
    rt: Runtime
    graph: FakeGraph
    dead: FakeDeadLetters
    retries: FakeRequeue
    status: Any  # a MemoryStatusStore; with apps an AppStatusStore over one per app (tests/unit/test_apps.py)
    clock: Clock
    pending: list[tuple[dict[str, Any], datetime]]  # retry-queue messages and when each becomes visible

    def outbox(self, request: dict[str, Any] | bytes = REQUEST, msg_id: str = "q-1", dequeue_count: int = 1) -> None:
        body = request if isinstance(request, bytes) else json.dumps(request).encode()
        handle_mail_message(QueueMessage(id=msg_id, body=body, dequeue_count=dequeue_count, pop_receipt="p"), self.rt)

    def run_retries(self) -> int:
        """Deliver every retry-queue message now due (the clock moved past its delay), as the host would."""
        done = 0
        while True:
            due = [(p, at) for p, at in self.pending if at <= self.clock.now]
            if not due:
                return done
            payload, at = due[0]
            self.pending.remove((payload, at))
            body = json.dumps(payload).encode()
            handle_retry_message(QueueMessage(id=f"r-{done}", body=body, dequeue_count=1, pop_receipt="p"), self.rt)
            done += 1

    def record(self, key: StatusKey = KEY) -> StatusRecord:
        found = self.status.get(key)
        assert found is not None
        return found


def make(**settings: str) -> Stack:
    graph, dead, status, clock = FakeGraph(), FakeDeadLetters(), MemoryStatusStore(), Clock()
    env = {
        **GOOD,
        "GRAPH_TIMEOUT_SECONDS": "10",
        "SEND_CLAIM_LEASE_SECONDS": "60",
        "SEND_UNKNOWN_SETTLE_SECONDS": "30",
        "SEND_RETRY_BASE_SECONDS": "5",
        **settings,
    }
    relay = Relay(allowed_senders=frozenset({SENDER, "receipts@contoso.com"}), tokens=FakeTokens(), graph=graph)
    pending: list[tuple[dict[str, Any], datetime]] = []

    class TimedRequeue(FakeRequeue):
        """The retry queue: each message becomes visible `delay` seconds after the clock's time of the put."""

        def put(self, payload: dict[str, Any], delay_seconds: int) -> None:
            super().put(payload, delay_seconds)
            pending.append((payload, clock.now + timedelta(seconds=delay_seconds)))

    retries = TimedRequeue()
    rt = Runtime(
        settings=load_settings(env), relay=relay, dead_letters=dead, retries=retries, status=status, clock=clock
    )
    return Stack(rt, graph, dead, retries, status, clock, pending)


# --- The common case ------------------------------------------------------------------------------------


def test_a_first_delivery_claims_sends_and_records_in_two_writes() -> None:
    s = make()
    s.outbox()
    assert len(s.graph.calls) == 1
    record = s.record()
    assert record.state == SENT and record.attempts == 1 and record.sent_at == s.clock.now
    assert record.graph_request_id == "req-1"
    assert s.status.writes == 2  # the claim (insert) and the outcome: no read on the common path
    assert s.graph.copies(KEY.mark) == 1


def test_the_record_keeps_when_the_app_enqueued_the_request() -> None:
    """The queue's insertion time, where enqueue-to-sent starts (mailrelay report); kept through a retry."""
    from tests.fakes import graph_error

    s = make()
    enqueued = s.clock.now - timedelta(seconds=42)
    s.graph.replies = [graph_error(503, "ServiceUnavailable", "try later")]
    body = json.dumps(REQUEST).encode()
    message = QueueMessage(id="q-1", body=body, dequeue_count=1, pop_receipt="p", insertion_time=enqueued)
    handle_mail_message(message, s.rt)
    assert s.record().enqueued_at == enqueued and s.record().to_json()["enqueuedAt"] == "2026-12-05T08:59:18Z"
    s.clock.advance(3600)
    s.run_retries()
    assert s.record().state == SENT and s.record().enqueued_at == enqueued


def test_every_message_carries_the_keys_mark_in_an_extended_property() -> None:
    s = make()
    s.outbox()
    (_, body, _) = s.graph.calls[0]
    (prop,) = body["message"]["singleValueExtendedProperties"]
    assert prop["id"].startswith("String {") and prop["id"].endswith("} Name GraphMailRelayKey")
    assert prop["value"] == KEY.mark and len(KEY.mark) == 64


def test_a_redelivery_of_a_sent_request_completes_without_sending(caplog: pytest.LogCaptureFixture) -> None:
    s = make()
    s.outbox()
    with caplog.at_level(logging.INFO):
        s.outbox(dict(reversed(list(REQUEST.items()))), msg_id="q-2")  # the same content, keys in another order
    assert len(s.graph.calls) == 1 and s.dead.envelopes == []
    assert any(getattr(r, "event", None) == "mail.duplicate" for r in caplog.records)


def test_the_same_id_with_other_content_is_refused_with_a_reason_not_dropped() -> None:
    s = make()
    s.outbox()
    s.outbox({**REQUEST, "subject": "another mail"}, msg_id="q-2")
    assert len(s.graph.calls) == 1
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "DuplicateKey" and "order-42" in envelope["error"]["message"]
    assert s.record().state == SENT  # the first request's record is untouched


def test_ids_are_scoped_by_sender_mailbox_so_one_app_cannot_suppress_anothers_mail() -> None:
    s = make()
    s.outbox()
    other = {**REQUEST, "from": "receipts@contoso.com", "subject": "unrelated receipt"}
    s.outbox(other, msg_id="q-2")
    assert len(s.graph.calls) == 2 and s.dead.envelopes == []
    assert s.record(StatusKey("receipts@contoso.com", "id", "order-42")).state == SENT


def test_a_request_without_id_is_keyed_by_its_first_queue_message() -> None:
    s = make()
    keyless = {k: v for k, v in REQUEST.items() if k != "id"}
    s.outbox(keyless, msg_id="q-7")
    s.outbox(keyless, msg_id="q-7", dequeue_count=2)  # the host's redelivery of that same message
    assert len(s.graph.calls) == 1
    assert s.record(StatusKey(SENDER, "msg", "q-7")).state == SENT


def test_the_record_holds_counts_and_domains_never_a_subject_body_or_address() -> None:
    s = make()
    s.outbox()
    record = s.record()
    assert record.recipients == 3 and record.recipient_domains == "contoso.com,fabrikam.example"
    stored = json.dumps(to_entity(record), default=str) + json.dumps(record.to_json())
    for secret in ("Receipt for order 42", "secret-body-text", "ops@contoso.com", "boss@fabrikam", "audit@"):
        assert secret.lower() not in stored.lower()


def test_a_record_cleaned_up_during_the_send_is_written_again_with_the_outcome() -> None:
    s = make()
    original = s.graph.send_mail

    def send_while_the_cleanup_runs(sender: str, body: Any, token: str) -> Any:
        assert s.status.delete_expired(s.clock.now + timedelta(days=1)) == 1  # the timer removed the claim
        return original(sender, body, token)

    s.graph.send_mail = send_while_the_cleanup_runs  # type: ignore[method-assign]
    s.outbox()
    assert s.record().state == SENT  # the outcome is recorded anyway: a redelivery finds it sent
    s.outbox(msg_id="q-2")
    assert len(s.graph.calls) == 1


# --- Concurrency ----------------------------------------------------------------------------------------


def test_two_concurrent_deliveries_of_one_key_make_exactly_one_graph_call() -> None:
    s = make()
    inside, release = threading.Event(), threading.Event()
    original = s.graph.send_mail

    def slow(sender: str, body: Any, token: str) -> Any:
        inside.set()
        release.wait(5)
        return original(sender, body, token)

    s.graph.send_mail = slow  # type: ignore[method-assign]
    first = threading.Thread(target=s.outbox, kwargs={"msg_id": "q-1"})
    first.start()
    assert inside.wait(5)
    s.outbox(msg_id="q-2")  # the app enqueued it twice: this copy finds the claim held
    release.set()
    first.join(5)
    assert len(s.graph.calls) == 1
    ((payload, delay),) = s.retries.puts  # the second copy waits on the relay's queue, no closer than 1 s
    assert payload["request"] == REQUEST and 1 <= delay <= 15
    s.clock.advance(delay)
    s.run_retries()
    assert len(s.graph.calls) == 1 and s.dead.envelopes == [] and s.record().state == SENT


def test_a_lost_race_on_the_etag_reads_again_and_does_not_send() -> None:
    s = make()
    s.outbox()
    record = s.record()
    # Another worker changed the record between this worker's read and its write: the write must fail.
    assert s.status.replace(replace(record, etag="W/stale")) is None
    assert s.status.replace(record) is not None


# --- The fence: the claim proven before every Graph call ----------------------------------------------------


def stall_after_claim(s: Stack, seconds: float, during: Callable[[], None] | None = None) -> None:
    """The next claim's insert succeeds, then its worker stalls `seconds` before it reaches Graph (Storage frozen, a
    long pacing wait); `during` runs inside the stall: another worker's delivery of the same request."""
    insert = s.status.create

    def create_then_stall(record: StatusRecord) -> StatusRecord | None:
        created = insert(record)
        s.status.create = insert  # type: ignore[method-assign]  # once
        s.clock.advance(seconds)
        if during is not None:
            during()
        return created

    s.status.create = create_then_stall  # type: ignore[method-assign]


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


@pytest.mark.parametrize(
    ("stall", "writes"),
    [(0, 2), (48.9, 2), (49, 3), (55, 3), (3600, 3)],
    ids=["none", "within-the-margin", "at-the-margin", "past-the-margin", "an-hour"],
)
def test_the_fence_renews_exactly_once_when_the_clock_no_longer_vouches_for_the_claim(
    stall: float, writes: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Lease 60 s, Graph's timeout 10 s, skew margin 1 s: a call may start on the clock alone until 49 s after the
    # claim's insert was sent; later, one write under the claim's ETag renews the lease first.
    s = make()
    stall_after_claim(s, stall)
    get = s.status.get
    leases: list[datetime | None] = []
    original = s.graph.send_mail

    def send(sender: str, body: Any, token: str) -> Any:
        leases.append(getattr(get(KEY), "lease_until", None))  # the lease the call is made under
        return original(sender, body, token)

    s.graph.send_mail = send  # type: ignore[method-assign]
    reads = 0

    def counted_get(key: StatusKey) -> StatusRecord | None:
        nonlocal reads
        reads += 1
        return get(key)

    with caplog.at_level(logging.INFO):
        s.status.get = counted_get  # type: ignore[method-assign]
        s.outbox()
        s.status.get = get  # type: ignore[method-assign]
    assert len(s.graph.calls) == 1 and s.record().state == SENT
    assert s.status.writes == writes  # the claim and the outcome; plus the one renewal a stall needs
    assert reads == 0  # the outcome was written under the renewed ETag: no conflict, no read
    assert len(events(caplog, "mail.claim.renewed")) == writes - 2
    (lease,) = leases
    assert lease is not None and lease >= s.clock.now + timedelta(seconds=10 + 1)  # the call ends inside its lease


def test_a_claim_taken_over_during_a_stall_is_sent_once_by_the_new_owner(caplog: pytest.LogCaptureFixture) -> None:
    # The first copy claims, then stalls past its lease; the second copy takes the claim over, finds nothing in
    # Sent Items after the settling time and sends. The first copy's fence then fails its renewal (412).
    s = make()
    stall_after_claim(s, 200, during=lambda: s.outbox(msg_id="q-2"))
    with caplog.at_level(logging.INFO):
        s.outbox(msg_id="q-1")
    assert len(s.graph.calls) == 1 and s.graph.copies(KEY.mark) == 1
    assert s.record().state == SENT and s.record().attempts == 2  # the stalled try counted, as it must be
    (lost,) = events(caplog, "mail.claim.lost")
    assert lost.levelno == logging.WARNING and getattr(lost, "key", None) == "order-42"
    ((payload, delay),) = s.retries.puts  # the stalled copy goes back to look again
    assert payload["request"] == REQUEST and delay == 1
    s.clock.advance(delay)
    with caplog.at_level(logging.INFO):
        s.run_retries()
    assert len(s.graph.calls) == 1 and s.dead.envelopes == [] and events(caplog, "mail.duplicate")


def test_a_claim_taken_over_during_a_renewal_stops_the_call() -> None:
    # The renewal's write itself is refused: another worker changed the record between this worker's claim and
    # its fence (it took the claim over); nothing is written over the new owner's record.
    s = make()
    stall_after_claim(s, 55)
    update = s.status.replace

    def taken_over_first(record: StatusRecord) -> StatusRecord | None:
        s.status.replace = update  # type: ignore[method-assign]
        current = s.record()
        update(replace(current, lease_until=s.clock.now + timedelta(seconds=60), resolution="another worker's"))
        return update(record)

    s.status.replace = taken_over_first  # type: ignore[method-assign]
    s.outbox()
    assert s.graph.calls == [] and s.record().resolution == "another worker's" and s.record().state == SENDING
    assert [delay for _, delay in s.retries.puts] == [1]


def test_a_storage_error_during_the_renewal_sends_nothing_and_leaves_the_retry_to_the_host() -> None:
    s = make()
    stall_after_claim(s, 55)
    update = s.status.replace

    def unreachable(record: StatusRecord) -> StatusRecord | None:
        s.status.replace = update  # type: ignore[method-assign]
        raise ConnectionError("storage unreachable")

    s.status.replace = unreachable  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        s.outbox()
    assert s.graph.calls == [] and s.retries.puts == []
    s.clock.advance(3600)  # the host delivers the message again, long after: the claim is taken over, then sent
    s.outbox(dequeue_count=2)
    assert s.graph.copies(KEY.mark) == 1 and s.record().state == SENT


def test_renewals_slower_than_a_lease_never_let_the_call_start() -> None:
    # Storage answers each renewal only after the lease it wrote has nearly run out: the clock never vouches for the
    # call, so after a few rounds the function fails before Graph (the host delivers the message again).
    s = make()
    stall_after_claim(s, 55)
    update = s.status.replace

    def slow(record: StatusRecord) -> StatusRecord | None:
        written = update(record)
        s.clock.advance(50)
        return written

    s.status.replace = slow  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="could not be renewed in time"):
        s.outbox()
    assert s.graph.calls == [] and s.record().state == SENDING


def test_a_worker_that_stalled_then_died_in_its_call_is_looked_up_after_its_lease_and_the_settling_time() -> None:
    # The fence let the stalled worker call Graph 45 s after its claim (the clock still vouched for it), and it died
    # during the call after Graph accepted. Exchange had not filed it in Sent Items when the lease ran out: the new
    # owner waits the settling time counted from the latest start the lease allowed, then finds it.
    s = make()
    stall_after_claim(s, 45)
    s.graph.replies.append(Accepted(RuntimeError("the worker died during the call")))
    s.graph.lookup_replies.append(GraphReply(200, None, None, "req-l", value={"value": []}))  # not filed yet
    with pytest.raises(RuntimeError):
        s.outbox()
    claimed = s.clock.now - timedelta(seconds=45)
    s.clock.advance(16)  # the lease (60 s from the claim) ran out; the host delivers the message again
    s.outbox(dequeue_count=2)
    assert s.graph.lookups == 1 and len(s.graph.calls) == 1 and s.record().state == UNKNOWN
    assert s.record().not_before == claimed + timedelta(seconds=60 - 10 + 10 + 30)  # the lease's end + settling
    s.clock.advance(3600)
    s.run_retries()
    assert s.graph.copies(KEY.mark) == 1 and s.record().state == SENT
    assert s.record().resolution == "found in Sent Items"


def take_over(s: Stack, who: str) -> None:
    """Another worker takes the claim over, as `_claim` does once the lease has run out: its own lease, a new ETag."""
    current = s.record()
    s.status.replace(replace(current, state=SENDING, lease_until=s.clock.now + timedelta(seconds=60), resolution=who))


def test_a_copy_paced_while_its_claim_was_taken_over_leaves_the_new_owners_claim_alone() -> None:
    # The copy claimed, then waited on Storage for its pace slot past its lease; the new owner is sending. Going back
    # `queued` over the new owner's claim would let a later copy send without looking in Sent Items: a duplicate.
    s = paced(MAILBOX_MAX_CONCURRENT="1")
    pacer = s.rt.pacer
    assert pacer is not None

    def meanwhile() -> None:
        take_over(s, "the new owner")
        assert not isinstance(pacer.acquire(SENDER, 1), Over)  # and holds the mailbox's one slot for its call

    stall_after_claim(s, 200, during=meanwhile)
    s.outbox()
    assert s.graph.calls == []
    record = s.record()
    assert record.state == SENDING and record.resolution == "the new owner"  # not `queued`
    assert [delay for _, delay in s.retries.puts] == [1]  # the copy looks again: it will find the outcome


def test_a_resolution_still_settling_leaves_a_claim_taken_over_during_its_lookup_alone() -> None:
    s = make()
    s.graph.replies.append(graph_error(504, "GatewayTimeout", "upstream timed out"))
    s.outbox()
    s.status.replace(replace(s.record(), not_before=s.clock.now))  # a copy arrives early (another clock)
    lookup = s.graph.find_sent

    def slow_lookup(sender: str, mark: str, token: str) -> GraphReply:
        s.clock.advance(61)  # the lookup outlasted the lease: another worker took the claim over
        take_over(s, "the new owner")
        return lookup(sender, mark, token)

    s.graph.find_sent = slow_lookup  # type: ignore[method-assign]
    s.outbox(msg_id="q-2")
    record = s.record()
    assert record.state == SENDING and record.resolution == "the new owner"  # not `unknown` over the new claim
    assert len(s.graph.calls) == 1 and s.retries.puts[-1][1] == 1


# The large-message flow: every call that changes the mailbox is fenced.


class CountingFence:
    """A fence that passes `passes` times, then raises ClaimLost; each pass is noted among the Graph steps."""

    def __init__(self, graph: FakeDrafts, passes: int = 1_000) -> None:
        self.graph, self.passes = graph, passes

    def __call__(self) -> None:
        if self.passes == 0:
            raise ClaimLost("another worker took the request's claim over")
        self.passes -= 1
        self.graph.steps.append("fence")


def large_request(graph_faults: dict[str, list[Any]] | None = None) -> tuple[Relay, FakeDrafts, Checked]:
    from tests.unit.test_large_messages import MB, setup

    relay, graph, _, request = setup(10 * MB)
    graph.faults.update(graph_faults or {})
    checked = relay.check(json.dumps(request).encode())
    assert isinstance(checked, Checked)
    return relay, graph, checked


def test_the_draft_flow_proves_its_claim_before_each_call_that_changes_the_mailbox() -> None:
    from tests.unit.test_large_messages import MARK

    relay, graph, checked = large_request()
    assert isinstance(relay.deliver(checked, MARK, CountingFence(graph)).outcome, Sent)
    # The lookup of leftovers reads only; the draft, the session, each of three ranges and the send are fenced.
    changes = ["create_draft", "create_upload_session", "upload_range", "upload_range", "upload_range", "send_draft"]
    assert graph.steps == ["find_drafts", *(step for change in changes for step in ("fence", change))]


def test_a_claim_lost_during_an_upload_deletes_the_draft_and_sends_nothing() -> None:
    from tests.unit.test_large_messages import MARK

    relay, graph, checked = large_request()
    with pytest.raises(ClaimLost):
        relay.deliver(checked, MARK, CountingFence(graph, passes=3))  # the draft, the session, the first range
    assert graph.steps[-2:] == ["upload_range", "delete_message"] and "send_draft" not in graph.steps
    assert graph.drafts == {} and graph.sent_drafts == []


def test_a_lost_claims_draft_it_could_not_delete_is_deleted_by_the_new_owner_before_its_own() -> None:
    from tests.unit.test_large_messages import MARK

    relay, graph, checked = large_request({"delete_message": [graph_error(503, "ServiceUnavailable", "busy")]})
    with pytest.raises(ClaimLost):
        relay.deliver(checked, MARK, CountingFence(graph, passes=2))
    (left,) = graph.drafts  # the delete failed: the draft stays, carrying the request's mark
    assert isinstance(relay.deliver(checked, MARK, CountingFence(graph)).outcome, Sent)  # the new owner
    assert left not in graph.drafts and graph.drafts == {} and len(graph.sent_drafts) == 1


def test_a_copy_that_lost_its_claim_leaves_a_draft_with_the_mark_alone() -> None:
    # A draft carrying the request's mark may be the new owner's, half built: only the claim's holder deletes it.
    from tests.unit.test_large_messages import MARK

    relay, graph, checked = large_request()
    marked = {"singleValueExtendedProperties": [{"id": "mark", "value": MARK}]}
    graph.drafts["draft-of-the-new-owner"] = {"sender": SENDER, "message": marked, "attachments": []}
    with pytest.raises(ClaimLost):
        relay.deliver(checked, MARK, CountingFence(graph, passes=0))
    assert graph.steps == ["find_drafts"] and "draft-of-the-new-owner" in graph.drafts


# --- Transient failures and the retry queue --------------------------------------------------------------


def test_a_throttled_try_is_retrying_on_the_relays_queue_with_retry_after_as_a_floor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = make()
    s.graph.replies.append(graph_error(429, "ApplicationThrottled", "slow down", retry_after="20"))
    with caplog.at_level(logging.INFO):
        s.outbox()
    record = s.record()
    # Throttling spends Retry-After, not the budget: the try is counted, as the log numbers it, and marked throttled.
    assert record.state == RETRYING and record.last_error_code == "ApplicationThrottled"
    assert (record.attempts, record.throttled, record.budget_attempts) == (1, 1, 0)
    [retry] = events(caplog, "mail.retry")
    assert getattr(retry, "attempt", None) == record.attempts == 1 and getattr(retry, "throttled", None) is True
    assert record.to_json()["attempts"] == 1 and record.to_json()["throttled"] == 1  # what `mailrelay status` shows
    ((payload, delay),) = s.retries.puts
    assert set(payload) == {"$retry", "request"} and "attempts" not in payload["$retry"]  # state is in the record
    assert delay >= 20 and record.not_before == s.clock.now + timedelta(seconds=delay)
    s.clock.advance(delay)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        s.run_retries()
    sent = s.record()
    assert len(s.graph.calls) == 2 and sent.state == SENT and (sent.attempts, sent.throttled) == (2, 1)
    assert getattr(events(caplog, "mail.sent")[0], "attempt", None) == 2  # the second call, in both


def test_an_early_duplicate_keeps_to_the_records_schedule() -> None:
    s = make()
    s.graph.replies.append(graph_error(429, "ApplicationThrottled", "slow down", retry_after="60"))
    s.outbox()
    s.clock.advance(10)
    s.outbox(msg_id="q-2")  # the app sent it again, 50 s before Retry-After is over
    assert len(s.graph.calls) == 1
    assert s.retries.puts[-1][1] == 50


def test_the_budget_is_counted_in_the_record_and_spent_into_a_dead_letter() -> None:
    s = make(SEND_MAX_ATTEMPTS="2")
    for _ in range(2):
        s.graph.replies.append(graph_error(408, "RequestTimeout", "the server timed out waiting", retry_after="1"))
    s.outbox()
    s.clock.advance(3600)
    s.run_retries()
    assert len(s.graph.calls) == 2
    (envelope,) = s.dead.envelopes
    assert envelope["attempts"] == 2 and "SEND_MAX_ATTEMPTS=2" in envelope["error"]["message"]
    assert s.record().state == DEAD_LETTERED


def test_a_429_storm_never_spends_the_budget() -> None:
    s = make(SEND_MAX_ATTEMPTS="2")
    for _ in range(5):
        s.graph.replies.append(graph_error(429, "ApplicationThrottled", "slow down", retry_after="1"))
    s.outbox()
    for _ in range(6):
        s.clock.advance(3600)
        s.run_retries()
    assert len(s.graph.calls) == 6 and s.dead.envelopes == [] and s.record().state == SENT
    assert (s.record().attempts, s.record().throttled) == (6, 5)  # every call counted; the budget spent 1 of 2


def test_the_throttled_count_is_kept_in_the_table_and_a_record_from_before_reads_as_none() -> None:
    from shared.status import StatusKey, StatusRecord, from_entity, to_entity

    record = StatusRecord(StatusKey(SENDER, "id", "order-42"), RETRYING, attempts=3, throttled=2)
    entity = to_entity(record)
    assert (entity["attempts"], entity["throttled"]) == (3, 2)
    assert from_entity(entity).budget_attempts == 1
    del entity["throttled"]  # written before issue 21: a throttled try was given back from attempts instead
    assert (from_entity(entity).throttled, from_entity(entity).budget_attempts) == (0, 3)


def test_throttled_tries_are_not_counted_by_the_budget_and_the_dead_letter_says_why_the_record_shows_more() -> None:
    s = make(SEND_MAX_ATTEMPTS="2")
    s.graph.replies.append(graph_error(429, "ApplicationThrottled", "slow down", retry_after="1"))
    for _ in range(2):
        s.graph.replies.append(graph_error(408, "RequestTimeout", "the server timed out waiting", retry_after="1"))
    s.outbox()
    for _ in range(3):
        s.clock.advance(3600)
        s.run_retries()
    assert len(s.graph.calls) == 3  # the 429 spent none of the 2 tries
    (envelope,) = s.dead.envelopes
    assert envelope["attempts"] == 3 and s.record().attempts == 3 and s.record().throttled == 1
    message = envelope["error"]["message"]
    assert "gave up after 2 attempts (SEND_MAX_ATTEMPTS=2); 1 more throttled (429), not counted" in message


def test_a_retry_wrapper_on_the_outbox_is_refused_never_trusted() -> None:
    s = make()
    forged = {"$retry": {"attempts": 99, "originalMessageId": "someone-else"}, "request": REQUEST}
    s.outbox(forged)
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "RetryWrapperRefused"
    assert s.graph.calls == [] and len(s.status) == 0


def test_a_malformed_message_on_the_retry_queue_is_dead_lettered() -> None:
    s = make()
    handle_retry_message(QueueMessage(id="r", body=b'{"request": 1}', dequeue_count=1, pop_receipt="p"), s.rt)
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "InvalidRequest" and s.graph.calls == []


def test_refused_requests_leave_no_record_that_could_block_a_real_one() -> None:
    s = make()
    s.outbox({**REQUEST, "to": "not-a-list"})  # invalid: no record under this sender and id
    s.outbox(base64.b64encode(b"junk"))
    assert len(s.status) == 0
    s.outbox(msg_id="q-3")
    assert s.record().state == SENT


# --- Unknown outcomes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        graph_error(504, "GatewayTimeout", "upstream timed out"),
        graph_error(500, "InternalServerError", "oops"),
        requests.ReadTimeout("read timed out"),
    ],
    ids=["504", "500", "timeout"],
)
def test_an_accepted_then_failed_send_is_found_in_sent_items_and_not_sent_again(answer: Any) -> None:
    s = make()
    s.graph.replies.append(Accepted(answer))
    s.outbox()
    record = s.record()
    assert record.state == UNKNOWN
    ((_, delay),) = s.retries.puts
    assert delay >= 10 + 30  # Graph's timeout plus the settling time
    s.clock.advance(delay)
    s.run_retries()
    assert s.graph.copies(KEY.mark) == 1 and s.graph.lookups == 1
    record = s.record()
    assert record.state == SENT and record.resolution == "found in Sent Items" and s.dead.envelopes == []


def test_a_failed_send_not_in_sent_items_after_the_settling_time_is_sent_once_more() -> None:
    s = make()
    s.graph.replies.append(graph_error(502, "BadGateway", "bad gateway"))  # refused, though it says nothing
    s.outbox()
    s.clock.advance(3600)
    s.run_retries()
    assert len(s.graph.calls) == 2 and s.graph.copies(KEY.mark) == 2  # the first never went out: one delivered
    assert s.record().state == SENT and "not in Sent Items" in (s.record().resolution or "")


def test_a_lookup_before_the_settling_time_looks_again_later_instead_of_sending() -> None:
    s = make()
    s.graph.replies.append(graph_error(504, "GatewayTimeout", "upstream timed out"))
    s.outbox()
    # A copy from the app arrives after the schedule but the try was only just made (a slow clock elsewhere):
    record = s.record()
    s.status.replace(replace(record, not_before=s.clock.now))
    s.outbox(msg_id="q-2")
    assert len(s.graph.calls) == 1 and s.graph.lookups == 1
    assert s.record().state == UNKNOWN
    assert s.retries.puts[-1][1] == 40  # back when timeout + settling time have passed


def test_a_claim_left_by_a_dead_worker_is_taken_over_after_its_lease_and_resolved() -> None:
    s = make()
    s.graph.replies.append(Accepted(RuntimeError("the worker died during the call")))
    with pytest.raises(RuntimeError):
        s.outbox()  # the host will deliver q-1 again; the record stays `sending` with its lease
    assert s.record().state == SENDING
    s.outbox(dequeue_count=2)  # within the lease: wait, do not send
    assert len(s.graph.calls) == 1 and s.retries.puts[-1][1] <= 15
    s.clock.advance(61)  # the lease ran out
    s.run_retries()
    assert s.graph.copies(KEY.mark) == 1 and s.record().state == SENT
    assert s.record().resolution == "found in Sent Items"


def test_without_read_access_resend_mode_sends_again_at_least_once(caplog: pytest.LogCaptureFixture) -> None:
    s = make()
    s.graph.replies.append(Accepted(graph_error(504, "GatewayTimeout", "upstream timed out")))
    s.graph.lookup_replies.append(NO_ACCESS)
    s.outbox()
    s.clock.advance(3600)
    with caplog.at_level(logging.INFO):
        s.run_retries()
    assert s.graph.copies(KEY.mark) == 2  # the promised trade-off: at least once
    assert s.record().state == SENT and "SEND_UNKNOWN_OUTCOME=resend" in (s.record().resolution or "")
    assert any(getattr(r, "event", None) == "mail.unknown" for r in caplog.records)


def test_without_read_access_deadletter_mode_never_sends_twice() -> None:
    s = make(SEND_UNKNOWN_OUTCOME="deadletter")
    s.graph.replies.append(Accepted(requests.ReadTimeout("read timed out")))
    s.graph.lookup_replies.append(NO_ACCESS)
    s.outbox()
    s.clock.advance(3600)
    s.run_retries()
    assert s.graph.copies(KEY.mark) == 1
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "SendOutcomeUnknown" and "Sent Items" in envelope["error"]["hint"]
    assert s.record().state == DEAD_LETTERED and s.record().resolution == UNKNOWN


def test_a_request_not_saved_to_sent_items_cannot_be_looked_up_and_follows_the_setting() -> None:
    s = make(SEND_UNKNOWN_OUTCOME="deadletter")
    s.graph.replies.append(Accepted(requests.ReadTimeout("read timed out")))
    s.outbox({**REQUEST, "saveToSentItems": False})
    s.clock.advance(3600)
    s.run_retries()
    assert s.graph.lookups == 0 and s.graph.copies(KEY.mark) == 1
    assert s.dead.envelopes[0]["error"]["code"] == "SendOutcomeUnknown"


def test_a_lookup_that_fails_for_now_stays_unknown_and_looks_again() -> None:
    s = make()
    s.graph.replies.append(Accepted(graph_error(503, "ServiceUnavailable", "busy")))
    s.graph.lookup_replies.append(graph_error(503, "ServiceUnavailable", "busy", retry_after="7"))
    s.outbox()
    s.clock.advance(3600)
    s.run_retries()
    assert s.record().state == UNKNOWN and len(s.graph.calls) == 1
    s.clock.advance(3600)
    s.run_retries()
    assert s.record().state == SENT and s.graph.copies(KEY.mark) == 1


def test_a_connection_refused_before_sending_is_a_plain_retry_not_an_unknown() -> None:
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    s = make()
    refused = requests.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "refused")))  # type: ignore[arg-type]
    s.graph.replies.append(refused)
    s.outbox()
    assert s.record().state == RETRYING


def test_a_connection_lost_after_sending_is_unknown() -> None:
    s = make()
    s.graph.replies.append(requests.ConnectionError("Connection aborted: RemoteDisconnected"))
    s.outbox()
    assert s.record().state == UNKNOWN


# --- Pacing ---------------------------------------------------------------------------------------------


def paced(**settings: str) -> Stack:
    from shared.pacing import MemoryPaceStore, Pacer, limits_of

    s = make(**settings)
    # The pace rows beside the status records, as in the Table: an outcome frees its slot in the same write.
    pacer = Pacer(MemoryPaceStore(s.status.rows), limits_of(s.rt.settings), s.clock)
    s.rt = Runtime(**{**s.rt.__dict__, "pacer": pacer, "sleep": s.clock.advance})
    return s


def test_a_mailbox_over_its_messages_per_minute_is_queued_without_spending_the_budget() -> None:
    s = paced(MAILBOX_MESSAGES_PER_MINUTE="2")
    for i in range(3):
        s.outbox({**REQUEST, "id": f"order-{i}"}, msg_id=f"q-{i}")
    assert len(s.graph.calls) == 2
    third = s.record(StatusKey(SENDER, "id", "order-2"))
    assert third.state == "queued" and third.attempts == 0 and third.last_error_code == "Paced"
    ((_, delay),) = s.retries.puts
    assert delay == 60  # until the oldest send leaves the one-minute window
    s.clock.advance(delay)
    s.run_retries()
    assert len(s.graph.calls) == 3 and s.record(third.key).state == SENT and s.record(third.key).attempts == 1


def test_a_wait_shorter_than_the_queues_second_is_held_in_the_worker() -> None:
    s = paced(MAILBOX_MESSAGES_PER_MINUTE="1")
    s.outbox()
    s.clock.advance(59.5)  # the minute's only send leaves the window in half a second
    s.outbox({**REQUEST, "id": "order-43"}, msg_id="q-2")
    assert len(s.graph.calls) == 2 and s.retries.puts == []  # held, not put back on the queue


def test_a_held_wait_is_bounded_then_the_request_goes_back_on_the_queue() -> None:
    s = paced(MAILBOX_MAX_CONCURRENT="1")
    pacer = s.rt.pacer
    assert pacer is not None
    assert not isinstance(pacer.acquire(SENDER, 1), Over)  # another worker holds the mailbox's one slot
    started = s.clock.now
    s.outbox()
    assert s.graph.calls == [] and s.clock.now - started == timedelta(seconds=3)
    ((_, delay),) = s.retries.puts
    assert delay == 1 and s.record().state == "queued"


def test_a_slot_that_cannot_be_freed_does_not_cost_the_outcome() -> None:
    s = paced(MAILBOX_MAX_CONCURRENT="1")
    real_send = s.graph.send_mail

    def send_then_the_pace_row_is_gone(*args: object, **kwargs: object) -> object:
        s.status.rows.rows.clear()  # the pace row vanished meanwhile: the outcome is written without it
        return real_send(*args, **kwargs)  # type: ignore[arg-type]

    s.graph.send_mail = send_then_the_pace_row_is_gone  # type: ignore[method-assign]
    s.outbox()
    assert s.record().state == SENT and len(s.graph.calls) == 1  # recorded, not left to a redelivery


def test_a_paced_send_costs_three_writes_claim_slot_and_outcome_with_the_slot_freed_in_it() -> None:
    """Issue 18, item 8: the claim, one conditional write for the slot (the row as this process last wrote it),
    and the outcome, which frees the slot in the same transaction. The first send on a mailbox also reads its row."""
    s = paced()
    pace_store = s.rt.pacer._store  # type: ignore[union-attr]
    s.outbox()
    before = (s.status.writes, pace_store.writes)
    s.outbox({**REQUEST, "id": "order-43"}, msg_id="q-2")
    assert (s.status.writes - before[0], pace_store.writes - before[1]) == (2, 1)  # claim + outcome; the slot
    assert s.record(StatusKey(SENDER, "id", "order-43")).state == SENT
    state, _ = pace_store.read(SENDER)
    assert state.slots == {} and len(state.sends) == 2  # both slots freed by their outcomes


def test_a_throttled_try_gives_back_its_recipients_and_a_sent_one_keeps_them() -> None:
    """Issue 18, item 3: a 500-recipient request throttled 20 times counted 10,000 recipients and held the
    mailbox's mail for most of a day. Only what Graph may have accepted counts."""
    s = paced()
    many = {**REQUEST, "to": [f"r{i}@fabrikam.com" for i in range(498)]}
    recipients = sum(len(many.get(field, [])) for field in ("to", "cc", "bcc"))
    assert 499 <= recipients <= 500
    throttled = graph_error(429, "ApplicationThrottled", "over its limit", retry_after="1")
    s.graph.replies.extend(throttled for _ in range(20))
    s.outbox(many)
    for _ in range(300):  # Retry-After 1 s, and a backoff of a few seconds
        if s.record().state == SENT:
            break
        s.clock.advance(1)
        s.run_retries()
    assert s.record().state == SENT and len(s.graph.calls) == 21
    state, _ = s.rt.pacer._store.read(SENDER)  # type: ignore[union-attr]
    assert sum(b[1] for b in state.recipients) == recipients and len(state.sends) == 1


def test_one_busy_mailbox_never_holds_up_another() -> None:
    s = paced(MAILBOX_MESSAGES_PER_MINUTE="1")
    s.outbox({**REQUEST, "id": "a-1"}, msg_id="q-1")
    s.outbox({**REQUEST, "id": "a-2"}, msg_id="q-2")  # over alerts@'s pace
    s.outbox({**REQUEST, "id": "b-1", "from": "receipts@contoso.com"}, msg_id="q-3")
    assert [sender for sender, _, _ in s.graph.calls] == [SENDER, "receipts@contoso.com"]


def test_the_recipient_budget_holds_mail_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    s = paced(MAILBOX_RECIPIENTS_PER_DAY="4")
    s.outbox()  # 3 recipients
    with caplog.at_level(logging.INFO):
        s.outbox({**REQUEST, "id": "order-43"}, msg_id="q-2")  # 3 more would make 6 > 4
    assert len(s.graph.calls) == 1
    record = s.record(StatusKey(SENDER, "id", "order-43"))
    assert record.state == "queued" and "recipients per day" in (record.last_error_hint or "")
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "mail.paced"]
    assert line.levelno == logging.WARNING


def test_a_slot_is_freed_after_the_send_whatever_its_outcome() -> None:
    s = paced(MAILBOX_MAX_CONCURRENT="1")
    s.graph.replies.append(graph_error(403, "ErrorAccessDenied", "denied"))
    s.outbox()
    s.outbox({**REQUEST, "id": "order-43"}, msg_id="q-2")  # the first one's slot is free again
    assert len(s.graph.calls) == 2


# --- Dead letters, requeue and retention ---------------------------------------------------------------


def test_a_dead_lettered_request_sent_again_gets_a_new_budget() -> None:
    s = make()
    s.graph.replies.append(NO_ACCESS)
    s.outbox()
    assert s.record().state == DEAD_LETTERED
    s.outbox(msg_id="q-2")  # requeued after the admin fixed the scope
    assert s.record().state == SENT and s.record().attempts == 1 and len(s.graph.calls) == 2


def test_cleanup_deletes_records_older_than_the_retention() -> None:
    s = make(STATUS_RETENTION_DAYS="2")
    s.outbox()
    s.clock.advance(86400)
    s.outbox({**REQUEST, "id": "order-43"}, msg_id="q-2")
    s.clock.advance(86400 + 1)
    assert handle_status_cleanup(None, s.rt) == 1
    assert s.status.get(KEY) is None and s.status.get(StatusKey(SENDER, "id", "order-43")) is not None


def test_a_retry_copy_refused_before_it_has_a_record_is_dead_lettered_under_its_first_messages_id() -> None:
    """The key `mailrelay send` printed for a request without an id is its first queue message's id: a dead letter
    of a retry copy (the relay's own queue message, another id) must carry that one, as dead-letters list shows."""
    from shared.retries import wrap

    s = make()
    s.outbox()  # order-42 sent
    s.pending.append((wrap({**REQUEST, "subject": "other content"}, "q-first", "transient"), s.clock.now))
    s.run_retries()
    (envelope,) = s.dead.envelopes
    assert envelope["error"]["code"] == "DuplicateKey" and envelope["queueMessageId"] == "q-first"
