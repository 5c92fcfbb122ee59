"""GRAPH_CREDENTIAL's modes without I/O: the settings each needs, the certificate read from Key Vault's secret, what
MSAL is given (through the real MSAL, with a fake Entra), the federated assertion, and the managed identity's token.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from devstack.certificates import certificate_pem, key_pem, self_signed
from shared.credentials import (
    TOKEN_EXCHANGE_SCOPE,
    CertificateCredential,
    FederatedCredential,
    parse_certificate,
    token_source,
)
from shared.outcomes import Permanent, RelayFailure, Transient
from shared.secrets import IdentityEndpointUnavailable
from shared.settings import SettingsError, load_settings
from shared.tokens import ManagedIdentityTokens, MsalTokens
from tests.unit.test_settings import GOOD
from tests.unit.test_tokens import AUTHORITY, CLIENT, TENANT, FakeEntra, Reply, oauth_error

IDENTITY = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
TOKEN = Reply(200, json.dumps({"access_token": "graph-token", "expires_in": 3600, "token_type": "Bearer"}))


def settings_env(mode: str, **changes: str | None) -> dict[str, str]:
    env = {**GOOD, "GRAPH_CREDENTIAL": mode}
    if mode in ("federated", "managed-identity"):
        for name in ("KEY_VAULT_URI", "GRAPH_CLIENT_SECRET_NAME"):
            env.pop(name)
        env["AZURE_CLIENT_ID"] = IDENTITY
    if mode == "managed-identity":
        env.pop("GRAPH_CLIENT_ID")
    if mode == "certificate":
        env.pop("GRAPH_CLIENT_SECRET_NAME")
        env["GRAPH_CERTIFICATE_NAME"] = "graph-client-certificate"
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# --- settings -------------------------------------------------------------------------------------


def test_the_default_mode_is_the_secret() -> None:
    graph = load_settings(GOOD).graph
    assert graph.mode == "secret" and graph.expires and graph.vault_item == "graph-client-secret"


@pytest.mark.parametrize("mode", ["certificate", "federated", "managed-identity"])
def test_each_mode_loads_with_its_companions_only(mode: str) -> None:
    graph = load_settings(settings_env(mode)).graph
    assert graph.mode == mode
    assert graph.expires == (mode == "certificate")
    if mode == "certificate":
        assert graph.vault_item == "graph-client-certificate" and graph.key_vault_uri
    else:
        # The secretless modes need no Key Vault at all.
        assert graph.key_vault_uri is None and graph.vault_item is None and graph.identity_client_id == IDENTITY
    if mode == "managed-identity":
        assert graph.client_id == IDENTITY  # the identity is the Graph caller


@pytest.mark.parametrize(
    ("mode", "missing"),
    [
        ("certificate", "GRAPH_CERTIFICATE_NAME"),
        ("certificate", "KEY_VAULT_URI"),
        ("federated", "AZURE_CLIENT_ID"),
        ("federated", "GRAPH_CLIENT_ID"),
        ("managed-identity", "AZURE_CLIENT_ID"),
        ("secret", "GRAPH_CLIENT_SECRET_NAME"),
    ],
)
def test_a_missing_companion_is_named_with_the_mode(mode: str, missing: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(settings_env(mode, **{missing: None}))
    assert missing in str(caught.value) and f"GRAPH_CREDENTIAL={mode}" in str(caught.value)


def test_a_malformed_mode_is_named_with_the_choices() -> None:
    with pytest.raises(SettingsError, match="GRAPH_CREDENTIAL must be one of secret, certificate, federated"):
        load_settings(settings_env("secret", GRAPH_CREDENTIAL="kerberos"))


def test_managed_identity_refuses_a_different_client_id() -> None:
    with pytest.raises(SettingsError, match="must be empty or equal AZURE_CLIENT_ID"):
        load_settings(settings_env("managed-identity", GRAPH_CLIENT_ID=GOOD["GRAPH_CLIENT_ID"]))
    same = load_settings(settings_env("managed-identity", GRAPH_CLIENT_ID=IDENTITY.upper())).graph
    assert same.client_id == IDENTITY


def test_an_identity_that_is_no_guid_is_named() -> None:
    with pytest.raises(SettingsError, match="AZURE_CLIENT_ID must be a GUID"):
        load_settings(settings_env("federated", AZURE_CLIENT_ID="relay-identity"))


# --- certificates ---------------------------------------------------------------------------------


def make_certificate(days: float = 365, subject: str = "relay") -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    return self_signed(subject, not_after=datetime.now(UTC) + timedelta(days=days))


def pem_of(key: rsa.RSAPrivateKey, *certificates: x509.Certificate) -> str:
    return key_pem(key) + certificate_pem(*certificates)


def test_a_pem_certificate_is_read_with_its_leaf_whatever_the_chain_order() -> None:
    key, leaf = make_certificate()
    _, other = make_certificate(subject="some CA")
    key_pem, cert_pem, info = parse_certificate(pem_of(key, other, leaf), "application/x-pem-file", "v1")
    assert x509.load_pem_x509_certificate(cert_pem.encode()) == leaf
    assert info.thumbprint_sha1 == leaf.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    assert info.not_after == leaf.not_valid_after_utc and info.version == "v1"
    assert serialization.load_pem_private_key(key_pem.encode(), None).public_key() == key.public_key()


def test_a_pkcs12_certificate_is_read() -> None:
    # Key Vault's default content type: the PFX, base64, with no password.
    key, leaf = make_certificate()
    pfx = pkcs12.serialize_key_and_certificates(b"relay", key, leaf, None, serialization.NoEncryption())
    _, _, info = parse_certificate(base64.b64encode(pfx).decode(), "application/x-pkcs12")
    assert info.thumbprint_sha256 == leaf.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("only-a-certificate", "holds no private key"),
        ("garbage", "could not be parsed"),
        ("another-key", "holds no certificate for its private key"),
    ],
)
def test_an_unusable_certificate_is_a_configuration_error(value: str, says: str) -> None:
    _, leaf = make_certificate()
    other_key, _ = make_certificate()
    text = {
        "only-a-certificate": leaf.public_bytes(serialization.Encoding.PEM).decode(),
        "garbage": "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
        "another-key": pem_of(other_key, leaf),
    }[value]
    with pytest.raises(RelayFailure) as caught:
        parse_certificate(text, "application/x-pem-file")
    outcome = caught.value.outcome
    assert isinstance(outcome, Permanent) and outcome.code == "CertificateUnreadable" and says in outcome.message
    assert "PRIVATE KEY" not in outcome.message and "BEGIN" not in outcome.message


@dataclass
class FakeVaultCertificate:
    """KeyVaultSecret's surface: the current value, re-read on refresh; counts reads."""

    values: list[str]
    content_type: str | None = "application/x-pem-file"
    reads: int = 0
    version: str | None = None

    def get(self) -> str:
        if self.reads == 0:
            return self.refresh()
        return self.values[min(self.reads, len(self.values)) - 1]

    def refresh(self) -> str:
        self.reads += 1
        self.version = f"v{min(self.reads, len(self.values))}"
        return self.values[min(self.reads, len(self.values)) - 1]


