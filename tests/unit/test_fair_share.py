"""The fair share of a shared mailbox (issue 20, item 5; shared/pacing.py): an app with a declared share never uses
more than it of a mailbox's minute or day, the apps without one share what the shares leave, and an app within its
share is never held by another app's use of the minute or the day."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.apps import DEFAULT_APP
from shared.handlers import handle_mail_message
from shared.pacing import AppShare, Granted, Limits, MemoryPaceStore, Over, Pacer, PaceState, decide, released
from shared.settings import load_settings
from shared.status import StatusKey
from tests.unit.test_delivery import REQUEST, SENDER, paced
from tests.unit.test_settings import GOOD

SHARED = "alerts@contoso.com"
OTHER = "receipts@contoso.com"  # a mailbox no app declares a share of
# A 10 a minute and 1,000 recipients a day, B 15 and 5,000: the mailbox's 30 and 10,000 leave the apps without a
# share (the default outbox, C) 5 messages a minute and 4,000 recipients a day, together.
LIMITS = Limits(
    max_concurrent=4,
    messages_per_window=30,
    rate_window_seconds=60,
    recipients_per_window=10_000,
    recipient_window_seconds=86_400,
    shares=(
        AppShare("billing", frozenset({SHARED}), 10, 1_000),
        AppShare("bulk", frozenset({SHARED}), 15, 5_000),
    ),
)


def take(
    state: PaceState, app: str, now: float, recipients: int = 1, mailbox: str = SHARED, limits: Limits = LIMITS
) -> PaceState:
    """A send by `app` granted and answered at once (its slot freed, its counts kept)."""
    decided = decide(state, recipients, now, limits, app=app, mailbox=mailbox)
    assert not isinstance(decided, Over), decided
    after, granted = decided
    return released(after, granted.slot, now)


def flood(state: PaceState, app: str, count: int, start: float, recipients: int = 1, step: float = 0.1) -> PaceState:
    for i in range(count):
        state = take(state, app, start + i * step, recipients)
    return state


def test_an_app_flooding_the_mailbox_never_holds_another_apps_mail() -> None:
    state = flood(PaceState(), "bulk", 15, 1000.0)  # B's whole share of the minute
    over = decide(state, 1, 1002.0, LIMITS, app="bulk", mailbox=SHARED)
    assert isinstance(over, Over) and over.app == "bulk" and over.limit == "messages per minute"
    assert not isinstance(
        decide(state, 1, 1002.0, LIMITS, app="billing", mailbox=SHARED), Over
    )  # A's mail goes at once


def test_an_app_over_its_share_waits_exactly_until_its_own_window_frees() -> None:
    state = flood(PaceState(), "billing", 5, 1000.0)
    state = flood(state, "billing", 5, 1010.0)  # A's 10: its oldest was sent at 1000
    state = flood(state, "bulk", 3, 1020.0)  # B's sends are B's: they do not move A's wait
    over = decide(state, 1, 1030.0, LIMITS, app="billing", mailbox=SHARED)
    assert isinstance(over, Over) and over.seconds == pytest.approx(30.0) and over.app == "billing" and not over.pooled
    assert over.reason == "app billing's share of the mailbox's messages per minute"
    assert isinstance(decide(state, 1, 1059.9, LIMITS, app="billing", mailbox=SHARED), Over)
    assert not isinstance(decide(state, 1, 1060.05, LIMITS, app="billing", mailbox=SHARED), Over)


def test_the_apps_without_a_share_share_what_the_shares_leave() -> None:
    """30 - 10 - 15 = 5 a minute for the default outbox and C together; 10,000 - 1,000 - 5,000 = 4,000 a day."""
    state = flood(PaceState(), DEFAULT_APP, 3, 1000.0)
    state = flood(state, "hr", 2, 1001.0)
    for app in (DEFAULT_APP, "hr"):
        over = decide(state, 1, 1002.0, LIMITS, app=app, mailbox=SHARED)
        assert isinstance(over, Over) and over.pooled and over.app is None and over.seconds == pytest.approx(58.0)
        assert over.reason == "the share of the mailbox's messages per minute left to the apps without one"
    assert not isinstance(decide(state, 1, 1002.0, LIMITS, app="billing", mailbox=SHARED), Over)
    assert not isinstance(decide(state, 1, 1002.0, LIMITS, app="bulk", mailbox=SHARED), Over)
    days = flood(PaceState(), "hr", 8, 1000.0, recipients=500, step=15)  # the pool's 4,000 recipients
    over = decide(days, 1, 2000.0, LIMITS, app=DEFAULT_APP, mailbox=SHARED)
    assert isinstance(over, Over) and over.pooled and over.limit == "recipients per day"


def test_the_recipients_share_waits_for_the_apps_own_oldest_bucket() -> None:
    state = flood(PaceState(), "bulk", 6, 0.0, recipients=500)  # 3,000 in the day's first hour
    state = flood(state, "bulk", 4, 7200.0, recipients=500)  # 2,000 two hours later: B's 5,000
    state = flood(state, "billing", 1, 7200.0, recipients=400)
    over = decide(state, 1, 7300.0, LIMITS, app="bulk", mailbox=SHARED)
    assert isinstance(over, Over) and over.app == "bulk" and over.limit == "recipients per day"
    assert over.seconds == 86_400.0 - 7300.0  # B's first hour must leave the day, whatever A did
    assert not isinstance(decide(state, 500, 7300.0, LIMITS, app="billing", mailbox=SHARED), Over)  # 900 of A's 1,000
    over = decide(state, 601, 7300.0, LIMITS, app="billing", mailbox=SHARED)
    assert isinstance(over, Over) and over.app == "billing"


def test_the_mailboxs_own_limit_still_holds_for_all_apps_together() -> None:
    """Microsoft's limits are the mailbox's: no share lifts them. Concurrency is the mailbox's for every app."""
    state = PaceState()
    for app in ("billing", "bulk", "hr", "billing"):
        decided = decide(state, 1, 1000.0, LIMITS, app=app, mailbox=SHARED)
        assert not isinstance(decided, Over)
        state = decided[0]
    over = decide(state, 1, 1000.0, LIMITS, app="bulk", mailbox=SHARED)
    assert isinstance(over, Over) and over.limit == "concurrent sends" and over.app is None and not over.pooled
    assert over.reason == "the mailbox's concurrent sends limit"


