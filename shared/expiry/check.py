"""The check and its decisions: evaluate a secret's or a certificate's dates, then warn once per threshold on every
channel; in the secretless modes (federated, managed-identity), where nothing expires, ask for a fresh Graph token
instead and alert on every run while none can be had."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared.expiry.entra import compare_certificate_with_entra, compare_with_entra
from shared.expiry.model import (
    EVENT,
    Alert,
    Channel,
    EntraCredentials,
    ExpiryReadError,
    Finding,
    GraphToken,
    Report,
    SecretInfo,
    SecretProperties,
    WarningRecords,
    day,
    iso,
    log_fields,
    safe_reason,
)

if TYPE_CHECKING:
    from shared.outcomes import Failure

log = logging.getLogger("mailrelay.expiry")

# GRAPH_CREDENTIAL's modes with nothing stored that expires: the check asks for a Graph token instead.
SECRETLESS_MODES = ("federated", "managed-identity")


def days_left(expires_on: datetime, now: datetime) -> int:
    """Whole days left, rounded down: 23 hours left is 0 days (and the 1-day threshold has fired)."""
    return (expires_on - now) // timedelta(days=1)


def evaluate(secret: SecretInfo, now: datetime, warn_days: Sequence[int]) -> Finding:
    """The item's own state: what the Key Vault properties say, before any comparison with Entra."""
    name = secret.name
    certificate = secret.kind == "certificate"
    item = "certificate" if certificate else "secret"
    if secret.version is None:
        return Finding("critical", "not-found", f"Key Vault {item} '{name}' has no version: the relay cannot send")
    if not secret.enabled:
        return Finding(
            "critical",
            "disabled",
            f"Key Vault {item} '{name}' (version {secret.version}) is disabled: the relay cannot read it",
        )
    if secret.expires_on is None:
        entra_end = (
            "the certificate's not-after date" if certificate else "the app registration's end date for this secret"
        )
        return Finding(
            "warning",
            "no-exp",
            f"Key Vault {item} '{name}' has no expiry date (exp): nothing can warn before the {secret.noun} "
            f"expires; set exp to {entra_end}",
            key="no-exp",
        )
    when = day(secret.expires_on)
    label = f"Certificate '{name}'" if certificate else f"Client secret '{name}'"
    if secret.expires_on <= now:
        consequence = (
            "Entra ID refuses its assertions and every send fails until Key Vault holds a renewed certificate "
            "whose public key the app registration holds"
            if certificate
            else "every send fails with AADSTS7000222 until it is renewed"
        )
        return Finding("critical", "expired", f"{label} expired on {when}: {consequence}")
    left = days_left(secret.expires_on, now)
    crossed = [t for t in warn_days if secret.expires_on - now <= timedelta(days=t)]
    if not crossed:
        return Finding("ok", "ok", f"{label} expires on {when}, in {left} days")
    # The tightest threshold crossed: after a pause (first deployment, a stopped app) one warning for
    # "7 days" is the useful one, not 30, 14 and 7 at once.
    threshold = min(crossed)
    left_text = "within a day" if left < 1 else f"in {left} day{'s' if left != 1 else ''}"
    return Finding(
        "warning",
        "threshold",
        f"{label} expires {left_text}, on {when} ({threshold}-day warning)",
        threshold=threshold,
        key=f"days-{threshold}",
    )


