"""Telemetry as data (shared/telemetry.py): every event the relay emits, driven here through the real delivery
code with fakes, carries only the fixed dimensions, never a subject, body or recipient's address, and counts its
metrics with the same dimensions, read back from OpenTelemetry's in-memory reader.

`emitted()` is the catalog of what the relay really emits (event names, dimension names, metric names and their
attributes); tests/infra/test_monitoring.py holds every name the alerts and the workbook query to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from shared import telemetry
from shared.handlers import handle_mail_message
from shared.status import StatusKey
from tests.fakes import Accepted, graph_error
from tests.unit.test_delivery import REQUEST, SENDER, Stack, make, paced

STANDARD = set(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {"message", "asctime"}
ADDRESSES = ("ops@contoso.com", "Boss@Fabrikam.example", "audit@contoso.com")


@dataclass
class Captured:
    records: list[logging.LogRecord] = field(default_factory=list)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def events(self) -> dict[str, set[str]]:
        """Each event emitted, with the union of the dimensions its records carried. A field logged as None is not
        one: OpenTelemetry drops an attribute whose value is None, so it never reaches customDimensions."""
        out: dict[str, set[str]] = {}
        for r in self.records:
            event = r.__dict__.get("event")
            if event:
                out.setdefault(event, set()).update(
                    k for k, v in r.__dict__.items() if k not in STANDARD and v is not None
                )
        return out

    def points(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Each metric's data points: (attributes, value: a sum, a histogram's count and sum, a gauge's value)."""
        data = self.reader.get_metrics_data()
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for p in metric.data.data_points:
                        value = (p.count, p.sum) if hasattr(p, "bucket_counts") else p.value
                        out.setdefault(metric.name, []).append((dict(p.attributes or {}), value))
        return out


@contextlib.contextmanager
def capturing() -> Iterator[Captured]:
    """The relay's log records and an in-memory metric reader, for the time of the block."""
    c = Captured()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            c.records.append(record)

    handler = Handler(level=logging.DEBUG)
    logger = logging.getLogger(telemetry.LOGGER_NAME)
    logger.addHandler(handler)
    telemetry.use_meter_provider(MeterProvider(metric_readers=[c.reader]))
    try:
        yield c
    finally:
        logger.removeHandler(handler)
        telemetry.use_meter_provider(None)


@pytest.fixture
def captured() -> Iterator[Captured]:
    with capturing() as c:
        yield c


def run_scenarios() -> None:
    """The send path's outcomes, each once: sent, throttled then sent, dead-lettered, paced, unknown and found."""
    s = make()
    enqueued = s.clock.now - timedelta(seconds=3)
    body = json.dumps(REQUEST).encode()
    handle_mail_message(
        QueueMessage(id="q-1", body=body, dequeue_count=1, pop_receipt="p", insertion_time=enqueued), s.rt
    )
    s = make()
    s.graph.replies = [graph_error(429, "ApplicationThrottled", "slow down", retry_after="2")]
    s.outbox({**REQUEST, "id": "throttled"})
    s.clock.advance(60)
    s.run_retries()
    s = make()
    s.graph.replies = [graph_error(403, "ErrorAccessDenied", "Access is denied.")]
    s.outbox({**REQUEST, "id": "denied"})
    p = paced(MAILBOX_MESSAGES_PER_MINUTE="1")
    p.outbox({**REQUEST, "id": "first"}, msg_id="q-1")
    p.outbox({**REQUEST, "id": "second"}, msg_id="q-2")
    u = make()
    u.graph.replies = [Accepted(graph_error(504, "GatewayTimeout", "late"))]
    u.outbox({**REQUEST, "id": "unknown"})
    u.clock.advance(3600)
    u.run_retries()