@dataclass
class RecordingEntra(FakeEntra):
    forms: list[dict[str, str]] = field(default_factory=list)

    def post(self, url: str, **kwargs: Any) -> Reply:
        data = kwargs.get("data")
        form = data if isinstance(data, dict) else {k: v[0] for k, v in parse_qs(str(data or "")).items()}
        self.forms.append({_text(k): _text(v) for k, v in form.items()})
        return super().post(url, **kwargs)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def msal_tokens(credential: Any, *replies: Reply) -> tuple[MsalTokens, RecordingEntra]:
    entra = RecordingEntra(list(replies))
    source = MsalTokens(
        credential,
        tenant_id=TENANT,
        client_id=CLIENT,
        authority_host=AUTHORITY,
        http_client=entra,  # type: ignore[arg-type]
    )
    return source, entra


def assertion_header(form: dict[str, str]) -> dict[str, Any]:
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in form
    return dict(jwt.get_unverified_header(form["client_assertion"]))


def test_msal_signs_with_the_key_vault_certificate() -> None:
    key, leaf = make_certificate()
    source, entra = msal_tokens(CertificateCredential(FakeVaultCertificate([pem_of(key, leaf)])), TOKEN)
    assert source.token() == "graph-token"
    header = assertion_header(entra.forms[0])
    # MSAL's current path: PS256 with the SHA-256 thumbprint (what Entra matches against the app's keyCredentials).
    expected = base64.urlsafe_b64encode(leaf.fingerprint(hashes.SHA256())).rstrip(b"=").decode()
    assert header["alg"] == "PS256" and header["x5t#S256"].rstrip("=") == expected
    claims = jwt.decode(
        entra.forms[0]["client_assertion"],
        key.public_key(),
        algorithms=["PS256"],
        audience=(f"{AUTHORITY}/{TENANT}/oauth2/v2.0/token"),
    )
    assert claims["iss"] == claims["sub"] == CLIENT


