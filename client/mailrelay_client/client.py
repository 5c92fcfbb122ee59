"""MailClient: put a send request on the relay's queue, encoded as the relay reads it.

Why use it rather than the Storage SDK directly:
- it checks the request against the relay's contract (`ContractError` lists every broken rule), so a bad
  request fails in the app, at once, instead of in the dead-letter queue later;
- it base64-encodes the JSON, as the relay's host.json (`messageEncoding`) expects. The Python queue SDK
  sends text unencoded by default, and the host then refuses the message: the classic pitfall;
- it stores what does not fit in a queue message (large attachments, a long body) as blobs in the relay's
  `mail-payloads` container (an app's own, `mail-payloads-<app>`, with `app=`), and the request names them (a claim
  check: blob, size, SHA-256); files given to
  `send(..., files=[File(path)])` are streamed from disk, never held whole in memory;
- a request with `sendAt` is enqueued visible at once: the relay records it `scheduled` (so `status()` and
  `mailrelay status` show it, with its notBefore, and an app's maxScheduled counts it) and holds it on its own
  retry queue until then. A sendAt is checked here first: not in the past, at most 7 days ahead;
- messages never expire (time-to-live -1): a mail waiting out an outage must not vanish after 7 days;
- with `app=NAME` it enqueues on that app's own queue, `<outbox>-<NAME>` (the relay's docs/apps.md): the queue
  is the app's identity, so the relay judges the request by that app's senders and ids.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import mimetypes
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

DEFAULT_QUEUE_NAME: Final = "mail-outbox"
# Apps (the relay's shared/apps.py, copied: the client is its own distribution and must not import the relay; a
# test holds the two to the same answers). The outbox itself is the implicit app "default".
DEFAULT_APP: Final = "default"
_RESERVED_APPS: Final = frozenset({DEFAULT_APP, "retry", "poison", "retry-poison"})
_APP_NAME: Final = re.compile(r"^[a-z](?:[a-z0-9]|-(?=[a-z0-9])){1,23}$")


def app_queue(queue_name: str, app: str) -> str:
    """The queue of `app`: the outbox itself for the default app, else `<outbox>-<app>` (shared.apps.app_queue)."""
    return queue_name if app == DEFAULT_APP else f"{queue_name}-{app}"


def _app_name(app: str | None) -> str:
    """`app` checked against the relay's naming rule (None: the default app, the outbox)."""
    if app is None or app == DEFAULT_APP:
        return DEFAULT_APP
    if not isinstance(app, str) or not _APP_NAME.match(app) or app in _RESERVED_APPS:
        raise ValueError(
            f"app must be a declared app's name (2 to 24 lower-case letters, digits and single hyphens, starting "
            f"with a letter), got {str(app)[:40]!r}"
        )
    return app
# Azure Storage queues hold at most 64 KiB per message. The relay's messages are base64 (ASCII), so
# characters and bytes agree: 65,536 characters of base64, about 48 KiB of JSON.
MAX_MESSAGE_BYTES: Final = 64 * 1024
# The relay puts a request back on the queue wrapped with its retry state after a transient failure (the
# wrapper adds up to 2 KiB; the relay's tests hold it to that): requests leave that room, so a retry of one
# always fits beside it on the queue.
RELAY_OVERHEAD_BYTES: Final = 2 * 1024
MAX_REQUEST_BYTES: Final = MAX_MESSAGE_BYTES - RELAY_OVERHEAD_BYTES
PAYLOAD_CONTAINER: Final = "mail-payloads"


def payload_container(app: str) -> str:
    """Where an app puts its claim-checked payloads: its own container, the shared one for the default app
    (shared.payloads.payload_container: the relay reads an app's payloads from there only)."""
    return PAYLOAD_CONTAINER if app == DEFAULT_APP else f"{PAYLOAD_CONTAINER}-{app}"
# A file up to this size travels inline in the request; a larger one is stored as a blob (a claim check), so a
# request with a few attachments never comes near the queue's limit.
INLINE_FILE_BYTES: Final = 16 * 1024
# Blocks of 4 MiB: the SDK reads and sends a file block by block instead of reading it whole for one request.
_BLOCK_BYTES: Final = 4 * 1024 * 1024
# The relay holds a scheduled request on its retry queue, and a queue message can be hidden 7 days at most (its
# visibility timeout); a sendAt a few minutes in the past is clock skew, and is sent at once.
MAX_SEND_AT_AHEAD: Final = timedelta(days=7)
SEND_AT_TOLERANCE: Final = timedelta(minutes=5)


