"""One request, sent at most once per key: the claim, the resolution of unknown sends, and what follows a try.

The steps, for a request that passed the contract and the allow-list (docs/guarantees.md):

1. **Claim** its status record (shared/status.py) before Graph is called: insert it if absent, or change
   it under the ETag just read, from a state that allows a try. Of two workers holding one key, exactly
   one wins; the other finishes (the request was sent), refuses (the key holds other content), or puts its
   copy on the retry queue to look again once the winner is done (its claim is `sending` until its lease
   runs out: a dead worker's claim is taken over after SEND_CLAIM_LEASE_SECONDS).
2. **Resolve** an unknown outcome before any second try. A try is unknown after a read timeout, a 5xx,
   a connection lost after the request went out, or a claim taken over from a dead worker. With read
   access (Mail.Read in the app's Exchange scope) and the request saved to Sent Items, the relay looks
   for the request's mark there: found, it is `sent`; not found, it waits until Graph's timeout and
   SEND_UNKNOWN_SETTLE_SECONDS have passed since the try (Exchange files a sent message some time after
   its 202), then sends. Without read access, SEND_UNKNOWN_OUTCOME decides: `resend` (at least once) or
   `deadletter` (at most once).
3. **Pace and send**: take a slot in the sender's pace (shared/pacing.py), or go back `queued` with the delay
   the mailbox needs; then send, counting the try against the budget (SEND_MAX_ATTEMPTS, SEND_MAX_AGE_HOURS).
   Right before every Graph call that can send or change the mailbox, the **fence** proves the claim is still
   this worker's (`_Fence`: by the clock, or by renewing the lease under the claim's ETag); a claim taken over
   meanwhile stops the call, and the copy looks again later.
   A 429 is counted in the record's `throttled` besides `attempts` (every call, as the log numbers them): the
   budget counts only the tries that were not throttled, so throttling spends Retry-After, not the budget.
4. **Record** the outcome: `sent`; `dead-lettered` with the envelope; `retrying` (nothing was accepted)
   or `unknown` (it may have been), with the request on the retry queue, hidden until its next step.

Every record write comes before the function returns, so a crash leaves the queue message to be
delivered again, and the record says what the next delivery must do. Nothing here knows which host runs it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.outcomes import Failure, Permanent, Sent, Transient, permanent
from shared.pacing import Granted, Over
from shared.status import (
    DEAD_LETTERED,
    QUEUED,
    RETRYING,
    SCHEDULED,
    SENDING,
    SENT,
    UNKNOWN,
    StatusKey,
    StatusRecord,
)

if TYPE_CHECKING:
    from shared.bootstrap import Runtime
    from shared.sending import Checked

log = logging.getLogger("mailrelay")

# How long a copy waits, at most, before it looks again at a key another worker is sending: short, so a
# duplicate enqueued by an app completes soon after the first copy is sent.
MAX_CLAIM_WAIT_SECONDS = 15
CLAIM_ROUNDS = 4  # optimistic-concurrency rounds before a contended copy is put back to wait
# Pacing waits up to this long in the worker rather than on the queue (whose delays are whole seconds).
MAX_HOLD_SECONDS = 1.0
# A copy due at `notBefore` may find it a moment ahead on another instance's clock: not worth a round trip.
CLOCK_TOLERANCE = timedelta(seconds=1)
# How far apart two instances' clocks may be, at most, when one judges the other's lease (the fence keeps this
# much of a lease unused). Assumed: Azure synchronises its hosts' clocks and no Microsoft page gives a bound for
# Functions instances; one second is far above what NTP- or PTP-disciplined clocks drift.
CLAIM_CLOCK_SKEW = timedelta(seconds=1)


def fingerprint(request: Any) -> str:
    """A digest of a request's content (its JSON object), the same whatever the key order or spacing.

    Kept in the record, so that a second request under a key in use is told apart from a redelivery of
    the same request: the first is refused with a reason, never dropped as a duplicate. ASCII escapes keep
    a lone surrogate hashable.
    """
    import hashlib
    import json

    canonical = json.dumps(request, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class _Claimed:
    record: StatusRecord
    unknown: bool  # the previous try's outcome is unknown: resolve it before sending


@dataclass(frozen=True)
class _AlreadySent:
    record: StatusRecord


@dataclass(frozen=True)
class _Refused:
    failure: Failure


@dataclass(frozen=True)
class _Wait:
    seconds: float
    why: str


def deliver(
    rt: Runtime,
    checked: Checked,
    original_message_id: str | None,
    fields: dict[str, Any],
    enqueued_at: datetime | None = None,
) -> None:
    """Take one checked request from claim to recorded outcome (the module's steps). `enqueued_at`: when the app
    enqueued it, for a request read from the outbox (a `sendAt` is judged against it)."""
    if enqueued_at is not None and checked.enqueued_at is None:
        checked = replace(checked, enqueued_at=enqueued_at)
    req = checked.request
    key = StatusKey.of(req.sender, req.id, original_message_id, checked.app)
    fields.update(app=checked.app, sender=req.sender, keyKind=key.kind, key=key.value)
    send_at = req.send_time()
    if send_at is not None:
        refused = _send_at_refusal(rt, send_at, enqueued_at)
        if refused is not None:
            _dead_letter(rt, checked.received, refused, None, fields)
            return
        if send_at - rt.clock() > CLOCK_TOLERANCE and _schedule(rt, checked, key, send_at, original_message_id, fields):
            return
    claim = _claim(rt, key, checked, original_message_id)
    if isinstance(claim, _AlreadySent):
        _drop_payloads(rt, checked, fields)
        _log(logging.INFO, "mail.duplicate", "already sent; completed without sending", **fields)
        return
    if isinstance(claim, _Refused):
        _dead_letter(rt, checked.received, claim.failure, None, fields)
        return
    if isinstance(claim, _Wait):
        _wait(rt, checked, original_message_id, claim.seconds, claim.why, fields)
        return
    record = claim.record
    if claim.unknown:
        resolved = _resolve(rt, checked, record, original_message_id, fields)
        if resolved is None:
            return
        record = resolved
    fields["attempt"] = record.attempts
    slot = _pace(rt, checked, record, original_message_id, fields)
    if slot is None:
        return
    from shared.sending import ClaimLost

    fence = _Fence(rt, record, fields)
    try:
        attempt = rt.relay.deliver(checked, key.mark, fence)
    except ClaimLost:
        _release(rt, _Freeing(req.sender, slot, given_back=True), fields)  # the fence stopped the call: nothing sent
        _claim_lost(rt, checked, original_message_id, fields)
        return
    except BaseException:
        _release(rt, _Freeing(req.sender, slot, given_back=False), fields)  # what happened is unknown: it counts
        raise
    record = fence.record  # with the ETag of the fence's last renewal, if it renewed: the outcome is written under it
    outcome = attempt.outcome
    if attempt.graph_ms is not None:
        from shared.telemetry import record as record_metric

        fields["graphLatencyMs"] = round(attempt.graph_ms)
        record_metric("mailrelay.graph_latency", attempt.graph_ms, **fields)
    # Graph did not accept what it refused, throttled, or never saw: its recipients and its minute are given back.
    accepted = isinstance(outcome, Sent) or (isinstance(outcome, Transient) and outcome.maybe_sent)
    freeing = _Freeing(req.sender, slot, given_back=not accepted)
    _settle(rt, checked, record, outcome, attempt.request_id, attempt.client_request_id, fields, freeing)


# --- 0. Scheduled sends ------------------------------------------------------------------------------------

# A queue message stays hidden 7 days at most (docs/design.md, "Limits the relay respects"), and a scheduled
# request waits hidden on the relay's retry queue, or on the app's queue when the app enqueued it hidden (clients did,
# before 21).
MAX_SEND_AT_AHEAD = timedelta(days=7)


def _send_at_refusal(rt: Runtime, send_at: datetime, enqueued_at: datetime | None) -> Failure | None:
    """A `sendAt` that cannot be honoured, judged against the moment the app enqueued the request (a request
    an app enqueued hidden until its time, as clients did before issue 21, is read after it: no mistake)."""
    if enqueued_at is None:
        return None  # read from the retry queue: judged on its first delivery
    tolerance = timedelta(seconds=rt.settings.send_at_tolerance_seconds)
    if send_at < enqueued_at - tolerance:
        late = enqueued_at - send_at
        return permanent(
            "SendAtInPast",
            f"sendAt {send_at.isoformat()} is {late.total_seconds():.0f} s before the request was enqueued "
            f"({enqueued_at:%Y-%m-%dT%H:%M:%SZ})",
        )
    if send_at > enqueued_at + MAX_SEND_AT_AHEAD + tolerance:
        return permanent(
            "SendAtTooFar",
            f"sendAt {send_at.isoformat()} is more than 7 days after the request was enqueued "
            f"({enqueued_at:%Y-%m-%dT%H:%M:%SZ})",
        )
    return None


def _schedule(
    rt: Runtime,
    checked: Checked,
    key: StatusKey,
    when: datetime,
    original_message_id: str | None,
    fields: dict[str, Any],
) -> bool:
    """Hold a request seen before its `sendAt`: record it `scheduled` and put it on the retry queue, hidden
    until then. False when the key's record says something else must happen (it was sent, or the key holds
    other content): the claim decides that."""
    now = rt.clock()
    scheduled = _new_record(key, checked, original_message_id, now, state=SCHEDULED, attempts=0, not_before=when)
    refused = _over_schedule_cap(rt, checked, key)
    if refused is not None:
        _dead_letter(rt, checked.received, refused, None, fields)
        return True  # settled: dead-lettered, nothing held
    if rt.status.create(scheduled) is None:
        current = rt.status.get(key)
        if current is None or current.state == SENT or current.fingerprint != scheduled.fingerprint:
            return False
    delay = _put_back(rt, checked, original_message_id, (when - now).total_seconds(), "scheduled")
    _log(
        logging.INFO,
        "mail.scheduled",
        f"scheduled for {when.isoformat()}; held {delay} s",
        delaySeconds=delay,
        **fields,
    )
    return True


def _over_schedule_cap(rt: Runtime, checked: Checked, key: StatusKey) -> Failure | None:
    """The app already holds its maxScheduled requests waiting for their time: refuse one more, so one app cannot
    fill the table and the retry queue for a week. A redelivery of a request already scheduled is not a new one.
    Counted, not reserved: two instances scheduling at the same moment may pass the cap by one each (a bound on
    abuse, not an exact quota)."""
    from shared.outcomes import permanent

    app = rt.settings.app(checked.app)
    if app.max_scheduled is None:
        return None
    held = rt.status.count_scheduled(app.name, app.senders, app.max_scheduled)
    if held < app.max_scheduled or (rt.status.get(key) is not None):
        return None
    return permanent(
        "ScheduleLimitReached",
        f"app {app.name!r} already holds {held} requests waiting for their sendAt, its maxScheduled",
    )


def _drop_payloads(rt: Runtime, checked: Checked, fields: dict[str, Any]) -> None:
    """The request is sent: delete its claim-checked blobs. Best effort: the retention clean-up deletes what
    Storage would not delete now."""
    from shared.payloads import delete_all

    blobs = checked.request.stored_blobs()
    if not blobs or rt.payloads is None:
        return
    left = delete_all(rt.payloads, blobs)
    if left:
        text = f"{len(left)} of {len(blobs)} payload blobs not deleted; PAYLOAD_RETENTION_DAYS will"
        _log(logging.WARNING, "payload.delete", text, **fields)


# --- 3. Pacing --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Freeing:
    """A slot to free with the outcome's write (one transaction: shared/pacing.py), and whether Graph's answer
    gives its recipients and its place in the minute back."""

    sender: str
    slot: Granted
    given_back: bool


def _release(rt: Runtime, freeing: _Freeing, fields: dict[str, Any]) -> None:
    """Free the slot on its own, when no outcome write carries it. Best effort: what Graph answered must be
    recorded whatever Storage does now; a slot not freed lapses with its lease (SEND_CLAIM_LEASE_SECONDS)."""
    if rt.pacer is None:
        return
    try:
        rt.pacer.release(freeing.sender, freeing.slot, given_back=freeing.given_back)
    except Exception as e:  # Storage unreachable: the outcome is worth more than the slot
        text = f"the slot stays taken until its lease ends: {type(e).__name__}"
        _log(logging.WARNING, "pace.release", text, **fields)


def _pace(
    rt: Runtime, checked: Checked, record: StatusRecord, original_message_id: str | None, fields: dict[str, Any]
) -> Granted | None:
    """A slot in the sender's pace (shared/pacing.py), a token one without a pacer; None when the request was put back
    `queued` because its mailbox is over its pace. The try the claim counted is given back: pacing never spends
    the retry budget."""
    if rt.pacer is None:
        return Granted("unpaced")
    from shared.sending import mail_size

    req = checked.request
    recipients = len(req.to) + len(req.cc) + len(req.bcc)
    uploads = mail_size(req)  # what the send uploads to Graph, near enough (its body and encoded attachments)
    decided = rt.pacer.acquire(req.sender, recipients, uploads, checked.app)
    held = 0.0
    # A wait shorter than the queue's smallest delay (a whole second, then a poll) is cheaper held here: a
    # slot frees within a Graph call, and a minute's oldest send leaves it at a known moment.
    while isinstance(decided, Over) and decided.seconds <= MAX_HOLD_SECONDS and held < MAX_HOLD_SECONDS * 3:
        rt.sleep(decided.seconds)
        held += decided.seconds
        decided = rt.pacer.acquire(req.sender, recipients, uploads, checked.app)
    if not isinstance(decided, Over):
        return decided
    now = rt.clock()
    # Back a whole second early at most (the queue's delays are whole seconds): the rest is held here on the
    # next delivery, so a mailbox's next minute starts when it may, not up to a second and a poll later.
    seconds = max(1.0, float(math.floor(decided.seconds)))
    when = now + timedelta(seconds=seconds)
    waiting = replace(
        record,
        state=QUEUED,
        attempts=max(record.attempts - 1, 0),
        paced=record.paced + 1,  # kept after the hint is gone: the delivery report counts paced requests
        updated_at=now,
        lease_until=None,
        not_before=when,
        last_error_code="Paced",
        last_error_hint=f"waiting for {decided.reason}",  # the app's own share, or the mailbox's limit
    )
    if not _held_write(rt, waiting):  # the claim was taken over during the wait: the new owner's record stands
        _claim_lost(rt, checked, original_message_id, fields)
        return None
    delay = _put_back(rt, checked, original_message_id, seconds, "paced")
    # The recipient budget is the one that can hold mail for hours: the operator must see it in the log.
    level = logging.WARNING if decided.limit == "recipients per day" else logging.INFO
    text = f"over {decided.reason}; queued for {delay} s"
    # paceShare: whose budget is spent, for an alert to match ("app": the request's app's own share; "pool": the
    # apps without a share; "mailbox": Microsoft's limit for all apps together).
    spent = "app" if decided.app else "pool" if decided.pooled else "mailbox"
    _log(level, "mail.paced", text, delaySeconds=delay, paceLimit=decided.limit, paceShare=spent, **fields)
    return None


# --- 1. The claim -----------------------------------------------------------------------------------------


def _claim(
    rt: Runtime, key: StatusKey, checked: Checked, original_message_id: str | None
) -> _Claimed | _AlreadySent | _Refused | _Wait:
    now = rt.clock()
    lease = timedelta(seconds=rt.settings.claim_lease_seconds)
    fresh = _new_record(
        key,
        checked,
        original_message_id,
        now,
        state=SENDING,
        attempts=1,
        first_attempt_at=now,
        last_attempt_at=now,
        lease_until=now + lease,
    )
    content = fresh.fingerprint
    # Insert first: a request's first delivery (nearly all of them) costs one round trip.
    created = rt.status.create(fresh)
    if created is not None:
        return _Claimed(created, unknown=False)
    for _ in range(CLAIM_ROUNDS):
        current = rt.status.get(key)
        if current is None:  # deleted by the clean-up in between
            created = rt.status.create(fresh)
            if created is not None:
                return _Claimed(created, unknown=False)
            continue
        decided = _decide(rt, current, content, now)
        if decided is not None:
            return decided
        # A claim taken over from a dead worker, or an unknown try: what happened must be found out first.
        unknown = current.state in (UNKNOWN, SENDING)
        if current.state == DEAD_LETTERED:
            # Requeued from the dead letters (an operator's decision, or the app sent it again): a new budget.
            claimed = replace(
                fresh,
                created_at=current.created_at,
                message_id=current.message_id or original_message_id,
                etag=current.etag,
            )
        else:
            claimed = replace(
                current,
                state=SENDING,
                updated_at=now,
                lease_until=now + lease,
                not_before=None,
                message_id=current.message_id or original_message_id,
            )
            if not unknown:  # the try is made right away: count it in the same write
                claimed = replace(claimed, attempts=current.attempts + 1, last_attempt_at=now)
            elif current.state == SENDING and current.lease_until is not None:
                # Taken over: the fence let its worker start a call until a call's timeout before the lease's end,
                # so its try counts from then, and the lookup waits the settling time after it (step 2).
                latest = current.lease_until - timedelta(seconds=rt.settings.graph_timeout_seconds)
                claimed = replace(claimed, last_attempt_at=max(latest, current.last_attempt_at or latest))
        won = rt.status.replace(claimed)
        if won is not None:
            return _Claimed(won, unknown=unknown)
    return _Wait(1, "contended: other workers changed the record meanwhile")


def _new_record(
    key: StatusKey, checked: Checked, original_message_id: str | None, now: datetime, **fields: Any
) -> StatusRecord:
    """A request's first record: its content's fingerprint and its recipients' count and domains, and `fields`."""
    from shared.status import recipient_summary

    req = checked.request
    count, domains = recipient_summary([r.address for r in (*req.to, *req.cc, *req.bcc)])
    return StatusRecord(
        key=key,
        fingerprint=fingerprint(checked.received),
        created_at=now,
        updated_at=now,
        enqueued_at=checked.enqueued_at,
        message_id=original_message_id,
        recipients=count,
        recipient_domains=domains,
        **fields,
    )


