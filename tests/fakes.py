"""In-memory fakes of the relay's outside services, for unit tests that do no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.graph import GraphReply


@dataclass
class FakeSecret:
    """A Key Vault secret: `value` is what the vault holds now; reads are counted."""

    value: str
    reads: int = 0
    _cached: str | None = None

    def get(self) -> str:
        if self._cached is None:
            return self.refresh()
        return self._cached

    def refresh(self) -> str:
        self.reads += 1
        self._cached = self.value
        return self._cached


@dataclass
class ScriptedTokens:
    """A token source that answers `token_value`, or raises `failure`; `calls` records each ask's `fresh`."""

    token_value: str = "header.payload.signature"
    failure: Exception | None = None
    calls: list[bool] = field(default_factory=list)

    def token(self, *, fresh: bool = False) -> str:
        self.calls.append(fresh)
        if self.failure:
            raise self.failure
        return self.token_value

    def renew_credential(self) -> None:
        """Nothing stored to read again."""


@dataclass
class FakeTokens:
    """Tokens numbered by issue; `renewed_secrets` counts secret re-reads."""

    issued: int = 0
    renewed_secrets: int = 0
    failure: Exception | None = None
    cached: str | None = None

    def token(self, *, fresh: bool = False) -> str:
        if self.failure:
            raise self.failure
        if self.cached is None or fresh:
            self.issued += 1
            self.cached = f"token-{self.issued}"
        return self.cached

    def renew_credential(self) -> None:
        self.renewed_secrets += 1


@dataclass
class FakeGraph:
    """Answers sendMail from a script of replies (default 202); records every call.

    A scripted reply may be `accepted(reply_or_exception)`: the message goes out (into Sent Items) and the
    relay gets that answer anyway, as when Graph accepts and then times out or answers 504. Sent Items hold
    the mark of each accepted message saved there; `find_sent` answers from them, or with `lookup_replies`.
    """

    replies: list[GraphReply | Exception | Accepted] = field(default_factory=list)
    calls: list[tuple[str, Mapping[str, Any], str]] = field(default_factory=list)
    sent_items: dict[str, list[str]] = field(default_factory=dict)  # sender -> marks
    lookup_replies: list[GraphReply | Exception] = field(default_factory=list)
    lookups: int = 0

    def send_mail(self, sender: str, body: Mapping[str, Any], token: str) -> GraphReply:
        self.calls.append((sender, body, token))
        accepted = GraphReply(status=202, error=None, retry_after=None, request_id="req-1")
        reply: GraphReply | Exception | Accepted = self.replies.pop(0) if self.replies else accepted
        if isinstance(reply, Accepted):
            self._file(sender, body)
            reply = reply.then
        elif isinstance(reply, GraphReply) and reply.status == 202:
            self._file(sender, body)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _file(self, sender: str, body: Mapping[str, Any]) -> None:
        if body.get("saveToSentItems", True) is False:
            return
        for prop in body["message"].get("singleValueExtendedProperties", []):
            self.sent_items.setdefault(sender, []).append(prop["value"])

    def find_sent(self, sender: str, mark: str, token: str) -> GraphReply:
        self.lookups += 1
        if self.lookup_replies:
            reply = self.lookup_replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply
        found = [{"id": f"msg-{i}"} for i, m in enumerate(self.sent_items.get(sender, [])) if m == mark]
        return GraphReply(status=200, error=None, retry_after=None, request_id="req-l", value={"value": found[:1]})

    def copies(self, mark: str) -> int:
        """How many sendMail calls carried `mark` (the witness for duplicates)."""
        return sum(
            1
            for _, body, _ in self.calls
            for prop in body["message"].get("singleValueExtendedProperties", [])
            if prop["value"] == mark
        )


@dataclass(frozen=True)
class Accepted:
    """A scripted sendMail answer given *after* Graph accepted the message."""

    then: GraphReply | Exception


def graph_error(status: int, code: str, message: str = "", retry_after: str | None = None) -> GraphReply:
    return GraphReply(
        status=status, error={"error": {"code": code, "message": message}}, retry_after=retry_after, request_id=None
    )


@dataclass
class FakeDeadLetters:
    envelopes: list[dict[str, Any]] = field(default_factory=list)

    def put(self, envelope: dict[str, Any]) -> None:
        self.envelopes.append(envelope)


@dataclass
class FakeRequeue:
    """The main queue, for re-queued requests: (payload, delay in seconds) in order."""

    puts: list[tuple[dict[str, Any], int]] = field(default_factory=list)

    def put(self, payload: dict[str, Any], delay_seconds: int) -> None:
        self.puts.append((payload, delay_seconds))


