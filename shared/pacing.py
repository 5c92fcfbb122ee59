"""Per-mailbox pacing, shared by every instance: stay inside Graph's and Exchange's limits instead of hitting them.

Graph's Outlook limits hold per app and mailbox (4 concurrent requests, 10,000 per 10 minutes, 150 MB of uploads
per 5 minutes), and Exchange Online holds each mailbox to 30 messages a minute and 10,000 recipients a day; past the
last one the mailbox is blocked from sending for up to 24 hours (docs/design.md, "Limits the relay respects"). So
before each send the relay takes a slot in its mailbox's pace row, a Table entity changed under ETag like the status
records:

- `slots`: the sends in flight, each with a lease (a crashed worker's slot lapses with it), at most
  MAILBOX_MAX_CONCURRENT (4);
- `sends`: when the sends of the last MAILBOX_RATE_WINDOW_SECONDS (60) started, at most
  MAILBOX_MESSAGES_PER_MINUTE (30);
- `recipients`: to, cc and bcc counted per bucket over MAILBOX_RECIPIENT_WINDOW_SECONDS (a day), at most
  MAILBOX_RECIPIENTS_PER_DAY (10,000);
- `uploads`: the bytes each send uploads (its message, encoded), at most 150 MB per five rate windows (Graph's
  "150 megabytes (MB) upload (PATCH, POST, PUT) in a 5 minute period" per app and mailbox, throttling-limits
  "Outlook service limits"; five windows, so that time-scaled tests scale it with the minute).

Within these, each app's share (issue 20, item 5; MAILRELAY_APPS' messagesPerMinute and recipientsPerDay): an app
with a declared share never uses more than it of a mailbox's minute or day; the apps without one (the default
outbox among them) share, together, what the declared shares of the apps that may send as that mailbox leave of its
limit. Settings refuse shares that do not fit the limit (shared/settings.py, _shares_fit), so the mailbox's sends
are at most the sum of what each app and the pool may use, which is the limit: an app within its share always finds
room in the mailbox's minute and day, whatever the other apps do. Its wait is its own share's (Over.app names it).
Concurrency and uploads stay the mailbox's, for all apps together, as Microsoft counts them. One exception to the
proof, as for the mailbox's own limit: a request with more recipients than its whole share (a share under 500,
Exchange's most per message) goes alone once the share's day is empty, or it could never go; it then takes its
excess from what the others may use. Shares that leave the apps without one nothing hold their mail, named.

The counts are the row's own entries, tagged with the app that took them: `slots` {slot: [lease, recipients,
bucket, app]}, `sends` [[time, slot, app]], `recipients` [[bucket start, count, {app: its part}]] (a row written
before apps reads as the default app's). A share so costs no extra round trip: taking a slot stays one conditional
write, and the row grows by an app's name per send and per bucket.

A request over its mailbox's pace is not sent: it goes back on the retry queue with the delay it needs, in state
`queued`, without spending its retry budget. One busy mailbox holds up only its own mail: every other mailbox has
its own row. The decision is a pure function (`decide`); the stores only keep the state.

What a send costs in Storage (issue 18, item 8): the pace row is the sender's partition's row "pace" in the status
table, beside its status records, so freeing a slot joins the outcome's write in one entity group transaction
(`release_writes`, shared/status.py's `replace_with`). Taking a slot is one conditional write under the ETag this
process remembers from its own last write of that row; it reads the row only when that write is refused (another
worker wrote since) or nothing is remembered. A try Graph did not accept (a 429, a refusal, a failure before the
call) gives back its recipients and its place in the minute: only what may have been sent is counted.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.apps import DEFAULT_APP
from shared.status import MemoryRows, RowWrite, partition_of

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

PACE_ROW: Final = "pace"  # the pace row's RowKey in its sender's partition of the status table
RELEASE_PREFIX: Final = "r_"  # a release merged into the row without a read: r_<slot> = [answered at, given back]
BUCKETS_PER_WINDOW: Final = 24  # recipient counts are kept per 1/24 of the window: an hour for a day
CONTENTION_ROUNDS: Final = 6
UPLOAD_WINDOWS: Final = 5  # Graph's upload window is 5 minutes: five rate windows
UPLOAD_BYTES_PER_WINDOW: Final = 150_000_000  # "150 MB", read as decimal megabytes: the lower reading


@dataclass(frozen=True)
class AppShare:
    """An app's declared share of each of its sender mailboxes' minute and day (None: none of its own)."""

    app: str
    senders: frozenset[str]  # lower-cased
    messages_per_window: int | None = None
    recipients_per_window: int | None = None


@dataclass(frozen=True)
class Share:
    """What one app may use of one mailbox's budget (messages or recipients): its own declared share (`app` set),
    or, for an app without one, the pool the apps without a share use together (`app` None): the limit less the
    `declared` apps' shares."""

    cap: int
    app: str | None
    declared: frozenset[str]  # the apps with a share of their own of this budget on this mailbox

    def counts(self, app: str) -> bool:
        """Whether an entry taken by `app` counts against this share."""
        return app == self.app if self.app is not None else app not in self.declared


