"""Retries: the relay-internal retry queue's messages, the backoff, and the budget.

A request that cannot be sent now (a transient failure, an unknown outcome waiting for its settling time,
or a claim another worker holds) goes on the relay's own queue, `<MAIL_QUEUE_NAME>-retry`, hidden for a
while, instead of being left to the host's own retry: the host retries after a fixed `visibilityTimeout`
and moves the message to the poison queue after `maxDequeueCount` tries, neither of which knows about
Retry-After or gives throttling time to pass.

Only the relay's identity may write that queue (infra/ grants apps Storage Queue Data Message Sender on the
outbox alone), and the retry state itself (attempts, first try, last error) lives in the status record
(shared/status.py), which apps cannot write either. The message carries only the request as received and
the id of the queue message that first carried it (the key of a request without an `id`):

    {"$retry": {"originalMessageId": "…", "reason": "retrying"}, "request": {…the send request, unchanged…}}

`"$retry"` is no field of the send request (no field name starts with "$"), so a wrapper can never be
mistaken for a request. A wrapper that arrives on the outbox was written by an app: it is refused
(`is_wrapper`), never trusted.

Everything here is pure: the clock and the random source are parameters, so the rules are unit-tested
without I/O or sleeping.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from shared.apps import DEFAULT_APP

# The backoff's ceiling is the queue's: a message cannot stay hidden longer.
from shared.queues import MAX_VISIBILITY_SECONDS as MAX_VISIBILITY_SECONDS

if TYPE_CHECKING:
    from shared.queues import Overflow

RETRY_KEY: Final = "$retry"
REQUEST_KEY: Final = "request"
# A request too large for its retry copy to fit on the queue is stored in the relay's overflow container
# (shared/queues.py) and the wrapper carries its reference here instead of "request".
STORED_KEY: Final = "requestStored"

DEFAULT_MAX_ATTEMPTS: Final = 8
DEFAULT_MAX_AGE_HOURS: Final = 24.0
DEFAULT_BASE_DELAY_SECONDS: Final = 30.0
MAX_BACKOFF_SECONDS: Final = 3600.0  # the exponential part stops growing at an hour
# Storage's message ids are GUIDs (36 characters); the length of a request's `id` leaves room for other hosts.
MAX_MESSAGE_ID_LENGTH: Final = 128


class MalformedWrapper(ValueError):
    """A retry-queue message that is not a wrapper the relay could have written (truncated, hand-made)."""


@dataclass(frozen=True)
class Unwrapped:
    """One retry-queue message, unwrapped: the request's bytes as the relay parses them, and its origin."""

    body: bytes
    original_message_id: str | None
    reason: str = ""
    stored: dict[str, Any] | None = None  # the overflow reference the body was read from, if any
    app: str = DEFAULT_APP  # the app whose queue the request first came from (shared/apps.py)


def is_wrapper(raw: bytes) -> bool:
    """Does this message claim to be a retry wrapper ("$retry" at the top of a JSON object)?"""
    if b'"$retry"' not in raw:  # cheap test first: nearly every message is a plain request
        return False
    try:
        obj = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False  # not JSON (or nested past the parser): the contract reports it
    return isinstance(obj, dict) and RETRY_KEY in obj


