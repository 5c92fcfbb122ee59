"""The idempotency ledger: which requests Graph has already accepted, so none is sent twice.

Queues deliver at least once: the host redelivers a message whose function crashed or whose lease ran
out, and a client may enqueue the same request twice. The relay checks the ledger before calling Graph
and records the request right after Graph's 202, so a redelivery after the send completes without
sending again. The window left is a crash between the 202 and the record (a few milliseconds); the
relay cannot close it, since Graph's sendMail takes no idempotency key.

The key is the request's `id` when it has one (the contract: one id is sent at most once, whichever
message carries it), else the id of the queue message that first carried the request, which stays the
same across the host's redeliveries and is carried through the relay's own re-queues (shared/retries.py).

In Azure the ledger is the Table `sentrequests` on the Functions host's storage account, reached like the
queues: a connection string locally, the identity-based `AzureWebJobsStorage__tableServiceUri` in Azure.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from azure.data.tables import TableClient


TABLE_NAME: Final = "sentrequests"


def ledger_key(request_id: str | None, original_message_id: str | None) -> str | None:
    """The ledger key of a request; None when there is nothing stable to key on (never from the host)."""
    if request_id:
        return f"id:{request_id}"
    if original_message_id:
        return f"msg:{original_message_id}"
    return None


def fingerprint(request: Any) -> str:
    """A digest of a request's content (its JSON object), the same whatever the key order or spacing.

    Recorded with the key, so that a second request under a key already sent is told apart from a
    redelivery of the same request: the first is refused with a reason, never dropped as a duplicate.
    ASCII escapes keep a lone surrogate hashable.
    """
    import json

    canonical = json.dumps(request, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


class Ledger(Protocol):
    def lookup(self, key: str) -> str | None:
        """The fingerprint recorded for a key Graph already accepted ("" if none was kept), else None."""
        ...

    def record(self, key: str, fingerprint: str) -> None:
        """Remember that Graph accepted the request with this key and content."""
        ...


class MemoryLedger:
    """The ledger in a dict: unit tests, and nothing else (it forgets everything with the process)."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str) -> str | None:
        with self._lock:
            return self._keys.get(key)

    def record(self, key: str, fingerprint: str) -> None:
        with self._lock:
            self._keys[key] = fingerprint

    def __len__(self) -> int:
        return len(self._keys)


class TableLedger:
    """The ledger in Azure Table storage: one entity per sent request, nothing of the mail itself."""

    def __init__(self, client: TableClient):
        self._client = client

    @staticmethod
    def _entity_keys(key: str) -> tuple[str, str]:
        # Table keys refuse "/", "\", "#", "?" and control characters, and an `id` may hold any of them;
        # a hash is always a valid key, of fixed length. Two hex digits of partition spread the load.
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return digest[:2], digest

    def lookup(self, key: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        partition, row = self._entity_keys(key)
        try:
            entity = self._client.get_entity(partition, row, select=["RowKey", "fingerprint"])
        except ResourceNotFoundError:
            return None  # no such entity, or no table yet (nothing was ever sent)
        return str(entity.get("fingerprint") or "")  # rows written before fingerprints: ""

    def record(self, key: str, fingerprint: str) -> None:
        partition, row = self._entity_keys(key)
        entity: dict[str, Any] = {
            "PartitionKey": partition,
            "RowKey": row,
            "kind": key.split(":", 1)[0],  # "id" or "msg": which identity the key came from
            "fingerprint": fingerprint,  # a digest of the content, never the content itself
            "sentAt": datetime.now(UTC),
        }
        from azure.core.exceptions import ResourceNotFoundError

        from shared.storage import create_table

        # Upsert: a second record of the same key (a redelivery racing this one) is no error.
        try:
            self._client.upsert_entity(entity)
        except ResourceNotFoundError:
            # The table is created on the first record, not when the runtime is built: building it
            # makes no network call, and a relay that never sent anything needs no table.
            create_table(self._client)
            self._client.upsert_entity(entity)