@dataclass(frozen=True)
class Limits:
    """Microsoft's figures by default (settings MAILBOX_*), and the apps' declared shares (MAILRELAY_APPS)."""

    max_concurrent: int = 4
    messages_per_window: int = 30
    rate_window_seconds: float = 60.0
    recipients_per_window: int = 10_000
    recipient_window_seconds: float = 86_400.0
    slot_lease_seconds: float = 150.0  # a slot outlives any try; a dead worker's slot lapses after it
    upload_bytes_per_window: int = UPLOAD_BYTES_PER_WINDOW
    shares: tuple[AppShare, ...] = ()

    @property
    def upload_window_seconds(self) -> float:
        return self.rate_window_seconds * UPLOAD_WINDOWS

    def share(self, mailbox: str, app: str, budget: str) -> Share | None:
        """`app`'s share of `mailbox`'s `budget` ("messages" or "recipients"); None when no app that may send as
        the mailbox declares one (the mailbox's own limit is then the only one)."""
        mailbox = mailbox.lower()
        declared = {
            s.app: amount
            for s in self.shares
            if mailbox in s.senders and (amount := getattr(s, f"{budget}_per_window")) is not None
        }
        if not declared:
            return None
        names = frozenset(declared)
        if app in declared:
            return Share(declared[app], app, names)
        return Share(getattr(self, f"{budget}_per_window") - sum(declared.values()), None, names)


def limits_of(settings: Settings) -> Limits:
    """The limits the settings name (MAILBOX_*); a slot's lease is the claim's."""
    return Limits(
        max_concurrent=settings.mailbox_max_concurrent,
        messages_per_window=settings.mailbox_messages_per_minute,
        rate_window_seconds=settings.mailbox_rate_window_seconds,
        recipients_per_window=settings.mailbox_recipients_per_day,
        recipient_window_seconds=settings.mailbox_recipient_window_seconds,
        slot_lease_seconds=settings.claim_lease_seconds,
        shares=tuple(
            AppShare(a.name, frozenset(a.senders), a.messages_per_minute, a.recipients_per_day)
            for a in settings.apps
            if a.messages_per_minute is not None or a.recipients_per_day is not None
        ),
    )


