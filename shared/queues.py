"""Storage queues the relay writes to itself: the dead-letter queue, and re-queues onto the main queue.

Both send with `time_to_live=-1` (never expires): Azure's default is 7 days, after which a message
vanishes without a trace, and a dead letter or a delayed retry must wait as long as it takes.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient


# Azure Storage queues hold 64 KiB per message, the relay's own writes included. The relay's text is base64
# (ASCII), so characters and bytes agree.
MAX_QUEUE_TEXT: Final = 64 * 1024
# What a retry wrapper adds around a request at most (the "$retry" object, its capped lastError, the
# base64 of it all): the client library refuses requests within this margin of the limit, so their retry
# copy still fits on the queue without the overflow store.
RELAY_OVERHEAD_BYTES: Final = 2 * 1024
MAX_ERROR_MESSAGE: Final = 4000  # characters of an error message an envelope on the queue keeps
OVERFLOW_CONTAINER: Final = "mail-relay-overflow"


class Overflow(Protocol):
    """Where the relay keeps what does not fit in a queue message: a blob container only it can reach."""

    def put(self, data: bytes) -> dict[str, Any]:
        """Store `data`; return its reference: {"container", "blob", "size", "sha256"}."""
        ...

    def get(self, ref: Mapping[str, Any]) -> bytes:
        """The stored bytes, checked against the reference's size and sha256 (OverflowError if not)."""
        ...

    def delete(self, ref: Mapping[str, Any]) -> None: ...


class StoredPayloadError(ValueError):
    """A stored payload is missing or not what its reference says."""


def reference(container: str, name: str, data: bytes) -> dict[str, Any]:
    import hashlib

    return {"container": container, "blob": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check_stored(ref: Mapping[str, Any], data: bytes) -> bytes:
    import hashlib

    if len(data) != ref.get("size") or hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise StoredPayloadError(f"the stored payload {ref.get('blob')!r} does not match its size and sha256")
    return data


def fitted_envelope(envelope: dict[str, Any], overflow: Overflow | None) -> dict[str, Any]:
    """The envelope as it goes on the poison queue: whole if it fits, else with the request and the full
    error stored in the overflow container and referenced, and the message cut to fit. The code, the hint,
    the attempts and a readable reason always stay on the queue."""
    if len(encode(envelope)) <= MAX_QUEUE_TEXT:
        return envelope
    if overflow is None:
        raise RuntimeError("a dead letter does not fit in a queue message and no overflow store is configured")
    error = dict(envelope.get("error") or {})
    message = str(error.get("message") or "")
    if len(message) > MAX_ERROR_MESSAGE:
        error["message"] = message[:MAX_ERROR_MESSAGE] + f"… ({len(message):,} characters in all: see stored)"
    return {**envelope, "request": None, "error": error, "stored": overflow.put(json_bytes(envelope))}


class BlobOverflow:
    """The overflow store in Blob storage: one blob per payload, named at random (apps cannot guess one)."""

    def __init__(self, container: ContainerClient):
        self._container = container

    def put(self, data: bytes) -> dict[str, Any]:
        import uuid

        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        name = f"{uuid.uuid4()}.json"
        try:
            self._container.upload_blob(name, data, overwrite=False)
        except ResourceNotFoundError:
            # infra/ creates the container; locally (Azurite) the first overflow creates it.
            with contextlib.suppress(ResourceExistsError):
                self._container.create_container()
            self._container.upload_blob(name, data, overwrite=False)
        return reference(self._container.container_name, name, data)

    def get(self, ref: Mapping[str, Any]) -> bytes:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = self._container.download_blob(str(ref.get("blob"))).readall()
        except ResourceNotFoundError:
            raise StoredPayloadError(f"the stored payload {ref.get('blob')!r} is gone") from None
        return check_stored(ref, data)

    def delete(self, ref: Mapping[str, Any]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._container.delete_blob(str(ref.get("blob")))


class DeadLetters(Protocol):
    def put(self, envelope: dict[str, Any]) -> None: ...


class Requeue(Protocol):
    def put(self, payload: dict[str, Any], delay_seconds: int) -> None:
        """Put `payload` on the main queue, invisible for `delay_seconds`."""
        ...


def json_bytes(value: Any) -> bytes:
    """UTF-8 JSON of `value`, whatever strings it holds.

    Characters stay as they are (shorter than \\u escapes), except when a string holds a lone UTF-16
    surrogate, which no UTF-8 text can carry: then the whole value is written with ASCII escapes, which
    keep it exactly (an app may put "\\ud800" in a request, and its dead letter must still be written).
    """
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True).encode("ascii")


def encode(payload: dict[str, Any]) -> str:
    """Queue text as the Functions host reads it: base64 of UTF-8 JSON (host.json's messageEncoding)."""
    import base64

    return base64.b64encode(json_bytes(payload)).decode("ascii")


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
    except (ValueError, RecursionError):  # numbers over 4,300 digits; nesting past the parser's stack
        return None
    return value if isinstance(value, dict) and nesting_at_most(value, MAX_NESTING) else None


# Deeper than this, a JSON object is no message of the relay's, and serializing it again (for a dead letter,
# a listing) could itself run out of stack: such text is kept as text.
MAX_NESTING: Final = 32


def nesting_at_most(value: Any, limit: int) -> bool:
    """True if `value` nests lists and objects at most `limit` levels deep. Iterative: no recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


class QueueDeadLetters:
    def __init__(self, client: QueueClient, overflow: Overflow | None = None):
        self._client = client
        self._overflow = overflow

    def put(self, envelope: dict[str, Any]) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        # The relay owns the text: no encode policy, so the host's base64 reading matches byte for byte.
        text = encode(fitted_envelope(envelope, self._overflow))
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
        # The payload fits: shared.retries.fit_on_queue stored its request in the overflow otherwise.
        self._client.send_message(encode(payload), visibility_timeout=max(0, delay_seconds), time_to_live=-1)
