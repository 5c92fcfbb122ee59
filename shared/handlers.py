"""What the triggers in function_app.py call. Cheap to import: SDKs load inside the calls."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shared.bootstrap import Runtime
    from shared.expiry import Report
    from shared.outcomes import Failure
    from shared.retries import Delivery

log = logging.getLogger("mailrelay")


class QueueMessageLike(Protocol):
    """The parts of azure.functions.QueueMessage the relay reads."""

    @property
    def id(self) -> str | None: ...

    @property
    def dequeue_count(self) -> int | None: ...

    def get_body(self) -> bytes: ...


class TimerRequestLike(Protocol):
    """The part of azure.functions.TimerRequest the expiry check reads."""

    @property
    def past_due(self) -> bool: ...


def handle_mail_message(msg: QueueMessageLike, rt: Runtime | None = None) -> None:
    """Handle one queued request and return, so the host completes (deletes) the message.

    Sent: recorded in the idempotency ledger. Permanent: dead-lettered at once. Transient: put back on
    the queue, delayed, with the attempt count in a retry wrapper (shared/retries.py), or dead-lettered
    once the retry budget is spent. Each of these writes happens before the return, so a crash in
    between leaves the original message to be redelivered: a duplicate at worst (which the ledger
    catches once sent), never a loss. An exception (storage unreachable) leaves the retry to the host.
    """
    from shared.bootstrap import runtime
    from shared.outcomes import as_received, permanent
    from shared.retries import MalformedWrapper, unwrap

    rt = rt or runtime()
    raw = msg.get_body()
    deliveries = msg.dequeue_count or 1  # tries of this very message, a crashed one included
    fields: dict[str, Any] = {"queueMessageId": msg.id, "dequeueCount": msg.dequeue_count}
    try:
        delivery = unwrap(raw, rt.overflow.get if rt.overflow else None)
    except MalformedWrapper as e:
        _dead_letter(rt, as_received(raw), permanent("InvalidRequest", str(e)), deliveries, fields)
        return
    _handle(rt, msg, delivery, deliveries, fields)
    if delivery.stored and rt.overflow:
        # Its outcome is written (sent, dead-lettered or re-queued, each with its own copy): the stored
        # request of this retry is no longer needed. Only after the writes: a crash before leaves it.
        rt.overflow.delete(delivery.stored)


def _handle(rt: Runtime, msg: QueueMessageLike, delivery: Delivery, deliveries: int, fields: dict[str, Any]) -> None:
    from shared.ledger import fingerprint, ledger_key
    from shared.outcomes import Permanent, Sent, Transient
    from shared.retries import GiveUp, after_transient, fit_on_queue, wrap
    from shared.sending import Attempt

    state = delivery.state
    original_id = (state.original_message_id if state else None) or msg.id
    attempts = (state.attempts if state else 0) + deliveries
    fields.update(originalMessageId=original_id, attempt=attempts)

    checked = rt.relay.check(delivery.body)
    if isinstance(checked, Attempt):  # the contract or the allow-list refused it: no ledger, no Graph
        fields["sender"] = checked.sender
        assert isinstance(checked.outcome, Permanent)
        _dead_letter(rt, checked.request, checked.outcome, attempts, fields)
        return
    # Only a valid request is looked up: a broken one reusing a sent id is dead-lettered above, not dropped.
    key = ledger_key(checked.request.id, original_id)
    content = fingerprint(checked.received)
    if key:
        recorded = rt.ledger.lookup(key)
        if recorded is not None and recorded == content:
            # The very request already went out (a redelivery, or the app enqueued it twice): complete it,
            # and say so. Only the same content is dropped: anything else under a sent key gets a dead letter.
            kind = key.split(":", 1)[0]
            _log(logging.INFO, "mail.duplicate", "already sent; completed without sending", keyKind=kind, **fields)
            return
        if recorded is not None:
            # Same key, other content (or a record too old to hold a fingerprint, so the content is unknown):
            # not provably a redelivery. Refuse it with a reason rather than drop it or send it twice.
            failure = _key_reused(key, fingerprinted=bool(recorded))
            _dead_letter(rt, checked.received, failure, attempts, {**fields, "sender": checked.request.sender})
            return

    attempt = rt.relay.deliver(checked)
    outcome = attempt.outcome
    fields["sender"] = attempt.sender
    if isinstance(outcome, Sent):
        if key:
            try:
                rt.ledger.record(key, content)
            except Exception as e:
                # The mail is sent; raising now would have the host send it again. Completing is right,
                # and only a redelivery of this very message (rare) could still duplicate it.
                _log(
                    logging.ERROR,
                    "ledger.error",
                    f"sent, but the ledger could not record it: {type(e).__name__}",
                    **fields,
                )
        _log(logging.INFO, "mail.sent", "Graph accepted the message (202)", **fields)
        return
    if isinstance(outcome, Permanent):
        _dead_letter(rt, attempt.request, outcome, attempts, fields)
        return

    assert isinstance(outcome, Transient)
    assert isinstance(attempt.request, dict)  # only a parsed, valid request reaches Graph
    decision = after_transient(
        rt.settings.retry_policy,
        state,
        attempts_now=deliveries,
        message_id=msg.id,
        error={"code": outcome.code, "message": outcome.message},
        retry_after=outcome.retry_after,
    )
    if isinstance(decision, GiveUp):
        spent = Transient(outcome.code, f"{outcome.message} ({decision.reason})", outcome.hint, outcome.retry_after)
        _dead_letter(rt, attempt.request, spent, decision.attempts, fields)
        return
    rt.requeue.put(fit_on_queue(wrap(attempt.request, decision.state), rt.overflow), decision.delay)
    _log(
        logging.WARNING,
        "mail.retry",
        f"{outcome.code}; re-queued, next try in {decision.delay} s",
        code=outcome.code,
        retryAfter=outcome.retry_after,
        delaySeconds=decision.delay,
        **fields,
    )


def _dead_letter(rt: Runtime, request: Any, failure: Failure, attempts: int, fields: dict[str, Any]) -> None:
    from shared.outcomes import dead_letter_envelope

    origin = fields.get("originalMessageId") or fields.get("queueMessageId")
    rt.dead_letters.put(dead_letter_envelope(request, failure, attempts=attempts, queue_message_id=origin))
    _log(logging.ERROR, "mail.deadlettered", failure.code, code=failure.code, hint=failure.hint, **fields)


def _log(level: int, event: str, text: str, **fields: Any) -> None:
    from shared.logs import log_event

    log_event(log, level, event, text, **fields)


def _key_reused(key: str, fingerprinted: bool = True) -> Failure:
    from shared.outcomes import permanent

    kind, _, value = key.partition(":")
    content = (
        "with other content"
        if fingerprinted
        else "(recorded with no fingerprint of its content, so this may or may not be the same mail)"
    )
    if kind == "id":
        what = f"the id {value!r} was already sent {content}; one id is sent at most once"
    else:
        what = f"a retry names a queue message whose request was already sent {content}"
    return permanent("DuplicateKey", what)


def handle_expiry_timer(timer: TimerRequestLike | None = None) -> Report:
    """Run the secret-expiry check with the process's runtime; what function_app.py's timer calls."""
    from shared.bootstrap import expiry_runtime
    from shared.expiry import EVENT
    from shared.settings import SettingsError

    if timer is not None and timer.past_due:
        log.info("the expiry check runs late (the timer was past due)")
    try:
        check = expiry_runtime().check
    except SettingsError as e:
        # No channel can be built; the log still can say that nothing is watching the secret.
        log.critical(
            "%s: the expiry check cannot run: %s",
            EVENT,
            e,
            extra={"event": EVENT, "state": "critical", "kind": "misconfigured"},
        )
        raise
    return check.run()
