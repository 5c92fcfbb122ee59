"""Claim-checked payloads: attachments and bodies too large for a queue message, stored as blobs by the app.

An app (the client library, `mailrelay send --attach`) uploads the bytes to the `mail-payloads` container and
puts a reference on the queue: `{"blob", "size", "sha256"}` (shared/contract.py). The relay reads the blob with
its own identity, in ranges (a 150 MB attachment is never held whole), and checks the size before it uses any
byte and the SHA-256 over every byte it sends: a blob that is missing, or differs from what the request says,
is a permanent error naming the blob. Blobs are deleted once their request is `sent`; a dead-lettered request
keeps them, so a requeue still works, and the clean-up timer removes blobs older than PAYLOAD_RETENTION_DAYS.

The contract's blob-name pattern keeps a name inside the container (no "..", no leading "/"), and the container
is fixed here: nothing an app writes chooses where the relay's identity reads or deletes.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

    from shared.contract import Attachment, Body, Mime

PAYLOAD_CONTAINER: Final = "mail-payloads"


def payload_container(app: str) -> str:
    """Where an app's payloads live: its own container (`mail-payloads-<app>`, writable by that app alone, infra/),
    the shared one for the default app. The relay reads a request's payloads only from its app's."""
    from shared.apps import DEFAULT_APP

    return PAYLOAD_CONTAINER if app == DEFAULT_APP else f"{PAYLOAD_CONTAINER}-{app}"

# Graph's upload sessions take ranges "less than 4 MB" (https://learn.microsoft.com/graph/outlook-large-attachments,
# step 2), and the page does not say whether a MB is 10^6 or 2^20 bytes: 3.75 MiB (3,932,160 bytes) is under both
# readings, and a multiple of 320 KiB, the unit Graph's other upload sessions ask for. The relay reads the blob in
# the same ranges, so one range is in memory at a time.
RANGE_BYTES: Final = 3_932_160


class PayloadError(Exception):
    """A claim check that cannot be honoured: `code` is PayloadMissing or PayloadMismatch (permanent), or
    PayloadUnavailable (Blob storage failed for now: transient)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Ref:
    """What a request says of one stored payload."""

    blob: str
    size: int
    sha256: str

    @classmethod
    def of(cls, part: Attachment | Body | Mime) -> Ref:
        assert part.blob is not None and part.size is not None and part.sha256 is not None
        return cls(part.blob, part.size, part.sha256)


class PayloadStore(Protocol):
    """The mail-payloads container, as the relay uses it."""

    def size(self, blob: str) -> tuple[int, str]:
        """(length, version tag) of the blob; PayloadError PayloadMissing if there is none."""

    def read(self, blob: str, offset: int, length: int, version: str) -> bytes:
        """Bytes [offset, offset + length) of that version of the blob (PayloadMismatch if it changed since)."""

    def delete(self, blob: str) -> None:
        """Delete the blob; one already gone is not an error."""

    def delete_older_than(self, cutoff: datetime) -> int:
        """Delete every blob last written before `cutoff`; how many were deleted."""


class Reader:
    """Reads one claim check's bytes, checked against its reference."""

    def __init__(self, store: PayloadStore, ref: Ref) -> None:
        self._store = store
        self._ref = ref
        self._version: str | None = None
        self._digest = hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) are in the digest

    def check_size(self) -> None:
        """Before any byte is used: the blob exists and has the size the request says."""
        length, self._version = self._store.size(self._ref.blob)
        if length != self._ref.size:
            raise PayloadError(
                "PayloadMismatch",
                f"the blob {self._ref.blob!r} holds {length} bytes, and the request says {self._ref.size}",
            )

    def read(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length). Reading again from an earlier offset (an upload session asking for a
        range once more) is allowed; the digest covers each byte once, in order."""
        if self._version is None:
            self.check_size()
        assert self._version is not None
        data = self._store.read(self._ref.blob, offset, length, self._version)
        if len(data) != length:
            raise PayloadError(
                "PayloadMismatch", f"the blob {self._ref.blob!r} ended early at byte {offset + len(data)}"
            )
        if offset <= self._hashed < offset + length:
            self._digest.update(memoryview(data)[self._hashed - offset :])
            self._hashed = offset + length
        return data

    def ranges(self, start: int = 0, size: int = RANGE_BYTES) -> Iterator[tuple[int, bytes]]:
        offset = start
        while offset < self._ref.size:
            length = min(size, self._ref.size - offset)
            yield offset, self.read(offset, length)
            offset += length

    def verify(self) -> None:
        """After every byte was read: the SHA-256 is the request's."""
        if self._hashed != self._ref.size:
            raise RuntimeError("verify() before every byte was read")
        found = self._digest.hexdigest()
        if found != self._ref.sha256:
            raise PayloadError(
                "PayloadMismatch",
                f"the blob {self._ref.blob!r} has SHA-256 {found}, and the request says {self._ref.sha256}",
            )

    def read_all(self) -> bytes:
        """The whole payload, checked: only for the small ones (under Graph's 3 MB inline limit)."""
        self.check_size()
        data = b"".join(chunk for _, chunk in self.ranges())
        self.verify()
        return data