def test_a_refused_certificate_is_read_again_and_the_renewed_one_used() -> None:
    # Key Vault renewed the certificate; Entra no longer accepts the old one (AADSTS700027): one re-read, no restart.
    old_key, old = make_certificate()
    new_key, new = make_certificate()
    vault = FakeVaultCertificate([pem_of(old_key, old), pem_of(new_key, new)])
    refused = oauth_error(401, "invalid_client", 700027, "Client assertion failed signature validation.")
    source, entra = msal_tokens(CertificateCredential(vault), refused, TOKEN)
    assert source.token() == "graph-token" and vault.reads == 2
    signed_with = [assertion_header(form)["x5t#S256"].rstrip("=") for form in entra.forms]
    thumbprints = [base64.urlsafe_b64encode(c.fingerprint(hashes.SHA256())).rstrip(b"=").decode() for c in (old, new)]
    assert signed_with == thumbprints


def test_a_certificate_past_its_end_is_read_again_before_use() -> None:
    key, leaf = make_certificate(days=1)
    renewed_key, renewed = make_certificate(days=365)
    vault = FakeVaultCertificate([pem_of(key, leaf), pem_of(renewed_key, renewed)])
    now = [datetime.now(UTC)]
    credential = CertificateCredential(vault, clock=lambda: now[0])  # type: ignore[arg-type]
    first = credential.get()
    assert credential.get() is first and vault.reads == 1  # cached while valid: Key Vault is not read per send
    now[0] += timedelta(days=2)
    assert credential.get().key != first.key and vault.reads == 2
    assert credential.info is not None and credential.info.not_after == renewed.not_valid_after_utc


def test_the_same_certificate_refused_again_is_the_entra_verdict() -> None:
    key, leaf = make_certificate()
    vault = FakeVaultCertificate([pem_of(key, leaf)])
    refused = oauth_error(401, "invalid_client", 700027, "Client assertion failed signature validation.")
    source, entra = msal_tokens(CertificateCredential(vault), refused)
    with pytest.raises(RelayFailure) as caught:
        source.token()
    assert caught.value.outcome.code == "AADSTS700027" and "sync" in caught.value.outcome.hint
    assert len(entra.forms) == 1 and vault.reads == 2  # read again, unchanged: not posted twice


# --- the federated credential -----------------------------------------------------------------------


@dataclass
class FakeIdentity:
    """A RelayCredential: tokens per scope, or a failure; records what was asked."""

    failure: Exception | None = None
    asked: list[tuple[tuple[str, ...], dict[str, Any]]] = field(default_factory=list)
    issued: int = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self.asked.append((scopes, kwargs))
        if self.failure is not None:
            raise self.failure
        self.issued += 1
        claims = {"iss": f"https://login.microsoftonline.com/{TENANT}/v2.0", "sub": "principal-1", "aud": scopes[0]}
        token = jwt.encode({**claims, "n": self.issued}, "k" * 32, algorithm="HS256")
        return type("AccessToken", (), {"token": token})()


def test_the_federated_assertion_is_the_identity_token_for_the_exchange_audience() -> None:
    identity = FakeIdentity()
    source, entra = msal_tokens(FederatedCredential(identity), TOKEN)
    assert source.token() == "graph-token"
    assert identity.asked == [((TOKEN_EXCHANGE_SCOPE,), {})]
    form = entra.forms[0]
    assertion_header(form)
    assert jwt.decode(form["client_assertion"], options={"verify_signature": False})["sub"] == "principal-1"
    # MSAL's own cache answers the next request: the identity is not asked again.
    assert source.token() == "graph-token" and len(identity.asked) == 1


def test_the_assertion_claims_name_what_the_federated_credential_must_hold() -> None:
    claims = FederatedCredential(FakeIdentity()).assertion_claims()
    assert claims == {
        "iss": f"https://login.microsoftonline.com/{TENANT}/v2.0",
        "sub": "principal-1",
        "aud": "api://AzureADTokenExchange/.default",
    }


