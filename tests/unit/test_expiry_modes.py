"""The expiry check in each GRAPH_CREDENTIAL mode, with fakes and an injected clock: a certificate's dates warned
as a secret's (thresholds once each, the second channel), its keyCredentials compared; in the secretless modes
nothing expires and a fresh Graph token is asked for instead, its failure alerted on every run."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from shared.expiry import (
    EntraCredential,
    ExpiryCheck,
    MemoryWarningRecords,
    SecretInfo,
    format_table,
    thumbprint_of,
    webhook_payload,
)
from shared.expiry.check import _details
from shared.outcomes import RelayFailure, classify_entra, permanent, transient
from tests.fakes import ScriptedTokens
from tests.unit.test_expiry import (
    CLIENT,
    START,
    TENANT,
    VAULT,
    Clock,
    FakeEntra,
    FakeProperties,
    RecordingChannel,
)

CERT = "graph-client-certificate"
THUMB = "A" * 40


def certificate(days: float | None = 40, version: str = "c1", enabled: bool = True) -> SecretInfo:
    expires = START + timedelta(days=days) if days is not None else None
    return SecretInfo(CERT, VAULT, version, enabled, expires, START - timedelta(days=300), kind="certificate")


@dataclass
class CertStack:
    clock: Clock
    props: FakeProperties
    records: MemoryWarningRecords
    mail: RecordingChannel
    webhook: RecordingChannel
    check: ExpiryCheck
    in_use: list[tuple[str | None, str] | None] = field(default_factory=lambda: [None])


def make_certificate(info: SecretInfo, entra: FakeEntra | None = None) -> CertStack:
    clock, props, records = Clock(), FakeProperties(info), MemoryWarningRecords()
    mail, webhook = RecordingChannel("mail"), RecordingChannel("webhook")
    in_use: list[tuple[str | None, str] | None] = [None]
    check = ExpiryCheck(
        secret=props,
        records=records,
        channels=[mail, webhook],
        warn_days=(30, 14, 7, 3, 1),
        client_id=CLIENT,
        tenant_id=TENANT,
        entra=entra,
        clock=clock,
        mode="certificate",
        thumbprint=lambda: in_use[0],
    )
    return CertStack(clock, props, records, mail, webhook, check, in_use)


# --- certificate ---------------------------------------------------------------------------------------------


def test_a_certificate_ten_days_from_expiry_warns_at_14_days_once_on_both_channels() -> None:
    s = make_certificate(certificate(days=10))
    first = s.check.run()
    (finding,) = first.findings
    assert first.state == "warning" and finding.kind == "threshold" and finding.threshold == 14
    assert finding.message.startswith(f"Certificate '{CERT}' expires in 10 days")
    assert "client secret" not in finding.message.lower()
    assert finding.notified == ["mail", "webhook"]
    assert (CERT, "c1", "days-14") in s.records.rows
    # The same day and the next: recorded, not repeated; 7 days left: the next threshold, once.
    s.check.run()
    s.clock.advance(days=1)
    s.check.run()
    assert [a.threshold for a in s.mail.alerts] == [14] and [a.threshold for a in s.webhook.alerts] == [14]
    s.clock.advance(days=2)
    s.check.run()
    assert [a.threshold for a in s.mail.alerts] == [14, 7]


def test_the_certificates_alert_says_certificate_and_gives_its_renewal_steps() -> None:
    s = make_certificate(certificate(days=10))
    s.check.run()
    (alert,) = s.mail.alerts
    text = alert.text()
    assert "To renew the certificate:" in text and "To renew the client secret" not in text
    assert "AutoRenew" in text and "infra/scripts/sync-app-certificate.sh" in text
    assert f"--vault-name relay-kv --certificate-name {CERT} --app-id {CLIENT}" in text
    assert f"az ad app credential reset --id {CLIENT} --keyvault relay-kv --cert {CERT} --append" in text
    assert "certificate 'graph-client-certificate', version c1" in text
    assert "new client secret" not in text.lower()
    facts = {
        f["title"]: f["value"]
        for f in webhook_payload(alert, slack=False)["attachments"][0]["content"]["body"][1]["facts"]
    }
    assert facts["Certificate"] == f"{CERT} (version c1)" and facts["Credential"] == "GRAPH_CREDENTIAL=certificate"
    assert "*To renew the certificate:*" in webhook_payload(alert, slack=True)["text"]


def test_an_expired_certificate_is_critical_on_every_run_and_names_no_secret_code() -> None:
    s = make_certificate(certificate(days=-1))
    for _ in range(3):
        report = s.check.run()
        assert report.state == "critical" and report.exit_code == 2
    assert [a.kind for a in s.mail.alerts] == ["expired"] * 3 and len(s.webhook.alerts) == 3
    message = s.mail.alerts[0].summary
    assert message.startswith(f"Certificate '{CERT}' expired on") and "AADSTS7000222" not in message
    assert "renewed certificate whose public key the app registration holds" in message


@pytest.mark.parametrize(
    ("info", "kind", "words"),
    [
        (certificate(days=100, enabled=False), "disabled", "Key Vault certificate 'graph-client-certificate'"),
        (SecretInfo(CERT, VAULT, None, kind="certificate"), "not-found", "Key Vault certificate"),
    ],
)
def test_a_disabled_or_missing_certificate_is_critical(info: SecretInfo, kind: str, words: str) -> None:
    report = make_certificate(info).check.run()
    assert report.state == "critical" and report.findings[0].kind == kind and words in report.findings[0].message


def test_the_report_says_which_mode_in_json_and_table() -> None:
    report = make_certificate(certificate(days=10)).check.run()
    data = report.to_json()
    assert data["credential"] == "certificate" and data["itemKind"] == "certificate"
    assert data["secretName"] == CERT and data["daysLeft"] == 10
    assert format_table(report).splitlines()[0].split()[:3] == ["CERTIFICATE", "VERSION", "EXPIRES"]


def key(days: float, key_id: str = "k1", thumbprint: str | None = None) -> EntraCredential:
    return EntraCredential(key_id, "mailrelay", START + timedelta(days=days), thumbprint)


def test_a_certificate_whose_end_matches_a_key_credential_is_fine() -> None:
    s = make_certificate(certificate(days=200), FakeEntra(keys=[key(200)]))
    assert s.check.run().state == "ok"


def test_a_renewed_certificate_entra_was_not_told_about_warns_once_naming_the_fix() -> None:
    # Key Vault renewed: the current version ends in 360 days, the app registration holds only the old one.
    s = make_certificate(certificate(days=360, version="c2"), FakeEntra(keys=[key(25, "old")]))
    report = s.check.run()
    kinds = [f.kind for f in report.findings]
    assert kinds == ["ok", "entra-certificate-unregistered"] and report.state == "warning"
    message = report.findings[1].message
    assert "version c2" in message and "Entra ID was not told" in message and "AADSTS700027" in message
    assert "infra/scripts/sync-app-certificate.sh" in message
    s.check.run()
    assert [a.kind for a in s.mail.alerts] == ["entra-certificate-unregistered"]  # once per version
    assert (CERT, "c2", "entra-certificate-unregistered") in s.records.rows


def test_the_thumbprint_in_use_decides_when_known() -> None:
    # Same end date, another certificate: by date it would pass; the relay knows the version it holds.
    s = make_certificate(certificate(days=200), FakeEntra(keys=[key(200, thumbprint="B" * 40)]))
    s.in_use[0] = ("c1", THUMB)
    report = s.check.run()
    assert [f.kind for f in report.findings] == ["ok", "entra-certificate-unregistered"]
    assert f"thumbprint {THUMB}" in report.findings[1].message
    # The registered thumbprint in use: fine.
    assert (
        make_certificate(certificate(days=200), FakeEntra(keys=[key(200, thumbprint="B" * 40)])).check.run().state
        == "ok"
    )
    # A thumbprint of another version than Key Vault's current one is not used: the end date decides.
    s2 = make_certificate(certificate(days=200, version="c2"), FakeEntra(keys=[key(200, thumbprint="B" * 40)]))
    s2.in_use[0] = ("c1", THUMB)
    assert s2.check.run().state == "ok"


def test_unreadable_key_credentials_warn() -> None:
    from shared.expiry import ExpiryReadError

    s = make_certificate(certificate(days=200), FakeEntra(error=ExpiryReadError("Graph answered HTTP 403")))
    report = s.check.run()
    assert (
        report.findings[1].kind == "entra-unavailable"
        and "certificates could not be read" in report.findings[1].message
    )


def test_custom_key_identifier_reads_as_a_thumbprint() -> None:
    digest = bytes(range(20))
    assert thumbprint_of(base64.b64encode(digest).decode()) == digest.hex().upper()
    assert thumbprint_of(base64.b64encode(b"ab" * 20).decode()) == "AB" * 20
    assert thumbprint_of(base64.b64encode(b"my own id").decode()) is None
    assert thumbprint_of("not base64!") is None and thumbprint_of(None) is None


# --- federated and managed-identity --------------------------------------------------------------------------


@dataclass
class TokenStack:
    tokens: ScriptedTokens
    records: MemoryWarningRecords
    mail: RecordingChannel
    webhook: RecordingChannel
    check: ExpiryCheck


def make_secretless(mode: str, failure: RelayFailure | None = None) -> TokenStack:
    tokens, records = ScriptedTokens(failure=failure), MemoryWarningRecords()
    mail, webhook = RecordingChannel("mail"), RecordingChannel("webhook")
    check = ExpiryCheck(
        secret=None,
        records=records,
        channels=[mail, webhook],
        warn_days=(30, 14, 7, 3, 1),
        client_id=CLIENT,
        tenant_id=TENANT,
        clock=Clock(),
        mode=mode,
        tokens=tokens,
    )
    return TokenStack(tokens, records, mail, webhook, check)


@pytest.mark.parametrize("mode", ["federated", "managed-identity"])
def test_nothing_to_expire_and_a_fresh_token_is_ok_and_silent(mode: str) -> None:
    s = make_secretless(mode)
    report = s.check.run()
    assert report.state == "ok" and report.exit_code == 0
    assert [(f.kind, f.state) for f in report.findings] == [("nothing-to-expire", "ok"), ("token", "ok")]
    assert f"GRAPH_CREDENTIAL={mode}: nothing stored expires" in report.findings[0].message
    assert s.tokens.calls == [True]  # fresh: a deleted credential shows only on a new token
    assert s.mail.alerts == [] and s.webhook.alerts == [] and s.records.rows == {}
    data = report.to_json()
    assert data["credential"] == mode and data["itemKind"] is None and data["secretName"] is None
    table = format_table(report)
    assert table.splitlines()[0].split()[0] == "CREDENTIAL" and "never" in table


FIC_DELETED = classify_entra(
    {
        "error": "invalid_request",
        "error_description": "AADSTS70021: No matching federated identity record found for presented assertion.",
        "error_codes": [70021],
    }
)


def test_a_deleted_federated_credential_is_critical_on_every_run_and_the_webhook_still_gets_it() -> None:
    s = make_secretless("federated", RelayFailure(FIC_DELETED))
    # The mail channel needs a Graph token: it fails with the same code, the webhook does not.
    from shared.expiry import ChannelError

    s.mail.failure = ChannelError("AADSTS70021: no Graph token")
    for run in range(3):
        report = s.check.run()
        assert report.state == "critical" and report.exit_code == 2
        finding = report.findings[1]
        assert finding.kind == "token-failed" and finding.key is None  # no record: every run
        assert finding.notified == ["webhook"] and "AADSTS70021" in finding.failed["mail"]
        assert len(s.webhook.alerts) == run + 1
    alert = s.webhook.alerts[0]
    assert alert.summary.startswith("No Graph token (GRAPH_CREDENTIAL=federated): AADSTS70021")
    assert "\n" not in alert.summary
    assert alert.steps == (FIC_DELETED.hint,) and "mailrelay doctor" in alert.text()
    assert "To fix it:" in alert.text() and "federated identity credential" in alert.text()
    assert s.records.rows == {}
    assert "fix: " in format_table(report)


def test_a_removed_identity_is_critical_naming_credential_unavailable() -> None:
    gone = permanent("CredentialUnavailable", "the managed identity's Graph token: no managed identity answered")
    s = make_secretless("managed-identity", RelayFailure(gone))
    report = s.check.run()
    finding = report.findings[1]
    assert report.state == "critical" and "CredentialUnavailable" in finding.message
    assert finding.fix and "deleted or detached" in finding.fix[0]
    assert s.mail.alerts[0].details[0].startswith("The relay sends mail through Microsoft Graph as the Function's")


def test_an_outage_of_the_identity_endpoint_is_a_warning_on_every_run() -> None:
    s = make_secretless("federated", RelayFailure(transient("ManagedIdentityUnavailable", "HTTP 503")))
    assert s.check.run().state == "warning" and s.check.run().findings[1].kind == "token-unavailable"
    assert len(s.webhook.alerts) == 2


def test_the_secretless_modes_never_take_a_key_vault_reader_and_the_stored_modes_need_one() -> None:
    with pytest.raises(ValueError, match="GRAPH_CREDENTIAL=federated"):
        ExpiryCheck(
            secret=FakeProperties(None),
            records=MemoryWarningRecords(),
            channels=[],
            warn_days=(30,),
            client_id=CLIENT,
            tenant_id=TENANT,
            mode="federated",
            tokens=ScriptedTokens(),
        )
    with pytest.raises(ValueError):
        ExpiryCheck(
            secret=None,
            records=MemoryWarningRecords(),
            channels=[],
            warn_days=(30,),
            client_id=CLIENT,
            tenant_id=TENANT,
        )


def test_details_name_the_mode() -> None:
    assert "federated identity credential" in " ".join(_details(None, None, CLIENT, TENANT, "federated"))
    assert "Managed identity: client id" in " ".join(_details(None, None, CLIENT, TENANT, "managed-identity"))