@dataclass(frozen=True)
class File:
    """A file to attach, read from disk when the request is sent: inline if small, else streamed to a blob.
    With `content_id` it is an inline image, shown by an HTML body as <img src="cid:CONTENT_ID">."""

    path: Path | str
    name: str | None = None
    content_type: str | None = None
    content_id: str | None = None

    @property
    def file_name(self) -> str:
        return self.name or Path(self.path).name

    @property
    def mime_type(self) -> str:
        return self.content_type or mimetypes.guess_type(self.file_name)[0] or "application/octet-stream"


class RequestTooLarge(ValueError):
    """The encoded request does not fit in one queue message. Says the size, never the content."""

    def __init__(self, size: int, limit: int = MAX_REQUEST_BYTES) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the request is {size:,} bytes once base64-encoded; a request may take at most {limit:,} of a "
            f"queue message's {MAX_MESSAGE_BYTES:,} (about {limit * 3 // 4 // 1024} KiB of JSON; the relay "
            "keeps the rest for its retry state), even with its attachments and body stored as blobs: "
            "shorten the recipient lists or headers"
        )


class SendAtRefused(ValueError):
    """`sendAt` is in the past (beyond a few minutes of clock skew) or more than 7 days ahead."""


class QueueNotFound(RuntimeError):
    """The relay's queue does not exist on this storage account (wrong account or queue name)."""


class _QueueSender(Protocol):
    """The part of azure.storage.queue.QueueClient that the client uses."""

    def send_message(self, content: Any, **kwargs: Any) -> Any: ...


