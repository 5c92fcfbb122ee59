"""The client secret's expiry: read its dates, decide, and warn once per threshold through independent channels.

One `ExpiryCheck.run()` serves the daily timer (function_app.py) and `mailrelay expiry check`:
1. read the current version's properties from Key Vault (version, enabled, exp), never its value;
2. decide: ok, a threshold crossed (EXPIRY_WARN_DAYS), no exp, expired, disabled; optionally compare
   with the app registration's passwordCredentials in Entra (EXPIRY_COMPARE_ENTRA);
3. for each warning not yet sent, notify every configured channel (mail, webhook, log) independently,
   and record which channels got it in Table storage, keyed by secret version and threshold.

Expired, disabled and missing secrets are critical and go out on every run: the relay cannot send
at all, and a one-off warning could be the one that nobody read. Everything else goes out once per
secret version, so a new version (the renewal) starts afresh. If the record store is down, the
warning goes out anyway: a duplicate is better than silence.

Cheap to import (function_app.py imports it for the timer): SDKs and `requests` load inside calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

if TYPE_CHECKING:
    import requests
    from azure.data.tables import TableClient
    from azure.keyvault.secrets import SecretClient

    from shared.sending import Attempt
    from shared.tokens import TokenSource

log = logging.getLogger("mailrelay.expiry")

EVENT: Final = "secret.expiry"  # infra/app/alerts.bicep matches on this (customDimensions.event and message text)
TABLE_NAME: Final = "expirywarnings"  # created by infra/main.bicep; created on first use locally
# Key Vault's exp and Entra's endDateTime are typed in by hand, in different portals and time zones.
ENTRA_TOLERANCE: Final = timedelta(days=1)

State = Literal["ok", "warning", "critical"]
_RANK: Final[dict[str, int]] = {"ok": 0, "warning": 1, "critical": 2}
EXIT_CODES: Final[dict[str, int]] = {"ok": 0, "warning": 1, "critical": 2}


class ExpiryReadError(RuntimeError):
    """Key Vault or Graph could not be read. The message is safe to show: no secret value, no token."""


class ChannelError(RuntimeError):
    """A channel could not deliver. The message is safe to show (no URL: webhook URLs carry a signature)."""


# --- What is read ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretInfo:
    """The current version of the Key Vault secret, as properties only: the value is never read here."""

    name: str
    vault_uri: str
    version: str | None  # None: the secret has no version at all
    enabled: bool = True
    expires_on: datetime | None = None
    created_on: datetime | None = None


@dataclass(frozen=True)
class EntraCredential:
    """One of the app registration's passwordCredentials. Graph's `hint` (the value's first three
    characters) is deliberately not kept: it is part of the secret."""

    key_id: str
    display_name: str | None
    end: datetime | None


class SecretProperties(Protocol):
    def current(self) -> SecretInfo:
        """The current version's properties; raise ExpiryReadError when Key Vault cannot be read."""
        ...


class EntraCredentials(Protocol):
    def password_credentials(self) -> list[EntraCredential]:
        """The app registration's password credentials; raise ExpiryReadError when Graph cannot be read."""
        ...


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
    kind: str  # threshold | no-exp | expired | disabled | not-found | unreadable | entra-*
    summary: str  # one line, no CR/LF (a mail subject)
    details: tuple[str, ...]
    secret: SecretInfo
    client_id: str
    tenant_id: str
    days_left: int | None
    threshold: int | None
    at: datetime

    @property
    def log_level(self) -> int:
        if self.state == "critical":
            return logging.CRITICAL
        if self.days_left is not None and self.days_left <= 7:
            return logging.ERROR
        return logging.WARNING

    @property
    def steps(self) -> tuple[str, ...]:
        return renewal_steps(self.secret, self.client_id)

    def text(self) -> str:
        """Plain text: the mail body, and the webhook's fallback text."""
        lines = [self.summary, "", *self.details, "", "To renew the client secret:"]
        lines += [f"{i}. {step}" for i, step in enumerate(self.steps, 1)]
        lines += ["", f"Checked at {_iso(self.at)} by Graph Mail Relay (event {EVENT})."]
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
        }


