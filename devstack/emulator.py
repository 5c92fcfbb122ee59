"""Local emulator of Microsoft Entra ID, Microsoft Graph (sendMail) and Azure Key Vault (secrets).

One HTTPS server on loopback plays all three services well enough that the real Microsoft SDKs
(MSAL, azure-identity's ManagedIdentityCredential, azure-keyvault-secrets) work against it
unchanged, errors included. The error bodies copy the shapes the real services answer with;
the module's docstrings and the project's report say where each shape was confirmed.

This is local-only tooling (the ``devstack`` folder is never deployed). It logs request paths and
status codes only: never a secret value, a client secret or a token.

Python use::

    emu = Emulator()            # host 127.0.0.1, a free port
    emu.start()
    emu.add_app(tenant, client_id, "s3cret")
    emu.add_mailbox("relay@contoso.com")
    ...
    emu.stop()

Process use: ``python -m devstack.emulator --port 0 [--seed seed.json] [--ready-file PATH]`` prints (and
writes) ``{"url", "caCertPath", "identityHeader", "msiEndpoint"}`` once ready, and serves until SIGTERM or
SIGINT. The seed file has the lists ``apps``, ``mailboxes``, ``secrets`` (and ``faults``), entries shaped as
the admin API's bodies below.

Admin API (no auth, JSON in and out), under ``{url}/_emulator/``:

- ``GET outbox``, ``GET stats``; ``POST reset``, ``POST expire-tokens``
- ``POST apps`` ``{"tenantId", "clientId", "secret", "roles"?: [...], "secretExpired"?: bool,
  "secretEnd"?: iso}``
- ``POST app-secret`` ``{"clientId", "secret", "expired"?: bool, "secretEnd"?: iso}``
- ``POST app-credentials`` ``{"clientId", "endDateTime": iso, "displayName"?}`` -> ``{"keyId"}`` (listed only)
- ``POST mailboxes`` ``{"address", "inExchangeScope"?: bool, "restEnabled"?: bool}``
- ``POST scope`` ``{"address", "inScope": bool}``
- ``POST secrets`` ``{"name", "value", "expiresOn"?: iso | null, "enabled"?: bool}`` -> ``{"version"}``
- ``POST secret-properties`` ``{"name", "version"?, "expiresOn"?: iso | null, "enabled"?: bool}`` (update a
  version's attributes, the current one by default, as ``az keyvault secret set-attributes`` does)
- ``POST faults`` ``{"service", "status"?: int | null, "retryAfter"?, "count"?, "delay"?, "code"?,
  "message"?}``

Emulated endpoints: ``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``GET
/{tenant}/discovery/v2.0/keys``, ``POST /{tenant}/oauth2/v2.0/token`` (client credentials), ``GET
/msi/token`` (App Service managed identity, api-version 2019-08-01), ``GET /secrets/{name}[/{version}]``
and ``GET /secrets/{name}/versions`` (Key Vault; the vault URL is the emulator's URL), ``POST
/v1.0/users/{id or upn}/sendMail`` and ``GET /v1.0/applications(appId='{id}')[?$select=...]`` (Graph; the
latter needs the application role Application.Read.All, as the real one does app-only).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

# A fixed name: under `python -m` __name__ would be "__main__".
logger = logging.getLogger("devstack.emulator")

#: The endpoints counted in :attr:`Emulator.stats`, and the services :meth:`Emulator.add_fault` targets.
SERVICES: tuple[str, ...] = (
    "entra.openid",
    "entra.token",
    "msi.token",
    "keyvault.getSecret",
    "graph.sendMail",
    "graph.applications",
)

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
# Graph's addPassword: a client secret without an endDateTime lives two years.
DEFAULT_SECRET_LIFETIME = timedelta(days=730)
_APPLICATION_BY_APP_ID = re.compile(r"^applications\(appId='([^']+)'\)$", re.IGNORECASE)
_UNSET: Any = object()
VAULT_RESOURCE = "https://vault.azure.net"
# Key Vault's first-party app id; the real service names it in its AKV10022 audience errors.
VAULT_APP_ID = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"

#: Tenant used for the Key Vault challenge and managed identity tokens while no app is registered.
DEFAULT_TENANT_ID = "00000000-0000-4000-8000-000000000e1d"
#: Client id of the emulated system-assigned managed identity (a request without ``client_id``).
SYSTEM_IDENTITY_CLIENT_ID = "00000000-0000-4000-8000-0000000005a1"

MSI_API_VERSION = "2019-08-01"
TOKEN_LIFETIME_SECONDS = 3599
# Graph refuses request bodies over 4 MB (sendMail included); larger content needs an upload session.
GRAPH_MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Bodies beyond this are not even read: the connection is answered 413 and closed.
_MAX_READ_BYTES = 64 * 1024 * 1024

_GRAPH_AUDIENCES = frozenset({GRAPH_RESOURCE, GRAPH_RESOURCE + "/", GRAPH_APP_ID})
# Key Vault is strict: "https://vault.azure.net/" (trailing slash) is rejected with AKV10022.
_VAULT_AUDIENCES = frozenset({VAULT_RESOURCE, VAULT_APP_ID})
# Resources the emulated Entra knows, as accepted in a "<resource>/.default" scope, to the token aud.
_KNOWN_RESOURCES: dict[str, str] = {
    GRAPH_RESOURCE: GRAPH_RESOURCE,
    GRAPH_RESOURCE + "/": GRAPH_RESOURCE,
    GRAPH_APP_ID: GRAPH_RESOURCE,
    VAULT_RESOURCE: VAULT_RESOURCE,
    VAULT_RESOURCE + "/": VAULT_RESOURCE,
    VAULT_APP_ID: VAULT_RESOURCE,
}

_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
# Deliberately loose: Exchange resolves anything shaped local@domain; it refuses what it cannot parse.
_SMTP_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"]+@[^@\s<>()\[\],;:\"]+$")

# Writable and read-only properties of Graph's microsoft.graph.message resource (v1.0). Graph's OData
# reader refuses any other property name with RequestBodyRead.
_MESSAGE_PROPERTIES = frozenset(
    {
        "@odata.type",
        "id",
        "createdDateTime",
        "lastModifiedDateTime",
        "changeKey",
        "categories",
        "receivedDateTime",
        "sentDateTime",
        "hasAttachments",
        "internetMessageId",
        "internetMessageHeaders",
        "subject",
        "body",
        "bodyPreview",
        "importance",
        "parentFolderId",
        "sender",
        "from",
        "toRecipients",
        "ccRecipients",
        "bccRecipients",
        "replyTo",
        "conversationId",
        "conversationIndex",
        "uniqueBody",
        "isDeliveryReceiptRequested",
        "isReadReceiptRequested",
        "isRead",
        "isDraft",
        "webLink",
        "inferenceClassification",
        "flag",
        "attachments",
        "extensions",
        "singleValueExtendedProperties",
        "multiValueExtendedProperties",
    }
)
_FILE_ATTACHMENT_PROPERTIES = frozenset(
    {
        "@odata.type",
        "id",
        "name",
        "contentType",
        "size",
        "isInline",
        "lastModifiedDateTime",
        "contentBytes",
        "contentId",
        "contentLocation",
    }
)
_FILE_ATTACHMENT_TYPE = "#microsoft.graph.fileattachment"
_RECIPIENT_LISTS = ("toRecipients", "ccRecipients", "bccRecipients", "replyTo")

_DEFAULT_FAULT_ERRORS: dict[int, tuple[str, str]] = {
    # Outlook's concurrency throttle, as Graph reports it (code and message seen in the field).
    429: ("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
    500: ("InternalServerError", "The service encountered an internal error. Please retry the request."),
    502: ("BadGateway", "The server received an invalid response from an upstream server."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable. Please retry the request."),
    504: ("GatewayTimeout", "The server did not receive a timely response from an upstream server."),
}


class EmulatorError(RuntimeError):
    """Misuse of the emulator's own API (not an emulated service error)."""


