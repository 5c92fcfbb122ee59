"""One send request in, one outcome out: validate, allow-list, token, sendMail (or a draft), classify.

Graph's size rules (https://learn.microsoft.com/graph/outlook-large-attachments): a message whose attachments
and body come to under 3 MB goes in one sendMail; a larger one goes through the large-message flow: create a
draft, add the small attachments, upload each large one through an upload session in ranges of at most 4 MB
(honouring `nextExpectedRanges`), then send the draft. A message over MAX_MESSAGE_SIZE_MB is refused before
anything is uploaded. The draft carries the request's mark, so a draft left by a crash is found and deleted
before the next try creates its own, and a sent one is found in Sent Items: a crash never sends two copies. A sent
one still in Exchange's transport waits in Drafts with isDraft false: it is left alone, and the try's outcome stays
unknown until Sent Items shows it (`_discard_leftovers`).

Every Graph call that can send or change the mailbox (sendMail; the draft, each attachment, each uploaded range, the
send, a leftover draft's deletion) first calls the `fence` the caller passed (shared/delivery.py proves there that
it still holds the request's claim). The fence raises ClaimLost when another worker holds the request now: the call
is not made. Reads (the Sent Items and Drafts lookups) are not fenced: they change nothing.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from shared.apps import DEFAULT_APP
from shared.graph import GraphReply, MailSender, build_send_mail_body
from shared.outcomes import (
    LARGE_MESSAGE_ACCESS_HINTS,
    Failure,
    Outcome,
    Permanent,
    RelayFailure,
    Sent,
    Transient,
    as_received,
    classify_http,
    permanent,
    transient,
)
from shared.tokens import TokenSource

if TYPE_CHECKING:
    from datetime import datetime

    from shared.apps import App
    from shared.contract import Attachment, Body, Mime, MimeRequest, SendRequest
    from shared.graph import DraftSender
    from shared.payloads import PayloadError, PayloadStore, Reader

log = logging.getLogger(f"mailrelay.{__name__}")  # under the logger the worker's distro exports (shared/telemetry.py)

# One sendMail carries the body and the attachments base64-encoded in a request Graph caps at 4 MB: 3,000,000
# bytes become 4,000,000 characters, which leaves room for the rest of the JSON.
SEND_MAIL_MAX_BYTES: Final = 3_000_000
# An attachment of 3 MB or more needs an upload session; a smaller one is POSTed to the draft whole
# (https://learn.microsoft.com/graph/api/attachment-createuploadsession: "between 3 MB and 150 MB").
UPLOAD_SESSION_MIN_BYTES: Final = 3 * 1024 * 1024
MB: Final = 1024 * 1024


def mail_size(req: SendRequest | MimeRequest) -> int:
    """The message's size as Exchange measures it, near enough: the body, and the attachments base64-encoded
    for mail, which makes them a third larger (Exchange Online limits, "Message size limits"); a MIME message's
    own length (its parts are encoded already)."""
    from shared.contract import MimeRequest

    if isinstance(req, MimeRequest):
        return req.mime.byte_size
    body = req.body.size if req.body.size is not None else len((req.body.content or "").encode("utf-8"))
    return body + sum(4 * -(-a.byte_size // 3) for a in req.attachments)


def raw_size(req: SendRequest) -> int:
    """The body's and the attachments' bytes: what decides between sendMail and the large-message flow."""
    body = req.body.size if req.body.size is not None else len((req.body.content or "").encode("utf-8"))
    return body + sum(a.byte_size for a in req.attachments)


Fence = Callable[[], None]


class ClaimLost(Exception):
    """Raised by a fence: another worker took the request over (its claim ran out while this one stalled). The Graph
    call the fence guarded was not made; nothing of this try was sent."""


@dataclass(frozen=True)
class Attempt:
    """What the sender knows of a request after trying it: the outcome, and the request as received."""

    outcome: Outcome
    request: Any  # the JSON object if the text parsed, else the raw text: kept whole for the dead letter
    sender: str | None = None
    request_id: str | None = None  # Graph's request-id of the sendMail call, if it answered
    client_request_id: str | None = None  # the relay's client-request-id of that call
    graph_ms: float | None = None  # the Graph calls' time, answered ones summed (a large message makes several)


@dataclass(frozen=True)
class Lookup:
    """What the sender's Sent Items say about a mark: found, not there, or no answer (`failure` says why)."""

    found: bool
    failure: Failure | None = None

    @property
    def no_access(self) -> bool:
        """The app may not read the mailbox (no Mail.Read in its Exchange scope): the lookup can never answer."""
        return isinstance(self.failure, Permanent)


