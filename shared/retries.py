"""Transient failures: the retry wrapper carried in the queue message, the backoff, and the budget.

A request that failed transiently (429, 5xx, timeouts) goes back on the main queue, hidden for a while,
instead of being left to the host's own retry: the host retries after a fixed `visibilityTimeout` and
moves the message to the poison queue after `maxDequeueCount` tries, neither of which knows about
Retry-After or gives throttling time to pass. The attempt count travels in the message itself, wrapped
around the request as received (the contract refuses unknown fields, so it cannot go inside it):

    {"$retry": {"attempts": 2, "firstAttemptAt": "2025-01-01T10:00:00Z",
                "originalMessageId": "…", "lastError": {"code": "ApplicationThrottled", "message": "…"}},
     "request": {…the send request, unchanged…}}

`"$retry"` is no field of the send request (no field name starts with "$"), so a wrapper can never be
mistaken for a request, nor the other way round.

Everything here is pure: the clock and the random source are parameters, so the rules are unit-tested
without I/O or sleeping.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from shared.queues import Overflow

RETRY_KEY: Final = "$retry"
REQUEST_KEY: Final = "request"
# A request too large for its retry copy to fit on the queue is stored in the relay's overflow container
# (shared/queues.py) and the wrapper carries its reference here instead of "request".
STORED_KEY: Final = "requestStored"
MAX_LAST_ERROR: Final = 200  # characters of the last error's message a wrapper carries

DEFAULT_MAX_ATTEMPTS: Final = 8
DEFAULT_MAX_AGE_HOURS: Final = 24.0
DEFAULT_BASE_DELAY_SECONDS: Final = 30.0
MAX_BACKOFF_SECONDS: Final = 3600.0  # the exponential part stops growing at an hour
# Azure Storage refuses a visibility timeout beyond 7 days; keep a margin below it.
MAX_VISIBILITY_SECONDS: Final = 7 * 24 * 3600 - 60
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)  # how far in the future a firstAttemptAt may be, from another instance
# Storage's message ids are GUIDs (36 characters); the length of a request's `id` leaves room for other hosts.
MAX_MESSAGE_ID_LENGTH: Final = 128


class MalformedWrapper(ValueError):
    """A message that has the "$retry" key but not the wrapper's shape (hand-made, or truncated)."""


@dataclass(frozen=True)
class RetryState:
    """What the wrapper carries: attempts made so far, since when, and the last failure."""

    attempts: int
    first_attempt_at: datetime
    original_message_id: str | None
    last_error: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "firstAttemptAt": _iso(self.first_attempt_at),
            "originalMessageId": self.original_message_id,
            "lastError": self.last_error,
        }


@dataclass(frozen=True)
class Delivery:
    """One queue message, unwrapped: the request's bytes as the relay parses them, and any retry state."""

    body: bytes
    state: RetryState | None  # None on a request's first delivery
    stored: dict[str, Any] | None = None  # the overflow reference the body was read from, if any


def unwrap(raw: bytes, load: Callable[[dict[str, Any]], bytes] | None = None, now: datetime | None = None) -> Delivery:
    """Split a retry wrapper into the request and its state; anything else is a first delivery, unchanged.

    `load` reads a stored request (the overflow store's `get`). Raises MalformedWrapper when the message
    claims to be a wrapper ("$retry" at the top) but is not one the relay could have written (see
    `_first_attempt` and `_original_message_id`), or its stored request cannot be read.
    """
    if b'"$retry"' not in raw:  # cheap test first: most messages are first deliveries
        return Delivery(raw, None)
    try:
        obj = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Delivery(raw, None)  # not JSON (or nested past the parser): the contract reports it
    if not isinstance(obj, dict) or RETRY_KEY not in obj:
        return Delivery(raw, None)  # "$retry" inside a string or a nested object: an ordinary request
    meta, request, stored = obj.get(RETRY_KEY), obj.get(REQUEST_KEY), obj.get(STORED_KEY)
    shape_ok = (set(obj) == {RETRY_KEY, REQUEST_KEY} and isinstance(request, dict)) or (
        set(obj) == {RETRY_KEY, STORED_KEY} and isinstance(stored, dict)
    )
    if not shape_ok or not isinstance(meta, dict):
        raise MalformedWrapper(
            'a retry wrapper holds exactly "$retry" (an object) and "request" (an object) or "requestStored"'
        )
    attempts = meta.get("attempts")
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise MalformedWrapper('"$retry.attempts" must be a whole number of at least 1')
    last_error = meta.get("lastError")
    state = RetryState(
        attempts=attempts,
        first_attempt_at=_first_attempt(meta.get("firstAttemptAt"), now or datetime.now(UTC)),
        original_message_id=_original_message_id(meta.get("originalMessageId")),
        last_error={k: str(v) for k, v in last_error.items()} if isinstance(last_error, dict) else {},
    )
    if isinstance(stored, dict):
        from shared.queues import StoredPayloadError, check_reference

        try:
            check_reference(stored)  # before the store is touched: a forged name could reach any blob
        except StoredPayloadError as e:
            raise MalformedWrapper(f'"requestStored": {e}') from None
        if load is None:
            raise MalformedWrapper("the retry's request is stored, and this relay has no overflow store to read it")
        try:
            return Delivery(load(stored), state, stored)
        except StoredPayloadError as e:  # gone or altered: permanent. The store unreachable: the host retries.
            raise MalformedWrapper(f"the retry's stored request cannot be read: {e}") from None
    from shared.queues import json_bytes

    return Delivery(json_bytes(request), state)