@dataclass
class Report:
    secret: SecretInfo | None
    checked_at: datetime
    days_left: int | None
    findings: list[Finding]
    dry_run: bool = False
    store_error: str | None = None

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
            "checkedAt": _iso(self.checked_at),
            "secretName": s.name if s else None,
            "secretVersion": s.version if s else None,
            "enabled": s.enabled if s else None,
            "expiresOn": _iso(s.expires_on) if s and s.expires_on else None,
            "daysLeft": self.days_left,
            "dryRun": self.dry_run,
            "recordStoreError": self.store_error,
            "findings": [f.to_json() for f in self.findings],
        }


def days_left(expires_on: datetime, now: datetime) -> int:
    """Whole days left, rounded down: 23 hours left is 0 days (and the 1-day threshold has fired)."""
    return (expires_on - now) // timedelta(days=1)


def evaluate(secret: SecretInfo, now: datetime, warn_days: Sequence[int]) -> Finding:
    """The secret's own state: what the Key Vault properties say, before any comparison with Entra."""
    name = secret.name
    if secret.version is None:
        return Finding("critical", "not-found", f"Key Vault secret '{name}' has no version: the relay cannot send")
    if not secret.enabled:
        return Finding(
            "critical",
            "disabled",
            f"Key Vault secret '{name}' (version {secret.version}) is disabled: the relay cannot read it",
        )
    if secret.expires_on is None:
        return Finding(
            "warning",
            "no-exp",
            f"Key Vault secret '{name}' has no expiry date (exp): nothing can warn before the client secret "
            "expires; set exp to the app registration's end date for this secret",
            key="no-exp",
        )
    when = _day(secret.expires_on)
    if secret.expires_on <= now:
        return Finding(
            "critical",
            "expired",
            f"Client secret '{name}' expired on {when}: every send fails with AADSTS7000222 until it is renewed",
        )
    left = days_left(secret.expires_on, now)
    crossed = [t for t in warn_days if secret.expires_on - now <= timedelta(days=t)]
    if not crossed:
        return Finding("ok", "ok", f"Client secret '{name}' expires on {when}, in {left} days")
    # The tightest threshold crossed: after a pause (first deployment, a stopped app) one warning for
    # "7 days" is the useful one, not 30, 14 and 7 at once.
    threshold = min(crossed)
    left_text = "within a day" if left < 1 else f"in {left} day{'s' if left != 1 else ''}"
    return Finding(
        "warning",
        "threshold",
        f"Client secret '{name}' expires {left_text}, on {when} ({threshold}-day warning)",
        threshold=threshold,
        key=f"days-{threshold}",
    )


def compare_with_entra(secret: SecretInfo, credentials: Sequence[EntraCredential], now: datetime) -> list[Finding]:
    """Warn when Key Vault's exp does not match any Entra end date, or Entra holds a credential ending sooner."""
    if secret.expires_on is None or secret.version is None:
        return []  # the no-exp warning already says what to do
    exp = secret.expires_on
    dated = [c for c in credentials if c.end is not None]
    findings: list[Finding] = []
    nearest = min(dated, key=lambda c: abs(_end(c) - exp), default=None)
    if nearest is None or abs(_end(nearest) - exp) > ENTRA_TOLERANCE:
        ends = ", ".join(f"{_label(c)} ends {_day(_end(c))}" for c in dated) or "no password credential"
        findings.append(
            Finding(
                "warning",
                "entra-mismatch",
                f"Key Vault's exp for '{secret.name}' ({_day(exp)}) matches no client secret of the app "
                f"registration within a day (Entra: {ends}); set exp to the end date of the secret stored "
                "in Key Vault, or the warnings come at the wrong time",
                key="entra-mismatch",
            )
        )
    for c in dated:
        if c is nearest or not now < _end(c) < exp - ENTRA_TOLERANCE:
            continue
        findings.append(
            Finding(
                "warning",
                "entra-sooner",
                f"The app registration holds client secret {_label(c)} ending {_day(_end(c))}, before Key "
                f"Vault's exp for '{secret.name}' ({_day(exp)}); if the relay uses it, sends fail from then "
                "on; if it is an old secret, delete it",
                key=f"entra-sooner-{c.key_id}",
            )
        )
    return findings


