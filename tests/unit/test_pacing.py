"""The pace decision (shared/pacing.py), a pure function: every limit made to bind, no I/O, no sleeping."""

from __future__ import annotations

import threading
from dataclasses import replace

from shared.pacing import Granted, Limits, MemoryPaceStore, Over, Pacer, PaceState, decide, released
from shared.status import MemoryStatusStore, StatusKey, StatusRecord, partition_of

LIMITS = Limits(max_concurrent=4, messages_per_window=30, rate_window_seconds=60, recipients_per_window=10_000)


def grant(
    state: PaceState, recipients: int = 1, now: float = 1000.0, limits: Limits = LIMITS, upload_bytes: int = 0
) -> PaceState:
    decided = decide(state, recipients, now, limits, upload_bytes)
    assert not isinstance(decided, Over), decided
    return decided[0]


def test_four_in_flight_then_a_short_wait() -> None:
    state = PaceState()
    for _ in range(4):
        state = grant(state)
    over = decide(state, 1, 1000.0, LIMITS)
    assert isinstance(over, Over) and over.limit == "concurrent sends" and over.seconds == 1.0


def test_a_dead_workers_slot_lapses_with_its_lease() -> None:
    state = PaceState()
    for _ in range(4):
        state = grant(state)
    assert not isinstance(decide(state, 1, 1000.0 + LIMITS.slot_lease_seconds + 1, LIMITS), Over)


def test_thirty_a_minute_then_wait_until_the_oldest_leaves_the_window() -> None:
    state = PaceState()
    for i in range(30):
        state = grant(state, now=1000.0 + i)
        state.slots.clear()  # each send finished
    over = decide(state, 1, 1030.0, LIMITS)
    assert isinstance(over, Over) and over.limit == "messages per minute" and over.seconds == 30.0
    assert not isinstance(decide(state, 1, 1060.5, LIMITS), Over)


def test_a_send_counts_from_when_graph_answered_so_exchanges_minute_is_never_fuller() -> None:
    now = [1000.0]
    from datetime import UTC, datetime

    pacer = Pacer(MemoryPaceStore(), LIMITS, clock=lambda: datetime.fromtimestamp(now[0], UTC))
    granted = pacer.acquire("alerts@contoso.com", 1)
    assert isinstance(granted, Granted)
    now[0] = 1002.5  # the Graph call took 2.5 s; Exchange accepted the message somewhere in between
    pacer.release("alerts@contoso.com", granted)
    state, _ = pacer._store.read("alerts@contoso.com")
    assert [s[0] for s in state.sends] == [1002.5]


def test_the_recipient_budget_waits_for_the_oldest_bucket_to_leave_the_day() -> None:
    state = grant(PaceState(), recipients=6000, now=0.0)
    state.slots.clear()
    state = grant(state, recipients=3000, now=7200.0)
    state.slots.clear()
    over = decide(state, 2000, 7300.0, LIMITS)
    assert isinstance(over, Over) and over.limit == "recipients per day"
    assert over.seconds == 86_400.0 - 7300.0  # the 6,000 sent at 0 must leave the window first
    assert not isinstance(decide(state, 1000, 7300.0, LIMITS), Over)  # 10,000 exactly is allowed


def test_concurrent_workers_never_take_more_than_the_limit() -> None:
    pacer = Pacer(MemoryPaceStore(), LIMITS)
    granted: list[Granted | Over] = []
    start = threading.Barrier(12)

    def take() -> None:
        start.wait()
        granted.append(pacer.acquire("alerts@contoso.com", 1))

    threads = [threading.Thread(target=take) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(g, Granted) for g in granted) == 4
    pacer.release("alerts@contoso.com", next(g for g in granted if isinstance(g, Granted)))
    assert isinstance(pacer.acquire("alerts@contoso.com", 1), Granted)


def counting_reads(store: MemoryPaceStore) -> list[int]:
    reads = [0]
    original = store.read

    def counting_read(sender: str) -> tuple[PaceState, object]:
        reads[0] += 1
        return original(sender)

    store.read = counting_read  # type: ignore[method-assign]
    return reads


