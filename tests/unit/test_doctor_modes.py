"""`mailrelay doctor`'s credential checks per GRAPH_CREDENTIAL, with fakes: the certificate parsed, the federated
credential's wrong issuer, subject or audience named from Entra's answer, the managed identity's own token, and
the consent warning for any mail permission beside RBAC."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from shared.credentials import CertificateCredential, Credentials, FederatedCredential
from shared.doctor import MAIL_ROLES, Check, credential_checks
from shared.outcomes import RelayFailure, classify_entra, permanent
from shared.settings import load_settings
from tests.fakes import ScriptedTokens
from tests.unit.test_settings import GOOD

TENANT = GOOD["GRAPH_TENANT_ID"]
APP = GOOD["GRAPH_CLIENT_ID"]
IDENTITY = "0a0b0c0d-1111-2222-3333-444455556666"
PRINCIPAL = "9f8e7d6c-5b4a-4321-8765-0fedcba98765"
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def jwt(**claims: Any) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.signature"


def clients(mode: str, tokens: ScriptedTokens, stored: Any = None, federated: Any = None, **settings: str) -> Any:
    env = dict(GOOD, GRAPH_CREDENTIAL=mode, **settings)
    if mode == "certificate":
        env.setdefault("GRAPH_CERTIFICATE_NAME", "graph-client-certificate")
    if mode in ("federated", "managed-identity"):
        env.pop("KEY_VAULT_URI")
        env.pop("GRAPH_CLIENT_SECRET_NAME")
        env["AZURE_CLIENT_ID"] = IDENTITY
        if mode == "managed-identity":
            env["GRAPH_CLIENT_ID"] = IDENTITY
    relay_settings = load_settings(env)
    return SimpleNamespace(
        settings=relay_settings,
        credentials=Credentials(tokens, stored, federated),
        tokens=tokens,
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


# --- certificate ---------------------------------------------------------------------------------------------


def certificate_pem(not_after: datetime) -> str:
    """A Key Vault certificate's PEM secret (key and certificate) ending at `not_after`."""
    from devstack import certificates

    key, certificate = certificates.self_signed(not_before=not_after - timedelta(days=365), not_after=not_after)
    return certificates.key_pem(key) + certificates.certificate_pem(certificate)


@dataclass
class FakeVaultSecret:
    """shared.secrets.KeyVaultSecret's surface: the value, its version and content type."""

    value: str
    version: str = "c1"
    content_type: str | None = "application/x-pem-file"
    failure: RelayFailure | None = None

    def get(self) -> str:
        if self.failure:
            raise self.failure
        return self.value

    refresh = get