def delete_all(store: PayloadStore, blobs: Iterable[str]) -> list[str]:
    """Delete the blobs; the names that could not be deleted (Storage failing: the retention timer gets them)."""
    left = []
    for blob in blobs:
        try:
            store.delete(blob)
        except Exception:  # best effort: the request is sent, and that must be recorded whatever Storage does
            left.append(blob)
    return left


class BlobPayloads:
    """The mail-payloads container in Blob storage (azure-storage-blob)."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    def size(self, blob: str) -> tuple[int, str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self._container.get_blob_client(blob).get_blob_properties()
        except ResourceNotFoundError:
            raise PayloadError(
                "PayloadMissing", f"the blob {blob!r} is not in the {PAYLOAD_CONTAINER} container"
            ) from None
        except Exception as e:
            raise _unavailable(e) from None
        return int(props.size), str(props.etag)

    def read(self, blob: str, offset: int, length: int, version: str) -> bytes:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        if length == 0:
            return b""
        try:
            # The version read first, or nothing: a blob rewritten halfway through would mix two files.
            stream = self._container.get_blob_client(blob).download_blob(
                offset=offset, length=length, etag=version, match_condition=MatchConditions.IfNotModified
            )
            return stream.readall()
        except ResourceNotFoundError:
            raise PayloadError("PayloadMissing", f"the blob {blob!r} was deleted while the relay read it") from None
        except ResourceModifiedError:
            raise PayloadError("PayloadMismatch", f"the blob {blob!r} was rewritten while the relay read it") from None
        except Exception as e:
            raise _unavailable(e) from None

    def delete(self, blob: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._container.delete_blob(blob)

    def delete_older_than(self, cutoff: datetime) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        deleted = 0
        try:
            blobs = list(self._container.list_blobs())
        except ResourceNotFoundError:
            return 0  # no container yet: nothing was ever stored
        for item in blobs:
            if item.last_modified is not None and item.last_modified < cutoff:
                with contextlib.suppress(ResourceNotFoundError):
                    self._container.delete_blob(item.name)
                    deleted += 1
        return deleted


def _unavailable(error: Exception) -> PayloadError:
    return PayloadError("PayloadUnavailable", f"Blob storage failed reading a payload: {type(error).__name__}")


class MemoryPayloads:
    """The store in memory: for unit tests and the benchmark's baseline."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[bytes, datetime]] = {}
        self.reads: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def put(self, blob: str, data: bytes, when: datetime) -> None:
        with self._lock:
            self.blobs[blob] = (data, when)

    def size(self, blob: str) -> tuple[int, str]:
        with self._lock:
            if blob not in self.blobs:
                raise PayloadError("PayloadMissing", f"the blob {blob!r} is not in the {PAYLOAD_CONTAINER} container")
            data, when = self.blobs[blob]
        return len(data), f"{hash(data)}:{when.isoformat()}"

    def read(self, blob: str, offset: int, length: int, version: str) -> bytes:
        if self.size(blob)[1] != version:
            raise PayloadError("PayloadMismatch", f"the blob {blob!r} was rewritten while the relay read it")
        self.reads.append((blob, offset, length))
        return self.blobs[blob][0][offset : offset + length]

    def delete(self, blob: str) -> None:
        with self._lock:
            self.blobs.pop(blob, None)

    def delete_older_than(self, cutoff: datetime) -> int:
        with self._lock:
            old = [name for name, (_, when) in self.blobs.items() if when < cutoff]
            for name in old:
                del self.blobs[name]
        return len(old)