def token_finding(mode: str, failure: Failure | None) -> Finding:
    """The secretless modes' health: a fresh Graph token, or why none could be had. A refusal (a deleted federated
    credential, a removed identity: permanent) is critical; an outage of Entra ID or of the identity endpoint
    (transient: the relay retries its sends) a warning. Neither is recorded: both go out on every run."""
    from shared.outcomes import Transient

    if failure is None:
        return Finding("ok", "token", f"A fresh Graph token was obtained (GRAPH_CREDENTIAL={mode})")
    message = failure.message if failure.message.startswith(failure.code) else f"{failure.code}: {failure.message}"
    text = " ".join(message.split())  # one line: it is a mail's subject
    fix = (failure.hint,) if failure.hint else ("run `mailrelay doctor`: it names what is wrong",)
    if isinstance(failure, Transient):
        return Finding(
            "warning",
            "token-unavailable",
            f"No Graph token for now (GRAPH_CREDENTIAL={mode}): {text}; sends are retried meanwhile",
            fix=fix,
        )
    return Finding(
        "critical",
        "token-failed",
        f"No Graph token (GRAPH_CREDENTIAL={mode}): {text}; the relay cannot send",
        fix=fix,
    )


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ExpiryCheck:
    """The check for one Graph credential, by its mode (GRAPH_CREDENTIAL):

    - secret, certificate: `secret` reads the Key Vault item's dates (a certificate's are its own); `entra`, when
      EXPIRY_COMPARE_ENTRA is on, the app registration's passwordCredentials or keyCredentials; `thumbprint` says
      which certificate version the relay holds and its SHA-1 thumbprint, when it has read one.
    - federated, managed-identity: nothing expires; `tokens` is asked for a fresh Graph token (a deleted federated
      credential or a removed identity shows only on a new token), and Key Vault is never touched.
    """

    def __init__(
        self,
        *,
        secret: SecretProperties | None,
        records: WarningRecords,
        channels: Sequence[Channel],
        warn_days: Sequence[int],
        client_id: str,
        tenant_id: str,
        entra: EntraCredentials | None = None,
        clock: Callable[[], datetime] = _utcnow,
        mode: str = "secret",
        tokens: GraphToken | None = None,
        thumbprint: Callable[[], tuple[str | None, str] | None] | None = None,
        registration: str = "relay",
    ):
        if (secret is None) != (mode in SECRETLESS_MODES) or (mode in SECRETLESS_MODES and tokens is None):
            raise ValueError(
                f"GRAPH_CREDENTIAL={mode}: a Key Vault item to read in secret and certificate modes only, "
                "a token source in the secretless ones"
            )
        self._mode = mode
        self._registration = registration  # whose: "relay", or a declared app's name (its own registration)
        self._tokens = tokens
        self._thumbprint = thumbprint
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
        if self._secret is None:
            return self._run_secretless(now, dry_run)
        kind = "certificate" if self._mode == "certificate" else "secret"
        try:
            secret = self._secret.current()
        except ExpiryReadError as e:
            # Nothing to key a record on, and nothing known: say so on every run.
            unknown = SecretInfo(name="?", vault_uri="", version=None, kind=kind)
            noun = "certificate" if kind == "certificate" else "secret"
            finding = Finding("warning", "unreadable", f"The {noun}'s expiry could not be read: {e}")
            report = Report(None, now, None, [finding], dry_run, mode=self._mode)
            self._deliver(report, finding, unknown, now)
            return report
        left = days_left(secret.expires_on, now) if secret.expires_on else None
        findings = [evaluate(secret, now, self._warn_days)]
        if self._entra is not None and secret.version is not None:
            certificate = secret.kind == "certificate"
            try:
                if certificate:
                    findings += compare_certificate_with_entra(
                        secret, self._entra.key_credentials(), self._known_thumbprint(secret)
                    )
                else:
                    findings += compare_with_entra(secret, self._entra.password_credentials(), now)
            except ExpiryReadError as e:
                what = "certificates" if certificate else "client secrets"
                if certificate and e.code == "AADSTS700027":
                    # No token to read keyCredentials with: Entra refuses the certificate Key Vault serves now. In
                    # a new process the relay reads Key Vault's current version, so this is the renewal Entra was
                    # not told about (or an expired registration), and no send succeeds: every run.
                    findings.append(
                        Finding(
                            "critical",
                            "entra-certificate-unregistered",
                            f"Entra ID refuses Key Vault certificate '{secret.name}' (version {secret.version}): "
                            "AADSTS700027, its public key is not on the app registration (renewed by Key Vault, "
                            "Entra not told); upload it (infra/scripts/sync-app-certificate.sh; infra/README.md, "
                            "`certificate`)",
                        )
                    )
                else:
                    findings.append(
                        Finding(
                            "warning",
                            "entra-unavailable",
                            f"The app registration's {what} could not be read for comparison: {e}",
                            key="entra-unavailable",
                        )
                    )
        report = Report(secret, now, left, findings, dry_run, mode=self._mode)
        for finding in findings:
            self._deliver(report, finding, secret, now)
        return report

    def _known_thumbprint(self, secret: SecretInfo) -> str | None:
        """The SHA-1 thumbprint of the certificate version Key Vault lists as current, when the relay has read that
        very version (the timer shares the relay's clients); else None, and the end date is compared instead."""
        known = self._thumbprint() if self._thumbprint else None
        if known is None or known[0] != secret.version:
            return None
        return known[1]

    def _run_secretless(self, now: datetime, dry_run: bool) -> Report:
        """Nothing stored expires: say so, and prove a Graph token can still be had, skipping every cache."""
        from shared.outcomes import RelayFailure

        assert self._tokens is not None
        what = (
            "the app registration's federated credential trusts the managed identity"
            if self._mode == "federated"
            else "the managed identity itself calls Graph"
        )
        findings = [
            Finding("ok", "nothing-to-expire", f"GRAPH_CREDENTIAL={self._mode}: nothing stored expires ({what})")
        ]
        failure = None
        try:
            self._tokens.token(fresh=True)
        except RelayFailure as e:
            failure = e.outcome
        findings.append(token_finding(self._mode, failure))
        report = Report(None, now, None, findings, dry_run, mode=self._mode)
        for finding in findings:
            self._deliver(report, finding, None, now)
        return report

    def _deliver(self, report: Report, finding: Finding, secret: SecretInfo | None, now: datetime) -> None:
        left = days_left(secret.expires_on, now) if secret and secret.expires_on else None
        fields = log_fields(
            secret, left, finding.threshold, finding.state, finding.kind, self._mode, self._registration
        )
        if finding.state == "ok":
            if not report.dry_run:
                log.info("%s: %s", EVENT, finding.message, extra=fields)
            return
        finding.alert = Alert(
            state=finding.state,
            kind=finding.kind,
            summary=finding.message,
            details=_details(secret, left, self._client_id, self._tenant_id, self._mode),
            secret=secret,
            client_id=self._client_id,
            tenant_id=self._tenant_id,
            days_left=left,
            threshold=finding.threshold,
            at=now,
            mode=self._mode,
            registration=self._registration,
            fix=finding.fix,
        )
        previously: frozenset[str] = frozenset()
        keyed = finding.key is not None and secret is not None and secret.version is not None
        if keyed:
            assert finding.key is not None and secret is not None and secret.version is not None
            try:
                previously = self._records.delivered(secret.name, secret.version, finding.key)
            except Exception as e:  # any failure of the store: warn anyway
                report.store_error = safe_reason(e)
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
                reason = finding.failed[channel.name] = safe_reason(e)
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
            assert finding.key is not None and secret is not None and secret.version is not None
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
                report.store_error = report.store_error or safe_reason(e)
                log.warning(
                    "%s: the warning could not be recorded (%s); it may be sent again",
                    EVENT,
                    report.store_error,
                    extra={"event": "secret.expiry.store", "reason": report.store_error},
                )