def _decide(rt: Runtime, current: StatusRecord, content: str, now: datetime) -> _AlreadySent | _Refused | _Wait | None:
    """What a record in another worker's hands, or finished, means for this copy; None: it may be claimed."""
    same = current.fingerprint == content
    if current.state == SENT:
        return _AlreadySent(current) if same else _Refused(_key_reused(current.key, sent=True))
    if current.state != DEAD_LETTERED and not same:
        return _Refused(_key_reused(current.key, sent=False))
    if current.state == SENDING and current.lease_until is not None and current.lease_until > now:
        left = (current.lease_until - now).total_seconds()
        return _Wait(min(left, MAX_CLAIM_WAIT_SECONDS), "another worker is sending it")
    due = now + CLOCK_TOLERANCE
    if (
        current.state in (RETRYING, UNKNOWN, QUEUED, SCHEDULED)
        and current.not_before is not None
        and current.not_before > due
    ):
        # An early copy (the app enqueued it twice) keeps to the schedule the record holds: Retry-After or
        # the settling time of an unknown send.
        return _Wait((current.not_before - now).total_seconds(), f"{current.state} until {current.not_before:%H:%M:%S}")
    return None


def _key_reused(key: StatusKey, *, sent: bool) -> Failure:
    what = f"the id {key.value!r}" if key.kind == "id" else "a retry of this queue message"
    if sent:
        text = f"{what} was already sent from {key.sender} with other content; one id is sent at most once per mailbox"
    else:
        text = f"{what} is in use by another request from {key.sender}, still being sent; give each message its own id"
    return permanent("DuplicateKey", text)


