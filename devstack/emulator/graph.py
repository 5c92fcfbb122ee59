"""Microsoft Graph: sendMail with its documented checks and errors, mailboxes, and the applications
endpoint the expiry check reads.

Sources: https://learn.microsoft.com/graph/api/user-sendmail (the body, 202 Accepted, saveToSentItems, Example 1
posting it as the string "false"), https://learn.microsoft.com/graph/errors (the status codes and their meaning),
the message resource (its properties), and the pages the other modules cite. Assumed, where no comment names a
source: the texts of Graph's refusals (OData's RequestBodyRead and UnprocessableType messages, the 401 texts and
WWW-Authenticate challenge, the 404 ErrorInvalidUser, the 405, the 413 over 4 MB, the $top and $select errors),
which follow what Graph answers in users' reports; the codes are Graph's documented ones where the errors page
lists them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from devstack.emulator.common import (
    GRAPH_APP_ID,
    GRAPH_RESOURCE,
    _bearer,
    _json_response,
    _optional_bool,
    _Problem,
    _Request,
    _required_str,
    _Response,
    _retry_after_headers,
    _utcnow,
)
from devstack.emulator.drafts import (
    SIZE_EXCEEDED,
    attachment_summary,
    encoded_size,
    mime_summary,
    parse_json,
    read_mime,
)
from devstack.emulator.exchange import READ_PERMISSIONS, ExchangeScope
from devstack.emulator.extended_properties import check_extended_properties, parse_mark_filter
from devstack.emulator.faults import Faults
from devstack.emulator.sent_items import EXTENDED_PROPERTY_READ, SELECTABLE_DEFAULT, SENT_ITEMS, select
from devstack.emulator.state import _Mailbox
from devstack.emulator.transport import Transport

# Graph refuses request bodies over 4 MB (sendMail included); larger content needs an upload session
# (outlook-large-attachments: "under 3 MB" in one POST). Assumed: the 413 and its text, as users report them.
GRAPH_MAX_REQUEST_BYTES = 4 * 1024 * 1024
# sendMail's attachments up to this size keep their contentBytes in the outbox; larger ones only their summary.
OUTBOX_KEPT_BYTES = 64 * 1024

_GRAPH_AUDIENCES = frozenset({GRAPH_RESOURCE, GRAPH_RESOURCE + "/", GRAPH_APP_ID})

# Deliberately loose: Exchange resolves anything shaped local@domain; it refuses what it cannot parse.
_SMTP_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+$")

# Writable and read-only properties of Graph's microsoft.graph.message resource (v1.0). Graph's OData
# reader refuses any other property name with RequestBodyRead.
_MESSAGE_PROPERTIES = frozenset(
    {
        "@odata.type",
        "id",
        "createdDateTime",
        "lastModifiedDateTime",
        "changeKey",
        "categories",
        "receivedDateTime",
        "sentDateTime",
        "hasAttachments",
        "internetMessageId",
        "internetMessageHeaders",
        "subject",
        "body",
        "bodyPreview",
        "importance",
        "parentFolderId",
        "sender",
        "from",
        "toRecipients",
        "ccRecipients",
        "bccRecipients",
        "replyTo",
        "conversationId",
        "conversationIndex",
        "uniqueBody",
        "isDeliveryReceiptRequested",
        "isReadReceiptRequested",
        "isRead",
        "isDraft",
        "webLink",
        "inferenceClassification",
        "flag",
        "attachments",
        "extensions",
        "singleValueExtendedProperties",
        "multiValueExtendedProperties",
    }
)

_FILE_ATTACHMENT_PROPERTIES = frozenset(
    {
        "@odata.type",
        "id",
        "name",
        "contentType",
        "size",
        "isInline",
        "lastModifiedDateTime",
        "contentBytes",
        "contentId",
        "contentLocation",
    }
)

_FILE_ATTACHMENT_TYPE = "#microsoft.graph.fileattachment"

_RECIPIENT_LISTS = ("toRecipients", "ccRecipients", "bccRecipients", "replyTo")

# Assumed: the texts of these answers. Graph's error codes are documented
# (https://learn.microsoft.com/graph/errors), the messages that go with them vary and no page fixes them.
_DEFAULT_FAULT_ERRORS: dict[int, tuple[str, str]] = {
    # Outlook's concurrency throttle, as Graph reports it (code and message seen in the field, not on a page).
    429: ("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
    500: ("InternalServerError", "The service encountered an internal error. Please retry the request."),
    502: ("BadGateway", "The server received an invalid response from an upstream server."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please retry the request."),
    504: ("GatewayTimeout", "The server did not receive a timely response from an upstream server."),
}


class GraphMail(ExchangeScope, Faults, Transport):
    """Microsoft Graph: sendMail with its documented checks and errors, mailboxes, and the applications
    endpoint the expiry check reads.

    A part of `Emulator`; the mailboxes are `TenantState._mailboxes`, accepted messages `_outbox`, and
    Exchange's authorization per mailbox is `ExchangeScope`'s (exchange.py).
    """

    def add_mailbox(
        self, address: str, in_exchange_scope: bool = True, rest_enabled: bool = True, exchange_online: bool = True
    ) -> None:
        """Create a mailbox. Graph answers 404 for addresses never added; `exchange_online=False` is a user
        with no Exchange Online mailbox (on-premises, or not licensed)."""
        if not _SMTP_ADDRESS.match(address):
            raise ValueError(f"not a mailbox address: {address!r}")
        # A stable object id, so /users/{id}/sendMail works as well as /users/{upn}/sendMail.
        object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "mailbox:" + address.lower()))
        with self._lock:
            self._mailboxes[address.lower()] = _Mailbox(
                address, object_id, bool(in_exchange_scope), bool(rest_enabled), bool(exchange_online)
            )

    def mailbox_id(self, address: str) -> str:
        """The mailbox's object id, for /users/{id}/sendMail (Graph takes the id or the UPN)."""
        with self._lock:
            mailbox = self._mailboxes.get(address.lower())
            if mailbox is None:
                raise KeyError(f"no mailbox {address!r}")
            return mailbox.object_id

    def _find_mailbox(self, user: str) -> _Mailbox | None:
        """The mailbox by UPN or object id (Graph takes either): the record itself, not a copy, so that
        Exchange's scope check (exchange.py) applies a pending scope change to it, under the lock."""
        with self._lock:
            mailbox = self._mailboxes.get(user.lower()) or next(
                (m for m in self._mailboxes.values() if m.object_id == user.lower()), None
            )
            return mailbox

    def _graph_read_denial(
        self, request: _Request, user: str, permissions: tuple[str, ...], ids: _GraphIds, service: str | None = None
    ) -> _Response | _Mailbox:
        """A read of `user`'s mailbox: the refusal Graph answers (token, mailbox, Exchange's scope for one of
        `permissions`, then any fault queued for `service`), or the mailbox when it is allowed."""
        token = _bearer(request)
        outcome, claims = self._check_token(token) if token else ("missing", {})
        if outcome != "ok" or claims.get("aud") not in _GRAPH_AUDIENCES:
            return self._graph_unauthorized(ids, "Access token validation failure.")
        mailbox = self._find_mailbox(user)
        if mailbox is None:
            return self._graph_error(ids, 404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        denial = self._exchange_denial(claims, mailbox, permissions)
        if denial is not None:
            return self._graph_error(ids, *denial)
        fault = self._next_fault(service) if service else None
        if fault is not None:
            return self._fault_response(ids, fault)
        return mailbox

    def _graph_inbox(self, request: _Request, user: str) -> _Response:
        """GET /users/{id}/mailFolders/inbox: reading a folder needs a read permission, scoped by Exchange
        exactly as sending is, so `mailrelay doctor` probes the scope with it without sending anything."""
        ids = _GraphIds.of(request)
        allowed = self._graph_read_denial(request, user, READ_PERMISSIONS, ids)
        if isinstance(allowed, _Response):
            return allowed
        mailbox = allowed
        folder_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "inbox:" + mailbox.object_id))
        context = f"https://graph.microsoft.com/v1.0/$metadata#users('{user}')/mailFolders(id)/$entity"
        return _json_response(200, {"@odata.context": context, "id": folder_id}, ids.headers())

    def _graph_folder_messages(self, request: _Request, user: str, folder: str) -> _Response:
        """GET /users/{id}/mailFolders/{folder}/messages with the documented extended-property $filter
        (sent_items.py has the rules and their source)."""
        ids = _GraphIds.of(request)
        allowed = self._graph_read_denial(request, user, EXTENDED_PROPERTY_READ, ids, "graph.messages")
        if isinstance(allowed, _Response):
            return allowed
        if folder.lower() not in (SENT_ITEMS, "drafts", "inbox"):
            # Only Sent Items, Drafts and the Inbox (its non-delivery reports: transport.py) are played.
            return self._graph_error(ids, 404, "ErrorItemNotFound", "The specified object was not found in the store.")
        query = request.param("$filter")
        readers = {SENT_ITEMS: self.sent_items, "drafts": self.draft_items, "inbox": self.inbox_items}
        items = readers[folder.lower()](allowed.address)
        if query is not None:
            wanted = parse_mark_filter(query)
            if isinstance(wanted, tuple):  # Graph's 400 for it (extended_properties.py cites each)
                return self._graph_error(ids, *wanted)
            items = [i for i in items if wanted.matches(i["singleValueExtendedProperties"])]
        top = request.param("$top")
        if top is not None:
            if not top.isdigit():
                return self._graph_error(ids, 400, "BadRequest", f"Invalid value '{top}' for $top query option.")
            items = items[: int(top)]
        fields = request.param("$select")
        shown = select(items, [f.strip() for f in fields.split(",")] if fields else list(SELECTABLE_DEFAULT))
        if isinstance(shown, str):
            message = f"Could not find a property named '{shown}' on type 'microsoft.graph.message'."
            return self._graph_error(ids, 400, "RequestBroker--ParseUri", message)
        context = f"https://graph.microsoft.com/v1.0/$metadata#users('{user}')/mailFolders('{folder}')/messages"
        return _json_response(200, {"@odata.context": context, "value": shown}, ids.headers())

    def _apply_mailbox(self, entry: Mapping[str, Any]) -> None:
        self.add_mailbox(
            _required_str(entry, "address"),
            in_exchange_scope=_optional_bool(entry, "inExchangeScope", True),
            rest_enabled=_optional_bool(entry, "restEnabled", True),
            exchange_online=_optional_bool(entry, "exchangeOnline", True),
        )

    def _graph_error(
        self, ids: _GraphIds, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> _Response:
        """Graph's error envelope, with innerError date and request ids."""
        payload = {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": _utcnow().strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": ids.request_id,
                    "client-request-id": ids.client_request_id,
                },
            }
        }
        return _json_response(status, payload, [*ids.headers(), *headers])

    def _graph_unauthorized(self, ids: _GraphIds, message: str) -> _Response:
        challenge = (
            "WWW-Authenticate",
            'Bearer realm="", authorization_uri='
            f'"https://login.microsoftonline.com/common/oauth2/authorize", client_id="{GRAPH_APP_ID}"',
        )
        return self._graph_error(ids, 401, "InvalidAuthenticationToken", message, [challenge])

    def _graph_send_mail(self, request: _Request, user: str) -> _Response:
        ids = _GraphIds.of(request)
        if request.method != "POST":
            return self._graph_error(
                ids,
                405,
                "Request_BadRequest",
                f"The HTTP method '{request.method}' is not allowed for sendMail.",
            )
        token = _bearer(request)
        if not token:
            return self._graph_unauthorized(ids, "Access token is empty.")
        outcome, claims = self._check_token(token)
        if outcome == "malformed":
            return self._graph_unauthorized(ids, "CompactToken parsing failed with error code: 80049217")
        if outcome in ("expired", "revoked"):
            return self._graph_unauthorized(ids, "Lifetime validation failed, the token is expired.")
        if outcome != "ok":
            return self._graph_unauthorized(ids, "Access token validation failure.")
        if claims.get("aud") not in _GRAPH_AUDIENCES:
            return self._graph_unauthorized(ids, "Access token validation failure. Invalid audience.")
        mailbox = self._find_mailbox(user)
        if mailbox is None:
            return self._graph_error(ids, 404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        # Exchange decides, per mailbox, from the scope model and the Entra consent (exchange.py).
        denial = self._exchange_denial(claims, mailbox, ("Mail.Send",))
        if denial is not None:
            return self._graph_error(ids, *denial)
        app_id = str(claims.get("appid", ""))

        def accept() -> _Response:
            return self._accept_send_mail(request, ids, mailbox, app_id)

        return self._throttled(ids, app_id, mailbox, accept, len(request.body))

    def _throttled(
        self, ids: _GraphIds, app_id: str, mailbox: _Mailbox, send: Callable[[], _Response], upload_bytes: int
    ) -> _Response:
        """A send (sendMail, or a draft's send) within Graph's limits per app and mailbox, then Exchange's
        (throttling.py): a call over them is refused before anything else happens to it; one within them counts
        as in flight until it is answered, after the configured latency, and its body counts as uploaded."""
        throttled = self._throttle_enter(app_id, mailbox.address, upload_bytes)
        if throttled is not None:
            status, code, message, retry_after = throttled
            return self._graph_error(ids, status, code, message, _retry_after_headers(retry_after))
        try:
            if self.graph_latency > 0:
                self._stopping.wait(self.graph_latency)
            return send()
        finally:
            self._throttle_exit(app_id, mailbox.address)

    def _accept_send_mail(self, request: _Request, ids: _GraphIds, mailbox: _Mailbox, app_id: str) -> _Response:
        """Faults, then Graph's checks, then Exchange takes the message (outbox, Sent Items, its own pace)."""
        fault = self._next_fault("graph.sendMail")
        if fault is not None and not fault.accept:
            return self._fault_response(ids, fault)
        if _content_type(request) == "text/plain":
            return self._accept_mime_send_mail(request, ids, mailbox, app_id, fault)
        problem, parsed = _validate_send_mail(request, mailbox)
        if problem is not None:
            status, code, message = problem
            return self._graph_error(ids, status, code, message)
        assert parsed is not None
        attachments = [
            attachment_summary(a, base64.b64decode(a.get("contentBytes") or ""))
            for a in parsed["message"].get("attachments") or []
        ]
        body_size = len(str((parsed["message"].get("body") or {}).get("content") or "").encode("utf-8"))
        if body_size + sum(encoded_size(a["size"]) for a in attachments) > self.max_message_bytes:
            return self._graph_error(ids, 400, "ErrorMessageSizeExceeded", SIZE_EXCEEDED)
        for attachment, summary in zip(parsed["message"].get("attachments") or [], attachments, strict=True):
            if summary["size"] > OUTBOX_KEPT_BYTES:
                # The outbox stays small: a large attachment is its summary (size, SHA-256), not its bytes.
                attachment.pop("contentBytes", None)
        return self._accept(ids, mailbox, app_id, parsed, attachments, "sendMail", fault)

    def _accept_mime_send_mail(
        self, request: _Request, ids: _GraphIds, mailbox: _Mailbox, app_id: str, fault: Any
    ) -> _Response:
        """sendMail with MIME ("Content-Type: text/plain", the MIME base64-encoded: user-sendmail): the request's
        4 MB, the base64, the MIME, then Exchange's checks on the message it makes of it (recipients, send-as)."""
        if len(request.body) > GRAPH_MAX_REQUEST_BYTES:
            return self._graph_error(ids, 413, "BadRequest", "The maximum request length supported is 4MB.")
        problem, mime, message = read_mime(request.body)
        if problem is not None:
            return self._graph_error(ids, 400, *problem)
        # Assumed: Exchange checks the message it makes of the MIME as it checks a JSON one (recipients resolved, at
        # least one; From the mailbox, else ErrorSendAsDenied); the MIME pages show no such answers.
        refused = _exchange_checks(message, mailbox)
        if refused is not None:
            return self._graph_error(ids, *refused)
        if len(mime) > self.max_message_bytes:
            return self._graph_error(ids, 400, "ErrorMessageSizeExceeded", SIZE_EXCEEDED)
        # A MIME body has no saveToSentItems: sendMail "saves the message in the Sent Items folder" (user-sendmail).
        parsed = {"message": message, "saveToSentItems": True}
        return self._accept(ids, mailbox, app_id, parsed, [], "sendMail", fault, mime=mime)

    def _accept(
        self,
        ids: _GraphIds,
        mailbox: _Mailbox,
        app_id: str,
        parsed: dict[str, Any],
        attachments: list[dict[str, Any]],
        via: str,
        fault: Any,
        draft_id: str | None = None,
        mime: bytes | None = None,
    ) -> _Response:
        """Exchange takes a message (sendMail's, or a sent draft's): the outbox, its own pace, and transport, which
        moves it from Drafts to Sent Items or bounces it (transport.py)."""
        internet_message_id = f"<{uuid.uuid4().hex}@{mailbox.address.rsplit('@', 1)[-1]}>"
        message = parsed["message"]
        ndr = self._transport_failure(mailbox.address)
        if ndr is None:
            recipients = sum(len(message.get(k) or []) for k in ("toRecipients", "ccRecipients", "bccRecipients"))
            exchange = self._throttle_accept(app_id, mailbox.address, recipients)
            ndr = exchange.get("bounced")
        else:
            exchange = {"bounced": ndr}  # the outbox says it: accepted by Graph, never delivered
        with self._lock:
            self._outbox.append(
                {
                    "sender": mailbox.address,
                    "message": parsed,
                    "receivedAt": _utcnow().isoformat(),
                    "internetMessageId": internet_message_id,
                    "via": via,
                    "attachments": attachments,  # sizes and SHA-256 of what arrived, never the bytes
                    # a MIME message as received, and as its recipients get it (no Bcc header), each with its hash
                    **({"mime": mime_summary(mime)} if mime is not None else {}),
                    **exchange,  # deliveryDelaySeconds past 30 a minute; bounced past the daily recipients
                }
            )
        save = _saves_to_sent_items(parsed)
        self._begin_transport(mailbox.address, message, attachments, internet_message_id, save, ndr, draft_id)
        if fault is not None:
            # Accepted, and then the answer goes wrong: a gateway's 5xx, or a 202 that comes too late for the
            # client. Graph's front end can do either after Exchange took the message: the send's outcome is
            # unknown to the caller, and only Sent Items can tell.
            fault.wait()
            if fault.status is not None:
                return self._fault_response(ids, fault)
        return _Response(202, b"", ids.headers())

    # --- The large-message flow (drafts.py has the rules and their sources) ------------------------------------

    def _graph_messages(self, request: _Request, user: str, rest: list[str]) -> _Response:
        """/users/{id}/messages, /messages/{id}, /messages/{id}/attachments[/createUploadSession], .../send."""
        ids = _GraphIds.of(request)
        lowered = [part.lower() for part in rest]
        sending = len(rest) == 2 and lowered[1] == "send"
        if request.method not in ("POST", "DELETE", "PATCH") or (
            request.method in ("DELETE", "PATCH") and len(rest) != 1
        ):
            return self._graph_error(
                ids, 405, "Request_BadRequest", f"The HTTP method '{request.method}' is not allowed."
            )
        allowed = self._graph_read_denial(request, user, ("Mail.Send",) if sending else ("Mail.ReadWrite",), ids)
        if isinstance(allowed, _Response):
            return allowed
        mailbox = allowed
        if sending and request.method == "POST":
            return self._graph_send_draft(request, ids, mailbox, rest[0])
        app_id = str(self._check_token(_bearer(request))[1].get("appid", ""))
        if request.method == "POST":
            # A draft, an attachment, an upload session: each body counts against the upload limit (throttling.py).
            throttled = self._throttle_upload(app_id, mailbox.address, len(request.body))
            if throttled is not None:
                status, code, message, retry_after = throttled
                return self._graph_error(ids, status, code, message, _retry_after_headers(retry_after))
        if len(rest) == 1 and request.method == "DELETE":
            status = self.delete_draft(mailbox, rest[0])
            if status == 404:
                return self._graph_error(
                    ids, 404, "ErrorItemNotFound", "The specified object was not found in the store."
                )
            return _Response(204, b"", ids.headers())
        if len(request.body) > GRAPH_MAX_REQUEST_BYTES:
            return self._graph_error(ids, 413, "BadRequest", "The maximum request length supported is 4MB.")
        if not rest and request.method == "POST" and _content_type(request) == "text/plain":
            # A draft from MIME (user-post-messages, "Request body" and Example 3): 201 and the draft.
            problem, mime, message = read_mime(request.body)
            if problem is not None:
                return self._graph_error(ids, 400, *problem)
            status, payload = self.create_draft(mailbox, message, mime=mime)
            if status >= 400:
                return self._graph_error(ids, status, payload["error"]["code"], payload["error"]["message"])
            return _json_response(status, payload, ids.headers())
        body = parse_json(request.body)
        if not isinstance(body, dict):
            return self._graph_error(ids, *_UNREADABLE)
        if request.method == "PATCH":
            # Only what the relay PATCHes: a single-value extended property on an existing message (the mark).
            unknown = [k for k in body if k != "singleValueExtendedProperties"]
            if unknown:
                return self._graph_error(ids, 400, "BadRequest", f"The emulator does not PATCH '{unknown[0]}'.")
            problem = check_extended_properties(body.get("singleValueExtendedProperties") or [])
            if problem is not None:
                return self._graph_error(ids, *problem)
            status, payload = self.mark_draft(mailbox, rest[0], body.get("singleValueExtendedProperties") or [])
        elif not rest and request.method == "POST":
            problem = _read_message(body) or check_extended_properties(body.get("singleValueExtendedProperties") or [])
            if problem is not None:
                return self._graph_error(ids, *problem)
            status, payload = self.create_draft(mailbox, copy.deepcopy(body))
        elif len(rest) == 2 and lowered[1] == "attachments" and request.method == "POST":
            problem = _read_attachment(body)
            if problem is not None:
                return self._graph_error(ids, *problem)
            status, payload = self.add_attachment(mailbox, rest[0], body)
        elif len(rest) == 3 and lowered[1:] == ["attachments", "createuploadsession"] and request.method == "POST":
            status, payload = self.create_upload_session(mailbox, rest[0], body, self.url, app_id)
        else:
            return self._graph_error(ids, 400, "BadRequest", f"Resource not found for the segment '{rest[-1]}'.")
        if status >= 400:
            error = payload["error"]
            return self._graph_error(ids, status, error["code"], error["message"])
        return _json_response(status, payload, ids.headers())

    def _graph_send_draft(self, request: _Request, ids: _GraphIds, mailbox: _Mailbox, draft_id: str) -> _Response:
        """POST /users/{id}/messages/{id}/send: throttled and faulted like sendMail (it is a send), then Exchange
        takes the draft: it stays in Drafts while in transport, then moves to Sent Items (a draft's send has no
        saveToSentItems), or bounces (transport.py)."""
        token = _bearer(request)
        claims = self._check_token(token)[1] if token else {}
        app_id = str(claims.get("appid", ""))

        def send() -> _Response:
            fault = self._next_fault("graph.sendMail")
            if fault is not None and not fault.accept:
                return self._fault_response(ids, fault)
            taken = self.take_draft_for_sending(mailbox, draft_id)
            if isinstance(taken, tuple):
                status, payload = taken
                return self._graph_error(ids, status, payload["error"]["code"], payload["error"]["message"])
            problem = _exchange_checks(taken.message, mailbox)
            if problem is not None:
                return self._graph_error(ids, *problem)
            parsed = {"message": {**taken.message, "attachments": taken.attachments}, "saveToSentItems": True}
            return self._accept(ids, mailbox, app_id, parsed, taken.attachments, "draft", fault, taken.id, taken.mime)

        return self._throttled(ids, app_id, mailbox, send, len(request.body))

    def _fault_response(self, ids: _GraphIds, fault: Any) -> _Response:
        assert fault.status is not None
        code, message = _DEFAULT_FAULT_ERRORS.get(
            fault.status,
            (HTTPStatus(fault.status).phrase.replace(" ", ""), HTTPStatus(fault.status).phrase),
        )
        return self._graph_error(
            ids, fault.status, fault.code or code, fault.message or message, _retry_after_headers(fault.retry_after)
        )

    def _graph_application(self, request: _Request, app_id: str, rest: Sequence[str] = ()) -> _Response:
        """GET /v1.0/applications(appId='{id}'): the app registration, passwordCredentials and keyCredentials
        included; GET .../federatedIdentityCredentials: its federated identity credentials.

        App-only, Graph wants Application.Read.All (or Application.ReadWrite.*/Directory.Read.All) in
        the token's roles, and answers 403 Authorization_RequestDenied without it. Shapes: the application,
        passwordCredential, keyCredential (customKeyIdentifier: the SHA-1 thumbprint, Binary so base64; key null
        unless selected) and federatedIdentityCredential resource pages (microsoft-graph-docs-contrib
        api-reference/v1.0/resources). A managed identity has a service principal and no application object:
        404 here, as for an unknown appId.
        """
        ids = _GraphIds.of(request)
        if request.method != "GET":
            return self._graph_error(
                ids, 405, "Request_BadRequest", f"The HTTP method '{request.method}' is not allowed."
            )
        token = _bearer(request)
        if not token:
            return self._graph_unauthorized(ids, "Access token is empty.")
        outcome, claims = self._check_token(token)
        if outcome in ("expired", "revoked"):
            return self._graph_unauthorized(ids, "Lifetime validation failed, the token is expired.")
        if outcome != "ok" or claims.get("aud") not in _GRAPH_AUDIENCES:
            return self._graph_unauthorized(ids, "Access token validation failure.")
        readers = {"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All"}
        if not readers & set(claims.get("roles") or []):
            return self._graph_error(
                ids, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        fault = self._next_fault("graph.applications")
        if fault is not None:
            assert fault.status is not None
            code, message = _DEFAULT_FAULT_ERRORS.get(
                fault.status, (HTTPStatus(fault.status).phrase.replace(" ", ""), HTTPStatus(fault.status).phrase)
            )
            return self._graph_error(
                ids, fault.status, fault.code or code, fault.message or message, _retry_after_headers(fault.retry_after)
            )
        if len(rest) > 1 or (rest and rest[0].lower() != "federatedidentitycredentials"):
            return self._graph_error(ids, 400, "BadRequest", f"Resource not found for the segment '{rest[-1]}'.")
        with self._lock:
            app = next(
                (a for a in self._apps.values() if a.client_id.lower() == app_id.lower() and a.identity is None),
                None,
            )
            app = copy.deepcopy(app) if app is not None else None
        if app is None:
            return self._graph_error(
                ids,
                404,
                "Request_ResourceNotFound",
                f"Resource '{app_id}' does not exist or one of its queried reference-property objects are not present.",
            )
        resource: dict[str, Any] = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"app:{app.client_id}".lower())),
            "appId": app.client_id,
            "displayName": "Graph Mail Relay",
            "passwordCredentials": [
                {
                    "customKeyIdentifier": None,
                    "displayName": c.display_name,
                    "endDateTime": _graph_datetime(c.end),
                    "hint": c.hint,
                    "keyId": c.key_id,
                    "secretText": None,
                    "startDateTime": _graph_datetime(c.start),
                }
                for c in app.credentials
            ],
            "keyCredentials": [
                {
                    "customKeyIdentifier": base64.b64encode(k.sha1).decode(),
                    "displayName": k.display_name,
                    "endDateTime": _graph_datetime(k.end),
                    "key": None,
                    "keyId": k.key_id,
                    "startDateTime": _graph_datetime(k.start),
                    "type": "AsymmetricX509Cert",
                    "usage": "Verify",
                }
                for k in app.key_credentials
            ],
        }
        if rest:
            context = (
                f"https://graph.microsoft.com/v1.0/$metadata#applications('{resource['id']}')/"
                "federatedIdentityCredentials"
            )
            listed = [
                {
                    "id": f.id,
                    "name": f.name,
                    "issuer": f.issuer,
                    "subject": f.subject,
                    "description": f.description,
                    "audiences": list(f.audiences),
                }
                for f in app.federated_credentials
            ]
            return _json_response(200, {"@odata.context": context, "value": listed}, ids.headers())
        select = [f.strip() for f in (request.param("$select") or "").split(",") if f.strip()]
        if select:
            resource = {k: v for k, v in resource.items() if k in select}
        context = f"https://graph.microsoft.com/v1.0/$metadata#applications({','.join(select)})/$entity"
        return _json_response(200, {"@odata.context": context, **resource}, ids.headers())