@dataclass
class PaceState:
    """One mailbox's pace: epoch seconds throughout, so the state is plain JSON."""

    # slot id -> [lease expiry, recipients, the recipient bucket they were counted in, app]: enough to give them back
    slots: dict[str, list[Any]] = field(default_factory=dict)
    # [time, slot id, app] of the sends within the rate window. The time is the slot's until the send is answered,
    # then the answer's: Exchange counts a message when it accepts it, which is after the slot was taken and
    # before Graph answers, so counting from the answer keeps the relay's minute at least as full as Exchange's.
    sends: list[list[Any]] = field(default_factory=list)
    # [bucket start, count, {app: its part of count}]: the mailbox's count and each app's
    recipients: list[list[Any]] = field(default_factory=list)
    uploads: list[list[Any]] = field(default_factory=list)  # [time, bytes, slot id] within the upload window

    def to_json(self) -> str:
        return json.dumps(
            {"slots": self.slots, "sends": self.sends, "recipients": self.recipients, "uploads": self.uploads}
        )

    @classmethod
    def from_json(cls, text: str | None) -> PaceState:
        if not text:
            return cls()
        data = json.loads(text)
        # A row written before apps (or before slots held their recipients) was the default app's alone.
        slots = {
            k: (
                list(v) + [0.0, 0.0, DEFAULT_APP][len(v) - 1 :]
                if isinstance(v, list)
                else [float(v), 0.0, 0.0, DEFAULT_APP]
            )
            for k, v in data.get("slots", {}).items()
        }
        sends = [
            list(s) + ["", DEFAULT_APP][len(s) - 1 :] if isinstance(s, list) else [s, "", DEFAULT_APP]
            for s in data.get("sends", [])
        ]
        buckets = [list(b) if len(b) > 2 else [b[0], b[1], {DEFAULT_APP: b[1]}] for b in data.get("recipients", [])]
        return cls(slots, sends, buckets, [list(u) for u in data.get("uploads", [])])

    @classmethod
    def from_row(cls, properties: Mapping[str, Any]) -> PaceState:
        """The row as stored: its state, with every release merged into it since it was last written folded in."""
        state = cls.from_json(properties.get("state"))
        for name, value in properties.items():
            if name.startswith(RELEASE_PREFIX):
                answered, given_back = json.loads(value)
                state = released(state, name[len(RELEASE_PREFIX) :], float(answered), given_back=bool(given_back))
        return state


@dataclass(frozen=True)
class Granted:
    slot: str
    recipients: int = 0


@dataclass(frozen=True)
class Over:
    """Over the pace: try again in `seconds`; `limit` names which one, for the log and the status record. `app`:
    the app whose own share is spent (the wait is its own, whatever other apps do); `pooled`: the share the apps
    without one use together is spent; neither: the mailbox's limit, for all apps together."""

    seconds: float
    limit: str
    app: str | None = None
    pooled: bool = False

    @property
    def reason(self) -> str:
        """What is spent, for a log line and a status record's hint: "your share" told from "the mailbox"."""
        if self.app is not None:
            return f"app {self.app}'s share of the mailbox's {self.limit}"
        if self.pooled:
            return f"the share of the mailbox's {self.limit} left to the apps without one"
        return f"the mailbox's {self.limit} limit"