# --- The check ------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ExpiryCheck:
    def __init__(
        self,
        *,
        secret: SecretProperties,
        records: WarningRecords,
        channels: Sequence[Channel],
        warn_days: Sequence[int],
        client_id: str,
        tenant_id: str,
        entra: EntraCredentials | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ):
        self._secret = secret
        self._records = records
        self._channels = list(channels)
        self._warn_days = tuple(warn_days)
        self._client_id = client_id
        self._tenant_id = tenant_id
        self._entra = entra
        self._clock = clock

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self._channels]

    def run(self, *, dry_run: bool = False) -> Report:
        """Check now; notify and record unless `dry_run` (which notifies nobody and records nothing)."""
        now = self._clock()
        try:
            secret = self._secret.current()
        except ExpiryReadError as e:
            # Nothing to key a record on, and nothing known: say so on every run.
            unknown = SecretInfo(name="?", vault_uri="", version=None)
            finding = Finding("warning", "unreadable", f"The secret's expiry could not be read: {e}")
            report = Report(None, now, None, [finding], dry_run)
            self._deliver(report, finding, unknown, now)
            return report
        left = days_left(secret.expires_on, now) if secret.expires_on else None
        findings = [evaluate(secret, now, self._warn_days)]
        if self._entra is not None and secret.version is not None:
            try:
                findings += compare_with_entra(secret, self._entra.password_credentials(), now)
            except ExpiryReadError as e:
                findings.append(
                    Finding(
                        "warning",
                        "entra-unavailable",
                        f"The app registration's client secrets could not be read for comparison: {e}",
                        key="entra-unavailable",
                    )
                )
        report = Report(secret, now, left, findings, dry_run)
        for finding in findings:
            self._deliver(report, finding, secret, now)
        return report

    def _deliver(self, report: Report, finding: Finding, secret: SecretInfo, now: datetime) -> None:
        left = days_left(secret.expires_on, now) if secret.expires_on else None
        fields = _log_fields(secret, left, finding.threshold, finding.state, finding.kind)
        if finding.state == "ok":
            if not report.dry_run:
                log.info("%s: %s", EVENT, finding.message, extra=fields)
            return
        finding.alert = Alert(
            state=finding.state,
            kind=finding.kind,
            summary=finding.message,
            details=_details(secret, left, self._client_id, self._tenant_id),
            secret=secret,
            client_id=self._client_id,
            tenant_id=self._tenant_id,
            days_left=left,
            threshold=finding.threshold,
            at=now,
        )
        previously: frozenset[str] = frozenset()
        keyed = finding.key is not None and secret.version is not None
        if keyed:
            assert finding.key is not None and secret.version is not None
            try:
                previously = self._records.delivered(secret.name, secret.version, finding.key)
            except Exception as e:  # any failure of the store: warn anyway
                report.store_error = _safe_reason(e)
                log.warning(
                    "%s: the warning record store is unreachable (%s); warning anyway",
                    EVENT,
                    report.store_error,
                    extra={"event": "secret.expiry.store", "reason": report.store_error},
                )
        finding.previously = sorted(previously)
        pending = [c for c in self._channels if c.name not in previously]
        if report.dry_run:
            finding.would_notify = [c.name for c in pending]
            return
        for channel in pending:
            # Each channel on its own: the mail channel fails exactly when the secret has expired,
            # and that must not keep the webhook and the log from going out.
            try:
                channel.send(finding.alert)
            except Exception as e:
                reason = finding.failed[channel.name] = _safe_reason(e)
                log.error(
                    "%s: the %s alert channel failed: %s",
                    EVENT,
                    channel.name,
                    reason,
                    extra={"event": "secret.expiry.channel", "channel": channel.name, "reason": reason},
                )
            else:
                finding.notified.append(channel.name)
        if keyed and finding.notified:
            assert finding.key is not None and secret.version is not None
            try:
                self._records.record(
                    secret.name,
                    secret.version,
                    finding.key,
                    previously | set(finding.notified),
                    at=now,
                    expires_on=secret.expires_on,
                )
            except Exception as e:
                report.store_error = report.store_error or _safe_reason(e)
                log.warning(
                    "%s: the warning could not be recorded (%s); it may be sent again",
                    EVENT,
                    report.store_error,
                    extra={"event": "secret.expiry.store", "reason": report.store_error},
                )