# --- 2. Unknown outcomes ----------------------------------------------------------------------------------


def _resolve(
    rt: Runtime, checked: Checked, record: StatusRecord, original_message_id: str | None, fields: dict[str, Any]
) -> StatusRecord | None:
    """Settle the previous try's unknown outcome; the record to send with, or None when nothing is to be sent."""
    from shared.outcomes import permanent as refusal
    from shared.sending import Lookup

    req = checked.request
    now = rt.clock()
    if req.save_to_sent_items:
        lookup = rt.relay.find_sent(req.sender, record.key.mark)
    else:
        lookup = Lookup(False, refusal("SaveToSentItemsOff", "the request is not saved to Sent Items"))
    if lookup.found:
        _write(rt, replace(record, state=SENT, sent_at=now, lease_until=None, resolution="found in Sent Items"))
        _drop_payloads(rt, checked, fields)
        _resolved("found", "the unknown try went out: found in Sent Items", fields)
        _log(logging.INFO, "mail.sent", "the unknown try went out: found in Sent Items; not sent again", **fields)
        return None
    if lookup.failure is None:
        settled = (record.last_attempt_at or now) + timedelta(
            seconds=rt.settings.graph_timeout_seconds + rt.settings.unknown_settle_seconds
        )
        if now < settled:
            # Exchange may not have filed it yet: look again once the settling time has passed.
            _reschedule(rt, checked, record, UNKNOWN, settled, original_message_id, "settling", fields, None, held=True)
            return None
        resolution = "not in Sent Items after the settling time; sent again"
        _resolved("resent", resolution, fields)
    elif lookup.no_access:
        failure = lookup.failure
        assert failure is not None
        if rt.settings.unknown_outcome == "deadletter":
            unknown = permanent(
                "SendOutcomeUnknown",
                f"the last try may have been accepted, and the relay cannot look in Sent Items ({failure.code})",
            )
            _resolved("deadlettered", "dead-lettered: Sent Items cannot be read (SEND_UNKNOWN_OUTCOME)", fields)
            _dead_letter(rt, checked.received, unknown, record, fields, resolution=UNKNOWN)
            return None
        resolution = f"sent again without a look in Sent Items ({failure.code}; SEND_UNKNOWN_OUTCOME=resend)"
        _log(logging.WARNING, "mail.unknown", resolution, code=failure.code, **fields)
        _resolved("resent-unchecked", resolution, fields)
    else:  # the lookup failed for now (Graph or Entra unavailable): stay unknown, look again later
        failure = lookup.failure
        assert isinstance(failure, Transient)
        when = now + timedelta(seconds=rt.settings.retry_policy.delay(record.budget_attempts, failure.retry_after))
        spent = _budget(rt, record, now)
        if spent:
            lost = permanent("SendOutcomeUnknown", f"the Sent Items lookup kept failing ({failure.code}); {spent}")
            _resolved("deadlettered", "dead-lettered: the Sent Items lookup kept failing", fields)
            _dead_letter(rt, checked.received, lost, record, fields, resolution=UNKNOWN)
            return None
        _reschedule(
            rt, checked, record, UNKNOWN, when, original_message_id, "lookup failed", fields, failure, held=True
        )
        return None
    spent = _budget(rt, record, now)
    if spent:
        code = record.last_error_code or "SendOutcomeUnknown"
        gave_up = Transient(code, f"the last try was not accepted ({spent})", record.last_error_hint or "")
        _dead_letter(rt, checked.received, gave_up, record, fields)
        return None
    counted = replace(
        record,
        attempts=record.attempts + 1,
        last_attempt_at=now,
        lease_until=now + timedelta(seconds=rt.settings.claim_lease_seconds),
        resolution=resolution,
    )
    won = rt.status.replace(counted)
    if won is None:  # our lease ran out during the lookup and another worker took over: let it finish
        _wait(rt, checked, original_message_id, 1, "another worker took over", fields)
        return None
    return won


