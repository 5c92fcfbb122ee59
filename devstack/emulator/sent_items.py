"""Sent Items per mailbox, and the one look-up the relay makes there: a message by its extended property.

Exchange moves a message sent with `saveToSentItems` (the default) from Drafts to the sender's Sent Items
once its transport has succeeded, some time after sendMail's 202 (transport.py plays that, after
`sent_items_delay`); a message whose transport fails never gets here. A message keeps the single-value
extended properties it was sent with. The relay finds a message it may or may not have sent with the filter of
https://learn.microsoft.com/graph/api/singlevaluelegacyextendedproperty-get :

    GET /users/{id|upn}/mailFolders/sentitems/messages
        ?$filter=singleValueExtendedProperties/Any(ep: ep/id eq '{id}' and ep/value eq '{value}')

That page's rules, played here: the application permission is Mail.Read (Mail.ReadBasic excludes extended
properties: https://learn.microsoft.com/graph/permissions-reference#mailreadbasic), scoped by Exchange like
Mail.Send; the Name in the property id is matched case-sensitively, the value case-insensitively. Any other
$filter is refused: the relay sends only this form, and an emulator that answered more would hide a typo.
The id formats, value types and the filter's parsing are extended_properties.py's.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from devstack.emulator.common import _utcnow
from devstack.emulator.extended_properties import matching_values
from devstack.emulator.state import TenantState

# The read permissions that cover extended properties (the doc above); Mail.ReadBasic does not.
EXTENDED_PROPERTY_READ: Final = ("Mail.Read", "Mail.ReadWrite")
SENT_ITEMS: Final = "sentitems"  # the well-known folder name; Graph takes it in any case
SELECTABLE_DEFAULT: Final = ("id", "sentDateTime", "internetMessageId", "subject")
# isDraft: a message in Sent Items was sent, so it is not a draft (the message resource, drafts.py cites it).
_SELECTABLE: Final = frozenset({"id", "sentDateTime", "internetMessageId", "subject", "createdDateTime", "isDraft"})


def select(items: list[dict[str, Any]], fields: list[str]) -> list[dict[str, Any]] | str:
    """The items with only `fields`, or the first field a message does not have."""
    unknown = [f for f in fields if f not in _SELECTABLE]
    if unknown:
        return unknown[0]
    return [{f: i.get(f) for f in fields} for i in items]


class SentItems(TenantState):
    """Each mailbox's Sent Items: what sendMail filed there, and the extended-property look-up.

    A part of `Emulator`; the items are `TenantState._sent_items`, filed by graph.py's sendMail.
    """

    def _file_sent(self, address: str, message: dict[str, Any], internet_message_id: str) -> None:
        """Called by transport.py, once a message's transport has succeeded: the message moves to Sent Items."""
        properties = [
            {"id": str(p.get("id")), "value": str(p.get("value"))}
            for p in message.get("singleValueExtendedProperties") or []
            if isinstance(p, dict)
        ]
        now = _utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
        item = {
            "id": "AAMk" + uuid.uuid4().hex,
            "sentDateTime": now,
            "createdDateTime": now,
            "internetMessageId": internet_message_id,
            "subject": message.get("subject"),
            "isDraft": False,
            "singleValueExtendedProperties": properties,
        }
        with self._lock:
            self._sent_items.setdefault(address.lower(), []).append(item)

    def sent_items(self, address: str) -> list[dict[str, Any]]:
        """The mailbox's Sent Items that Exchange has filed by now (admin API `GET sent-items?mailbox=`)."""
        with self._lock:
            return [dict(i) for i in self._sent_items.get(address.lower(), [])]

    def copies_by_mark(self, property_id: str | None = None) -> dict[str, int]:
        """How many delivered copies carry each extended property value: the witness for duplicates.
        Counts the outbox (every accepted sendMail), not Sent Items (which a saveToSentItems false skips), leaving
        out what bounced (transport failed, or the daily recipients were spent): no recipient got those."""
        counts: dict[str, int] = {}
        with self._lock:
            for entry in self._outbox:
                if entry.get("bounced"):
                    continue
                message = entry["message"].get("message") or {}
                properties = [p for p in message.get("singleValueExtendedProperties") or [] if isinstance(p, dict)]
                for value in matching_values(properties, property_id):
                    counts[value] = counts.get(value, 0) + 1
        return counts