def test_a_mailbox_no_app_declares_a_share_of_keeps_its_whole_limit_for_every_app() -> None:
    state = PaceState()
    assert LIMITS.share(OTHER, "bulk", "messages") is None
    for i in range(30):
        state = take(state, "bulk" if i % 2 else "hr", 1000.0 + i * 0.1, mailbox=OTHER)
    over = decide(state, 1, 1004.0, LIMITS, app="billing", mailbox=OTHER)
    assert isinstance(over, Over) and over.app is None and not over.pooled and over.limit == "messages per minute"


def test_shares_that_leave_the_others_nothing_hold_their_mail_named_not_forever_at_once() -> None:
    full = Limits(shares=(AppShare("billing", frozenset({SHARED}), 30, 10_000),))
    over = decide(PaceState(), 1, 1000.0, full, app=DEFAULT_APP, mailbox=SHARED)
    assert isinstance(over, Over) and over.pooled and over.limit == "recipients per day"
    assert over.seconds == full.recipient_window_seconds  # looked at again after a window, not in a loop
    assert not isinstance(decide(PaceState(), 1, 1000.0, full, app="billing", mailbox=SHARED), Over)


def test_a_request_larger_than_its_apps_whole_share_goes_alone_once_the_apps_day_is_empty() -> None:
    """The one exception to the proof (the module's docstring): held forever otherwise."""
    small = Limits(shares=(AppShare("billing", frozenset({SHARED}), None, 300),))
    state = take(PaceState(), "billing", 1000.0, recipients=400, limits=small)  # alone: its day was empty
    over = decide(state, 1, 1001.0, small, app="billing", mailbox=SHARED)
    # Its hour's bucket (from 0) leaves the day at 86,400.
    assert isinstance(over, Over) and over.app == "billing" and over.seconds == 86_400.0 - 1001.0


