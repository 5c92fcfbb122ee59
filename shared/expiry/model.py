"""The expiry check's vocabulary: what a secret or a certificate looks like, what was found, what is reported, and
the interfaces of the outside services (Key Vault, Entra, the Graph token, the warning records, the channels)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

EVENT: Final = "secret.expiry"  # infra/app/monitoring.bicep's credential alerts match it exactly (customDimensions)
TABLE_NAME: Final = "expirywarnings"  # created by infra/main.bicep; created on first use locally
# Key Vault's exp and Entra's endDateTime are typed in by hand, in different portals and time zones.
ENTRA_TOLERANCE: Final = timedelta(days=1)

State = Literal["ok", "warning", "critical"]
_RANK: Final[dict[str, int]] = {"ok": 0, "warning": 1, "critical": 2}
EXIT_CODES: Final[dict[str, int]] = {"ok": 0, "warning": 1, "critical": 2}


class ExpiryReadError(RuntimeError):
    """Key Vault or Graph could not be read. The message is safe to show: no secret value, no token. `code`: the
    relay's outcome code when no token could be had (AADSTS700027: Entra refuses the certificate)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class ChannelError(RuntimeError):
    """A channel could not deliver. The message is safe to show (no URL: webhook URLs carry a signature)."""


# --- What is read ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretInfo:
    """The current version of the Key Vault item the credential lives in, as properties only: the value is never
    read here. A client secret (GRAPH_CREDENTIAL=secret), or a certificate (certificate): a Key Vault certificate's
    addressable secret, whose exp and nbf are the certificate's own dates ("About Azure Key Vault certificates",
    "Composition of a Certificate": https://learn.microsoft.com/azure/key-vault/certificates/about-certificates)."""

    name: str
    vault_uri: str
    version: str | None  # None: the item has no version at all
    enabled: bool = True
    expires_on: datetime | None = None
    created_on: datetime | None = None
    kind: str = "secret"  # "secret" or "certificate": what the relay holds (GRAPH_CREDENTIAL)

    @property
    def noun(self) -> str:
        """What it is called in a finding: "client secret" or "certificate"."""
        return "certificate" if self.kind == "certificate" else "client secret"


@dataclass(frozen=True)
class EntraCredential:
    """One of the app registration's passwordCredentials or keyCredentials. Graph's `hint` (a secret value's first
    three characters) is deliberately not kept: it is part of the secret."""

    key_id: str
    display_name: str | None
    end: datetime | None
    thumbprint: str | None = None  # a keyCredential's SHA-1 thumbprint (customKeyIdentifier), hex, upper case


class SecretProperties(Protocol):
    def current(self) -> SecretInfo:
        """The current version's properties; raise ExpiryReadError when Key Vault cannot be read."""
        ...


class EntraCredentials(Protocol):
    def password_credentials(self) -> list[EntraCredential]:
        """The app registration's password credentials; raise ExpiryReadError when Graph cannot be read."""
        ...

    def key_credentials(self) -> list[EntraCredential]:
        """The app registration's certificates (keyCredentials); raise ExpiryReadError when Graph cannot be read."""
        ...


class GraphToken(Protocol):
    """The relay's Graph token source (shared.tokens.TokenSource): what the secretless modes check instead."""

    def token(self, *, fresh: bool = False) -> str: ...


class WarningRecords(Protocol):
    """Which channels already got a warning, keyed by secret (name, version) and warning key.

    Any exception means "the store is down": the check then warns anyway.
    """

    def delivered(self, secret_name: str, version: str, key: str) -> frozenset[str]: ...

    def record(
        self,
        secret_name: str,
        version: str,
        key: str,
        channels: Iterable[str],
        *,
        at: datetime,
        expires_on: datetime | None,
    ) -> None: ...


class Channel(Protocol):
    @property
    def name(self) -> str: ...

    def send(self, alert: Alert) -> None:
        """Deliver the alert; raise (ChannelError preferably) when it could not be delivered."""
        ...


