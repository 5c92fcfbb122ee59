"""The delivery report (shared/report.py): its figures from status records, and the CLI that prints them.

Records are built by hand for each rule, and one paced request goes through the real delivery path (the memory
stores of tests/unit/test_delivery.py), so the `paced` counter the report relies on is the one delivery writes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import report
from shared.status import (
    DEAD_LETTERED,
    QUEUED,
    RETRYING,
    SCHEDULED,
    SENDING,
    SENT,
    UNKNOWN,
    MemoryStatusStore,
    StatusKey,
    StatusRecord,
    from_entity,
    to_entity,
)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(hours=24)
ALERTS = "alerts@contoso.com"
RECEIPTS = "receipts@contoso.com"


def rec(key: str, state: str, *, app: str = "default", sender: str = ALERTS, **fields: Any) -> StatusRecord:
    fields.setdefault("created_at", NOW - timedelta(hours=1))
    fields.setdefault("updated_at", NOW - timedelta(minutes=30))
    return StatusRecord(key=StatusKey(sender, "id", key, app), state=state, **fields)


def sent(key: str, seconds: float, **fields: Any) -> StatusRecord:
    enqueued = NOW - timedelta(hours=1)
    fields.setdefault("enqueued_at", enqueued)
    fields.setdefault("attempts", 1)
    return rec(key, SENT, sent_at=enqueued + timedelta(seconds=seconds), **fields)


def row(r: report.Report, app: str, sender: str) -> report.Figures:
    [found] = [f for f in r.rows if (f.app, f.sender) == (app, sender)]
    return found


def test_rows_per_app_and_sender_with_a_total_of_all() -> None:
    records = [
        sent("a", 2),
        sent("b", 4, sender=RECEIPTS),
        sent("c", 6, app="billing", sender=ALERTS),
        rec("d", DEAD_LETTERED, app="billing", last_error_code="ErrorAccessDenied"),
    ]
    r = report.build(records, SINCE, NOW)
    assert [(f.app, f.sender) for f in r.rows] == [("billing", ALERTS), ("default", ALERTS), ("default", RECEIPTS)]
    billing = row(r, "billing", ALERTS)
    assert (billing.requests, billing.sent, billing.dead_lettered_total) == (2, 1, 1)
    assert (r.total.requests, r.total.sent, r.total.dead_lettered_total) == (4, 3, 1)
    assert r.total.app is None and r.total.sender is None


def test_dead_letters_are_counted_by_code_most_frequent_first() -> None:
    records = [
        rec("a", DEAD_LETTERED, last_error_code="SendAtInPast"),
        rec("b", DEAD_LETTERED, last_error_code="ErrorAccessDenied"),
        rec("c", DEAD_LETTERED, last_error_code="ErrorAccessDenied"),
        rec("d", DEAD_LETTERED),
        rec("e", RETRYING, last_error_code="ServiceUnavailable"),  # a code, but not a dead letter
    ]
    figures = report.build(records, SINCE, NOW).total
    assert list(figures.dead_lettered.items()) == [("ErrorAccessDenied", 2), ("(none)", 1), ("SendAtInPast", 1)]
    assert figures.dead_lettered_total == 4 and figures.states[DEAD_LETTERED] == 4 and figures.states[RETRYING] == 1


def test_retried_is_more_than_one_try_or_waiting_to_retry() -> None:
    records = [
        sent("once", 1),
        sent("twice", 1, attempts=2),
        rec("waiting", RETRYING, attempts=1),
        rec("dead-after-three", DEAD_LETTERED, attempts=3, last_error_code="ServiceUnavailable"),
        rec("claimed", SENDING, attempts=1),
    ]
    assert report.build(records, SINCE, NOW).total.retried == 3


def test_paced_is_the_records_counter_or_a_wait_in_progress() -> None:
    records = [
        sent("held-then-sent", 1, paced=2),
        rec("held-now", QUEUED, paced=1, last_error_code="Paced"),
        rec("older-record-held-now", QUEUED, last_error_code="Paced"),  # written before the counter existed
        sent("never-held", 1),
    ]
    assert report.build(records, SINCE, NOW).total.paced == 3


def test_unknown_is_in_state_unknown_or_resolved_from_it() -> None:
    records = [
        rec("now", UNKNOWN, attempts=1),
        sent("found", 1, resolution="found in Sent Items"),
        rec("gave-up", DEAD_LETTERED, resolution="unknown", last_error_code="SendOutcomeUnknown"),
        sent("plain", 1),
    ]
    assert report.build(records, SINCE, NOW).total.unknown == 3


def test_only_records_changed_in_the_window_and_of_the_app_asked_for() -> None:
    old = sent("old", 1, updated_at=SINCE - timedelta(seconds=1))
    edge = sent("edge", 1, updated_at=SINCE)
    other = sent("other", 1, app="billing")
    r = report.build([old, edge, other], SINCE, NOW, app="default")
    assert r.total.requests == 1 and [f.app for f in r.rows] == ["default"] and r.app == "default"


def test_enqueue_to_sent_percentiles_interpolate_between_ranks() -> None:
    records = [sent(f"k{i}", float(i)) for i in range(1, 101)]
    latency = report.build(records, SINCE, NOW).total.latency
    assert latency.count == 100 and latency.p50 == pytest.approx(50.5) and latency.p95 == pytest.approx(95.05)


def test_one_sent_request_is_its_own_percentiles_and_none_gives_none() -> None:
    one = report.build([sent("k", 7)], SINCE, NOW).total.latency
    assert (one.count, one.p50, one.p95) == (1, 7, 7)
    none = report.build([rec("q", DEAD_LETTERED, last_error_code="X")], SINCE, NOW).total.latency
    assert (none.count, none.p50, none.p95) == (0, None, None)


def test_a_record_without_enqueued_at_is_timed_from_created_at_and_counted_so() -> None:
    created = NOW - timedelta(hours=1)
    older = rec("older", SENT, created_at=created, sent_at=created + timedelta(seconds=30))
    latency = report.build([older, sent("new", 10)], SINCE, NOW).total.latency
    assert latency.count == 2 and latency.from_created_at == 1
    assert sorted([latency.p50, latency.p95]) == [pytest.approx(20), pytest.approx(29)]


def test_a_send_a_moment_before_storages_insertion_time_counts_as_zero() -> None:
    latency = report.build([sent("skewed", -0.3)], SINCE, NOW).total.latency
    assert latency.p50 == 0.0


def test_json_names_every_figure() -> None:
    records = [sent("a", 2), rec("b", DEAD_LETTERED, last_error_code="ErrorAccessDenied"), rec("c", SCHEDULED)]
    data = json.loads(json.dumps(report.build(records, SINCE, NOW).to_json()))
    assert data["since"] == "2026-12-04T12:00:00Z" and data["until"] == "2026-12-05T12:00:00Z" and data["app"] is None
    [only] = data["rows"]
    assert only["app"] == "default" and only["sender"] == ALERTS
    assert only["deadLettered"] == 1 and only["deadLetteredByCode"] == {"ErrorAccessDenied": 1}
    assert only["states"][SCHEDULED] == 1 and only["enqueueToSent"] == {
        "count": 1,
        "fromCreatedAt": 0,
        "p50Seconds": 2.0,
        "p95Seconds": 2.0,
    }
    assert {"requests", "sent", "retried", "paced", "unknown"} <= set(only) and "app" not in data["total"]


def test_the_scheduled_requests_soonest_first_and_a_timeline_in_time_order() -> None:
    later = rec("later", SCHEDULED, not_before=NOW + timedelta(hours=2))
    sooner = rec("sooner", SCHEDULED, not_before=NOW + timedelta(hours=1))
    assert [r.key.value for r in report.waiting_scheduled([later, sent("x", 1), sooner])] == ["sooner", "later"]
    created = NOW - timedelta(minutes=10)
    retried = rec(
        "r",
        RETRYING,
        enqueued_at=created - timedelta(seconds=5),
        created_at=created,
        first_attempt_at=created,
        last_attempt_at=created + timedelta(minutes=1),
        not_before=created + timedelta(minutes=2),
    )
    assert [name for name, _ in report.timeline(retried)] == [
        "enqueued",
        "created",
        "first attempt",
        "last attempt",
        "not before",
    ]
    done = replace_state(retried, SENT, sent_at=created + timedelta(minutes=3))
    assert [name for name, _ in report.timeline(done)][-1] == "sent"  # a stale not-before is no longer a step
    dead = replace_state(retried, DEAD_LETTERED, updated_at=created + timedelta(minutes=4))
    assert report.timeline(dead)[-1] == ("dead-lettered", created + timedelta(minutes=4))


def replace_state(record: StatusRecord, state: str, **fields: Any) -> StatusRecord:
    from dataclasses import replace

    return replace(record, state=state, **fields)


def test_durations_read_as_an_operator_reads_them() -> None:
    assert [report.duration(s) for s in (None, 0.42, 12.4, 185, 7800)] == ["-", "0.4s", "12s", "3m 05s", "2h 10m"]


# --- The paced counter, as delivery writes it --------------------------------------------------------------


def test_a_request_the_pacing_held_counts_as_paced_after_it_is_sent() -> None:
    """Delivery's hint `Paced` is gone once the request is sent: the record's counter is what the report reads."""
    from tests.unit.test_delivery import REQUEST, SENDER, paced

    s = paced(MAILBOX_MESSAGES_PER_MINUTE="1")
    s.outbox({**REQUEST, "id": "first"}, msg_id="q-1")
    s.outbox({**REQUEST, "id": "second"}, msg_id="q-2")  # over the mailbox's minute: put back queued
    held = s.record(StatusKey(SENDER, "id", "second"))
    assert held.state == QUEUED and held.paced == 1
    s.clock.advance(60)
    s.run_retries()
    second = s.record(StatusKey(SENDER, "id", "second"))
    assert second.state == SENT and second.last_error_code is None and second.paced == 1
    assert second.to_json()["paced"] == 1
    assert from_entity(to_entity(second)).paced == 1  # kept in the Table
    figures = report.build([s.record(StatusKey(SENDER, "id", k)) for k in ("first", "second")], SINCE, s.clock.now)
    assert figures.total.paced == 1 and figures.total.sent == 2


def test_an_entity_written_before_the_counter_reads_as_never_paced() -> None:
    entity = to_entity(sent("old", 1))
    del entity["paced"]
    assert from_entity(entity).paced == 0


# --- mailrelay report ------------------------------------------------------------------------------------


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stores: list[Any], *argv: str) -> Any:
    import shared.cli.report as cli
    from shared.cli import main

    seen: dict[str, Any] = {}

    def fake_stores(conn: Any, app: str | None) -> list[Any]:
        seen["app"] = app
        return stores

    monkeypatch.setattr(cli, "status_stores", fake_stores)
    code = main(["report", "--connection-string", "UseDevelopmentStorage=true", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err, seen


@pytest.fixture
def store() -> MemoryStatusStore:
    now = datetime.now(UTC)
    memory = MemoryStatusStore()
    for record in (
        sent("a", 3, updated_at=now - timedelta(minutes=5)),
        rec("b", DEAD_LETTERED, last_error_code="ErrorAccessDenied", updated_at=now - timedelta(minutes=5)),
        rec("c", SCHEDULED, app="billing", not_before=now + timedelta(hours=1), updated_at=now),
        sent("d", 3, updated_at=now - timedelta(days=3)),  # outside 24h
    ):
        memory.create(record)
    return memory


def test_cli_prints_a_table_of_the_figures(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store: MemoryStatusStore
) -> None:
    monkeypatch.setattr("shared.cli.common.unreachable_local_endpoint", lambda *a, **k: None)
    code, out, err, seen = run_cli(monkeypatch, capsys, [store], "--since", "24h")
    assert code == 0 and err == "" and seen["app"] is None
    lines = out.splitlines()
    assert lines[1].split()[:4] == ["APP", "SENDER", "REQUESTS", "SENT"]
    assert any(line.split()[:5] == ["default", ALERTS, "2", "1", "1"] for line in lines)
    assert any(line.split()[:4] == ["billing", ALERTS, "1", "0"] for line in lines)
    assert any(line.split()[:3] == ["all", "3", "1"] for line in lines)
    assert "ErrorAccessDenied 1" in out


def test_cli_json_is_the_reports_json_for_the_app_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store: MemoryStatusStore
) -> None:
    monkeypatch.setattr("shared.cli.common.unreachable_local_endpoint", lambda *a, **k: None)
    code, out, _, seen = run_cli(monkeypatch, capsys, [store], "--app", "billing", "--json")
    data = json.loads(out)
    assert code == 0 and seen["app"] == "billing" and data["app"] == "billing"
    assert [(r["app"], r["states"]["scheduled"]) for r in data["rows"]] == [("billing", 1)]
    assert datetime.fromisoformat(data["until"]) - datetime.fromisoformat(data["since"]) == timedelta(hours=24)


def test_cli_says_when_there_is_nothing_to_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("shared.cli.common.unreachable_local_endpoint", lambda *a, **k: None)
    code, out, _, _ = run_cli(monkeypatch, capsys, [MemoryStatusStore()], "--since", "30m")
    assert code == 0 and "no requests changed since" in out


def test_cli_refuses_a_span_it_cannot_read(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err, _ = run_cli(monkeypatch, capsys, [], "--since", "yesterday")
    assert code == 2 and "--since takes a span such as 30m, 1h or 2d" in err


def test_cli_notes_records_timed_from_created_at(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("shared.cli.common.unreachable_local_endpoint", lambda *a, **k: None)
    now = datetime.now(UTC)
    memory = MemoryStatusStore()
    memory.create(rec("old", SENT, created_at=now - timedelta(minutes=2), sent_at=now, updated_at=now))
    _, out, _, _ = run_cli(monkeypatch, capsys, [memory])
    assert "1 sent request has no enqueuedAt" in out