def _budget(rt: Runtime, record: StatusRecord, now: datetime) -> str | None:
    from shared.retries import budget_spent

    spent = budget_spent(rt.settings.retry_policy, record.budget_attempts, record.first_attempt_at, now)
    if spent and record.throttled:  # the record's attempts include them: say why it shows more
        spent += f"; {record.throttled} more throttled (429), not counted"
    return spent


# --- 3b. The fence: the claim proven before every Graph call -----------------------------------------------


class _Fence:
    """Proves, right before each Graph call that can send or change the mailbox (Relay.deliver calls it), that this
    worker still holds the request's claim. Without it, a worker that claimed, then stalled (Storage frozen, a long
    pacing wait) past its lease, would call Graph after another worker had taken the claim over and sent.

    Every lease is counted from a clock read *before* its write was sent (the claim's insert, a takeover, the
    resolution's write, a renewal), so another worker, whose clock differs by at most CLAIM_CLOCK_SKEW, cannot
    take it over before `lease_until`. A call that starts while `now + GRAPH_TIMEOUT_SECONDS + margin` is still
    before `lease_until` has been answered or timed out before anyone may take over: the fence passes on the
    clock alone, no round trip (nearly every call). Otherwise it renews the lease by a write under the claim's
    ETag: refused (412), another worker changed the record, i.e. took the claim over, and ClaimLost stops the call.
    A Storage error while renewing propagates: nothing was sent, the host delivers the message again.

    `record` is the claim's latest record: after a renewal, its ETag is the one the outcome must be written under.
    """

    def __init__(self, rt: Runtime, record: StatusRecord, fields: dict[str, Any]) -> None:
        self._rt = rt
        self.record = record
        self._fields = fields
        settings = rt.settings
        self._call = timedelta(seconds=settings.graph_timeout_seconds)
        self._lease = timedelta(seconds=settings.claim_lease_seconds)
        # Settings at their minimum (a lease of twice the timeout, the timeout 1 s) would leave a renewal no room
        # under the whole skew margin: half of what a lease leaves beyond one call then.
        self._margin = min(CLAIM_CLOCK_SKEW, (self._lease - self._call) / 2)

    def _holds(self) -> bool:
        until = self.record.lease_until
        return until is not None and self._rt.clock() + self._call + self._margin < until

    def __call__(self) -> None:
        from shared.sending import ClaimLost

        for _ in range(CLAIM_ROUNDS):
            if self._holds():
                return
            now = self._rt.clock()  # before the write is sent: the renewed lease counts from no later than that
            renewed = self._rt.status.replace(replace(self.record, updated_at=now, lease_until=now + self._lease))
            if renewed is None:
                raise ClaimLost("another worker took the request's claim over")
            self.record = renewed
            text = f"the claim's lease ran short; renewed until {now + self._lease:%H:%M:%S}"
            _log(logging.INFO, "mail.claim.renewed", text, **self._fields)
        # Each renewal took longer than a lease leaves beyond a call (Storage answering that slowly): no call now.
        raise RuntimeError("the claim could not be renewed in time for the Graph call; the host will deliver it again")


