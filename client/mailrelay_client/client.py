"""MailClient: put a send request on the relay's queue, encoded as the relay reads it.

Why use it rather than the Storage SDK directly:
- it checks the request against the relay's contract (`ContractError` lists every broken rule), so a bad
  request fails in the app, at once, instead of in the dead-letter queue later;
- it base64-encodes the JSON, as the relay's host.json (`messageEncoding`) expects. The Python queue SDK
  sends text unencoded by default, and the host then refuses the message: the classic pitfall;
- it refuses a request too large for one queue message with `RequestTooLarge`, instead of the service's
  bare 413;
- messages never expire (time-to-live -1): a mail waiting out an outage must not vanish after 7 days.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, Final, Protocol

DEFAULT_QUEUE_NAME: Final = "mail-outbox"
# Azure Storage queues hold at most 64 KiB per message. The relay's messages are base64 (ASCII), so
# characters and bytes agree: 65,536 characters of base64, about 48 KiB of JSON.
MAX_MESSAGE_BYTES: Final = 64 * 1024
# The relay puts a request back on the queue wrapped with its retry state after a transient failure (the
# wrapper adds up to 2 KiB; the relay's tests hold it to that): requests leave that room, so a retry of one
# always fits beside it on the queue.
RELAY_OVERHEAD_BYTES: Final = 2 * 1024
MAX_REQUEST_BYTES: Final = MAX_MESSAGE_BYTES - RELAY_OVERHEAD_BYTES


class RequestTooLarge(ValueError):
    """The encoded request does not fit in one queue message. Says the size, never the content."""

    def __init__(self, size: int, limit: int = MAX_REQUEST_BYTES) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the request is {size:,} bytes once base64-encoded; a request may take at most {limit:,} of a "
            f"queue message's {MAX_MESSAGE_BYTES:,} (about {limit * 3 // 4 // 1024} KiB of JSON; the relay "
            "keeps the rest for its retry state). Large attachments and bodies will travel by claim "
            "check (stored as a blob that the request names), which the relay does not offer yet: send "
            "smaller attachments, or a link to the content"
        )


class QueueNotFound(RuntimeError):
    """The relay's queue does not exist on this storage account (wrong account or queue name)."""


class _QueueSender(Protocol):
    """The part of azure.storage.queue.QueueClient that the client uses."""

    def send_message(self, content: Any, **kwargs: Any) -> Any: ...


class MailClient:
    """Sends requests to the relay's queue. Thread-safe as the underlying QueueClient is."""

    def __init__(self, queue_url: str, credential: Any = None) -> None:
        """`queue_url`: https://<account>.queue.core.windows.net/<queue>; `credential`: e.g.
        azure.identity.DefaultAzureCredential(), or a SAS token / account key the SDK accepts."""
        from azure.storage.queue import QueueClient

        if queue_url.lower().startswith("http://") and hasattr(credential, "get_token"):
            # The Azure SDK refuses token credentials over plain http ("Token credential is only supported
            # with HTTPS"): say what works instead. Azurite (the local stack) takes its connection string.
            raise ValueError(
                "a token credential needs an https:// queue URL; against the local stack (Azurite, http://) use "
                "MailClient.from_connection_string(<the connection string `mailrelay local` prints>)"
            )
        self._queue: _QueueSender = QueueClient.from_queue_url(queue_url, credential=credential)
        self._status_table: Any = _table_from_queue_url(queue_url, credential)

    @classmethod
    def from_connection_string(cls, conn_str: str, queue_name: str = DEFAULT_QUEUE_NAME) -> MailClient:
        from azure.storage.queue import QueueClient

        client = cls.from_queue_client(QueueClient.from_connection_string(conn_str, queue_name))
        client._status_table = ("connection-string", conn_str)
        return client

    @classmethod
    def from_queue_client(cls, queue_client: _QueueSender, status_table: Any = None) -> MailClient:
        """Wrap a QueueClient the app configured itself (retry policy, proxies, ...); `status_table`, an
        azure.data.tables.TableClient for the relay's `mailstatus` table, if the app reads status."""
        client = cls.__new__(cls)
        client._queue = queue_client
        client._status_table = status_table
        return client

    def status(self, key: str, sender: str | None = None) -> dict[str, Any] | None:
        """What became of a request: its status record (state, attempts, last error and hint, times, Graph's
        request ids), or None. `key` is the request's `id`, or the message id `send` returned for a request
        without one. Needs the `status` extra and Storage Table Data Reader on the relay's `mailstatus` table.
        """
        from mailrelay_client.status import read_status

        return read_status(self._table(), key, sender)

    def _table(self) -> Any:
        from mailrelay_client.status import TABLE_NAME

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
            table = TableClient.from_connection_string(table[1], TABLE_NAME)
        elif isinstance(table, tuple):
            _, endpoint, credential = table
            table = TableClient(endpoint, TABLE_NAME, credential=credential)
        self._status_table = table
        return table

    def send(self, request: Mapping[str, Any]) -> str:
        """Validate, encode and enqueue one request; return the queue message id.

        Raises ContractError (the request breaks the contract), RequestTooLarge, QueueNotFound, or the
        Azure SDK's errors for anything the service refuses.
        """
        text = encode_request(request)
        from azure.core.exceptions import ResourceNotFoundError

        try:
            # time_to_live=-1: never expires; the service default (7 days) would drop mail silently.
            message = self._queue.send_message(text, time_to_live=-1)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "QueueNotFound":
                raise QueueNotFound(
                    "the relay's queue does not exist on this storage account: check the queue name "
                    "(MAIL_QUEUE_NAME, default mail-outbox) and the account"
                ) from None
            raise
        return str(message.id)


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