def decide(
    state: PaceState,
    recipients: int,
    now: float,
    limits: Limits,
    upload_bytes: int = 0,
    *,
    app: str = DEFAULT_APP,
    mailbox: str = "",
) -> tuple[PaceState, Granted] | Over:
    """Take a slot for `app`'s send as `mailbox` to `recipients` recipients uploading `upload_bytes` at `now`, or
    say how long to wait. Pure."""
    slots = {k: list(v) for k, v in state.slots.items() if v[0] > now}
    window = limits.rate_window_seconds
    sends = [list(s) for s in state.sends if float(s[0]) > now - window]
    buckets = [list(b) for b in state.recipients if b[0] > now - limits.recipient_window_seconds]
    uploads = [list(u) for u in state.uploads if u[0] > now - limits.upload_window_seconds]
    # The app's share first: over it, the wait is the app's own and says so. Within it, the mailbox's minute and
    # day below have room (the module's docstring), so only another app's concurrency or uploads can hold it.
    share = limits.share(mailbox, app, "recipients")
    if share is not None:
        mine = [[b[0], b[2].get(a, 0)] for b in buckets for a in b[2] if share.counts(a)]
        wait = _until_room(mine, recipients, share.cap, limits.recipient_window_seconds, now)
        if wait is not None or share.cap <= 0:
            return Over(wait or limits.recipient_window_seconds, "recipients per day", share.app, share.app is None)
    share = limits.share(mailbox, app, "messages")
    if share is not None:
        mine = [s for s in sends if share.counts(s[2])]
        if len(mine) >= share.cap:
            seconds = max(min(float(s[0]) for s in mine) + window - now, 0.5) if mine else window
            return Over(seconds, "messages per minute", share.app, share.app is None)
    # Wait until enough of the oldest entries have left their window: never let the mailbox be blocked.
    wait = _until_room(buckets, recipients, limits.recipients_per_window, limits.recipient_window_seconds, now)
    if wait is not None:
        return Over(wait, "recipients per day")
    wait = _until_room(uploads, upload_bytes, limits.upload_bytes_per_window, limits.upload_window_seconds, now)
    if wait is not None:
        return Over(wait, "uploads per 5 minutes")
    if len(sends) >= limits.messages_per_window:
        return Over(max(min(float(s[0]) for s in sends) + window - now, 0.5), "messages per minute")
    if len(slots) >= limits.max_concurrent:
        # Slots free within a Graph call or two: look again soon, not when the lease would lapse.
        return Over(1.0, "concurrent sends")
    slot = uuid.uuid4().hex
    bucket_width = limits.recipient_window_seconds / BUCKETS_PER_WINDOW
    start = now - now % bucket_width
    slots[slot] = [now + limits.slot_lease_seconds, float(recipients), start, app]
    sends.append([now, slot, app])
    if not (buckets and buckets[-1][0] == start):
        buckets.append([start, 0.0, {}])
    per_app = dict(buckets[-1][2])
    per_app[app] = per_app.get(app, 0) + recipients
    buckets[-1] = [start, buckets[-1][1] + recipients, per_app]
    if upload_bytes:
        uploads.append([now, float(upload_bytes), slot])
    return PaceState(slots, sends, buckets, uploads), Granted(slot, recipients)


def _until_room(entries: list[list[Any]], amount: float, limit: float, window: float, now: float) -> float | None:
    """Seconds until `amount` more fits under `limit` in a window of [start, amount] entries, at least 1; None when
    it fits now. One request larger than the whole limit goes alone: it fits once the window is empty."""
    used = sum(int(e[1]) for e in entries)
    if used + amount <= limit or used == 0:
        return None
    freed, wait_until = 0, now
    for entry in sorted(entries, key=lambda e: float(e[0])):
        start, count = float(entry[0]), entry[1]
        freed += int(count)
        wait_until = start + window
        if used - freed + amount <= limit:
            break
    return max(wait_until - now, 1.0)


def released(state: PaceState, slot: str, now: float, *, given_back: bool = False) -> PaceState:
    """The state with `slot` freed. Its send counts from `now`, when Graph answered (see PaceState.sends); or, when
    `given_back` (Graph did not accept the message), its send, recipients and uploads do not count at all. Uploads
    are given back too, although a large message refused at its last step did upload: a request refused before any
    Graph call (over MAX_MESSAGE_SIZE_MB, a claim check that does not hold) uploaded nothing, and an app must not
    spend a shared mailbox's upload budget, and with it every other app's sends, with sizes it only declares; an
    upload counted short costs at most a 429, which is retried. A slot already gone (lapsed, or freed before) frees
    nothing more; its recipients are given back only while the slot still says where they were counted."""
    slots = {k: list(v) for k, v in state.slots.items() if k != slot}
    held = state.slots.get(slot)
    if given_back:
        sends = [list(s) for s in state.sends if not (len(s) > 1 and s[1] == slot)]
    else:
        sends = [[now, *s[1:]] if len(s) > 1 and s[1] == slot else list(s) for s in state.sends]
    buckets = [[b[0], b[1], dict(b[2])] for b in state.recipients]
    if given_back and held is not None:
        for b in buckets:
            if b[0] == held[2]:
                b[1] = max(b[1] - held[1], 0.0)
                b[2][held[3]] = max(b[2].get(held[3], 0) - held[1], 0)
                break
    uploads = [list(u) for u in state.uploads if not (given_back and len(u) > 2 and u[2] == slot)]
    return PaceState(slots, sends, buckets, uploads)