def _held_write(rt: Runtime, record: StatusRecord) -> bool:
    """Write a change that carries no news from Graph (nothing was sent since the claim: a paced copy going back
    `queued`, an unknown try still settling) under the claim's ETag. False: another worker took the claim over
    meanwhile, and its record must stand. Unlike an outcome (`_write`), such a change never overwrites another
    worker's: a `queued` written over a claim in flight would let a later copy send without looking in Sent Items."""
    return rt.status.replace(replace(record, updated_at=rt.clock())) is not None


def _claim_lost(rt: Runtime, checked: Checked, original_message_id: str | None, fields: dict[str, Any]) -> None:
    """The claim was taken over (the fence, or a `_held_write`, found out): this copy sent nothing since it claimed.
    Put it back to look again (as `_wait` does), so it finds the new owner's outcome (`sent`: completed) or takes
    over in turn if that one dies."""
    delay = _put_back(rt, checked, original_message_id, 1, "claim lost")
    text = f"another worker took the claim over while this one stalled; not sent; looking again in {delay} s"
    _log(logging.WARNING, "mail.claim.lost", text, delaySeconds=delay, **fields)


# --- 4. After a try ---------------------------------------------------------------------------------------


def _settle(
    rt: Runtime,
    checked: Checked,
    record: StatusRecord,
    outcome: Sent | Permanent | Transient,
    request_id: str | None,
    client_request_id: str | None,
    fields: dict[str, Any],
    freeing: _Freeing | None = None,
) -> None:
    """Record what Graph answered; the try's pace slot (`freeing`) is freed in the same write."""
    now = rt.clock()
    record = replace(record, graph_request_id=request_id, client_request_id=client_request_id)
    fields.update(graphRequestId=request_id, clientRequestId=client_request_id)
    if record.enqueued_at is not None:  # enqueue to this outcome, for the metric and the report (sent, or not)
        fields["enqueueToOutcomeMs"] = max(round((now - record.enqueued_at).total_seconds() * 1000), 0)
    if isinstance(outcome, Sent):
        _write(rt, replace(record, state=SENT, sent_at=now, lease_until=None, last_error_code=None), freeing, fields)
        _log(logging.INFO, "mail.sent", "Graph accepted the message (202)", **fields)
        _drop_payloads(rt, checked, fields)
        return
    if isinstance(outcome, Permanent):
        _dead_letter(rt, checked.received, outcome, record, fields, freeing=freeing)
        return
    original = record.message_id
    retry_at = now + timedelta(seconds=rt.settings.retry_policy.delay(record.budget_attempts, outcome.retry_after))
    if outcome.maybe_sent:
        # Never given up on here: what happened must be found out first (the next delivery resolves it).
        settled = now + timedelta(seconds=rt.settings.graph_timeout_seconds + rt.settings.unknown_settle_seconds)
        _reschedule(
            rt, checked, record, UNKNOWN, max(retry_at, settled), original, "unknown", fields, outcome, freeing
        )
        return
    if outcome.throttled:
        fields["throttled"] = True  # a 429: counted as such (mailrelay.throttled), and the alert on their rate
        # Throttling is the service's pace, not the request's fault: the try stays in `attempts` (the call was made,
        # as the log says) and is marked throttled, which the budget does not count; Retry-After kept.
        record = replace(record, throttled=min(record.throttled + 1, record.attempts))
    spent = _budget(rt, record, now)
    if spent:
        gave_up = Transient(outcome.code, f"{outcome.message} ({spent})", outcome.hint, outcome.retry_after)
        _dead_letter(rt, checked.received, gave_up, record, fields, freeing=freeing)
        return
    _reschedule(rt, checked, record, RETRYING, retry_at, original, "retrying", fields, outcome, freeing)