def run_timer_scenarios() -> None:
    """The timers' events, each once: the queue-depth timer over every kind of queue of the outbox and of a declared
    app, and the expiry check's findings the credential alerts read, through the log channel the timer always has
    (shared/bootstrap.py): a client secret inside a warning threshold, an expired one, and a secretless mode's
    refused token."""
    from dataclasses import replace

    from shared.expiry import ExpiryCheck, LogChannel, MemoryWarningRecords
    from shared.handlers import handle_queue_depths
    from shared.outcomes import RelayFailure, permanent
    from tests.fakes import ScriptedTokens
    from tests.unit.test_expiry import CLIENT, TENANT, Clock, FakeProperties, secret

    s = make(MAILRELAY_APPS=json.dumps([{"name": "billing", "senders": [SENDER]}]))
    depths = {"mail-outbox": 7, "mail-outbox-poison": 2, "mail-outbox-retry-poison": 1, "mail-outbox-billing": 3}
    s.rt = replace(s.rt, queue_depth=lambda name: depths.get(name, 0))
    handle_queue_depths(None, s.rt)

    common: dict[str, Any] = {
        "records": MemoryWarningRecords(),
        "channels": [LogChannel()],
        "warn_days": (30, 14, 7, 3, 1),
        "client_id": CLIENT,
        "tenant_id": TENANT,
        "clock": Clock(),
    }
    ExpiryCheck(secret=FakeProperties(secret(days=10)), **common).run()
    ExpiryCheck(secret=FakeProperties(secret(days=-1, version="v2")), **common).run()
    refused = permanent("CredentialUnavailable", "no managed identity answered")
    tokens = ScriptedTokens(failure=RelayFailure(refused))
    ExpiryCheck(secret=None, mode="managed-identity", tokens=tokens, **common).run()


def _capture_all_scenarios() -> Captured:
    with capturing() as c:
        run_scenarios()
        run_timer_scenarios()
    return c


def emitted() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """What the relay emits in run_scenarios and run_timer_scenarios: events with their dimensions, metrics with their
    attributes."""
    c = _capture_all_scenarios()
    metrics = {name: {k for attrs, _ in points for k in attrs} for name, points in c.points().items()}
    return c.events(), metrics


def emitted_values() -> dict[str, set[str]]:
    """The values each dimension took in those scenarios, records and metric attributes together (as text, as
    customDimensions holds them): what a query may compare a dimension with, e.g. the queue kinds or the expiry
    check's states."""
    c = _capture_all_scenarios()
    values: dict[str, set[str]] = {}
    for r in c.records:
        if r.__dict__.get("event"):
            for k, v in r.__dict__.items():
                if k not in STANDARD and v is not None:
                    values.setdefault(k, set()).add(str(v))
    for points in c.points().values():
        for attrs, _ in points:
            for k, v in attrs.items():
                values.setdefault(k, set()).add(str(v))
    return values


def test_every_event_carries_only_the_fixed_dimensions_and_no_mail_content(captured: Captured) -> None:
    run_scenarios()
    events = captured.events()
    assert {"mail.sent", "mail.retry", "mail.deadlettered", "mail.paced", "mail.unknown", "mail.resolved"} <= set(
        events
    )
    for event, dimensions in events.items():
        assert event in telemetry.EVENTS, event
        assert dimensions <= set(telemetry.DIMENSIONS), (event, dimensions - set(telemetry.DIMENSIONS))
    for record in captured.records:
        text = record.getMessage() + json.dumps({k: str(v) for k, v in record.__dict__.items() if k not in STANDARD})
        assert "Receipt for order 42" not in text and "secret-body-text" not in text
        assert not any(a.lower() in text.lower() for a in ADDRESSES)


def test_the_send_paths_events_carry_what_the_alerts_and_the_workbook_group_by(captured: Captured) -> None:
    run_scenarios()
    by_event: dict[str, list[logging.LogRecord]] = {}
    for r in captured.records:
        by_event.setdefault(r.__dict__.get("event", ""), []).append(r)
    sent = by_event["mail.sent"][0].__dict__
    assert (sent["app"], sent["sender"], sent["attempt"], sent["graphRequestId"]) == ("default", SENDER, 1, "req-1")
    assert sent["enqueueToOutcomeMs"] == 3000 and sent["graphLatencyMs"] >= 0
    (retry,) = by_event["mail.retry"]
    assert retry.__dict__["code"] == "ApplicationThrottled" and retry.__dict__["throttled"] is True
    (dead,) = by_event["mail.deadlettered"]
    assert dead.__dict__["code"] == "ErrorAccessDenied" and dead.__dict__["hint"]
    (wait,) = by_event["mail.paced"]
    assert (wait.__dict__["paceLimit"], wait.__dict__["paceShare"]) == ("messages per minute", "mailbox")
    (resolved,) = by_event["mail.resolved"]
    assert resolved.__dict__["resolution"] == "found"