@pytest.mark.parametrize(("days", "status"), [(200, "ok"), (20, "warn"), (-1, "fail")])
def test_the_certificate_is_read_and_shown_with_its_thumbprint_and_days_left(days: int, status: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    pem = certificate_pem(NOW + timedelta(days=days, hours=1))
    stored = CertificateCredential(FakeVaultSecret(pem), clock=lambda: NOW)  # type: ignore[arg-type]
    c = clients("certificate", ScriptedTokens(jwt(roles=[])), stored=stored)
    checks = by_name(credential_checks(c, now=NOW))
    check = checks["key vault certificate"]
    thumbprint = x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    assert check.status == status and f"thumbprint {thumbprint} (SHA-1)" in check.detail
    assert "subject CN=mailrelay-graph" in check.detail and "version c1" in check.detail
    assert "PRIVATE KEY" not in json.dumps([c.__dict__ for c in checks.values()])
    if status == "ok":
        assert f"{days} days left" in check.detail and checks["entra token"].status == "ok"
    if status == "warn":
        assert "AutoRenew" in check.hint and "infra/scripts/sync-app-certificate.sh" in check.hint
    if status == "fail":
        assert "EXPIRED" in check.detail and "entra token" not in checks


def test_an_unreadable_certificate_fails_with_the_codes_hint() -> None:
    bad = FakeVaultSecret("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    c = clients("certificate", ScriptedTokens(""), stored=CertificateCredential(bad))  # type: ignore[arg-type]
    (check,) = credential_checks(c, now=NOW)
    assert check.status == "fail" and check.detail.startswith("CertificateUnreadable")
    assert "GRAPH_CERTIFICATE_NAME" in check.hint


# --- federated -----------------------------------------------------------------------------------------------

RIGHT_ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"


@dataclass
class FakeIdentity:
    claims: dict[str, Any]
    failure: Exception | None = None

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        if self.failure:
            raise self.failure
        return SimpleNamespace(token=jwt(**self.claims), expires_on=0)


def assertion(**changes: Any) -> dict[str, Any]:
    return {"iss": RIGHT_ISSUER, "sub": PRINCIPAL, "aud": "api://AzureADTokenExchange", **changes}


def entra_refusal(code: int, text: str) -> RelayFailure:
    return RelayFailure(
        classify_entra({"error": "invalid_client", "error_description": f"AADSTS{code}: {text}", "error_codes": [code]})
    )


def federated(identity: FakeIdentity, tokens: ScriptedTokens) -> list[Check]:
    return credential_checks(clients("federated", tokens, federated=FederatedCredential(identity)))


def test_a_working_federated_credential_shows_what_the_fic_must_hold() -> None:
    checks = by_name(federated(FakeIdentity(assertion()), ScriptedTokens(jwt(roles=[]))))
    identity = checks["managed identity"]
    assert identity.status == "ok"
    assert f"issuer {RIGHT_ISSUER}" in identity.detail and f"subject {PRINCIPAL}" in identity.detail
    assert "audience api://AzureADTokenExchange" in identity.detail and f"identity {IDENTITY}" in identity.detail
    assert checks["entra token"].status == "ok"


@pytest.mark.parametrize(
    ("code", "field", "value"),
    [
        (700211, "issuer", RIGHT_ISSUER),
        (700213, "subject", PRINCIPAL),
        (700212, "audience", "api://AzureADTokenExchange"),
    ],
    ids=["wrong issuer", "wrong subject", "wrong audience"],
)
def test_a_fic_with_a_wrong_field_is_named_with_the_value_it_must_hold(code: int, field: str, value: str) -> None:
    refusal = entra_refusal(code, f"No matching federated identity record found for presented assertion {field}.")
    checks = by_name(federated(FakeIdentity(assertion()), ScriptedTokens(failure=refusal)))
    token = checks["entra token"]
    assert token.status == "fail" and token.detail.startswith(f"AADSTS{code}")
    assert f"has the wrong {field}: it must be {value}" in token.detail
    assert f"set the {field} to {value}" in token.hint and "Federated credentials" in token.hint
    assert f"az ad app federated-credential update --id {APP}" in token.hint
    others = {"issuer", "subject", "audience"} - {field}
    assert not any(f"wrong {other}" in token.detail for other in others)


def test_no_matching_fic_names_all_three_values() -> None:
    refusal = entra_refusal(70021, "No matching federated identity record found for presented assertion.")
    token = by_name(federated(FakeIdentity(assertion()), ScriptedTokens(failure=refusal)))["entra token"]
    assert token.status == "fail" and token.detail.startswith("AADSTS70021")
    for text in (f"issuer {RIGHT_ISSUER}", f"subject {PRINCIPAL}", "audience api://AzureADTokenExchange"):
        assert text in token.detail


@pytest.mark.parametrize(
    ("claims", "words"),
    [
        (assertion(iss="https://login.microsoftonline.com/another-tenant/v2.0"), "its issuer is not"),
        (assertion(aud="fb60f99c-7a8d-4ac6-9e64-0d5d2ec1d1e8"), "its audience is not api://AzureADTokenExchange"),
    ],
)
def test_an_assertion_entra_would_not_expect_is_itself_a_finding(claims: dict[str, Any], words: str) -> None:
    checks = by_name(federated(FakeIdentity(claims), ScriptedTokens(jwt(roles=[]))))
    assert checks["managed identity"].status == "warn" and words in checks["managed identity"].hint
    assert "entra token" in checks  # still tried: Entra's answer says whether it matters


def test_no_identity_fails_before_any_token_request() -> None:
    from azure.identity import CredentialUnavailableError

    tokens = ScriptedTokens(jwt(roles=[]))
    identity = FakeIdentity(assertion(), failure=CredentialUnavailableError("no managed identity answered"))
    (check,) = federated(identity, tokens)
    assert check.name == "managed identity" and check.status == "fail"
    assert check.detail.startswith("CredentialUnavailable") and "AZURE_CLIENT_ID" in check.hint
    assert tokens.calls == []


# --- managed-identity ----------------------------------------------------------------------------------------


def test_the_managed_identitys_token_shows_its_appid_and_roles() -> None:
    tokens = ScriptedTokens(jwt(appid=IDENTITY, roles=["User.Read.All"]))
    checks = by_name(credential_checks(clients("managed-identity", tokens)))
    identity = checks["managed identity"]
    assert identity.status == "ok" and f"appid {IDENTITY}" in identity.detail and "User.Read.All" in identity.detail
    assert checks["entra token"].status == "ok"


def test_a_token_of_another_identity_fails() -> None:
    tokens = ScriptedTokens(jwt(appid="ffffffff-0000-0000-0000-000000000000", roles=[]))
    check = by_name(credential_checks(clients("managed-identity", tokens)))["managed identity"]
    assert check.status == "fail" and "system-assigned" in check.hint


def test_a_removed_identity_fails_with_its_hint() -> None:
    gone = RelayFailure(permanent("CredentialUnavailable", "the managed identity's Graph token: no identity"))
    (check,) = credential_checks(clients("managed-identity", ScriptedTokens(failure=gone)))
    assert check.status == "fail" and "deleted or detached" in check.hint


# --- the consent beside an Exchange scope ---------------------------------------------------------------------


@pytest.mark.parametrize("role", MAIL_ROLES)
def test_any_tenant_wide_mail_consent_beside_rbac_warns(role: str) -> None:
    c = clients("managed-identity", ScriptedTokens(jwt(appid=IDENTITY, roles=[role, "User.Read.All"])))
    token = by_name(credential_checks(c))["entra token"]
    assert token.status == "warn" and f"WITH the Entra consent {role}" in token.detail
    assert "add up" in token.hint
    assert ("send as anyone" in token.hint) == (role == "Mail.Send")
    assert ("read every mailbox" in token.hint) == (role != "Mail.Send")


@pytest.mark.parametrize("role", MAIL_ROLES)
def test_under_an_access_policy_the_consent_is_expected(role: str) -> None:
    roles = sorted({"Mail.Send", role})
    c = clients("managed-identity", ScriptedTokens(jwt(appid=IDENTITY, roles=roles)), EXCHANGE_SCOPE_MODEL="policy")
    assert by_name(credential_checks(c))["entra token"].status == "ok"


# --- an app, as it sends ---------------------------------------------------------------------------------------


def test_the_doctor_checks_an_app_under_its_own_registration_and_senders(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from shared import doctor

    billing_client = "0c222222-3333-4444-8555-666666666666"
    apps = [
        {
            "name": "billing",
            "senders": ["alerts@contoso.com"],
            "graph": {"credential": "federated", "clientId": billing_client},
        },
        {"name": "ops", "senders": ["alerts@contoso.com"]},
    ]
    env = dict(GOOD, AZURE_CLIENT_ID=IDENTITY, MAILRELAY_APPS=json.dumps(apps))
    seen: list[Any] = []

    def credential_checks(clients: Any, now: Any = None) -> list[Check]:
        seen.append(clients)
        return []

    monkeypatch.setattr(doctor, "credential_checks", credential_checks)
    monkeypatch.setattr(doctor, "_storage", lambda settings, clients: [])
    checks = by_name(doctor.diagnose(env, app="billing"))
    assert checks["app"].status == "ok" and f"its own registration {billing_client} (federated)" in checks["app"].detail
    (billing,) = seen
    assert billing.settings.graph.client_id == billing_client and billing.settings.credential == "federated"
    assert billing.settings.allowed_senders == frozenset({"alerts@contoso.com"})
    assert billing.tokens is billing.credentials.tokens is billing.app_credentials["billing"].tokens
    checks = by_name(doctor.diagnose(env, app="ops"))
    assert (
        "Graph as the relay's" in checks["app"].detail and seen[-1].settings.graph.client_id == GOOD["GRAPH_CLIENT_ID"]
    )
    checks = by_name(doctor.diagnose(env, app="hr"))
    assert checks["app"].status == "fail" and "declares no app 'hr'" in checks["app"].detail
    assert checks["app"].hint == "declared apps: billing, ops"