@dataclass
class _PasswordCredential:
    """A client secret as Graph lists it in passwordCredentials (never with its value: secretText is null)."""

    key_id: str
    display_name: str | None
    start: datetime
    end: datetime
    hint: str | None  # Graph shows the value's first three characters


@dataclass
class _App:
    tenant_id: str
    client_id: str
    secret: str
    roles: tuple[str, ...]
    secret_expired: bool
    # The current secret's entry first; then any added with add_password_credential (listed only).
    credentials: list[_PasswordCredential] = field(default_factory=list)

    @property
    def secret_end(self) -> datetime | None:
        return self.credentials[0].end if self.credentials else None


@dataclass
class _Mailbox:
    address: str
    object_id: str
    in_exchange_scope: bool
    rest_enabled: bool


@dataclass
class _SecretVersion:
    name: str
    version: str
    value: str
    created: int
    expires_on: int | None
    enabled: bool


@dataclass
class _Fault:
    service: str
    status: int | None
    retry_after: float | None
    remaining: int
    delay: float
    code: str | None
    message: str | None


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]  # names lower-cased: HTTP header names are case-insensitive
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


class _BodyTooLarge(Exception):
    pass


def _json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> _Response:
    body = json.dumps(payload).encode("utf-8")
    all_headers = [("Content-Type", "application/json; charset=utf-8"), *headers]
    return _Response(status, body, all_headers)