def _details(secret: SecretInfo | None, left: int | None, client_id: str, tenant_id: str, mode: str) -> tuple[str, ...]:
    if secret is None:
        if mode == "managed-identity":
            how = (
                "The relay sends mail through Microsoft Graph as the Function's user-assigned managed identity "
                "(GRAPH_CREDENTIAL=managed-identity): nothing is stored and nothing expires, but the identity "
                "must still exist, be assigned to the Function App, and hold its Graph and Exchange roles.",
                f"Managed identity: client id {client_id}, tenant {tenant_id}",
            )
        else:
            how = (
                "The relay sends mail through Microsoft Graph as the app registration below, presenting the "
                "Function's user-assigned managed identity's token (GRAPH_CREDENTIAL=federated): nothing is stored "
                "and nothing expires, but the app's federated identity credential (issuer, subject, audience) and "
                "the identity must both still be there.",
                f"App registration: client id {client_id}, tenant {tenant_id}",
            )
        return how
    expires = iso(secret.expires_on) if secret.expires_on else "not set"
    if secret.kind == "certificate":
        first = (
            "The relay sends mail through Microsoft Graph as the app registration below, signing with a "
            "certificate it reads from Key Vault. Once it expires, or if the app registration does not hold "
            "the version Key Vault serves, every send fails."
        )
    else:
        first = (
            "The relay sends mail through Microsoft Graph as the app registration below, with a client secret "
            "it reads from Key Vault. When the client secret expires, every send fails with AADSTS7000222."
        )
    item = "certificate" if secret.kind == "certificate" else "secret"
    return (
        first,
        f"Key Vault: {secret.vault_uri or '?'}, {item} '{secret.name}', version {secret.version or '?'}"
        f"{'' if secret.enabled else ' (disabled)'}",
        f"Expires (Key Vault exp): {expires}" + (f", {left} days left" if left is not None and left >= 0 else ""),
        f"App registration: client id {client_id}, tenant {tenant_id}",
    )


# --- Channels -------------------------------------------------------------------------------------


def format_table(report: Report) -> str:
    """The CLI's table: one row per finding."""
    s = report.secret
    secretless = report.mode in SECRETLESS_MODES
    first = "CREDENTIAL" if secretless else "CERTIFICATE" if report.mode == "certificate" else "SECRET"
    rows = [(first, "VERSION", "EXPIRES", "DAYS LEFT", "STATE", "CHANNELS NOTIFIED")]
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
                report.mode if secretless else s.name if s else "?",
                "-" if secretless else (s.version or "-") if s else "?",
                "never" if secretless else day(s.expires_on) if s and s.expires_on else "-",
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
        if f.fix and f.state != "ok":
            lines += [f"  fix: {step}" for step in f.fix]
    if report.store_error:
        lines.append(f"record store unreachable ({report.store_error}): warned anyway")
    return "\n".join(lines)
