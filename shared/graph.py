"""Microsoft Graph's sendMail: the request body (a pure function) and one small HTTP client.

Not the Graph SDK: msgraph-sdk is hundreds of MB and over a second of cold import, for one POST.
`requests` (which MSAL already depends on) with urllib3's Retry does the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import quote

if TYPE_CHECKING:
    import requests

    from shared.contract import Attachment, Recipient, SendRequest

FILE_ATTACHMENT: Final = "#microsoft.graph.fileAttachment"


def _recipients(recipients: list[Recipient]) -> list[dict[str, Any]]:
    out = []
    for r in recipients:
        address: dict[str, str] = {"address": r.address}
        if r.name:
            address["name"] = r.name
        out.append({"emailAddress": address})
    return out


def build_send_mail_body(
    req: SendRequest, mark: str | None = None, stored: Mapping[str, bytes] | None = None
) -> dict[str, Any]:
    """The JSON body of POST /users/{from}/sendMail for a valid send request (Graph's `message` resource).

    `mark` (shared/status.py) goes in a single-value extended property, the same on every try of the
    request, so that the relay can find the message in the sender's Sent Items after an unknown outcome.
    `stored` holds the bytes of the request's claim checks, by blob name (read and checked by the caller).
    """
    stored = stored or {}
    message = build_message(req, mark, stored)
    if req.attachments:
        message["attachments"] = [file_attachment(a, stored.get(a.blob) if a.blob else None) for a in req.attachments]
    return {"message": message, "saveToSentItems": req.save_to_sent_items}


def build_message(req: SendRequest, mark: str | None, stored: Mapping[str, bytes]) -> dict[str, Any]:
    """Graph's `message` for the request, without its attachments: sendMail's, or a draft's (which gets its
    attachments one by one)."""
    body = req.body
    if body.blob is None:
        content = body.content
    elif body.blob in stored:
        content = stored[body.blob].decode("utf-8")
    else:  # `mailrelay validate`: shown, never sent (the relay reads every claim check before it builds a body)
        content = f"(claim check: {body.size} bytes from blob {body.blob})"
    message: dict[str, Any] = {
        "subject": req.subject,
        "body": {"contentType": body.content_type, "content": content},
        "toRecipients": _recipients(req.to),
    }
    # Only what the request sets, so the posted JSON stays minimal and readable in `mailrelay validate`.
    if req.cc:
        message["ccRecipients"] = _recipients(req.cc)
    if req.bcc:
        message["bccRecipients"] = _recipients(req.bcc)
    if req.reply_to:
        message["replyTo"] = _recipients(req.reply_to)
    if req.importance != "normal":
        message["importance"] = req.importance
    if req.headers:
        message["internetMessageHeaders"] = [{"name": k, "value": v} for k, v in req.headers.items()]
    if mark:
        from shared.status import MARK_PROPERTY_ID

        message["singleValueExtendedProperties"] = [{"id": MARK_PROPERTY_ID, "value": mark}]
    return message


def file_attachment(a: Attachment, data: bytes | None = None) -> dict[str, Any]:
    """A fileAttachment: inline base64 from the request, or `data`, a claim check's bytes."""
    import base64

    attachment: dict[str, Any] = {
        "@odata.type": FILE_ATTACHMENT,
        "name": a.name,
        "contentType": a.content_type,
        "contentBytes": a.content_bytes if data is None else base64.b64encode(data).decode("ascii"),
    }
    if data is None and a.content_bytes is None:  # `mailrelay validate`, as for the body above
        attachment["contentBytes"] = f"(claim check: {a.size} bytes from blob {a.blob})"
    if a.is_inline:  # an inline image: the HTML body names it as cid:<contentId>
        attachment["isInline"] = True
        attachment["contentId"] = a.content_id
    return attachment


@dataclass(frozen=True)
class GraphReply:
    status: int
    error: Any  # parsed JSON error body, or None
    retry_after: str | None
    request_id: str | None
    client_request_id: str | None = None  # the id the relay sent, echoed by Graph: both go in the status record
    value: Any = None  # a successful GET's JSON body
    elapsed_ms: float = 0.0  # how long the call took, request to answer (set by the caller: shared/sending.py)


def upload_item(a: Attachment) -> dict[str, Any]:
    """The AttachmentItem of createUploadSession for a large attachment
    (https://learn.microsoft.com/graph/api/attachment-createuploadsession)."""
    item: dict[str, Any] = {
        "attachmentType": "file",
        "name": a.name,
        "size": a.byte_size,
        "contentType": a.content_type,
    }
    if a.is_inline:
        item["isInline"] = True
        item["contentId"] = a.content_id
    return item


class MailSender(Protocol):
    def send_mail(self, sender: str, body: Mapping[str, Any], token: str) -> GraphReply: ...

    def find_sent(self, sender: str, mark: str, token: str) -> GraphReply: ...


