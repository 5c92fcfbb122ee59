"""The emulator's shared vocabulary: the services and resources it plays, requests and responses, and the
small helpers several service modules use (bearer tokens, Retry-After, admin and seed field readers)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: The endpoints counted in :attr:`Emulator.stats`, and the services :meth:`Emulator.add_fault` targets.
SERVICES: tuple[str, ...] = (
    "entra.openid",
    "entra.token",
    "msi.token",
    "keyvault.getSecret",
    "keyvault.getCertificate",
    "graph.sendMail",
    "graph.applications",
    "graph.mailFolders",
    "graph.messages",
    "graph.drafts",
    "graph.upload",
)

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
VAULT_RESOURCE = "https://vault.azure.net"
# Key Vault's first-party app id; the real service names it in its AKV10022 audience errors.
VAULT_APP_ID = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"

#: Tenant used for the Key Vault challenge and managed identity tokens while no app is registered.
DEFAULT_TENANT_ID = "00000000-0000-4000-8000-000000000e1d"


class EmulatorError(RuntimeError):
    """Misuse of the emulator's own API (not an emulated service error)."""


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


# An error Graph answers: (status, code, message).
_Problem = tuple[int, str, str]


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


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


def _bearer(request: _Request) -> str:
    value = request.header("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


def _optional_datetime(entry: Mapping[str, Any], key: str) -> datetime | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be an ISO 8601 string or null")
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


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
