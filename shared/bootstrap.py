"""Builds the relay's real clients once per process and hands them out.

Every SDK import happens here, on first use, not when the Functions host indexes function_app.py.
The two triggers share one set of clients (`Clients`): one cached secret, one MSAL token cache, one
HTTP pool, so the expiry check's mail fails or succeeds exactly as the relay's own sends do.
Unit tests build `Relay`, `Runtime` or `ExpiryCheck` with fakes instead and never come here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.queues import DeadLetters, Overflow, Requeue
from shared.sending import Relay
from shared.settings import ExpirySettings, GraphRegistration, Settings, load_expiry_settings, load_settings
from shared.status import StatusStore

if TYPE_CHECKING:
    import requests
    from azure.keyvault.secrets import SecretClient

    from shared.credentials import Credentials
    from shared.expiry import ExpiryCheck
    from shared.pacing import Pacer
    from shared.payloads import PayloadStore
    from shared.tokens import TokenSource


@dataclass(frozen=True)
class Clients:
    """The outside services, built once per process."""

    settings: Settings
    credentials: Credentials  # GRAPH_CREDENTIAL's token source, and what it holds (a secret, a certificate, nothing)
    session: requests.Session  # Entra and Graph, trusting MAILRELAY_CA_BUNDLE when set
    tokens: TokenSource
    relay: Relay
    storage_identity: Any  # the host's storage identity; None with a connection string
    identity: Any = None  # the Function's identity (RelayCredential): Key Vault's reader, or the Graph credential
    # The apps that bring their own Graph app registration (MAILRELAY_APPS "graph"): their credentials; and the
    # relay as each declared app uses it (its payload container, its registration if it has one).
    app_credentials: Mapping[str, Credentials] = field(default_factory=dict)
    app_relays: Mapping[str, Relay] = field(default_factory=dict)

    @property
    def vault(self) -> SecretClient | None:
        """Key Vault, in the modes that keep the credential there; None in federated and managed-identity."""
        return self.credentials.vault

    def for_app(self, name: str) -> Clients:
        """The clients as app `name` uses them: its senders, and its own Graph registration when it has one (the
        settings' graph then is the app's, so every check reads the app's credential). SettingsError: undeclared."""
        app = self.settings.app(name)
        settings = replace(self.settings, allowed_senders=app.senders, graph=app.graph or self.settings.graph)
        credentials = self.app_credentials.get(name, self.credentials)
        relay = self.app_relays.get(name, self.relay)
        return replace(self, settings=settings, credentials=credentials, tokens=credentials.tokens, relay=relay)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Runtime:
    """What the queue function needs."""

    settings: Settings
    relay: Relay
    dead_letters: DeadLetters
    retries: Requeue  # the relay's own retry queue: requests that must wait go on it, delayed (shared/retries.py)
    status: StatusStore  # one record per request, claimed before Graph is called (shared/status.py)
    overflow: Overflow | None = None  # what does not fit in a queue message (shared/queues.py)
    clock: Callable[[], datetime] = _utcnow  # the claims' leases and schedules; tests move it
    pacer: Pacer | None = None  # per-mailbox pacing, shared by every instance (shared/pacing.py)
    sleep: Callable[[float], None] = time.sleep  # a short pacing wait held in the worker; tests move the clock
    payloads: PayloadStore | None = None  # claim-checked attachments and bodies (shared/payloads.py)
    app_relays: Mapping[str, Relay] = field(default_factory=dict)  # each declared app's (Clients.app_relays)
    # A queue's approximate message count by name (0 when it does not exist): the queue-depth timer's only I/O.
    queue_depth: Callable[[str], int] | None = None

    def for_app(self, app: str) -> Runtime:
        """This runtime as `app` sends: its payload container, and its own Graph registration when it has one."""
        relay = self.app_relays.get(app)
        return self if relay is None else replace(self, relay=relay, payloads=relay.payloads)

    @property
    def all_payloads(self) -> list[PayloadStore]:
        """Every payload container the relay reads: the outbox's and each declared app's (the clean-up's)."""
        stores = [self.payloads, *(relay.payloads for relay in self.app_relays.values())]
        return [s for s in dict.fromkeys(stores) if s is not None]


@dataclass(frozen=True)
class ExpiryRuntime:
    """What the expiry timer and `mailrelay expiry check` need."""

    settings: ExpirySettings
    check: ExpiryCheck  # the relay's own Graph registration's
    apps: Mapping[str, ExpiryCheck] = field(default_factory=dict)  # each app's own registration's, if it has one


def build_clients(settings: Settings) -> Clients:
    from shared.credentials import token_source
    from shared.graph import GraphClient, http_session
    from shared.payloads import PAYLOAD_CONTAINER, BlobPayloads, payload_container
    from shared.secrets import credential
    from shared.storage import container_client

    graph = settings.graph
    # In the secretless modes the identity is the Graph credential itself: no Azure CLI fallback, which would
    # be a person's sign-in and never what the app registration trusts.
    identity = credential(settings.managed_identity_client_id, settings.ca_bundle, cli=graph.expires)
    session = http_session(settings.ca_bundle)
    credentials = token_source(
        graph, identity=identity, session=session, authority_host=settings.authority_host, ca_bundle=settings.ca_bundle
    )
    tokens = credentials.tokens
    storage_identity = None
    if not settings.storage.connection_string:
        # The host's identity-based connection names its own identity (AzureWebJobsStorage__clientId).
        storage_identity = credential(settings.storage.client_id or settings.managed_identity_client_id)
    relay = Relay(
        allowed_senders=settings.allowed_senders,
        tokens=tokens,
        graph=GraphClient(session, settings.graph_base_url, settings.graph_timeout_seconds),
        scope_model=settings.exchange_scope_model,
        payloads=BlobPayloads(container_client(settings, PAYLOAD_CONTAINER, storage_identity)),
        max_message_bytes=int(settings.max_message_size_mb * 1024 * 1024),
    )
    app_credentials = {
        app.name: token_source(
            app.graph,
            identity=credential(settings.managed_identity_client_id, settings.ca_bundle, cli=app.graph.expires),
            session=session,
            authority_host=settings.authority_host,
            ca_bundle=settings.ca_bundle,
        )
        for app in settings.apps
        if app.graph is not None
    }
    # Every declared app reads its payloads from its own container; those with a registration call Graph as it.
    app_relays = {
        app.name: relay.for_app(
            tokens=app_credentials[app.name].tokens if app.name in app_credentials else None,
            payloads=BlobPayloads(container_client(settings, payload_container(app.name), storage_identity)),
        )
        for app in settings.apps
    }
    return Clients(
        settings, credentials, session, tokens, relay, storage_identity, identity, app_credentials, app_relays
    )


def build_runtime(settings: Settings, clients: Clients | None = None) -> Runtime:
    from shared.apps import status_table
    from shared.pacing import Pacer, TablePaceStore, limits_of
    from shared.queues import OVERFLOW_CONTAINER, BlobOverflow, QueueDeadLetters, QueueRequeue
    from shared.status import TABLE_NAME, AppStatusStore, TableStatusStore
    from shared.storage import approximate_count, container_client, queue_client, table_client

    clients = clients or build_clients(settings)
    identity = clients.storage_identity
    overflow = BlobOverflow(container_client(settings, OVERFLOW_CONTAINER, identity))
    # One client for the status table: the pace rows live in it, beside the default app's status records; each
    # declared app's records in a table of its own, which its credentials alone may read (shared/status.py).
    status_table_client = table_client(settings, TABLE_NAME, identity)
    app_status = {
        app.name: TableStatusStore(table_client(settings, status_table(app.name), identity)) for app in settings.apps
    }
    return Runtime(
        settings=settings,
        relay=clients.relay,
        dead_letters=QueueDeadLetters(queue_client(settings, settings.poison_queue_name, identity), overflow),
        retries=QueueRequeue(queue_client(settings, settings.retry_queue_name, identity)),
        status=AppStatusStore(TableStatusStore(status_table_client), app_status),
        pacer=Pacer(TablePaceStore(status_table_client), limits_of(settings)),
        overflow=overflow,
        payloads=clients.relay.payloads,
        app_relays=clients.app_relays,
        queue_depth=lambda name: approximate_count(queue_client(settings, name, identity)),
    )


def build_expiry_runtime(
    settings: ExpirySettings, clients: Clients | None = None, clock: Callable[[], datetime] | None = None
) -> ExpiryRuntime:
    """The expiry check with its real clients: Key Vault (properties only; secret and certificate modes) or the
    token source (federated, managed-identity), Table storage, the channels."""
    from shared.expiry import (
        TABLE_NAME,
        Channel,
        ExpiryCheck,
        GraphApplicationCredentials,
        KeyVaultSecretProperties,
        LogChannel,
        MailChannel,
        TableWarningRecords,
        WebhookChannel,
    )
    from shared.graph import http_session
    from shared.storage import table_client

    relay_settings = settings.relay
    clients = clients or build_clients(relay_settings)
    channels: list[Channel] = []
    if settings.alert_recipients and settings.alert_sender:
        channels.append(MailChannel(clients.relay, settings.alert_sender, settings.alert_recipients))
    if settings.webhook_url:
        # Public CAs for the webhook: MAILRELAY_CA_BUNDLE (the local emulator's CA) would refuse Teams or Slack.
        channels.append(WebhookChannel(http_session(None), settings.webhook_url))
    channels.append(LogChannel())
    # Few retries: an unreachable record store must not hold the daily check for minutes; it warns anyway.
    records = TableWarningRecords(
        table_client(
            relay_settings,
            TABLE_NAME,
            clients.storage_identity,
            retry_total=2,
            retry_backoff_factor=0.5,
            connection_timeout=10,
        )
    )

    def check_of(credentials: Credentials, graph: GraphRegistration) -> ExpiryCheck:
        """The check of one Graph registration: the relay's, or an app's own (MAILRELAY_APPS "graph")."""
        # EXPIRY_COMPARE_ENTRA compares with the app registration's credentials: only where something stored
        # expires (in managed-identity mode there is no app registration at all).
        entra = (
            GraphApplicationCredentials(
                clients.session, relay_settings.graph_base_url, graph.client_id, credentials.tokens
            )
            if settings.compare_entra and graph.expires
            else None
        )
        properties: KeyVaultSecretProperties | None = None
        if graph.expires:
            # secret and certificate: the Key Vault item's dates (token_source built the vault in these modes only).
            vault = credentials.vault
            assert vault is not None and graph.vault_item is not None and graph.key_vault_uri is not None
            properties = KeyVaultSecretProperties(vault, graph.vault_item, graph.key_vault_uri, kind=graph.mode)
        # Otherwise (federated, managed-identity) the check asks for a fresh token and never touches Key Vault.
        return ExpiryCheck(
            secret=properties,
            records=records,
            channels=channels,
            warn_days=settings.warn_days,
            client_id=graph.client_id,
            tenant_id=graph.tenant_id,
            entra=entra,
            mode=graph.mode,
            tokens=None if graph.expires else credentials.tokens,
            thumbprint=_certificate_in_use(credentials),
            registration="relay" if graph.name == "default" else graph.name,  # parse_registration's name
            **({"clock": clock} if clock else {}),
        )

    apps = {
        app.name: check_of(clients.app_credentials[app.name], app.graph)
        for app in relay_settings.apps
        if app.graph is not None and app.name in clients.app_credentials
    }
    return ExpiryRuntime(settings=settings, check=check_of(clients.credentials, relay_settings.graph), apps=apps)


def _certificate_in_use(credentials: Credentials) -> Callable[[], tuple[str | None, str] | None]:
    """(Key Vault version, SHA-1 thumbprint) of the certificate the relay has read, if any: the timer shares the
    relay's clients, so it knows the certificate in use without reading the value again."""
    from shared.credentials import CertificateCredential

    def in_use() -> tuple[str | None, str] | None:
        stored = credentials.stored
        info = stored.info if isinstance(stored, CertificateCredential) else None
        return (info.version, info.thumbprint_sha1) if info is not None else None

    return in_use


_clients: Clients | None = None
_runtime: Runtime | None = None
_expiry_runtime: ExpiryRuntime | None = None
_lock = threading.Lock()


def _shared_clients(settings: Settings) -> Clients:
    global _clients
    if _clients is None:
        _clients = build_clients(settings)
    return _clients


def runtime() -> Runtime:
    """The queue function's runtime, built on first use from the environment's settings."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = load_settings()
            _runtime = build_runtime(settings, _shared_clients(settings))
        return _runtime


def expiry_runtime() -> ExpiryRuntime:
    """The expiry check's runtime, built on first use from the environment's settings."""
    global _expiry_runtime
    with _lock:
        if _expiry_runtime is None:
            settings = load_expiry_settings()
            _expiry_runtime = build_expiry_runtime(settings, _shared_clients(settings.relay))
        return _expiry_runtime


def reset() -> None:
    """Forget everything built (tests; as after a cold start)."""
    global _clients, _runtime, _expiry_runtime
    with _lock:
        _clients = _runtime = _expiry_runtime = None