@dataclass
class MemoryOverflow:
    """The overflow store in a dict (shared/queues.py's Overflow), checking references as the blob one does."""

    blobs: dict[str, bytes] = field(default_factory=dict)

    def put(self, data: bytes) -> dict[str, Any]:
        import uuid

        from shared.queues import OVERFLOW_CONTAINER, reference

        name = f"{uuid.uuid4()}.json"
        self.blobs[name] = data
        return reference(OVERFLOW_CONTAINER, name, data)

    def get(self, ref: Mapping[str, Any]) -> bytes:
        from shared.queues import StoredPayloadError, check_reference, check_stored

        name = check_reference(ref)["blob"]
        if name not in self.blobs:
            raise StoredPayloadError(f"the stored payload {name!r} is gone")
        return check_stored(ref, self.blobs[name])

    def delete(self, ref: Mapping[str, Any]) -> None:
        from shared.queues import check_reference

        self.blobs.pop(check_reference(ref)["blob"], None)


@dataclass
class FakeDrafts(FakeGraph):
    """FakeGraph with Graph's large-message flow: drafts, attachments, upload sessions (ranges of at most 4 MB,
    answered with nextExpectedRanges) and sending a draft. `faults` maps a step ("create_draft", "add_attachment",
    "create_upload_session", "upload_range", "send_draft", "find_drafts", "delete_message") to the replies or
    exceptions its next calls get instead. `rewind` makes the next range answer ask again from that byte."""

    drafts: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent_drafts: list[dict[str, Any]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    faults: dict[str, list[GraphReply | Exception]] = field(default_factory=dict)
    rewind: list[int] = field(default_factory=list)
    puts: list[tuple[int, int]] = field(default_factory=list)
    _sessions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _fault(self, step: str) -> GraphReply | None:
        self.steps.append(step)
        queued = self.faults.get(step)
        if queued:
            reply = queued.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply
        return None

    def create_draft(self, sender: str, message: Mapping[str, Any], token: str) -> GraphReply:
        fault = self._fault("create_draft")
        if fault:
            return fault
        draft_id = f"draft-{len(self.drafts) + len(self.sent_drafts) + 1}"
        self.drafts[draft_id] = {"sender": sender, "message": dict(message), "attachments": []}
        return GraphReply(201, None, None, "req-d", value={"id": draft_id})

    def add_attachment(self, sender: str, draft_id: str, attachment: Mapping[str, Any], token: str) -> GraphReply:
        import base64
        import hashlib

        fault = self._fault("add_attachment")
        if fault:
            return fault
        data = base64.b64decode(attachment["contentBytes"])
        summary = {"name": attachment["name"], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.drafts[draft_id]["attachments"].append(summary)
        return GraphReply(201, None, None, "req-a", value={"id": "att"})

    def create_upload_session(self, sender: str, draft_id: str, item: Mapping[str, Any], token: str) -> GraphReply:
        fault = self._fault("create_upload_session")
        if fault:
            return fault
        url = f"https://outlook.example/upload/{len(self._sessions)}"
        self._sessions[url] = {"draft": draft_id, "item": dict(item), "data": bytearray()}
        return GraphReply(201, None, None, "req-u", value={"uploadUrl": url, "nextExpectedRanges": ["0-"]})

    def upload_range(self, url: str, data: bytes, start: int, total: int) -> GraphReply:
        fault = self._fault("upload_range")
        if fault:
            return fault
        import hashlib

        session = self._sessions[url]
        received: bytearray = session["data"]
        assert len(data) < 4_000_000 and start == len(received) and total == session["item"]["size"]
        self.puts.append((start, len(data)))
        received += data
        if self.rewind:  # the service lost bytes: it asks for them again from an earlier byte
            del received[self.rewind.pop(0) :]
        if len(received) >= total:
            item = session["item"]
            summary = {"name": item["name"], "size": total, "sha256": hashlib.sha256(received).hexdigest()}
            self.drafts[session["draft"]]["attachments"].append(summary)
            return GraphReply(201, None, None, "req-p")
        return GraphReply(200, None, None, "req-p", value={"nextExpectedRanges": [str(len(received))]})

    def send_draft(self, sender: str, draft_id: str, token: str) -> GraphReply:
        fault = self._fault("send_draft")
        if fault:
            return fault
        draft = self.drafts.pop(draft_id)
        self.sent_drafts.append(draft)
        for prop in draft["message"].get("singleValueExtendedProperties", []):
            self.sent_items.setdefault(sender, []).append(prop["value"])
        return GraphReply(202, None, None, "req-s")

    def delete_message(self, sender: str, message_id: str, token: str) -> GraphReply:
        fault = self._fault("delete_message")
        if fault:
            return fault
        if self.drafts.pop(message_id, None) is None:
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return GraphReply(204, None, None, "req-x")

    def find_drafts(self, sender: str, mark: str, token: str) -> GraphReply:
        fault = self._fault("find_drafts")
        if fault:
            return fault
        found = [
            {"id": draft_id}
            for draft_id, draft in self.drafts.items()
            if any(p["value"] == mark for p in draft["message"].get("singleValueExtendedProperties", []))
        ]
        return GraphReply(200, None, None, "req-f", value={"value": found})