def test_a_try_graph_did_not_accept_gives_back_the_apps_counts_too() -> None:
    state = flood(PaceState(), "bulk", 14, 1000.0, recipients=100)
    decided = decide(state, 500, 1002.0, LIMITS, app="bulk", mailbox=SHARED)
    assert not isinstance(decided, Over)
    after = released(decided[0], decided[1].slot, 1003.0, given_back=True)  # a 429: not sent
    assert after.sends == state.sends and sum(b[2]["bulk"] for b in after.recipients) == 1_400
    assert not isinstance(decide(after, 1, 1003.0, LIMITS, app="bulk", mailbox=SHARED), Over)  # its 15th again
    kept = released(decided[0], decided[1].slot, 1003.0)  # accepted: it counts, from Graph's answer
    assert kept.sends[-1] == [1003.0, decided[1].slot, "bulk"] and sum(b[2]["bulk"] for b in kept.recipients) == 1_900
    assert isinstance(decide(kept, 1, 1003.0, LIMITS, app="bulk", mailbox=SHARED), Over)


def test_releases_merged_into_the_row_give_back_the_apps_counts() -> None:
    """Freed through another process (the unconditional merge, folded in by the next write), as today's."""
    store = MemoryPaceStore()
    mine, theirs = Pacer(store, LIMITS), Pacer(store, LIMITS)
    granted = mine.acquire(SHARED, 500, app="bulk")
    assert isinstance(granted, Granted)
    theirs.release(SHARED, granted, given_back=True)
    state, _ = store.read(SHARED)
    assert state.slots == {} and state.sends == [] and state.recipients[0][2] == {"bulk": 0}


def test_the_counts_live_in_the_one_row_every_instance_shares_and_a_slot_stays_one_write() -> None:
    store = MemoryPaceStore()
    flooder, other = Pacer(store, LIMITS), Pacer(store, LIMITS)  # B's instance, A's instance
    taken = [flooder.acquire(SHARED, 1, app="bulk") for _ in range(4)]
    for g in taken:
        assert isinstance(g, Granted)
        flooder.release(SHARED, g)
    for _ in range(11):
        g = flooder.acquire(SHARED, 1, app="bulk")
        assert isinstance(g, Granted)
        flooder.release(SHARED, g)
    over = flooder.acquire(SHARED, 1, app="bulk")
    assert isinstance(over, Over) and over.app == "bulk"
    writes = store.writes
    mail = other.acquire(SHARED, 1, app="billing")  # A's instance reads the row once, and writes once
    assert isinstance(mail, Granted) and store.writes == writes + 1
    again = Pacer(store, LIMITS).acquire(SHARED, 1, app="bulk")  # a third instance sees B's 15 too
    assert isinstance(again, Over) and again.app == "bulk"


def test_a_row_written_before_apps_is_the_default_apps() -> None:
    old = json.dumps({"slots": {"s1": [2000.0, 3.0, 0.0]}, "sends": [[999.0, "s1"]], "recipients": [[0.0, 3.0]]})
    state = PaceState.from_json(old)
    assert state.slots == {"s1": [2000.0, 3.0, 0.0, DEFAULT_APP]}
    assert state.sends == [[999.0, "s1", DEFAULT_APP]] and state.recipients == [[0.0, 3.0, {DEFAULT_APP: 3.0}]]
    after = released(state, "s1", 1000.0, given_back=True)
    assert after.recipients == [[0.0, 0.0, {DEFAULT_APP: 0.0}]]


def test_limits_of_settings_carry_the_declared_shares() -> None:
    from shared.pacing import limits_of

    apps = [
        {"name": "billing", "senders": [SHARED], "messagesPerMinute": 10},
        {"name": "bulk", "senders": [SHARED, OTHER], "recipientsPerDay": 5_000},
        {"name": "hr", "senders": [OTHER]},
    ]
    limits = limits_of(load_settings({**GOOD, "MAILRELAY_APPS": json.dumps(apps)}))
    assert limits.shares == (
        AppShare("billing", frozenset({SHARED}), 10, None),
        AppShare("bulk", frozenset({SHARED, OTHER}), None, 5_000),
    )
    a = limits.share(SHARED, "billing", "messages")
    assert a is not None and (a.cap, a.app) == (10, "billing")
    pool = limits.share(SHARED, "bulk", "messages")  # B declared no share of messages: it is in the pool
    assert pool is not None and (pool.cap, pool.app, pool.declared) == (20, None, frozenset({"billing"}))
    assert limits.share(OTHER, "hr", "messages") is None
    day = limits.share(OTHER, "hr", "recipients")
    assert day is not None and (day.cap, day.app) == (5_000, None)


