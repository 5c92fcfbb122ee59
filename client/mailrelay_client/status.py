"""What became of a request: the relay's status record, read from its Table `mailstatus` (a declared app's own
table, `mailstatus<app without hyphens>`: `status_table`).

The relay writes one record per request (never its subject, body or a recipient's address): the state
(queued, sending, sent, retrying, unknown, dead-lettered), the attempts, the last error's code and hint,
timestamps and Graph's request ids. An app reads it with Storage Table Data Reader on that table
(infra/: an app's principals on its own table; `statusReaderPrincipalIds` on `mailstatus`). Needs the `status`
extra (azure-data-tables).

The record's address in the table is derived from the sender mailbox and the key, exactly as the relay
derives it (shared/status.py, StatusKey.entity_keys; a test holds the two to the same answer).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Final

TABLE_NAME: Final = "mailstatus"
_INTERNAL: Final = frozenset({"PartitionKey", "RowKey", "fingerprint", "Timestamp", "etag"})


class AmbiguousKey(LookupError):
    """Several sender mailboxes used this key: name the sender."""


DEFAULT_APP: Final = "default"


def status_table(app: str) -> str:
    """The table of `app`'s records, as the relay names it (shared/apps.py status_table; a test holds the two to
    the same answers): the outbox's `mailstatus`, or an app's own, where only its credentials may read."""
    return TABLE_NAME if app == DEFAULT_APP else TABLE_NAME + app.replace("-", "")


def entity_keys(sender: str, kind: str, key: str, app: str = DEFAULT_APP) -> tuple[str, str]:
    """(PartitionKey, RowKey) of the record for `key` ("id" kind: the request's id; "msg": the queue
    message id of a request without one) sent from `sender` by `app` (ids are per app: a declared app's key
    is prefixed with its name; the default app's is as it was before apps)."""
    partition = hashlib.sha256(sender.lower().encode("utf-8")).hexdigest()[:32]
    scoped = f"{kind}:{key}" if app == DEFAULT_APP else f"{app}\n{kind}:{key}"
    row = hashlib.sha256(scoped.encode()).hexdigest()
    return partition, row


def public(entity: Any) -> dict[str, Any]:
    """A record as the app sees it: its own fields, times as ISO 8601 text."""
    out: dict[str, Any] = {}
    for name, value in dict(entity).items():
        if name in _INTERNAL:
            continue
        out[name] = value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value
    return out


def read_status(
    table: Any, key: str, sender: str | None = None, app: str = DEFAULT_APP
) -> dict[str, Any] | None:
    """The record of `app` for `key` (a request's id, or the queue message id `send` returned for a request
    without one), or None if the relay has none (not received yet, refused before sending, or past its retention).

    With `sender`, one point read per key kind; without, a query on the key across the table (slower on a
    large table) that raises AmbiguousKey if several mailboxes used it. Another app's record of the same key is
    never returned (its `app` differs; a record without one, written before apps, is the default app's).
    """
    from azure.core.exceptions import ResourceNotFoundError

    if sender:
        for kind in ("id", "msg"):
            try:
                return public(table.get_entity(*entity_keys(sender, kind, key, app)))
            except ResourceNotFoundError:
                continue
        return None
    try:
        found = [public(e) for e in table.query_entities("key eq @key", parameters={"key": key})]
    except ResourceNotFoundError:
        return None  # no table yet: the relay has recorded nothing
    found = [r for r in found if (r.get("app") or DEFAULT_APP) == app]
    if len({r.get("sender") for r in found}) > 1:
        senders = ", ".join(sorted(str(r.get("sender")) for r in found))
        raise AmbiguousKey(f"the key {key!r} was used from several mailboxes ({senders}): pass sender=")
    return found[0] if found else None