class PaceStore(Protocol):
    def read(self, sender: str) -> tuple[PaceState, Any]:
        """The mailbox's state and a version to write it back under (None: no row yet)."""
        ...

    def write(self, sender: str, state: PaceState, version: Any) -> Any:
        """Write if unchanged since `version` was read (insert if absent for None): the new version, or None if
        another worker changed it."""
        ...

    def merge(self, sender: str, properties: dict[str, Any]) -> Any:
        """Merge `properties` into the row, unconditionally: the new version, or None without a row."""
        ...


def row_properties(state: PaceState) -> dict[str, Any]:
    """The row's properties for `state`: written whole, so the releases merged since the last write are dropped
    (they are folded into it)."""
    return {"state": state.to_json()}


class Pacer:
    """Slots per mailbox over a PaceStore, with optimistic concurrency (decide, write under ETag).

    The pace row and its ETag as this process last wrote them are remembered per mailbox: on a mailbox this process
    alone sends from, taking a slot is one write and no read. Remembered is only what is certain: the row as
    written, at the version the write returned; a refused write forgets it."""

    def __init__(self, store: PaceStore, limits: Limits, clock: Any = None) -> None:
        self._store = store
        self.limits = limits
        self._clock = clock or (lambda: datetime.now(UTC))
        self._known: dict[str, tuple[PaceState, Any]] = {}
        self._lock = threading.Lock()

    def _remember(self, sender: str, state: PaceState | None, version: Any) -> None:
        with self._lock:
            if state is None or version is None:
                self._known.pop(sender.lower(), None)
            else:
                self._known[sender.lower()] = (state, version)

    def acquire(self, sender: str, recipients: int, upload_bytes: int = 0, app: str = DEFAULT_APP) -> Granted | Over:
        """A slot for `app`'s send as `sender`, within `app`'s share of the mailbox (Limits.shares), or how long
        to wait (Over)."""
        with self._lock:
            known = self._known.get(sender.lower())
        for _ in range(CONTENTION_ROUNDS):
            fresh = known is None
            state, version = self._store.read(sender) if known is None else known
            now = self._clock().timestamp()
            decided = decide(state, recipients, now, self.limits, upload_bytes, app=app, mailbox=sender)
            if isinstance(decided, Over):
                if not fresh:
                    known = None  # what this process remembers may be stale: only the row itself may say wait
                    continue
                self._remember(sender, state, version)
                return decided
            new_state, granted = decided
            written = self._store.write(sender, new_state, version)
            self._remember(sender, new_state if written is not None else None, written)
            if written is not None:
                self._report_day(sender, new_state)
                return granted
            known = None  # another worker wrote since: read the row
        return Over(1.0, "contention on the mailbox's pace row")

    def _report_day(self, sender: str, state: PaceState) -> None:
        """The share of the mailbox's daily recipients its window holds now, as the gauge the alert "a mailbox near
        its daily recipient budget" reads (shared/telemetry.py): no Storage call, the row is in hand."""
        from shared.telemetry import record

        used = sum(float(b[1]) for b in state.recipients)
        record("mailrelay.mailbox_recipients_used", used / max(self.limits.recipients_per_window, 1), sender=sender)

    def release_writes(self, sender: str, granted: Granted, *, given_back: bool = False) -> list[RowWrite]:
        """How to free `granted` in the outcome's transaction (StatusStore.replace_with), best first: the row as
        remembered, freed, under its ETag; else the release merged in without a condition (folded in by the next
        write). Call `released_in` with the write that was made (Written.row_write)."""
        now = self._clock().timestamp()
        merge = RowWrite(PACE_ROW, {RELEASE_PREFIX + granted.slot: json.dumps([now, int(given_back)])})
        with self._lock:
            known = self._known.get(sender.lower())
        if known is None or granted.slot not in known[0].slots:
            return [merge]
        state = released(known[0], granted.slot, now, given_back=given_back)
        return [RowWrite(PACE_ROW, row_properties(state), known[1]), merge]

    def released_in(self, sender: str, written: RowWrite | None, version: Any) -> None:
        """Remember what the outcome's transaction wrote of the row (`written`, at `version`): the whole row, when it
        replaced it under the ETag remembered; after a merge (the row had changed) or nothing, nothing is certain."""
        if written is None or version is None or written.etag is None:
            self._remember(sender, None, None)
        else:
            self._remember(sender, PaceState.from_row(written.properties), version)

    def release(self, sender: str, granted: Granted, *, given_back: bool = False) -> None:
        """Free the slot on its own, one merge and no read, when no outcome is written with it. Best effort: a slot
        not freed lapses with its lease."""
        now = self._clock().timestamp()
        self._store.merge(sender, {RELEASE_PREFIX + granted.slot: json.dumps([now, int(given_back)])})
        self._remember(sender, None, None)