class DraftSender(Protocol):
    """Graph's large-message flow: a draft, its attachments (large ones through an upload session), then send.
    Every call but the upload needs Mail.ReadWrite in the app's Exchange scope; the send needs Mail.Send."""

    def create_draft(self, sender: str, message: Mapping[str, Any], token: str) -> GraphReply: ...

    def add_attachment(self, sender: str, draft_id: str, attachment: Mapping[str, Any], token: str) -> GraphReply: ...

    def create_upload_session(self, sender: str, draft_id: str, item: Mapping[str, Any], token: str) -> GraphReply: ...

    def upload_range(self, url: str, data: bytes, start: int, total: int) -> GraphReply: ...

    def create_mime_draft(self, sender: str, mime: bytes, token: str) -> GraphReply: ...

    def mark_message(self, sender: str, message_id: str, mark: str, token: str) -> GraphReply: ...

    def send_draft(self, sender: str, draft_id: str, token: str) -> GraphReply: ...

    def delete_message(self, sender: str, message_id: str, token: str) -> GraphReply: ...

    def find_drafts(self, sender: str, mark: str, token: str) -> GraphReply: ...


class GraphClient:
    """POSTs sendMail. Connection failures raise `requests` exceptions; HTTP answers come back as replies."""

    def __init__(self, session: requests.Session, base_url: str, timeout: float = 30.0):
        self._session = session
        self._base_url = base_url.rstrip("/")
        # (connect, read): a connect timeout proves nothing was sent; a read timeout (GRAPH_TIMEOUT_SECONDS)
        # leaves the send's outcome unknown.
        self._timeout = (min(5.0, timeout), timeout)

    def _headers(self, token: str) -> dict[str, str]:
        import uuid

        # Graph echoes client-request-id and logs it with its own request-id: the pair is what Microsoft
        # support asks for (https://learn.microsoft.com/graph/best-practices-concept, "Reliability and support").
        return {"Authorization": f"Bearer {token}", "client-request-id": str(uuid.uuid4())}

    def send_mail(self, sender: str, body: Mapping[str, Any], token: str) -> GraphReply:
        url = f"{self._base_url}/v1.0/users/{quote(sender, safe='@')}/sendMail"
        response = self._session.post(url, json=body, headers=self._headers(token), timeout=self._timeout)
        return _reply(response)

    def _user(self, sender: str) -> str:
        return f"{self._base_url}/v1.0/users/{quote(sender, safe='@')}"

    def _post(self, url: str, body: Mapping[str, Any] | None, token: str) -> GraphReply:
        response = self._session.post(url, json=body, headers=self._headers(token), timeout=self._timeout)
        return _reply(response)

    def create_draft(self, sender: str, message: Mapping[str, Any], token: str) -> GraphReply:
        """POST /users/{id}/messages: a draft in the sender's Drafts (https://learn.microsoft.com/graph/api/user-post-messages)."""
        return self._post(f"{self._user(sender)}/messages", message, token)

    def add_attachment(self, sender: str, draft_id: str, attachment: Mapping[str, Any], token: str) -> GraphReply:
        """POST /users/{id}/messages/{id}/attachments: one attachment under 3 MB."""
        return self._post(f"{self._user(sender)}/messages/{quote(draft_id, safe='')}/attachments", attachment, token)

    def create_upload_session(self, sender: str, draft_id: str, item: Mapping[str, Any], token: str) -> GraphReply:
        """POST .../attachments/createUploadSession: where to PUT a large attachment's byte ranges."""
        url = f"{self._user(sender)}/messages/{quote(draft_id, safe='')}/attachments/createUploadSession"
        return self._post(url, {"AttachmentItem": item}, token)

    def upload_range(self, url: str, data: bytes, start: int, total: int) -> GraphReply:
        """PUT one byte range to an upload session. The URL is pre-authenticated, and the doc says to send no
        Authorization header with it (https://learn.microsoft.com/graph/outlook-large-attachments, step 2)."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}",
        }
        response = self._session.put(url, data=data, headers=headers, timeout=self._timeout)
        return _reply(response)

    def create_mime_draft(self, sender: str, mime: bytes, token: str) -> GraphReply:
        """POST /users/{id}/messages with MIME: "Content-Type: text/plain" and the MIME base64-encoded as the body;
        Graph takes the recipients from the MIME's To, CC and BCC headers and answers 201 with the draft
        (https://learn.microsoft.com/graph/api/user-post-messages, "Request body" and Example 3)."""
        import base64

        headers = {**self._headers(token), "Content-Type": "text/plain"}
        response = self._session.post(
            f"{self._user(sender)}/messages", data=base64.b64encode(mime), headers=headers, timeout=self._timeout
        )
        return _reply(response)

    def mark_message(self, sender: str, message_id: str, mark: str, token: str) -> GraphReply:
        """PATCH the message with the relay's mark, a single-value extended property: the documented way to add one
        to an existing message (https://learn.microsoft.com/graph/api/singlevaluelegacyextendedproperty-post-singlevalueextendedproperties,
        "PATCH /users/{id}/messages/{id}"). A MIME draft cannot carry it at creation: the body is the MIME alone."""
        from shared.status import MARK_PROPERTY_ID

        url = f"{self._user(sender)}/messages/{quote(message_id, safe='')}"
        body = {"singleValueExtendedProperties": [{"id": MARK_PROPERTY_ID, "value": mark}]}
        response = self._session.patch(url, json=body, headers=self._headers(token), timeout=self._timeout)
        return _reply(response)

    def send_draft(self, sender: str, draft_id: str, token: str) -> GraphReply:
        """POST /users/{id}/messages/{id}/send: 202, and the draft goes to Sent Items
        (https://learn.microsoft.com/graph/api/message-send)."""
        return self._post(f"{self._user(sender)}/messages/{quote(draft_id, safe='')}/send", None, token)

    def delete_message(self, sender: str, message_id: str, token: str) -> GraphReply:
        url = f"{self._user(sender)}/messages/{quote(message_id, safe='')}"
        response = self._session.delete(url, headers=self._headers(token), timeout=self._timeout)
        return _reply(response)

    def find_drafts(self, sender: str, mark: str, token: str) -> GraphReply:
        """The messages marked `mark` in the sender's Drafts: drafts a failed try left, or a sent one still waiting
        there for Exchange's transport (https://learn.microsoft.com/graph/outlook-things-to-know-about-send-mail).
        `isDraft` tells them apart: "A message is a draft if it hasn't been sent yet"
        (https://learn.microsoft.com/graph/api/resources/message)."""
        return self._find(sender, "drafts", mark, token, top=10, select="id,isDraft")

    def find_sent(self, sender: str, mark: str, token: str) -> GraphReply:
        """Look for the message marked `mark` in the sender's Sent Items.

        The $filter on a single-value extended property is the form of
        https://learn.microsoft.com/graph/api/singlevaluelegacyextendedproperty-get ; it needs the application
        permission Mail.Read (Mail.ReadBasic excludes extended properties), scoped by Exchange like Mail.Send.
        The mark is hex digits, so it needs no escaping inside the quotes.
        """
        return self._find(sender, "sentitems", mark, token, top=1)

    def _find(
        self, sender: str, folder: str, mark: str, token: str, top: int, select: str = "id,sentDateTime"
    ) -> GraphReply:
        from shared.status import MARK_PROPERTY_ID

        url = f"{self._user(sender)}/mailFolders/{folder}/messages"
        query = f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARK_PROPERTY_ID}' and ep/value eq '{mark}')"
        response = self._session.get(
            url,
            params={"$filter": query, "$select": select, "$top": str(top)},
            headers=self._headers(token),
            timeout=self._timeout,
        )
        return _reply(response)

    def read_inbox(self, mailbox: str, token: str) -> GraphReply:
        """GET the mailbox's inbox id: needs a read permission, and Exchange scopes it as it scopes sendMail,
        so `mailrelay doctor` probes the scope with it without sending anything."""
        url = f"{self._base_url}/v1.0/users/{quote(mailbox, safe='@')}/mailFolders/inbox"
        response = self._session.get(
            url, params={"$select": "id"}, headers={"Authorization": f"Bearer {token}"}, timeout=self._timeout
        )
        return _reply(response)


