"""Storage queues the relay writes to itself: the dead-letter queue, and re-queues onto the main queue.

Both send with `time_to_live=-1` (never expires): Azure's default is 7 days, after which a message
vanishes without a trace, and a dead letter or a delayed retry must wait as long as it takes.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient


class DeadLetters(Protocol):
    def put(self, envelope: dict[str, Any]) -> None: ...


class Requeue(Protocol):
    def put(self, payload: dict[str, Any], delay_seconds: int) -> None:
        """Put `payload` on the main queue, invisible for `delay_seconds`."""
        ...


def encode(payload: dict[str, Any]) -> str:
    """Queue text as the Functions host reads it: base64 of UTF-8 JSON (host.json's messageEncoding)."""
    import base64

    return base64.b64encode(json.dumps(payload, ensure_ascii=False).encode("utf-8")).decode("ascii")


def decode(text: str) -> str | None:
    """The UTF-8 text that queue text is the base64 of, as the host decodes it; None if it is not base64."""
    import base64
    import binascii

    stripped = text.strip()
    if not stripped:
        return None
    try:
        return base64.b64decode(stripped, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def json_object(text: str | None) -> dict[str, Any] | None:
    """`text` as a JSON object (a UTF-8 byte order mark allowed), or None if it is none."""
    if text is None:
        return None
    try:
        value = json.loads(text.removeprefix("\ufeff"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class QueueDeadLetters:
    def __init__(self, client: QueueClient):
        self._client = client

    def put(self, envelope: dict[str, Any]) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        # The relay owns the text: no encode policy, so the host's base64 reading matches byte for byte.
        text = encode(envelope)
        try:
            self._client.send_message(text, time_to_live=-1)
        except ResourceNotFoundError:
            # The host creates <queue>-poison only when it first poisons a message, and infra/ may not have
            # run: the relay's first dead letter creates it rather than losing its envelope and hint.
            with contextlib.suppress(ResourceExistsError):
                self._client.create_queue()
            self._client.send_message(text, time_to_live=-1)


class QueueRequeue:
    """The main queue, for putting a request back after a transient failure (shared/retries.py)."""

    def __init__(self, client: QueueClient):
        self._client = client

    def put(self, payload: dict[str, Any], delay_seconds: int) -> None:
        # The initial visibility is the retry delay: the message waits in the queue, not in a worker.
        self._client.send_message(encode(payload), visibility_timeout=max(0, delay_seconds), time_to_live=-1)
