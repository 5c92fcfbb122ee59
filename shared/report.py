"""The delivery report: per app and sender mailbox, what became of the requests, from their status records.

Pure: records in (shared/status.py), a `Report` out; no I/O, so `mailrelay report` (shared/cli/report.py) and the
local console's Status page (devstack/console.py) show the same figures from the same records, and the unit tests
make every case happen.

Which records: those changed in the window (`updatedAt` at or after `since`), the selection `mailrelay status
--since` lists and the stores query server-side. A request still in flight counts where it stands now. Records
expire after STATUS_RETENTION_DAYS, so a window longer than that sees only what is left.

The figures of a group of records:
- requests: the records;
- sent, dead-lettered (by the code the record keeps), and the others by their current state (`states`);
- retried: more than one sendMail call, or waiting to retry now (state `retrying`);
- paced: the pacing put it back `queued` at least once (`paced`), or it waits so now (a record written before the
  counter was kept says so only while it waits: its hint's code `Paced`);
- unknown: in state `unknown` now, or resolved from it (`resolution`: found in Sent Items, sent again, dead-lettered);
- enqueue-to-sent p50/p95: from when the app enqueued the request (`enqueuedAt`, the queue's insertion time) to the
  202; a record written before `enqueuedAt` was kept starts at `createdAt` (when the relay first saw it), and the
  report counts those (`fromCreatedAt`). A scheduled request's time includes its wait for `sendAt`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from shared.status import DEAD_LETTERED, QUEUED, RETRYING, SCHEDULED, SENT, STATES, UNKNOWN, StatusRecord

PACED_CODE: Final = "Paced"  # the code shared/delivery.py writes while the pacing holds a request
NO_CODE: Final = "(none)"  # a dead-lettered record without a code (none is written so today)


@dataclass(frozen=True)
class Latency:
    """Enqueue-to-sent of the sent requests of a group, in seconds."""

    count: int = 0  # sent requests timed
    from_created_at: int = 0  # of which timed from createdAt: no enqueuedAt on the record
    p50: float | None = None
    p95: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "fromCreatedAt": self.from_created_at,
            "p50Seconds": self.p50,
            "p95Seconds": self.p95,
        }


@dataclass(frozen=True)
class Figures:
    """One row of the report: an app's requests from one sender mailbox, or (app and sender None) all of them."""

    app: str | None
    sender: str | None
    requests: int = 0
    sent: int = 0
    dead_lettered: Mapping[str, int] = field(default_factory=dict)  # by code
    retried: int = 0
    paced: int = 0
    unknown: int = 0
    states: Mapping[str, int] = field(default_factory=dict)  # every state, 0 included
    latency: Latency = Latency()

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.app is None else {"app": self.app, "sender": self.sender}
        out.update(
            requests=self.requests,
            sent=self.sent,
            deadLettered=self.dead_lettered_total,
            deadLetteredByCode=dict(self.dead_lettered),
            retried=self.retried,
            paced=self.paced,
            unknown=self.unknown,
            states=dict(self.states),
            enqueueToSent=self.latency.to_json(),
        )
        return out


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    app: str | None  # the one app reported on, or None: every app
    rows: tuple[Figures, ...]  # by app, then sender
    total: Figures

    def to_json(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "app": self.app,
            "rows": [row.to_json() for row in self.rows],
            "total": self.total.to_json(),
        }


def build(records: Iterable[StatusRecord], since: datetime, until: datetime, app: str | None = None) -> Report:
    """The report on the records changed since `since` (of `app` only, if given). `until`: when it was read."""
    chosen = [r for r in records if r.updated_at >= since and (app is None or r.key.app == app)]
    groups: dict[tuple[str, str], list[StatusRecord]] = {}
    for record in chosen:
        groups.setdefault((record.key.app, record.key.sender), []).append(record)
    rows = tuple(figures(groups[k], *k) for k in sorted(groups))
    return Report(since, until, app, rows, figures(chosen, None, None))


def figures(records: list[StatusRecord], app: str | None, sender: str | None) -> Figures:
    states = Counter(r.state for r in records)
    dead = Counter(r.last_error_code or NO_CODE for r in records if r.state == DEAD_LETTERED)
    return Figures(
        app=app,
        sender=sender,
        requests=len(records),
        sent=states[SENT],
        dead_lettered=dict(sorted(dead.items(), key=lambda item: (-item[1], item[0]))),
        retried=sum(1 for r in records if was_retried(r)),
        paced=sum(1 for r in records if was_paced(r)),
        unknown=sum(1 for r in records if was_unknown(r)),
        states={state: states[state] for state in STATES},
        latency=latency(records),
    )


def was_retried(record: StatusRecord) -> bool:
    return record.attempts > 1 or record.state == RETRYING


def was_paced(record: StatusRecord) -> bool:
    return record.paced > 0 or (record.state == QUEUED and record.last_error_code == PACED_CODE)


def was_unknown(record: StatusRecord) -> bool:
    return record.state == UNKNOWN or bool(record.resolution)


def latency(records: Iterable[StatusRecord]) -> Latency:
    seconds: list[float] = []
    from_created = 0
    for r in records:
        if r.state != SENT or r.sent_at is None:
            continue
        start = r.enqueued_at
        if start is None:
            start = r.created_at
            from_created += 1
        # The queue's insertion time is Storage's clock and sent_at the worker's: a request sent within a moment may
        # come out a little below zero, which says "at once", not "before it was enqueued".
        seconds.append(max(0.0, (r.sent_at - start).total_seconds()))
    if not seconds:
        return Latency()
    return Latency(len(seconds), from_created, percentile(seconds, 50), percentile(seconds, 95))


def percentile(values: list[float], p: int) -> float:
    """The p-th percentile, interpolated between the closest ranks (statistics.quantiles' "inclusive" method, which
    treats the values as the whole population: these are every sent request of the window, not a sample)."""
    from statistics import quantiles

    if len(values) == 1:
        return values[0]  # quantiles() wants two points before Python 3.13
    return quantiles(values, n=100, method="inclusive")[p - 1]


# --- What the console shows beside the figures -------------------------------------------------------------


def waiting_scheduled(records: Iterable[StatusRecord]) -> list[StatusRecord]:
    """The requests waiting for their `sendAt` (state scheduled), the soonest first."""
    far = datetime.max.replace(tzinfo=UTC)
    return sorted((r for r in records if r.state == SCHEDULED), key=lambda r: (r.not_before or far, r.key.value))


def timeline(record: StatusRecord) -> list[tuple[str, datetime]]:
    """The times a record keeps, in order: when the request was enqueued, first seen, tried, sent or dead-lettered,
    and the earliest next step of one still waiting (`not before`)."""
    moments = [
        ("enqueued", record.enqueued_at),
        ("created", record.created_at),
        ("first attempt", record.first_attempt_at),
        ("last attempt", record.last_attempt_at),
        ("sent", record.sent_at),
        ("not before", record.not_before if record.state not in (SENT, DEAD_LETTERED) else None),
        # The record keeps no time of its own for a dead letter: its last change is when it was dead-lettered.
        ("dead-lettered", record.updated_at if record.state == DEAD_LETTERED else None),
    ]
    return sorted(((name, when) for name, when in moments if when is not None), key=lambda m: m[1])


def duration(seconds: float | None) -> str:
    """A duration as an operator reads it: 0.4s, 12s, 3m 05s, 2h 10m; "-" for none."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
