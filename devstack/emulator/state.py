"""The emulated tenant's shared state: app registrations, mailboxes, secret versions, queued faults, the
outbox and the call counts, and the tokens every service issues and checks.

`TenantState` is the base of every service module's part of `Emulator`: it holds the state under one lock,
and the service modules hold the rules.
"""

from __future__ import annotations

import abc
import copy
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.emulator.common import DEFAULT_TENANT_ID, SERVICES

if TYPE_CHECKING:
    from devstack.emulator.faults import _Fault
    from devstack.emulator.throttling import Pace

TOKEN_LIFETIME_SECONDS = 3599


@dataclass
class _PasswordCredential:
    """A client secret as Graph lists it in passwordCredentials (never with its value: secretText is null)."""

    key_id: str
    display_name: str | None
    start: datetime
    end: datetime
    hint: str | None  # Graph shows the value's first three characters


@dataclass
class _KeyCredential:
    """A certificate in the app registration's keyCredentials (keyCredential resource: type AsymmetricX509Cert,
    usage Verify; startDateTime and endDateTime are the certificate's own dates)."""

    key_id: str
    display_name: str | None
    certificate: x509.Certificate
    start: datetime
    end: datetime
    sha1: bytes  # the thumbprint Graph lists as customKeyIdentifier and an RS256 assertion names in x5t
    sha256: bytes  # what a PS256 assertion names in x5t#S256


@dataclass
class _FederatedCredential:
    """A federatedIdentityCredential on the app registration: which external token it accepts."""

    id: str
    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...]
    description: str | None = None


@dataclass
class _Identity:
    """A user-assigned managed identity the App Service identity endpoint can hand tokens for."""

    client_id: str
    principal_id: str  # its service principal's object id: the `sub` and `oid` of its tokens
    tenant_id: str
    resource_id: str | None = None  # the ARM id App Service accepts as mi_res_id


@dataclass
class _App:
    tenant_id: str
    client_id: str
    secret: str | None  # None: no client secret at all (a certificate or federated app, or an identity)
    roles: tuple[str, ...]  # Entra consent: the application permissions granted tenant-wide (token roles)
    secret_expired: bool
    # The current secret's entry first; then any added with add_password_credential (listed only).
    credentials: list[_PasswordCredential] = field(default_factory=list)
    key_credentials: list[_KeyCredential] = field(default_factory=list)
    federated_credentials: list[_FederatedCredential] = field(default_factory=list)
    # A managed identity's service principal (no application object): Graph and Exchange authorise its tokens
    # like an app's, Entra's token endpoint takes no credential for it, and GET /applications does not list it.
    identity: _Identity | None = None
    # Exchange's scope on the app (devstack/emulator/exchange.py): "rbac" (RBAC for Applications, the
    # relay's default), "policy" (an application access policy) or "none".
    scope_model: str = "rbac"
    policy_access: str = "RestrictAccess"
    # RBAC for Applications: the Exchange application roles assigned to the app over its scope.
    exchange_roles: frozenset[str] = frozenset({"Application Mail.Send"})

    @property
    def secret_end(self) -> datetime | None:
        return self.credentials[0].end if self.credentials else None


@dataclass
class _Mailbox:
    address: str
    object_id: str
    in_exchange_scope: bool  # in the app's management scope (RBAC) or the policy's group
    rest_enabled: bool  # EWS/REST not blocked on the mailbox (Get-CASMailbox ... EwsEnabled)
    exchange_online: bool = True  # has an Exchange Online mailbox (else MailboxNotEnabledForRESTAPI)
    pending_scope: tuple[float, bool] | None = None  # (applies at, in scope): a change not yet applied


@dataclass
class _SecretVersion:
    name: str
    version: str
    value: str
    created: int
    expires_on: int | None
    enabled: bool
    # A Key Vault certificate's secret (keyvault.py): its content type, managed=true, the certificate's nbf, and
    # the certificate itself (DER) for GET /certificates.
    content_type: str | None = None
    not_before: int | None = None
    certificate_der: bytes | None = None


