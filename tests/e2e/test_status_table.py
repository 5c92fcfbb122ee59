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


# --- The outcome and the pace row in one entity group transaction (shared/pacing.py) ---------------------------


def pacer_over(store: TableStatusStore) -> tuple[object, object]:
    from shared.pacing import Limits, Pacer, TablePaceStore

    pace_store = TablePaceStore(store._client)
    return Pacer(pace_store, Limits()), pace_store


def test_an_outcome_frees_its_pace_slot_in_the_same_transaction(store: TableStatusStore) -> None:
    from shared.pacing import Granted, Pacer, TablePaceStore

    created = store.create(record())
    assert created is not None
    pacer, pace_store = pacer_over(store)
    assert isinstance(pacer, Pacer) and isinstance(pace_store, TablePaceStore)
    granted = pacer.acquire("alerts@contoso.com", 2)
    assert isinstance(granted, Granted)
    writes = pacer.release_writes("alerts@contoso.com", granted)
    written = store.replace_with(replace(created, state=SENT), writes)
    assert written.record is not None and written.row_etag is not None
    state, etag = pace_store.read("alerts@contoso.com")
    assert state.slots == {} and len(state.sends) == 1 and etag == written.row_etag
    assert store.get(created.key).state == SENT  # type: ignore[union-attr]


def test_a_stale_record_writes_neither_the_record_nor_the_pace_row(store: TableStatusStore) -> None:
    """All or nothing in Azurite too: a stale outcome must not free a slot that its winner still holds."""
    from shared.pacing import Granted, Pacer, TablePaceStore

    created = store.create(record())
    assert created is not None
    assert store.replace(replace(created, state=SENT)) is not None  # another worker moved first
    pacer, pace_store = pacer_over(store)
    assert isinstance(pacer, Pacer) and isinstance(pace_store, TablePaceStore)
    granted = pacer.acquire("alerts@contoso.com", 2)
    assert isinstance(granted, Granted)
    written = store.replace_with(
        replace(created, state="retrying"), pacer.release_writes("alerts@contoso.com", granted)
    )
    assert written.record is None
    state, _ = pace_store.read("alerts@contoso.com")
    assert list(state.slots) == [granted.slot]
    assert store.get(created.key).state == SENT  # type: ignore[union-attr]


def test_a_stale_pace_row_falls_back_to_a_merge_that_frees_only_its_own_slot(store: TableStatusStore) -> None:
    from shared.pacing import Granted, Pacer, TablePaceStore

    created = store.create(record())
    assert created is not None
    mine, pace_store = pacer_over(store)
    theirs, _ = pacer_over(store)
    assert isinstance(mine, Pacer) and isinstance(theirs, Pacer) and isinstance(pace_store, TablePaceStore)
    granted, other = mine.acquire("alerts@contoso.com", 2), theirs.acquire("alerts@contoso.com", 1)
    assert isinstance(granted, Granted) and isinstance(other, Granted)
    written = store.replace_with(replace(created, state=SENT), mine.release_writes("alerts@contoso.com", granted))
    assert written.record is not None and written.row_etag is not None
    state, _ = pace_store.read("alerts@contoso.com")
    assert list(state.slots) == [other.slot] and sum(b[1] for b in state.recipients) == 3
    assert isinstance(theirs.acquire("alerts@contoso.com", 1), Granted)  # the merge is folded into the next write
    assert not any(k.startswith("r_") for k in store._client.get_entity(created.key.entity_keys()[0], "pace"))


def test_an_apps_scheduled_requests_are_counted_in_its_mailboxes_partitions_only(store: TableStatusStore) -> None:
    # What the relay counts against an app's maxScheduled, as Table storage answers the query (Azurite).
    def scheduled(value: str, sender: str, app: str, state: str = "scheduled") -> None:
        key = StatusKey(sender.lower(), "id", value, app)
        assert store.create(replace(record(value, sender), key=key, state=state)) is not None

    for i in range(3):
        scheduled(f"r-{i}", "billing@contoso.com", "billing")
    scheduled("r-9", "shop@contoso.com", "billing")
    scheduled("x-1", "billing@contoso.com", "shop")  # another app in the same partition
    scheduled("s-1", "billing@contoso.com", "billing", state="sent")
    assert store.count_scheduled("billing", ["Billing@Contoso.com", "shop@contoso.com"], 100) == 4
    assert store.count_scheduled("billing", ["billing@contoso.com"], 100) == 3
    assert store.count_scheduled("billing", ["billing@contoso.com"], 2) == 2  # cut at the cap: no more read
    assert store.count_scheduled("shop", ["billing@contoso.com"], 100) == 1


def test_find_by_sender_finds_every_apps_record_of_that_key(store: TableStatusStore) -> None:
    for app in ("default", "billing"):
        key = StatusKey("alerts@contoso.com", "id", "order-7", app)
        assert store.create(replace(record("order-7"), key=key)) is not None
    other = StatusKey("receipts@contoso.com", "id", "order-7", "billing")
    assert store.create(replace(record("order-7", "receipts@contoso.com"), key=other)) is not None
    found = store.find("order-7", "Alerts@Contoso.com")
    assert sorted(r.key.app for r in found) == ["billing", "default"]
    assert len(store.find("order-7")) == 3