def test_on_a_quiet_mailbox_a_slot_is_one_write_and_no_read_once_the_row_is_known() -> None:
    store = MemoryPaceStore()
    reads = counting_reads(store)
    pacer = Pacer(store, LIMITS)
    first = pacer.acquire("alerts@contoso.com", 1)
    assert isinstance(first, Granted) and (reads[0], store.writes) == (1, 1)  # nothing known yet: one read
    second = pacer.acquire("alerts@contoso.com", 1)
    assert isinstance(second, Granted) and (reads[0], store.writes) == (1, 2)  # the row as this process wrote it


def test_a_release_on_its_own_is_one_merge_with_no_read() -> None:
    store = MemoryPaceStore()
    reads = counting_reads(store)
    pacer = Pacer(store, LIMITS)
    granted = pacer.acquire("alerts@contoso.com", 1)
    assert isinstance(granted, Granted)
    pacer.release("alerts@contoso.com", granted)
    assert (reads[0], store.writes) == (1, 2)
    assert store.rows.get(partition_of("alerts@contoso.com"), "pace") is not None
    state, _ = store.read("alerts@contoso.com")
    assert state.slots == {} and len(state.sends) == 1  # the slot is free; the send still counts for the minute


def test_a_release_folded_into_the_outcomes_write_keeps_the_row_known() -> None:
    """The outcome and the freed slot in one transaction (MemoryStatusStore shares the rows, as the Table does):
    the next slot on that mailbox is again one write and no read."""
    status = MemoryStatusStore()
    store = MemoryPaceStore(status.rows)
    reads = counting_reads(store)
    pacer = Pacer(store, LIMITS)
    key = StatusKey("alerts@contoso.com", "id", "order-1")
    record = status.create(StatusRecord(key=key, state="sending"))
    assert record is not None
    granted = pacer.acquire("alerts@contoso.com", 3)
    assert isinstance(granted, Granted)
    writes = pacer.release_writes("alerts@contoso.com", granted)
    written = status.replace_with(replace(record, state="sent"), writes)
    assert written.record is not None and written.row_etag is not None and written.record.state == "sent"
    pacer.released_in("alerts@contoso.com", written.row_write, written.row_etag)
    state, _ = store.read("alerts@contoso.com")
    assert state.slots == {} and len(state.sends) == 1 and sum(b[1] for b in state.recipients) == 3
    assert isinstance(pacer.acquire("alerts@contoso.com", 1), Granted)
    assert reads[0] == 2  # the check above, and the first acquire: none for the second


def test_a_stale_row_in_the_outcomes_write_falls_back_to_a_merge_and_frees_the_slot() -> None:
    status = MemoryStatusStore()
    store = MemoryPaceStore(status.rows)
    mine, theirs = Pacer(store, LIMITS), Pacer(store, LIMITS)  # two processes
    key = StatusKey("alerts@contoso.com", "id", "order-1")
    record = status.create(StatusRecord(key=key, state="sending"))
    assert record is not None
    granted = mine.acquire("alerts@contoso.com", 1)
    other = theirs.acquire("alerts@contoso.com", 1)  # the row changed since this process wrote it
    assert isinstance(granted, Granted) and isinstance(other, Granted)
    writes = mine.release_writes("alerts@contoso.com", granted)
    assert len(writes) == 2 and writes[0].etag is not None and writes[1].etag is None
    written = status.replace_with(replace(record, state="sent"), writes)
    assert written.record is not None and written.row_etag is not None
    assert written.row_write is writes[1]  # the merge, not the stale replace
    mine.released_in("alerts@contoso.com", written.row_write, written.row_etag)
    state, _ = store.read("alerts@contoso.com")
    assert list(state.slots) == [other.slot]  # mine freed by the merge, theirs kept
    # What this process wrote is not what the row holds now: its next slot must not be taken from memory (it
    # would be written under the merge's ETag over their slot, and a fifth send could start).
    again = mine.acquire("alerts@contoso.com", 1)
    assert isinstance(again, Granted)
    state, _ = store.read("alerts@contoso.com")
    assert set(state.slots) == {other.slot, again.slot}


def test_a_mailbox_over_its_pace_in_what_this_process_remembers_is_read_before_waiting() -> None:
    store = MemoryPaceStore()
    mine, theirs = Pacer(store, LIMITS), Pacer(store, LIMITS)
    held = [mine.acquire("alerts@contoso.com", 1) for _ in range(4)]  # all four slots, as this process knows it
    assert all(isinstance(g, Granted) for g in held)
    for g in held:
        theirs.release("alerts@contoso.com", g)  # freed through another process (a merge): this one cannot know
    assert isinstance(mine.acquire("alerts@contoso.com", 1), Granted)