def unwrap(raw: bytes, load: Callable[[dict[str, Any]], bytes] | None = None) -> Unwrapped:
    """Split a retry-queue message into the request and its origin.

    `load` reads a stored request (the overflow store's `get`). Raises MalformedWrapper when the message is
    not a wrapper the relay could have written, or its stored request cannot be read.
    """
    try:
        obj = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedWrapper("a retry-queue message must be the relay's JSON wrapper") from None
    if not isinstance(obj, dict):
        raise MalformedWrapper("a retry-queue message must be the relay's JSON wrapper")
    meta, request, stored = obj.get(RETRY_KEY), obj.get(REQUEST_KEY), obj.get(STORED_KEY)
    shape_ok = (set(obj) == {RETRY_KEY, REQUEST_KEY} and isinstance(request, dict)) or (
        set(obj) == {RETRY_KEY, STORED_KEY} and isinstance(stored, dict)
    )
    if not shape_ok or not isinstance(meta, dict):
        raise MalformedWrapper(
            'a retry wrapper holds exactly "$retry" (an object) and "request" (an object) or "requestStored"'
        )
    original = _original_message_id(meta.get("originalMessageId"))
    reason = str(meta.get("reason") or "")[:40]
    app = _app(meta.get("app"))
    if isinstance(stored, dict):
        from shared.queues import StoredPayloadError, check_reference

        try:
            check_reference(stored)  # before the store is touched: a forged name could reach any blob
        except StoredPayloadError as e:
            raise MalformedWrapper(f'"requestStored": {e}') from None
        if load is None:
            raise MalformedWrapper("the retry's request is stored, and this relay has no overflow store to read it")
        try:
            return Unwrapped(load(stored), original, reason, stored, app)
        except StoredPayloadError as e:  # gone or altered: permanent. The store unreachable: the host retries.
            raise MalformedWrapper(f"the retry's stored request cannot be read: {e}") from None
    from shared.queues import json_bytes

    return Unwrapped(json_bytes(request), original, reason, app=app)


def _app(value: Any) -> str:
    """`$retry.app`: the app the relay read the request from; absent for the default app (and in wrappers written
    before apps). Only the relay writes the retry queue; the name is checked all the same."""
    from shared.apps import is_app_name

    if value is None:
        return DEFAULT_APP
    if not isinstance(value, str) or not is_app_name(value):
        raise MalformedWrapper('"$retry.app" must be an app\'s name')
    return value


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


def wrap(
    request: dict[str, Any], original_message_id: str | None, reason: str, app: str = DEFAULT_APP
) -> dict[str, Any]:
    """The retry-queue message for `request`: the request as received, where it came from, and its app."""
    meta: dict[str, Any] = {"originalMessageId": original_message_id, "reason": reason}
    if app != DEFAULT_APP:
        meta["app"] = app
    return {RETRY_KEY: meta, REQUEST_KEY: request}


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


def budget_spent(policy: RetryPolicy, attempts: int, first_attempt_at: datetime | None, now: datetime) -> str | None:
    """Why no further try may be made, or None. `attempts` is the sendMail calls made so far.

    The budget is spent when the attempts reach SEND_MAX_ATTEMPTS, or when SEND_MAX_AGE_HOURS have passed
    since the first attempt: mail that old is likely no longer useful, and an admin should see the cause
    rather than have it retried forever.
    """
    if attempts >= policy.max_attempts:
        return f"gave up after {attempts} attempts (SEND_MAX_ATTEMPTS={policy.max_attempts})"
    if first_attempt_at is not None and now - first_attempt_at >= policy.max_age:
        hours = policy.max_age.total_seconds() / 3600
        return f"gave up after {hours:g} hours of retrying (SEND_MAX_AGE_HOURS)"
    return None


def fit_on_queue(wrapper: dict[str, Any], overflow: Overflow | None) -> dict[str, Any]:
    """A retry wrapper as it goes on the retry queue: the request inline if it fits, else stored in
    the overflow container and referenced (`requestStored`), so the retry keeps its Retry-After delay
    instead of failing to enqueue and falling back on the host's blind redelivery."""
    from shared.queues import MAX_QUEUE_TEXT, encode, json_bytes

    if len(encode(wrapper)) <= MAX_QUEUE_TEXT:
        return wrapper
    if overflow is None:
        raise RuntimeError("a retry does not fit in a queue message and no overflow store is configured")
    ref = overflow.put(json_bytes(wrapper[REQUEST_KEY]))
    return {RETRY_KEY: wrapper[RETRY_KEY], STORED_KEY: ref}
