"""Storage queues the relay writes to itself: the dead-letter queue, and re-queues onto the main queue.

Both send with `time_to_live=-1` (never expires): Azure's default is 7 days, after which a message
vanishes without a trace, and a dead letter or a delayed retry must wait as long as it takes.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import TYPE_CHECKING, Any, Final, Protocol

# Azure Storage refuses a visibility timeout beyond 7 days; keep a margin below it.
MAX_VISIBILITY_SECONDS: Final = 7 * 24 * 3600 - 60

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
MAX_ERROR_FIELD: Final = 1000  # characters of any other text of a stored envelope (code, hint, ids) kept on the queue
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


# The names BlobOverflow.put gives (a random UUID): a reference naming anything else was not written by the
# relay. Checked before the store is touched: a blob name is a URL path, and "../other-container/x" would
# reach, with the relay's identity, any blob in the account (the HTTP client folds the dot segments).
_BLOB_NAME: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.json")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


def reference(container: str, name: str, data: bytes) -> dict[str, Any]:
    import hashlib

    return {"container": container, "blob": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check_reference(ref: Any) -> Mapping[str, Any]:
    """`ref` if it has the shape of a reference the relay wrote, else StoredPayloadError naming what is wrong."""
    from collections.abc import Mapping

    if not isinstance(ref, Mapping):
        raise StoredPayloadError("a stored payload's reference must be an object")
    if ref.get("container") != OVERFLOW_CONTAINER:
        raise StoredPayloadError(f'a stored payload\'s "container" must be {OVERFLOW_CONTAINER!r}')
    if not isinstance(ref.get("blob"), str) or not _BLOB_NAME.fullmatch(ref["blob"]):
        raise StoredPayloadError('a stored payload\'s "blob" must be a name the relay gave (<uuid>.json)')
    size = ref.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise StoredPayloadError('a stored payload\'s "size" must be a whole number of bytes')
    if not isinstance(ref.get("sha256"), str) or not _SHA256.fullmatch(ref["sha256"]):
        raise StoredPayloadError('a stored payload\'s "sha256" must be 64 lower-case hex digits')
    return ref


def check_stored(ref: Mapping[str, Any], data: bytes) -> bytes:
    import hashlib

    if len(data) != ref.get("size") or hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise StoredPayloadError(f"the stored payload {ref.get('blob')!r} does not match its size and sha256")
    return data


def fitted_envelope(envelope: dict[str, Any], overflow: Overflow | None) -> dict[str, Any]:
    """The envelope as it goes on the poison queue: whole if it fits, else with the whole envelope stored in
    the overflow container and referenced, the request left out and every other text cut to fit. The code,
    the hint, the attempts and a readable reason always stay on the queue, whatever size a service's error
    code or message had."""
    if len(encode(envelope)) <= MAX_QUEUE_TEXT:
        return envelope
    if overflow is None:
        raise RuntimeError("a dead letter does not fit in a queue message and no overflow store is configured")
    error = {
        key: _cut(value, MAX_ERROR_MESSAGE if key == "message" else MAX_ERROR_FIELD)
        for key, value in dict(envelope.get("error") or {}).items()
    }
    fitted = {key: _cut(value, MAX_ERROR_FIELD) for key, value in envelope.items()}
    return {**fitted, "request": None, "error": error, "stored": overflow.put(json_bytes(envelope))}


def _cut(value: Any, limit: int) -> Any:
    """A text cut to `limit` characters, marked as cut; anything else as it is."""
    if not isinstance(value, str) or len(value) <= limit:
        return value
    return value[:limit] + f"… ({len(value):,} characters in all: see stored)"


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

        name = check_reference(ref)["blob"]
        try:
            data = self._container.download_blob(name).readall()
        except ResourceNotFoundError:
            raise StoredPayloadError(f"the stored payload {name!r} is gone") from None
        return check_stored(ref, data)

    def delete(self, ref: Mapping[str, Any]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        name = check_reference(ref)["blob"]
        with contextlib.suppress(ResourceNotFoundError):
            self._container.delete_blob(name)


class DeadLetters(Protocol):
    def put(self, envelope: dict[str, Any]) -> None: ...


class Requeue(Protocol):
    def put(self, payload: dict[str, Any], delay_seconds: int) -> None:
        """Put `payload` on the relay's retry queue, invisible for `delay_seconds`."""
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
    """The relay's retry queue, for a request that must wait (shared/retries.py, shared/delivery.py)."""

    def __init__(self, client: QueueClient):
        self._client = client

    def put(self, payload: dict[str, Any], delay_seconds: int) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        # The initial visibility is the retry delay: the message waits in the queue, not in a worker.
        # The payload fits: shared.retries.fit_on_queue stored its request in the overflow otherwise.
        text = encode(payload)
        delay = min(max(0, delay_seconds), MAX_VISIBILITY_SECONDS)
        try:
            self._client.send_message(text, visibility_timeout=delay, time_to_live=-1)
        except ResourceNotFoundError:
            # infra/ creates it in Azure; a relay started on a fresh account creates it on its first retry.
            with contextlib.suppress(ResourceExistsError):
                self._client.create_queue()
            self._client.send_message(text, visibility_timeout=delay, time_to_live=-1)
