"""Graph's and Exchange's sending limits, enforced per app and mailbox, time-scaled for tests.

The figures (docs/design.md, "Limits the relay respects", checked against Microsoft's pages):
- Graph's Outlook service limits hold per app ID and mailbox (https://learn.microsoft.com/graph/throttling-limits,
  "Outlook service limits"): 4 concurrent requests and 10,000 requests per 10 minutes; over them Graph answers
  429 with Retry-After, code `ApplicationThrottled`, and for the concurrency one the message "Application is
  over its MailboxConcurrency limit." (seen in the field). Assumed: the text for the 10-minute limit is not
  documented; "Application is over its request limit." stands in for it. Assumed: a throttled call is not counted.
- The same table's third limit: "150 megabytes (MB) upload (PATCH, POST, PUT) in a 5-minute period", per app ID and
  mailbox. The page names the methods, not the bytes: assumed, the bytes of each request body sent with one of them
  on the mailbox (sendMail, a draft, a POSTed attachment, createUploadSession, an upload session's PUT ranges; the
  PUTs go to outlook.office.com with no Graph token, and are assumed to count against the app and mailbox of their
  session). "MB" is not defined there: the emulator takes the smaller reading, 150,000,000 bytes, so that a sender
  paced to it is within either. Assumed: over it Graph answers like the other two (429 ApplicationThrottled with
  Retry-After; no page gives the text, "Application is over its MailboxUpload limit." stands in), Retry-After being
  the wait until enough of the window's bytes have aged out for this request to fit.
- Exchange Online's limits per mailbox (https://learn.microsoft.com/office365/servicedescriptions/
  exchange-online-service-description/exchange-online-limits, "Sending limits"): 30 messages per minute, past
  which mail is queued and delayed, not refused (the SMTP submission page says "Exceeding the per minute limit may
  cause some delivery delay"); and 10,000 recipients a day, past which the mailbox cannot send until the count of
  the last 24 hours drops below it. sendMail still answers 202 then; the message is not delivered and the sender
  gets a non-delivery report (5.1.90 / SubmissionQuotaExceededException, MicrosoftDocs/OfficeDocs-Exchange
  "fix-error-for-submission-quota-exceeded-in-exchange-online"). So the relay cannot see the block in Graph's
  answer: it must never cause it. The emulator records each such message as bounced.

`throttle_time_scale` divides every window: 60 makes a minute last a second and a day 24 minutes, so tests and
the benchmark meet every limit in seconds. `graph_latency` adds a fixed delay to every sendMail (a real one
takes a few hundred milliseconds).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from devstack.emulator.state import TenantState

MAX_CONCURRENT: Final = 4
REQUESTS_PER_10_MIN: Final = 10_000
UPLOAD_BYTES_PER_5_MIN: Final = 150_000_000
MESSAGES_PER_MINUTE: Final = 30
RECIPIENTS_PER_DAY: Final = 10_000
CONCURRENCY_MESSAGE: Final = "Application is over its MailboxConcurrency limit."
REQUESTS_MESSAGE: Final = "Application is over its request limit."  # assumed (the module's docstring)
UPLOADS_MESSAGE: Final = "Application is over its MailboxUpload limit."  # assumed (the module's docstring)
# The status code 5.1.90 and SubmissionQuotaExceededException are the Exchange page's (module docstring); assumed:
# the NDR's wording around them.
NDR: Final = "550 5.1.90 the sender has reached its daily recipient limit (SubmissionQuotaExceededException)"


@dataclass
class Pace:
    """One app and mailbox: what Graph and Exchange count."""

    in_flight: int = 0
    requests: deque[float] = field(default_factory=deque)  # the last 10 minutes' requests
    uploads: deque[tuple[float, int]] = field(default_factory=deque)  # the last 5 minutes' (time, body bytes)
    sends: deque[float] = field(default_factory=deque)  # the last minute's accepted messages
    recipients: deque[tuple[float, int]] = field(default_factory=deque)  # the last day's (time, count)
    next_delivery: float = 0.0  # Exchange's queue for this mailbox: when the next message can go out


class Throttling(TenantState):
    """A part of `Emulator`: the limits, around sendMail (graph.py calls `_throttle_enter/_exit/_accept`)."""

    # TenantState holds the state: _paces, _throttle_lock, throttle_stats, throttle_time_scale, graph_latency.

    def _throttle_state(self) -> dict[tuple[str, str], Pace]:
        return self._paces

    def _window(self, seconds: float) -> float:
        return seconds / max(self.throttle_time_scale, 1e-9)

    def _throttle_enter(self, app_id: str, mailbox: str, upload_bytes: int = 0) -> tuple[int, str, str, float] | None:
        """Count a send in flight, and the bytes of its request body as uploaded; or the 429 (status, code,
        message, Retry-After) Graph answers instead, counting nothing."""
        paces = self._throttle_state()
        now = time.monotonic()
        with self._throttle_lock:
            pace = paces.setdefault((app_id.lower(), mailbox.lower()), Pace())
            while pace.requests and pace.requests[0] <= now - self._window(600):
                pace.requests.popleft()
            if pace.in_flight >= MAX_CONCURRENT:
                self.throttle_stats["concurrency429"] += 1
                return 429, "ApplicationThrottled", CONCURRENCY_MESSAGE, 1.0
            if len(pace.requests) >= REQUESTS_PER_10_MIN:
                self.throttle_stats["requests429"] += 1
                wait = pace.requests[0] + self._window(600) - now
                return 429, "ApplicationThrottled", REQUESTS_MESSAGE, max(wait, 1.0)
            over = self._uploads_over(pace, now, upload_bytes)
            if over is not None:
                return over
            pace.in_flight += 1
            pace.requests.append(now)
            if upload_bytes > 0:
                pace.uploads.append((now, upload_bytes))
        return None

    def _throttle_upload(self, app_id: str, mailbox: str, upload_bytes: int) -> tuple[int, str, str, float] | None:
        """Count the body of a PATCH, POST or PUT on the mailbox that is not a send (a draft, an attachment, an upload
        session and its ranges) against the upload limit; or the 429 Graph answers instead, counting nothing."""
        now = time.monotonic()
        with self._throttle_lock:
            pace = self._throttle_state().setdefault((app_id.lower(), mailbox.lower()), Pace())
            over = self._uploads_over(pace, now, upload_bytes)
            if over is None and upload_bytes > 0:
                pace.uploads.append((now, upload_bytes))
        return over

    def _uploads_over(self, pace: Pace, now: float, upload_bytes: int) -> tuple[int, str, str, float] | None:
        """The 429 for a body of `upload_bytes` that would take the window past the limit (under _throttle_lock)."""
        window = self._window(300)
        while pace.uploads and pace.uploads[0][0] <= now - window:
            pace.uploads.popleft()
        total = sum(n for _, n in pace.uploads)
        if upload_bytes <= 0 or total + upload_bytes <= UPLOAD_BYTES_PER_5_MIN:
            return None
        self.throttle_stats["uploads429"] += 1
        # Wait until enough of the oldest bytes have aged out of the window for this body to fit.
        freed, wait = 0, window
        for at, size in pace.uploads:
            freed += size
            if total - freed + upload_bytes <= UPLOAD_BYTES_PER_5_MIN:
                wait = at + window - now
                break
        return 429, "ApplicationThrottled", UPLOADS_MESSAGE, max(wait, 1.0)

    def _throttle_exit(self, app_id: str, mailbox: str) -> None:
        with self._throttle_lock:
            pace = self._throttle_state()[(app_id.lower(), mailbox.lower())]
            pace.in_flight -= 1

    def _throttle_accept(self, app_id: str, mailbox: str, recipients: int) -> dict[str, Any]:
        """Exchange takes an accepted message: delayed past 30 a minute, bounced past the daily recipients."""
        paces = self._throttle_state()
        now = time.monotonic()
        minute, day = self._window(60), self._window(86_400)
        with self._throttle_lock:
            pace = paces.setdefault((app_id.lower(), mailbox.lower()), Pace())
            while pace.recipients and pace.recipients[0][0] <= now - day:
                pace.recipients.popleft()
            if sum(n for _, n in pace.recipients) + recipients > RECIPIENTS_PER_DAY:
                self.throttle_stats["bounced"] += 1
                return {"bounced": NDR}
            pace.recipients.append((now, recipients))
            while pace.sends and pace.sends[0] <= now - minute:
                pace.sends.popleft()
            pace.sends.append(now)
            # Exchange delivers at most 30 a minute from the mailbox; the rest wait their turn in its queue.
            spacing = minute / MESSAGES_PER_MINUTE
            deliver_at = max(now, pace.next_delivery) if len(pace.sends) > MESSAGES_PER_MINUTE else now
            pace.next_delivery = max(pace.next_delivery, now) + spacing
            delay = deliver_at - now
            if delay > 0:
                self.throttle_stats["delayed"] += 1
            return {"deliveryDelaySeconds": round(delay, 3)} if delay > 0 else {}

    def configure_throttling(self, entry: dict[str, Any]) -> None:
        """{"timeScale"?, "graphLatencySeconds"?} (admin API `POST throttling`)."""
        for key, attr in (("timeScale", "throttle_time_scale"), ("graphLatencySeconds", "graph_latency")):
            if key in entry:
                value = entry[key]
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{key} must be a number, at least 0")
                setattr(self, attr, float(value))
        if entry.get("reset"):
            self.reset_throttling()

    def reset_throttling(self) -> None:
        with self._throttle_lock:
            self._paces.clear()
            for key in self.throttle_stats:
                self.throttle_stats[key] = 0

    def throttling(self) -> dict[str, Any]:
        """The counters (admin API `GET throttling`)."""
        return {"timeScale": self.throttle_time_scale, "graphLatencySeconds": self.graph_latency, **self.throttle_stats}
