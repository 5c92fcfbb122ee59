"""The relay's settings: app settings in Azure, environment variables locally.

Settings are read on first use, never at import: the Functions host imports function_app.py to index
it, and an error there hides every function ("0 functions found"). A missing or malformed setting
raises one `SettingsError` that names it, so the log line says exactly what to fix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from shared.apps import App
    from shared.retries import RetryPolicy

DEFAULT_QUEUE_NAME: Final = "mail-outbox"
DEFAULT_GRAPH_BASE_URL: Final = "https://graph.microsoft.com"
DEFAULT_AUTHORITY_HOST: Final = "https://login.microsoftonline.com"

# Every app setting the deployed relay reads. infra/ must set each of them (a test checks the
# Bicep), so adding a setting here without wiring it there fails CI, not production.
DEPLOYED_SETTINGS: Final = (
    # How the relay proves itself to Entra ID (shared/credentials.py), and the certificate mode's companion.
    "GRAPH_CREDENTIAL",
    "GRAPH_CERTIFICATE_NAME",
    "GRAPH_TENANT_ID",
    "GRAPH_CLIENT_ID",
    "KEY_VAULT_URI",
    "GRAPH_CLIENT_SECRET_NAME",
    "ALLOWED_SENDERS",
    "MAIL_QUEUE_NAME",
    # The apps sharing the relay, each on its own queue with its own senders (shared/apps.py).
    "MAILRELAY_APPS",
    "AZURE_CLIENT_ID",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    # The retry budget for transient failures (shared/retries.py). SEND_RETRY_BASE_SECONDS is left out:
    # a tuning knob with a sound default (the local stack and the tests shorten it).
    "SEND_MAX_ATTEMPTS",
    "SEND_MAX_AGE_HOURS",
    # Which Exchange scope model infra/ set up: the hints and the doctor read it.
    "EXCHANGE_SCOPE_MODEL",
    # The secret-expiry check (shared/expiry/). EXPIRY_COMPARE_ENTRA is left out on purpose: it is
    # off by default and needs an extra Graph permission (Application.Read.All) the infra does not grant.
    "AzureWebJobsStorage__tableServiceUri",
    # The overflow store: what does not fit in a queue message (shared/queues.py).
    "AzureWebJobsStorage__blobServiceUri",
    "EXPIRY_CHECK_SCHEDULE",
    "EXPIRY_WARN_DAYS",
    "EXPIRY_ALERT_SENDER",
    "EXPIRY_ALERT_RECIPIENTS",
    "EXPIRY_ALERT_WEBHOOK_URL",
    # Delivery guarantees (shared/status.py, shared/handlers.py): what an unknown send becomes, and how long
    # status records are kept and when they are cleaned up. The timeouts and leases are tuning knobs with
    # sound defaults (the local stack and the fault suite shorten them): left out.
    "SEND_UNKNOWN_OUTCOME",
    "STATUS_RETENTION_DAYS",
    "STATUS_CLEANUP_SCHEDULE",
    # Telemetry (shared/telemetry.py): how often each queue's depth is recorded as a metric.
    "QUEUE_DEPTH_SCHEDULE",
    # Large messages (shared/payloads.py): the largest message the relay sends (Exchange's maximum message size
    # for the sending mailboxes), and how long a claim-checked payload nobody deletes is kept.
    "MAX_MESSAGE_SIZE_MB",
    "PAYLOAD_RETENTION_DAYS",
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
    table_service_uri: str | None = None  # identity-based Table endpoint (the status records)
    blob_service_uri: str | None = None  # identity-based Blob endpoint (the overflow store)


CREDENTIAL_MODES: Final = ("secret", "certificate", "federated", "managed-identity")
# What each mode needs beside GRAPH_TENANT_ID (docs/credentials.md): named at first use when missing.
_MODE_NEEDS: Final = {
    "secret": ("GRAPH_CLIENT_ID", "KEY_VAULT_URI", "GRAPH_CLIENT_SECRET_NAME"),
    "certificate": ("GRAPH_CLIENT_ID", "KEY_VAULT_URI", "GRAPH_CERTIFICATE_NAME"),
    "federated": ("GRAPH_CLIENT_ID", "AZURE_CLIENT_ID"),
    "managed-identity": ("AZURE_CLIENT_ID",),
}


@dataclass(frozen=True)
class GraphRegistration:
    """One Graph caller and how it proves itself to Entra ID (GRAPH_CREDENTIAL).

    An app registration with a client secret, a certificate or a federated credential that trusts the relay's
    user-assigned identity; or, in `managed-identity` mode, that identity itself (no app registration, and
    `client_id` is the identity's). The relay holds one today; a second is one more of these, built by
    `registration_from(env, prefix)` from its own settings, and shared.credentials builds its token source
    from this alone: configuration, not code.
    """

    name: str
    mode: str  # one of CREDENTIAL_MODES
    tenant_id: str
    client_id: str  # the Graph caller's application (client) id
    key_vault_uri: str | None = None  # secret and certificate modes
    secret_name: str | None = None  # secret mode
    certificate_name: str | None = None  # certificate mode
    identity_client_id: str | None = None  # the user-assigned identity (federated, managed-identity; else Key Vault's)

    @property
    def expires(self) -> bool:
        """Whether what the relay holds expires (a secret, a certificate); federated and managed-identity: no."""
        return self.mode in ("secret", "certificate")

    @property
    def vault_item(self) -> str | None:
        """The Key Vault item the credential lives in: the secret's or the certificate's name."""
        return {"secret": self.secret_name, "certificate": self.certificate_name}.get(self.mode)


@dataclass(frozen=True)
class Settings:
    graph: GraphRegistration  # the Graph caller and its credential (GRAPH_CREDENTIAL and its companions)
    allowed_senders: frozenset[str]  # lower-cased: Exchange addresses are case-insensitive
    queue_name: str
    storage: StorageSettings
    managed_identity_client_id: str | None
    graph_base_url: str
    authority_host: str
    ca_bundle: str | None  # extra CA to trust (the local emulator, or a TLS-inspecting proxy)
    apps: tuple[App, ...] = ()  # MAILRELAY_APPS: the declared apps, each on its own queue (shared/apps.py)
    # The retry budget and backoff for transient failures (shared/retries.py has the rules).
    max_attempts: int = 8
    max_age_hours: float = 24.0
    retry_base_seconds: float = 30.0
    # How Exchange restricts the app's mailboxes: RBAC for Applications (infra's default) or an application
    # access policy. The hints for ErrorAccessDenied and `mailrelay doctor` depend on it.
    exchange_scope_model: str = "rbac"
    # Delivery guarantees (shared/status.py). Graph's read timeout: a sendMail that has not answered by
    # then is an unknown send. The claim lease: how long a claim on a key holds before another worker may
    # take it over (the worker died); it must outlast a whole try, token and Graph call included. The
    # settling time: how long after an unknown send the sender's Sent Items are trusted to show it.
    graph_timeout_seconds: float = 30.0
    claim_lease_seconds: float = 150.0
    unknown_settle_seconds: float = 120.0
    unknown_outcome: str = "resend"  # SEND_UNKNOWN_OUTCOME: resend (at least once) or deadletter (at most once)
    status_retention_days: float = 30.0
    # Pacing per mailbox (shared/pacing.py): Microsoft's limits by default; the windows are settings so the
    # local stack and the tests can run time-scaled against an emulator that enforces the same limits.
    mailbox_max_concurrent: int = 4
    mailbox_messages_per_minute: int = 30
    mailbox_rate_window_seconds: float = 60.0
    mailbox_recipients_per_day: int = 10_000
    mailbox_recipient_window_seconds: float = 86_400.0
    # Large messages (shared/payloads.py, shared/sending.py): Exchange Online's default maximum message size is
    # 35 MB (admins may raise it to 150 MB per mailbox); claim-checked payloads of dead letters and abandoned
    # requests are deleted after PAYLOAD_RETENTION_DAYS; a `sendAt` up to SEND_AT_TOLERANCE_SECONDS before the
    # request was enqueued is clock skew, not a mistake.
    max_message_size_mb: float = 35.0
    payload_retention_days: float = 30.0
    send_at_tolerance_seconds: float = 300.0

    def app(self, name: str) -> App:
        """The app `name` (the default one: the outbox, every allowed sender). A name not declared is a trigger
        this deployment's settings do not know: SettingsError, naming it."""
        from shared.apps import DEFAULT_APP, default_app

        if name == DEFAULT_APP:
            return default_app(self.queue_name, self.allowed_senders)
        for app in self.apps:
            if app.name == name:
                return app
        raise SettingsError(f"Setting MAILRELAY_APPS declares no app {name!r}, whose queue a message came from.")

    # The Graph caller's settings, as the rest of the relay has always read them.
    @property
    def tenant_id(self) -> str:
        return self.graph.tenant_id

    @property
    def client_id(self) -> str:
        return self.graph.client_id

    @property
    def credential(self) -> str:
        return self.graph.mode

    @property
    def key_vault_uri(self) -> str | None:
        """None in federated and managed-identity modes: no Key Vault is read for Graph."""
        return self.graph.key_vault_uri

    @property
    def secret_name(self) -> str | None:
        return self.graph.secret_name

    @property
    def certificate_name(self) -> str | None:
        return self.graph.certificate_name

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

    @property
    def retry_queue_name(self) -> str:
        # The relay's own queue for transient retries and for requests waiting on a claim or a settling time.
        # Only the relay's identity may write it (infra/ grants apps Message Sender on the outbox alone), so
        # the retry state it carries cannot be forged. function_app.py binds it as "%MAIL_QUEUE_NAME%-retry".
        return f"{self.queue_name}{RETRY_QUEUE_SUFFIX}"

    @property
    def retry_poison_queue_name(self) -> str:
        # Where the host moves a retry message whose function kept failing (storage down, say).
        return f"{self.retry_queue_name}-poison"


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
        blob_service_uri=(env.get("AzureWebJobsStorage__blobServiceUri", "").strip().rstrip("/") or None),
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


RETRY_QUEUE_SUFFIX: Final = "-retry"
# Storage's queue names stop at 63 characters, and the longest name derived from MAIL_QUEUE_NAME is the
# retry queue's poison queue, "<name>-retry-poison".
MAX_QUEUE_NAME_LENGTH: Final = 63 - len(RETRY_QUEUE_SUFFIX + "-poison")
UNKNOWN_OUTCOMES: Final = ("resend", "deadletter")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting the send path needs; raise SettingsError naming the first bad one."""
    env = os.environ if env is None else env
    graph = parse_registration(env)
    allowed = parse_senders(
        _required(env, "ALLOWED_SENDERS", "a comma-separated list of mailboxes the relay may send as")
    )
    queue_name = env.get("MAIL_QUEUE_NAME", "").strip() or DEFAULT_QUEUE_NAME
    if not _QUEUE_NAME.match(queue_name):
        raise SettingsError(
            f"Setting MAIL_QUEUE_NAME must be a valid queue name (3-63 lower-case letters, digits, "
            f"single hyphens), got {queue_name!r}."
        )
    if len(queue_name) > MAX_QUEUE_NAME_LENGTH:
        raise SettingsError(
            f"Setting MAIL_QUEUE_NAME is {len(queue_name)} characters long; at most {MAX_QUEUE_NAME_LENGTH}, "
            f"because retries go to {queue_name}-retry, their dead letters to {queue_name}-retry-poison, and a "
            "queue name has at most 63 characters."
        )
    ca_bundle = env.get("MAILRELAY_CA_BUNDLE", "").strip() or None
    if ca_bundle and not os.path.isfile(ca_bundle):
        raise SettingsError(f"Setting MAILRELAY_CA_BUNDLE names a file that does not exist: {ca_bundle!r}.")
    from shared.apps import SETTING as APPS_SETTING

    return _shares_fit(
        Settings(
            graph=graph,
            allowed_senders=allowed,
            queue_name=queue_name,
            apps=parse_apps(env.get(APPS_SETTING, ""), allowed, queue_name, env),
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
            exchange_scope_model=_scope_model(env),
            **_delivery(env),
        )
    )


# An app's share of a mailbox's budget never exceeds Microsoft's limit for the mailbox itself (settings'
# MAILBOX_MESSAGES_PER_MINUTE and MAILBOX_RECIPIENTS_PER_DAY are checked against the sum in load_settings).
_SHARE_CEILINGS: Final = {"messagesPerMinute": 30, "recipientsPerDay": 10_000}


def _whole_number(entry: Mapping[str, Any], field: str, name: str, ceiling: int, refuse: Any) -> int | None:
    """An app's optional whole-number field (a share, its maxScheduled) from 1 to `ceiling`; None when absent."""
    value = entry.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ceiling:
        raise refuse(f"gives app {name!r} a {field} that is not a whole number from 1 to {ceiling}")
    return value


def _app_registration(value: Any, name: str, relay_env: Mapping[str, str], refuse: Any) -> GraphRegistration:
    """An app's own Graph registration: its "graph" object names the mode and its companions as the relay's own
    settings do (GRAPH_FIELDS); the tenant, the vault and the Function's identity are the relay's."""
    from shared.apps import GRAPH_FIELDS

    if (
        not isinstance(value, dict)
        or set(value) - set(GRAPH_FIELDS)
        or not all(isinstance(v, str) for v in value.values())
    ):
        raise refuse(f"gives app {name!r} a graph that is not an object of {', '.join(GRAPH_FIELDS)} (strings)")
    own = {setting: value.get(field, "") for field, setting in GRAPH_FIELDS.items()}
    shared_settings = {k: relay_env.get(k, "") for k in ("GRAPH_TENANT_ID", "KEY_VAULT_URI", "AZURE_CLIENT_ID")}
    try:
        return parse_registration({**shared_settings, **own}, name=name)
    except SettingsError as e:
        # The message names the relay's setting; say which app's "graph" it came from.
        raise refuse(f"gives app {name!r} a graph the relay cannot use: {str(e).rstrip('.')}") from None


def parse_apps(
    value: str, allowed: frozenset[str], queue_name: str, relay_env: Mapping[str, str] | None = None
) -> tuple[App, ...]:
    """The declared apps (not the default one) from MAILRELAY_APPS; raises SettingsError naming what is wrong."""
    from shared.apps import (
        DEFAULT_MAX_SCHEDULED,
        FIELDS,
        MAX_SCHEDULED_CEILING,
        NAME_RULE,
        POISON_SUFFIX,
        RESERVED_NAMES,
        SETTING,
        App,
        app_queue,
        is_declarable,
        status_table,
    )

    relay_env = relay_env or {}

    def refuse(why: str) -> SettingsError:
        return SettingsError(f"Setting {SETTING} {why}.")

    if not value.strip():
        return ()
    try:
        declared = json.loads(value)
    except ValueError:
        raise refuse(
            'must be a JSON array of apps, like [{"name": "billing", "senders": ["billing@contoso.com"]}]'
        ) from None
    if not isinstance(declared, list):
        raise refuse("must be a JSON array of apps")
    apps: list[App] = []
    for index, entry in enumerate(declared):
        if not isinstance(entry, dict):
            raise refuse(f"holds something that is not an app (an object) at position {index + 1}")
        name = entry.get("name")
        label = f"app {name!r}" if isinstance(name, str) else f"the app at position {index + 1}"
        unknown = sorted(set(entry) - FIELDS)
        if unknown:
            raise refuse(f"gives {label} an unknown field {unknown[0]!r} (known: {', '.join(sorted(FIELDS))})")
        if not isinstance(name, str) or not (is_declarable(name) or name in RESERVED_NAMES):
            raise refuse(f"names {label} wrongly: {NAME_RULE}")
        if name in RESERVED_NAMES:
            raise refuse(f"names an app {name!r}, which is reserved ({', '.join(sorted(RESERVED_NAMES))})")
        if any(a.name == name for a in apps):
            raise refuse(f"declares app {name!r} twice")
        queue = app_queue(queue_name, name)
        if len(queue) + len(POISON_SUFFIX) > 63:
            raise refuse(
                f"gives app {name!r} the queue {queue}, whose poison queue {queue}{POISON_SUFFIX} would be longer than "
                "a queue name may be (63 characters): shorten the app's name or MAIL_QUEUE_NAME"
            )
        senders = entry.get("senders")
        if not isinstance(senders, list) or not senders or not all(isinstance(s, str) for s in senders):
            raise refuse(f"gives {label} no senders: list the addresses it may send as")
        addresses = parse_senders(",".join(senders), f"{SETTING} (app {name!r})")
        outside = sorted(addresses - allowed)
        if outside:
            raise refuse(
                f"allows app {name!r} to send as {outside[0]}, which is not on ALLOWED_SENDERS: add it there first "
                "(the relay's own allow-list bounds every app's)"
            )
        principals = entry.get("principals", [])
        if not isinstance(principals, list) or not all(isinstance(p, str) and _GUID.match(p) for p in principals):
            raise refuse(f"gives {label} principals that are not Entra object ids (GUIDs)")
        shares = {f: _whole_number(entry, f, name, ceiling, refuse) for f, ceiling in _SHARE_CEILINGS.items()}
        graph = _app_registration(entry.get("graph"), name, relay_env, refuse) if "graph" in entry else None
        cap = _whole_number(entry, "maxScheduled", name, MAX_SCHEDULED_CEILING, refuse)
        apps.append(
            App(
                name,
                queue,
                addresses,
                shares["messagesPerMinute"],
                shares["recipientsPerDay"],
                DEFAULT_MAX_SCHEDULED if cap is None else cap,
                graph,
            )
        )
    names = {a.name for a in apps}
    for app in apps:
        if app.name.endswith(POISON_SUFFIX) and app.name.removesuffix(POISON_SUFFIX) in names:
            raise refuse(
                f"declares app {app.name!r}, whose queue {app.queue} is app "
                f"{app.name.removesuffix(POISON_SUFFIX)!r}'s poison queue: rename it"
            )
    tables: dict[str, str] = {}
    for app in apps:
        table = status_table(app.name)
        if table in tables:
            raise refuse(
                f"declares apps {tables[table]!r} and {app.name!r}, whose status records would share the table "
                f"{table} (table names hold no hyphens): rename one"
            )
        tables[table] = app.name
    return tuple(apps)


def parse_registration(env: Mapping[str, str], name: str = "default") -> GraphRegistration:
    """A Graph caller from the GRAPH_* settings in `env` (and AZURE_CLIENT_ID, the user-assigned identity):
    GRAPH_CREDENTIAL chooses the mode, and each mode's companions are required, named when missing."""
    mode = env.get("GRAPH_CREDENTIAL", "").strip().lower() or "secret"
    if mode not in CREDENTIAL_MODES:
        raise SettingsError(
            f'Setting GRAPH_CREDENTIAL must be one of {", ".join(CREDENTIAL_MODES)} (docs/credentials.md), '
            f"got {mode!r}."
        )
    tenant_id = _required(env, "GRAPH_TENANT_ID", "the directory (tenant) id of the app registration")
    if not _GUID.match(tenant_id) and "." not in tenant_id:
        raise SettingsError(f"Setting GRAPH_TENANT_ID must be a tenant GUID or domain, got {tenant_id!r}.")
    why = {
        "GRAPH_CLIENT_ID": "the application (client) id of the app registration",
        "KEY_VAULT_URI": "the vault's URI, https://<name>.vault.azure.net/",
        "GRAPH_CLIENT_SECRET_NAME": "the Key Vault secret holding the client secret",
        "GRAPH_CERTIFICATE_NAME": "the Key Vault certificate the relay signs its token requests with",
        "AZURE_CLIENT_ID": (
            "the client id of the Function's user-assigned managed identity, which "
            + ("the app registration's federated credential trusts" if mode == "federated" else "calls Graph itself")
            + " (a system-assigned identity is not supported: it is recreated with the app and loses its grants)"
        ),
    }
    values = {
        setting: _required(env, setting, f"GRAPH_CREDENTIAL={mode} needs {why[setting]}")
        for setting in _MODE_NEEDS[mode]
    }
    identity = env.get("AZURE_CLIENT_ID", "").strip() or None
    for setting in ("GRAPH_CLIENT_ID", "AZURE_CLIENT_ID"):
        if values.get(setting) and not _GUID.match(values[setting]):
            raise SettingsError(f"Setting {setting} must be a GUID, got {values[setting]!r}.")
    client_id = values.get("GRAPH_CLIENT_ID") or env.get("GRAPH_CLIENT_ID", "").strip()
    if mode == "managed-identity":
        assert identity is not None
        # The identity is the Graph caller: a different GRAPH_CLIENT_ID would be an app registration the relay
        # never uses, and every hint and check would name the wrong principal.
        if client_id and client_id.lower() != identity.lower():
            raise SettingsError(
                f"Setting GRAPH_CLIENT_ID ({client_id}) must be empty or equal AZURE_CLIENT_ID ({identity}) with "
                "GRAPH_CREDENTIAL=managed-identity: the identity itself calls Graph; there is no app registration."
            )
        client_id = identity
    elif not _GUID.match(client_id):
        raise SettingsError(f"Setting GRAPH_CLIENT_ID must be a GUID, got {client_id!r}.")
    vault = values.get("KEY_VAULT_URI")
    return GraphRegistration(
        name=name,
        mode=mode,
        tenant_id=tenant_id,
        client_id=client_id,
        key_vault_uri=_https_url(env, "KEY_VAULT_URI", vault) if vault else None,
        secret_name=values.get("GRAPH_CLIENT_SECRET_NAME"),
        certificate_name=values.get("GRAPH_CERTIFICATE_NAME"),
        identity_client_id=identity,
    )


def _shares_fit(settings: Settings) -> Settings:
    """Each mailbox's declared shares fit in its limits: the apps that may send as a mailbox cannot be promised
    more of its minute or its day than the mailbox has, or one app's share would be another's wait."""
    limits = {
        "messagesPerMinute": ("messages_per_minute", settings.mailbox_messages_per_minute),
        "recipientsPerDay": ("recipients_per_day", settings.mailbox_recipients_per_day),
    }
    for mailbox in sorted(settings.allowed_senders):
        sharing = [a for a in settings.apps if mailbox in a.senders]
        for field, (attr, limit) in limits.items():
            promised = sum(getattr(a, attr) or 0 for a in sharing)
            if promised > limit:
                names = ", ".join(f"{a.name} {getattr(a, attr)}" for a in sharing if getattr(a, attr))
                raise SettingsError(
                    f"Setting MAILRELAY_APPS promises {mailbox} {promised} {field} in all ({names}), more than the "
                    f"mailbox's limit of {limit}: lower the shares"
                )
    return settings


def _delivery(env: Mapping[str, str]) -> dict[str, Any]:
    """The delivery-guarantee settings, checked against each other: a claim must outlast a Graph call."""
    timeout = _number(env, "GRAPH_TIMEOUT_SECONDS", 30.0, low=1, high=300, whole=False)
    lease = _number(env, "SEND_CLAIM_LEASE_SECONDS", 150.0, low=2, high=3600, whole=False)
    if lease < 2 * timeout:
        # A lease shorter than a try would let a second worker take over a send still in flight.
        raise SettingsError(
            f"Setting SEND_CLAIM_LEASE_SECONDS ({lease:g}) must be at least twice GRAPH_TIMEOUT_SECONDS ({timeout:g}): "
            "a claim must outlast the token request and the Graph call it covers."
        )
    outcome = env.get("SEND_UNKNOWN_OUTCOME", "").strip().lower() or "resend"
    if outcome not in UNKNOWN_OUTCOMES:
        raise SettingsError(
            "Setting SEND_UNKNOWN_OUTCOME must be resend (send again when Graph may or may not have accepted a "
            f"message: at least once) or deadletter (at most once), got {outcome!r}."
        )
    return {
        "graph_timeout_seconds": timeout,
        "claim_lease_seconds": lease,
        "unknown_settle_seconds": _number(env, "SEND_UNKNOWN_SETTLE_SECONDS", 120.0, low=0, high=3600, whole=False),
        "unknown_outcome": outcome,
        "status_retention_days": _number(env, "STATUS_RETENTION_DAYS", 30.0, low=0.01, high=3650, whole=False),
        # Graph allows 4 concurrent requests per app and mailbox, Exchange 30 messages a minute and 10,000
        # recipients a day per mailbox: a setting may lower them (a shared mailbox other apps use too), and
        # raising them only trades pacing for 429s or a blocked mailbox, so the ceilings are Microsoft's.
        "mailbox_max_concurrent": int(_number(env, "MAILBOX_MAX_CONCURRENT", 4, low=1, high=4, whole=True)),
        "mailbox_messages_per_minute": int(_number(env, "MAILBOX_MESSAGES_PER_MINUTE", 30, low=1, high=30, whole=True)),
        "mailbox_rate_window_seconds": _number(
            env, "MAILBOX_RATE_WINDOW_SECONDS", 60.0, low=0.1, high=3600, whole=False
        ),
        "mailbox_recipients_per_day": int(
            _number(env, "MAILBOX_RECIPIENTS_PER_DAY", 10_000, low=1, high=10_000, whole=True)
        ),
        "mailbox_recipient_window_seconds": _number(
            env, "MAILBOX_RECIPIENT_WINDOW_SECONDS", 86_400.0, low=1, high=86_400 * 7, whole=False
        ),
        # Graph takes up to 150 MB per attachment, and Exchange's maximum message size up to 150 MB.
        "max_message_size_mb": _number(env, "MAX_MESSAGE_SIZE_MB", 35.0, low=1, high=150, whole=False),
        "payload_retention_days": _payload_retention(env),
        "send_at_tolerance_seconds": _number(env, "SEND_AT_TOLERANCE_SECONDS", 300.0, low=0, high=3600, whole=False),
    }


def _payload_retention(env: Mapping[str, str]) -> float:
    """A payload must outlive every request that may still need it: one scheduled 7 days ahead, then retried for
    SEND_MAX_AGE_HOURS."""
    days = _number(env, "PAYLOAD_RETENTION_DAYS", 30.0, low=8, high=3650, whole=False)
    max_age = _number(env, "SEND_MAX_AGE_HOURS", 24.0, low=0.01, high=168, whole=False)
    if days * 24 < 7 * 24 + max_age:
        raise SettingsError(
            f"Setting PAYLOAD_RETENTION_DAYS ({days:g}) must be at least 7 days plus SEND_MAX_AGE_HOURS "
            f"({max_age:g} h): a request may wait 7 days for its sendAt and then be retried; its payloads must last"
        )
    return days


EXCHANGE_SCOPE_MODELS: Final = ("rbac", "policy")


def _scope_model(env: Mapping[str, str]) -> str:
    model = env.get("EXCHANGE_SCOPE_MODEL", "").strip().lower() or "rbac"
    if model not in EXCHANGE_SCOPE_MODELS:
        raise SettingsError(
            f"Setting EXCHANGE_SCOPE_MODEL must be rbac (RBAC for Applications) or policy (an application access "
            f"policy), got {model!r}."
        )
    return model


# --- The secret-expiry check (shared/expiry/) ---------------------------------------------------

DEFAULT_EXPIRY_CHECK_SCHEDULE: Final = "0 0 7 * * *"  # NCRONTAB, six fields: every day at 07:00 (UTC by default)
DEFAULT_EXPIRY_WARN_DAYS: Final = (30, 14, 7, 3, 1)
_LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]"})


