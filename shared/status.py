"""Status records: what became of each send request, kept where apps cannot write (Table storage).

Queues deliver at least once and Graph's sendMail takes no idempotency key, so the relay keeps one record
per request and changes it only under an atomic condition: a record is created if absent (insert), and
every later change names the ETag it read, so of two workers holding the same request exactly one wins.

The key is the sending mailbox and the request's `id` (one id is sent at most once *per mailbox*: an app
cannot suppress another mailbox's mail with an id it reuses), or, for a request without an `id`, the id
of the queue message that first carried it. A record holds states, counts, codes, hints, timestamps and
Graph's request ids; never a subject, a body or a recipient's address (a count and the domains only).

States (docs/guarantees.md):
- `sending`: a worker holds the claim until `leaseUntil`; after that another may take it over (the worker
  died), and the try it made is then of unknown outcome;
- `sent`: Graph accepted it (202), or the relay found its mark in the sender's Sent Items;
- `retrying`: a try failed in a way that proves nothing was sent (429, Entra down, ...); next not before
  `notBefore`;
- `unknown`: a try may or may not have been accepted (a timeout, a 5xx, a crash during the call); it is
  resolved before any second try (shared/delivery.py);
- `dead-lettered`: in the dead-letter queue with the reason;
- `queued`: received, waiting for its turn without having been tried (pacing).

In Azure the records are the Table `mailstatus` on the host's storage account (identity-based,
`AzureWebJobsStorage__tableServiceUri`), a declared app's in a table of its own (`status_table`, AppStatusStore);
locally Azurite's. Records expire after STATUS_RETENTION_DAYS
(`delete_expired`, run by the cleanup timer): an `id` is sent at most once within that window.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.apps import DEFAULT_APP, STATUS_TABLE

if TYPE_CHECKING:
    from azure.data.tables import TableClient

TABLE_NAME: Final = STATUS_TABLE  # the default app's, with every mailbox's pace row

QUEUED: Final = "queued"
SCHEDULED: Final = "scheduled"  # held until its sendAt
SENDING: Final = "sending"
SENT: Final = "sent"
RETRYING: Final = "retrying"
UNKNOWN: Final = "unknown"
DEAD_LETTERED: Final = "dead-lettered"
STATES: Final = (SCHEDULED, QUEUED, SENDING, SENT, RETRYING, UNKNOWN, DEAD_LETTERED)

# The extended property that marks every message the relay sends: the same value for every try of one
# request, so that after an unknown outcome the relay can look for it in the sender's Sent Items. This is
# how Microsoft's Graph team answers "how do I find the message I just sent" (microsoft-graph-docs issue
# #3766): a single-value extended property, then a $filter on it. Its id is a string property named in the
# relay's own property set (a GUID of ours), the form of
# https://learn.microsoft.com/graph/api/resources/extended-properties-overview ("String {GUID} Name Name").
MARK_PROPERTY_ID: Final = "String {6c0a2d4e-93b1-4f57-a8e2-5d3f1b7c9e04} Name GraphMailRelayKey"
MAX_DOMAINS_KEPT: Final = 10  # recipient domains a record lists; the count is always exact


def partition_of(sender: str) -> str:
    """The Table partition of a sender mailbox: its status records, and its pace row (shared/pacing.py), so that
    an outcome and the slot it frees are written in one entity group transaction (one table, one partition)."""
    return hashlib.sha256(sender.lower().encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class RowWrite:
    """Another row of a record's partition, written in the same entity group transaction as the record.

    Table storage runs the operations of one transaction (one table, one partition, at most 100) all or nothing
    (docs/design.md, "Limits the relay respects"; https://learn.microsoft.com/rest/api/storageservices/performing-entity-group-transactions),
    so a record's change and this row's change land together or not at all. With `etag` the row is replaced under
    that ETag; without, `properties` are merged into it unconditionally (no read, and nothing of another writer's
    is overwritten but these properties)."""

    row_key: str
    properties: dict[str, Any]
    etag: Any = None


@dataclass(frozen=True)
class Written:
    """What `replace_with` achieved: the record (None: it changed meanwhile, nothing was written), which of the other
    row's writes was made with it and that row's new ETag (None: the row was not written, as when it is gone)."""

    record: StatusRecord | None
    row_etag: Any = None
    row_write: RowWrite | None = None
    row_error: str | None = None  # why the other row could not be written after the record (AppStatusStore)


class MemoryRows:
    """Rows besides the status records, by (partition, row), with ETags: what the unit tests' memory stores share
    as the Table shares them (shared/pacing.py's MemoryPaceStore keeps its pace rows here)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        self._version = 0

    def get(self, partition: str, row: str) -> tuple[dict[str, Any], int] | None:
        with self.lock:
            found = self.rows.get((partition, row))
            return (dict(found[0]), found[1]) if found else None

    def write(self, partition: str, row: str, write: RowWrite, *, create: bool = False) -> int | None:
        """Replace under `write.etag`, merge without one, or insert if absent with `create`: the new version,
        or None when the condition fails (changed, absent, or present for an insert)."""
        with self.lock:
            current = self.rows.get((partition, row))
            if create:
                if current is not None:
                    return None
                properties = dict(write.properties)
            elif current is None or (write.etag is not None and write.etag != current[1]):
                return None
            elif write.etag is None:
                properties = {**current[0], **write.properties}
            else:
                properties = dict(write.properties)
            self._version += 1
            self.rows[(partition, row)] = (properties, self._version)
            return self._version


@dataclass(frozen=True)
class StatusKey:
    """Which request a record is about: the app (shared/apps.py: the queue it came from), the sending mailbox and
    the request's `id`, or the first queue message's id when the request has none. Ids are per app: no app can
    squat, block or read another's."""

    sender: str  # lower-cased: Exchange addresses are case-insensitive
    kind: str  # "id" (the app's `id`) or "msg" (the first queue message's id)
    value: str
    app: str = DEFAULT_APP

    @classmethod
    def of(cls, sender: str, request_id: str | None, message_id: str | None, app: str = DEFAULT_APP) -> StatusKey:
        if request_id:
            return cls(sender.lower(), "id", request_id, app)
        if message_id:
            return cls(sender.lower(), "msg", message_id, app)
        raise ValueError("a request without an id needs the id of the queue message that carried it")

    @property
    def _scoped(self) -> str:
        # The default app's keys are what they were before apps: its records and marks stay valid.
        key = f"{self.kind}:{self.value}"
        return key if self.app == DEFAULT_APP else f"{self.app}\n{key}"

    def entity_keys(self) -> tuple[str, str]:
        """(PartitionKey, RowKey). Table keys refuse "/", "\\", "#", "?" and control characters, and an `id`
        or an address may hold any of them: hashes are always valid keys. One partition per mailbox."""
        return partition_of(self.sender), hashlib.sha256(self._scoped.encode()).hexdigest()

    @property
    def mark(self) -> str:
        """The value of the mark property: derived from the key alone, so every try of a request carries it."""
        return hashlib.sha256(f"{self.sender}\n{self._scoped}".encode()).hexdigest()


@dataclass(frozen=True)
class StatusRecord:
    key: StatusKey
    state: str
    fingerprint: str = ""  # a digest of the request's content: a redelivery is told from a reused id
    attempts: int = 0  # tries made (a sendMail call, or the token it needed first), each as the log's `attempt`
    # Of those, the throttled ones (Graph's 429, or a token request MSAL's throttle cache held back: outcomes.py): the
    # retry budget does not count them (`budget_attempts`), since throttling is the service's pace, not the request's
    # fault. Kept apart, rather than given back from `attempts`, so the record agrees with the log.
    throttled: int = 0
    # Times the pacing put it back `queued` (shared/delivery.py `_pace`): the hint says so only while it waits, and
    # a later outcome overwrites it, so the delivery report (shared/report.py) counts paced requests from this.
    paced: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    enqueued_at: datetime | None = None  # when the app enqueued it (the queue's insertion time): the report's start
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None  # when the latest sendMail call started
    lease_until: datetime | None = None  # state sending: the claim holds until then
    not_before: datetime | None = None  # retrying/unknown/queued: the earliest next step
    sent_at: datetime | None = None
    message_id: str | None = None  # the first queue message's id
    recipients: int = 0
    recipient_domains: str = ""  # comma-separated, at most MAX_DOMAINS_KEPT
    last_error_code: str | None = None
    last_error_hint: str | None = None
    graph_request_id: str | None = None
    client_request_id: str | None = None
    resolution: str | None = None  # how an unknown send was settled: found in Sent Items, resent, dead-lettered
    etag: str | None = None  # set by the store when read; a change names it

    @property
    def budget_attempts(self) -> int:
        """The attempts SEND_MAX_ATTEMPTS counts: every try but the throttled ones."""
        return max(self.attempts - self.throttled, 0)

    def to_json(self) -> dict[str, Any]:
        """The record as `mailrelay status --json` and the client show it."""
        out: dict[str, Any] = {
            "app": self.key.app,
            "sender": self.key.sender,
            "key": self.key.value,
            "keyKind": self.key.kind,
            "state": self.state,
            "attempts": self.attempts,
        }
        if self.throttled:
            out["throttled"] = self.throttled
        if self.paced:
            out["paced"] = self.paced
        for name, value in (
            ("enqueuedAt", self.enqueued_at),
            ("createdAt", self.created_at),
            ("updatedAt", self.updated_at),
            ("firstAttemptAt", self.first_attempt_at),
            ("lastAttemptAt", self.last_attempt_at),
            ("leaseUntil", self.lease_until),
            ("notBefore", self.not_before),
            ("sentAt", self.sent_at),
        ):
            if value is not None:
                out[name] = _iso(value)
        for name, text in (
            ("queueMessageId", self.message_id),
            ("lastErrorCode", self.last_error_code),
            ("lastErrorHint", self.last_error_hint),
            ("graphRequestId", self.graph_request_id),
            ("clientRequestId", self.client_request_id),
            ("resolution", self.resolution),
        ):
            if text:
                out[name] = text
        out["recipients"] = self.recipients
        if self.recipient_domains:
            out["recipientDomains"] = self.recipient_domains.split(",")
        return out


def recipient_summary(addresses: list[str]) -> tuple[int, str]:
    """How many recipients, and their domains (never an address): what a status record may hold."""
    domains = sorted({a.rsplit("@", 1)[-1].lower() for a in addresses if "@" in a})
    return len(addresses), ",".join(domains[:MAX_DOMAINS_KEPT])


class StatusStore(Protocol):
    def get(self, key: StatusKey) -> StatusRecord | None:
        """The record, with its ETag, or None."""
        ...

    def create(self, record: StatusRecord) -> StatusRecord | None:
        """Insert if absent: the record with its ETag, or None if one exists (another worker was first)."""
        ...

    def replace(self, record: StatusRecord) -> StatusRecord | None:
        """Replace if unchanged since read (`record.etag`): the new record, or None if it changed meanwhile."""
        ...

    def replace_with(self, record: StatusRecord, also: Sequence[RowWrite]) -> Written:
        """`replace`, and the first of `also` that can be written, in the same transaction; if none can (a stale
        ETag, a row gone), the record alone: the record's change is what matters, and `row_etag` says (None)."""
        ...

    def find(self, value: str, sender: str | None = None) -> list[StatusRecord]:
        """Records whose key is `value` (an id or a queue message id), of one sender or all."""
        ...

    def since(self, when: datetime, state: str | None = None) -> Iterator[StatusRecord]:
        """Records changed since `when`, optionally in one state."""
        ...

    def delete_expired(self, before: datetime) -> int:
        """Delete records last changed before `before`; how many."""
        ...

    def count_scheduled(self, app: str, senders: Iterable[str], stop_at: int) -> int:
        """How many of `app`'s requests wait for their `sendAt` (state scheduled), counted up to `stop_at`."""
        ...


class MemoryStatusStore:
    """Records in a dict with the Table's semantics (insert-if-absent, ETag conditions): unit tests only."""

    def __init__(self, rows: MemoryRows | None = None) -> None:
        self._records: dict[StatusKey, StatusRecord] = {}
        self.rows = rows or MemoryRows()  # the partition's other rows (pace rows), as the Table holds them
        self._lock = self.rows.lock  # one lock: a record and a row change together, as in one transaction
        self._version = 0
        self.writes = 0  # round trips that change something, for tests that count them

    def _stamp(self, record: StatusRecord) -> StatusRecord:
        self._version += 1
        self.writes += 1
        stored = replace(record, etag=f"W/{self._version}")
        self._records[record.key] = stored
        return stored

    def get(self, key: StatusKey) -> StatusRecord | None:
        with self._lock:
            return self._records.get(key)

    def create(self, record: StatusRecord) -> StatusRecord | None:
        with self._lock:
            if record.key in self._records:
                return None
            return self._stamp(record)

    def replace(self, record: StatusRecord) -> StatusRecord | None:
        with self._lock:
            current = self._records.get(record.key)
            if current is None or current.etag != record.etag:
                return None
            return self._stamp(record)

    def replace_with(self, record: StatusRecord, also: Sequence[RowWrite]) -> Written:
        with self._lock:
            current = self._records.get(record.key)
            if current is None or current.etag != record.etag:
                return Written(None)
            for write in also:
                row_etag = self.rows.write(record.key.entity_keys()[0], write.row_key, write)
                if row_etag is not None:
                    return Written(self._stamp(record), row_etag, write)
            return Written(self._stamp(record))

    def write_row(self, partition: str, write: RowWrite) -> Any:
        """One of `partition`'s other rows written on its own (AppStatusStore): its new version, or None."""
        return self.rows.write(partition, write.row_key, write)

    def find(self, value: str, sender: str | None = None) -> list[StatusRecord]:
        with self._lock:
            return [
                r
                for k, r in self._records.items()
                if k.value == value and (sender is None or k.sender == sender.lower())
            ]

    def since(self, when: datetime, state: str | None = None) -> Iterator[StatusRecord]:
        with self._lock:
            records = list(self._records.values())
        return iter(r for r in records if r.updated_at >= when and (state is None or r.state == state))

    def delete_expired(self, before: datetime) -> int:
        with self._lock:
            old = [k for k, r in self._records.items() if r.updated_at < before]
            for k in old:
                del self._records[k]
            return len(old)

    def count_scheduled(self, app: str, senders: Iterable[str], stop_at: int) -> int:
        mailboxes = {s.lower() for s in senders}
        with self._lock:
            found = [
                k for k, r in self._records.items() if k.app == app and k.sender in mailboxes and r.state == SCHEDULED
            ]
        return min(len(found), stop_at)

    def __len__(self) -> int:
        return len(self._records)


# --- Table storage -------------------------------------------------------------------------------------

_DATES: Final = (
    ("enqueuedAt", "enqueued_at"),
    ("createdAt", "created_at"),
    ("updatedAt", "updated_at"),
    ("firstAttemptAt", "first_attempt_at"),
    ("lastAttemptAt", "last_attempt_at"),
    ("leaseUntil", "lease_until"),
    ("notBefore", "not_before"),
    ("sentAt", "sent_at"),
)
_TEXTS: Final = (
    ("fingerprint", "fingerprint"),
    ("queueMessageId", "message_id"),
    ("recipientDomains", "recipient_domains"),
    ("lastErrorCode", "last_error_code"),
    ("lastErrorHint", "last_error_hint"),
    ("graphRequestId", "graph_request_id"),
    ("clientRequestId", "client_request_id"),
    ("resolution", "resolution"),
)
# Table storage caps a string property at 64 KiB; the relay's own texts are far shorter, but an error hint
# quoting Graph could grow, and a record that cannot be written would stop the request.
_MAX_TEXT: Final = 1000


def to_entity(record: StatusRecord) -> dict[str, Any]:
    partition, row = record.key.entity_keys()
    entity: dict[str, Any] = {
        "PartitionKey": partition,
        "RowKey": row,
        "app": record.key.app,
        "sender": record.key.sender,
        "keyKind": record.key.kind,
        "key": record.key.value,
        "state": record.state,
        "attempts": record.attempts,
        "throttled": record.throttled,
        "paced": record.paced,
        "recipients": record.recipients,
    }
    for prop, attr in _DATES:
        value = getattr(record, attr)
        if value is not None:
            entity[prop] = value
    for prop, attr in _TEXTS:
        value = getattr(record, attr)
        if value:
            entity[prop] = str(value)[:_MAX_TEXT]
    return entity


def from_entity(entity: Any) -> StatusRecord:
    def date(prop: str) -> datetime | None:
        value = entity.get(prop)
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    # Records written before apps name none: they are the default app's.
    app = str(entity.get("app") or DEFAULT_APP)
    key = StatusKey(str(entity["sender"]), str(entity["keyKind"]), str(entity["key"]), app)
    metadata = getattr(entity, "metadata", None) or {}
    texts: dict[str, Any] = {attr: entity.get(prop) or None for prop, attr in _TEXTS}
    texts["fingerprint"] = texts["fingerprint"] or ""
    texts["recipient_domains"] = texts["recipient_domains"] or ""
    dates: dict[str, Any] = {attr: date(prop) for prop, attr in _DATES}
    now = datetime.now(UTC)
    dates["created_at"] = dates["created_at"] or now
    dates["updated_at"] = dates["updated_at"] or now
    return StatusRecord(
        key=key,
        state=str(entity["state"]),
        attempts=int(entity.get("attempts") or 0),
        # Records written before it was kept gave a throttled try back from attempts instead: 0 counts them right.
        throttled=int(entity.get("throttled") or 0),
        paced=int(entity.get("paced") or 0),  # records written before it was kept: 0
        recipients=int(entity.get("recipients") or 0),
        etag=metadata.get("etag"),
        **texts,
        **dates,
    )


def _odata_string(value: str) -> str:
    """A string literal in an OData filter: single quotes doubled (the Tables filter grammar)."""
    return "'" + value.replace("'", "''") + "'"


class TableStatusStore:
    """Records in Azure Table storage (Azurite locally): one entity per request, one partition per mailbox."""

    def __init__(self, client: TableClient):
        self._client = client

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        from shared.storage import create_table

        try:
            return method(*args, **kwargs)
        except ResourceNotFoundError:
            # An insert finds no entity to miss: a 404 means no table (Azurite's answer to an insert does not
            # even carry the TableNotFound code the SDK would parse). Created on first use, not when the
            # runtime is built (no network call then); in Azure infra/ creates it and this never runs.
            create_table(self._client)
            return method(*args, **kwargs)

    def get(self, key: StatusKey) -> StatusRecord | None:
        from azure.core.exceptions import ResourceNotFoundError

        partition, row = key.entity_keys()
        try:
            entity = self._client.get_entity(partition, row)
        except ResourceNotFoundError:
            return None  # no such record, or no table yet
        return from_entity(entity)

    def create(self, record: StatusRecord) -> StatusRecord | None:
        from azure.core.exceptions import ResourceExistsError

        try:
            meta = self._call(self._client.create_entity, to_entity(record))
        except ResourceExistsError:
            return None
        return replace(record, etag=meta.get("etag"))

    def replace(self, record: StatusRecord) -> StatusRecord | None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        try:
            meta = self._client.update_entity(
                to_entity(record),
                mode=UpdateMode.REPLACE,
                etag=record.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None  # changed or deleted since it was read: another worker moved first
        return replace(record, etag=meta.get("etag"))

    def replace_with(self, record: StatusRecord, also: Sequence[RowWrite]) -> Written:
        """One entity group transaction: the record under its ETag, and the first of `also` (Azurite runs conditions
        inside a batch as Azure does, all or nothing: tests/e2e/test_status_table.py). A transaction that fails does
        not reliably name its failing operation (TableTransactionError.index defaults to 0), so the next of `also` is
        tried, then the record alone: each fallback only after a refusal, so the common path is one round trip."""
        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        partition, _ = record.key.entity_keys()
        first: Any = (
            "update",
            to_entity(record),
            {"mode": UpdateMode.REPLACE, "etag": record.etag, "match_condition": MatchConditions.IfNotModified},
        )
        for write in also:
            row = {"PartitionKey": partition, "RowKey": write.row_key, **write.properties}
            if write.etag is None:
                options: dict[str, Any] = {"mode": UpdateMode.MERGE}
            else:
                options = {
                    "mode": UpdateMode.REPLACE,
                    "etag": write.etag,
                    "match_condition": MatchConditions.IfNotModified,
                }
            try:
                results = self._client.submit_transaction([first, ("update", row, options)])
            except TableTransactionError:
                continue
            return Written(replace(record, etag=results[0].get("etag")), results[1].get("etag"), write)
        return Written(self.replace(record))

    def write_row(self, partition: str, write: RowWrite) -> Any:
        """One of `partition`'s other rows written on its own, as `replace_with` writes it beside a record (under
        its ETag, or merged without one): its new ETag, or None when the condition fails or the row is gone."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        row = {"PartitionKey": partition, "RowKey": write.row_key, **write.properties}
        conditions: dict[str, Any] = (
            {"mode": UpdateMode.MERGE}
            if write.etag is None
            else {"mode": UpdateMode.REPLACE, "etag": write.etag, "match_condition": MatchConditions.IfNotModified}
        )
        try:
            return self._client.update_entity(row, **conditions).get("etag")
        except (ResourceModifiedError, ResourceNotFoundError):
            return None

    def find(self, value: str, sender: str | None = None) -> list[StatusRecord]:
        from azure.core.exceptions import ResourceNotFoundError

        # One sender: its partition alone, where every app's records of that mailbox live (ids are per app, and a
        # point read would need the app). Else a query across the table.
        query = f"key eq {_odata_string(value)}"
        if sender is not None:
            query = f"PartitionKey eq {_odata_string(partition_of(sender))} and {query}"
        try:
            return [from_entity(e) for e in self._client.query_entities(query)]
        except ResourceNotFoundError:
            return []

    def since(self, when: datetime, state: str | None = None) -> Iterator[StatusRecord]:
        from azure.core.exceptions import ResourceNotFoundError

        query = "updatedAt ge @when" + (" and state eq @state" if state else "")
        parameters: dict[str, Any] = {"when": when}
        if state:
            parameters["state"] = state
        try:
            for entity in self._client.query_entities(query, parameters=parameters):
                yield from_entity(entity)
        except ResourceNotFoundError:
            return

    def count_scheduled(self, app: str, senders: Iterable[str], stop_at: int) -> int:
        """One query per sender mailbox, in its partition (the app's records live in its mailboxes' partitions),
        filtered server-side and cut at `stop_at`: a cost paid only when an app schedules a request."""
        from azure.core.exceptions import ResourceNotFoundError

        found = 0
        for sender in sorted({s.lower() for s in senders}):
            query = "PartitionKey eq @partition and app eq @app and state eq @state"
            parameters = {"partition": partition_of(sender), "app": app, "state": SCHEDULED}
            try:
                for _ in self._client.query_entities(
                    query, parameters=parameters, select=["RowKey"], results_per_page=min(stop_at, 1000)
                ):
                    found += 1
                    if found >= stop_at:
                        return found
            except ResourceNotFoundError:
                return found
        return found

    def delete_expired(self, before: datetime) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            old = list(
                self._client.query_entities(
                    "updatedAt lt @before", parameters={"before": before}, select=["PartitionKey", "RowKey"]
                )
            )
        except ResourceNotFoundError:
            return 0
        # Batches are per partition and hold at most 100 operations (Table storage's entity group rules).
        by_partition: dict[str, list[Any]] = {}
        for entity in old:
            by_partition.setdefault(entity["PartitionKey"], []).append(("delete", entity))
        for operations in by_partition.values():
            for start in range(0, len(operations), 100):
                self._client.submit_transaction(operations[start : start + 100])
        return len(old)


class AppStatusStore:
    """Each app's records in its own table (`status_table`), routed by the key's app.

    The default app's records stay in `mailstatus`, beside every mailbox's pace row, so its outcome and the pace slot
    it frees are one entity group transaction, as before apps. A declared app's record lives in its own table and a
    transaction holds one table only, so its outcome is written first and the slot freed after it in `mailstatus`:
    one round trip more per outcome (bench/relay.py, "apps"), the price of records an app's credentials can read
    alone. A slot not freed then (Storage failed between the two) lapses with its lease, as any slot of a worker
    that died."""

    def __init__(self, default: TableStatusStore | MemoryStatusStore, apps: Mapping[str, StatusStore]) -> None:
        self._default = default
        self._apps = dict(apps)

    def store(self, app: str) -> StatusStore:
        """`app`'s table; a name not declared is refused (the relay dead-letters its requests before any record)."""
        if app == DEFAULT_APP:
            return self._default
        try:
            return self._apps[app]
        except KeyError:
            raise ValueError(f"app {app!r} is not declared (MAILRELAY_APPS): it has no status records") from None

    @property
    def stores(self) -> list[StatusStore]:
        return [self._default, *self._apps.values()]

    def get(self, key: StatusKey) -> StatusRecord | None:
        return self.store(key.app).get(key)

    def create(self, record: StatusRecord) -> StatusRecord | None:
        return self.store(record.key.app).create(record)

    def replace(self, record: StatusRecord) -> StatusRecord | None:
        return self.store(record.key.app).replace(record)

    def replace_with(self, record: StatusRecord, also: Sequence[RowWrite]) -> Written:
        if record.key.app == DEFAULT_APP:
            return self._default.replace_with(record, also)
        written = self.store(record.key.app).replace(record)
        if written is None:
            return Written(None)
        partition, _ = record.key.entity_keys()
        try:
            for write in also:
                etag = self._default.write_row(partition, write)
                if etag is not None:
                    return Written(written, etag, write)
        except Exception as e:  # the outcome is written, which is what matters: the caller logs the slot's fate
            return Written(written, row_error=type(e).__name__)
        return Written(written)

    def find(self, value: str, sender: str | None = None) -> list[StatusRecord]:
        return [r for store in self.stores for r in store.find(value, sender)]

    def since(self, when: datetime, state: str | None = None) -> Iterator[StatusRecord]:
        for store in self.stores:
            yield from store.since(when, state)

    def delete_expired(self, before: datetime) -> int:
        return sum(store.delete_expired(before) for store in self.stores)

    def count_scheduled(self, app: str, senders: Iterable[str], stop_at: int) -> int:
        return self.store(app).count_scheduled(app, senders, stop_at)


def retention_cutoff(days: float, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - timedelta(days=days)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