def _reschedule(
    rt: Runtime,
    checked: Checked,
    record: StatusRecord,
    state: str,
    when: datetime,
    original_message_id: str | None,
    reason: str,
    fields: dict[str, Any],
    failure: Transient | None,
    freeing: _Freeing | None = None,
    *,
    held: bool = False,
) -> None:
    """Record `state` until `when`, and put the request on the retry queue hidden until then. `held`: nothing was
    sent since the claim (`_held_write`): written only while the claim is this copy's."""
    now = rt.clock()
    changed = replace(record, state=state, updated_at=now, lease_until=None, not_before=when)
    if failure is not None:
        changed = replace(changed, last_error_code=failure.code, last_error_hint=failure.hint)
    if not held:
        _write(rt, changed, freeing, fields)
    elif not _held_write(rt, changed):
        _claim_lost(rt, checked, original_message_id, fields)
        return
    delay = _put_back(rt, checked, original_message_id, (when - now).total_seconds(), reason)
    code = failure.code if failure else None
    event = "mail.unknown" if state == UNKNOWN else "mail.retry"
    text = f"{code or reason}; {state}, next step in {delay} s"
    retry_after = failure.retry_after if failure else None
    _log(logging.WARNING, event, text, code=code, retryAfter=retry_after, delaySeconds=delay, **fields)