@dataclass(frozen=True)
class ExpirySettings:
    """What the expiry check reads on top of the relay's own settings.

    Each alert channel is configured on its own: mail when EXPIRY_ALERT_RECIPIENTS is set, the webhook
    when EXPIRY_ALERT_WEBHOOK_URL is set; the log channel is always on.
    """

    relay: Settings
    schedule: str
    warn_days: tuple[int, ...]  # descending, e.g. (30, 14, 7, 3, 1)
    alert_sender: str | None
    alert_recipients: tuple[str, ...]
    webhook_url: str | None  # holds a signature in Teams and Slack URLs: never log it
    compare_entra: bool


def parse_warn_days(value: str, name: str = "EXPIRY_WARN_DAYS") -> tuple[int, ...]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SettingsError(
            f"Setting {name} must be a comma-separated list of whole days above 0, like 30,14,7,3,1; got {value!r}."
        )
    return tuple(sorted({int(p) for p in parts}, reverse=True))


def _webhook_url(env: Mapping[str, str]) -> str | None:
    from urllib.parse import urlsplit

    value = env.get("EXPIRY_ALERT_WEBHOOK_URL", "").strip()
    if not value:
        return None
    parts = urlsplit(value)
    # Plain http only to this machine (a local receiver in tests); anything else carries the alert,
    # and the URL's own signature, over the network and must be https. The value is never echoed.
    loopback = parts.scheme == "http" and (parts.hostname or "") in {h.strip("[]") for h in _LOOPBACK_HOSTS}
    if not parts.hostname or not (parts.scheme == "https" or loopback):
        raise SettingsError("Setting EXPIRY_ALERT_WEBHOOK_URL must be an https:// URL (its value is not shown).")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise SettingsError(f"Setting {name} must be true or false, got {value!r}.")