def _log_fields(secret: SecretInfo, left: int | None, threshold: int | None, state: str, kind: str) -> dict[str, Any]:
    # The fields infra's alert rule and dashboards read; the secret's name and version are not secret.
    return {
        "event": "secret.expiry",  # EVENT, spelt out: infra's wiring test looks for this very text
        "secretName": secret.name,
        "secretVersion": secret.version,
        "daysLeft": left,
        "threshold": threshold,
        "state": state,
        "kind": kind,
        "expiresOn": _iso(secret.expires_on) if secret.expires_on else None,
    }


def _details(secret: SecretInfo, left: int | None, client_id: str, tenant_id: str) -> tuple[str, ...]:
    expires = _iso(secret.expires_on) if secret.expires_on else "not set"
    return (
        "The relay sends mail through Microsoft Graph as the app registration below, with a client secret "
        "it reads from Key Vault. When the client secret expires, every send fails with AADSTS7000222.",
        f"Key Vault: {secret.vault_uri or '?'}, secret '{secret.name}', version {secret.version or '?'}"
        f"{'' if secret.enabled else ' (disabled)'}",
        f"Expires (Key Vault exp): {expires}" + (f", {left} days left" if left is not None and left >= 0 else ""),
        f"App registration: client id {client_id}, tenant {tenant_id}",
    )


def renewal_steps(secret: SecretInfo, client_id: str) -> tuple[str, ...]:
    vault = _vault_name(secret.vault_uri)
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


# --- Channels -------------------------------------------------------------------------------------


class MailSink(Protocol):
    """The relay's own send path (shared.sending.Relay)."""

    def send(self, raw: bytes | str) -> Attempt: ...


class MailChannel:
    """Mail through the relay's own send path: a request built per the contract, from an allowed sender.

    It needs the expiring secret, so it is the channel that fails when the secret has expired; that is
    why it is never the only one.
    """

    name = "mail"

    def __init__(self, relay: MailSink, sender: str, recipients: Sequence[str]):
        self._relay = relay
        self._sender = sender
        self._recipients = list(recipients)

    def request(self, alert: Alert) -> dict[str, Any]:
        return {
            "from": self._sender,
            "to": self._recipients,
            "subject": f"[Graph Mail Relay] {alert.summary}"[:255],
            "body": {"contentType": "text", "content": alert.text()},
            "importance": "high" if alert.state == "critical" else "normal",
            "headers": {"X-MailRelay-Event": EVENT},
        }

    def send(self, alert: Alert) -> None:
        from shared.outcomes import Sent

        outcome = self._relay.send(json.dumps(self.request(alert))).outcome
        if not isinstance(outcome, Sent):
            message = (
                outcome.message if outcome.message.startswith(outcome.code) else f"{outcome.code}: {outcome.message}"
            )
            raise ChannelError(message)


TEAMS_CARD: Final = "application/vnd.microsoft.card.adaptive"


def is_slack_url(url: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "").lower() == "hooks.slack.com"