class TenantState(abc.ABC):
    """The state every service reads and changes, under one lock; tokens are issued and checked here."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

        # Token signing key, generated per instance: a token from another run never validates here.
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_key = self._signing_key.public_key()
        self._key_id = uuid.uuid4().hex

        self._apps: dict[tuple[str, str], _App] = {}
        # User-assigned managed identities by client id (lower-cased); each is also a principal in _apps.
        self._identities: dict[str, _Identity] = {}
        self._mailboxes: dict[str, _Mailbox] = {}
        self._secrets: dict[str, list[_SecretVersion]] = {}
        self._faults: list[_Fault] = []
        self._outbox: list[dict[str, Any]] = []
        # Each mailbox's Sent Items (sent_items.py), and how long Exchange's transport takes with a message before
        # it is filed there (or bounces): the message waits in Drafts meanwhile (transport.py).
        self._sent_items: dict[str, list[dict[str, Any]]] = {}
        self.sent_items_delay = 0.0
        # Transport (transport.py): messages on their way, each mailbox's Inbox (non-delivery reports), and the
        # admin's switches that make transport fail: per mailbox (address -> NDR), and for the next N messages.
        self._in_transport: list[Any] = []
        self._inbox: dict[str, list[dict[str, Any]]] = {}
        self._transport_failing: dict[str, str] = {}
        self._transport_fail_next: list[Any] = []
        # Drafts and upload sessions (drafts.py), and Exchange's maximum message size for every mailbox.
        self._drafts: dict[str, Any] = {}
        self._upload_sessions: dict[str, Any] = {}
        self.max_message_bytes = 35 * 1024 * 1024
        self.upload_session_seconds = 900.0
        # Graph's and Exchange's limits per app and mailbox (throttling.py), time-scaled, and a fixed latency.
        self._paces: dict[tuple[str, str], Pace] = {}
        self._throttle_lock = threading.Lock()
        self.throttle_stats: dict[str, int] = {
            "concurrency429": 0,
            "requests429": 0,
            "uploads429": 0,
            "delayed": 0,
            "bounced": 0,
        }
        self.throttle_time_scale = 1.0
        self.graph_latency = 0.0
        # Exchange's scope (exchange.py): the delay before a scope change applies (time-scaled), and
        # whether the scope's group is one Exchange recognises (mail-enabled) or an Entra-only group.
        self.scope_delay = 0.0
        self.scope_group_mail_enabled = True
        # The text of an application access policy's denial: the documented one, or the longer one tenants report.
        self.policy_denial_text = "Access to OData is disabled."
        # Key Vault RBAC (keyvault.py): the identities (client ids) with no secrets-reading role on the vault.
        self._vault_denied: set[str] = set()
        self._stats: dict[str, int] = dict.fromkeys(SERVICES, 0)
        # Every token id (uti) handed out, and those expire_tokens() has since invalidated.
        self._issued_token_ids: set[str] = set()
        self._expired_token_ids: set[str] = set()

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The base URL every emulated service answers at (the server's, server.py)."""

    @property
    def default_tenant_id(self) -> str:
        """The tenant named in Key Vault's challenge and in managed identity tokens."""
        with self._lock:
            first = next(iter(self._apps.values()), None)
            return first.tenant_id if first else DEFAULT_TENANT_ID

    def expire_tokens(self) -> None:
        """Make every token issued so far count as expired (Graph and Key Vault answer 401)."""
        with self._lock:
            self._expired_token_ids |= self._issued_token_ids

    @property
    def outbox(self) -> list[dict[str, Any]]:
        """Accepted messages: ``{"sender": address, "message": the posted JSON body, "receivedAt": iso}``."""
        with self._lock:
            return copy.deepcopy(self._outbox)

    @property
    def stats(self) -> dict[str, int]:
        """Calls per endpoint (keys: :data:`SERVICES`).

        Every request counts, except for Key Vault, which counts requests that passed authentication:
        the SDK's unauthenticated challenge probe and its CAE retry are left out (see :meth:`_keyvault`).
        """
        with self._lock:
            return dict(self._stats)

    def reset(self) -> None:
        """Clear apps, mailboxes, secrets, faults, outbox and stats. Issued tokens stay valid."""
        with self._lock:
            self._apps.clear()
            self._identities.clear()
            self._mailboxes.clear()
            self._secrets.clear()
            self._faults.clear()
            self._outbox.clear()
            self._sent_items.clear()
            self.sent_items_delay = 0.0
            self._in_transport.clear()
            self._inbox.clear()
            self._transport_failing.clear()
            self._transport_fail_next.clear()
            self._drafts.clear()
            self._upload_sessions.clear()
            self.max_message_bytes, self.upload_session_seconds = 35 * 1024 * 1024, 900.0
            self.throttle_time_scale, self.graph_latency = 1.0, 0.0
            self._stats = dict.fromkeys(SERVICES, 0)
            self._vault_denied.clear()
            self.scope_delay, self.scope_group_mail_enabled = 0.0, True
            self.policy_denial_text = "Access to OData is disabled."
        with self._throttle_lock:
            self._paces.clear()
            self.throttle_stats.update(dict.fromkeys(self.throttle_stats, 0))

    def _count(self, service: str) -> None:
        with self._lock:
            self._stats[service] += 1

    # ------------------------------------------------------------------ tokens

    def _issue_token(
        self,
        audience: str,
        tenant_id: str,
        app_id: str,
        roles: Sequence[str],
        object_id: str | None = None,
        lifetime: int = TOKEN_LIFETIME_SECONDS,
    ) -> tuple[str, int]:
        """An RS256 access token shaped like Entra's v1 app-only tokens. Returns (token, exp).

        ``object_id`` is the caller's service principal (a managed identity's principal id); by default one is
        derived from the app id. ``lifetime`` may be negative: an already expired token, for tests.
        """
        now = int(time.time())
        expires = now + lifetime
        token_id = uuid.uuid4().hex
        principal = object_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{tenant_id}:{app_id}".lower()))
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": expires,
            "appid": app_id,
            # 2: a certificate or a managed identity; 1: a secret (access-token claims reference). Assumed 1 for
            # every app, as the relay's default mode; managed identities 2.
            "appidacr": "2" if object_id else "1",
            "idp": f"https://sts.windows.net/{tenant_id}/",
            "idtyp": "app",
            "oid": principal,
            "sub": principal,
            "tid": tenant_id,
            "uti": token_id,
            "ver": "1.0",
        }
        if roles:
            claims["roles"] = list(roles)
        return self._sign(claims), expires

    def _sign(self, claims: dict[str, Any]) -> str:
        """Sign with this instance's key, and remember the token id (expire_tokens() can revoke it)."""
        token = jwt.encode(
            claims, self._signing_key, algorithm="RS256", headers={"kid": self._key_id, "x5t": self._key_id}
        )
        with self._lock:
            self._issued_token_ids.add(str(claims["uti"]))
        return token

    def _check_token(self, token: str) -> tuple[str, dict[str, Any]]:
        """Validate signature and lifetime.

        Returns (outcome, claims); outcome is one of ok, malformed, invalid, expired, revoked.

        "revoked" is a token that expire_tokens() cut short while its own exp is still ahead.
        """
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._public_key, algorithms=["RS256"], options={"verify_aud": False}
            )
        except jwt.ExpiredSignatureError:
            return "expired", {}
        except jwt.InvalidSignatureError:
            return "invalid", {}
        except jwt.DecodeError:
            return "malformed", {}
        except jwt.InvalidTokenError:
            return "invalid", {}
        with self._lock:
            if claims.get("uti") in self._expired_token_ids:
                return "revoked", claims
        return "ok", claims