class MemoryPaceStore:
    """The pace rows in memory with the Table's semantics (ETag conditions, merges): unit tests only. Give it the
    MemoryStatusStore's `rows` to have outcomes free slots in one transaction, as the Table does."""

    def __init__(self, rows: MemoryRows | None = None) -> None:
        self.rows = rows or MemoryRows()
        self.writes = 0

    def read(self, sender: str) -> tuple[PaceState, Any]:
        found = self.rows.get(partition_of(sender), PACE_ROW)
        return (PaceState(), None) if found is None else (PaceState.from_row(found[0]), found[1])

    def write(self, sender: str, state: PaceState, version: Any) -> Any:
        write = RowWrite(PACE_ROW, row_properties(state), version)
        written = self.rows.write(partition_of(sender), PACE_ROW, write, create=version is None)
        self.writes += written is not None
        return written

    def merge(self, sender: str, properties: dict[str, Any]) -> Any:
        written = self.rows.write(partition_of(sender), PACE_ROW, RowWrite(PACE_ROW, properties))
        self.writes += written is not None
        return written


class TablePaceStore:
    """One row per mailbox, RowKey "pace", in its partition of the status table; writes name the ETag read
    (insert-if-absent at first)."""

    def __init__(self, client: TableClient) -> None:
        self._client = client

    def read(self, sender: str) -> tuple[PaceState, Any]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._client.get_entity(partition_of(sender), PACE_ROW)
        except ResourceNotFoundError:
            return PaceState(), None
        return PaceState.from_row(entity), entity.metadata.get("etag")

    def write(self, sender: str, state: PaceState, version: Any) -> Any:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        from shared.storage import create_table

        entity = {"PartitionKey": partition_of(sender), "RowKey": PACE_ROW, **row_properties(state)}
        if version is None:
            try:
                meta = self._client.create_entity(entity)
            except ResourceExistsError:
                return None
            except ResourceNotFoundError:  # no table yet (an insert has no entity to miss)
                create_table(self._client)
                return None  # read again: the row may have been created meanwhile
            return meta.get("etag")
        try:
            meta = self._client.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=version, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return meta.get("etag")

    def merge(self, sender: str, properties: dict[str, Any]) -> Any:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": partition_of(sender), "RowKey": PACE_ROW, **properties}
        try:
            meta = self._client.update_entity(entity, mode=UpdateMode.MERGE)
        except ResourceNotFoundError:
            return None  # no row: no slot to free
        return meta.get("etag")
