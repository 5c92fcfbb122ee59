"""The once-per-threshold warning records: which channel got which warning, in Table storage."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.data.tables import TableClient


class TableWarningRecords:
    """Warnings sent, in Table storage: PartitionKey = secret name, RowKey = '<version>.<warning key>'.

    One row per (version, warning); `Channels` lists the channels that got it, so a channel that
    failed is tried again on the next run while the others are not repeated.
    """

    def __init__(self, client: TableClient):
        self._client = client
        self._table_checked = False

    def _ensure_table(self) -> None:
        if not self._table_checked:
            from shared.storage import create_table

            create_table(self._client)
            self._table_checked = True

    def delivered(self, secret_name: str, version: str, key: str) -> frozenset[str]:
        from azure.core.exceptions import ResourceNotFoundError

        self._ensure_table()
        try:
            entity = self._client.get_entity(partition_key=secret_name, row_key=f"{version}.{key}")
        except ResourceNotFoundError:
            return frozenset()
        return frozenset(c for c in str(entity.get("Channels", "")).split(",") if c)

    def record(
        self,
        secret_name: str,
        version: str,
        key: str,
        channels: Iterable[str],
        *,
        at: datetime,
        expires_on: datetime | None,
    ) -> None:
        self._ensure_table()
        entity: dict[str, Any] = {
            "PartitionKey": secret_name,
            "RowKey": f"{version}.{key}",
            "SecretVersion": version,
            "Warning": key,
            "Channels": ",".join(sorted(set(channels))),
            "SentAt": at,
        }
        if expires_on is not None:
            entity["ExpiresOn"] = expires_on
        self._client.upsert_entity(entity)


class MemoryWarningRecords:
    """The record store in memory: unit tests, and `mailrelay expiry check` when told to keep nothing."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], frozenset[str]] = {}
        self.down: Exception | None = None  # set to simulate an unreachable store

    def delivered(self, secret_name: str, version: str, key: str) -> frozenset[str]:
        if self.down:
            raise self.down
        return self.rows.get((secret_name, version, key), frozenset())

    def record(
        self,
        secret_name: str,
        version: str,
        key: str,
        channels: Iterable[str],
        *,
        at: datetime,
        expires_on: datetime | None,
    ) -> None:
        if self.down:
            raise self.down
        self.rows[(secret_name, version, key)] = frozenset(channels)


# --- Entry points ---------------------------------------------------------------------------------