def webhook_payload(alert: Alert, *, slack: bool) -> dict[str, Any]:
    """The JSON a chat webhook renders.

    Slack incoming webhooks (hooks.slack.com) get `{"text": ...}`, their documented minimum. Everything
    else gets the shape Teams' Workflows template "Post to a channel when a webhook request is received"
    reads (a message with one Adaptive Card attachment), plus a top-level `text` so a generic receiver
    still gets the summary. One payload for both is not possible: Workflows ignores `text`, and Slack
    would show the card attachment as an empty legacy attachment.
    """
    if slack:
        steps = "\n".join(f"{i}. {s}" for i, s in enumerate(alert.steps, 1))
        emoji = ":rotating_light:" if alert.state == "critical" else ":warning:"
        return {"text": f"{emoji} *{alert.summary}*\n" + "\n".join(alert.details) + f"\n*To renew:*\n{steps}"}
    facts = [
        {"title": "Secret", "value": f"{alert.secret.name} (version {alert.secret.version or '?'})"},
        {"title": "Key Vault", "value": alert.secret.vault_uri or "?"},
        {"title": "Expires", "value": _iso(alert.secret.expires_on) if alert.secret.expires_on else "not set"},
        {"title": "Days left", "value": "-" if alert.days_left is None else str(alert.days_left)},
        {"title": "App (client) id", "value": alert.client_id},
        {"title": "State", "value": alert.state},
    ]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",  # what Teams renders on every client
        "body": [
            {
                "type": "TextBlock",
                "text": alert.summary,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": "Attention" if alert.state == "critical" else "Warning",
            },
            {"type": "FactSet", "facts": facts},
            {"type": "TextBlock", "text": "To renew the client secret:", "weight": "Bolder", "wrap": True},
            *({"type": "TextBlock", "text": f"{i}. {step}", "wrap": True} for i, step in enumerate(alert.steps, 1)),
        ],
    }
    return {
        "type": "message",
        "text": alert.summary,
        "attachments": [{"contentType": TEAMS_CARD, "contentUrl": None, "content": card}],
    }


class WebhookChannel:
    """A JSON POST to a chat webhook: needs neither the expiring secret nor Graph."""

    name = "webhook"

    def __init__(self, session: requests.Session, url: str, timeout: tuple[float, float] = (5.0, 10.0)):
        self._session = session
        self._url = url  # carries a signature (Teams' sig=, Slack's path): never in a message
        self._timeout = timeout
        # urllib3 logs each request's path and query at DEBUG: that is the signature, so hide it there.
        _redact_in_logs(url, logging.getLogger("urllib3.connectionpool"))

    def send(self, alert: Alert) -> None:
        import requests

        payload = webhook_payload(alert, slack=is_slack_url(self._url))
        try:
            response = self._session.post(self._url, json=payload, timeout=self._timeout)
        except requests.Timeout:
            raise ChannelError("the webhook did not answer in time") from None
        except requests.RequestException as e:
            # str(e) names the URL, signature included: only the exception's type goes out.
            raise ChannelError(f"the webhook is unreachable ({type(e).__name__})") from None
        if response.status_code >= 300:
            raise ChannelError(f"the webhook answered HTTP {response.status_code}")


