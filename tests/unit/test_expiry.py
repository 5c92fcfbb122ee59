"""The expiry check with fakes and an injected clock: thresholds, once-per-version records, channels."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.contract import parse_request
from shared.expiry import (
    Alert,
    ChannelError,
    EntraCredential,
    ExpiryCheck,
    ExpiryReadError,
    LogChannel,
    MailChannel,
    MemoryWarningRecords,
    Report,
    SecretInfo,
    format_table,
    parse_graph_datetime,
    webhook_payload,
)
from shared.outcomes import RelayFailure, permanent
from shared.sending import Relay
from shared.settings import SettingsError, load_expiry_settings
from tests.fakes import FakeGraph, FakeTokens
from tests.unit.test_settings import GOOD, env

START = datetime(2025, 3, 1, 7, 0, tzinfo=UTC)
CLIENT = "66666666-7777-8888-9999-000000000000"
TENANT = "11111111-2222-3333-4444-555555555555"
VAULT = "https://relay-kv.vault.azure.net"


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class FakeProperties:
    info: SecretInfo | None
    error: ExpiryReadError | None = None

    def current(self) -> SecretInfo:
        if self.error:
            raise self.error
        assert self.info is not None
        return self.info


@dataclass
class FakeEntra:
    credentials: list[EntraCredential] = field(default_factory=list)
    error: ExpiryReadError | None = None
    keys: list[EntraCredential] = field(default_factory=list)  # keyCredentials: the certificates

    def password_credentials(self) -> list[EntraCredential]:
        if self.error:
            raise self.error
        return list(self.credentials)

    def key_credentials(self) -> list[EntraCredential]:
        if self.error:
            raise self.error
        return list(self.keys)


@dataclass
class RecordingChannel:
    name: str
    failure: Exception | None = None
    alerts: list[Alert] = field(default_factory=list)

    def send(self, alert: Alert) -> None:
        if self.failure:
            raise self.failure
        self.alerts.append(alert)


def secret(days: float | None = 40, version: str = "v1", enabled: bool = True) -> SecretInfo:
    expires = START + timedelta(days=days) if days is not None else None
    return SecretInfo("graph-client-secret", VAULT, version, enabled, expires, START - timedelta(days=300))


@dataclass
class Stack:
    clock: Clock
    props: FakeProperties
    records: MemoryWarningRecords
    mail: RecordingChannel
    webhook: RecordingChannel
    entra: FakeEntra | None
    check: ExpiryCheck


def make(
    info: SecretInfo | None = None, entra: FakeEntra | None = None, warn_days: tuple[int, ...] = (30, 14, 7, 3, 1)
) -> Stack:
    clock, props, records = Clock(), FakeProperties(info or secret()), MemoryWarningRecords()
    mail, webhook = RecordingChannel("mail"), RecordingChannel("webhook")
    check = ExpiryCheck(
        secret=props,
        records=records,
        channels=[mail, webhook],
        warn_days=warn_days,
        client_id=CLIENT,
        tenant_id=TENANT,
        entra=entra,
        clock=clock,
    )
    return Stack(clock, props, records, mail, webhook, entra, check)


def test_each_threshold_fires_once_across_daily_runs_then_expired_fires_every_run() -> None:
    s = make(secret(days=40))
    states = []
    for _ in range(45):
        report = s.check.run()
        states.append(report.state)
        s.clock.advance(days=1)
    thresholds = [a.threshold for a in s.mail.alerts if a.kind == "threshold"]
    assert thresholds == [30, 14, 7, 3, 1]
    assert [a.threshold for a in s.webhook.alerts if a.kind == "threshold"] == thresholds
    # Day 40 on: expired, critical, on every run (5 runs: days 40..44).
    assert [a.kind for a in s.mail.alerts].count("expired") == 5
    assert states[:10] == ["ok"] * 10 and states[10] == "warning" and states[-1] == "critical"


def test_hours_matter_the_one_day_warning_fires_with_less_than_a_day_left() -> None:
    s = make(secret(days=1.5))
    s.check.run()
    assert s.mail.alerts[-1].threshold == 3  # 1.5 days left: within 3, not within 1
    s.clock.advance(hours=13)
    report = s.check.run()
    assert s.mail.alerts[-1].threshold == 1 and report.days_left == 0
    assert "within a day" in s.mail.alerts[-1].summary


def test_after_a_pause_only_the_tightest_threshold_goes_out() -> None:
    s = make(secret(days=5))
    s.check.run()
    s.clock.advance(days=1)
    s.check.run()
    assert [a.threshold for a in s.mail.alerts] == [7]


def test_a_new_secret_version_starts_afresh() -> None:
    s = make(secret(days=6, version="v1"))
    s.check.run()
    s.check.run()
    assert [a.threshold for a in s.mail.alerts] == [7]
    # Renewed with a short-lived secret (same thresholds reached again): warned again, for the new version.
    s.props.info = secret(days=6.5, version="v2")
    report = s.check.run()
    assert [a.threshold for a in s.mail.alerts] == [7, 7]
    assert report.secret is not None and report.secret.version == "v2"
    assert ("graph-client-secret", "v2", "days-7") in s.records.rows


def test_renewed_secret_far_out_is_ok_and_silent() -> None:
    s = make(secret(days=3, version="v1"))
    s.check.run()
    s.props.info = secret(days=700, version="v2")
    report = s.check.run()
    assert report.state == "ok" and report.exit_code == 0
    assert len(s.mail.alerts) == 1


def test_missing_exp_warns_once_per_version_and_says_what_to_do() -> None:
    s = make(secret(days=None))
    first, second = s.check.run(), s.check.run()
    assert first.state == second.state == "warning" and first.exit_code == 1
    (alert,) = s.mail.alerts
    assert alert.kind == "no-exp" and "set exp to the app registration's end date" in alert.summary
    assert second.findings[0].previously == ["mail", "webhook"] and second.findings[0].notified == []


@pytest.mark.parametrize(
    ("info", "kind"),
    [
        (secret(days=-2), "expired"),
        (secret(days=100, enabled=False), "disabled"),
        (SecretInfo("graph-client-secret", VAULT, None), "not-found"),
    ],
)
def test_expired_disabled_and_missing_are_critical_on_every_run(info: SecretInfo, kind: str) -> None:
    s = make(info)
    for _ in range(3):
        report = s.check.run()
        assert report.state == "critical" and report.exit_code == 2
    assert [a.kind for a in s.mail.alerts] == [kind] * 3
    assert all(a.state == "critical" for a in s.webhook.alerts)


def test_one_failing_channel_stops_no_other_and_is_tried_again_next_run(caplog: pytest.LogCaptureFixture) -> None:
    s = make(secret(days=10))
    s.mail.failure = ChannelError("AADSTS7000222: the client secret has expired")
    with caplog.at_level(logging.INFO):
        report = s.check.run()
    finding = report.findings[0]
    assert finding.notified == ["webhook"] and "AADSTS7000222" in finding.failed["mail"]
    assert len(s.webhook.alerts) == 1
    assert any(getattr(r, "event", None) == "secret.expiry.channel" for r in caplog.records)
    # Next run: only the channel that failed is tried again; the webhook is not repeated.
    s.mail.failure = None
    s.check.run()
    assert len(s.mail.alerts) == 1 and len(s.webhook.alerts) == 1
    s.check.run()
    assert len(s.mail.alerts) == 1


def test_an_unexpected_exception_in_a_channel_is_contained() -> None:
    s = make(secret(days=10))
    s.webhook.failure = RuntimeError("boom at https://prod.example/workflows?sig=SECRETSIG")
    report = s.check.run()
    assert report.findings[0].failed["webhook"] == "RuntimeError"  # a URL in the message: type only
    assert len(s.mail.alerts) == 1


def test_record_store_down_warns_anyway_on_every_run(caplog: pytest.LogCaptureFixture) -> None:
    s = make(secret(days=10))
    s.records.down = ConnectionError("table endpoint unreachable")
    with caplog.at_level(logging.WARNING):
        first, second = s.check.run(), s.check.run()
    assert len(s.mail.alerts) == 2  # duplicates rather than silence
    assert first.store_error and "unreachable" in first.store_error
    assert any(getattr(r, "event", None) == "secret.expiry.store" for r in caplog.records)
    assert "record store unreachable" in format_table(second)


def test_unreadable_vault_is_a_warning_on_every_run() -> None:
    s = make()
    s.props.error = ExpiryReadError("Key Vault: HttpResponseError: Forbidden")
    report = s.check.run()
    assert report.state == "warning" and report.findings[0].kind == "unreadable"
    s.check.run()
    assert len(s.mail.alerts) == 2


def test_dry_run_notifies_nobody_and_records_nothing(caplog: pytest.LogCaptureFixture) -> None:
    s = make(secret(days=10))
    with caplog.at_level(logging.DEBUG, logger="mailrelay.expiry"):
        report = s.check.run(dry_run=True)
    assert report.exit_code == 1
    assert report.findings[0].would_notify == ["mail", "webhook"]
    assert s.mail.alerts == [] and s.webhook.alerts == [] and s.records.rows == {}
    assert not [r for r in caplog.records if getattr(r, "event", None) == "secret.expiry"]
    assert "would: mail,webhook" in format_table(report)
    s.check.run()
    assert len(s.mail.alerts) == 1  # the real run still warns


# --- Entra comparison ------------------------------------------------------------------------------


def cred(days: float, key: str = "k1", name: str | None = "mailrelay") -> EntraCredential:
    return EntraCredential(key, name, START + timedelta(days=days))


def test_entra_matching_within_a_day_is_fine() -> None:
    s = make(secret(days=300), entra=FakeEntra([cred(300.5)]))
    assert s.check.run().state == "ok"


def test_entra_end_date_differing_by_more_than_a_day_warns_once() -> None:
    s = make(secret(days=300), entra=FakeEntra([cred(200)]))
    report = s.check.run()
    (finding,) = report.findings[1:]
    assert finding.kind == "entra-mismatch" and report.state == "warning"
    s.check.run()
    assert [a.kind for a in s.mail.alerts] == ["entra-mismatch"]


def test_entra_credential_ending_sooner_warns() -> None:
    s = make(secret(days=300), entra=FakeEntra([cred(300, "current"), cred(20, "old", "old secret"), cred(-5, "gone")]))
    report = s.check.run()
    kinds = [f.kind for f in report.findings]
    assert kinds == ["ok", "entra-sooner"]  # the one already ended is no threat
    assert "'old secret' (old)" in report.findings[1].message


def test_entra_unreadable_is_a_warning_not_a_crash() -> None:
    s = make(secret(days=300), entra=FakeEntra(error=ExpiryReadError("Graph answered 403 Authorization_RequestDenied")))
    report = s.check.run()
    assert report.findings[1].kind == "entra-unavailable" and report.exit_code == 1


def test_graph_datetimes_with_seven_fractional_digits_parse() -> None:
    assert parse_graph_datetime("2026-05-20T16:06:34.3596758Z") == datetime(2026, 5, 20, 16, 6, 34, 359675, tzinfo=UTC)
    assert parse_graph_datetime("2026-05-20T16:06:34Z") == datetime(2026, 5, 20, 16, 6, 34, tzinfo=UTC)
    assert parse_graph_datetime(None) is None


# --- Channels ---------------------------------------------------------------------------------------


def an_alert(state: str = "warning", days: int | None = 7, kind: str = "threshold") -> Alert:
    s = make(secret(days=days + 0.5 if days is not None else -1))
    report = s.check.run()
    alert = report.findings[0].alert
    assert alert is not None
    return replace(alert, state=state, kind=kind)  # type: ignore[arg-type]


def test_mail_goes_through_the_relays_send_path_with_a_valid_request() -> None:
    graph = FakeGraph()
    relay = Relay(allowed_senders=frozenset({"alerts@contoso.com"}), tokens=FakeTokens(), graph=graph)
    channel = MailChannel(relay, "alerts@contoso.com", ["ops@contoso.com", "it@contoso.com"])
    alert = an_alert()
    request = parse_request(json.dumps(channel.request(alert)))
    assert request.sender == "alerts@contoso.com" and [r.address for r in request.to] == [
        "ops@contoso.com",
        "it@contoso.com",
    ]
    channel.send(alert)
    ((sender, body, _token),) = graph.calls
    text = body["message"]["body"]["content"]
    assert sender == "alerts@contoso.com"
    assert "graph-client-secret" in text and "expires" in text.lower()
    assert "new client secret" in text.lower() and "az keyvault secret set --vault-name relay-kv" in text
    assert "without a restart" in text or "Nothing to restart" in text


def test_mail_failing_with_an_expired_secret_raises_a_channel_error_naming_the_code() -> None:
    tokens = FakeTokens(failure=RelayFailure(permanent("AADSTS7000222", "the client secret keys are expired")))
    relay = Relay(allowed_senders=frozenset({"alerts@contoso.com"}), tokens=tokens, graph=FakeGraph())
    with pytest.raises(ChannelError, match="AADSTS7000222"):
        MailChannel(relay, "alerts@contoso.com", ["ops@contoso.com"]).send(an_alert("critical", kind="expired"))


def test_teams_payload_is_a_message_with_one_adaptive_card() -> None:
    payload = webhook_payload(an_alert(), slack=False)
    assert payload["type"] == "message" and payload["text"]
    (attachment,) = payload["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    facts = {f["title"]: f["value"] for f in card["body"][1]["facts"]}
    assert facts["Secret"].startswith("graph-client-secret") and facts["Days left"] == "7"


def test_slack_payload_is_text() -> None:
    payload = webhook_payload(an_alert("critical", kind="expired"), slack=True)
    assert set(payload) == {"text"} and "graph-client-secret" in payload["text"]


@pytest.mark.parametrize(
    ("state", "days", "level"),
    [("warning", 20, logging.WARNING), ("warning", 3, logging.ERROR), ("critical", None, logging.CRITICAL)],
)
def test_log_channel_is_structured_and_levelled_by_severity(
    caplog: pytest.LogCaptureFixture, state: str, days: int | None, level: int
) -> None:
    alert = an_alert(state, days)
    with caplog.at_level(logging.DEBUG, logger="mailrelay.expiry"):
        LogChannel().send(alert)
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "secret.expiry"]
    assert record.levelno == level
    assert record.getMessage().startswith("secret.expiry: ")  # the alert query also matches the text
    fields: dict[str, Any] = record.__dict__
    assert fields["secretName"] == "graph-client-secret" and fields["secretVersion"] == "v1"
    assert fields["state"] == state and "daysLeft" in fields and "threshold" in fields


def test_report_json_and_table_carry_the_columns() -> None:
    s = make(secret(days=10))
    report: Report = s.check.run()
    data = report.to_json()
    assert data["state"] == "warning" and data["daysLeft"] == 10 and data["secretVersion"] == "v1"
    assert data["findings"][0]["notified"] == ["mail", "webhook"]
    table = format_table(report)
    assert table.splitlines()[0].split() == [
        "SECRET",
        "VERSION",
        "EXPIRES",
        "DAYS",
        "LEFT",
        "STATE",
        "CHANNELS",
        "NOTIFIED",
    ]
    assert "mail,webhook" in table


# --- Settings ---------------------------------------------------------------------------------------


def expiry_env(**changes: str | None) -> dict[str, str]:
    alerts: dict[str, str | None] = {
        "EXPIRY_ALERT_SENDER": "alerts@contoso.com",
        "EXPIRY_ALERT_RECIPIENTS": "ops@contoso.com",
    }
    return env(**{**alerts, **changes})


def test_expiry_settings_defaults() -> None:
    settings = load_expiry_settings(GOOD)
    assert settings.schedule == "0 0 7 * * *"
    assert settings.warn_days == (30, 14, 7, 3, 1)
    assert settings.alert_sender is None and settings.alert_recipients == () and settings.webhook_url is None
    assert settings.compare_entra is False


def test_expiry_settings_read_and_normalise() -> None:
    settings = load_expiry_settings(
        expiry_env(EXPIRY_WARN_DAYS="7, 30,1", EXPIRY_COMPARE_ENTRA="true", EXPIRY_ALERT_SENDER="Alerts@Contoso.com")
    )
    assert settings.warn_days == (30, 7, 1) and settings.compare_entra
    assert settings.alert_sender == "alerts@contoso.com" and settings.alert_recipients == ("ops@contoso.com",)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"EXPIRY_ALERT_SENDER": "ceo@contoso.com"}, "EXPIRY_ALERT_SENDER must be one of ALLOWED_SENDERS"),
        ({"EXPIRY_ALERT_SENDER": None}, "EXPIRY_ALERT_SENDER is missing"),
        ({"EXPIRY_ALERT_RECIPIENTS": None}, "EXPIRY_ALERT_RECIPIENTS is missing"),
        ({"EXPIRY_ALERT_RECIPIENTS": "ops at contoso"}, "EXPIRY_ALERT_RECIPIENTS"),
        ({"EXPIRY_WARN_DAYS": "30,0"}, "EXPIRY_WARN_DAYS"),
        ({"EXPIRY_WARN_DAYS": "a week"}, "EXPIRY_WARN_DAYS"),
        ({"EXPIRY_CHECK_SCHEDULE": "0 7 * * *"}, "EXPIRY_CHECK_SCHEDULE"),
        ({"EXPIRY_COMPARE_ENTRA": "maybe"}, "EXPIRY_COMPARE_ENTRA"),
        ({"EXPIRY_ALERT_WEBHOOK_URL": "http://hooks.example.com/x?sig=abc"}, "EXPIRY_ALERT_WEBHOOK_URL"),
        (
            {"AzureWebJobsStorage": None, "AzureWebJobsStorage__queueServiceUri": "https://a.queue.core.windows.net"},
            "AzureWebJobsStorage__tableServiceUri",
        ),
    ],
)
def test_bad_expiry_settings_are_named(changes: dict[str, str | None], named: str) -> None:
    with pytest.raises(SettingsError, match=named) as info:
        load_expiry_settings(expiry_env(**changes))
    assert "sig=abc" not in str(info.value)


def test_webhook_may_be_plain_http_only_on_loopback() -> None:
    assert load_expiry_settings(expiry_env(EXPIRY_ALERT_WEBHOOK_URL="http://127.0.0.1:8080/hook")).webhook_url
    assert load_expiry_settings(
        expiry_env(EXPIRY_ALERT_WEBHOOK_URL="https://hooks.slack.com/services/T/B/X")
    ).webhook_url


def test_timer_is_bound_to_the_schedule_setting(indexed: dict[str, Any]) -> None:
    trigger = indexed["check_secret_expiry"].trigger
    assert trigger["type"] == "timerTrigger"
    assert trigger["schedule"] == "%EXPIRY_CHECK_SCHEDULE%"
    assert trigger["runOnStartup"] is False and trigger["useMonitor"] is True
