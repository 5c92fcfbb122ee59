"""Graph's large-message flow: drafts, their attachments, upload sessions, and sending a draft.

Sources (Microsoft Learn):
- https://learn.microsoft.com/graph/outlook-large-attachments: attachments under 3 MB are POSTed to the item;
  3 MB to 150 MB go through an upload session whose `uploadUrl` is pre-authenticated (no Authorization header on
  the PUTs), in byte ranges ("keep each byte range less than 4 MB", uploaded in order), `Content-Range: bytes
  {start}-{end}/{total}`; a middle PUT answers 200 with `nextExpectedRanges: ["{start}"]` (Outlook gives a single
  start, not ranges: the uploadSession resource's doc), the last one 201 Created with a Location header; creating
  a session for a message needs Mail.ReadWrite.
- https://learn.microsoft.com/graph/api/attachment-createuploadsession: the session answers 201 with uploadUrl,
  expirationDateTime and nextExpectedRanges ["0-"]; for files between 3 MB and 150 MB. A smaller file is refused
  (microsoft-graph-docs-contrib#682: "I cannot create an upload session for a 0.6MB file"); the emulator answers
  Graph's ErrorAttachmentSizeShouldNotBeLessThanMinimumSize, as SDK users report it.
- https://learn.microsoft.com/graph/api/user-post-messages (201 and the draft), message-post-attachments (201),
  message-send (202, the draft moves to Sent Items), message-delete (204).
- Exchange's maximum message size (35 MB by default): over it Graph answers 400 ErrorMessageSizeExceeded, "The
  message exceeds the maximum supported size." (microsoft-graph-docs#15579 during an upload session;
  motze92/office365-mail#39 on POST attachments, with ", Cannot save changes made to an item to store."). The
  emulator measures a message as Exchange's MIME would, attachments base64-encoded (a third larger).

A session's expiry is fixed when it is created: for Outlook attachments "this expiration date/time remains the same
as returned by the initial uploadSession" (outlook-large-attachments, step 2), although the generic uploadSession
resource says each fragment extends it; the Outlook page is the specific one. An expired session answers 404 to
further PUTs: assumed, the docs do not show that answer. Also assumed (marked where coded): the 401 to a PUT that
carries a Graph token, the refusals of a bad range (400, 413, 416), of a bad AttachmentItem, the size error's text,
and that a draft in transport (transport.py) cannot be changed or sent again.

Uploads count against Graph's limit of 150 MB per 5 minutes per app and mailbox (throttling.py): each range PUT,
against the app and mailbox that created its session.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from devstack.emulator.common import _json_response, _Request, _Response, _retry_after_headers, _utcnow
from devstack.emulator.throttling import Throttling

if TYPE_CHECKING:
    from devstack.emulator.state import _Mailbox

UPLOAD_MIN_BYTES = 3 * 1024 * 1024
UPLOAD_MAX_BYTES = 150 * 1024 * 1024
RANGE_MAX_BYTES = 4 * 1024 * 1024  # "4 MB" per PUT (outlook-large-attachments, step 2; see _range_problem)
DEFAULT_MAX_MESSAGE_BYTES = 35 * 1024 * 1024  # Exchange Online's default maximum message size
# Assumed: the text is as users report it (the module's docstring names the reports); no Microsoft page gives it.
SIZE_EXCEEDED = "The message exceeds the maximum supported size., Cannot save changes made to an item to store."


def encoded_size(size: int) -> int:
    """An attachment's size once base64-encoded for mail."""
    return 4 * -(-size // 3)


@dataclass
class _Draft:
    id: str
    mailbox: str
    message: dict[str, Any]  # the posted message, without attachment bytes
    attachments: list[dict[str, Any]] = field(default_factory=list)  # name, contentType, size, sha256, ...
    in_transport: bool = False  # sent, in Drafts until Exchange's transport is done with it (transport.py)
    mime: bytes | None = None  # a draft created from MIME: the bytes as received

    def mime_size(self) -> int:
        if self.mime is not None:
            return len(self.mime) + sum(encoded_size(a["size"]) for a in self.attachments)
        body = (self.message.get("body") or {}).get("content") or ""
        return len(str(body).encode("utf-8")) + sum(encoded_size(a["size"]) for a in self.attachments)


@dataclass
class _UploadSession:
    id: str
    token: str
    draft_id: str
    item: dict[str, Any]
    app_id: str  # the app and mailbox whose upload limit its ranges count against (throttling.py)
    mailbox: str
    expires: float  # time.monotonic()
    received: bytearray = field(default_factory=bytearray)
    expiration: str = ""  # expirationDateTime as first answered (drafts.py's docstring: it never moves)


def attachment_summary(attachment: dict[str, Any], data: bytes) -> dict[str, Any]:
    """What the outbox shows of an attachment: never its bytes, always its size and hash."""
    return {
        "name": attachment.get("name"),
        "contentType": attachment.get("contentType"),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "isInline": bool(attachment.get("isInline", False)),
        "contentId": attachment.get("contentId"),
    }


class Drafts(Throttling):
    """Drafts per mailbox and their upload sessions (`TenantState._drafts`, `_upload_sessions`). A part of
    `GraphMail` (graph.py), which authorises each call and turns a sent draft into an accepted message; an upload
    session's ranges count against Graph's upload limit (throttling.py)."""

    def drafts_view(self) -> list[dict[str, Any]]:
        """Every draft (admin API `GET drafts`): id, mailbox, subject, mark, attachments."""
        with self._lock:
            return [
                {
                    "id": d.id,
                    "mailbox": d.mailbox,
                    "subject": d.message.get("subject"),
                    "singleValueExtendedProperties": d.message.get("singleValueExtendedProperties") or [],
                    "attachments": list(d.attachments),
                    "uploadSessions": sum(1 for s in self._upload_sessions.values() if s.draft_id == d.id),
                    "inTransport": d.in_transport,
                }
                for d in self._drafts.values()
            ]

    def draft_items(self, mailbox: str) -> list[dict[str, Any]]:
        """The mailbox's Drafts folder as a message list (for the extended-property $filter).

        `isDraft`: the message resource's "Indicates whether the message is a draft. A message is a draft if it
        hasn't been sent yet." (https://learn.microsoft.com/graph/api/resources/message; microsoft-graph-docs-contrib,
        api-reference/v1.0/resources/message.md); EWS's IsDraft says the same ("A value of false indicates that a
        message has been sent", exchange/client-developer/web-service-reference/isdraft). True from POST /messages
        until the send. Assumed, as no page found states the isDraft of a message in transport: false once it is
        sent (by sendMail or a draft's send) while it waits in Drafts for transport (transport.py), and true again
        if its transport fails and it stays in Drafts (transport.py's docstring)."""
        with self._lock:
            return [
                {
                    "id": d.id,
                    "createdDateTime": None,
                    "sentDateTime": None,
                    "subject": d.message.get("subject"),
                    "isDraft": not d.in_transport,
                    "singleValueExtendedProperties": d.message.get("singleValueExtendedProperties") or [],
                }
                for d in self._drafts.values()
                if d.mailbox == mailbox.lower()
            ]

    # --- The calls (authorised by graph.py) ----------------------------------------------------------------

    def create_draft(
        self, mailbox: _Mailbox, message: dict[str, Any], mime: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        data_attachments = message.pop("attachments", None) or []
        draft = _Draft(id="AAMkDraft" + uuid.uuid4().hex, mailbox=mailbox.address.lower(), message=message, mime=mime)
        for attachment in data_attachments:
            raw = base64.b64decode(attachment.get("contentBytes") or "")
            draft.attachments.append(attachment_summary(attachment, raw))
        if draft.mime_size() > self.max_message_bytes:
            return 400, _error("ErrorMessageSizeExceeded", SIZE_EXCEEDED)
        with self._lock:
            self._drafts[draft.id] = draft
        return 201, {**message, "id": draft.id, "isDraft": True, "hasAttachments": bool(draft.attachments)}

    def mark_draft(
        self, mailbox: _Mailbox, draft_id: str, properties: list[dict[str, Any]]
    ) -> tuple[int, dict[str, Any]]:
        """PATCH a draft's single-value extended properties: each one set by its id; 200 and the message
        (https://learn.microsoft.com/graph/api/singlevaluelegacyextendedproperty-post-singlevalueextendedproperties)."""
        draft = self._draft(mailbox, draft_id)
        if draft is None:
            return 404, _not_found()
        with self._lock:
            current = {p.get("id"): p for p in draft.message.get("singleValueExtendedProperties") or []}
            current.update({p.get("id"): dict(p) for p in properties})
            draft.message["singleValueExtendedProperties"] = list(current.values())
        shown = {k: v for k, v in draft.message.items() if k != "singleValueExtendedProperties"}
        return 200, {**shown, "id": draft.id, "isDraft": True}

    def _draft(self, mailbox: _Mailbox, draft_id: str) -> _Draft | None:
        """The mailbox's draft, if it can still be changed: one in transport cannot (assumed: transport.py)."""
        with self._lock:
            draft: _Draft | None = self._drafts.get(draft_id)
        if draft is None or draft.in_transport or draft.mailbox != mailbox.address.lower():
            return None
        return draft

    def add_attachment(
        self, mailbox: _Mailbox, draft_id: str, attachment: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        draft = self._draft(mailbox, draft_id)
        if draft is None:
            return 404, _not_found()
        raw = base64.b64decode(attachment.get("contentBytes") or "")
        summary = attachment_summary(attachment, raw)
        with self._lock:
            if draft.mime_size() + encoded_size(len(raw)) > self.max_message_bytes:
                return 400, _error("ErrorMessageSizeExceeded", SIZE_EXCEEDED)
            draft.attachments.append(summary)
        return 201, {"@odata.type": "#microsoft.graph.fileAttachment", "id": "AAMkAtt" + uuid.uuid4().hex, **summary}

    def create_upload_session(
        self, mailbox: _Mailbox, draft_id: str, body: dict[str, Any], base_url: str, app_id: str = ""
    ) -> tuple[int, dict[str, Any]]:
        draft = self._draft(mailbox, draft_id)
        if draft is None:
            return 404, _not_found()
        item = body.get("AttachmentItem")
        # Assumed: the codes and texts of these refusals (the pages name the parameters and the 3 MB to 150 MB
        # bounds, not Graph's answers); the minimum's code is the one SDK users report (the module's docstring).
        if not isinstance(item, dict) or item.get("attachmentType") != "file" or not item.get("name"):
            return 400, _error("ErrorInvalidRequest", "The AttachmentItem parameter is missing or invalid.")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return 400, _error("ErrorInvalidRequest", "The attachment size is missing or invalid.")
        if size < UPLOAD_MIN_BYTES:
            message = f"The attachment size {size} should not be less than minimum size {UPLOAD_MIN_BYTES}."
            return 400, _error("ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", message)
        if size > UPLOAD_MAX_BYTES:
            message = f"The attachment size {size} exceeds the maximum size {UPLOAD_MAX_BYTES}."
            return 400, _error("ErrorAttachmentSizeExceeded", message)
        if draft.mime_size() + encoded_size(size) > self.max_message_bytes:
            return 400, _error("ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
        session = _UploadSession(
            id="AAMkSession" + uuid.uuid4().hex,
            token=secrets.token_urlsafe(24),
            draft_id=draft.id,
            item=dict(item),
            app_id=app_id,
            mailbox=mailbox.address,
            expires=time.monotonic() + self.upload_session_seconds,
        )
        with self._lock:
            self._upload_sessions[session.id] = session
        url = f"{base_url}/api/v2.0/AttachmentSessions/{session.id}?authtoken={session.token}"
        return 201, {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": url,
            "expirationDateTime": self._expiry_text(session),
            "nextExpectedRanges": ["0-"],
        }

    def _expiry_text(self, session: _UploadSession) -> str:
        """The expirationDateTime Graph gave when the session was created: the same in every answer."""
        if not session.expiration:
            left = max(0.0, session.expires - time.monotonic())
            session.expiration = (_utcnow() + timedelta(seconds=left)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return session.expiration

    def upload_put(self, request: _Request, session_id: str) -> _Response:
        """PUT (or DELETE) on an upload session's URL: no bearer token, the URL's authtoken authorises."""
        with self._lock:
            session = self._upload_sessions.get(session_id)
            if session is not None and time.monotonic() > session.expires:
                del self._upload_sessions[session_id]  # expired: gone
                session = None
        if session is None or not secrets.compare_digest(request.param("authtoken") or "", session.token):
            # Assumed: the docs show no answer for an expired or unknown session; a 404 ErrorItemNotFound stands in.
            return _json_response(404, _error("ErrorItemNotFound", "The upload session was not found or has expired."))
        if request.method == "DELETE":
            with self._lock:
                self._upload_sessions.pop(session_id, None)
            return _Response(204)
        if self.graph_latency > 0 and request.method == "PUT":
            time.sleep(self.graph_latency)  # a range takes time to travel: a host can die in the middle of one
        if request.header("Authorization"):
            # The doc: "Do not specify an Authorization request header"; the PUT goes to another service
            # (outlook.office.com). Assumed: that it refuses a Graph token with this 401 (no page shows the answer).
            return _json_response(401, _error("InvalidAudience", "The audience claim value is invalid."))
        if request.method == "PUT":
            # Graph's upload limit per app and mailbox (throttling.py): a range is a PUT's body.
            throttled = self._throttle_upload(session.app_id, session.mailbox, len(request.body))
            if throttled is not None:
                status, code, message, retry_after = throttled
                return _json_response(status, _error(code, message), _retry_after_headers(retry_after))
        problem = _range_problem(request, session)
        if problem is not None:
            status, code, message = problem
            body = _error(code, message)
            body["nextExpectedRanges"] = [str(len(session.received))]
            return _json_response(status, body)
        with self._lock:
            session.received += request.body  # the expiry stays as created (the module's docstring)
            total = int(session.item["size"])
            if len(session.received) < total:
                return _json_response(
                    200,
                    {
                        "expirationDateTime": self._expiry_text(session),
                        "nextExpectedRanges": [str(len(session.received))],
                    },
                )
            del self._upload_sessions[session_id]
            draft = self._drafts.get(session.draft_id)
            if draft is None:
                return _json_response(404, _not_found())
            summary = attachment_summary(session.item, bytes(session.received))
            draft.attachments.append(summary)
        attachment_id = "AAMkAtt" + uuid.uuid4().hex
        location = f"https://outlook.office.com/api/v2.0/Users('{draft.mailbox}')/Messages('{draft.id}')/Attachments('{attachment_id}')"
        return _Response(201, b"", [("Location", location)])

    def take_draft_for_sending(self, mailbox: _Mailbox, draft_id: str) -> tuple[int, dict[str, Any]] | _Draft:
        """The draft to send, which stays in Drafts until its transport is done (transport.py); or Graph's refusal
        (unknown draft, or one already sent, or over the maximum size)."""
        draft = self._draft(mailbox, draft_id)
        if draft is None:
            return 404, _not_found()
        if draft.mime_size() > self.max_message_bytes:
            return 400, _error("ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")
        return draft

    def delete_draft(self, mailbox: _Mailbox, draft_id: str) -> int:
        with self._lock:
            draft = self._drafts.get(draft_id)
            if draft is None or draft.mailbox != mailbox.address.lower():
                return 404
            del self._drafts[draft_id]
            for sid in [s.id for s in self._upload_sessions.values() if s.draft_id == draft_id]:
                del self._upload_sessions[sid]
        return 204

    def configure_drafts(self, entry: dict[str, Any]) -> None:
        """Admin knobs: {"maxMessageSizeBytes"?, "uploadSessionSeconds"?}."""
        with self._lock:
            if "maxMessageSizeBytes" in entry:
                value = entry["maxMessageSizeBytes"]
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError("maxMessageSizeBytes must be a positive whole number of bytes")
                self.max_message_bytes = value
            if "uploadSessionSeconds" in entry:
                seconds = entry["uploadSessionSeconds"]
                if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
                    raise ValueError("uploadSessionSeconds must be a positive number of seconds")
                self.upload_session_seconds = float(seconds)


def _range_problem(request: _Request, session: _UploadSession) -> tuple[int, str, str] | None:
    """What the upload service refuses in a PUT. The rules are the Outlook page's (Content-Range "bytes
    {start}-{end}/{total}", Content-Length the bytes sent, ranges in order, each at most 4 MB); assumed, as no page
    shows the refusals: every status, code and text here (400 InvalidRange, 413 for a range over 4 MB, 416 for one
    out of order)."""
    header = request.header("Content-Range") or ""
    total = int(session.item["size"])
    try:
        unit, _, spec = header.partition(" ")
        span, _, whole = spec.partition("/")
        first, _, last = span.partition("-")
        start, end, declared = int(first), int(last), int(whole)
    except ValueError:
        return 400, "InvalidRange", f"The Content-Range header {header!r} is not 'bytes start-end/total'."
    if unit != "bytes" or declared != total:
        return 400, "InvalidRange", f"The Content-Range total {whole} differs from the session's size {total}."
    if end - start + 1 != len(request.body) or end < start or end >= total:
        return 400, "InvalidRange", "The Content-Range does not match the bytes sent."
    if len(request.body) > RANGE_MAX_BYTES:
        # outlook-large-attachments, step 2: "keep each byte range less than 4 MB" and "keep the upper limit of the
        # number of bytes for each PUT operation to 4 MB", both "for better performance": the page asks, it does not
        # say Outlook refuses more. Assumed: a refusal, past 4 MiB (the looser reading of "4 MB", so that a sender
        # following either reading is accepted); a sender should stay under 4,000,000 bytes.
        return 413, "RequestEntityTooLarge", "A range is at most 4 MB."
    if start != len(session.received):
        # "You must upload bytes in a file in order" (outlook-large-attachments, step 2).
        return 416, "InvalidRange", f"The range starts at {start}; the next expected byte is {len(session.received)}."
    return None


# --- MIME (https://learn.microsoft.com/graph/api/user-sendmail, user-post-messages, outlook-send-mime-message) ---

# user-sendmail and user-post-messages: a body that is not base64 answers 400 ErrorMimeContentInvalidBase64String,
# "Invalid base64 string for MIME content."
MIME_BAD_BASE64 = ("ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
# outlook-send-mime-message, "Error conditions and messages": malformed, missing or empty MIME answers 400 with this
# text. Assumed: the code (the page gives the status and the text only).
MIME_MALFORMED = (
    "ErrorMimeContentInvalid",
    "MIME content does not contain all required information, malformed formatting, or empty.",
)


def read_mime(body: bytes) -> tuple[tuple[str, str] | None, bytes, dict[str, Any]]:
    """A MIME body as Graph reads it: (problem, the MIME's bytes, the message Graph makes of it). The body is the
    MIME base64-encoded (line breaks allowed, as Microsoft's own examples wrap it at 76); the recipients come from the
    To, CC and BCC headers ("Request body" of user-post-messages), the sender from From."""
    import binascii
    import email
    from email import policy
    from email.utils import getaddresses

    text = b"".join(body.split())
    try:
        mime = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return MIME_BAD_BASE64, b"", {}
    head, sep, _ = mime.replace(b"\r\n", b"\n").partition(b"\n\n")
    if not mime.strip() or not sep or b":" not in head.split(b"\n", 1)[0]:
        return MIME_MALFORMED, mime, {}
    try:
        parsed = email.message_from_bytes(mime, policy=policy.compat32)
    except Exception:
        return MIME_MALFORMED, mime, {}

    def recipients(name: str) -> list[dict[str, Any]]:
        return [
            {"emailAddress": {"address": a, **({"name": n} if n else {})}}
            for n, a in getaddresses(parsed.get_all(name) or [])
            if a
        ]

    message: dict[str, Any] = {
        "subject": str(parsed.get("Subject") or ""),
        "toRecipients": recipients("To"),
        "ccRecipients": recipients("Cc"),
        "bccRecipients": recipients("Bcc"),
    }
    senders = recipients("From")
    if senders:
        message["from"] = senders[0]
    return None, mime, message


def without_bcc(mime: bytes) -> bytes:
    """The MIME as the recipients receive it: the top-level Bcc header (and its folded lines) is not transmitted."""
    crlf = mime.find(b"\r\n\r\n")
    at, newline = (crlf, b"\r\n") if crlf != -1 else (mime.find(b"\n\n"), b"\n")
    if at == -1:
        return mime
    head, rest = mime[: at + len(newline)], mime[at + len(newline) :]  # rest starts with the blank line
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):  # a folded line belongs to the header above it
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(b"bcc:")
        if not dropping:
            kept.append(line)
    return b"".join(kept) + rest


def mime_summary(mime: bytes) -> dict[str, Any]:
    """What the outbox keeps of a MIME message: as received and as delivered, each with its size and SHA-256."""
    delivered = without_bcc(mime)
    return {
        "size": len(mime),
        "sha256": hashlib.sha256(mime).hexdigest(),
        "content": base64.b64encode(mime).decode("ascii"),
        "delivered": {"size": len(delivered), "sha256": hashlib.sha256(delivered).hexdigest()},
    }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _not_found() -> dict[str, Any]:
    return _error("ErrorItemNotFound", "The specified object was not found in the store.")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        return None
