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

