"""The check and its decisions: evaluate a secret's dates, then warn once per threshold on every channel."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared.expiry.entra import compare_with_entra
from shared.expiry.model import (
    EVENT,
    Alert,
    Channel,
    EntraCredentials,
    ExpiryReadError,
    Finding,
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

    pass

log = logging.getLogger("mailrelay.expiry")

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
    when = day(secret.expires_on)
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
        fields = log_fields(secret, left, finding.threshold, finding.state, finding.kind)
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
                report.store_error = report.store_error or safe_reason(e)
                log.warning(
                    "%s: the warning could not be recorded (%s); it may be sent again",
                    EVENT,
                    report.store_error,
                    extra={"event": "secret.expiry.store", "reason": report.store_error},
                )


def _details(secret: SecretInfo, left: int | None, client_id: str, tenant_id: str) -> tuple[str, ...]:
    expires = iso(secret.expires_on) if secret.expires_on else "not set"
    return (
        "The relay sends mail through Microsoft Graph as the app registration below, with a client secret "
        "it reads from Key Vault. When the client secret expires, every send fails with AADSTS7000222.",
        f"Key Vault: {secret.vault_uri or '?'}, secret '{secret.name}', version {secret.version or '?'}"
        f"{'' if secret.enabled else ' (disabled)'}",
        f"Expires (Key Vault exp): {expires}" + (f", {left} days left" if left is not None and left >= 0 else ""),
        f"App registration: client id {client_id}, tenant {tenant_id}",
    )


# --- Channels -------------------------------------------------------------------------------------


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
                day(s.expires_on) if s and s.expires_on else "-",
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
