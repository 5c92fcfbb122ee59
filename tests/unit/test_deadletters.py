"""shared.deadletters: both forms of dead letter, and requeue's order (enqueue, then delete)."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.deadletters import (
    MAX_DEQUEUE,
    DeadLetterNotFound,
    DeadLetterQueue,
    NotRequeueable,
    Requeued,
    parse_dead_letter,
)
from shared.outcomes import dead_letter_envelope, permanent
from shared.queues import encode

REQUEST: dict[str, Any] = {
    "from": "hr@contoso.com",
    "to": ["ada@contoso.com"],
    "subject": "Payslip",
    "body": {"contentType": "text", "content": "hello"},
}
WHEN = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def envelope(request: Any = REQUEST, code: str = "ErrorAccessDenied", message: str = "Access denied") -> str:
    return encode(dead_letter_envelope(request, permanent(code, message), attempts=1, now=WHEN))


# --- parsing -------------------------------------------------------------------------------------


def test_the_relays_envelope_is_read_with_its_error_and_request() -> None:
    letter = parse_dead_letter("m1", envelope())
    assert letter.form == "envelope"
    assert letter.code == "ErrorAccessDenied"
    assert "Exchange scope" in letter.hint
    assert letter.request == REQUEST and letter.sender == "hr@contoso.com"
    assert letter.attempts == 1 and letter.failed_at == "2025-03-01T12:00:00Z"
    assert letter.requeue_payload() == REQUEST


def test_a_raw_request_moved_after_max_dequeue_count() -> None:
    letter = parse_dead_letter("m2", encode(REQUEST), inserted_on=WHEN, dequeue_count=1)
    assert letter.form == "raw"
    assert letter.code == MAX_DEQUEUE
    assert "maxDequeueCount" in letter.hint
    assert letter.request == REQUEST
    assert letter.failed_at == "2025-03-01T12:00:00Z"  # when the host moved it
    assert letter.attempts is None
    assert letter.requeue_payload() == REQUEST


def test_a_retry_wrapper_moved_raw_is_unwrapped() -> None:
    wrapper = {
        "$retry": {
            "attempts": 5,
            "firstAttemptAt": "2025-03-01T11:00:00Z",
            "originalMessageId": "orig-1",
            "lastError": {"code": "ApplicationThrottled", "message": "over its MailboxConcurrency limit"},
        },
        "request": REQUEST,
    }
    letter = parse_dead_letter("m3", encode(wrapper))
    assert letter.form == "raw" and letter.code == MAX_DEQUEUE
    assert letter.attempts == 5
    assert letter.message.startswith("ApplicationThrottled")
    assert letter.extra["originalMessageId"] == "orig-1"
    # Requeue sends the plain request: the attempt count starts again.
    assert letter.requeue_payload() == REQUEST


def test_text_that_is_not_base64_gives_invalid_encoding_with_the_messageencoding_hint() -> None:
    letter = parse_dead_letter("m4", "hello, this is not base64!")
    assert letter.form == "raw"
    assert letter.code == "InvalidEncoding"
    assert "messageEncoding" in letter.hint and "base64" in letter.hint
    assert letter.request == "hello, this is not base64!"
    with pytest.raises(NotRequeueable, match="no JSON request"):
        letter.requeue_payload()


def test_plain_json_sent_without_base64_is_named_and_can_be_requeued_encoded() -> None:
    letter = parse_dead_letter("m5", json.dumps(REQUEST))
    assert letter.code == "InvalidEncoding"
    assert "plain JSON" in letter.message
    assert letter.sender == "hr@contoso.com"
    assert letter.requeue_payload() == REQUEST


def test_base64_of_something_that_is_not_json() -> None:
    letter = parse_dead_letter("m6", base64.b64encode(b"just text").decode())
    assert letter.code == "InvalidRequest"
    assert letter.request == "just text"
    with pytest.raises(NotRequeueable):
        letter.requeue_payload()


def test_an_envelope_holding_an_invalid_request_cannot_be_requeued_and_says_which_field() -> None:
    bad = {**REQUEST, "subject": "two\nlines"}
    letter = parse_dead_letter("m7", envelope(bad, "InvalidRequest", "subject: must not contain CR or LF"))
    with pytest.raises(NotRequeueable, match="subject"):
        letter.requeue_payload()


def test_to_json_carries_everything_a_tool_needs() -> None:
    data = parse_dead_letter("m1", envelope(), inserted_on=WHEN, dequeue_count=2).to_json()
    assert data["error"]["code"] == "ErrorAccessDenied"
    assert data["insertedOn"] == "2025-03-01T12:00:00Z" and data["dequeueCount"] == 2
    assert data["request"] == REQUEST and data["sender"] == "hr@contoso.com"
    json.dumps(data)


# --- the queue, with a fake that keeps Storage's rules -------------------------------------------


@dataclass
class Message:
    id: str
    content: str
    inserted_on: datetime = WHEN
    dequeue_count: int = 0
    pop_receipt: str | None = None
    hidden: bool = False


@dataclass
class FakeQueue:
    messages: list[Message] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # the order of writes across queues
    name: str = "q"

    def send_message(self, content: Any, **kwargs: Any) -> Message:
        assert kwargs.get("time_to_live") == -1
        message = Message(str(uuid.uuid4()), content)
        self.messages.append(message)
        self.log.append(f"send {self.name}")
        return message

    def peek_messages(self, max_messages: int | None = None, **kwargs: Any) -> list[Message]:
        assert max_messages is not None and max_messages <= 32  # Storage refuses more
        return [m for m in self.messages if not m.hidden][:max_messages]

    def receive_messages(self, **kwargs: Any) -> list[Message]:
        page = [m for m in self.messages if not m.hidden][: kwargs.get("max_messages", 32)]
        for m in page:
            m.hidden, m.dequeue_count, m.pop_receipt = True, m.dequeue_count + 1, str(uuid.uuid4())
        return page

    def update_message(self, message: Any, pop_receipt: str | None = None, **kwargs: Any) -> None:
        assert message.pop_receipt == pop_receipt and kwargs["visibility_timeout"] == 0
        message.hidden = False

    def delete_message(self, message: Any, pop_receipt: str | None = None, **kwargs: Any) -> None:
        assert message.pop_receipt == pop_receipt
        self.messages.remove(message)
        self.log.append(f"delete {self.name}")


def queues(texts: list[str]) -> tuple[DeadLetterQueue, FakeQueue, FakeQueue]:
    log: list[str] = []
    poison = FakeQueue([Message(f"id-{i}", t) for i, t in enumerate(texts)], log, "poison")
    main = FakeQueue([], log, "main")
    return DeadLetterQueue(poison, main), poison, main


def test_peek_reads_at_most_32_and_scan_reads_all_then_makes_them_visible_again() -> None:
    dlq, poison, _ = queues([envelope()] * 40)
    assert len(dlq.peek()) == 32
    letters = dlq.scan()
    assert [x.id for x in letters] == [f"id-{i}" for i in range(40)]
    assert not any(m.hidden for m in poison.messages)
    assert len(poison.messages) == 40


def test_get_finds_a_message_beyond_the_first_32() -> None:
    dlq, _, _ = queues([envelope()] * 35)
    assert dlq.get("id-34").id == "id-34"
    with pytest.raises(DeadLetterNotFound):
        dlq.get("nope")


def test_requeue_enqueues_the_plain_request_before_deleting_the_dead_letter() -> None:
    dlq, poison, main = queues([envelope(), "not base64 at all!"])
    done = dlq.requeue("id-0")
    assert isinstance(done, Requeued) and done.dead_letter_id == "id-0"
    assert poison.log == ["send main", "delete poison"]
    (sent,) = main.messages
    assert json.loads(base64.b64decode(sent.content)) == REQUEST  # envelope stripped
    assert [m.id for m in poison.messages] == ["id-1"] and not poison.messages[0].hidden


def test_requeue_drops_a_send_at_whose_time_has_passed_and_keeps_one_still_ahead() -> None:
    from datetime import timedelta

    past = {**REQUEST, "sendAt": "2025-03-01T09:00:00+01:00"}
    ahead = {**REQUEST, "sendAt": (datetime.now(UTC) + timedelta(days=2)).isoformat()}
    dlq, _, main = queues([envelope(past), envelope(ahead)])
    dlq.requeue("id-0")
    dlq.requeue("id-1")
    first, second = (json.loads(base64.b64decode(m.content)) for m in main.messages)
    assert first == REQUEST  # sent now: the relay would refuse a sendAt before its enqueue time
    assert second == ahead


def test_requeue_of_a_message_that_holds_no_request_says_why_and_keeps_it() -> None:
    dlq, poison, main = queues(["not base64 at all!"])
    with pytest.raises(NotRequeueable, match="InvalidEncoding"):
        dlq.requeue("id-0")
    assert main.messages == [] and len(poison.messages) == 1 and not poison.messages[0].hidden


def test_requeue_all_moves_the_valid_ones_and_reports_the_rest() -> None:
    dlq, poison, main = queues([envelope(), "garbage!", encode(REQUEST), envelope()])
    results = dlq.requeue_all()
    assert sum(isinstance(r, Requeued) for r in results) == 3
    assert [type(r) for r in results].count(NotRequeueable) == 1
    assert len(main.messages) == 3 and [m.id for m in poison.messages] == ["id-1"]


def test_a_send_failure_leaves_the_dead_letter_in_place() -> None:
    dlq, poison, main = queues([envelope()])

    def broken(content: Any, **kwargs: Any) -> Any:
        raise ConnectionError("queue unreachable")

    main.send_message = broken  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        dlq.requeue("id-0")
    assert len(poison.messages) == 1 and not poison.messages[0].hidden


# --- any bytes in the poison queue: one bad letter never hides the others --------------------------

HOSTILE_TEXTS = [
    base64.b64encode(("[" * 100_000 + "]" * 100_000).encode()).decode(),  # nested past the parser
    base64.b64encode(b'{"request": {"subject": "' + b"\\ud800" + b'"}, "error": {"code": "X"}}').decode(),
    base64.b64encode(b'{"n": ' + b"9" * 5000 + b"}").decode(),  # a number Python refuses
    base64.b64encode(b"\xff\xfe not utf-8").decode(),
    base64.b64encode(
        json.dumps({"error": {"code": "X\x1b[2J"}, "request": {"from": "a\nCRITICAL forged"}}).encode()
    ).decode(),
    "\x00\x01 plain junk",
]


def test_every_hostile_letter_is_listed_shown_and_left_and_the_valid_one_requeued(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from shared.cli.dead_letters import _json, dead_letter_details, dead_letter_table

    dead, poison, _main = queues([*HOSTILE_TEXTS, envelope()])
    letters = dead.peek()
    assert len(letters) == len(HOSTILE_TEXTS) + 1
    assert [letter.id for letter in dead.scan()] == [letter.id for letter in letters]
    table = dead_letter_table(letters)
    print(table, _json([letter.to_json() for letter in letters]), *map(dead_letter_details, letters))
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\nCRITICAL" not in table  # no terminal escapes, no forged lines
    assert len(table.splitlines()) == len(letters) + 1
    results = dead.requeue_all()
    assert sum(1 for r in results if isinstance(r, Requeued)) == 1  # the valid envelope
    assert len(poison.messages) == len(HOSTILE_TEXTS)  # the others stay, each with its reason


def test_a_letter_that_cannot_be_parsed_at_all_is_shown_as_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.deadletters as module

    def broken(*_: Any, **__: Any) -> Any:
        raise MemoryError("boom")

    dead, _, _ = queues([envelope(), envelope()])
    monkeypatch.setattr(module, "parse_dead_letter", broken)
    letters = dead.peek()
    assert [letter.code for letter in letters] == [module.UNREADABLE] * 2


def test_a_stored_envelope_is_shown_and_requeued_whole() -> None:
    from shared.queues import QueueDeadLetters
    from tests.fakes import MemoryOverflow

    overflow = MemoryOverflow()
    poison = FakeQueue([], [], "poison")
    # A request that fitted on the queue, whose envelope (with a long reason) does not.
    big = {**REQUEST, "to": [f"user{i}@contoso.com" for i in range(400)], "subject": "x" * 38_000}
    assert len(encode(big)) <= 64 * 1024
    QueueDeadLetters(poison, overflow).put(  # type: ignore[arg-type]
        json.loads(base64.b64decode(envelope(big, "ServiceUnavailable", "Graph is down. " * 1000)))
    )
    assert len(poison.messages[0].content) <= 64 * 1024 and overflow.blobs
    main = FakeQueue([], [], "main")
    dead = DeadLetterQueue(poison, main, overflow)
    [letter] = dead.peek()
    assert letter.request == big and letter.code == "ServiceUnavailable"
    dead.requeue(letter.id)
    assert json.loads(base64.b64decode(main.messages[0].content)) == big


# --- what the overflow store holds is read back, requeued, and cleaned up --------------------------------


def test_a_retry_whose_request_is_stored_moved_raw_by_the_host_is_shown_and_requeued_whole() -> None:
    # The host poisons a re-queued retry after maxDequeueCount (say the blob store was unreachable five
    # times): its request is in the overflow store, not in the message.
    from tests.fakes import MemoryOverflow

    overflow = MemoryOverflow()
    ref = overflow.put(json.dumps(REQUEST).encode())
    moved = {"$retry": {"attempts": 2, "firstAttemptAt": "2026-01-01T00:00:00Z"}, "requestStored": ref}
    poison, main = FakeQueue([Message("id-0", encode(moved))], [], "poison"), FakeQueue([], [], "main")
    dead = DeadLetterQueue(poison, main, overflow)
    [letter] = dead.peek()
    assert letter.code == MAX_DEQUEUE and letter.request == REQUEST and letter.attempts == 2
    dead.requeue("id-0")
    assert json.loads(base64.b64decode(main.messages[0].content)) == REQUEST
    assert poison.messages == [] and overflow.blobs == {}  # the stored copy goes with its dead letter


def test_requeue_removes_the_stored_copy_of_an_envelope() -> None:
    from shared.queues import QueueDeadLetters
    from tests.fakes import MemoryOverflow

    overflow = MemoryOverflow()
    poison = FakeQueue([], [], "poison")
    long_error = permanent("ErrorInvalidRecipients", "x" * 70_000)  # the reason, not the request, is too large
    QueueDeadLetters(poison, overflow).put(dead_letter_envelope(REQUEST, long_error, attempts=1))  # type: ignore[arg-type]
    assert overflow.blobs
    dead = DeadLetterQueue(poison, FakeQueue([], [], "main"), overflow)
    dead.requeue(poison.messages[0].id)
    assert overflow.blobs == {}


def test_a_request_too_large_to_requeue_stays_with_its_reason_and_the_others_are_requeued() -> None:
    # Plain JSON (not base64) moved by the host: near 64 KiB as text, a third more once encoded for the queue.
    big = {**REQUEST, "body": {"contentType": "text", "content": "x" * 60_000}}

    class SizedQueue(FakeQueue):
        def send_message(self, content: Any, **kwargs: Any) -> Message:
            if len(content) > 64 * 1024:
                raise AssertionError("Storage refuses a message over 64 KiB (RequestBodyTooLarge)")
            return super().send_message(content, **kwargs)

    log: list[str] = []
    poison = FakeQueue([Message("id-0", json.dumps(big)), Message("id-1", envelope())], log, "poison")
    main = SizedQueue([], log, "main")
    results = DeadLetterQueue(poison, main).requeue_all()
    [refused] = [r for r in results if isinstance(r, NotRequeueable)]
    assert "64 KiB" in str(refused) and "id-0" in str(refused)
    assert [r.dead_letter_id for r in results if isinstance(r, Requeued)] == ["id-1"]
    assert [m.id for m in poison.messages] == ["id-0"]


# --- apps: a letter goes back to its own app's queue ----------------------------------------------


def app_envelope(app: str | None, request: Any = REQUEST) -> str:
    return encode(dead_letter_envelope(request, permanent("ErrorAccessDenied", "denied"), 1, now=WHEN, app=app))


def app_queues(texts: list[str]) -> tuple[DeadLetterQueue, FakeQueue, FakeQueue, dict[str, FakeQueue]]:
    log: list[str] = []
    poison = FakeQueue([Message(f"id-{i}", t) for i, t in enumerate(texts)], log, "poison")
    main = FakeQueue([], log, "main")
    opened: dict[str, FakeQueue] = {}

    def of_app(app: str) -> FakeQueue:
        return opened.setdefault(app, FakeQueue([], log, f"app {app}"))

    return DeadLetterQueue(poison, main, app_queue=of_app), poison, main, opened


def test_the_app_is_read_from_the_envelope_and_the_retry_wrapper_and_none_is_the_default_app() -> None:
    assert parse_dead_letter("m", app_envelope("billing")).app == "billing"
    assert parse_dead_letter("m", app_envelope(None)).app == "default"  # written before apps
    wrapper = {"$retry": {"attempts": 5, "app": "hr-portal"}, "request": REQUEST}
    assert parse_dead_letter("m", encode(wrapper)).app == "hr-portal"
    assert parse_dead_letter("m", encode({"$retry": {"attempts": 5}, "request": REQUEST})).app == "default"
    # A message the host moved from the outbox as it was: the outbox's app, whatever it says inside.
    assert parse_dead_letter("m", encode({**REQUEST})).app == "default"
    assert parse_dead_letter("m", app_envelope("billing")).to_json()["app"] == "billing"


def test_requeue_puts_each_letter_back_on_its_own_apps_queue() -> None:
    wrapper = {"$retry": {"attempts": 5, "app": "hr-portal"}, "request": REQUEST}
    dlq, poison, main, opened = app_queues([app_envelope("billing"), app_envelope(None), encode(wrapper)])
    results = dlq.requeue_all()
    assert [(r.dead_letter_id, r.app) for r in results if isinstance(r, Requeued)] == [
        ("id-0", "billing"),
        ("id-1", "default"),
        ("id-2", "hr-portal"),
    ]
    assert [json.loads(base64.b64decode(m.content)) for m in opened["billing"].messages] == [REQUEST]
    assert [json.loads(base64.b64decode(m.content)) for m in opened["hr-portal"].messages] == [REQUEST]
    assert len(main.messages) == 1 and poison.messages == []
    assert "default" not in opened  # the default app's letters go to the outbox itself


def test_a_letter_naming_no_valid_app_is_not_requeued_anywhere() -> None:
    for app in ("../other", "Billing", "retry", 7):
        text = encode({**dead_letter_envelope(REQUEST, permanent("X", "y"), 1, now=WHEN), "app": app})
        dlq, poison, main, opened = app_queues([text])
        with pytest.raises(NotRequeueable, match="names no app"):
            dlq.requeue("id-0")
        assert main.messages == [] and opened == {} and len(poison.messages) == 1


def test_without_the_apps_queues_an_apps_letter_stays_with_the_reason() -> None:
    dlq, poison, main = queues([app_envelope("billing")])
    with pytest.raises(NotRequeueable, match="app 'billing'"):
        dlq.requeue("id-0")
    assert main.messages == [] and len(poison.messages) == 1


def test_a_letter_of_an_app_whose_queue_is_gone_stays_with_the_reason() -> None:
    from azure.core.exceptions import ResourceNotFoundError

    dlq, poison, _main, opened = app_queues([app_envelope("gone"), app_envelope("billing")])

    class Missing(FakeQueue):
        def send_message(self, content: Any, **kwargs: Any) -> Message:
            error = ResourceNotFoundError("The specified queue does not exist.")
            error.error_code = "QueueNotFound"  # type: ignore[attr-defined]
            raise error

    opened["gone"] = Missing([], [], "gone")
    gone, billing = dlq.requeue_all()
    assert isinstance(gone, NotRequeueable) and "declare the app again" in str(gone)
    assert isinstance(billing, Requeued) and billing.app == "billing"
    assert [m.id for m in poison.messages] == ["id-0"]


def test_an_apps_own_poison_queue_makes_every_letter_that_apps_whatever_it_names() -> None:
    # The host moved these from billing's queue as billing wrote them: a forged "app" inside must not send the
    # request back on another app's queue.
    log: list[str] = []
    poison = FakeQueue([Message("m-0", app_envelope("bulk")), Message("m-1", encode(REQUEST))], log, "poison")
    opened: dict[str, FakeQueue] = {}

    def of_app(app: str) -> FakeQueue:
        return opened.setdefault(app, FakeQueue([], log, f"app {app}"))

    dlq = DeadLetterQueue(poison, FakeQueue([], log, "main"), app_queue=of_app, owner="billing")
    assert [letter.app for letter in dlq.peek()] == ["billing", "billing"]
    dlq.requeue_all()
    assert list(opened) == ["billing"] and len(opened["billing"].messages) == 2


def test_open_queues_finds_an_apps_poison_queue_beside_the_outbox_keeping_a_sas() -> None:
    from shared.deadletters import open_queues

    url = "https://acct.queue.core.windows.net/mail-outbox?sv=2024&sig=abc"
    dlq = open_queues("mail-outbox", queue_url=url, app="billing")
    assert dlq._poison.url.startswith("https://acct.queue.core.windows.net/mail-outbox-billing-poison")
    assert "sig=abc" in dlq._poison.url
    plain = open_queues("mail-outbox", queue_url=url)
    assert plain._poison.url.startswith("https://acct.queue.core.windows.net/mail-outbox-poison")
    conn = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
    assert open_queues("mail-outbox", connection_string=conn, app="billing")._poison.queue_name == (
        "mail-outbox-billing-poison"
    )


# --- the key: the name `mailrelay send` printed, `dead-letters list` shows and show/requeue take (issue 21) ---------


def keyed(request: Any = REQUEST, origin: str | None = "sent-1") -> str:
    failure = permanent("ErrorAccessDenied", "Access denied")
    return encode(dead_letter_envelope(request, failure, attempts=1, queue_message_id=origin, now=WHEN))


def test_a_dead_letters_key_is_the_request_id_else_the_message_that_carried_it_else_its_own_id() -> None:
    assert parse_dead_letter("p1", keyed({**REQUEST, "id": "inv-1"})).key == "inv-1"
    assert parse_dead_letter("p2", keyed()).key == "sent-1"  # the id `send` printed for a request without one
    wrapper = {"$retry": {"originalMessageId": "sent-2", "reason": "retrying"}, "request": REQUEST}
    assert parse_dead_letter("p3", encode(wrapper)).key == "sent-2"
    assert parse_dead_letter("p4", encode(REQUEST)).key == "p4"  # the host's copy: nothing of the first id left
    assert parse_dead_letter("p5", "not base64!").key == "p5"
    data = parse_dead_letter("p2", keyed()).to_json()
    assert data["key"] == "sent-1" and data["id"] == "p2"


def test_get_and_requeue_find_a_letter_by_its_key_and_say_when_a_key_names_two() -> None:
    dlq, poison, main = queues([keyed(origin="sent-1"), keyed({**REQUEST, "id": "inv-1"}, "sent-2"), keyed(origin="x")])
    assert dlq.get("sent-1").id == "id-0" and dlq.get("inv-1").id == "id-1" and dlq.get("id-2").key == "x"
    done = dlq.requeue("sent-1")
    assert (done.dead_letter_id, done.key, done.new_key) == ("id-0", "sent-1", main.messages[0].id)
    assert dlq.requeue("inv-1").new_key == "inv-1"  # its id stays its key
    twice = [keyed({**REQUEST, "id": "dup"}, "a"), keyed({**REQUEST, "id": "dup", "subject": "other"}, "b")]
    dlq, poison, main = queues(twice)
    with pytest.raises(DeadLetterNotFound, match=r"names 2 dead letters.*id-0, id-1"):
        dlq.get("dup")
    with pytest.raises(DeadLetterNotFound, match="names 2 dead letters"):
        dlq.requeue("dup")
    assert main.messages == [] and len(poison.messages) == 2
    assert dlq.requeue("id-1").dead_letter_id == "id-1"  # its own id tells it apart