# --- What is decided ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One warning, with everything a channel renders. Never holds the secret's value."""

    state: State
    kind: str  # threshold | no-exp | expired | disabled | not-found | unreadable | entra-* | token-*
    summary: str  # one line, no CR/LF (a mail subject)
    details: tuple[str, ...]
    secret: SecretInfo | None  # None: the secretless modes, where nothing is stored (a token failure)
    client_id: str
    tenant_id: str
    days_left: int | None
    threshold: int | None
    at: datetime
    mode: str = "secret"  # GRAPH_CREDENTIAL
    fix: tuple[str, ...] | None = None  # what to do, when it is not renewing the stored item (a token failure)
    registration: str = "relay"  # whose Graph registration: the relay's, or a declared app's name (its own)

    @property
    def log_level(self) -> int:
        if self.state == "critical":
            return logging.CRITICAL
        if self.days_left is not None and self.days_left <= 7:
            return logging.ERROR
        return logging.WARNING

    @property
    def steps(self) -> tuple[str, ...]:
        if self.fix is not None or self.secret is None:
            return self.fix or ()
        return renewal_steps(self.secret, self.client_id)

    @property
    def steps_title(self) -> str:
        if self.fix is not None or self.secret is None:
            return "To fix it:"
        return f"To renew the {self.secret.noun}:"

    def text(self) -> str:
        """Plain text: the mail body, and the webhook's fallback text."""
        lines = [self.summary, "", *self.details, "", self.steps_title]
        lines += [f"{i}. {step}" for i, step in enumerate(self.steps, 1)]
        lines += ["", f"Checked at {iso(self.at)} by Graph Mail Relay (event {EVENT})."]
        return "\n".join(lines)


@dataclass
class Finding:
    """One decision of a run and what became of it."""

    state: State
    kind: str
    message: str
    threshold: int | None = None
    key: str | None = None  # record key; None: sent on every run
    alert: Alert | None = None
    notified: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # channel -> safe reason
    previously: list[str] = field(default_factory=list)  # channels that got it on an earlier run
    would_notify: list[str] = field(default_factory=list)  # --dry-run: who would get it now
    fix: tuple[str, ...] | None = None  # what to do, when it is not the stored item's renewal (a token failure)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "kind": self.kind,
            "message": self.message,
            "threshold": self.threshold,
            "recordKey": self.key,
            "notified": self.notified,
            "failed": self.failed,
            "previouslyNotified": self.previously,
            "wouldNotify": self.would_notify,
            **({"fix": list(self.fix)} if self.fix else {}),
        }


@dataclass
class Report:
    secret: SecretInfo | None
    checked_at: datetime
    days_left: int | None
    findings: list[Finding]
    dry_run: bool = False
    store_error: str | None = None
    mode: str = "secret"  # GRAPH_CREDENTIAL: what was checked (a secret's or a certificate's dates, or a token)

    @property
    def state(self) -> State:
        worst: State = "ok"
        for f in self.findings:
            if _RANK[f.state] > _RANK[worst]:
                worst = f.state
        return worst

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.state]

    def to_json(self) -> dict[str, Any]:
        s = self.secret
        return {
            "state": self.state,
            "credential": self.mode,
            # What expires: the Key Vault secret or certificate; null in the secretless modes (nothing stored).
            "itemKind": s.kind if s else None,
            "checkedAt": iso(self.checked_at),
            "secretName": s.name if s else None,
            "secretVersion": s.version if s else None,
            "enabled": s.enabled if s else None,
            "expiresOn": iso(s.expires_on) if s and s.expires_on else None,
            "daysLeft": self.days_left,
            "dryRun": self.dry_run,
            "recordStoreError": self.store_error,
            "findings": [f.to_json() for f in self.findings],
        }


def iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else ""