def test_the_metrics_count_the_events_with_the_same_dimensions(captured: Captured) -> None:
    run_scenarios()
    points = captured.points()
    sent = {tuple(sorted(a.items())): v for a, v in points["mailrelay.sent"]}
    assert sent == {(("app", "default"), ("sender", SENDER)): 4}  # plain, after a 429, paced first, found
    (dead_attrs, dead), *_ = points["mailrelay.deadlettered"]
    assert dead_attrs == {"app": "default", "sender": SENDER, "code": "ErrorAccessDenied"} and dead == 1
    assert [v for _, v in points["mailrelay.throttled"]] == [1]
    assert {a["code"] for a, _ in points["mailrelay.retries"]} == {"ApplicationThrottled"}
    assert points["mailrelay.paced"] == [
        ({"app": "default", "sender": SENDER, "paceLimit": "messages per minute", "paceShare": "mailbox"}, 1)
    ]
    assert [a["resolution"] for a, _ in points["mailrelay.unknown_resolved"]] == ["found"]
    ((attrs, (count, total)),) = points["mailrelay.enqueue_to_sent"]
    assert attrs == {"app": "default", "sender": SENDER} and count == 1 and total == 3000  # only the one enqueued
    assert sum(c for _, (c, _) in points["mailrelay.graph_latency"]) == 6  # every answered sendMail call
    for name, entries in points.items():
        assert name in telemetry.METRICS
        for attrs, _ in entries:
            assert set(attrs) <= set(telemetry.METRICS[name][2]), (name, attrs)


def test_an_apps_id_that_names_an_event_is_only_a_key(captured: Captured) -> None:
    """The alerts match the `event` dimension: an app choosing the id "secret.expiry" changes no event."""
    s = make()
    s.outbox({**REQUEST, "id": "secret.expiry"})
    assert {r.__dict__["event"] for r in captured.records if "event" in r.__dict__} == {"mail.sent"}
    assert s.record(StatusKey(SENDER, "id", "secret.expiry")).state == "sent"


def test_a_broken_meter_never_stops_a_send(captured: Captured) -> None:
    class Broken:
        def get_meter(self, name: str) -> Any:
            raise RuntimeError("exporter down")

    telemetry.use_meter_provider(Broken())
    s: Stack = make()
    s.outbox()
    assert len(s.graph.calls) == 1 and s.record().state == "sent"


def test_the_catalog_is_what_the_scenarios_emit() -> None:
    events, metrics = emitted()
    assert "mail.sent" in events and "mailrelay.sent" in metrics and metrics["mailrelay.sent"] == {"app", "sender"}
    assert metrics["mailrelay.queue_depth"] == {"app", "queue"} and "state" in events["secret.expiry"]


def test_the_timers_events_carry_only_the_fixed_dimensions_and_what_the_credential_alerts_split_by(
    captured: Captured,
) -> None:
    run_timer_scenarios()
    events = captured.events()
    for event, dimensions in events.items():
        assert event in telemetry.EVENTS, event
        assert dimensions <= set(telemetry.DIMENSIONS), (event, dimensions - set(telemetry.DIMENSIONS))
    findings = [
        (r.__dict__["state"], r.__dict__["kind"], r.__dict__["credential"], r.levelno)
        for r in captured.records
        if r.__dict__.get("event") == "secret.expiry"
    ]
    assert findings == [  # the ok one too: the alerts must match the state, not the event alone
        ("warning", "threshold", "secret", logging.WARNING),
        ("critical", "expired", "secret", logging.CRITICAL),
        ("ok", "nothing-to-expire", "managed-identity", logging.INFO),
        ("critical", "token-failed", "managed-identity", logging.CRITICAL),
    ]
    depths = {(a["app"], a["queue"]): v for a, v in captured.points()["mailrelay.queue_depth"]}
    assert depths == {
        ("default", "outbox"): 7,
        ("default", "poison"): 2,
        ("default", "retry"): 0,
        ("default", "retry-poison"): 1,
        ("billing", "outbox"): 3,
        ("billing", "poison"): 0,
    }