def _retry_after_headers(retry_after: float | None) -> list[tuple[str, str]]:
    if retry_after is None:
        return []
    # Retry-After is whole seconds on the wire; round up so a client never retries early.
    seconds = int(retry_after) if float(retry_after).is_integer() else int(retry_after) + 1
    return [("Retry-After", str(seconds))]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _epoch(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("expires_on must be timezone-aware")
    return int(value.timestamp())


def _bearer(request: _Request) -> str:
    value = request.header("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


class Emulator:
    """Entra ID, Microsoft Graph and Key Vault on one loopback HTTPS server.

    All state methods are thread-safe, and may be called before or after :meth:`start`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

        # A throwaway CA for this instance only; clients trust it through ca_cert_path.
        self._workdir = Path(tempfile.mkdtemp(prefix="mailrelay-emulator-"))
        # Removed by stop(), or when the emulator is garbage-collected or the interpreter exits.
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._workdir, ignore_errors=True)
        self._ca = trustme.CA(organization_name="Graph Mail Relay local emulator")
        identities = {"127.0.0.1", "localhost", "::1", host}
        self._server_cert = self._ca.issue_cert(*sorted(identities))
        self.ca_cert_path = str(self._workdir / "emulator-ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_cert_path)

        # The header value App Service puts in IDENTITY_HEADER: a per-instance random string.
        self.identity_header = uuid.uuid4().hex

        # Token signing key, generated per instance: a token from another run never validates here.
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_key = self._signing_key.public_key()
        self._key_id = uuid.uuid4().hex

        self._apps: dict[tuple[str, str], _App] = {}
        self._mailboxes: dict[str, _Mailbox] = {}
        self._secrets: dict[str, list[_SecretVersion]] = {}
        self._faults: list[_Fault] = []
        self._outbox: list[dict[str, Any]] = []
        self._stats: dict[str, int] = dict.fromkeys(SERVICES, 0)
        # Every token id (uti) handed out, and those expire_tokens() has since invalidated.
        self._issued_token_ids: set[str] = set()
        self._expired_token_ids: set[str] = set()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        """Bind and serve in a background thread. Returns self."""
        with self._lock:
            if self._server is not None:
                return self
            if self._stopped:
                # stop() removed the CA file that clients were told to trust.
                raise EmulatorError("a stopped emulator cannot be started again; create a new one")
            server = _Server((self.host, self._requested_port), self)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server_cert.configure_cert(context)
            # The TLS handshake happens on the handler thread's first read, so one stalled client
            # cannot block the accept loop.
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, name="mailrelay-emulator", daemon=True
            )
            self._thread.start()
        logger.info("emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and remove the CA file. Safe to call more than once."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
            self._stopped = True
        self._stopping.set()  # wakes handlers sleeping on a delay fault
        if server is not None:
            server.shutdown()
            server.server_close()
            # Clients' pooled keep-alive connections would otherwise still be served after stop().
            server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._cleanup()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        server = self._server
        if server is None:
            raise EmulatorError("the emulator is not started")
        return int(server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def msi_endpoint(self) -> str:
        return f"{self.url}/msi/token"

    @property
    def default_tenant_id(self) -> str:
        """The tenant named in Key Vault's challenge and in managed identity tokens."""
        with self._lock:
            first = next(iter(self._apps.values()), None)
            return first.tenant_id if first else DEFAULT_TENANT_ID

    # ------------------------------------------------------------------ state

    def add_app(
        self,
        tenant_id: str,
        client_id: str,
        secret: str,
        roles: Sequence[str] = ("Mail.Send",),
        secret_expired: bool = False,
        secret_end: datetime | None = None,
    ) -> None:
        """Register an app in a tenant, with its one valid client secret and its application roles.

        ``secret_end`` is the secret's endDateTime in Entra (default: two years from now, as addPassword);
        once it has passed, Entra refuses the secret with AADSTS7000222, as ``secret_expired`` does.
        """
        if isinstance(roles, str):
            raise TypeError("roles must be a sequence of role names, not a string")
        app = _App(tenant_id, client_id, secret, tuple(roles), bool(secret_expired))
        app.credentials = [_password_credential(secret, secret_end)]
        with self._lock:
            self._apps[(tenant_id.lower(), client_id.lower())] = app

    def set_app_secret(
        self, client_id: str, secret: str, expired: bool = False, secret_end: datetime | None = None
    ) -> None:
        """Rotate the app's secret in Entra: the old one stops working at once (and is no longer listed)."""
        with self._lock:
            apps = [app for app in self._apps.values() if app.client_id.lower() == client_id.lower()]
            if not apps:
                raise KeyError(f"no app with client id {client_id!r}")
            for app in apps:
                app.secret = secret
                app.secret_expired = bool(expired)
                app.credentials[:1] = [_password_credential(secret, secret_end)]

    def add_password_credential(
        self, client_id: str, end: datetime, display_name: str | None = None
    ) -> str:
        """List a further client secret in the app registration (an old one not yet deleted, say).

        Graph lists it in passwordCredentials; tokens are still issued for the app's current secret only.
        Returns its keyId.
        """
        credential = _password_credential(None, end, display_name)
        with self._lock:
            apps = [app for app in self._apps.values() if app.client_id.lower() == client_id.lower()]
            if not apps:
                raise KeyError(f"no app with client id {client_id!r}")
            for app in apps:
                app.credentials.append(copy.copy(credential))
        return credential.key_id

    def add_mailbox(self, address: str, in_exchange_scope: bool = True, rest_enabled: bool = True) -> None:
        """Create a mailbox. Graph answers 404 for addresses never added."""
        if not _SMTP_ADDRESS.match(address):
            raise ValueError(f"not a mailbox address: {address!r}")
        # A stable object id, so /users/{id}/sendMail works as well as /users/{upn}/sendMail.
        object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "mailbox:" + address.lower()))
        with self._lock:
            self._mailboxes[address.lower()] = _Mailbox(
                address, object_id, bool(in_exchange_scope), bool(rest_enabled)
            )

    def mailbox_id(self, address: str) -> str:
        """The mailbox's object id, for /users/{id}/sendMail (Graph takes the id or the UPN)."""
        with self._lock:
            mailbox = self._mailboxes.get(address.lower())
            if mailbox is None:
                raise KeyError(f"no mailbox {address!r}")
            return mailbox.object_id

    def set_exchange_scope(self, address: str, in_scope: bool) -> None:
        """Put the mailbox inside or outside the app's Exchange scope (access policy / RBAC)."""
        with self._lock:
            mailbox = self._mailboxes.get(address.lower())
            if mailbox is None:
                raise KeyError(f"no mailbox {address!r}")
            mailbox.in_exchange_scope = bool(in_scope)

    def set_secret(
        self, name: str, value: str, expires_on: datetime | None = None, enabled: bool = True
    ) -> str:
        """Add a new version of a Key Vault secret; it becomes the current one. Returns its version id."""
        if not _SECRET_NAME.match(name):
            raise ValueError(f"invalid Key Vault secret name: {name!r}")
        version = _SecretVersion(
            name=name,
            version=uuid.uuid4().hex,
            value=value,
            created=int(time.time()),
            expires_on=_epoch(expires_on) if expires_on is not None else None,
            enabled=bool(enabled),
        )
        with self._lock:
            self._secrets.setdefault(name.lower(), []).append(version)
        return version.version

    def update_secret(
        self,
        name: str,
        version: str | None = None,
        *,
        expires_on: datetime | None = _UNSET,
        enabled: bool | None = None,
    ) -> str:
        """Change a version's attributes (the current one by default): exp (None clears it), enabled.

        As ``az keyvault secret set-attributes``: the value and the version id stay. Returns the version id.
        """
        with self._lock:
            versions = self._secrets.get(name.lower(), [])
            found = versions[-1] if versions and version is None else next(
                (v for v in versions if v.version == version), None
            )
            if found is None:
                raise KeyError(f"no secret {name!r}" + (f" version {version!r}" if version else ""))
            if expires_on is not _UNSET:
                found.expires_on = _epoch(expires_on) if expires_on is not None else None
            if enabled is not None:
                found.enabled = bool(enabled)
            return found.version

    def add_fault(
        self,
        service: str = "graph.sendMail",
        status: int | None = 429,
        retry_after: float | None = 2,
        count: int = 1,
        delay: float = 0.0,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` calls to ``service`` with ``status``.

        ``delay`` > 0 sleeps before answering (to provoke client timeouts). ``status=None`` only
        delays, then the call is served normally. ``code``/``message`` override the error body's
        defaults. Faults apply after authentication, as a real service throttles an
        authenticated caller; queued faults for one service are used in order.
        """
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        if status is not None and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599) or None")
        fault = _Fault(service, status, retry_after, int(count), float(delay), code, message)
        with self._lock:
            self._faults.append(fault)

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
            self._mailboxes.clear()
            self._secrets.clear()
            self._faults.clear()
            self._outbox.clear()
            self._stats = dict.fromkeys(SERVICES, 0)

    def load_seed(self, seed: Mapping[str, Any]) -> None:
        """Apply a seed document: ``{"apps": [...], "mailboxes": [...], "secrets": [...], "faults": [...]}``.

        Entries use the admin API's camelCase fields (see the module docstring).
        """
        unknown = set(seed) - {"apps", "mailboxes", "secrets", "faults"}
        if unknown:
            raise ValueError(f"unknown seed keys: {', '.join(sorted(unknown))}")
        for entry in seed.get("apps", []):
            self._apply_app(entry)
        for entry in seed.get("mailboxes", []):
            self._apply_mailbox(entry)
        for entry in seed.get("secrets", []):
            self._apply_secret(entry)
        for entry in seed.get("faults", []):
            self._apply_fault(entry)

    # ------------------------------------------------------------------ JSON (admin / seed) parsing

    def _apply_app(self, entry: Mapping[str, Any]) -> None:
        roles = entry.get("roles", ["Mail.Send"])
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise ValueError("roles must be a list of strings")
        self.add_app(
            _required_str(entry, "tenantId"),
            _required_str(entry, "clientId"),
            _required_str(entry, "secret"),
            roles=tuple(roles),
            secret_expired=_optional_bool(entry, "secretExpired", False),
            secret_end=_optional_datetime(entry, "secretEnd"),
        )

    def _apply_app_secret(self, entry: Mapping[str, Any]) -> None:
        self.set_app_secret(
            _required_str(entry, "clientId"),
            _required_str(entry, "secret"),
            _optional_bool(entry, "expired", False),
            _optional_datetime(entry, "secretEnd"),
        )

    def _apply_app_credential(self, entry: Mapping[str, Any]) -> str:
        end = _optional_datetime(entry, "endDateTime")
        if end is None:
            raise ValueError("endDateTime is required")
        display_name = entry.get("displayName")
        return self.add_password_credential(
            _required_str(entry, "clientId"), end, display_name if isinstance(display_name, str) else None
        )

    def _apply_secret_properties(self, entry: Mapping[str, Any]) -> str:
        enabled = entry.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError("enabled must be true or false")
        version = entry.get("version")
        return self.update_secret(
            _required_str(entry, "name"),
            version if isinstance(version, str) and version else None,
            expires_on=_optional_datetime(entry, "expiresOn") if "expiresOn" in entry else _UNSET,
            enabled=enabled,
        )

    def _apply_mailbox(self, entry: Mapping[str, Any]) -> None:
        self.add_mailbox(
            _required_str(entry, "address"),
            in_exchange_scope=_optional_bool(entry, "inExchangeScope", True),
            rest_enabled=_optional_bool(entry, "restEnabled", True),
        )

    def _apply_secret(self, entry: Mapping[str, Any]) -> str:
        expires = entry.get("expiresOn")
        expires_on: datetime | None = None
        if expires is not None:
            if not isinstance(expires, str):
                raise ValueError("expiresOn must be an ISO 8601 string or null")
            expires_on = datetime.fromisoformat(expires)
            if expires_on.tzinfo is None:
                expires_on = expires_on.replace(tzinfo=UTC)
        return self.set_secret(
            _required_str(entry, "name"),
            _required_str(entry, "value"),
            expires_on=expires_on,
            enabled=_optional_bool(entry, "enabled", True),
        )

    def _apply_fault(self, entry: Mapping[str, Any]) -> None:
        self.add_fault(
            service=str(entry.get("service", "graph.sendMail")),
            status=entry.get("status", 429),
            retry_after=entry.get("retryAfter", 2),
            count=int(entry.get("count", 1)),
            delay=float(entry.get("delay", 0.0)),
            code=entry.get("code"),
            message=entry.get("message"),
        )

    # ------------------------------------------------------------------ tokens

    def _issue_token(
        self, audience: str, tenant_id: str, app_id: str, roles: Sequence[str]
    ) -> tuple[str, int]:
        """An RS256 access token shaped like Entra's v1 app-only tokens. Returns (token, exp)."""
        now = int(time.time())
        expires = now + TOKEN_LIFETIME_SECONDS
        token_id = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": expires,
            "appid": app_id,
            "appidacr": "1",
            "idp": f"https://sts.windows.net/{tenant_id}/",
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{tenant_id}:{app_id}".lower())),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{tenant_id}:{app_id}".lower())),
            "tid": tenant_id,
            "uti": token_id,
            "ver": "1.0",
        }
        if roles:
            claims["roles"] = list(roles)
        token = jwt.encode(
            claims, self._signing_key, algorithm="RS256", headers={"kid": self._key_id, "x5t": self._key_id}
        )
        with self._lock:
            self._issued_token_ids.add(token_id)
        return token, expires

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

    # ------------------------------------------------------------------ dispatch

    def _count(self, service: str) -> None:
        with self._lock:
            self._stats[service] += 1

    def _next_fault(self, service: str) -> _Fault | None:
        """Take the next queued fault for ``service``, sleeping its delay. None: serve normally."""
        with self._lock:
            fault = next((f for f in self._faults if f.service == service), None)
            if fault is None:
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
            taken = copy.copy(fault)
        if taken.delay > 0:
            self._stopping.wait(taken.delay)
        return taken if taken.status is not None else None

    def _dispatch(self, request: _Request) -> _Response:
        parts = [unquote(segment) for segment in request.path.split("/") if segment]
        lowered = [part.lower() for part in parts]
        if lowered[:1] == ["_emulator"]:
            return self._admin(request, parts[1:])
        if lowered == ["msi", "token"]:
            self._count("msi.token")
            return self._msi_token(request)
        if lowered[:1] == ["secrets"]:
            return self._keyvault(request, parts[1:])
        if len(parts) == 4 and lowered[:2] == ["v1.0", "users"] and lowered[3] == "sendmail":
            self._count("graph.sendMail")
            return self._graph_send_mail(request, parts[2])
        application = _APPLICATION_BY_APP_ID.match(parts[1]) if len(parts) == 2 and lowered[0] == "v1.0" else None
        if application is not None:
            self._count("graph.applications")
            return self._graph_application(request, application.group(1))
        if lowered[:1] == ["v1.0"]:
            message = f"Resource not found for the segment '{parts[-1]}'."
            return self._graph_error(_GraphIds.of(request), 400, "BadRequest", message)
        # Entra paths: /{tenant}/...
        if len(parts) == 4 and lowered[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            self._count("entra.openid")
            return self._openid_configuration(request, parts[0])
        if len(parts) == 4 and lowered[1:] == ["discovery", "v2.0", "keys"]:
            self._count("entra.openid")
            return self._jwks(request, parts[0])
        if len(parts) == 4 and lowered[1:] == ["oauth2", "v2.0", "token"]:
            self._count("entra.token")
            return self._token(request, parts[0])
        return _json_response(404, {"error": {"code": "NotFound", "message": "No emulated endpoint here."}})

    # ------------------------------------------------------------------ admin

    def _admin(self, request: _Request, parts: list[str]) -> _Response:
        route = (request.method, "/".join(parts))
        try:
            if route == ("GET", "outbox"):
                return _json_response(200, self.outbox)
            if route == ("GET", "stats"):
                return _json_response(200, self.stats)
            if request.method != "POST":
                return _json_response(
                    404, {"error": f"no admin endpoint {request.method} /_emulator/{route[1]}"}
                )
            payload = json.loads(request.body or b"{}")
            if route[1] == "reset":
                self.reset()
            elif route[1] == "expire-tokens":
                self.expire_tokens()
            elif route[1] == "apps":
                self._apply_app(_json_object(payload))
            elif route[1] == "app-secret":
                self._apply_app_secret(_json_object(payload))
            elif route[1] == "app-credentials":
                return _json_response(200, {"keyId": self._apply_app_credential(_json_object(payload))})
            elif route[1] == "secret-properties":
                return _json_response(200, {"version": self._apply_secret_properties(_json_object(payload))})
            elif route[1] == "mailboxes":
                self._apply_mailbox(_json_object(payload))
            elif route[1] == "scope":
                body = _json_object(payload)
                if not isinstance(body.get("inScope"), bool):
                    raise ValueError("inScope is required and must be true or false")
                self.set_exchange_scope(_required_str(body, "address"), body["inScope"])
            elif route[1] == "secrets":
                return _json_response(200, {"version": self._apply_secret(_json_object(payload))})
            elif route[1] == "faults":
                self._apply_fault(_json_object(payload))
            else:
                return _json_response(404, {"error": f"no admin endpoint POST /_emulator/{route[1]}"})
        except (ValueError, TypeError, KeyError) as exc:
            # json.JSONDecodeError is a ValueError. Messages name fields, never secret values.
            return _json_response(400, {"error": str(exc)})
        return _json_response(200, {"ok": True})

    # ------------------------------------------------------------------ Entra ID

    def _known_tenant(self, tenant: str) -> bool:
        with self._lock:
            return tenant.lower() == DEFAULT_TENANT_ID or any(t == tenant.lower() for t, _ in self._apps)

    def _entra_error(
        self,
        request: _Request,
        status: int,
        error: str,
        code: int,
        description: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> _Response:
        """Entra's OAuth error JSON: error, "AADSTSnnn: ..." description, error_codes, timestamp, ids."""
        now = _utcnow()
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        trace_id = str(uuid.uuid4())
        # Entra echoes the client's correlation id (MSAL sends client-request-id).
        correlation_id = request.header("client-request-id") or str(uuid.uuid4())
        payload = {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        }
        return _json_response(status, payload, [("client-request-id", correlation_id), *headers])

    def _entra_fault(self, request: _Request, fault: _Fault) -> _Response:
        assert fault.status is not None
        return self._entra_error(
            request,
            fault.status,
            fault.code or "temporarily_unavailable",
            90033,
            fault.message or "A transient error has occurred. Please try again.",
            _retry_after_headers(fault.retry_after),
        )

    def _tenant_not_found(self, request: _Request, tenant: str) -> _Response:
        return self._entra_error(
            request,
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
            "into the correct cloud. Check with your subscription administrator, this may happen if there "
            "are no active subscriptions for the tenant.",
        )

    def _openid_configuration(self, request: _Request, tenant: str) -> _Response:
        fault = self._next_fault("entra.openid")
        if fault is not None:
            return self._entra_fault(request, fault)
        if not self._known_tenant(tenant):
            return self._tenant_not_found(request, tenant)
        base = f"{self.url}/{tenant}"
        config = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "tid",
                "ver",
                "oid",
                "roles",
            ],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        return _json_response(200, config)

    def _jwks(self, request: _Request, tenant: str) -> _Response:
        if not self._known_tenant(tenant):
            return self._tenant_not_found(request, tenant)
        jwk = json.loads(RSAAlgorithm.to_jwk(self._public_key))
        jwk.update(
            {"kid": self._key_id, "x5t": self._key_id, "use": "sig", "issuer": f"{self.url}/{tenant}/v2.0"}
        )
        return _json_response(200, {"keys": [jwk]})

    def _token(self, request: _Request, tenant: str) -> _Response:
        """Client credentials grant, with Entra's status codes and AADSTS errors."""
        if request.method != "POST":
            return self._entra_error(
                request,
                405,
                "invalid_request",
                900561,
                f"The endpoint only accepts POST, OPTIONS requests. Received a {request.method} request.",
            )
        fault = self._next_fault("entra.token")
        if fault is not None:
            return self._entra_fault(request, fault)
        if not self._known_tenant(tenant):
            return self._tenant_not_found(request, tenant)
        form = {key: values[0] for key, values in parse_qs(request.body.decode("utf-8", "replace")).items()}
        basic_id, basic_secret = _basic_credentials(request)
        client_id = form.get("client_id") or basic_id
        client_secret = form.get("client_secret") or basic_secret
        grant_type = form.get("grant_type")
        scope = form.get("scope")

        for name, value in (("grant_type", grant_type), ("client_id", client_id), ("scope", scope)):
            if not value:
                return self._entra_error(
                    request,
                    400,
                    "invalid_request",
                    900144,
                    f"The request body must contain the following parameter: '{name}'.",
                )
        assert grant_type is not None and client_id is not None and scope is not None
        if grant_type != "client_credentials":
            return self._entra_error(
                request,
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'. The emulator supports "
                "client_credentials only.",
            )
        scopes = scope.split()
        not_default = [s for s in scopes if not s.endswith("/.default")]
        if not_default:
            # Today's Entra answers client-credential scopes without /.default with AADSTS1002012.
            return self._entra_error(
                request,
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {not_default[0]} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        resources = {s[: -len("/.default")] for s in scopes}
        if len(resources) != 1 or not next(iter(resources)):
            return self._entra_error(
                request,
                400,
                "invalid_scope",
                70011,
                "The provided request must include a 'scope' input parameter. The provided value for the "
                f"input parameter 'scope' is not valid. The scope {scope} is not valid. The scope format is "
                "invalid. Scope must be in a valid URI form <https://example/scope> or a valid Guid "
                "<guid/scope>.",
            )
        resource = next(iter(resources))

        with self._lock:
            app = self._apps.get((tenant.lower(), client_id.lower()))
            app = copy.copy(app) if app is not None else None
        if app is None:
            return self._entra_error(
                request,
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. This "
                "can happen if the application has not been installed by the administrator of the tenant or "
                "consented to by any user in the tenant. You may have sent your authentication request to "
                "the wrong tenant.",
            )
        if not client_secret:
            return self._entra_error(
                request,
                401,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' "
                "grant type.",
            )
        if client_secret != app.secret:
            return self._entra_error(
                request,
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{app.client_id}'.",
            )
        if app.secret_expired or (app.secret_end is not None and app.secret_end <= _utcnow()):
            return self._entra_error(
                request,
                401,
                "invalid_client",
                7000222,
                f"The provided client secret keys for app '{app.client_id}' are expired. Visit the Azure "
                "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using "
                "certificate credentials for added security: https://aka.ms/certCreds.",
            )
        audience = _KNOWN_RESOURCES.get(resource)
        if audience is None:
            return self._entra_error(
                request,
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named {tenant}. This "
                "can happen if the application has not been installed by the administrator of the tenant or "
                "consented to by any user in the tenant. You might have sent your authentication request to "
                "the wrong tenant.",
            )
        # Only Graph reads app roles here; Key Vault authorizes by its own access policies / RBAC.
        roles = app.roles if audience == GRAPH_RESOURCE else ()
        token, _ = self._issue_token(audience, app.tenant_id, app.client_id, roles)
        return _json_response(
            200,
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_SECONDS,
                "ext_expires_in": TOKEN_LIFETIME_SECONDS,
                "access_token": token,
            },
        )

    # ------------------------------------------------------------------ managed identity (App Service)

    def _msi_token(self, request: _Request) -> _Response:
        """App Service's managed identity endpoint (api-version 2019-08-01), as MSAL calls it."""

        def error(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> _Response:
            # MSAL reads "statusCode" and "message" from this endpoint's error bodies.
            return _json_response(
                status,
                {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())},
                headers,
            )

        if request.method != "GET":
            return error(405, "The requested HTTP method is not supported. Use GET.")
        header = request.header("X-IDENTITY-HEADER")
        if header is None:
            return error(400, "The X-IDENTITY-HEADER header is missing from the request.")
        if header != self.identity_header:
            return error(401, "The X-IDENTITY-HEADER header does not match the expected value.")
        if request.param("api-version") != MSI_API_VERSION:
            return error(400, f"The api-version query parameter must be '{MSI_API_VERSION}'.")
        resource = request.param("resource")
        if not resource:
            return error(400, "The resource query parameter is missing or empty.")
        fault = self._next_fault("msi.token")
        if fault is not None:
            assert fault.status is not None
            return error(
                fault.status,
                fault.message or HTTPStatus(fault.status).phrase,
                _retry_after_headers(fault.retry_after),
            )
        client_id = request.param("client_id") or SYSTEM_IDENTITY_CLIENT_ID
        token, expires = self._issue_token(resource, self.default_tenant_id, client_id, ())
        return _json_response(
            200,
            {
                "access_token": token,
                "expires_on": str(expires),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            },
        )

    # ------------------------------------------------------------------ Key Vault

    def _keyvault(self, request: _Request, parts: list[str]) -> _Response:
        request_id = str(uuid.uuid4())
        base_headers = [
            ("x-ms-request-id", request_id),
            ("x-ms-keyvault-service-version", "1.9.0.0"),
            ("x-ms-keyvault-region", "local-emulator"),
        ]
        challenge = (
            "WWW-Authenticate",
            f'Bearer authorization="https://login.microsoftonline.com/{self.default_tenant_id}", '
            f'resource="{VAULT_RESOURCE}"',
        )

        def error(
            status: int,
            code: str,
            message: str,
            inner: str | None = None,
            extra: Iterable[tuple[str, str]] = (),
        ) -> _Response:
            body: dict[str, Any] = {"code": code, "message": message}
            if inner:
                body["innerError"] = {"code": inner}
            return _json_response(status, {"error": body}, [*base_headers, *extra])

        # The SDK's first request carries no token on purpose: the 401 challenge tells it the tenant
        # and resource to ask a token for.
        token = _bearer(request)
        if not token:
            return error(
                401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", extra=[challenge]
            )
        outcome, claims = self._check_token(token)
        if outcome == "revoked":
            # Key Vault evaluates revocation continuously (CAE): the challenge carries claims, and the
            # SDK answers it with a token fetched past its cache. A plain 401 would leave MSAL's cached,
            # revoked token in use for good.
            return error(
                401,
                "Unauthorized",
                "Continuous access evaluation resulted in challenge with result: InteractionRequired and "
                "code: "
                "TokenIssuedBeforeRevocationTimestamp",
                extra=[
                    (
                        challenge[0],
                        challenge[1] + ', error="insufficient_claims", claims="' + _revocation_claims() + '"',
                    )
                ],
            )
        if outcome == "expired":
            return error(401, "Unauthorized", "Error validating token: IDX10223", extra=[challenge])
        if outcome != "ok":
            return error(401, "Unauthorized", "Error validating token: IDX10511", extra=[challenge])
        if claims.get("aud") not in _VAULT_AUDIENCES:
            return error(
                401,
                "Unauthorized",
                f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, found: {claims.get('aud')}.",
                extra=[challenge],
            )
        # Counted once authenticated: the SDK's bare challenge probe and its CAE retry are protocol
        # overhead, and whether they happen depends on process-wide SDK caches, not on the caller.
        self._count("keyvault.getSecret")
        if not request.param("api-version"):
            return error(400, "BadParameter", "The api-version query parameter is missing.")
        fault = self._next_fault("keyvault.getSecret")
        if fault is not None:
            assert fault.status is not None
            default = (
                ("Throttled", "Request was not processed because too many requests were received.")
                if fault.status == 429
                else (HTTPStatus(fault.status).phrase.replace(" ", ""), HTTPStatus(fault.status).phrase + ".")
            )
            return error(
                fault.status,
                fault.code or default[0],
                fault.message or default[1],
                extra=_retry_after_headers(fault.retry_after),
            )
        if request.method != "GET":
            return error(
                405, "BadParameter", f"The emulator serves GET on secrets only, not {request.method}."
            )
        if not parts or len(parts) > 2:
            return error(
                404, "BadParameter", "The emulator serves /secrets/{name}[/{version}|/versions] only."
            )
        name = parts[0]
        if not _SECRET_NAME.match(name):
            return error(400, "BadParameter", f"The request URI contains an invalid name: {name}")
        with self._lock:
            versions = list(self._secrets.get(name.lower(), []))
        if len(parts) == 2 and parts[1].lower() == "versions":
            items = [
                {
                    "id": f"{self.url}/secrets/{v.name}/{v.version}",
                    "attributes": self._secret_attributes(v),
                    "tags": {},
                }
                for v in versions
            ]
            return _json_response(200, {"value": items, "nextLink": None}, base_headers)
        wanted = parts[1] if len(parts) == 2 else None
        found = (
            versions[-1]
            if versions and wanted is None
            else next((v for v in versions if v.version == wanted), None)
        )
        if found is None:
            shown = name if wanted is None else f"{name}/{wanted}"
            return error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {shown} was not found in this key vault. If you recently deleted "
                "this secret you may be able to recover it using the correct recovery command. For help "
                "resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
            )
        if not found.enabled:
            return error(
                403, "Forbidden", "Operation get is not allowed on a disabled secret.", inner="SecretDisabled"
            )
        bundle = {
            "value": found.value,
            "id": f"{self.url}/secrets/{found.name}/{found.version}",
            "attributes": self._secret_attributes(found),
            "tags": {},
        }
        return _json_response(200, bundle, base_headers)

    @staticmethod
    def _secret_attributes(version: _SecretVersion) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.created,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        }
        if version.expires_on is not None:
            attributes["exp"] = version.expires_on
        return attributes

    # ------------------------------------------------------------------ Microsoft Graph

    def _graph_error(
        self, ids: _GraphIds, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> _Response:
        """Graph's error envelope, with innerError date and request ids."""
        payload = {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": _utcnow().strftime("%Y-%m-%dT%H:%M:%S"),
                    "request-id": ids.request_id,
                    "client-request-id": ids.client_request_id,
                },
            }
        }
        return _json_response(status, payload, [*ids.headers(), *headers])

    def _graph_unauthorized(self, ids: _GraphIds, message: str) -> _Response:
        challenge = (
            "WWW-Authenticate",
            'Bearer realm="", authorization_uri='
            f'"https://login.microsoftonline.com/common/oauth2/authorize", client_id="{GRAPH_APP_ID}"',
        )
        return self._graph_error(ids, 401, "InvalidAuthenticationToken", message, [challenge])

    def _graph_send_mail(self, request: _Request, user: str) -> _Response:
        ids = _GraphIds.of(request)
        if request.method != "POST":
            return self._graph_error(
                ids,
                405,
                "Request_BadRequest",
                f"The HTTP method '{request.method}' is not allowed for sendMail.",
            )
        token = _bearer(request)
        if not token:
            return self._graph_unauthorized(ids, "Access token is empty.")
        outcome, claims = self._check_token(token)
        if outcome == "malformed":
            return self._graph_unauthorized(ids, "CompactToken parsing failed with error code: 80049217")
        if outcome in ("expired", "revoked"):
            return self._graph_unauthorized(ids, "Lifetime validation failed, the token is expired.")
        if outcome != "ok":
            return self._graph_unauthorized(ids, "Access token validation failure.")
        if claims.get("aud") not in _GRAPH_AUDIENCES:
            return self._graph_unauthorized(ids, "Access token validation failure. Invalid audience.")
        roles = claims.get("roles") or []
        if "Mail.Send" not in roles:
            return self._graph_error(
                ids, 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."
            )
        with self._lock:
            mailbox = self._mailboxes.get(user.lower()) or next(
                (m for m in self._mailboxes.values() if m.object_id == user.lower()), None
            )
            mailbox = copy.copy(mailbox) if mailbox is not None else None
        if mailbox is None:
            return self._graph_error(ids, 404, "ErrorInvalidUser", f"The requested user '{user}' is invalid.")
        if not mailbox.in_exchange_scope:
            # The "[RAOP]" wording is what tenants with an application access policy or RBAC for
            # Applications report; Graph's own docs show the shorter "Access to OData is disabled.".
            return self._graph_error(
                ids,
                403,
                "ErrorAccessDenied",
                "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy "
                "settings.",
            )
        if not mailbox.rest_enabled:
            return self._graph_error(ids, 403, "ErrorAccessDenied", "Access to OData is disabled.")
        fault = self._next_fault("graph.sendMail")
        if fault is not None:
            assert fault.status is not None
            code, message = _DEFAULT_FAULT_ERRORS.get(
                fault.status,
                (HTTPStatus(fault.status).phrase.replace(" ", ""), HTTPStatus(fault.status).phrase),
            )
            return self._graph_error(
                ids,
                fault.status,
                fault.code or code,
                fault.message or message,
                _retry_after_headers(fault.retry_after),
            )
        problem, parsed = _validate_send_mail(request, mailbox)
        if problem is not None:
            status, code, message = problem
            return self._graph_error(ids, status, code, message)
        assert parsed is not None
        with self._lock:
            self._outbox.append(
                {"sender": mailbox.address, "message": parsed, "receivedAt": _utcnow().isoformat()}
            )
        return _Response(202, b"", ids.headers())

    def _graph_application(self, request: _Request, app_id: str) -> _Response:
        """GET /v1.0/applications(appId='{id}'): the app registration, passwordCredentials included.

        App-only, Graph wants Application.Read.All (or Application.ReadWrite.*/Directory.Read.All) in
        the token's roles, and answers 403 Authorization_RequestDenied without it.
        """
        ids = _GraphIds.of(request)
        if request.method != "GET":
            return self._graph_error(
                ids, 405, "Request_BadRequest", f"The HTTP method '{request.method}' is not allowed."
            )
        token = _bearer(request)
        if not token:
            return self._graph_unauthorized(ids, "Access token is empty.")
        outcome, claims = self._check_token(token)
        if outcome in ("expired", "revoked"):
            return self._graph_unauthorized(ids, "Lifetime validation failed, the token is expired.")
        if outcome != "ok" or claims.get("aud") not in _GRAPH_AUDIENCES:
            return self._graph_unauthorized(ids, "Access token validation failure.")
        readers = {"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All"}
        if not readers & set(claims.get("roles") or []):
            return self._graph_error(
                ids, 403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
            )
        fault = self._next_fault("graph.applications")
        if fault is not None:
            assert fault.status is not None
            code, message = _DEFAULT_FAULT_ERRORS.get(
                fault.status, (HTTPStatus(fault.status).phrase.replace(" ", ""), HTTPStatus(fault.status).phrase)
            )
            return self._graph_error(
                ids, fault.status, fault.code or code, fault.message or message, _retry_after_headers(fault.retry_after)
            )
        with self._lock:
            app = next((a for a in self._apps.values() if a.client_id.lower() == app_id.lower()), None)
            app = copy.deepcopy(app) if app is not None else None
        if app is None:
            return self._graph_error(
                ids,
                404,
                "Request_ResourceNotFound",
                f"Resource '{app_id}' does not exist or one of its queried reference-property objects are not "
                "present.",
            )
        resource: dict[str, Any] = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"app:{app.client_id}".lower())),
            "appId": app.client_id,
            "displayName": "Graph Mail Relay",
            "passwordCredentials": [
                {
                    "customKeyIdentifier": None,
                    "displayName": c.display_name,
                    "endDateTime": _graph_datetime(c.end),
                    "hint": c.hint,
                    "keyId": c.key_id,
                    "secretText": None,
                    "startDateTime": _graph_datetime(c.start),
                }
                for c in app.credentials
            ],
        }
        select = [f.strip() for f in (request.param("$select") or "").split(",") if f.strip()]
        if select:
            resource = {k: v for k, v in resource.items() if k in select}
        context = f"https://graph.microsoft.com/v1.0/$metadata#applications({','.join(select)})/$entity"
        return _json_response(200, {"@odata.context": context, **resource}, ids.headers())


def _password_credential(
    secret: str | None, end: datetime | None, display_name: str | None = "mailrelay"
) -> _PasswordCredential:
    start = _utcnow().replace(microsecond=0)
    if end is not None and end.tzinfo is None:
        raise ValueError("secret_end must be timezone-aware")
    return _PasswordCredential(
        key_id=str(uuid.uuid4()),
        display_name=display_name,
        start=start,
        end=end if end is not None else start + DEFAULT_SECRET_LIFETIME,
        hint=secret[:3] if secret else None,
    )


def _graph_datetime(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _optional_datetime(entry: Mapping[str, Any], key: str) -> datetime | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be an ISO 8601 string or null")
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass
class _GraphIds:
    request_id: str
    client_request_id: str

    @classmethod
    def of(cls, request: _Request) -> _GraphIds:
        request_id = str(uuid.uuid4())
        # Graph echoes the caller's client-request-id, or reuses its own request id.
        return cls(request_id, request.header("client-request-id") or request_id)

    def headers(self) -> list[tuple[str, str]]:
        return [("request-id", self.request_id), ("client-request-id", self.client_request_id)]


_Problem = tuple[int, str, str]

_UNREADABLE: _Problem = (
    400,
    "BadRequest",
    "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid "
    "JSON format.",
)


def _unreadable_value(where: str, expected: str) -> _Problem:
    return 400, "RequestBodyRead", f"An unexpected value was found for {where}; {expected} was expected."


def _unknown_property(name: str, type_name: str) -> _Problem:
    message = (
        f"The property '{name}' does not exist on type '{type_name}'. Make sure to only use property names "
        "that are defined by the type or mark the type as open type."
    )
    return 400, "RequestBodyRead", message


def _validate_send_mail(
    request: _Request, mailbox: _Mailbox
) -> tuple[_Problem | None, dict[str, Any] | None]:
    """Validate a sendMail body as Graph does: OData reading first, then Exchange's checks.

    Returns (problem, None) or (None, the posted JSON body).
    """
    if len(request.body) > GRAPH_MAX_REQUEST_BYTES:
        return (413, "BadRequest", "The maximum request length supported is 4MB."), None
    content_type = (request.header("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _UNREADABLE, None
    try:
        payload = json.loads(request.body)
    except ValueError:
        return _UNREADABLE, None
    if not isinstance(payload, dict):
        return _UNREADABLE, None
    for key in payload:
        if key not in ("message", "saveToSentItems"):
            message = (
                f"The parameter '{key}' in the request payload is not a valid parameter for the operation "
                "'sendMail'."
            )
            return (400, "RequestBodyRead", message), None
    if payload.get("message") is None:
        return (400, "ErrorInvalidParameter", "The value of the parameter 'Message' is empty."), None
    if not isinstance(payload.get("saveToSentItems", True), bool):
        message = (
            "Cannot convert a primitive value to the expected type 'Edm.Boolean'. See the inner exception "
            "for more details."
        )
        return (400, "RequestBodyRead", message), None
    problem = _read_message(payload["message"]) or _exchange_checks(payload["message"], mailbox)
    if problem is not None:
        return problem, None
    return None, payload


def _read_message(message: Any) -> _Problem | None:
    """OData deserialization of microsoft.graph.message: property names, types, enums, binary."""
    if not isinstance(message, dict):
        return _unreadable_value("the parameter 'Message'", "an object")
    for key in message:
        if key not in _MESSAGE_PROPERTIES:
            return _unknown_property(key, "microsoft.graph.message")
    body = message.get("body")
    if body is not None:
        if not isinstance(body, dict):
            return _unreadable_value("the property 'body'", "an object")
        content_type = body.get("contentType", "text")
        if not isinstance(content_type, str) or content_type.lower() not in ("text", "html"):
            return 400, "RequestBodyRead", f"Requested value '{content_type}' was not found."
    importance = message.get("importance")
    if importance is not None and (
        not isinstance(importance, str) or importance.lower() not in ("low", "normal", "high")
    ):
        return 400, "RequestBodyRead", f"Requested value '{importance}' was not found."
    for key in (*_RECIPIENT_LISTS, "from", "sender"):
        problem = _read_recipients(key, message.get(key))
        if problem is not None:
            return problem
    headers = message.get("internetMessageHeaders")
    if headers is not None:
        if not isinstance(headers, list) or not all(isinstance(h, dict) for h in headers):
            return _unreadable_value("the property 'internetMessageHeaders'", "a collection of objects")
        for header in headers:
            for name in header:
                if name not in ("name", "value"):
                    return _unknown_property(name, "microsoft.graph.internetMessageHeader")
    attachments = message.get("attachments")
    if attachments is not None:
        if not isinstance(attachments, list):
            return _unreadable_value("the property 'attachments'", "a collection")
        for attachment in attachments:
            problem = _read_attachment(attachment)
            if problem is not None:
                return problem
    return None


def _read_recipients(key: str, value: Any) -> _Problem | None:
    if value is None:
        return None
    single = key in ("from", "sender")
    if not single and not isinstance(value, list):
        return _unreadable_value(f"the property '{key}'", "a collection")
    for item in [value] if single else value:
        if not isinstance(item, dict):
            return _unreadable_value(f"the property '{key}'", "an object of type 'microsoft.graph.recipient'")
        for name in item:
            if name != "emailAddress":
                return _unknown_property(name, "microsoft.graph.recipient")
        address = item.get("emailAddress")
        if address is None:
            continue
        if not isinstance(address, dict):
            return _unreadable_value("the property 'emailAddress'", "an object")
        for name in address:
            if name not in ("address", "name"):
                return _unknown_property(name, "microsoft.graph.emailAddress")
    return None


def _read_attachment(attachment: Any) -> _Problem | None:
    if not isinstance(attachment, dict):
        return _unreadable_value("the property 'attachments'", "an object")
    odata_type = attachment.get("@odata.type")
    if odata_type is None:
        # Without @odata.type Graph reads the abstract base type, which has no contentBytes.
        base_properties = ("id", "name", "contentType", "size", "isInline", "lastModifiedDateTime")
        extra = next((key for key in attachment if key not in base_properties), None)
        if extra is not None:
            return _unknown_property(extra, "microsoft.graph.attachment")
        return 422, "UnprocessableType", "Cannot process input of abstract type 'microsoft.graph.attachment'"
    if not isinstance(odata_type, str) or odata_type.lower().lstrip("#") != _FILE_ATTACHMENT_TYPE.lstrip("#"):
        message = (
            f'Invalid OData type specified: "{odata_type}". The emulator accepts '
            "#microsoft.graph.fileAttachment only."
        )
        return 400, "RequestBodyRead", message
    for key in attachment:
        if key not in _FILE_ATTACHMENT_PROPERTIES:
            return _unknown_property(key, "microsoft.graph.fileAttachment")
    content = attachment.get("contentBytes")
    if content is not None:
        try:
            if not isinstance(content, str):
                raise ValueError("contentBytes is not a string")
            base64.b64decode(content, validate=True)
        except (ValueError, binascii.Error):
            shown = content if isinstance(content, str) and len(content) <= 40 else str(content)[:40] + "..."
            return (
                400,
                "RequestBodyRead",
                f"Cannot convert the literal '{shown}' to the expected type 'Edm.Binary'.",
            )
    return None


def _exchange_checks(message: dict[str, Any], mailbox: _Mailbox) -> _Problem | None:
    """What Exchange refuses once the message is read: headers, attachments, recipients, send-as."""
    headers = message.get("internetMessageHeaders") or []
    if len(headers) > 5:
        # Graph's answer as reported by SDK users (msgraph-sdk-dotnet#2208) and in production use.
        message_text = "The number of internet message headers is invalid: it should be less or equal to 5."
        return 400, "InvalidInternetMessageHeaderCollection", message_text
    for header in headers:
        name = header.get("name")
        if not isinstance(name, str) or not name.lower().startswith("x-"):
            message_text = f"The internet message header name '{name}' should start with 'x-' or 'X-'."
            return 400, "InvalidInternetMessageHeader", message_text
    for attachment in message.get("attachments") or []:
        if not attachment.get("name") or attachment.get("contentBytes") is None:
            return 400, "ErrorRequiredPropertyMissing", "Required property is missing."
    count = 0
    for key in _RECIPIENT_LISTS:
        for recipient in message.get(key) or []:
            address = (recipient.get("emailAddress") or {}).get("address")
            if not isinstance(address, str) or not _SMTP_ADDRESS.match(address.strip()):
                message_text = (
                    f"At least one recipient is not valid., Recipient '{address or ''}' is not resolved. All "
                    "recipients must be resolved before a message can be submitted."
                )
                return 400, "ErrorInvalidRecipients", message_text
            if key != "replyTo":
                count += 1
    if count == 0:
        message_text = (
            "At least one recipient is not valid., A message can't be sent because it contains no recipients."
        )
        return 400, "ErrorInvalidRecipients", message_text
    for key in ("from", "sender"):
        address = ((message.get(key) or {}).get("emailAddress") or {}).get("address")
        if address is not None and str(address).strip().lower() != mailbox.address.lower():
            message_text = (
                "The user account which was used to submit this request does not have the right to send mail "
                "on behalf of the specified sending account., Cannot submit message."
            )
            return 403, "ErrorSendAsDenied", message_text
    return None


def _revocation_claims() -> str:
    """The base64 claims of a CAE challenge: "a token issued before now is no longer accepted"."""
    claims = {"access_token": {"nbf": {"essential": True, "value": str(int(time.time()))}}}
    # A space after each "{" keeps '{"' (base64 "eyJ", the prefix log scanners, ours included, flag as a
    # JWT) out of the encoding: the SDKs log this header, and it is not a token.
    text = json.dumps(claims).replace('{"', '{ "')
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _required_str(entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is required and must be a non-empty string")
    return value


def _optional_bool(entry: Mapping[str, Any], key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _json_object(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    return payload


def _basic_credentials(request: _Request) -> tuple[str | None, str | None]:
    """client_secret_basic: Authorization: Basic base64(client_id:client_secret)."""
    scheme, _, value = (request.header("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):
        return None, None
    client_id, _, secret = decoded.partition(":")
    return unquote(client_id) or None, unquote(secret) or None


# ---------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS handshake failures and dropped connections: noise for a local emulator.
        logger.debug("connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    server_version = "GraphMailRelayEmulator/1.0"
    timeout = 60  # idle keep-alive connections are closed, so handler threads do not pile up
    # Headers and body leave in separate writes; with Nagle on, the body waits for the client's delayed
    # ACK (~40 ms a response on Linux).
    disable_nagle_algorithm = True
    server: _Server

    # http.server dispatches on do_<METHOD>; every method goes through the same router.
    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except _BodyTooLarge:
            self._send(
                _json_response(
                    413,
                    {"error": {"code": "RequestEntityTooLarge", "message": "The request body is too large."}},
                ),
                close=True,
            )
            return
        request = _Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.emulator._dispatch(request)
        except Exception:
            logger.exception("emulator failure on %s %s", self.command, split.path)
            response = _json_response(
                500, {"error": {"code": "EmulatorError", "message": "The emulator failed; see its log."}}
            )
        self._send(response)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > _MAX_READ_BYTES:
                    raise _BodyTooLarge
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_READ_BYTES:
            raise _BodyTooLarge
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, response: _Response, close: bool = False) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if close or response.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if response.body and self.command != "HEAD":
            self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Path only: query strings and bodies can carry identifiers and secrets.
        logger.info("%s %s -> %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server's own notes (malformed request lines, timeouts); debug only.
        logger.debug("http: %s", format % args)


# ---------------------------------------------------------------------- command line


def _write_ready_file(path: Path, text: str) -> None:
    # Written whole, then renamed, so a reader never sees half a line.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text + "\n", encoding="utf-8")
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.emulator",
        description="Local emulator of Entra ID, Microsoft Graph and Key Vault.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--seed", type=Path, help="JSON file with apps, mailboxes, secrets (and faults)")
    parser.add_argument("--ready-file", type=Path, help="where to write the ready JSON line")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    emulator = Emulator(host=args.host, port=args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.seed is not None:
            emulator.load_seed(json.loads(args.seed.read_text(encoding="utf-8")))
        emulator.start()
        ready = json.dumps(
            {
                "url": emulator.url,
                "caCertPath": emulator.ca_cert_path,
                "identityHeader": emulator.identity_header,
                "msiEndpoint": emulator.msi_endpoint,
            }
        )
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, ready)
        print(ready, flush=True)
        stop.wait()
        logger.info("stopping")
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