@pytest.mark.parametrize(
    ("failure", "kind", "code"),
    [
        (
            IdentityEndpointUnavailable(message="the managed identity endpoint answered HTTP 503"),
            Transient,
            "ManagedIdentityUnavailable",
        ),
        (CredentialUnavailableError("No managed identity endpoint found."), Permanent, "CredentialUnavailable"),
        (ClientAuthenticationError("identity not found"), Permanent, "CredentialUnavailable"),
    ],
)
def test_an_identity_failure_reaches_the_relay_classified(failure: Exception, kind: type, code: str) -> None:
    source, entra = msal_tokens(FederatedCredential(FakeIdentity(failure)), TOKEN)
    with pytest.raises(RelayFailure) as caught:
        source.token()
    assert isinstance(caught.value.outcome, kind) and caught.value.outcome.code == code
    assert entra.forms == []  # nothing was posted to Entra without an assertion


def test_a_wrong_federated_credential_field_is_entra_verdict_with_its_hint() -> None:
    wrong = oauth_error(
        400,
        "invalid_request",
        700213,
        "No matching federated identity record found for presented assertion subject 'principal-1'.",
    )
    source, _ = msal_tokens(FederatedCredential(FakeIdentity()), wrong)
    with pytest.raises(RelayFailure) as caught:
        source.token()
    assert caught.value.outcome.code == "AADSTS700213" and "subject" in caught.value.outcome.hint


# --- the managed identity as the Graph caller ---------------------------------------------------------


def test_managed_identity_mode_asks_the_identity_for_graph_and_skips_its_cache_when_fresh() -> None:
    identity = FakeIdentity()
    tokens = ManagedIdentityTokens(identity)
    tokens.token()
    tokens.token(fresh=True)
    tokens.renew_credential()  # nothing stored: nothing read
    assert identity.asked == [
        (("https://graph.microsoft.com/.default",), {}),
        (("https://graph.microsoft.com/.default",), {"claims": "{}"}),
    ]


def test_managed_identity_mode_classifies_a_removed_identity() -> None:
    tokens = ManagedIdentityTokens(FakeIdentity(CredentialUnavailableError("identity not found")))
    with pytest.raises(RelayFailure) as caught:
        tokens.token()
    assert caught.value.outcome.code == "CredentialUnavailable" and "AZURE_CLIENT_ID" in caught.value.outcome.hint


@pytest.mark.parametrize("mode", ["federated", "managed-identity"])
def test_the_secretless_modes_build_no_key_vault(mode: str) -> None:
    graph = load_settings(settings_env(mode)).graph
    built = token_source(graph, identity=FakeIdentity(), session=FakeEntra([]), authority_host=AUTHORITY)  # type: ignore[arg-type]
    assert built.vault is None and built.stored is None
    assert isinstance(built.tokens, ManagedIdentityTokens if mode == "managed-identity" else MsalTokens)


def test_a_second_registration_is_configuration_not_code() -> None:
    # "Apps as principals" gives an app its own registration: its settings, parsed by the same function, build a
    # token source of its own (its own MSAL application and cache), beside the relay's.
    from shared.settings import parse_registration

    billing_id = "0b111111-2222-4333-8444-555555555555"
    first = load_settings(settings_env("federated")).graph
    second = parse_registration(
        {"GRAPH_CREDENTIAL": "federated", "GRAPH_TENANT_ID": TENANT, "GRAPH_CLIENT_ID": billing_id,
         "AZURE_CLIENT_ID": IDENTITY},
        name="billing",
    )
    assert second.name == "billing" and second.client_id == billing_id
    entra = RecordingEntra([TOKEN, TOKEN])
    built = [
        token_source(graph, identity=FakeIdentity(), session=entra, authority_host=AUTHORITY)  # type: ignore[arg-type]
        for graph in (first, second)
    ]
    assert [b.tokens.token() for b in built] == ["graph-token", "graph-token"]
    assert [form["client_id"] for form in entra.forms] == [first.client_id, billing_id]


def test_a_fresh_token_asks_the_identity_past_its_cache() -> None:
    # A removed identity must show on the expiry check's fresh token, not a day later when azure-identity's cached
    # assertion runs out.
    identity = FakeIdentity()
    source, _ = msal_tokens(FederatedCredential(identity), TOKEN, TOKEN)
    source.token()
    source.token(fresh=True)
    assert [kwargs for _, kwargs in identity.asked] == [{}, {"claims": "{}"}]