def test_a_try_graph_did_not_accept_gives_back_its_recipients_and_its_minute() -> None:
    state, granted = decide(PaceState(), 500, 1000.0, LIMITS)  # type: ignore[misc]
    after = released(state, granted.slot, 1001.0, given_back=True)
    assert after.slots == {} and after.sends == [] and sum(b[1] for b in after.recipients) == 0
    kept = released(state, granted.slot, 1001.0, given_back=False)
    assert kept.sends == [[1001.0, granted.slot, "default"]] and sum(b[1] for b in kept.recipients) == 500


def test_a_500_recipient_request_throttled_twenty_times_counts_500_not_10000() -> None:
    """Issue 18, item 3: every throttled try took a slot and counted its 500 recipients; nothing gave them back."""
    pacer = Pacer(MemoryPaceStore(), LIMITS)
    for _ in range(20):
        granted = pacer.acquire("alerts@contoso.com", 500)
        assert isinstance(granted, Granted)
        pacer.release("alerts@contoso.com", granted, given_back=True)  # 429: Graph did not accept it
    last = pacer.acquire("alerts@contoso.com", 500)
    assert isinstance(last, Granted)
    pacer.release("alerts@contoso.com", last)  # 202
    state, _ = pacer._store.read("alerts@contoso.com")
    assert sum(b[1] for b in state.recipients) == 500
    assert isinstance(pacer.acquire("alerts@contoso.com", 9_500), Granted)  # the rest of the day's budget is there


def test_uploads_are_paced_at_150_mb_per_five_minutes() -> None:
    state = grant(PaceState(), upload_bytes=100_000_000, now=1000.0)
    state.slots.clear()
    over = decide(state, 1, 1010.0, LIMITS, upload_bytes=60_000_000)
    assert isinstance(over, Over) and over.limit == "uploads per 5 minutes" and over.seconds == 290.0
    assert not isinstance(decide(state, 1, 1010.0, LIMITS, upload_bytes=50_000_000), Over)  # 150 MB exactly
    assert not isinstance(decide(state, 1, 1300.5, LIMITS, upload_bytes=60_000_000), Over)  # the window moved on
    # One message larger than the whole budget still goes, on a mailbox that uploaded nothing in the window.
    assert not isinstance(decide(PaceState(), 1, 1000.0, LIMITS, upload_bytes=160_000_000), Over)


def test_a_release_after_another_workers_write_reads_again_and_keeps_its_slot() -> None:
    pacer = Pacer(MemoryPaceStore(), LIMITS)
    first = pacer.acquire("alerts@contoso.com", 1)
    second = pacer.acquire("alerts@contoso.com", 1)
    assert isinstance(first, Granted) and isinstance(second, Granted)
    pacer.release("alerts@contoso.com", first)  # its version is stale: the second grant wrote since
    state, _ = pacer._store.read("alerts@contoso.com")
    assert list(state.slots) == [second.slot]


def test_uploads_of_a_try_graph_did_not_accept_are_given_back() -> None:
    """An app declares a claim-checked attachment of 140 MB that the relay then refuses before any Graph call (too
    large, or no such blob): the mailbox's upload budget, shared with every other app's sends, is untouched."""
    pacer = Pacer(MemoryPaceStore(), LIMITS)
    for _ in range(3):
        granted = pacer.acquire("alerts@contoso.com", 1, upload_bytes=140_000_000)
        assert isinstance(granted, Granted)
        pacer.release("alerts@contoso.com", granted, given_back=True)
    state, _ = pacer._store.read("alerts@contoso.com")
    assert state.uploads == []
    assert isinstance(pacer.acquire("alerts@contoso.com", 1, upload_bytes=140_000_000), Granted)
    kept = decide(PaceState(), 1, 1000.0, LIMITS, upload_bytes=5)
    assert not isinstance(kept, Over)
    after = released(kept[0], kept[1].slot, 1001.0)
    assert after.uploads == [[1000.0, 5.0, kept[1].slot]]  # an accepted send keeps its bytes