def _graph_datetime(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _GraphIds:
    request_id: str
    client_request_id: str

    @classmethod
    def of(cls, request: _Request) -> _GraphIds:
        request_id = str(uuid.uuid4())
        # Graph echoes the caller's client-request-id, or reuses its own request id.
        return cls(request_id, request.header("client-request-id") or request_id)

    def headers(self) -> list[tuple[str, str]]:
        return [("request-id", self.request_id), ("client-request-id", self.client_request_id)]


_UNREADABLE: _Problem = (
    400,
    "BadRequest",
    "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid "
    "JSON format.",
)


def _unreadable_value(where: str, expected: str) -> _Problem:
    return 400, "RequestBodyRead", f"An unexpected value was found for {where}; {expected} was expected."


def _unknown_property(name: str, type_name: str) -> _Problem:
    message = (
        f"The property '{name}' does not exist on type '{type_name}'. Make sure to only use property names "
        "that are defined by the type or mark the type as open type."
    )
    return 400, "RequestBodyRead", message


def _content_type(request: _Request) -> str:
    return (request.header("Content-Type") or "").split(";")[0].strip().lower()


def _validate_send_mail(request: _Request, mailbox: _Mailbox) -> tuple[_Problem | None, dict[str, Any] | None]:
    """Validate a sendMail body as Graph does: OData reading first, then Exchange's checks.

    Returns (problem, None) or (None, the posted JSON body).
    """
    if len(request.body) > GRAPH_MAX_REQUEST_BYTES:
        return (413, "BadRequest", "The maximum request length supported is 4MB."), None
    content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _UNREADABLE, None
    try:
        payload = json.loads(request.body)
    except ValueError:
        return _UNREADABLE, None
    if not isinstance(payload, dict):
        return _UNREADABLE, None
    for key in payload:
        if key not in ("message", "saveToSentItems"):
            message = (
                f"The parameter '{key}' in the request payload is not a valid parameter for the operation 'sendMail'."
            )
            return (400, "RequestBodyRead", message), None
    if payload.get("message") is None:
        return (400, "ErrorInvalidParameter", "The value of the parameter 'Message' is empty."), None
    if _read_boolean(payload.get("saveToSentItems", True)) is None:
        message = (
            "Cannot convert a primitive value to the expected type 'Edm.Boolean'. See the inner exception "
            "for more details."
        )
        return (400, "RequestBodyRead", message), None
    problem = _read_message(payload["message"]) or _exchange_checks(payload["message"], mailbox)
    if problem is not None:
        return problem, None
    return None, payload


def _read_boolean(value: Any) -> bool | None:
    """An Edm.Boolean parameter as Graph reads it: a JSON boolean, or the string "true" or "false". Microsoft's own
    sendMail example posts `"saveToSentItems": "false"` and gets 202 Accepted (user-sendmail, Example 1:
    microsoft-graph-docs-contrib, api-reference/v1.0/api/user-sendmail.md). Assumed: the case does not matter (the
    example is lower case); any other value (a number, another string) is refused, as no page says otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _saves_to_sent_items(parsed: dict[str, Any]) -> bool:
    """saveToSentItems of a validated sendMail body (default true)."""
    return _read_boolean(parsed.get("saveToSentItems", True)) is not False


def _read_message(message: Any) -> _Problem | None:
    """OData deserialization of microsoft.graph.message: property names, types, enums, binary."""
    if not isinstance(message, dict):
        return _unreadable_value("the parameter 'Message'", "an object")
    for key in message:
        if key not in _MESSAGE_PROPERTIES:
            return _unknown_property(key, "microsoft.graph.message")
    body = message.get("body")
    if body is not None:
        if not isinstance(body, dict):
            return _unreadable_value("the property 'body'", "an object")
        content_type = body.get("contentType", "text")
        if not isinstance(content_type, str) or content_type.lower() not in ("text", "html"):
            return 400, "RequestBodyRead", f"Requested value '{content_type}' was not found."
    importance = message.get("importance")
    if importance is not None and (
        not isinstance(importance, str) or importance.lower() not in ("low", "normal", "high")
    ):
        return 400, "RequestBodyRead", f"Requested value '{importance}' was not found."
    for key in (*_RECIPIENT_LISTS, "from", "sender"):
        problem = _read_recipients(key, message.get(key))
        if problem is not None:
            return problem
    headers = message.get("internetMessageHeaders")
    if headers is not None:
        if not isinstance(headers, list) or not all(isinstance(h, dict) for h in headers):
            return _unreadable_value("the property 'internetMessageHeaders'", "a collection of objects")
        for header in headers:
            for name in header:
                if name not in ("name", "value"):
                    return _unknown_property(name, "microsoft.graph.internetMessageHeader")
    attachments = message.get("attachments")
    if attachments is not None:
        if not isinstance(attachments, list):
            return _unreadable_value("the property 'attachments'", "a collection")
        for attachment in attachments:
            problem = _read_attachment(attachment)
            if problem is not None:
                return problem
    return _read_extended_properties(message.get("singleValueExtendedProperties"))


def _read_extended_properties(properties: Any) -> _Problem | None:
    """OData reading of singleValueExtendedProperties: a collection of
    microsoft.graph.singleValueLegacyExtendedProperty, each with a string id and a string value (Exchange then
    checks what they say: extended_properties.py)."""
    if properties is None:
        return None
    if not isinstance(properties, list):
        return _unreadable_value("the property 'singleValueExtendedProperties'", "a collection")
    for item in properties:
        if not isinstance(item, dict):
            return _unreadable_value("the property 'singleValueExtendedProperties'", "an object")
        for name in item:
            if name not in ("id", "value"):
                return _unknown_property(name, "microsoft.graph.singleValueLegacyExtendedProperty")
        for name in ("id", "value"):
            if not isinstance(item.get(name), str):
                return _unreadable_value(f"the property '{name}'", "a string")
    return None


def _read_recipients(key: str, value: Any) -> _Problem | None:
    if value is None:
        return None
    single = key in ("from", "sender")
    if not single and not isinstance(value, list):
        return _unreadable_value(f"the property '{key}'", "a collection")
    for item in [value] if single else value:
        if not isinstance(item, dict):
            return _unreadable_value(f"the property '{key}'", "an object of type 'microsoft.graph.recipient'")
        for name in item:
            if name != "emailAddress":
                return _unknown_property(name, "microsoft.graph.recipient")
        address = item.get("emailAddress")
        if address is None:
            continue
        if not isinstance(address, dict):
            return _unreadable_value("the property 'emailAddress'", "an object")
        for name in address:
            if name not in ("address", "name"):
                return _unknown_property(name, "microsoft.graph.emailAddress")
    return None


def _read_attachment(attachment: Any) -> _Problem | None:
    if not isinstance(attachment, dict):
        return _unreadable_value("the property 'attachments'", "an object")
    odata_type = attachment.get("@odata.type")
    if odata_type is None:
        # Without @odata.type Graph reads the abstract base type, which has no contentBytes.
        base_properties = ("id", "name", "contentType", "size", "isInline", "lastModifiedDateTime")
        extra = next((key for key in attachment if key not in base_properties), None)
        if extra is not None:
            return _unknown_property(extra, "microsoft.graph.attachment")
        return 422, "UnprocessableType", "Cannot process input of abstract type 'microsoft.graph.attachment'"
    if not isinstance(odata_type, str) or odata_type.lower().lstrip("#") != _FILE_ATTACHMENT_TYPE.lstrip("#"):
        message = (
            f'Invalid OData type specified: "{odata_type}". The emulator accepts #microsoft.graph.fileAttachment only.'
        )
        return 400, "RequestBodyRead", message
    for key in attachment:
        if key not in _FILE_ATTACHMENT_PROPERTIES:
            return _unknown_property(key, "microsoft.graph.fileAttachment")
    content = attachment.get("contentBytes")
    if content is not None:
        try:
            if not isinstance(content, str):
                raise ValueError("contentBytes is not a string")
            base64.b64decode(content, validate=True)
        except (ValueError, binascii.Error):
            shown = content if isinstance(content, str) and len(content) <= 40 else str(content)[:40] + "..."
            return (
                400,
                "RequestBodyRead",
                f"Cannot convert the literal '{shown}' to the expected type 'Edm.Binary'.",
            )
    return None


def _exchange_checks(message: dict[str, Any], mailbox: _Mailbox) -> _Problem | None:
    """What Exchange refuses once the message is read: extended properties, headers, attachments, recipients,
    send-as."""
    problem = check_extended_properties(message.get("singleValueExtendedProperties") or [])
    if problem is not None:
        return problem
    headers = message.get("internetMessageHeaders") or []
    if len(headers) > 5:
        # Graph's answer as reported by SDK users (msgraph-sdk-dotnet#2208) and in production use.
        message_text = "The number of internet message headers is invalid: it should be less or equal to 5."
        return 400, "InvalidInternetMessageHeaderCollection", message_text
    for header in headers:
        name = header.get("name")
        if not isinstance(name, str) or not name.lower().startswith("x-"):
            message_text = f"The internet message header name '{name}' should start with 'x-' or 'X-'."
            return 400, "InvalidInternetMessageHeader", message_text
    for attachment in message.get("attachments") or []:
        if not attachment.get("name") or attachment.get("contentBytes") is None:
            return 400, "ErrorRequiredPropertyMissing", "Required property is missing."
    count = 0
    for key in _RECIPIENT_LISTS:
        for recipient in message.get(key) or []:
            address = (recipient.get("emailAddress") or {}).get("address")
            if not isinstance(address, str) or not _SMTP_ADDRESS.match(address.strip()):
                message_text = (
                    f"At least one recipient is not valid., Recipient '{address or ''}' is not resolved. All "
                    "recipients must be resolved before a message can be submitted."
                )
                return 400, "ErrorInvalidRecipients", message_text
            if key != "replyTo":
                count += 1
    if count == 0:
        message_text = (
            "At least one recipient is not valid., A message can't be sent because it contains no recipients."
        )
        return 400, "ErrorInvalidRecipients", message_text
    for key in ("from", "sender"):
        address = ((message.get(key) or {}).get("emailAddress") or {}).get("address")
        if address is not None and str(address).strip().lower() != mailbox.address.lower():
            message_text = (
                "The user account which was used to submit this request does not have the right to send mail "
                "on behalf of the specified sending account., Cannot submit message."
            )
            return 403, "ErrorSendAsDenied", message_text
    return None