def _reply(response: requests.Response) -> GraphReply:
    """Graph's answer as the relay reads it: the status, the JSON error body if any, Retry-After, request-id."""
    error: Any = None
    value: Any = None
    if response.content:
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        if response.status_code >= 300:
            error = parsed
        else:
            value = parsed
    return GraphReply(
        status=response.status_code,
        error=error,
        retry_after=response.headers.get("Retry-After"),
        request_id=response.headers.get("request-id"),
        client_request_id=response.headers.get("client-request-id")
        or getattr(getattr(response, "request", None), "headers", {}).get("client-request-id"),
        value=value,
    )


def http_session(ca_bundle: str | None) -> requests.Session:
    """One pooled session for Entra and Graph.

    urllib3 retries connection failures only: nothing reached the server, so a POST is safe to repeat.
    Read timeouts and 429/5xx are not retried here: a sendMail that timed out may have been accepted,
    and a long Retry-After must not hold a worker; the queue retries those later instead.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    # REQUESTS_CA_BUNDLE (set on many machines) would override `verify` per request; the relay's
    # trust comes from its own settings only.
    session.trust_env = False
    session.verify = ca_bundle or True
    retry = Retry(total=3, connect=3, read=0, status=0, other=0, backoff_factor=0.5, raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=8)
    session.mount("https://", adapter)
    return session