# The property itself, over any interleaving: with shares that fit (as settings require), an app under its own
# share is never told to wait for the minute or the day, whatever the others sent.
SHARE_LIMITS = Limits(
    max_concurrent=4,
    messages_per_window=30,
    rate_window_seconds=60,
    recipients_per_window=2_000,
    recipient_window_seconds=600,
    shares=(AppShare("billing", frozenset({SHARED}), 7, 500), AppShare("bulk", frozenset({SHARED}), 13, 900)),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["billing", "bulk", "hr", DEFAULT_APP]),
            st.integers(min_value=1, max_value=35),  # a burst: the app sends this many at once (a flood)
            st.sampled_from([0.0, 0.5, 7.0, 61.0]),  # then time passes
            st.sampled_from([1, 2, 40, 300]),
            st.booleans(),  # accepted by Graph, or given back (a 429)
        ),
        max_size=40,
    )
)
def test_an_app_within_its_share_is_never_held_by_the_others(steps: list[tuple[str, int, float, int, bool]]) -> None:
    state, now = PaceState(), 0.0
    for app, burst, pause, recipients, accepted in steps:
        for _ in range(burst):
            share_m = SHARE_LIMITS.share(SHARED, app, "messages")
            share_r = SHARE_LIMITS.share(SHARED, app, "recipients")
            assert share_m is not None and share_r is not None
            window_sends = [s for s in state.sends if s[0] > now - 60 and share_m.counts(s[2])]
            day = [b for b in state.recipients if b[0] > now - 600]
            used = sum(n for b in day for a, n in b[2].items() if share_r.counts(a))
            within = len(window_sends) < share_m.cap and (used + recipients <= share_r.cap or used == 0)
            decided = decide(state, recipients, now, SHARE_LIMITS, app=app, mailbox=SHARED)
            if isinstance(decided, Over):
                # Only the app's own share (or its pool's) may hold it for the minute or the day.
                assert not within or decided.limit in ("concurrent sends", "uploads per 5 minutes"), decided
                break
            state = released(decided[0], decided[1].slot, now + 0.01, given_back=not accepted)
            # Microsoft's limits still hold for the mailbox, all apps together.
            assert len([s for s in state.sends if s[0] > now - 60]) <= 30
            assert sum(b[1] for b in state.recipients if b[0] > now - 600) <= 2_000
        now += pause


def test_paced_by_its_own_share_the_record_and_the_log_say_so(caplog: pytest.LogCaptureFixture) -> None:
    apps = [
        {"name": "billing", "senders": [SENDER], "messagesPerMinute": 1},
        {"name": "bulk", "senders": [SENDER], "messagesPerMinute": 2},
    ]
    s = paced(MAILRELAY_APPS=json.dumps(apps))

    def enqueue(app: str, i: int) -> None:
        body = json.dumps({**REQUEST, "id": f"{app}-{i}"}).encode()
        message = QueueMessage(id=f"q-{app}-{i}", body=body, dequeue_count=1, pop_receipt="p")
        handle_mail_message(message, s.rt, app=app)

    with caplog.at_level(logging.INFO):
        for i in range(4):
            enqueue("bulk", i)  # B floods: 2 go, 2 wait for B's share
        enqueue("billing", 0)  # A's one mail goes at once
    assert len(s.graph.calls) == 3
    sent_a = s.record(StatusKey(SENDER, "id", "billing-0", "billing"))
    assert sent_a.state == "sent"
    waiting = s.record(StatusKey(SENDER, "id", "bulk-2", "bulk"))
    assert waiting.state == "queued" and waiting.last_error_hint == (
        "waiting for app bulk's share of the mailbox's messages per minute"
    )
    lines: list[Any] = [r for r in caplog.records if getattr(r, "event", None) == "mail.paced"]
    assert len(lines) == 2 and all(r.paceShare == "app" and r.app == "bulk" for r in lines)
    assert "over app bulk's share of the mailbox's messages per minute" in lines[0].getMessage()
    # The mailbox's own limit is named as before.
    s2 = paced(MAILBOX_MESSAGES_PER_MINUTE="1")
    with caplog.at_level(logging.INFO):
        caplog.clear()
        s2.outbox()
        s2.outbox({**REQUEST, "id": "order-43"}, msg_id="q-2")
    [line] = [r for r in caplog.records if getattr(r, "event", None) == "mail.paced"]
    assert line.paceShare == "mailbox" and "over the mailbox's messages per minute limit" in line.getMessage()
