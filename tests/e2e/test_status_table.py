"""The status records in real Table storage (Azurite): the atomic claim the unit tests' MemoryStatusStore mimics.

If Table storage did not refuse a second insert, or a write under a stale ETag, two workers could both send;
these tests make Azurite answer exactly those cases, so the fake cannot be kinder than the service.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableClient

from devstack.azurite import Azurite
from shared.status import SENDING, SENT, StatusKey, StatusRecord, TableStatusStore

pytestmark = pytest.mark.e2e


@pytest.fixture
def store(azurite: Azurite) -> TableStatusStore:
    # A table of its own (not created: the store creates it on the first insert, as on a fresh account).
    name = f"status{uuid.uuid4().hex[:12]}"
    return TableStatusStore(TableClient.from_connection_string(azurite.connection_string, name))


def record(value: str = "order-1", sender: str = "Alerts@Contoso.com") -> StatusRecord:
    now = datetime.now(UTC).replace(microsecond=0)
    return StatusRecord(
        key=StatusKey.of(sender, value, None),
        state=SENDING,
        fingerprint="f" * 64,
        attempts=1,
        created_at=now,
        updated_at=now,
        lease_until=now + timedelta(minutes=2),
        recipients=2,
        recipient_domains="contoso.com",
    )


def test_insert_if_absent_creates_the_table_and_refuses_a_second_insert(store: TableStatusStore) -> None:
    first = store.create(record())
    assert first is not None and first.etag
    assert store.create(record()) is None  # another worker was first: no claim
    read = store.get(record().key)
    assert read is not None and read.state == SENDING and read.key.sender == "alerts@contoso.com"
    assert read.lease_until == record().lease_until and read.recipients == 2


def test_a_write_under_a_stale_etag_is_refused(store: TableStatusStore) -> None:
    created = store.create(record())
    assert created is not None
    won = store.replace(replace(created, state=SENT))
    assert won is not None and won.etag != created.etag
    assert store.replace(replace(created, state=SENDING)) is None  # read before the other's write: refused
    read = store.get(created.key)
    assert read is not None and read.state == SENT


def test_of_many_concurrent_claims_exactly_one_wins(store: TableStatusStore) -> None:
    created = store.create(record())
    assert created is not None
    wins: list[bool] = []
    start = threading.Barrier(8)

    def claim() -> None:
        start.wait()
        wins.append(store.replace(replace(created, attempts=2)) is not None)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_find_since_and_cleanup(store: TableStatusStore) -> None:
    old = replace(record("old"), updated_at=datetime.now(UTC) - timedelta(days=40))
    assert store.create(old) and store.create(record("new")) and store.create(record("new", "receipts@contoso.com"))
    assert {r.key.sender for r in store.find("new")} == {"alerts@contoso.com", "receipts@contoso.com"}
    assert [r.key.value for r in store.find("new", "RECEIPTS@contoso.com")] == ["new"]
    assert store.find("it's") == []  # a quote in the key is escaped, not injected into the filter
    recent = {r.key.value for r in store.since(datetime.now(UTC) - timedelta(hours=1))}
    assert recent == {"new"}
    assert {r.key.value for r in store.since(datetime.now(UTC) - timedelta(days=60), SENDING)} == {"old", "new"}
    assert store.delete_expired(datetime.now(UTC) - timedelta(days=30)) == 1
    assert store.get(old.key) is None and store.get(record("new").key) is not None
