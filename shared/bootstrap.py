"""Builds the relay's real clients once per process and hands them out.

Every SDK import happens here, on first use, not when the Functions host indexes function_app.py.
Unit tests build `Relay` with fakes instead and never come here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.ledger import Ledger
from shared.queues import DeadLetters, Requeue
from shared.sending import Relay
from shared.settings import Settings, load_settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    relay: Relay
    dead_letters: DeadLetters
    requeue: Requeue  # the main queue: transient failures go back on it, delayed (shared/retries.py)
    ledger: Ledger  # requests Graph already accepted: nothing is sent twice (shared/ledger.py)


_runtime: Runtime | None = None
_lock = threading.Lock()


def build_runtime(settings: Settings) -> Runtime:
    from shared.graph import GraphClient, http_session
    from shared.ledger import TableLedger, table_client
    from shared.queues import QueueDeadLetters, QueueRequeue, queue_client
    from shared.secrets import KeyVaultSecret, credential, key_vault_client
    from shared.tokens import MsalTokens

    identity = credential(settings.managed_identity_client_id, settings.ca_bundle)
    secret = KeyVaultSecret(
        key_vault_client(settings.key_vault_uri, identity, settings.ca_bundle), settings.secret_name
    )
    session = http_session(settings.ca_bundle)
    tokens = MsalTokens(
        secret,
        tenant_id=settings.tenant_id,
        client_id=settings.client_id,
        authority_host=settings.authority_host,
        http_client=session,
    )
    relay = Relay(
        allowed_senders=settings.allowed_senders, tokens=tokens, graph=GraphClient(session, settings.graph_base_url)
    )
    storage_identity = None
    if not settings.storage.connection_string:
        # The host's identity-based connection names its own identity (AzureWebJobsStorage__clientId).
        storage_identity = credential(settings.storage.client_id or settings.managed_identity_client_id)
    poison = queue_client(settings, settings.poison_queue_name, storage_identity)
    main = queue_client(settings, settings.queue_name, storage_identity)
    return Runtime(
        settings=settings,
        relay=relay,
        dead_letters=QueueDeadLetters(poison),
        requeue=QueueRequeue(main),
        ledger=TableLedger(table_client(settings, storage_identity)),
    )


def runtime() -> Runtime:
    """The process-wide runtime, built on first use from the environment's settings."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(load_settings())
        return _runtime


def reset() -> None:
    """Forget the runtime (tests; a settings change in a long-lived local host)."""
    global _runtime
    with _lock:
        _runtime = None


# --- The secret-expiry check (shared/expiry.py) ---------------------------------------------------

import typing  # noqa: E402  (this section's own type-only imports, kept out of the send path's)

if typing.TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from shared.expiry import ExpiryCheck
    from shared.settings import ExpirySettings


@dataclass(frozen=True)
class ExpiryRuntime:
    settings: ExpirySettings
    check: ExpiryCheck


_expiry_runtime: ExpiryRuntime | None = None


def build_expiry_runtime(settings: ExpirySettings, clock: Callable[[], datetime] | None = None) -> ExpiryRuntime:
    """The expiry check with its real clients: Key Vault (properties only), Table storage, the channels."""
    from shared.expiry import (
        Channel,
        ExpiryCheck,
        GraphApplicationCredentials,
        KeyVaultSecretProperties,
        LogChannel,
        MailChannel,
        TableWarningRecords,
        WebhookChannel,
        table_client,
    )
    from shared.graph import GraphClient, http_session
    from shared.secrets import KeyVaultSecret, credential, key_vault_client
    from shared.tokens import MsalTokens

    relay_settings = settings.relay
    identity = credential(relay_settings.managed_identity_client_id, relay_settings.ca_bundle)
    vault = key_vault_client(relay_settings.key_vault_uri, identity, relay_settings.ca_bundle)
    session = http_session(relay_settings.ca_bundle)
    # The relay's own token source and send path: the mail channel and the Entra comparison use exactly
    # what the relay uses, so they fail exactly when the relay would.
    tokens = MsalTokens(
        KeyVaultSecret(vault, relay_settings.secret_name),
        tenant_id=relay_settings.tenant_id,
        client_id=relay_settings.client_id,
        authority_host=relay_settings.authority_host,
        http_client=session,
    )
    channels: list[Channel] = []
    if settings.alert_recipients and settings.alert_sender:
        relay = Relay(
            allowed_senders=relay_settings.allowed_senders,
            tokens=tokens,
            graph=GraphClient(session, relay_settings.graph_base_url),
        )
        channels.append(MailChannel(relay, settings.alert_sender, settings.alert_recipients))
    if settings.webhook_url:
        # Public CAs for the webhook: MAILRELAY_CA_BUNDLE (the local emulator's CA) would refuse Teams or Slack.
        channels.append(WebhookChannel(http_session(None), settings.webhook_url))
    channels.append(LogChannel())
    storage_identity = None
    if not relay_settings.storage.connection_string:
        storage_identity = credential(relay_settings.storage.client_id or relay_settings.managed_identity_client_id)
    entra = (
        GraphApplicationCredentials(session, relay_settings.graph_base_url, relay_settings.client_id, tokens)
        if settings.compare_entra
        else None
    )
    check = ExpiryCheck(
        secret=KeyVaultSecretProperties(vault, relay_settings.secret_name, relay_settings.key_vault_uri),
        records=TableWarningRecords(table_client(settings, storage_identity)),
        channels=channels,
        warn_days=settings.warn_days,
        client_id=relay_settings.client_id,
        tenant_id=relay_settings.tenant_id,
        entra=entra,
        **({"clock": clock} if clock else {}),
    )
    return ExpiryRuntime(settings=settings, check=check)


def expiry_runtime() -> ExpiryRuntime:
    """The process-wide expiry runtime, built on first use from the environment's settings."""
    global _expiry_runtime
    from shared.settings import load_expiry_settings

    with _lock:
        if _expiry_runtime is None:
            _expiry_runtime = build_expiry_runtime(load_expiry_settings())
        return _expiry_runtime


def reset_expiry() -> None:
    """Forget the expiry runtime (tests; a settings change in a long-lived local host)."""
    global _expiry_runtime
    with _lock:
        _expiry_runtime = None