class _RedactFilter(logging.Filter):
    def __init__(self, secrets: Sequence[str]):
        super().__init__()
        self.secrets = [x for x in secrets if x]

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and any(x in a for x in self.secrets) for a in record.args
        ):
            record.args = tuple(self._redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and any(x in record.msg for x in self.secrets):
            record.msg = self._redact(record.msg)
        return True

    def _redact(self, text: str) -> str:
        for x in self.secrets:
            text = text.replace(x, "/<webhook, redacted>")
        return text


def _redact_in_logs(url: str, logger: logging.Logger) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(target) <= 1:
        return
    for existing in logger.filters:
        if isinstance(existing, _RedactFilter):
            if target not in existing.secrets:
                existing.secrets.append(target)
            return
    logger.addFilter(_RedactFilter([target]))


class LogChannel:
    """A structured log line at WARNING, ERROR or CRITICAL; Application Insights alerts on it.

    The message text starts with the event name too: with the Functions host's default log forwarding
    only the text reaches Application Insights, and infra's alert query matches either.
    """

    name = "log"

    def send(self, alert: Alert) -> None:
        log.log(
            alert.log_level,
            "%s: %s",
            EVENT,
            alert.summary,
            extra=_log_fields(alert.secret, alert.days_left, alert.threshold, alert.state, alert.kind),
        )


# --- Key Vault, Graph and Table storage -----------------------------------------------------------


class KeyVaultSecretProperties:
    """The current version's properties, from the versions list: needs no permission to read the value."""

    def __init__(self, client: SecretClient, name: str, vault_uri: str):
        self._client = client
        self._name = name
        self._vault_uri = vault_uri

    def current(self) -> SecretInfo:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            versions = list(self._client.list_properties_of_secret_versions(self._name))
        except ResourceNotFoundError:
            versions = []
        except AzureError as e:
            raise ExpiryReadError(f"Key Vault: {_safe_reason(e)}") from None
        if not versions:
            return SecretInfo(self._name, self._vault_uri, None)
        # The current version is the newest; list order is not documented, so sort (ties: the later listed).
        oldest = datetime.min.replace(tzinfo=UTC)
        _, newest = max(enumerate(versions), key=lambda iv: (iv[1].created_on or oldest, iv[0]))
        return SecretInfo(
            name=self._name,
            vault_uri=self._vault_uri,
            version=newest.version,
            enabled=bool(newest.enabled),
            expires_on=newest.expires_on,
            created_on=newest.created_on,
        )


class GraphApplicationCredentials:
    """GET /v1.0/applications(appId='...')?$select=passwordCredentials with the relay's own token.

    Needs the application permission Application.Read.All (admin consent); EXPIRY_COMPARE_ENTRA turns
    this on. The relay's token is the one the expiring secret buys, so this fails once it has expired.
    """

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        client_id: str,
        tokens: TokenSource,
        timeout: tuple[float, float] = (5.0, 15.0),
    ):
        self._session = session
        self._url = f"{base_url.rstrip('/')}/v1.0/applications(appId='{client_id}')?$select=passwordCredentials"
        self._tokens = tokens
        self._timeout = timeout

    def password_credentials(self) -> list[EntraCredential]:
        import requests

        from shared.outcomes import RelayFailure

        try:
            token = self._tokens.token()
            response = self._session.get(self._url, headers={"Authorization": f"Bearer {token}"}, timeout=self._timeout)
        except RelayFailure as e:
            raise ExpiryReadError(f"no Graph token ({e.outcome.code})") from None
        except requests.RequestException as e:
            raise ExpiryReadError(f"Graph unreachable ({type(e).__name__})") from None
        if response.status_code == 403:
            raise ExpiryReadError(
                "Graph answered 403 Authorization_RequestDenied: grant the app the application permission "
                "Application.Read.All with admin consent, or set EXPIRY_COMPARE_ENTRA=false"
            )
        if response.status_code != 200:
            code = _graph_code(response)
            raise ExpiryReadError(f"Graph answered HTTP {response.status_code}{f' {code}' if code else ''}")
        try:
            items = response.json().get("passwordCredentials") or []
            return [
                EntraCredential(
                    key_id=str(item.get("keyId")),
                    display_name=item.get("displayName"),
                    end=parse_graph_datetime(item.get("endDateTime")),
                )
                for item in items
            ]
        except (ValueError, AttributeError, TypeError):
            raise ExpiryReadError("Graph answered with an unexpected passwordCredentials shape") from None


def parse_graph_datetime(value: Any) -> datetime | None:
    """Graph's DateTimeOffset: '2026-05-01T10:00:00Z', with up to 7 fractional digits."""
    if not value:
        return None
    text = str(value)
    if "." in text:  # Python takes 6 fractional digits at most before 3.12
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class TableWarningRecords:
    """Warnings sent, in Table storage: PartitionKey = secret name, RowKey = '<version>.<warning key>'.

    One row per (version, warning); `Channels` lists the channels that got it, so a channel that
    failed is tried again on the next run while the others are not repeated.
    """

    def __init__(self, client: TableClient):
        self._client = client
        self._table_checked = False

    def _ensure_table(self) -> None:
        if not self._table_checked:
            from shared.storage import create_table

            create_table(self._client)
            self._table_checked = True

    def delivered(self, secret_name: str, version: str, key: str) -> frozenset[str]:
        from azure.core.exceptions import ResourceNotFoundError

        self._ensure_table()
        try:
            entity = self._client.get_entity(partition_key=secret_name, row_key=f"{version}.{key}")
        except ResourceNotFoundError:
            return frozenset()
        return frozenset(c for c in str(entity.get("Channels", "")).split(",") if c)

    def record(
        self,
        secret_name: str,
        version: str,
        key: str,
        channels: Iterable[str],
        *,
        at: datetime,
        expires_on: datetime | None,
    ) -> None:
        self._ensure_table()
        entity: dict[str, Any] = {
            "PartitionKey": secret_name,
            "RowKey": f"{version}.{key}",
            "SecretVersion": version,
            "Warning": key,
            "Channels": ",".join(sorted(set(channels))),
            "SentAt": at,
        }
        if expires_on is not None:
            entity["ExpiresOn"] = expires_on
        self._client.upsert_entity(entity)