def _wait(
    rt: Runtime, checked: Checked, original_message_id: str | None, seconds: float, why: str, fields: dict[str, Any]
) -> None:
    """Put this copy back, unchanged record: another worker holds the key, or its schedule says later."""
    delay = _put_back(rt, checked, original_message_id, seconds, "waiting")
    _log(logging.INFO, "mail.waiting", f"{why}; looking again in {delay} s", delaySeconds=delay, **fields)


def _put_back(rt: Runtime, checked: Checked, original_message_id: str | None, seconds: float, reason: str) -> int:
    from shared.retries import fit_on_queue, wrap

    delay = max(1, math.ceil(seconds))  # whole seconds, the queue's unit, never below the wait asked for
    wrapper = wrap(checked.received, original_message_id, reason, checked.app)
    rt.retries.put(fit_on_queue(wrapper, rt.overflow), delay)
    return delay


def _dead_letter(
    rt: Runtime,
    request: Any,
    failure: Failure,
    record: StatusRecord | None,
    fields: dict[str, Any],
    resolution: str | None = None,
    freeing: _Freeing | None = None,
) -> None:
    """The envelope first, then the record: a crash in between leaves the request to be delivered again."""
    from shared.outcomes import dead_letter_envelope

    attempts = record.attempts if record else 0
    origin = (record.message_id if record else None) or fields.get("originalMessageId") or fields.get("queueMessageId")
    app = record.key.app if record else fields.get("app")
    rt.dead_letters.put(dead_letter_envelope(request, failure, attempts=attempts, queue_message_id=origin, app=app))
    if record is not None:
        _write(
            rt,
            replace(
                record,
                state=DEAD_LETTERED,
                lease_until=None,
                not_before=None,
                last_error_code=failure.code,
                last_error_hint=failure.hint,
                resolution=resolution or record.resolution,
            ),
            freeing,
            fields,
        )
    _log(logging.ERROR, "mail.deadlettered", failure.code, code=failure.code, hint=failure.hint, **fields)