@dataclass(frozen=True)
class Checked:
    """A request that passed the contract, the allow-list and its app's senders: ready for Graph."""

    request: SendRequest | MimeRequest
    received: dict[str, Any]  # the JSON object as the app wrote it: kept whole for a dead letter
    app: str = DEFAULT_APP  # whose queue it came from (shared/apps.py): part of its key
    enqueued_at: datetime | None = None  # when the app enqueued it (the outbox message's insertion time), if known


class Relay:
    def __init__(
        self,
        *,
        allowed_senders: frozenset[str],
        tokens: TokenSource,
        graph: MailSender,
        scope_model: str = "rbac",
        payloads: PayloadStore | None = None,
        max_message_bytes: int = 35 * MB,
    ):
        self._allowed = allowed_senders
        self._tokens = tokens
        self._graph = graph
        self._scope_model = scope_model  # EXCHANGE_SCOPE_MODEL: which fix an ErrorAccessDenied hint names
        self._payloads = payloads  # the mail-payloads container (claim checks), shared/payloads.py
        self._max_message_bytes = max_message_bytes  # MAX_MESSAGE_SIZE_MB

    @property
    def payloads(self) -> PayloadStore | None:
        return self._payloads

    def for_app(self, tokens: TokenSource | None = None, payloads: PayloadStore | None = None) -> Relay:
        """The same relay for one app (shared/apps.py): calling Graph as its own registration (`tokens`), reading
        claim-checked payloads from its own container (`payloads`); what is not given stays the relay's."""
        other = copy.copy(self)
        other._tokens = tokens or self._tokens
        other._payloads = payloads or self._payloads
        return other

    def send(self, raw: bytes | str) -> Attempt:
        checked = self.check(raw)
        return checked if isinstance(checked, Attempt) else self.deliver(checked)

    def check(self, raw: bytes | str, app: App | None = None) -> Checked | Attempt:
        """The request if the contract, the allow-list and `app`'s senders accept it, else the permanent failure
        that says why. `app` is known from the queue the request came from, never from the request."""
        from shared.contract import ContractError, parse_request

        request = as_received(raw)
        try:
            req = parse_request(raw)
        except ContractError as e:
            code = "InvalidEncoding" if e.encoding else "InvalidRequest"
            return Attempt(permanent(code, str(e)), request)
        if req.sender.lower() not in self._allowed:
            return Attempt(
                permanent("SenderNotAllowed", f"{req.sender} is not on the relay's allow-list"), request, req.sender
            )
        if app is not None and req.sender.lower() not in app.senders:
            # Before any state is written and before Graph: an app sends only as its own mailboxes.
            message = f"app {app.name!r} may not send as {req.sender}: it is not among the app's senders"
            return Attempt(permanent("SenderNotAllowedForApp", message), request, req.sender)
        assert isinstance(request, dict)  # parse_request accepted it, so it is a JSON object
        return Checked(req, request, app.name if app is not None else DEFAULT_APP)

    def send_as(self, sender: str, request: dict[str, Any]) -> Outcome:
        """Send past the allow-list: for `mailrelay doctor --send-test-to`, which must see what *Exchange*
        answers for a mailbox the allow-list would refuse. Never reachable from the queue."""
        from shared.contract import SendRequest, parse_request

        try:
            req = parse_request(request)
            if not isinstance(req, SendRequest):
                return permanent("InvalidRequest", "a test send is a JSON request, not a MIME one")
            return self._post(sender, build_send_mail_body(req))
        except RelayFailure as e:
            return e.outcome

    def deliver(self, checked: Checked, mark: str | None = None, fence: Fence | None = None) -> Attempt:
        """Send a checked request through Graph, marked with `mark` (shared/status.py), and classify the answer.
        `fence` runs right before every call that can send or change the mailbox (the module's docstring); the
        ClaimLost it raises, or any other error of its own, goes to the caller with nothing sent."""
        from shared.contract import MimeRequest

        req = checked.request
        if isinstance(req, MimeRequest):
            mime = req
            return self._attempt(checked, lambda replies: self._send_mime(mime, mark, replies, fence))
        return self._attempt(checked, lambda replies: self._send_json(req, mark, replies, fence))

    def _attempt(self, checked: Checked, send: Callable[[list[GraphReply]], Outcome]) -> Attempt:
        """Run `send`, which records Graph's replies in the list it is given, and classify: a RelayFailure or a
        PayloadError raised on the way is the outcome."""
        from shared.payloads import PayloadError

        replies: list[GraphReply] = []
        try:
            outcome = send(replies)
        except RelayFailure as e:
            outcome = e.outcome
        except PayloadError as e:
            outcome = _payload_failure(e)
        last = replies[-1] if replies else None
        return Attempt(
            outcome,
            checked.received,
            checked.request.sender,
            last.request_id if last else None,
            last.client_request_id if last else None,
            sum(r.elapsed_ms for r in replies) if replies else None,
        )

    def _send_json(
        self, req: SendRequest, mark: str | None, replies: list[GraphReply], fence: Fence | None
    ) -> Outcome:
        """A JSON request: sendMail when it fits one request, else the large-message flow."""
        size = mail_size(req)
        if size > self._max_message_bytes:
            return permanent(
                "MessageTooLarge",
                f"the message comes to {size / MB:.1f} MB encoded for mail, over MAX_MESSAGE_SIZE_MB "
                f"({self._max_message_bytes / MB:g})",
            )
        if raw_size(req) < SEND_MAIL_MAX_BYTES:
            stored = {str(p.blob): self._reader(p).read_all() for p in req.stored_parts()}
            _check_text(req, stored)
            return self._post(req.sender, build_send_mail_body(req, mark, stored), replies, fence)
        return self._send_large(req, mark, replies, fence)

    def find_sent(self, sender: str, mark: str) -> Lookup:
        """Is the message marked `mark` in the sender's Sent Items? Needs Mail.Read in the app's Exchange scope."""
        import requests

        try:
            reply = self._graph.find_sent(sender, mark, self._tokens.token())
        except RelayFailure as e:
            return Lookup(False, e.outcome)
        except requests.RequestException as e:
            return Lookup(False, transient("ConnectionError", f"Sent Items lookup failed: {type(e).__name__}"))
        if reply.status == 200:
            value = reply.value.get("value") if isinstance(reply.value, dict) else None
            if not isinstance(value, list):
                return Lookup(False, transient("UnexpectedReply", "the Sent Items lookup answered 200 without a list"))
            return Lookup(bool(value))
        outcome = classify_http(reply.status, reply.error, reply.retry_after, self._scope_model)
        if isinstance(outcome, Sent):  # another 2xx: no list to read
            return Lookup(False, transient("UnexpectedReply", f"the Sent Items lookup answered {reply.status}"))
        return Lookup(False, outcome)

    def _post(
        self, sender: str, body: dict[str, Any], replies: list[GraphReply] | None = None, fence: Fence | None = None
    ) -> Outcome:
        try:
            reply = self._request(
                lambda token: self._graph.send_mail(sender, body, token), replies, sends=True, fence=fence
            )
        except RelayFailure as e:
            return e.outcome
        outcome = classify_http(reply.status, reply.error, reply.retry_after, self._scope_model)
        if isinstance(outcome, Sent) and reply.status != 202:
            log.warning("sendMail answered %s, not 202; counted as sent", reply.status)
        return outcome

    def _request(
        self,
        call: Callable[[str], GraphReply],
        replies: list[GraphReply] | None,
        *,
        sends: bool,
        renew: bool = True,
        fence: Fence | None = None,
    ) -> GraphReply:
        """One Graph call with a token; a failure to connect or to be answered raises RelayFailure. `sends`: the
        call can send the message (sendMail, or sending a draft), so an answer lost after the request went out
        leaves its outcome unknown. `fence` runs right before each time the call is made (a 401's retry too),
        after the token is in hand: a slow token request cannot eat the time the fence vouched for."""
        import requests

        # A 401 from Graph means the token is no good: try a fresh token once, then a re-read secret
        # (a rotation Entra already knows about) once. A 401 is a refusal, so re-posting cannot send twice.
        renewals: list[Callable[[], str]] = [
            lambda: self._tokens.token(fresh=True),
            self._renewed_credential_token,
        ]
        if not renew:  # an upload session's pre-authenticated URL: no token goes with it, none can be renewed
            renewals = []
        token = self._tokens.token() if renew else ""
        while True:
            if fence is not None:
                fence()
            started = time.monotonic()
            try:
                reply = call(token)
            except requests.ConnectTimeout:
                raise RelayFailure(
                    transient("ConnectionError", "Graph unreachable: the connection timed out before sending")
                ) from None
            except requests.Timeout:
                raise RelayFailure(transient("Timeout", "Graph did not answer in time", maybe_sent=sends)) from None
            except requests.ConnectionError as e:
                # Refused or unresolvable: nothing went out. Lost after the request was written: it may have.
                maybe = sends and not _before_sending(e)
                failure = transient("ConnectionError", f"Graph unreachable: {type(e).__name__}", maybe_sent=maybe)
                raise RelayFailure(failure) from None
            reply = replace(reply, elapsed_ms=(time.monotonic() - started) * 1000)
            if replies is not None:
                replies.append(reply)
            if reply.status != 401 or not renewals:
                return reply
            log.info("Graph answered 401; renewing the token", extra={"event": "token.renew"})
            token = renewals.pop(0)()

    # --- The MIME form (docs/mime.md) ------------------------------------------------------------------------

    def _send_mime(
        self, req: MimeRequest, mark: str | None, replies: list[GraphReply], fence: Fence | None = None
    ) -> Outcome:
        """A MIME message as is: a draft from the MIME, the relay's mark on it, then the draft's send.

        Why a draft and not sendMail, which takes MIME too: sendMail's MIME body is the MIME alone, so it cannot
        carry the mark (a single-value extended property) that finds an unknown outcome in Sent Items; a draft can
        be given it by PATCH (https://learn.microsoft.com/graph/api/singlevaluelegacyextendedproperty-post-singlevalueextendedproperties),
        and then takes the large-message flow's path: leftovers of an earlier try found by the mark and deleted, the
        send fenced, a sent draft found in Sent Items. Like that flow it needs Mail.ReadWrite. A crash between the
        draft's creation and its mark leaves an unmarked draft, never sent: clutter in Drafts, not a second copy."""
        from shared.contract import MAX_MIME_BYTES

        graph: DraftSender = self._graph  # type: ignore[assignment]  # GraphClient is both
        sender = req.sender
        stored = req.mime.blob is not None
        data = self._reader(req.mime).read_all() if stored else req.mime.inline_bytes() or b""
        mime = prepare_mime(data, req)
        if len(mime) > min(MAX_MIME_BYTES, self._max_message_bytes):
            limit = min(MAX_MIME_BYTES, self._max_message_bytes)
            raise RelayFailure(
                permanent(
                    "MessageTooLarge",
                    f"the MIME message comes to {len(mime)} bytes, over the {limit} bytes the relay can send as is: "
                    "Graph takes MIME in a request of at most 4 MB, base64-encoded "
                    "(https://learn.microsoft.com/graph/api/user-post-messages)",
                )
            )
        if mark:
            self._discard_leftovers(graph, sender, mark, replies, fence)
        draft = self._step(
            lambda t: graph.create_mime_draft(sender, mime, t), replies, "a draft from the MIME", fence=fence
        )
        draft_id = draft.value.get("id") if isinstance(draft.value, dict) else None
        if not isinstance(draft_id, str) or not draft_id:
            raise RelayFailure(transient("UnexpectedReply", "creating the MIME draft answered without an id"))
        try:
            if mark:
                self._step(
                    lambda t: graph.mark_message(sender, draft_id, mark, t), replies, "marking the draft", fence=fence
                )
            sent = self._step(
                lambda t: graph.send_draft(sender, draft_id, t), replies, "sending the draft", sends=True, fence=fence
            )
        except ClaimLost:
            self._discard(graph, sender, draft_id)
            raise
        except RelayFailure as e:
            if not (isinstance(e.outcome, Transient) and e.outcome.maybe_sent):
                self._discard(graph, sender, draft_id)
            raise
        return Sent(sent.status)

    # --- The large-message flow ----------------------------------------------------------------------------

    def _reader(self, part: Body | Attachment | Mime) -> Reader:
        from shared.payloads import Reader, Ref

        if self._payloads is None:
            raise RelayFailure(permanent("PayloadMissing", "this relay has no payload store configured"))
        return Reader(self._payloads, Ref.of(part))

    def _send_large(
        self, req: SendRequest, mark: str | None, replies: list[GraphReply], fence: Fence | None = None
    ) -> Outcome:
        """Draft, attachments, upload sessions, send (the module's docstring)."""
        from shared.graph import build_message

        graph: DraftSender = self._graph  # type: ignore[assignment]  # GraphClient is both
        sender = req.sender
        # Every stored payload's size is checked before anything is created in the mailbox.
        readers = {str(p.blob): self._reader(p) for p in req.stored_parts()}
        for each in readers.values():
            each.check_size()
        if mark:
            self._discard_leftovers(graph, sender, mark, replies, fence)
        body = {req.body.blob: readers[req.body.blob].read_all()} if req.body.blob else {}
        _check_text(req, body)
        draft = self._step(
            lambda t: graph.create_draft(sender, build_message(req, mark, body), t), replies, "a draft", fence=fence
        )
        draft_id = draft.value.get("id") if isinstance(draft.value, dict) else None
        if not isinstance(draft_id, str) or not draft_id:
            raise RelayFailure(transient("UnexpectedReply", "creating the draft answered without an id"))
        try:
            for attachment in req.attachments:
                reader = readers.get(attachment.blob) if attachment.blob else None
                if reader is None or attachment.byte_size < UPLOAD_SESSION_MIN_BYTES:
                    self._attach_small(graph, sender, draft_id, attachment, reader, replies, fence)
                else:  # 3 MB and more is never inline: the contract caps base64 at 3 MB
                    self._upload(graph, sender, draft_id, attachment, reader, replies, fence)
            sent = self._step(
                lambda t: graph.send_draft(sender, draft_id, t), replies, "sending the draft", sends=True, fence=fence
            )
        except ClaimLost:
            # The fence stopped the next call, the send included: this draft is never sent. Deleting it by its id
            # cannot touch the new owner's own draft; if this delete fails, the new owner still finds the draft by
            # its mark (every call on it ended before the lost lease did, so before the new owner looked) and
            # deletes it before creating its own.
            self._discard(graph, sender, draft_id)
            raise
        except (RelayFailure, _payload_errors()) as e:
            if not (isinstance(e, RelayFailure) and isinstance(e.outcome, Transient) and e.outcome.maybe_sent):
                self._discard(graph, sender, draft_id)  # nothing was sent: the next try starts afresh
            raise
        return Sent(sent.status)

    def _attach_small(
        self,
        graph: DraftSender,
        sender: str,
        draft_id: str,
        attachment: Attachment,
        reader: Reader | None,
        replies: list[GraphReply],
        fence: Fence | None = None,
    ) -> None:
        from shared.graph import file_attachment

        data = reader.read_all() if reader is not None else None
        body = file_attachment(attachment, data)
        what = f"attaching {attachment.name!r}"
        self._step(lambda t: graph.add_attachment(sender, draft_id, body, t), replies, what, fence=fence)

    def _upload(
        self,
        graph: DraftSender,
        sender: str,
        draft_id: str,
        attachment: Attachment,
        reader: Reader,
        replies: list[GraphReply],
        fence: Fence | None = None,
    ) -> None:
        """One large attachment through an upload session, in ranges of at most 4 MB from where Graph says. Each
        range is fenced: a long upload keeps its claim (or stops at the first range after losing it)."""
        from shared.graph import upload_item
        from shared.payloads import RANGE_BYTES

        what = f"uploading {attachment.name!r}"
        item = upload_item(attachment)
        session = self._step(
            lambda t: graph.create_upload_session(sender, draft_id, item, t), replies, what, fence=fence
        )
        value = session.value if isinstance(session.value, dict) else {}
        url = value.get("uploadUrl")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise RelayFailure(transient("UnexpectedReply", "createUploadSession answered without an https uploadUrl"))
        total = attachment.byte_size
        start = _next_start(value, 0)
        # Each PUT moves the next expected byte forward; a session that keeps asking for the same range is stuck.
        for _ in range(2 * (total // RANGE_BYTES + 2)):
            if start >= total:
                break
            data = reader.read(start, min(RANGE_BYTES, total - start))
            uploader = _uploader(graph, url, data, start, total)
            reply = self._request(uploader, replies, sends=False, renew=False, fence=fence)
            if reply.status == 201:  # the last range: the attachment is on the draft
                start = total
                break
            if reply.status != 200:
                raise RelayFailure(self._failure(reply, what, sends=False))
            following = _next_start(reply.value, start + len(data))
            if following > start + len(data):
                raise RelayFailure(
                    transient("UnexpectedReply", f"the upload session skipped to byte {following} ({what})")
                )
            start = following
        if start < total:
            raise RelayFailure(transient("UploadStalled", f"the upload session stopped moving ({what})"))
        reader.verify()

    def _step(
        self,
        call: Callable[[str], GraphReply],
        replies: list[GraphReply],
        what: str,
        *,
        sends: bool = False,
        fence: Fence | None = None,
    ) -> GraphReply:
        """A call of the large-message flow that must succeed: its reply, or RelayFailure."""
        reply = self._request(call, replies, sends=sends, fence=fence)
        if 200 <= reply.status < 300:
            return reply
        raise RelayFailure(self._failure(reply, what, sends=sends))

    def _failure(self, reply: GraphReply, what: str, *, sends: bool) -> Failure:
        outcome = classify_http(reply.status, reply.error, reply.retry_after, self._scope_model)
        assert not isinstance(outcome, Sent)
        outcome = replace(outcome, message=f"{outcome.message} ({what})")
        if isinstance(outcome, Transient) and not sends:
            return replace(outcome, maybe_sent=False)  # a draft step sends nothing, whatever its answer
        # "Access to OData is disabled." is not a missing Mail.ReadWrite: hint_for's hint (the access policy's
        # group, or EWS/REST blocked) holds for the draft flow's calls too.
        odata_disabled = "OData is disabled" in outcome.message
        if isinstance(outcome, Permanent) and outcome.code == "ErrorAccessDenied" and not sends and not odata_disabled:
            return replace(outcome, hint=LARGE_MESSAGE_ACCESS_HINTS[self._scope_model])
        return outcome

    def _discard_leftovers(
        self, graph: DraftSender, sender: str, mark: str, replies: list[GraphReply], fence: Fence | None = None
    ) -> None:
        """Delete the drafts an earlier try of this request left (a crash, a failed upload). Each delete is fenced:
        a copy that lost its claim must not delete the draft the new owner is building (it carries the same mark).

        A marked message in Drafts with isDraft false is not a leftover: an earlier try sent it and it waits there
        for Exchange's transport, which moves it to Sent Items once done ("Things to know about sendMail"; the
        message resource: "A message is a draft if it hasn't been sent yet"). Deleting it would not stop its
        delivery, and sending again would deliver a second copy; so nothing is deleted or created, and the outcome
        is unknown (StillInTransport, maybe_sent): delivery looks in Sent Items again after the settling time, and
        the retry budget still ends it. Only an explicit false counts: Graph returns the selected isDraft."""
        found = self._step(lambda t: graph.find_drafts(sender, mark, t), replies, "looking for an earlier try's draft")
        items = found.value.get("value") if isinstance(found.value, dict) else None
        listed = [item for item in (items if isinstance(items, list) else []) if isinstance(item, dict)]
        if any(item.get("isDraft") is False for item in listed):
            raise RelayFailure(
                transient(
                    "StillInTransport",
                    "an earlier try of this message was sent and is still in Exchange's transport (in the sender's "
                    "Drafts with isDraft false, not yet in Sent Items); not sent again",
                    maybe_sent=True,
                )
            )
        for item in listed:
            draft_id = item.get("id")
            if isinstance(draft_id, str) and draft_id:
                reply = self._request(_deleter(graph, sender, draft_id), replies, sends=False, fence=fence)
                if reply.status not in (204, 404):
                    raise RelayFailure(self._failure(reply, "deleting an earlier try's draft", sends=False))
                log.info("deleted a draft an earlier try left", extra={"event": "mail.draft.deleted"})

    def _discard(self, graph: DraftSender, sender: str, draft_id: str) -> None:
        """Best effort: a draft not deleted now is deleted by the next try (its mark finds it)."""
        try:
            self._request(lambda t: graph.delete_message(sender, draft_id, t), None, sends=False)
        except Exception as e:
            log.warning("could not delete the draft of a failed try: %s", type(e).__name__)

    def _renewed_credential_token(self) -> str:
        self._tokens.renew_credential()
        return self._tokens.token(fresh=True)


def prepare_mime(data: bytes, req: MimeRequest) -> bytes:
    """The MIME to hand Graph: the app's bytes, with a Bcc header in front for the envelope's recipients the headers
    do not name; or RelayFailure (permanent) when the MIME cannot be sent as the request says.

    The envelope (the request's to, cc and bcc) wins, and the MIME stays as the app built it:
    - Graph takes a MIME message's recipients from its To, CC and BCC headers
      (https://learn.microsoft.com/graph/api/user-post-messages, "Request body"). An envelope recipient no header
      names goes into a Bcc header, added at the top and nowhere else: every byte of the app's MIME follows it
      unchanged. Exchange delivers a Bcc recipient without writing the Bcc header into the copies others receive
      (the message resource: bccRecipients, "The Bcc: recipients for the message";
      https://learn.microsoft.com/graph/outlook-send-mime-message lists CC and BCC among the MIME features sent).
    - A header recipient the envelope lacks is refused, not dropped: Graph would deliver to it, and removing it would
      rewrite headers the others see (and break a signature over them). A device that sends one copy per envelope
      recipient with the full To header must send one request with the whole envelope instead.
    - The MIME's From must be the request's "from": the allow-list checks "from", and Graph sends as the mailbox
      in the URL; a MIME that claims another sender is refused before Graph is called.
    Nothing here names an address in its text: the dead letter and the logs carry counts only."""
    from email.utils import getaddresses

    from shared.contract import mime_problem

    problem = mime_problem(data)
    if problem:
        raise RelayFailure(permanent("InvalidMime", f"the MIME message {problem}"))
    import email
    from email import policy

    message = email.message_from_bytes(data, policy=policy.compat32)  # raw values: no decoding needed here
    senders = [a.lower() for _, a in getaddresses(message.get_all("From") or []) if a]
    if senders != [req.sender.lower()]:
        raise RelayFailure(
            permanent(
                "MimeSenderMismatch",
                "the MIME's From header names another mailbox than the request's \"from\"; they must be the same",
            )
        )
    named = {a.lower() for name in ("To", "Cc", "Bcc") for _, a in getaddresses(message.get_all(name) or []) if a}
    envelope = req.envelope()
    outside = named - set(envelope)
    if outside:
        raise RelayFailure(
            permanent(
                "MimeRecipientNotInEnvelope",
                f"{len(outside)} recipient(s) in the MIME's To, Cc or Bcc headers are not in the request's to, cc or "
                "bcc; Graph would deliver to them: add them to the envelope or remove them from the MIME",
            )
        )
    missing = [a for a in envelope if a not in named]
    if not missing:
        return data
    first_break = data.find(b"\n")
    newline = b"\r\n" if first_break > 0 and data[first_break - 1 : first_break] == b"\r" else b"\n"  # the MIME's own
    # One address per folded line keeps every line far under RFC 5322's 998 characters, whatever the count.
    header = b"Bcc: " + (b"," + newline + b" ").join(a.encode("ascii") for a in missing) + newline
    return header + data


def _uploader(graph: DraftSender, url: str, data: bytes, start: int, total: int) -> Callable[[str], GraphReply]:
    return lambda _token: graph.upload_range(url, data, start, total)


def _deleter(graph: DraftSender, sender: str, message_id: str) -> Callable[[str], GraphReply]:
    return lambda token: graph.delete_message(sender, message_id, token)


def _next_start(value: Any, default: int) -> int:
    """Where an upload session expects the next range: Outlook gives one "{start}" in nextExpectedRanges (the
    uploadSession resource's doc); a "start-end" range is read by its start."""
    ranges = value.get("nextExpectedRanges") if isinstance(value, dict) else None
    if isinstance(ranges, list) and ranges and isinstance(ranges[0], str):
        head = ranges[0].split("-", 1)[0].strip()
        if head.isdigit():
            return int(head)
    return default


def _check_text(req: SendRequest, stored: dict[str, bytes]) -> None:
    """A claim-checked body is text: UTF-8, as the contract's inline bodies are."""
    from shared.payloads import PayloadError

    blob = req.body.blob
    if blob is None or blob not in stored:
        return
    try:
        stored[blob].decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadError(
            "PayloadMismatch", f"the body blob {blob!r} is not UTF-8 text (byte {e.start} is invalid)"
        ) from None


def _payload_errors() -> type[PayloadError]:
    from shared.payloads import PayloadError

    return PayloadError


def _payload_failure(error: PayloadError) -> Failure:
    if error.code == "PayloadUnavailable":
        return transient(error.code, str(error))
    return permanent(error.code, str(error))


def _before_sending(error: Exception) -> bool:
    """Did a connection error happen before the request was written (no connection at all)? urllib3 wraps a
    failed connect in NewConnectionError (refused, DNS), inside MaxRetryError once its connect retries are
    spent; anything else (a reset or an aborted read) may come after Graph received the request."""
    from urllib3.exceptions import NewConnectionError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NewConnectionError):
            return True
        reason = getattr(current, "reason", None)
        nested = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = reason if isinstance(reason, BaseException) else nested or current.__cause__ or current.__context__
    return False
