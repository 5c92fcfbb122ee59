"""Per-mailbox pacing, shared by every instance: stay inside Graph's and Exchange's limits instead of hitting them.

Graph's Outlook limits hold per app and mailbox (4 concurrent requests, 10,000 per 10 minutes), and Exchange
Online holds each mailbox to 30 messages a minute and 10,000 recipients a day; past the last one the mailbox is
blocked from sending for up to 24 hours (DESIGN.md, "Limits to respect"). So before each send the relay takes a
slot in its mailbox's pace record, a Table entity changed under ETag like the status records:

- `slots`: the sends in flight, each with a lease (a crashed worker's slot lapses with it), at most
  MAILBOX_MAX_CONCURRENT (4);
- `sends`: when the sends of the last MAILBOX_RATE_WINDOW_SECONDS (60) started, at most
  MAILBOX_MESSAGES_PER_MINUTE (30);
- `recipients`: to, cc and bcc counted per bucket over MAILBOX_RECIPIENT_WINDOW_SECONDS (a day), at most
  MAILBOX_RECIPIENTS_PER_DAY (10,000).

A request over its mailbox's pace is not sent: it goes back on the retry queue with the delay it needs, in state
`queued`, without spending its retry budget. One busy mailbox holds up only its own mail: every other mailbox has
its own record. The decision is a pure function (`decide`); the stores only keep the state.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

TABLE_NAME: Final = "mailpace"
BUCKETS_PER_WINDOW: Final = 24  # recipient counts are kept per 1/24 of the window: an hour for a day
CONTENTION_ROUNDS: Final = 6


@dataclass(frozen=True)
class Limits:
    """Microsoft's figures by default (settings MAILBOX_*)."""

    max_concurrent: int = 4
    messages_per_window: int = 30
    rate_window_seconds: float = 60.0
    recipients_per_window: int = 10_000
    recipient_window_seconds: float = 86_400.0
    slot_lease_seconds: float = 150.0  # a slot outlives any try; a dead worker's slot lapses after it


def limits_of(settings: Settings) -> Limits:
    """The limits the settings name (MAILBOX_*); a slot's lease is the claim's."""
    return Limits(
        max_concurrent=settings.mailbox_max_concurrent,
        messages_per_window=settings.mailbox_messages_per_minute,
        rate_window_seconds=settings.mailbox_rate_window_seconds,
        recipients_per_window=settings.mailbox_recipients_per_day,
        recipient_window_seconds=settings.mailbox_recipient_window_seconds,
        slot_lease_seconds=settings.claim_lease_seconds,
    )


@dataclass
class PaceState:
    """One mailbox's pace: epoch seconds throughout, so the state is plain JSON."""

    slots: dict[str, float] = field(default_factory=dict)  # slot id -> lease expiry
    # [time, slot id] of the sends within the rate window. The time is the slot's until the send is answered,
    # then the answer's: Exchange counts a message when it accepts it, which is after the slot was taken and
    # before Graph answers, so counting from the answer keeps the relay's minute at least as full as Exchange's.
    sends: list[list[Any]] = field(default_factory=list)
    recipients: list[list[float]] = field(default_factory=list)  # [bucket start, count]

    def to_json(self) -> str:
        return json.dumps({"slots": self.slots, "sends": self.sends, "recipients": self.recipients})

    @classmethod
    def from_json(cls, text: str | None) -> PaceState:
        if not text:
            return cls()
        data = json.loads(text)
        buckets = [list(b) for b in data.get("recipients", [])]
        sends = [s if isinstance(s, list) else [s, ""] for s in data.get("sends", [])]
        return cls(dict(data.get("slots", {})), sends, buckets)


@dataclass(frozen=True)
class Granted:
    slot: str
    # What the grant wrote, and its version: the release tries that first, with no read, and reads only if
    # another worker changed the record in between (one round trip instead of two on a quiet mailbox).
    state: PaceState | None = None
    version: Any = None


@dataclass(frozen=True)
class Over:
    """Over the pace: try again in `seconds`; `limit` names which one, for the log and the status record."""

    seconds: float
    limit: str