def _write(
    rt: Runtime, record: StatusRecord, freeing: _Freeing | None = None, fields: dict[str, Any] | None = None
) -> None:
    """Write an outcome under the claim's ETag; if another worker changed the record meanwhile (our lease ran
    out), write it over theirs all the same: what Graph answered is the truth about this request.

    `freeing`: the try's pace slot, freed in the same transaction (its sender's pace row shares the record's
    partition: shared/pacing.py), so an outcome costs one round trip, slot included."""
    changed = replace(record, updated_at=rt.clock())
    pacer = rt.pacer if freeing is not None else None
    for _ in range(CLAIM_ROUNDS):
        if pacer is None or freeing is None:
            if rt.status.replace(changed) is not None:
                return
        else:
            writes = pacer.release_writes(freeing.sender, freeing.slot, given_back=freeing.given_back)
            written = rt.status.replace_with(changed, writes)
            if written.record is not None:
                pacer.released_in(freeing.sender, written.row_write, written.row_etag)
                if written.row_error is not None:
                    text = f"the slot stays taken until its lease ends: {written.row_error}"
                    _log(logging.WARNING, "pace.release", text, **(fields or {}))
                elif written.row_etag is None:  # the pace row is gone (cleaned up): nothing left to free
                    _log(logging.INFO, "pace.release", "no pace row to free the slot in", **(fields or {}))
                return
        current = rt.status.get(record.key)
        if current is None:
            if rt.status.create(replace(changed, etag=None)) is not None:
                break
            continue
        if current.state == SENT:
            break  # the other worker saw it sent too: nothing to add
        changed = replace(changed, etag=current.etag)
    else:
        raise RuntimeError("the status record kept changing under this worker; the host will deliver it again")
    if freeing is not None:
        _release(rt, freeing, fields or {})


def _resolved(resolution: str, text: str, fields: dict[str, Any]) -> None:
    """An unknown outcome settled: `resolution` is one of found, resent, resent-unchecked, deadlettered (a fixed
    set: the metric mailrelay.unknown_resolved counts by it)."""
    _log(logging.INFO, "mail.resolved", text, resolution=resolution, **fields)


def _log(level: int, event: str, text: str, **fields: Any) -> None:
    from shared.logs import log_event

    log_event(log, level, event, text, **fields)