class MemoryWarningRecords:
    """The record store in memory: unit tests, and `mailrelay expiry check` when told to keep nothing."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], frozenset[str]] = {}
        self.down: Exception | None = None  # set to simulate an unreachable store

    def delivered(self, secret_name: str, version: str, key: str) -> frozenset[str]:
        if self.down:
            raise self.down
        return self.rows.get((secret_name, version, key), frozenset())

    def record(
        self,
        secret_name: str,
        version: str,
        key: str,
        channels: Iterable[str],
        *,
        at: datetime,
        expires_on: datetime | None,
    ) -> None:
        if self.down:
            raise self.down
        self.rows[(secret_name, version, key)] = frozenset(channels)


# --- Entry points ---------------------------------------------------------------------------------


def format_table(report: Report) -> str:
    """The CLI's table: one row per finding."""
    s = report.secret
    rows = [("SECRET", "VERSION", "EXPIRES", "DAYS LEFT", "STATE", "CHANNELS NOTIFIED")]
    for f in report.findings:
        if report.dry_run:
            channels = "would: " + (",".join(f.would_notify) or "-")
        else:
            parts = list(f.notified)
            parts += [f"{c} (failed)" for c in f.failed]
            parts += [f"{c} (earlier)" for c in f.previously]
            channels = ",".join(parts) or "-"
        rows.append(
            (
                s.name if s else "?",
                (s.version or "-") if s else "?",
                _day(s.expires_on) if s and s.expires_on else "-",
                "-" if report.days_left is None else str(report.days_left),
                f.state,
                channels,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("")
    lines += [f"{f.state}: {f.message}" for f in report.findings]
    for f in report.findings:
        lines += [f"  {channel} failed: {reason}" for channel, reason in f.failed.items()]
    if report.store_error:
        lines.append(f"record store unreachable ({report.store_error}): warned anyway")
    return "\n".join(lines)


def run_cli(*, as_json: bool, dry_run: bool, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """`mailrelay expiry check`: (exit code, text to print). Settings come from the environment."""
    from shared.bootstrap import build_expiry_runtime
    from shared.settings import load_expiry_settings

    settings = load_expiry_settings(env)  # a SettingsError names the setting; the CLI prints it
    report = build_expiry_runtime(settings).check.run(dry_run=dry_run)
    text = json.dumps(report.to_json(), indent=2) if as_json else format_table(report)
    return report.exit_code, text


# --- Helpers --------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else ""


def _day(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _end(c: EntraCredential) -> datetime:
    assert c.end is not None
    return c.end


def _label(c: EntraCredential) -> str:
    return f"'{c.display_name}' ({c.key_id})" if c.display_name else f"{c.key_id}"


def _vault_name(vault_uri: str) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(vault_uri).hostname or "<vault>"
    return host.split(".")[0] if host.endswith(".vault.azure.net") else "<vault>"


def _graph_code(response: requests.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def _safe_reason(e: BaseException) -> str:
    """A one-line reason without URLs (a webhook's signature, a SAS) or anything after them."""
    if isinstance(e, (ChannelError, ExpiryReadError)):
        return str(e)
    message = getattr(e, "message", None) or str(e)
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    if "://" in first or "?" in first or not first:
        return type(e).__name__
    return f"{type(e).__name__}: {first[:200]}"