def test_the_queue_depth_timer_records_every_watched_queue_and_logs_a_poison_queue_that_is_not_empty(
    captured: Captured,
) -> None:
    from dataclasses import replace

    from shared.handlers import handle_queue_depths

    apps = json.dumps([{"name": "billing", "senders": [SENDER]}])
    s = make(MAILRELAY_APPS=apps)
    depths = {"mail-outbox": 7, "mail-outbox-poison": 2, "mail-outbox-billing-poison": 1}

    def depth(name: str) -> int:
        if name == "mail-outbox-retry-poison":
            raise ConnectionError("storage went away")
        return depths.get(name, 0)

    s.rt = replace(s.rt, queue_depth=depth)
    read = handle_queue_depths(None, s.rt)
    assert read == {
        "mail-outbox": 7,
        "mail-outbox-poison": 2,
        "mail-outbox-retry": 0,
        "mail-outbox-billing": 0,
        "mail-outbox-billing-poison": 1,
    }
    gauges = {(a["app"], a["queue"]): v for a, v in captured.points()["mailrelay.queue_depth"]}
    assert gauges == {
        ("default", "outbox"): 7,
        ("default", "poison"): 2,
        ("default", "retry"): 0,
        ("billing", "outbox"): 0,
        ("billing", "poison"): 1,
    }
    logged = [(r.__dict__["app"], r.__dict__["queue"], r.levelname) for r in captured.records]
    assert logged == [
        ("default", "poison", "WARNING"),
        ("default", "retry-poison", "WARNING"),  # not read: said so, the others recorded all the same
        ("billing", "poison", "WARNING"),
    ]


def test_the_queue_age_at_pick_up_is_recorded_per_app(captured: Captured) -> None:
    s = make()
    body = json.dumps(REQUEST).encode()
    enqueued = s.clock.now - timedelta(seconds=90)
    handle_mail_message(
        QueueMessage(id="q-1", body=body, dequeue_count=1, pop_receipt="p", insertion_time=enqueued), s.rt
    )
    ((attrs, (count, total)),) = captured.points()["mailrelay.queue_age"]
    assert attrs == {"app": "default"} and (count, total) == (1, 90.0)


def test_a_mailboxs_share_of_its_daily_recipients_is_a_gauge_updated_as_slots_are_taken(captured: Captured) -> None:
    p = paced(MAILBOX_RECIPIENTS_PER_DAY="30")
    p.outbox({**REQUEST, "id": "first"}, msg_id="q-1")
    p.outbox({**REQUEST, "id": "second"}, msg_id="q-2")
    ((attrs, value),) = captured.points()["mailrelay.mailbox_recipients_used"]
    assert attrs == {"sender": SENDER} and value == pytest.approx(6 / 30)  # two requests of 3 recipients


def test_every_relay_logger_is_one_the_workers_distro_exports() -> None:
    """infra/ sets PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME=mailrelay: the distro exports that logger and its children
    only, so an event logged under another name (a module's __name__, "shared.tokens") never reaches the alerts."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared"
    outside = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger" and node.args:
                name = ast.unparse(node.args[0])
                ours = name == "LOGGER_NAME" or name.lstrip("f").strip("'\"").startswith("mailrelay")
                if not ours:
                    outside.append(f"{path.relative_to(root)}: getLogger({name})")
    # The one exception: channels.py quiets urllib3's own logger (it would print the webhook's URL), not ours.
    assert outside == ['expiry/channels.py: getLogger(\'urllib3.connectionpool\')'], outside


def test_a_sender_the_allow_list_refused_is_no_metric_attribute(captured: Captured) -> None:
    """An app writes any `from`: were a refused sender a metric attribute, each request could mint a time series."""
    s = make()
    for i in range(5):
        s.outbox({**REQUEST, "id": f"forged-{i}", "from": f"ceo-{i}@contoso.com"}, msg_id=f"q-{i}")
    (attrs, count), *rest = captured.points()["mailrelay.deadlettered"]
    assert rest == [] and attrs == {"app": "default", "code": "SenderNotAllowed"} and count == 5
    claimed = {r.__dict__.get("claimedSender") for r in captured.records}
    assert {f"ceo-{i}@contoso.com" for i in range(5)} <= claimed  # still in the log, for the operator
    assert all("sender" not in r.__dict__ for r in captured.records)
