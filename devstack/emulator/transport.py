"""Exchange's transport, after Graph's 202: a sent message waits in Drafts, then moves to Sent Items, or bounces.

Source: https://learn.microsoft.com/graph/outlook-things-to-know-about-send-mail ("Send mail by using the Microsoft
Graph API"; microsoft-graph-docs-contrib, concepts/outlook-things-to-know-about-send-mail.md):
1. sendMail "creates a new message in the sender's Drafts folder ... If successful, the method returns ... 202
   Accepted"; "most of the steps (steps 2 to 7) take place after the method response is returned".
3. Transport copies the message into its pipeline; "If step 3 fails, the transport process constructs a
   non-delivery report message and places it in the sender's Inbox."
4. "After all of this succeeds ... the Exchange store ... moves it from the Drafts folder to the Sent Items folder.
   (Depending on optional message properties, it may move to a different folder or delete the message instead.)"
So a message is in Drafts while in transport (`sent_items_delay` seconds here), then in Sent Items (or deleted,
when sent with saveToSentItems false); a transport failure leaves an NDR in the Inbox and nothing in Sent Items.
Sending a draft (message-send: "This method saves the message in the Sent Items folder") takes the same way: the
draft stays in Drafts until its transport is done.

Assumed, as no page states it:
- after a failure the message stays in Drafts, as a draft again (nothing in the page moves or deletes it);
- a message in transport cannot be changed or sent again (404, as for a draft that is not there), but can be
  deleted, and deleting it does not stop its delivery (transport took its copy in step 3): the worst case for a
  sender that deletes its leftovers, and the one to test against. Deleted, it is not filed in Sent Items;
- the NDR's shape: from "Microsoft Outlook" at the tenant's postmaster, subject "Undeliverable: " and the original
  subject, the diagnostic in bodyPreview; its default code 5.6.0 stands for "the message could not be copied into
  the pipeline" (the page gives no code). The daily-recipients bounce carries 5.1.90 (throttling.py names its page).
- a message whose transport fails is not counted by Exchange's sending limits (it was never submitted);
- a message's `isDraft` (the message resource: "A message is a draft if it hasn't been sent yet") is false from
  its send while it waits in Drafts for transport, and true again if its transport fails and it stays in Drafts
  (drafts.py's `draft_items`). No page found states the isDraft of a message in transport; false is the reading of
  "hasn't been sent yet" for a message that was submitted for sending. The NDR, and what Sent Items holds, are not
  drafts.
The admin's switches (admin API `POST transport`): a mailbox's transport fails until switched back, or the next N
messages (of one mailbox, or of any) fail; each with the NDR's diagnostic text, or the default.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from devstack.emulator.common import _utcnow
from devstack.emulator.drafts import Drafts, _Draft
from devstack.emulator.sent_items import SentItems

TRANSPORT_FAILED: Final = "550 5.6.0 the message could not be copied into the transport pipeline"  # assumed


@dataclass
class _InTransport:
    """A message Graph accepted, on its way: its Drafts item, when transport is done, and how it ends."""

    draft_id: str
    mailbox: str
    due: float  # time.monotonic()
    save: bool  # saveToSentItems
    internet_message_id: str
    ndr: str | None  # None: delivered; else the diagnostic of the non-delivery report


@dataclass
class _FailNext:
    mailbox: str | None  # None: any mailbox
    remaining: int
    ndr: str


class Transport(SentItems, Drafts):
    """A part of `Emulator`: a message accepted by sendMail or a draft's send, from Drafts to Sent Items or to an
    NDR. graph.py calls `_transport_failure` then `_begin_transport`; every read of Drafts, Sent Items or the Inbox
    first settles what is due (`_settle_transport`)."""

    # --- The admin's switches -----------------------------------------------------------------------------------

    def set_transport_failure(self, mailbox: str, failing: bool = True, ndr: str | None = None) -> None:
        """Make every message from `mailbox` fail in transport (an NDR, nothing in Sent Items), or stop it."""
        with self._lock:
            if failing:
                self._transport_failing[mailbox.lower()] = ndr or TRANSPORT_FAILED
            else:
                self._transport_failing.pop(mailbox.lower(), None)

    def fail_next_transports(self, count: int, mailbox: str | None = None, ndr: str | None = None) -> None:
        """Make the next `count` messages (from `mailbox`, or from any) fail in transport."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be a whole number, at least 1")
        with self._lock:
            switch = _FailNext(mailbox.lower() if mailbox else None, count, ndr or TRANSPORT_FAILED)
            self._transport_fail_next.append(switch)

    def configure_transport(self, entry: dict[str, Any]) -> None:
        """Admin API `POST transport`: {"count": N, "mailbox"?, "ndr"?} for the next N messages, or
        {"mailbox", "failing": true|false, "ndr"?} for a mailbox until switched back."""
        mailbox, ndr = entry.get("mailbox"), entry.get("ndr")
        if mailbox is not None and (not isinstance(mailbox, str) or not mailbox):
            raise ValueError("mailbox must be a non-empty string")
        if ndr is not None and (not isinstance(ndr, str) or not ndr):
            raise ValueError("ndr must be a non-empty string")
        if "count" in entry:
            self.fail_next_transports(entry["count"], mailbox, ndr)
            return
        if mailbox is None or not isinstance(entry.get("failing"), bool):
            raise ValueError('give "count", or "mailbox" with "failing" true or false')
        self.set_transport_failure(mailbox, entry["failing"], ndr)

    def transport_view(self) -> dict[str, Any]:
        """Admin API `GET transport`: the switches, and how many messages are on their way."""
        self._settle_transport()
        with self._lock:
            return {
                "failingMailboxes": dict(self._transport_failing),
                "failNext": [
                    {"mailbox": f.mailbox, "remaining": f.remaining, "ndr": f.ndr} for f in self._transport_fail_next
                ],
                "inTransport": len(self._in_transport),
            }

    # --- What graph.py calls ------------------------------------------------------------------------------------

    def _transport_failure(self, mailbox: str) -> str | None:
        """The NDR diagnostic if this message's transport is to fail (taking one of the next-N), else None."""
        with self._lock:
            switches: list[_FailNext] = self._transport_fail_next
            for switch in switches:
                if switch.mailbox in (None, mailbox.lower()):
                    switch.remaining -= 1
                    if switch.remaining <= 0:
                        switches.remove(switch)
                    return switch.ndr
            return self._transport_failing.get(mailbox.lower())

    def _begin_transport(
        self,
        mailbox: str,
        message: dict[str, Any],
        attachments: list[dict[str, Any]],
        internet_message_id: str,
        save: bool,
        ndr: str | None,
        draft_id: str | None = None,
    ) -> None:
        """The accepted message waits in Drafts: sendMail's as a new item, a sent draft as itself."""
        with self._lock:
            draft = self._drafts.get(draft_id) if draft_id else None
            if draft is None:
                kept = {k: v for k, v in message.items() if k != "attachments"}
                draft = _Draft(id="AAMk" + uuid.uuid4().hex, mailbox=mailbox.lower(), message=kept)
                draft.attachments = list(attachments)
                self._drafts[draft.id] = draft
            draft.in_transport = True
            for sid in [s.id for s in self._upload_sessions.values() if s.draft_id == draft.id]:
                del self._upload_sessions[sid]
            due = time.monotonic() + self.sent_items_delay
            self._in_transport.append(_InTransport(draft.id, mailbox.lower(), due, save, internet_message_id, ndr))

    def _settle_transport(self) -> None:
        """Finish every transport that is due: to Sent Items (or deleted), or an NDR in the Inbox."""
        now = time.monotonic()
        with self._lock:
            due = [t for t in self._in_transport if t.due <= now]
            if not due:
                return
            self._in_transport = [t for t in self._in_transport if t.due > now]
            for done in due:
                draft = self._drafts.get(done.draft_id)
                if done.ndr is not None:
                    if draft is not None:
                        draft.in_transport = False  # assumed: it stays in Drafts (the module's docstring)
                    self._inbox.setdefault(done.mailbox, []).append(_non_delivery_report(done, draft))
                    continue
                if draft is None:
                    continue  # deleted on the way: delivered all the same, filed nowhere (assumed)
                del self._drafts[done.draft_id]
                if done.save:
                    self._file_sent(done.mailbox, draft.message, done.internet_message_id)

    # --- Reads settle first -------------------------------------------------------------------------------------

    def sent_items(self, address: str) -> list[dict[str, Any]]:
        self._settle_transport()
        return super().sent_items(address)

    def draft_items(self, mailbox: str) -> list[dict[str, Any]]:
        self._settle_transport()
        return super().draft_items(mailbox)

    def drafts_view(self) -> list[dict[str, Any]]:
        self._settle_transport()
        return super().drafts_view()

    def inbox_items(self, address: str) -> list[dict[str, Any]]:
        """The mailbox's Inbox as the emulator plays it: the non-delivery reports (admin API `GET inbox?mailbox=`)."""
        self._settle_transport()
        with self._lock:
            return [dict(i) for i in self._inbox.get(address.lower(), [])]


def _non_delivery_report(done: _InTransport, draft: _Draft | None) -> dict[str, Any]:
    """The NDR transport leaves in the sender's Inbox (its shape is assumed: the module's docstring)."""
    subject = (draft.message.get("subject") if draft is not None else None) or ""
    domain = done.mailbox.rsplit("@", 1)[-1]
    now = _utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "id": "AAMkNdr" + uuid.uuid4().hex,
        "createdDateTime": now,
        "receivedDateTime": now,
        "sentDateTime": now,
        "subject": f"Undeliverable: {subject}",
        "isDraft": False,
        "from": {"emailAddress": {"name": "Microsoft Outlook", "address": f"postmaster@{domain}"}},
        "bodyPreview": done.ndr,
        "internetMessageId": f"<{uuid.uuid4().hex}@{domain}>",
        "originalInternetMessageId": done.internet_message_id,  # the emulator's own field: which message bounced
        "singleValueExtendedProperties": [],
    }
