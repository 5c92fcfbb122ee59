"""What the triggers in function_app.py call. Cheap to import: SDKs load inside the calls."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from shared.bootstrap import Runtime

log = logging.getLogger("mailrelay")


class QueueMessageLike(Protocol):
    """The parts of azure.functions.QueueMessage the relay reads."""

    @property
    def id(self) -> str | None: ...

    @property
    def dequeue_count(self) -> int | None: ...

    def get_body(self) -> bytes: ...


class TransientSendError(RuntimeError):
    """Raised so the host makes the message visible again and retries it later."""


def handle_mail_message(msg: QueueMessageLike, rt: Runtime | None = None) -> None:
    """Send one queued request: return when it is sent or dead-lettered; raise to have it retried."""
    from shared.bootstrap import runtime
    from shared.outcomes import Permanent, Sent, dead_letter_envelope

    rt = rt or runtime()
    attempt = rt.relay.send(msg.get_body())
    outcome = attempt.outcome
    fields = {"queueMessageId": msg.id, "sender": attempt.sender, "dequeueCount": msg.dequeue_count}
    if isinstance(outcome, Sent):
        log.info("mail sent", extra={"event": "mail.sent", **fields})
        return
    if isinstance(outcome, Permanent):
        rt.dead_letters.put(dead_letter_envelope(attempt.request, outcome, attempts=msg.dequeue_count or 1))
        log.error(
            "mail dead-lettered: %s",
            outcome.code,
            extra={"event": "mail.deadlettered", "code": outcome.code, "hint": outcome.hint, **fields},
        )
        return
    log.warning(
        "mail send failed transiently: %s",
        outcome.code,
        extra={"event": "mail.transient", "code": outcome.code, "retryAfter": outcome.retry_after, **fields},
    )
    raise TransientSendError(f"{outcome.code}: {outcome.message}")