def _first_attempt(value: Any, now: datetime) -> datetime:
    """`$retry.firstAttemptAt` as an aware UTC time, or MalformedWrapper.

    The relay writes it from its own clock, so it is never in the future (beyond clock skew between
    instances): a later time would keep SEND_MAX_AGE_HOURS from ever running out, and one past year 9999
    once in UTC could not even be written back on the next retry.
    """
    try:
        first = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        first = (first if first.tzinfo else first.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise MalformedWrapper('"$retry.firstAttemptAt" must be an ISO 8601 time') from None
    if first > now + MAX_CLOCK_SKEW:
        raise MalformedWrapper(f'"$retry.firstAttemptAt" is in the future ({_iso(first)}); the relay never writes one')
    return first


def _original_message_id(value: Any) -> str | None:
    """`$retry.originalMessageId`: the id Storage gave the first queue message (a GUID), or none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_MESSAGE_ID_LENGTH:
        raise MalformedWrapper(
            f'"$retry.originalMessageId" must be a queue message id, a string of at most {MAX_MESSAGE_ID_LENGTH} '
            "characters"
        )
    return value


def wrap(request: dict[str, Any], state: RetryState) -> dict[str, Any]:
    """The message that puts `request` back on the queue, carrying `state`."""
    return {RETRY_KEY: state.to_json(), REQUEST_KEY: request}


@dataclass(frozen=True)
class RetryPolicy:
    """The budget and backoff for transient failures (settings SEND_MAX_ATTEMPTS, SEND_MAX_AGE_HOURS,
    SEND_RETRY_BASE_SECONDS)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_age: timedelta = timedelta(hours=DEFAULT_MAX_AGE_HOURS)
    base_delay: float = DEFAULT_BASE_DELAY_SECONDS
    max_backoff: float = MAX_BACKOFF_SECONDS

    def backoff(self, attempts: int, rand: Callable[[], float] = random.random) -> float:
        """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempts-1))].

        Full jitter spreads a burst of failures (a 429 storm hits every message at once) over the
        whole window, so they do not come back together and meet the same throttle again.
        """
        exponent = min(max(attempts - 1, 0), 32)  # 2^32 times any base is far past the cap already
        ceiling = min(self.max_backoff, self.base_delay * (2.0**exponent))
        return rand() * ceiling

    def delay(self, attempts: int, retry_after: float | None, rand: Callable[[], float] = random.random) -> int:
        """Seconds to hide the re-queued message: the service's Retry-After if longer than the backoff."""
        seconds = min(float(MAX_VISIBILITY_SECONDS), max(retry_after or 0.0, self.backoff(attempts, rand)))
        # Whole seconds (the queue's unit), rounded up so Retry-After is never undercut.
        return int(-(-seconds // 1))


@dataclass(frozen=True)
class Retry:
    """Put the request back on the queue with this state, hidden for `delay` seconds."""

    state: RetryState
    delay: int


@dataclass(frozen=True)
class GiveUp:
    """The budget is spent: dead-letter the request. `reason` says which budget, for the dead letter."""

    attempts: int
    reason: str


def after_transient(
    policy: RetryPolicy,
    previous: RetryState | None,
    *,
    attempts_now: int,
    message_id: str | None,
    error: dict[str, str],
    retry_after: float | None,
    now: datetime | None = None,
    rand: Callable[[], float] = random.random,
) -> Retry | GiveUp:
    """Decide what follows a transient failure.

    `attempts_now` is how many tries this delivery stands for (the host's dequeue count: a delivery
    that crashed before finishing counts too). The budget is spent when the attempts reach
    SEND_MAX_ATTEMPTS, or when SEND_MAX_AGE_HOURS have passed since the first attempt: mail that old
    is likely no longer useful, and an admin should see the cause rather than have it retried forever.
    """
    now = now or datetime.now(UTC)
    attempts = (previous.attempts if previous else 0) + max(attempts_now, 1)
    first = previous.first_attempt_at if previous else now
    original = (previous.original_message_id if previous else None) or message_id
    if attempts >= policy.max_attempts:
        return GiveUp(attempts, f"gave up after {attempts} attempts (SEND_MAX_ATTEMPTS={policy.max_attempts})")
    if now - first >= policy.max_age:
        hours = policy.max_age.total_seconds() / 3600
        return GiveUp(attempts, f"gave up after {hours:g} hours of retrying (SEND_MAX_AGE_HOURS)")
    # The last error's message is Graph's or Entra's text: capped, so the wrapper's size stays bounded.
    error = {k: v[:MAX_LAST_ERROR] for k, v in error.items()}
    state = RetryState(attempts=attempts, first_attempt_at=first, original_message_id=original, last_error=error)
    return Retry(state, policy.delay(attempts, retry_after, rand))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def fit_on_queue(wrapper: dict[str, Any], overflow: Overflow | None) -> dict[str, Any]:
    """A retry wrapper as it goes back on the main queue: the request inline if it fits, else stored in
    the overflow container and referenced (`requestStored`), so the retry keeps its Retry-After delay
    instead of failing to enqueue and falling back on the host's blind redelivery."""
    from shared.queues import MAX_QUEUE_TEXT, encode, json_bytes

    if len(encode(wrapper)) <= MAX_QUEUE_TEXT:
        return wrapper
    if overflow is None:
        raise RuntimeError("a retry does not fit in a queue message and no overflow store is configured")
    ref = overflow.put(json_bytes(wrapper[REQUEST_KEY]))
    return {RETRY_KEY: wrapper[RETRY_KEY], STORED_KEY: ref}