def load_expiry_settings(env: Mapping[str, str] | None = None, relay: Settings | None = None) -> ExpirySettings:
    """Read and check the expiry check's settings (and the relay's, unless given); raise SettingsError naming one."""
    env = os.environ if env is None else env
    relay = relay or load_settings(env)
    schedule = env.get("EXPIRY_CHECK_SCHEDULE", "").strip() or DEFAULT_EXPIRY_CHECK_SCHEDULE
    if len(schedule.split()) != 6:
        raise SettingsError(
            "Setting EXPIRY_CHECK_SCHEDULE must be an NCRONTAB expression with six fields "
            f"(second minute hour day month weekday), like {DEFAULT_EXPIRY_CHECK_SCHEDULE!r}; got {schedule!r}."
        )
    warn_days_text = env.get("EXPIRY_WARN_DAYS", "").strip()
    warn_days = parse_warn_days(warn_days_text) if warn_days_text else DEFAULT_EXPIRY_WARN_DAYS
    recipients_text = env.get("EXPIRY_ALERT_RECIPIENTS", "").strip()
    recipients = tuple(sorted(parse_senders(recipients_text, "EXPIRY_ALERT_RECIPIENTS"))) if recipients_text else ()
    sender = env.get("EXPIRY_ALERT_SENDER", "").strip().lower() or None
    if recipients and not sender:
        raise SettingsError(
            "Setting EXPIRY_ALERT_SENDER is missing: EXPIRY_ALERT_RECIPIENTS is set, so name the mailbox "
            "the expiry alerts are sent from (one on ALLOWED_SENDERS)."
        )
    if sender:
        (sender,) = parse_senders(sender, "EXPIRY_ALERT_SENDER")
        if sender not in relay.allowed_senders:
            # The relay itself would refuse it (SenderNotAllowed): say so now, not on the day it matters.
            raise SettingsError(f"Setting EXPIRY_ALERT_SENDER must be one of ALLOWED_SENDERS, got {sender!r}.")
        if not recipients:
            raise SettingsError(
                "Setting EXPIRY_ALERT_RECIPIENTS is missing: EXPIRY_ALERT_SENDER is set, so list who gets the alerts."
            )
    if not relay.storage.connection_string and not relay.storage.table_service_uri:
        raise SettingsError(
            "Setting AzureWebJobsStorage__tableServiceUri is missing: the expiry check records the warnings "
            "it sent in Table storage (or set the AzureWebJobsStorage connection string, locally)."
        )
    return ExpirySettings(
        relay=relay,
        schedule=schedule,
        warn_days=warn_days,
        alert_sender=sender,
        alert_recipients=recipients,
        webhook_url=_webhook_url(env),
        compare_entra=_bool(env, "EXPIRY_COMPARE_ENTRA", False),
    )
