"""The relay's settings: app settings in Azure, environment variables locally.

Settings are read on first use, never at import: the Functions host imports function_app.py to index
it, and an error there hides every function ("0 functions found"). A missing or malformed setting
raises one `SettingsError` that names it, so the log line says exactly what to fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from shared.retries import RetryPolicy

DEFAULT_QUEUE_NAME: Final = "mail-outbox"
DEFAULT_GRAPH_BASE_URL: Final = "https://graph.microsoft.com"
DEFAULT_AUTHORITY_HOST: Final = "https://login.microsoftonline.com"

# Every app setting the deployed relay reads. infra/ must set each of them (a test checks the
# Bicep), so adding a setting here without wiring it there fails CI, not production.
DEPLOYED_SETTINGS: Final = (
    "GRAPH_TENANT_ID",
    "GRAPH_CLIENT_ID",
    "KEY_VAULT_URI",
    "GRAPH_CLIENT_SECRET_NAME",
    "ALLOWED_SENDERS",
    "MAIL_QUEUE_NAME",
    "AZURE_CLIENT_ID",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    # The retry budget for transient failures (shared/retries.py). SEND_RETRY_BASE_SECONDS is left out:
    # a tuning knob with a sound default (the local stack and the tests shorten it).
    "SEND_MAX_ATTEMPTS",
    "SEND_MAX_AGE_HOURS",
    # The idempotency ledger's table (shared/ledger.py).
    "AzureWebJobsStorage__tableServiceUri",
)

_ADDRESS = re.compile(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+\.[^@\s<>\"(),;:]+$")
_QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class SettingsError(RuntimeError):
    """A setting is missing or malformed. The message names the setting and the rule."""


@dataclass(frozen=True)
class StorageSettings:
    """How to reach the storage account that holds the queues.

    Either a connection string (Azurite locally) or an identity-based queue service URI (Azure),
    mirroring the Functions host's `AzureWebJobsStorage` connection so both use one account.
    """

    connection_string: str | None
    queue_service_uri: str | None
    client_id: str | None  # user-assigned identity for the identity-based connection
    table_service_uri: str | None = None  # identity-based Table endpoint (the idempotency ledger)


@dataclass(frozen=True)
class Settings:
    tenant_id: str
    client_id: str
    key_vault_uri: str
    secret_name: str
    allowed_senders: frozenset[str]  # lower-cased: Exchange addresses are case-insensitive
    queue_name: str
    storage: StorageSettings
    managed_identity_client_id: str | None
    graph_base_url: str
    authority_host: str
    ca_bundle: str | None  # extra CA to trust (the local emulator, or a TLS-inspecting proxy)
    # The retry budget and backoff for transient failures (shared/retries.py has the rules).
    max_attempts: int = 8
    max_age_hours: float = 24.0
    retry_base_seconds: float = 30.0

    @property
    def retry_policy(self) -> RetryPolicy:
        from datetime import timedelta

        from shared.retries import RetryPolicy

        return RetryPolicy(
            max_attempts=self.max_attempts,
            max_age=timedelta(hours=self.max_age_hours),
            base_delay=self.retry_base_seconds,
        )

    @property
    def poison_queue_name(self) -> str:
        # The Functions host's own name for the dead-letter queue, so raw messages it moves after
        # maxDequeueCount and the relay's envelopes end up side by side.
        return f"{self.queue_name}-poison"


def _required(env: Mapping[str, str], name: str, hint: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"Setting {name} is missing: {hint}.")
    return value


def _https_url(env: Mapping[str, str], name: str, value: str) -> str:
    if not value.startswith("https://"):
        raise SettingsError(f"Setting {name} must be an https:// URL, got {value!r}.")
    return value.rstrip("/")


def parse_senders(value: str, name: str = "ALLOWED_SENDERS") -> frozenset[str]:
    senders = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in senders if not _ADDRESS.match(s)]
    if bad:
        raise SettingsError(f"Setting {name} holds something that is not an email address: {bad[0]!r}.")
    if not senders:
        raise SettingsError(f"Setting {name} is empty: list the mailboxes the relay may send as.")
    return frozenset(s.lower() for s in senders)


def _storage(env: Mapping[str, str]) -> StorageSettings:
    connection_string = env.get("AzureWebJobsStorage", "").strip() or None
    queue_uri = env.get("AzureWebJobsStorage__queueServiceUri", "").strip() or None
    if not connection_string and not queue_uri:
        raise SettingsError(
            "Setting AzureWebJobsStorage is missing: set a connection string (locally) or "
            "AzureWebJobsStorage__queueServiceUri with a managed identity (in Azure)."
        )
    return StorageSettings(
        connection_string=connection_string,
        queue_service_uri=queue_uri.rstrip("/") if queue_uri else None,
        client_id=env.get("AzureWebJobsStorage__clientId", "").strip() or None,
        table_service_uri=(env.get("AzureWebJobsStorage__tableServiceUri", "").strip().rstrip("/") or None),
    )


def _number(env: Mapping[str, str], name: str, default: float, *, low: float, high: float, whole: bool) -> float:
    """A numeric setting within [low, high]; blank means the default."""
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        number = None
    kind = "a whole number" if whole else "a number"
    if number is None or not low <= number <= high:
        raise SettingsError(f"Setting {name} must be {kind} from {low:g} to {high:g}, got {value!r}.")
    return number


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting the send path needs; raise SettingsError naming the first bad one."""
    env = os.environ if env is None else env
    tenant_id = _required(env, "GRAPH_TENANT_ID", "the directory (tenant) id of the app registration")
    if not _GUID.match(tenant_id) and "." not in tenant_id:
        raise SettingsError(f"Setting GRAPH_TENANT_ID must be a tenant GUID or domain, got {tenant_id!r}.")
    client_id = _required(env, "GRAPH_CLIENT_ID", "the application (client) id of the app registration")
    if not _GUID.match(client_id):
        raise SettingsError(f"Setting GRAPH_CLIENT_ID must be a GUID, got {client_id!r}.")
    key_vault_uri = _https_url(
        env, "KEY_VAULT_URI", _required(env, "KEY_VAULT_URI", "the vault's URI, https://<name>.vault.azure.net/")
    )
    secret_name = _required(env, "GRAPH_CLIENT_SECRET_NAME", "the Key Vault secret holding the client secret")
    allowed = parse_senders(
        _required(env, "ALLOWED_SENDERS", "a comma-separated list of mailboxes the relay may send as")
    )
    queue_name = env.get("MAIL_QUEUE_NAME", "").strip() or DEFAULT_QUEUE_NAME
    if not _QUEUE_NAME.match(queue_name):
        raise SettingsError(
            f"Setting MAIL_QUEUE_NAME must be a valid queue name (3-63 lower-case letters, digits, "
            f"single hyphens), got {queue_name!r}."
        )
    ca_bundle = env.get("MAILRELAY_CA_BUNDLE", "").strip() or None
    if ca_bundle and not os.path.isfile(ca_bundle):
        raise SettingsError(f"Setting MAILRELAY_CA_BUNDLE names a file that does not exist: {ca_bundle!r}.")
    return Settings(
        tenant_id=tenant_id,
        client_id=client_id,
        key_vault_uri=key_vault_uri,
        secret_name=secret_name,
        allowed_senders=allowed,
        queue_name=queue_name,
        storage=_storage(env),
        managed_identity_client_id=env.get("AZURE_CLIENT_ID", "").strip() or None,
        graph_base_url=_https_url(
            env, "GRAPH_BASE_URL", env.get("GRAPH_BASE_URL", "").strip() or DEFAULT_GRAPH_BASE_URL
        ),
        authority_host=_https_url(
            env, "GRAPH_AUTHORITY_HOST", env.get("GRAPH_AUTHORITY_HOST", "").strip() or DEFAULT_AUTHORITY_HOST
        ),
        ca_bundle=ca_bundle,
        # A budget of 1 attempt means "never retry"; 100 attempts or 7 days is beyond any mail's use.
        max_attempts=int(_number(env, "SEND_MAX_ATTEMPTS", 8, low=1, high=100, whole=True)),
        max_age_hours=_number(env, "SEND_MAX_AGE_HOURS", 24.0, low=0.01, high=168, whole=False),
        retry_base_seconds=_number(env, "SEND_RETRY_BASE_SECONDS", 30.0, low=0.0, high=3600, whole=False),
    )

