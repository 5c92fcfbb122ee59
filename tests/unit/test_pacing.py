"""The pace decision (shared/pacing.py), a pure function: every limit made to bind, no I/O, no sleeping."""

from __future__ import annotations

import threading

from shared.pacing import Granted, Limits, MemoryPaceStore, Over, Pacer, PaceState, decide

LIMITS = Limits(max_concurrent=4, messages_per_window=30, rate_window_seconds=60, recipients_per_window=10_000)


def grant(state: PaceState, recipients: int = 1, now: float = 1000.0, limits: Limits = LIMITS) -> PaceState:
    decided = decide(state, recipients, now, limits)
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


def test_a_release_on_a_quiet_mailbox_is_one_write_with_no_read() -> None:
    store = MemoryPaceStore()
    reads = [0]
    original = store.read

    def counting_read(sender: str) -> tuple[PaceState, object]:
        reads[0] += 1
        return original(sender)

    store.read = counting_read  # type: ignore[method-assign]
    pacer = Pacer(store, LIMITS)
    granted = pacer.acquire("alerts@contoso.com", 1)
    assert isinstance(granted, Granted) and (reads[0], store.writes) == (1, 1)
    pacer.release("alerts@contoso.com", granted)
    assert (reads[0], store.writes) == (1, 2)
    state, _ = original("alerts@contoso.com")
    assert state.slots == {} and len(state.sends) == 1  # the slot is free; the send still counts for the minute


def test_a_release_after_another_workers_write_reads_again_and_keeps_its_slot() -> None:
    pacer = Pacer(MemoryPaceStore(), LIMITS)
    first = pacer.acquire("alerts@contoso.com", 1)
    second = pacer.acquire("alerts@contoso.com", 1)
    assert isinstance(first, Granted) and isinstance(second, Granted)
    pacer.release("alerts@contoso.com", first)  # its version is stale: the second grant wrote since
    state, _ = pacer._store.read("alerts@contoso.com")
    assert list(state.slots) == [second.slot]
