"""What the triggers in function_app.py call. Cheap to import: SDKs load inside the calls."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from shared.apps import DEFAULT_APP

if TYPE_CHECKING:
    from datetime import datetime

    from shared.bootstrap import Runtime
    from shared.expiry import Report
    from shared.outcomes import Failure
    from shared.settings import Settings

log = logging.getLogger("mailrelay")


class QueueMessageLike(Protocol):
    """The parts of azure.functions.QueueMessage the relay reads."""

    @property
    def id(self) -> str | None: ...

    @property
    def dequeue_count(self) -> int | None: ...

    @property
    def insertion_time(self) -> datetime | None: ...

    def get_body(self) -> bytes: ...


class TimerRequestLike(Protocol):
    """The part of azure.functions.TimerRequest the expiry check reads."""

    @property
    def past_due(self) -> bool: ...


def handle_mail_message(msg: QueueMessageLike, rt: Runtime | None = None, app: str = DEFAULT_APP) -> None:
    """Handle one request from an app's queue (the outbox: the default app) and return, so the host completes
    (deletes) the message. `app` is which trigger ran, so which queue the message came from: the app's identity.

    Whatever an app wrote is a request: a retry wrapper ("$retry") on the outbox is refused, never trusted,
    since retries are the relay's own (shared/retries.py). The rest is shared/delivery.py's: sent once,
    dead-lettered with a reason, or put on the relay's retry queue. An exception (storage unreachable)
    leaves the retry to the host, and the status record tells the next delivery where things stand.
    """
    from shared.bootstrap import runtime
    from shared.outcomes import as_received, permanent
    from shared.retries import is_wrapper

    rt = rt or runtime()
    raw = msg.get_body()
    fields: dict[str, Any] = {
        "app": app,
        "queueMessageId": msg.id,
        "originalMessageId": msg.id,
        "dequeueCount": msg.dequeue_count,
    }
    if msg.insertion_time is not None:
        from shared.telemetry import record

        # How long the request waited on the app's queue before a worker picked it up: the backlog's age.
        record("mailrelay.queue_age", max((rt.clock() - msg.insertion_time).total_seconds(), 0.0), app=app)
    if is_wrapper(raw):
        refused = permanent("RetryWrapperRefused", 'a "$retry" wrapper on the outbox; the relay writes retries itself')
        _dead_letter(rt, as_received(raw), refused, fields)
        return
    _process(rt, raw, msg.id, fields, app, enqueued_at=msg.insertion_time)


def handle_retry_message(msg: QueueMessageLike, rt: Runtime | None = None) -> None:
    """Handle one message from the relay's own retry queue: a request waiting for its next step."""
    from shared.bootstrap import runtime
    from shared.outcomes import as_received, permanent
    from shared.retries import MalformedWrapper, unwrap

    rt = rt or runtime()
    raw = msg.get_body()
    fields: dict[str, Any] = {"queueMessageId": msg.id, "dequeueCount": msg.dequeue_count}
    try:
        unwrapped = unwrap(raw, rt.overflow.get if rt.overflow else None)
    except MalformedWrapper as e:
        _dead_letter(rt, as_received(raw), permanent("InvalidRequest", str(e)), fields)
        return
    # The relay always writes the first message's id; without one (never from the relay), this message's own
    # id keys a request that has no `id`, so it is still sent at most once from here on.
    original = unwrapped.original_message_id or msg.id
    fields.update(app=unwrapped.app, originalMessageId=original, step=unwrapped.reason)
    _process(rt, unwrapped.body, original, fields, unwrapped.app)
    if unwrapped.stored and rt.overflow:
        # Its next step is written (sent, dead-lettered or re-queued with its own copy): the stored request of
        # this retry is no longer needed. Only after the writes: a crash before leaves it.
        rt.overflow.delete(unwrapped.stored)


def _process(
    rt: Runtime,
    raw: bytes,
    original_message_id: str | None,
    fields: dict[str, Any],
    app_name: str,
    enqueued_at: datetime | None = None,
) -> None:
    from shared.delivery import deliver
    from shared.outcomes import Sent, as_received, permanent
    from shared.sending import Attempt
    from shared.settings import SettingsError

    try:
        app = rt.settings.app(app_name)
    except SettingsError as e:  # a retry of an app removed from MAILRELAY_APPS since: nobody may send it as that app
        _dead_letter(rt, as_received(raw), permanent("AppNotDeclared", str(e)), fields)
        return
    rt = rt.for_app(app.name)  # its own Graph registration, if it has one
    checked = rt.relay.check(raw, app)
    if isinstance(checked, Attempt):  # the contract or the allow-list refused it: no record, no Graph
        # What the app claimed, not a mailbox the relay sends as: its own dimension, so that no metric takes it as
        # an attribute (any app could mint a new time series per request).
        fields["claimedSender"] = checked.sender
        assert not isinstance(checked.outcome, Sent)
        _dead_letter(rt, checked.request, checked.outcome, fields)
        return
    deliver(rt, checked, original_message_id, fields, enqueued_at)


