"""Exchange Online's scope on an app's application permissions, as Microsoft documents it.

Two models restrict which mailboxes an app may act on, and Entra consent adds to them:
- RBAC for Applications (recommended): Exchange grants the app a role ("Application Mail.Send") over a
  management scope. Tokens carry no `Mail.Send` role; Exchange alone decides, per mailbox.
  "Permissions granted through Entra ID and RBAC for Applications are additive": with a tenant-wide
  `Mail.Send` consent, every mailbox is allowed whatever the scope says.
  (learn.microsoft.com/exchange/permissions-exo/application-rbac, "Limitations" and "Supported Application
  Roles"; docs/design.md "The Exchange scope".)
  A scope's `MemberOfGroup` filter matches only groups Exchange recognises (mail-enabled): an Entra-only
  security group matches nobody (same page, "Management scopes").
- Application access policy (legacy): needs the Entra consent (the role in the token), then RestrictAccess
  allows only the group's members, DenyAccess everyone but them (New-ApplicationAccessPolicy, in
  MicrosoftDocs/office-docs-powershell). A denial is 403 `ErrorAccessDenied`, "Access to OData is disabled."
  (https://learn.microsoft.com/graph/auth-limit-mailbox-access, "Handling API errors"; microsoft-graph-docs-contrib,
  concepts/auth-limit-mailbox-access.md): the same text as a mailbox with EWS/REST blocked, so the text alone does
  not tell the two apart. Some tenants report a longer text, "Access to OData is disabled: [RAOP] : Blocked by
  tenant configured AppOnly AccessPolicy settings." (`POLICY_DENIED_RAOP`); the documented one is the default, and
  `policy_denial_text` switches to the other (admin API `POST exchange {"policyDenialText": ...}`).
- The RBAC denial's text, "Access is denied. Check credentials and try again.", is as users report it
  (docs/outcomes.md); assumed: no Microsoft page gives it for RBAC for Applications.
- With no model at all, the consent reaches every mailbox: the CEO's included.
Per mailbox: it must exist in Exchange Online (a user without an Exchange Online mailbox gives 404
`MailboxNotEnabledForRESTAPI`; a shared mailbox needs no licence), and EWS/REST must not be blocked on it
(403 ErrorAccessDenied "Access to OData is disabled."). Scope changes take effect after a delay (15 minutes
to 2 hours in Exchange), played here time-scaled by `scope_delay` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

from devstack.emulator.common import _optional_bool
from devstack.emulator.state import TenantState, _App, _Mailbox

SCOPE_MODELS: Final = ("rbac", "policy", "none")
POLICY_ACCESS: Final = ("RestrictAccess", "DenyAccess")
# Exchange's application roles for RBAC for Applications, by the Graph permission each stands for.
EXCHANGE_ROLE: Final = {
    "Mail.Send": "Application Mail.Send",
    "Mail.Read": "Application Mail.Read",
    "Mail.ReadBasic": "Application Mail.ReadBasic",
    "Mail.ReadWrite": "Application Mail.ReadWrite",
}
# The Graph permissions that let an app read a mailbox's folders (the doctor's probe).
READ_PERMISSIONS: Final = ("Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite")

ACCESS_DENIED: Final = "Access is denied. Check credentials and try again."  # assumed (the module's docstring)
ODATA_DISABLED: Final = "Access to OData is disabled."
POLICY_DENIED: Final = ODATA_DISABLED  # documented (the module's docstring)
POLICY_DENIED_RAOP: Final = (
    "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
)
# Assumed: the 404, the code and the text are as users report them for a user with no Exchange Online mailbox; no
# Microsoft page found gives them.
NOT_IN_EXO: Final = "The mailbox is either inactive, soft-deleted, or is hosted on-premise."


class ExchangeScope(TenantState):
    """Exchange Online's authorization of app-only Graph calls on mailboxes.

    A part of `Emulator`; its knobs (`scope_delay`, `scope_group_mail_enabled`) are `TenantState`'s.
    """

    def set_exchange_scope(self, address: str, in_scope: bool, delay: float | None = None) -> None:
        """Put the mailbox inside or outside the app's scope (the RBAC management scope, or the access
        policy's group). The change applies after `delay` seconds (default: `scope_delay`), as in Exchange."""
        wait = self.scope_delay if delay is None else delay
        with self._lock:
            mailbox = self._mailboxes.get(address.lower())
            if mailbox is None:
                raise KeyError(f"no mailbox {address!r}")
            if wait <= 0:
                mailbox.in_exchange_scope, mailbox.pending_scope = bool(in_scope), None
            else:
                mailbox.pending_scope = (time.monotonic() + wait, bool(in_scope))

    def configure_exchange(self, entry: Mapping[str, Any]) -> None:
        """The tenant's knobs: {"scopeDelaySeconds"?, "groupMailEnabled"?, "sentItemsDelaySeconds"?,
        "policyDenialText"?} (admin API
        `POST exchange`, which also takes drafts.py's "maxMessageSizeBytes" and "uploadSessionSeconds")."""
        with self._lock:
            if "sentItemsDelaySeconds" in entry:
                delay = entry["sentItemsDelaySeconds"]
                if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
                    raise ValueError("sentItemsDelaySeconds must be a number of seconds, at least 0")
                self.sent_items_delay = float(delay)
            if "scopeDelaySeconds" in entry:
                delay = entry["scopeDelaySeconds"]
                if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
                    raise ValueError("scopeDelaySeconds must be a number of seconds, at least 0")
                self.scope_delay = float(delay)
            self.scope_group_mail_enabled = _optional_bool(entry, "groupMailEnabled", self.scope_group_mail_enabled)
            if "policyDenialText" in entry:
                text = entry["policyDenialText"]
                if text not in (POLICY_DENIED, POLICY_DENIED_RAOP):
                    raise ValueError(f"policyDenialText must be {POLICY_DENIED!r} or {POLICY_DENIED_RAOP!r}")
                self.policy_denial_text = text

    def _in_scope(self, mailbox: _Mailbox) -> bool:
        """Membership as Exchange sees it now: a pending change counts once its delay has passed."""
        if mailbox.pending_scope is not None and time.monotonic() >= mailbox.pending_scope[0]:
            mailbox.in_exchange_scope, mailbox.pending_scope = mailbox.pending_scope[1], None
        return mailbox.in_exchange_scope and self.scope_group_mail_enabled

    def _exchange_denial(
        self, claims: Mapping[str, Any], mailbox: _Mailbox, permissions: Sequence[str]
    ) -> tuple[int, str, str] | None:
        """Why Exchange refuses this token on this mailbox for any of `permissions`: (status, code,
        message), or None when it allows it."""
        if not mailbox.exchange_online:
            return 404, "MailboxNotEnabledForRESTAPI", NOT_IN_EXO
        if not mailbox.rest_enabled:
            return 403, "ErrorAccessDenied", ODATA_DISABLED
        app = self._app_of(claims)
        consented = bool(set(claims.get("roles") or []) & set(permissions))
        model = app.scope_model if app else "none"
        with self._lock:
            in_scope = self._in_scope(mailbox)
        if model == "rbac":
            granted = app is not None and any(EXCHANGE_ROLE.get(p) in app.exchange_roles for p in permissions)
            # Additive: the Entra consent alone is enough, whatever the scope.
            return None if consented or (granted and in_scope) else (403, "ErrorAccessDenied", ACCESS_DENIED)
        if not consented:
            return 403, "ErrorAccessDenied", ACCESS_DENIED
        if model == "policy":
            member_allowed = in_scope if (app and app.policy_access == "RestrictAccess") else not in_scope
            return None if member_allowed else (403, "ErrorAccessDenied", self.policy_denial_text)
        return None  # no model: the consent reaches every mailbox

    def _app_of(self, claims: Mapping[str, Any]) -> _App | None:
        with self._lock:
            return self._apps.get((str(claims.get("tid", "")).lower(), str(claims.get("appid", "")).lower()))