class MailClient:
    """Sends requests to the relay's queue (an app's own with `app=`). Thread-safe as the underlying QueueClient is."""

    app: str  # whose queue this client enqueues on: DEFAULT_APP for the outbox

    def __init__(self, queue_url: str, credential: Any = None, app: str | None = None) -> None:
        """`queue_url`: https://<account>.queue.core.windows.net/<queue>; `credential`: e.g.
        azure.identity.DefaultAzureCredential(), or a SAS token / account key the SDK accepts. `app`: the app
        whose queue to use, `<queue>-<app>` beside the outbox the URL names (None: the outbox itself)."""
        from urllib.parse import urlsplit, urlunsplit

        from azure.storage.queue import QueueClient

        self.app = _app_name(app)
        if self.app != DEFAULT_APP:
            parts = urlsplit(queue_url)
            outbox = parts.path.rstrip("/")
            if outbox.endswith(f"-{self.app}"):
                raise ValueError(
                    f"queue_url already names app {self.app!r}'s queue: give the outbox's URL with app=, or the app's "
                    "queue URL without it"
                )
            queue_url = urlunsplit(parts._replace(path=app_queue(outbox, self.app)))

        if queue_url.lower().startswith("http://") and hasattr(credential, "get_token"):
            # The Azure SDK refuses token credentials over plain http ("Token credential is only supported
            # with HTTPS"): say what works instead. Azurite (the local stack) takes its connection string.
            raise ValueError(
                "a token credential needs an https:// queue URL; against the local stack (Azurite, http://) use "
                "MailClient.from_connection_string(<the connection string `mailrelay local` prints>)"
            )
        self._queue: _QueueSender = QueueClient.from_queue_url(queue_url, credential=credential)
        self._status_table: Any = _table_from_queue_url(queue_url, credential)
        self._payloads: Any = _container_from_queue_url(queue_url, credential)

    @classmethod
    def from_connection_string(
        cls, conn_str: str, queue_name: str = DEFAULT_QUEUE_NAME, app: str | None = None
    ) -> MailClient:
        """`queue_name`: the relay's outbox (MAIL_QUEUE_NAME); `app`: the app whose queue to use, `<outbox>-<app>`
        (None: the outbox itself)."""
        from azure.storage.queue import QueueClient

        name = _app_name(app)
        queue = QueueClient.from_connection_string(conn_str, app_queue(queue_name, name))
        client = cls.from_queue_client(queue, app=name)
        client._status_table = ("connection-string", conn_str)
        client._payloads = ("connection-string", conn_str)
        return client

    @classmethod
    def from_queue_client(
        cls, queue_client: _QueueSender, status_table: Any = None, payloads: Any = None, app: str | None = None
    ) -> MailClient:
        """Wrap a QueueClient the app configured itself (retry policy, proxies, ...), on its own queue; `status_table`,
        an azure.data.tables.TableClient for the app's status table (`mailstatus`, or its own: status.status_table), if
        the app reads status; `payloads`,
        an azure.storage.blob.ContainerClient for the relay's `mail-payloads` container, if the app sends
        anything too large for a queue message. `app`: whose queue it is (status() reads that app's records)."""
        client = cls.__new__(cls)
        client.app = _app_name(app)
        client._queue = queue_client
        client._status_table = status_table
        client._payloads = payloads
        return client

    def status(self, key: str, sender: str | None = None) -> dict[str, Any] | None:
        """What became of a request: its status record (state, attempts, last error and hint, times, Graph's
        request ids), or None. `key` is the request's `id`, or the message id `send` returned for a request
        without one: ids are per app, so this client's app's record, from its app's table (`mailstatus`, or a
        declared app's own `mailstatus<app without hyphens>`). Needs the `status` extra and Storage Table Data
        Reader on that table.
        """
        from mailrelay_client.status import read_status

        return read_status(self._table(), key, sender, self.app)

    def _table(self) -> Any:
        from mailrelay_client.status import status_table

        try:
            from azure.data.tables import TableClient
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "status() needs azure-data-tables: pip install 'graph-mail-relay-client[status]'"
            ) from None
        table = self._status_table
        if table is None:
            raise ValueError("this client was built from a QueueClient: pass status_table= to read status")
        if isinstance(table, tuple) and table[0] == "connection-string":
            table = TableClient.from_connection_string(table[1], status_table(self.app))
        elif isinstance(table, tuple):
            _, endpoint, credential = table
            table = TableClient(endpoint, status_table(self.app), credential=credential)
        self._status_table = table
        return table

    def send(self, request: Mapping[str, Any], files: Sequence[File | Path | str] = ()) -> str:
        """Validate, encode and enqueue one request, with `files` attached; return the queue message id.

        Files over 16 KiB, and any attachment or body that would push the message over the queue's limit, are
        stored as blobs in the relay's `mail-payloads` container first (Storage Blob Data Contributor on it).
        A request with `sendAt` is enqueued visible at once, like any other: the relay records it `scheduled` at
        once (status() finds it under its key) and sends it at that time.

        Raises ContractError (the request breaks the contract), RequestTooLarge, SendAtRefused, QueueNotFound,
        OSError (a file cannot be read), or the Azure SDK's errors for anything the service refuses. Blobs
        stored for a request that could not be enqueued are deleted again.
        """
        check_files(request, files)  # every rule before any upload: a bad request stores nothing
        _check_send_at(request.get("sendAt"))

        def prepare(stored: list[str]) -> str:
            prepared = dict(request)
            if files:
                attachments = list(prepared.get("attachments") or [])
                attachments += [self._file_attachment(_as_file(f), stored) for f in files]
                prepared["attachments"] = attachments
            return self._fit(prepared, stored)

        return self._store_then_enqueue(prepare)

    def send_mime(
        self,
        mime: bytes,
        sender: str,
        *,
        to: Sequence[Any] = (),
        cc: Sequence[Any] = (),
        bcc: Sequence[Any] = (),
        id: str | None = None,  # the request's own field name
        send_at: str | None = None,
    ) -> str:
        """Send a MIME message as is (docs/mime.md); return the queue message id.

        `to`, `cc` and `bcc` are the envelope: who receives it. The relay refuses a MIME whose To, Cc or Bcc headers
        name anyone the envelope lacks, and adds the envelope's other recipients as Bcc (never written into the
        headers others see). The MIME is stored as a claim-checked payload of the app (its blob, size and SHA-256)
        before the request is enqueued; a request that was not enqueued has its blob deleted again.

        Raises ContractError (the MIME or the envelope breaks the contract, before anything is stored), RequestTooLarge,
        SendAtRefused, QueueNotFound, or the Azure SDK's errors.
        """
        from mailrelay_client.validation import ContractError, Violation, envelope_problem, validate

        if not isinstance(mime, bytes | bytearray):
            raise TypeError(f"send_mime takes the MIME message's bytes, not {type(mime).__name__}")
        data = bytes(mime)
        request: dict[str, Any] = {"from": sender}
        for name, values in (("to", to), ("cc", cc), ("bcc", bcc)):
            if values:
                request[name] = list(values)
        if id is not None:
            request["id"] = id
        if send_at is not None:
            request["sendAt"] = send_at
        # Every rule, the MIME's own included, before anything is stored: inline, it is checked whole.
        validate({**request, "mime": {"contentBytes": base64.b64encode(data).decode("ascii")}})
        problem = envelope_problem(data, sender, [_address(r) for r in (*to, *cc, *bcc)])
        if problem:
            raise ContractError([Violation("mime", problem[1])])
        _check_send_at(send_at)
        # With an id, the blob's name comes from the app, the id and the MIME: a caller that retries after an enqueue
        # that may have happened (an SMTP device after a 451) builds the very same request, which the relay then knows
        # as the same one (its fingerprint) and sends once, instead of refusing a second request under the id
        # (DuplicateKey). Without an id, every call is a new mail, with a fresh name.
        name = _blob_name("message.eml", _payload_key(self.app, id, data) if id is not None else None)

        def prepare(stored: list[str]) -> str:
            request["mime"] = self._store_bytes("message.eml", data, stored, name)
            return encode_request(request)

        return self._store_then_enqueue(prepare)

    def _store_then_enqueue(self, prepare: Callable[[list[str]], str]) -> str:
        """Store a request's payloads and build its queue text (`prepare`, which lists each blob it stored), then
        enqueue it; the queue message's id. When it raises, the blobs go again unless the enqueue may have happened
        (_forget)."""
        stored: list[str] = []
        attempted = False  # the enqueue was tried: it may have happened even if it raised
        try:
            text = prepare(stored)
            attempted = True
            message = self._enqueue(text)
        except BaseException as exc:
            self._forget(stored, exc if attempted else None)
            raise
        return str(message.id)

    def _enqueue(self, text: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            # time_to_live=-1: never expires; the service default (7 days) would drop mail silently. No
            # visibility_timeout, even with a sendAt: a request hidden until its time is one the relay cannot
            # see, so status() would answer "no record" and the app's maxScheduled would not count it until
            # then. Visible, it is recorded `scheduled` at once and held on the relay's retry queue.
            return self._queue.send_message(text, time_to_live=-1)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "QueueNotFound":
                if self.app != DEFAULT_APP:
                    raise QueueNotFound(
                        f"app {self.app!r}'s queue does not exist on this storage account: is the app declared "
                        "(MAILRELAY_APPS; `mailrelay local --app NAME=SENDER`), and the outbox's name right "
                        "(MAIL_QUEUE_NAME, default mail-outbox)?"
                    ) from None
                raise QueueNotFound(
                    "the relay's queue does not exist on this storage account: check the queue name "
                    "(MAIL_QUEUE_NAME, default mail-outbox) and the account"
                ) from None
            raise

    # --- Claim checks -----------------------------------------------------------------------------------

    def _fit(self, request: dict[str, Any], stored: list[str]) -> str:
        """The queue text of `request`, moving its largest inline parts to blobs until it fits."""
        try:
            return encode_request(request)
        except RequestTooLarge:
            # What cannot move (recipients, subject, headers) may be too large by itself: say so before storing.
            encode_request(_claim_checked(request))
        while True:
            try:
                return encode_request(request)
            except RequestTooLarge:
                if not self._offload_largest(request, stored):
                    raise

    def _offload_largest(self, request: dict[str, Any], stored: list[str]) -> bool:
        """Store the largest inline attachment, or else an inline body, as a blob; False if nothing is left."""
        attachments = list(request.get("attachments") or [])
        inline = [(len(a.get("contentBytes") or ""), i) for i, a in enumerate(attachments) if "contentBytes" in a]
        if inline:
            _, index = max(inline)
            part = dict(attachments[index])
            data = base64.b64decode(part.pop("contentBytes"))
            part.update(self._store_bytes(part.get("name") or "attachment", data, stored))
            attachments[index] = part
            request["attachments"] = attachments
            return True
        body = request.get("body")
        if isinstance(body, Mapping) and isinstance(body.get("content"), str):
            data = body["content"].encode("utf-8")
            moved = {k: v for k, v in body.items() if k != "content"}
            request["body"] = {**moved, **self._store_bytes("body", data, stored)}
            return True
        return False

    def _file_attachment(self, file: File, stored: list[str]) -> dict[str, Any]:
        path = Path(file.path)
        attachment: dict[str, Any] = {"name": file.file_name, "contentType": file.mime_type}
        if file.content_id:
            attachment.update(isInline=True, contentId=file.content_id)
        size = path.stat().st_size
        if size <= INLINE_FILE_BYTES:
            attachment["contentBytes"] = base64.b64encode(path.read_bytes()).decode("ascii")
            return attachment
        # Two passes, neither holding the file: the hash, then the upload, block by block.
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1024 * 1024), b""):
                digest.update(block)
        name = _blob_name(file.file_name)
        with path.open("rb") as f:
            self._upload(name, f, size)
        stored.append(name)
        attachment.update(blob=name, size=size, sha256=digest.hexdigest())
        return attachment

    def _store_bytes(self, label: str, data: bytes, stored: list[str], name: str | None = None) -> dict[str, Any]:
        """Upload `data` (under `name`, a name derived from its content and id, or a fresh one). A derived name that
        exists already holds these bytes from an earlier try: it is used as it is, and not this call's to delete."""
        from azure.core.exceptions import ResourceExistsError

        blob = name or _blob_name(label)
        try:
            self._upload(blob, data, len(data))
            stored.append(blob)
        except ResourceExistsError:
            if name is None:
                raise
        return {"blob": blob, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def _upload(self, name: str, data: Any, size: int) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        container = self._container()
        try:
            container.upload_blob(name, data, length=size, overwrite=False)
        except ResourceNotFoundError:
            # infra/ creates the container in Azure (apps may not create one); the local stack's Azurite may not
            # have it yet.
            with contextlib.suppress(ResourceExistsError):
                container.create_container()
            if hasattr(data, "seek"):
                data.seek(0)
            container.upload_blob(name, data, length=size, overwrite=False)

    def _forget(self, stored: list[str], enqueue_error: BaseException | None = None) -> None:
        """Delete the blobs of a request that was not enqueued (best effort; the relay's retention gets the rest).

        `enqueue_error`: the enqueue itself raised. Then the blobs are deleted only when the service refused it (a
        4xx, or the queue is missing): a timeout or a dropped connection may come after the queue took the message
        (and the SDK's own retries may have sent it again), and deleting its payload would turn a request that is on
        the queue into a PayloadMissing dead letter. Kept, an orphan blob costs storage until the relay's
        PAYLOAD_RETENTION_DAYS; the caller's retry of the same request (the same id) is sent once."""
        if not stored or (enqueue_error is not None and not _refused(enqueue_error)):
            return
        with contextlib.suppress(Exception):  # the original error is the one to raise
            container = self._container()
            for name in stored:
                container.delete_blob(name)

    def _container(self) -> Any:
        from azure.storage.blob import ContainerClient

        container = self._payloads
        options: dict[str, Any] = {"max_single_put_size": _BLOCK_BYTES, "max_block_size": _BLOCK_BYTES}
        if container is None:
            raise ValueError(
                "this request needs the relay's mail-payloads container (an attachment or body too large for a "
                "queue message): build the client with MailClient(queue_url, credential) or "
                "from_connection_string, or pass payloads=<ContainerClient> to from_queue_client"
            )
        name = payload_container(self.app)
        if isinstance(container, tuple) and container[0] == "connection-string":
            container = ContainerClient.from_connection_string(container[1], name, **options)
        elif isinstance(container, tuple):
            _, endpoint, credential = container
            container = ContainerClient(endpoint, name, credential=credential, **options)
        self._payloads = container
        return container


def _refused(error: BaseException) -> bool:
    """Did the queue service answer this enqueue with a refusal (so the message is certainly not on the queue)?"""
    from azure.core.exceptions import HttpResponseError

    if isinstance(error, QueueNotFound):
        return True
    status = getattr(error, "status_code", None) if isinstance(error, HttpResponseError) else None
    return isinstance(status, int) and 400 <= status < 500 and status != 408


def _address(recipient: Any) -> str:
    """A recipient's address, as the contract writes one: "a@x", "Name <a@x>" or {"address": "a@x", ...}."""
    from email.utils import parseaddr

    if isinstance(recipient, Mapping):
        return str(recipient.get("address", ""))
    return parseaddr(str(recipient))[1] or str(recipient)


_PLACEHOLDER: Final = {"blob": "0" * 32 + "/" + "x" * 40, "size": 0, "sha256": "0" * 64}


def _claim_checked(request: Mapping[str, Any]) -> dict[str, Any]:
    """`request` with every inline attachment and the body as claim checks: the smallest it can become."""
    out = dict(request)
    attachments = [
        {k: v for k, v in a.items() if k != "contentBytes"} | _PLACEHOLDER if "contentBytes" in a else a
        for a in request.get("attachments") or []
    ]
    if attachments:
        out["attachments"] = attachments
    body = request.get("body")
    if isinstance(body, Mapping) and "content" in body:
        out["body"] = {k: v for k, v in body.items() if k != "content"} | _PLACEHOLDER
    return out


def _as_file(item: File | Path | str) -> File:
    return item if isinstance(item, File) else File(item)


def check_files(request: Mapping[str, Any], files: Sequence[File | Path | str] = ()) -> None:
    """Check `request` with `files` attached before anything is uploaded or enqueued: each file stands in as the
    claim check it will become (ContractError; RequestTooLarge if it cannot fit a queue message even with its
    attachments and body stored as blobs; OSError for a file that cannot be read)."""
    from mailrelay_client.validation import validate

    if not isinstance(request, Mapping):
        raise TypeError(f"send takes a mapping (the request's JSON object), not {type(request).__name__}")
    placeholders = []
    for item in files:
        file = _as_file(item)
        size = Path(file.path).stat().st_size
        if not Path(file.path).is_file():
            raise IsADirectoryError(f"{file.path} is not a file")
        placeholder: dict[str, Any] = {
            "name": file.file_name,
            "contentType": file.mime_type,
            "blob": "pending",
            "size": size,
            "sha256": "0" * 64,
        }
        if file.content_id:
            placeholder.update(isInline=True, contentId=file.content_id)
        placeholders.append(placeholder)
    whole = {**request, "attachments": [*(request.get("attachments") or []), *placeholders]} if files else request
    validate(whole)
    # What cannot become a claim check (recipients, subject, headers) must fit in a queue message by itself.
    encode_request(_claim_checked(whole))


def _blob_name(label: str, folder: str | None = None) -> str:
    """A blob name for a payload: a random folder (nobody can guess or overwrite one), or `folder`, and the file's
    name reduced to the characters the relay's contract allows in a blob name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).lstrip("._-")[:200] or "payload"
    return f"{folder or uuid.uuid4().hex}/{safe}"


def _payload_key(app: str, id: str, data: bytes) -> str:
    """The folder of a payload sent under an id: one for one app, id and content, and no other (32 hex digits)."""
    digest = hashlib.sha256()
    for part in (app.encode(), id.encode("utf-8", "surrogatepass"), hashlib.sha256(data).digest()):
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.hexdigest()[:32]


def _check_send_at(send_at: Any) -> None:
    """SendAtRefused for a `sendAt` (its format validated by the contract already) the relay would dead-letter: in
    the past beyond clock skew, or more than 7 days ahead. Said here, at once, rather than by a dead letter later."""
    if not isinstance(send_at, str):
        return
    when = datetime.fromisoformat(send_at)
    now = datetime.now(UTC)
    if when < now - SEND_AT_TOLERANCE:
        raise SendAtRefused(f"sendAt {send_at} is in the past (now {now:%Y-%m-%dT%H:%M:%SZ}); drop it to send now")
    if when > now + MAX_SEND_AT_AHEAD:
        raise SendAtRefused(
            f"sendAt {send_at} is more than 7 days ahead: a queue message stays hidden 7 days at most; enqueue later"
        )


def _container_from_queue_url(queue_url: str, credential: Any) -> tuple[str, str, Any] | None:
    """The account's Blob endpoint beside its queue endpoint (https://<account>.blob.core.windows.net)."""
    from urllib.parse import urlsplit

    parts = urlsplit(queue_url)
    host = parts.hostname or ""
    if ".queue." not in host:
        return None
    return ("endpoint", f"{parts.scheme}://{host.replace('.queue.', '.blob.', 1)}", credential)


def _table_from_queue_url(queue_url: str, credential: Any) -> tuple[str, str, Any] | None:
    """The account's Table endpoint beside its queue endpoint (https://<account>.table.core.windows.net),
    built on first use of status(); None when the URL is not an Azure Storage queue URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(queue_url)
    host = parts.hostname or ""
    if ".queue." not in host:
        return None
    return ("endpoint", f"{parts.scheme}://{host.replace('.queue.', '.table.', 1)}", credential)


def encode_request(request: Mapping[str, Any]) -> str:
    """The queue message text for a request: base64 of its UTF-8 JSON, checked and size-limited."""
    from mailrelay_client.validation import validate

    if not isinstance(request, Mapping):
        raise TypeError(f"send takes a mapping (the request's JSON object), not {type(request).__name__}")
    validate(request)
    # As the app wrote it (validated), not re-serialized: the relay sees exactly the app's fields.
    data = json.dumps(dict(request), ensure_ascii=False).encode("utf-8")
    text = base64.b64encode(data).decode("ascii")
    if len(text) > MAX_REQUEST_BYTES:
        raise RequestTooLarge(len(text))
    return text
