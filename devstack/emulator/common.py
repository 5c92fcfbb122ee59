"""The emulator's shared vocabulary: constants, the tenant's records (apps, mailboxes, secret versions),
requests and responses, and small helpers every service module uses."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

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
    "graph.mailFolders",
)

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
# Graph's addPassword: a client secret without an endDateTime lives two years.
DEFAULT_SECRET_LIFETIME = timedelta(days=730)
_UNSET: Any = object()
VAULT_RESOURCE = "https://vault.azure.net"
# Key Vault's first-party app id; the real service names it in its AKV10022 audience errors.
VAULT_APP_ID = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"

#: Tenant used for the Key Vault challenge and managed identity tokens while no app is registered.
DEFAULT_TENANT_ID = "00000000-0000-4000-8000-000000000e1d"


# Resources the emulated Entra knows, as accepted in a "<resource>/.default" scope, to the token aud.
_KNOWN_RESOURCES: dict[str, str] = {
    GRAPH_RESOURCE: GRAPH_RESOURCE,
    GRAPH_RESOURCE + "/": GRAPH_RESOURCE,
    GRAPH_APP_ID: GRAPH_RESOURCE,
    VAULT_RESOURCE: VAULT_RESOURCE,
    VAULT_RESOURCE + "/": VAULT_RESOURCE,
    VAULT_APP_ID: VAULT_RESOURCE,
}


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
    roles: tuple[str, ...]  # Entra consent: the application permissions granted tenant-wide (token roles)
    secret_expired: bool
    # The current secret's entry first; then any added with add_password_credential (listed only).
    credentials: list[_PasswordCredential] = field(default_factory=list)
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
