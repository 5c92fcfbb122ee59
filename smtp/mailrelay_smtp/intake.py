"""The durable step: a mail received over SMTP becomes a MIME send request on its app's queue.

The client library does the work (MailClient.send_mime): it checks the MIME and the envelope as the relay will, stores
the MIME as a claim-checked payload of the app, then enqueues the request. Only when that returned does the listener
answer 250; anything else is a 4xx (try again) or a 5xx (this mail can never be sent as it is), so a mail the device
was told is accepted is on the queue, and a mail that is not was never acknowledged.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from functools import cache
from typing import Any, Final

from mailrelay_smtp.logins import Login
from mailrelay_smtp.settings import Settings


@dataclass(frozen=True)
class Accepted:
    id: str  # the request's id: its key in `mailrelay status --app <app>`


class Refused(Exception):
    """The mail can never be sent as it is (a 5xx): `reply` is the SMTP reply, with its reason."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class Unavailable(Exception):
    """The mail could not be stored and enqueued now (a 4xx): the device tries again."""


def request_id(login: Login, sender: str, recipients: Sequence[str], data: bytes) -> str:
    """The request's id (the relay sends one id once).

    A MIME with a Message-ID gets an id made from the login, the envelope and its bytes: a device that retries a mail
    after a 451 whose enqueue had in fact happened (a timeout after the queue took it) sends the same bytes again,
    and the relay sends that id once. RFC 5322 3.6.4 makes a Message-ID unique to one message, so two mails with the
    same bytes and Message-ID are one mail. Without a Message-ID, two identical mails (a printer's "toner low" twice)
    are two mails: each gets a fresh id, and only that rare ambiguous retry could be sent twice.
    The login's user is part of the id, so that `mailrelay status` shows which device sent it."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(data, headersonly=True)
    if headers.get("Message-ID", "").strip():
        digest = hashlib.sha256()
        for part in (login.user, sender.lower(), *sorted(r.lower() for r in recipients)):
            digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(data)
        return f"smtp-{login.user}-{digest.hexdigest()[:32]}"
    return f"smtp-{login.user}-{uuid.uuid4().hex}"


class Intake:
    """Submits mails through one MailClient per app (built on first use; the SDK's clients are thread-safe)."""

    def __init__(self, client_for: Callable[[str], Any]) -> None:
        self._client_for = cache(client_for)

    def submit(self, login: Login, sender: str, recipients: Sequence[str], data: bytes) -> Accepted:
        from mailrelay_client import ContractError, RequestTooLarge

        id = request_id(login, sender, recipients, data)
        try:
            self._client_for(login.app).send_mime(data, sender, to=list(recipients), id=id)
        except ContractError as exc:
            # The reasons name fields and counts, never an address or the content (the client's rule).
            reasons = "; ".join(str(v) for v in exc.violations)
            raise Refused(f"554 5.6.0 The relay cannot send this mail as it is: {_one_line(reasons)}") from None
        except RequestTooLarge as exc:
            raise Refused(f"552 5.3.4 {_one_line(str(exc))}") from None
        except Exception as exc:
            # Storage down or slow, the queue missing, the identity refused: nothing is acknowledged, the device's
            # own retry brings it again (and a retry of a mail whose enqueue did happen has the same id).
            raise Unavailable(type(exc).__name__) from exc
        return Accepted(id)


def _one_line(text: str, limit: int = 400) -> str:
    """An SMTP reply is one line of ASCII (a multi-line one needs the code on every line)."""
    flat = " ".join(text.split())
    flat = flat.encode("ascii", "replace").decode("ascii")
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# The Storage SDK's default retries (ExponentialRetry: 15 s, then 3 x more; 20 s to connect) would outlast the
# listener's store budget (Settings.store_timeout, 30 s): the device would wait the whole budget for its 451, and the
# store would go on behind it. These end a failing store within about 10 s, well inside the budget, with a real error.
SDK_OPTIONS: Final[dict[str, Any]] = {
    "retry_total": 2,
    "initial_backoff": 1,
    "increment_base": 2,
    "connection_timeout": 5,
    "read_timeout": 20,
}
STORES_AT_ONCE: Final = 32  # the listener's store threads (server.Listener.store_pool)
# As the client library builds its own container client: a 3 MB MIME in one request, larger ones by 4 MiB blocks.
_BLOB_OPTIONS: Final[dict[str, Any]] = {"max_single_put_size": 4 * 1024 * 1024, "max_block_size": 4 * 1024 * 1024}


def client_factory(settings: Settings) -> Callable[[str], Any]:
    """How to build an app's MailClient from the settings: the connection string locally, the managed identity in
    Azure (Storage Queue Data Message Sender on the app's queue, Blob Data Contributor on its payload container), each
    with the short retries above."""
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient
    from mailrelay_client import MailClient
    from mailrelay_client.client import app_queue, payload_container

    credential: Any = None
    if not settings.connection_string:
        if settings.client_id:
            from azure.identity import ManagedIdentityCredential

            credential = ManagedIdentityCredential(client_id=settings.client_id)
        else:  # a developer's own sign-in, against a real account
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()

    def build(app: str) -> Any:
        queue_name, container_name = app_queue(settings.queue_name, app), payload_container(app)
        # One HTTP session for the app's queue and container, with a connection for each store the listener runs at
        # once (Listener.store_pool): requests' default pool keeps 10, and closes the rest after each use.
        import requests
        from azure.core.pipeline.transport import RequestsTransport

        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=STORES_AT_ONCE)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        timeouts = {k: SDK_OPTIONS[k] for k in ("connection_timeout", "read_timeout")}  # the transport's own
        options = {**SDK_OPTIONS, "transport": RequestsTransport(session=session, session_owner=False, **timeouts)}
        if settings.connection_string:
            conn = settings.connection_string
            queue = QueueClient.from_connection_string(conn, queue_name, **options)
            container = ContainerClient.from_connection_string(conn, container_name, **options, **_BLOB_OPTIONS)
        else:
            service = (settings.queue_service_uri or "").rstrip("/")
            blob_service = service.replace(".queue.", ".blob.", 1)
            queue = QueueClient(service, queue_name, credential=credential, **options)
            container = ContainerClient(blob_service, container_name, credential=credential, **options, **_BLOB_OPTIONS)
        return MailClient.from_queue_client(queue, payloads=container, app=app)

    return build