def _dead_letter(rt: Runtime, request: Any, failure: Failure, fields: dict[str, Any]) -> None:
    """A request refused before any record is kept (it is not a valid request of an allowed sender, so
    nothing it says may create relay state)."""
    from shared.outcomes import dead_letter_envelope

    origin = fields.get("originalMessageId") or fields.get("queueMessageId")
    envelope = dead_letter_envelope(request, failure, attempts=0, queue_message_id=origin, app=fields.get("app"))
    rt.dead_letters.put(envelope)
    _log(logging.ERROR, "mail.deadlettered", failure.code, code=failure.code, hint=failure.hint, **fields)


def _log(level: int, event: str, text: str, **fields: Any) -> None:
    from shared.logs import log_event

    log_event(log, level, event, text, **fields)


def queues_watched(settings: Settings) -> list[tuple[str, str, str]]:
    """(app, kind, queue name) of every queue whose depth the timer records: each app's queue and the poison queue
    the host moves its undeliverable messages to, the relay's dead letters (the outbox's poison queue) and its
    retry queue with the retry queue's own poison queue."""
    watched = [
        (DEFAULT_APP, "outbox", settings.queue_name),
        (DEFAULT_APP, "poison", settings.poison_queue_name),
        (DEFAULT_APP, "retry", settings.retry_queue_name),
        (DEFAULT_APP, "retry-poison", settings.retry_poison_queue_name),
    ]
    for app in settings.apps:
        watched += [(app.name, "outbox", app.queue), (app.name, "poison", f"{app.queue}-poison")]
    return watched


def handle_queue_depths(timer: TimerRequestLike | None = None, rt: Runtime | None = None) -> dict[str, int]:
    """Record each watched queue's depth (the gauge mailrelay.queue_depth, by app and kind): what the alerts on
    poison depth and on mail waiting with nothing sent read. A poison queue that is not empty is also logged
    (queue.depth), since the host moves messages there without the relay seeing them. Returns depth by queue."""
    from shared.bootstrap import runtime
    from shared.telemetry import record

    rt = rt or runtime()
    assert rt.queue_depth is not None, "the runtime reads no queue depths"
    depths: dict[str, int] = {}
    for app, kind, name in queues_watched(rt.settings):
        try:
            depth = rt.queue_depth(name)
        except Exception as e:  # one queue unreadable: the others are still recorded
            _log(logging.WARNING, "queue.depth", f"{name}: not read ({type(e).__name__})", app=app, queue=kind)
            continue
        depths[name] = depth
        record("mailrelay.queue_depth", depth, app=app, queue=kind)
        if depth and kind.endswith("poison"):
            text = f"{name} holds about {depth} message(s): `mailrelay dead-letters` shows them"
            _log(logging.WARNING, "queue.depth", text, app=app, queue=kind, depth=depth)
    return depths


def handle_status_cleanup(timer: TimerRequestLike | None = None, rt: Runtime | None = None) -> int:
    """Delete status records older than STATUS_RETENTION_DAYS, and claim-checked payloads older than
    PAYLOAD_RETENTION_DAYS (those of dead letters nobody requeued, or of requests never enqueued); what
    function_app.py's clean-up timer calls. Returns the records deleted."""
    from shared.bootstrap import runtime
    from shared.status import retention_cutoff

    rt = rt or runtime()
    deleted = rt.status.delete_expired(retention_cutoff(rt.settings.status_retention_days, rt.clock()))
    _log(logging.INFO, "status.cleanup", f"deleted {deleted} records older than the retention", deleted=deleted)
    for store in rt.all_payloads:  # the outbox's container and each app's
        try:
            blobs = store.delete_older_than(retention_cutoff(rt.settings.payload_retention_days, rt.clock()))
        except Exception as e:  # the records are cleaned; the payloads wait for the next run
            _log(logging.WARNING, "payload.cleanup", f"payload clean-up failed for now: {type(e).__name__}")
        else:
            text = f"deleted {blobs} payload blobs older than the retention"
            _log(logging.INFO, "payload.cleanup", text, deleted=blobs)
    return deleted


def handle_expiry_timer(timer: TimerRequestLike | None = None) -> Report:
    """Run the secret-expiry check with the process's runtime, for the relay's Graph registration and each app's own;
    what function_app.py's timer calls. Returns the relay's report."""
    from shared.bootstrap import expiry_runtime
    from shared.expiry import EVENT
    from shared.settings import SettingsError

    if timer is not None and timer.past_due:
        log.info("the expiry check runs late (the timer was past due)")
    try:
        runtime = expiry_runtime()
    except SettingsError as e:
        # No channel can be built; the log still can say that nothing is watching the secret.
        log.critical(
            "%s: the expiry check cannot run: %s",
            EVENT,
            e,
            extra={"event": EVENT, "state": "critical", "kind": "misconfigured"},
        )
        raise
    # The relay's own Graph registration, then each app's own (MAILRELAY_APPS "graph"): every credential the relay
    # sends with is watched. One app's failing check must not keep the next from running.
    report = runtime.check.run()
    for app, check in runtime.apps.items():
        try:
            check.run()
        except Exception as e:
            log.error(
                "%s: the expiry check of app %s's registration failed: %s",
                EVENT,
                app,
                type(e).__name__,
                extra={"event": EVENT, "state": "warning", "kind": "check-failed", "app": app},
            )
    return report
