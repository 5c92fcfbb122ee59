"""Storage queues the relay writes to itself: the dead-letter queue (and, later, re-queues)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

    from shared.settings import Settings


class DeadLetters(Protocol):
    def put(self, envelope: dict[str, Any]) -> None: ...


def encode(payload: dict[str, Any]) -> str:
    """Queue text as the Functions host reads it: base64 of UTF-8 JSON (host.json's messageEncoding)."""
    import base64

    return base64.b64encode(json.dumps(payload, ensure_ascii=False).encode("utf-8")).decode("ascii")


class QueueDeadLetters:
    def __init__(self, client: QueueClient):
        self._client = client

    def put(self, envelope: dict[str, Any]) -> None:
        # The relay owns the text: no encode policy, so the host's base64 reading matches byte for byte.
        self._client.send_message(encode(envelope), time_to_live=-1)


def queue_client(settings: Settings, queue_name: str, credential: Any = None) -> QueueClient:
    """A client for one queue on the Functions host's storage account (AzureWebJobsStorage)."""
    from azure.storage.queue import QueueClient

    storage = settings.storage
    if storage.connection_string:
        return QueueClient.from_connection_string(storage.connection_string, queue_name)
    assert storage.queue_service_uri is not None
    return QueueClient(storage.queue_service_uri, queue_name, credential=credential)