def decide(state: PaceState, recipients: int, now: float, limits: Limits) -> tuple[PaceState, Granted] | Over:
    """Take a slot for a send to `recipients` recipients at `now`, or say how long to wait. Pure."""
    slots = {k: v for k, v in state.slots.items() if v > now}
    window = limits.rate_window_seconds
    sends = [s for s in state.sends if float(s[0]) > now - window]
    buckets = [b for b in state.recipients if b[0] > now - limits.recipient_window_seconds]
    used = sum(int(b[1]) for b in buckets)
    if used + recipients > limits.recipients_per_window and used > 0:
        # Wait until enough of the oldest buckets have left the window: never let the mailbox be blocked.
        freed, wait_until = 0, now
        for start, count in sorted(buckets):
            freed += int(count)
            wait_until = start + limits.recipient_window_seconds
            if used - freed + recipients <= limits.recipients_per_window:
                break
        return Over(max(wait_until - now, 1.0), "recipients per day")
    if len(sends) >= limits.messages_per_window:
        return Over(max(min(float(s[0]) for s in sends) + window - now, 0.5), "messages per minute")
    if len(slots) >= limits.max_concurrent:
        # Slots free within a Graph call or two: look again soon, not when the lease would lapse.
        return Over(1.0, "concurrent sends")
    slot = uuid.uuid4().hex
    slots[slot] = now + limits.slot_lease_seconds
    sends.append([now, slot])
    bucket_width = limits.recipient_window_seconds / BUCKETS_PER_WINDOW
    start = now - now % bucket_width
    if buckets and buckets[-1][0] == start:
        buckets[-1] = [start, buckets[-1][1] + recipients]
    else:
        buckets.append([start, float(recipients)])
    return PaceState(slots, sends, buckets), Granted(slot)


class PaceStore(Protocol):
    def read(self, sender: str) -> tuple[PaceState, Any]:
        """The mailbox's state and a version to write it back under (None: no record yet)."""
        ...

    def write(self, sender: str, state: PaceState, version: Any) -> Any:
        """Write if unchanged since `version` was read: the new version, or None if another worker changed it."""
        ...


class Pacer:
    """Slots per mailbox over a PaceStore, with optimistic concurrency (read, decide, write under ETag)."""

    def __init__(self, store: PaceStore, limits: Limits, clock: Any = None) -> None:
        self._store = store
        self.limits = limits
        self._clock = clock or (lambda: datetime.now(UTC))

    def acquire(self, sender: str, recipients: int) -> Granted | Over:
        for _ in range(CONTENTION_ROUNDS):
            state, version = self._store.read(sender)
            decided = decide(state, recipients, self._clock().timestamp(), self.limits)
            if isinstance(decided, Over):
                return decided
            new_state, granted = decided
            written = self._store.write(sender, new_state, version)
            if written is not None:
                return Granted(granted.slot, new_state, written)
        return Over(1.0, "contention on the mailbox's pace record")

    def release(self, sender: str, granted: Granted) -> None:
        """Free the slot after the send; best effort: a slot not freed lapses with its lease."""
        now = self._clock().timestamp()
        if granted.state is not None:
            state = _released(granted.state, granted.slot, now)
            if self._store.write(sender, state, granted.version) is not None:
                return  # nobody changed the record since the grant: one round trip
        for _ in range(CONTENTION_ROUNDS):
            state, version = self._store.read(sender)
            if granted.slot not in state.slots:
                return
            if self._store.write(sender, _released(state, granted.slot, now), version) is not None:
                return


def _released(state: PaceState, slot: str, now: float) -> PaceState:
    """The state with `slot` freed, and its send counted from `now`, when Graph answered (see PaceState.sends)."""
    slots = {k: v for k, v in state.slots.items() if k != slot}
    sends = [[now, s[1]] if len(s) > 1 and s[1] == slot else list(s) for s in state.sends]
    return PaceState(slots, sends, [list(b) for b in state.recipients])


class MemoryPaceStore:
    """The pace records in a dict, with the Table's ETag semantics: unit tests only."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self.writes = 0

    def read(self, sender: str) -> tuple[PaceState, Any]:
        with self._lock:
            text, version = self._records.get(sender.lower(), ("", 0))
        return PaceState.from_json(text), version

    def write(self, sender: str, state: PaceState, version: Any) -> Any:
        with self._lock:
            current = self._records.get(sender.lower(), ("", 0))[1]
            if current != version:
                return None
            self._records[sender.lower()] = (state.to_json(), current + 1)
            self.writes += 1
            return current + 1


class TablePaceStore:
    """One entity per mailbox in Table `mailpace`; writes name the ETag read (insert-if-absent at first)."""

    def __init__(self, client: TableClient) -> None:
        self._client = client

    @staticmethod
    def _keys(sender: str) -> tuple[str, str]:
        return hashlib.sha256(sender.lower().encode("utf-8")).hexdigest()[:32], "pace"

    def read(self, sender: str) -> tuple[PaceState, Any]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._client.get_entity(*self._keys(sender))
        except ResourceNotFoundError:
            return PaceState(), None
        return PaceState.from_json(entity.get("state")), entity.metadata.get("etag")

    def write(self, sender: str, state: PaceState, version: Any) -> Any:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        from shared.storage import create_table

        partition, row = self._keys(sender)
        entity = {"PartitionKey": partition, "RowKey": row, "state": state.to_json()}
        if version is None:
            try:
                meta = self._client.create_entity(entity)
            except ResourceExistsError:
                return None
            except ResourceNotFoundError:  # no table yet (an insert has no entity to miss)
                create_table(self._client)
                return None  # read again: the record may have been created meanwhile
            return meta.get("etag")
        try:
            meta = self._client.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=version, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return meta.get("etag")