def day(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def safe_reason(e: BaseException) -> str:
    """A one-line reason without URLs (a webhook's signature, a SAS) or anything after them."""
    if isinstance(e, (ChannelError, ExpiryReadError)):
        return str(e)
    message = getattr(e, "message", None) or str(e)
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    if "://" in first or "?" in first or not first:
        return type(e).__name__
    return f"{type(e).__name__}: {first[:200]}"


def log_fields(
    secret: SecretInfo | None,
    left: int | None,
    threshold: int | None,
    state: str,
    kind: str,
    mode: str = "secret",
    registration: str = "relay",
) -> dict[str, Any]:
    # The dimensions infra's alerts and workbook read (shared/telemetry.py); the item's name and version are not
    # secret.
    return {
        "event": "secret.expiry",  # EVENT, spelt out: infra's wiring test looks for this very text
        "registration": registration,
        "credential": mode,
        "itemKind": secret.kind if secret else None,
        "secretName": secret.name if secret else None,
        "secretVersion": secret.version if secret else None,
        "daysLeft": left,
        "threshold": threshold,
        "state": state,
        "kind": kind,
        "expiresOn": iso(secret.expires_on) if secret and secret.expires_on else None,
    }


def renewal_steps(secret: SecretInfo, client_id: str) -> tuple[str, ...]:
    if secret.kind == "certificate":
        return certificate_renewal_steps(secret, client_id)
    vault = vault_name(secret.vault_uri)
    return (
        f"Create a new client secret in the app registration {client_id} (Entra admin center > App "
        "registrations > Certificates & secrets > New client secret, or "
        f"`az ad app credential reset --id {client_id} --append --years 1`). Copy its Value, not its Secret ID.",
        f"Store it as a new version of the Key Vault secret '{secret.name}', with exp set to the new secret's "
        f"end date: `az keyvault secret set --vault-name {vault} --name {secret.name} --file <file holding "
        "the value> --expires <end date, UTC>` (a file keeps the value out of the shell history).",
        "Nothing to restart: the relay re-reads Key Vault when Entra rejects the secret it holds, and this "
        "check watches the new version from its next run (`mailrelay expiry check` shows it at once). "
        "Delete the old client secret from the app registration once mail flows with the new one.",
    )


def certificate_renewal_steps(certificate: SecretInfo, client_id: str) -> tuple[str, ...]:
    """A Key Vault certificate renews itself by its policy's lifetime action (AutoRenew: "Renew a certificate in
    Azure Key Vault", https://learn.microsoft.com/azure/key-vault/certificates/overview-renew-certificate); Entra is
    not told: the app registration must get the new public key ("Add a certificate to an app":
    https://learn.microsoft.com/graph/applications-how-to-add-certificate). infra/README.md has the steps."""
    vault, name = vault_name(certificate.vault_uri), certificate.name
    return (
        f"Key Vault renews the certificate '{name}' by its policy's lifetime action (AutoRenew): check that a new "
        f"version exists (`az keyvault certificate list-versions --vault-name {vault} --name {name}`). Without "
        f"AutoRenew, or with an issuer that cannot renew, make one: `az keyvault certificate create --vault-name "
        f'{vault} --name {name} --policy "$(az keyvault certificate show --vault-name {vault} --name {name} '
        '--query policy)"`.',
        f"Give the app registration {client_id} the new version's public key: Key Vault's renewal does not tell "
        f"Entra ID. Run `infra/scripts/sync-app-certificate.sh --vault-name {vault} --certificate-name {name} "
        f"--app-id {client_id}` (infra/README.md, `certificate`), or by hand `az ad app credential reset --id "
        f"{client_id} --keyvault {vault} --cert {name} --append`. Only the public certificate leaves Key Vault.",
        "Nothing to restart: the relay reads the new version when Entra refuses the one it holds (AADSTS700027) "
        "or once that one has ended, and this check watches the new version from its next run (`mailrelay expiry "
        "check` shows it at once). Remove the old certificate from the app registration once mail flows with the "
        "new one.",
    )


def vault_name(vault_uri: str) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(vault_uri).hostname or "<vault>"
    return host.split(".")[0] if host.endswith(".vault.azure.net") else "<vault>"
