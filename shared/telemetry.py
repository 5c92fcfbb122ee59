"""Telemetry as data: the relay's events with a fixed set of dimensions, and the metrics they count.

Every event the relay logs (shared/logs.py `log_event`) is one log record whose fields are its dimensions
(`customDimensions` in Application Insights) and never a subject, a body or a recipient's address. The names are
fixed here, in DIMENSIONS, because the alert rules and the workbook in infra/app/monitoring.bicep query them:
tests/unit/test_telemetry.py drives the relay and checks that every record, and every metric, carries only these
names and that every name infra/ uses is one the relay really emits.

How the dimensions reach Application Insights (Microsoft's "Use OpenTelemetry with Azure Functions",
https://learn.microsoft.com/azure/azure-functions/opentelemetry-howto, Python): host.json `"telemetryMode":
"OpenTelemetry"`, `azure-monitor-opentelemetry` in requirements.txt, and the app setting
`PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`, on which the Python worker itself calls the distro's
`configure_azure_monitor(logger_name=PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME)` at start-up (azure-functions-python-
worker, `initialize_azure_monitor`) and tells the host it exports its own telemetry (capability
`WorkerOpenTelemetryEnabled`), so the host stops forwarding the worker's log text. The relay therefore never
calls `configure_azure_monitor` itself: a second call adds a second handler, and every record arrives twice
(azure-sdk-for-python issues #37190, #37978). Without that setting (the worker's default forwarding) only the
message text arrives, which is why log_event still writes the fields into the text too.

- infra/ sets `PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME=mailrelay`: only this logger is exported, not the Azure
  SDKs' HTTP logging.
- The level is the logger's own (host.json `logLevel` governs what the host forwards, not what the worker's
  distro exports): LOGGER is set to INFO here, so `mail.sent` is exported.
- Logs and metrics are not sampled by the distro (its `sampling_ratio` applies to traces), and the alerts count
  metrics where they can; host.json's sampling (the host's own telemetry) excludes Trace besides.

Metrics go through the OpenTelemetry API, imported on the first event (about 30 ms: never at indexing). Without a
MeterProvider (the local stack, unit tests) the instruments do nothing; the worker's distro installs one, and
the tests install an in-memory reader.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Final

LOGGER_NAME: Final = "mailrelay"
METER_NAME: Final = "mailrelay"

# Every dimension a record may carry. The first group is common to the send path's events; the rest belong to
# one event each. A new field is a new name here, with what it holds.
DIMENSIONS: Final[dict[str, str]] = {
    "event": "the event's name (EVENTS)",
    "app": "the app whose queue the request came from (default: the outbox)",
    "sender": "the sending mailbox: one on ALLOWED_SENDERS (and the app's senders), lower-cased",
    "claimedSender": "the sender a request refused before the allow-list named (app-written: never a metric attribute)",
    "code": "the outcome's code: a dead letter's or a retry's (Graph's error code or the relay's own)",
    "attempt": "the sendMail call's number for this request",
    "graphRequestId": "Graph's request-id response header",
    "clientRequestId": "the client-request-id the relay sent Graph",
    "enqueueToOutcomeMs": "milliseconds from the app's enqueue to this outcome",
    "graphLatencyMs": "milliseconds the Graph call took",
    "queueMessageId": "the queue message being handled",
    "originalMessageId": "the first queue message of the request (a retry's original)",
    "dequeueCount": "the host's delivery count of the queue message",
    "keyKind": "id (the app's id) or msg (the first queue message's id)",
    "key": "the request's key: the app's id, or the first queue message's id",
    "step": "where in the relay's steps the event happened",
    "hint": "what a person can do about it",
    "delaySeconds": "how long until the next step",
    "retryAfter": "Graph's Retry-After, seconds",
    "throttled": "true when Graph answered 429 (throttling: the try is given back)",
    "paceLimit": "the limit a paced wait waits for (messages per minute, recipients per day, ...)",
    "paceShare": "whose budget a paced wait waits for: app, pool or mailbox",
    "resolution": "how an unknown outcome was settled",
    "errorCodes": "the AADSTS codes Entra answered",
    "channel": "the alert channel (mail, webhook, log)",
    "reason": "why a step failed (a type or a code, never a secret)",
    "state": "the expiry check's state: ok, warning or critical",
    "kind": "the expiry check's finding",
    "credential": "the Graph credential mode",
    "registration": "whose Graph registration the expiry check looked at: relay, or the app's name",
    "daysLeft": "days until the credential expires",
    "threshold": "the warning threshold reached, days",
    "expiresOn": "when the credential expires",
    "itemKind": "secret or certificate",
    "secretName": "the Key Vault item's name (never its value)",
    "secretVersion": "the Key Vault item's version",
    "deleted": "how many records or blobs a clean-up deleted",
    "queue": "which of an app's queues: outbox, poison, retry or retry-poison",
    "depth": "a queue's approximate message count",
}

# The metrics, each with its kind, unit and the dimensions it carries (all of them names in DIMENSIONS, or `queue`
# for the queue depth). Counters count events; histograms the durations; gauges the last value seen.
METRICS: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    "mailrelay.sent": ("counter", "{request}", ("app", "sender")),
    "mailrelay.deadlettered": ("counter", "{request}", ("app", "sender", "code")),
    "mailrelay.retries": ("counter", "{try}", ("app", "sender", "code")),
    "mailrelay.throttled": ("counter", "{response}", ("app", "sender")),
    "mailrelay.paced": ("counter", "{wait}", ("app", "sender", "paceLimit", "paceShare")),
    "mailrelay.unknown": ("counter", "{request}", ("app", "sender", "code")),
    "mailrelay.unknown_resolved": ("counter", "{request}", ("app", "sender", "resolution")),
    "mailrelay.enqueue_to_sent": ("histogram", "ms", ("app", "sender")),
    "mailrelay.graph_latency": ("histogram", "ms", ("app", "sender")),
    "mailrelay.queue_age": ("histogram", "s", ("app",)),
    "mailrelay.queue_depth": ("gauge", "{message}", ("app", "queue")),  # the queue-depth timer's
    "mailrelay.mailbox_recipients_used": ("gauge", "1", ("sender",)),
}

# The events, each with the metrics it updates (the event's own dimensions, narrowed to the metric's).
EVENTS: Final[dict[str, tuple[str, ...]]] = {
    "mail.sent": ("mailrelay.sent", "mailrelay.enqueue_to_sent"),
    "mail.deadlettered": ("mailrelay.deadlettered",),
    "mail.retry": ("mailrelay.retries", "mailrelay.throttled"),
    "mail.paced": ("mailrelay.paced",),
    "mail.unknown": ("mailrelay.unknown",),
    "mail.resolved": ("mailrelay.unknown_resolved",),
    "mail.duplicate": (),
    "mail.waiting": (),
    "mail.scheduled": (),
    "mail.claim.lost": (),
    "mail.claim.renewed": (),
    "mail.draft.deleted": (),
    "pace.release": (),
    "payload.delete": (),
    "payload.cleanup": (),
    "status.cleanup": (),
    "secret.expiry": (),
    "secret.expiry.store": (),
    "secret.expiry.channel": (),
    "secret.read": (),
    "secret.rejected": (),
    "certificate.rejected": (),
    "token.renew": (),
    "certificate.read": (),
    "queue.depth": (),
}

LOGGER = logging.getLogger(LOGGER_NAME)
LOGGER.setLevel(logging.INFO)  # what the worker's distro exports is the logger's level (the module's note)


@dataclass
class _Instruments:
    by_name: dict[str, Any]


_instruments: _Instruments | None = None
_provider: Any = None  # None: OpenTelemetry's global MeterProvider (the worker's distro sets it)
_lock = threading.Lock()


def _meter_instruments() -> _Instruments:
    """The instruments, made on first use from the global MeterProvider (a proxy until the worker's distro sets
    one: OpenTelemetry's API forwards to the provider set later)."""
    global _instruments
    if _instruments is None:
        with _lock:
            if _instruments is None:
                from opentelemetry import metrics

                meter = (_provider or metrics.get_meter_provider()).get_meter(METER_NAME)
                made: dict[str, Any] = {}
                for name, (kind, unit, _) in METRICS.items():
                    if kind == "counter":
                        made[name] = meter.create_counter(name, unit=unit)
                    elif kind == "histogram":
                        made[name] = meter.create_histogram(name, unit=unit)
                    else:
                        made[name] = meter.create_gauge(name, unit=unit)
                _instruments = _Instruments(made)
    return _instruments


def use_meter_provider(provider: Any) -> None:
    """Record into `provider` from now on (None: the global one again). Tests give an in-memory reader's
    provider; OpenTelemetry's global provider can be set only once per process."""
    global _instruments, _provider
    with _lock:
        _provider, _instruments = provider, None


def _attributes(name: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {d: fields[d] for d in METRICS[name][2] if fields.get(d) is not None}


def record(name: str, value: float, **fields: Any) -> None:
    """Add `value` to a counter or a histogram, or set a gauge, with its dimensions taken from `fields`. Never
    raises: telemetry must not stop a send."""
    try:
        instrument = _meter_instruments().by_name[name]
        kind = METRICS[name][0]
        attributes = _attributes(name, fields)
        if kind == "counter":
            instrument.add(value, attributes)
        elif kind == "histogram":
            instrument.record(value, attributes)
        else:
            instrument.set(value, attributes)
    except Exception:  # the metric is lost, the mail is not
        LOGGER.debug("metric %s not recorded", name, exc_info=True)


def count_event(event: str, fields: dict[str, Any]) -> None:
    """Update the metrics `event` counts (EVENTS), from the event's own fields."""
    for name in EVENTS.get(event, ()):
        kind = METRICS[name][0]
        if name == "mailrelay.throttled" and not fields.get("throttled"):
            continue
        if kind == "counter":
            record(name, 1, **fields)
        elif name == "mailrelay.enqueue_to_sent" and fields.get("enqueueToOutcomeMs") is not None:
            record(name, float(fields["enqueueToOutcomeMs"]), **fields)
