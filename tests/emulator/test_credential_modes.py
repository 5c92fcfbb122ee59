"""The emulator plays each of the relay's credential modes as Entra, App Service and Key Vault do, driven by the
real clients: MSAL with a certificate (PS256 + x5t#S256 + x5c, and RS256 + x5t), MSAL with a managed identity's
token as its client assertion (azure-identity's ManagedIdentityCredential), a managed identity calling Graph itself,
and azure-keyvault-secrets reading a certificate's secret. Each refusal is Entra's AADSTS code, made to happen."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import msal
import pytest
import requests
from azure.identity import CredentialUnavailableError, ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devstack import certificates
from devstack.emulator import Emulator

TENANT = "4f2b8d6e-1a3c-4e5f-9b7d-0c2e4a6b8d13"
CLIENT = "7a1c3e5b-9d2f-4b6a-8c0e-2f4a6c8e0b57"
IDENTITY = "2c4e6a8b-0d1f-4a3c-9e5b-7d9f1b3d5f70"  # the user-assigned identity's client id
PRINCIPAL = "8e0a2c4d-6f1b-4d3e-a5c7-9b1d3f5a7c92"  # its object (principal) id
ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
EXCHANGE = "api://AzureADTokenExchange"
GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_SCOPE = f"{GRAPH_RESOURCE}/.default"
MAILBOX = "alerts@contoso.com"


@pytest.fixture(scope="module")
def running() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def emu(running: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    running.reset()
    # An app with no client secret: it signs in with a certificate or its federated credential. Exchange scopes it
    # (RBAC for Applications), so the token carries no Mail.Send; Application.Read.All lets it read itself.
    running.add_app(TENANT, CLIENT, None, roles=("Application.Read.All",))
    running.add_identity(IDENTITY, PRINCIPAL)
    running.add_mailbox(MAILBOX)
    running.add_mailbox("ceo@contoso.com", in_exchange_scope=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", running.msi_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", running.identity_header)
    return running


class RecordingSession(requests.Session):
    """requests, trusting the emulator's CA, keeping each token request's form (to read the assertion MSAL sent)."""

    def __init__(self, ca: str) -> None:
        super().__init__()
        self.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        self.verify = ca
        self.forms: list[dict[str, Any]] = []

    def post(self, url: str | bytes, data: Any = None, json: Any = None, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if isinstance(data, dict):
            self.forms.append(dict(data))
        return super().post(url, data=data, json=json, **kwargs)


@pytest.fixture
def http(emu: Emulator) -> Iterator[RecordingSession]:
    session = RecordingSession(emu.ca_cert_path)
    yield session
    session.close()


def certificate(
    not_before: datetime | None = None, not_after: datetime | None = None
) -> tuple[str, str, x509.Certificate]:
    """A self-signed certificate: (private key PEM, certificate PEM, certificate)."""
    start = not_before or datetime.now(UTC) - timedelta(hours=1)
    key, cert = certificates.self_signed(not_before=start, not_after=not_after or start + timedelta(days=365))
    return certificates.key_pem(key), certificates.certificate_pem(cert), cert


sha1_hex = certificates.sha1_thumbprint


def app(emu: Emulator, http: requests.Session, credential: Any) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        CLIENT,
        client_credential=credential,
        authority=f"{emu.url}/{TENANT}",
        instance_discovery=False,
        http_client=http,
    )


def identity_credential(emu: Emulator, client_id: str = IDENTITY) -> ManagedIdentityCredential:
    # Its own HTTP pipeline: it needs the emulator's CA of its own (retry_total=0: a 400 is not retried anyway).
    return ManagedIdentityCredential(client_id=client_id, connection_verify=emu.ca_cert_path, retry_total=0)


def federated_app(emu: Emulator, http: requests.Session) -> msal.ConfidentialClientApplication:
    """MSAL with the identity's token for api://AzureADTokenExchange as its client assertion, asked each time."""
    identity = identity_credential(emu)
    return app(emu, http, {"client_assertion": lambda: identity.get_token(f"{EXCHANGE}/.default").token})


def token_claims(result: dict[str, Any]) -> dict[str, Any]:
    assert "access_token" in result, result
    return dict(jwt.decode(result["access_token"], options={"verify_signature": False}))


def refused(result: dict[str, Any], code: int) -> str:
    """The refusal's description, once its code and OAuth error are checked."""
    assert "access_token" not in result, result
    assert result["error_codes"] == [code], result
    assert result["error_description"].startswith(f"AADSTS{code}: ")
    return str(result["error_description"])


def assertion_header(form: dict[str, Any]) -> dict[str, Any]:
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    return dict(jwt.get_unverified_header(form["client_assertion"]))


def send_mail(emu: Emulator, http: requests.Session, token: str, mailbox: str = MAILBOX) -> requests.Response:
    message: dict[str, Any] = {
        "subject": "Credential mode",
        "body": {"contentType": "Text", "content": "hello"},
        "toRecipients": [{"emailAddress": {"address": "ada@contoso.com"}}],
    }
    return http.post(
        f"{emu.url}/v1.0/users/{mailbox}/sendMail",
        data=json.dumps({"message": message, "saveToSentItems": False}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )


def signed_assertion(key_pem: str, headers: dict[str, Any], **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": CLIENT, "sub": CLIENT, "jti": str(uuid.uuid4()), "nbf": now, "exp": now + 600, **claims}
    algorithm = "PS256" if "x5t#S256" in headers else "RS256"
    return jwt.encode(payload, serialization.load_pem_private_key(key_pem.encode(), None), algorithm, headers)  # type: ignore[arg-type]


def post_assertion(emu: Emulator, http: requests.Session, assertion: str, **extra: str) -> requests.Response:
    return http.post(
        f"{emu.url}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT,
            "scope": GRAPH_SCOPE,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
            **extra,
        },
    )


def b64url(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


# ---------------------------------------------------------------------- certificate


def test_msal_with_the_public_certificate_signs_ps256_and_gets_a_graph_token(
    emu: Emulator, http: RecordingSession
) -> None:
    key_pem, cert_pem, cert = certificate()
    emu.add_key_credential(CLIENT, cert_pem)
    result = app(emu, http, {"private_key": key_pem, "public_certificate": cert_pem}).acquire_token_for_client(
        [GRAPH_SCOPE]
    )
    claims = token_claims(result)
    assert (claims["appid"], claims["roles"], claims["aud"]) == (CLIENT, ["Application.Read.All"], GRAPH_RESOURCE)
    header = assertion_header(http.forms[-1])
    der = cert.public_bytes(serialization.Encoding.DER)
    assert header["alg"] == "PS256" and "x5c" in header
    assert header["x5t#S256"].rstrip("=") == b64url(hashlib.sha256(der).digest())
    assert "client_secret" not in http.forms[-1]


def test_msal_with_a_sha1_thumbprint_signs_rs256_and_gets_a_graph_token(emu: Emulator, http: RecordingSession) -> None:
    key_pem, cert_pem, cert = certificate()
    emu.add_key_credential(CLIENT, cert_pem)
    result = app(emu, http, {"private_key": key_pem, "thumbprint": sha1_hex(cert)}).acquire_token_for_client(
        [GRAPH_SCOPE]
    )
    assert token_claims(result)["appid"] == CLIENT
    header = assertion_header(http.forms[-1])
    assert header["alg"] == "RS256" and "x5t#S256" not in header and "x5t" in header


def test_a_certificate_the_app_does_not_have_is_not_found(emu: Emulator, http: RecordingSession) -> None:
    emu.add_key_credential(CLIENT, certificate()[1])
    key_pem, _cert_pem, cert = certificate()
    result = app(emu, http, {"private_key": key_pem, "thumbprint": sha1_hex(cert)}).acquire_token_for_client(
        [GRAPH_SCOPE]
    )
    description = refused(result, 700027)
    assert result["error"] == "invalid_client"
    assert "not registered on application" in description and "The key was not found." in description
    assert sha1_hex(cert) in description


def test_an_expired_certificate_is_refused_as_an_expired_key(emu: Emulator, http: RecordingSession) -> None:
    start = datetime.now(UTC) - timedelta(days=400)
    key_pem, cert_pem, _cert = certificate(start, start + timedelta(days=365))
    emu.add_key_credential(CLIENT, cert_pem)
    result = app(emu, http, {"private_key": key_pem, "public_certificate": cert_pem}).acquire_token_for_client(
        [GRAPH_SCOPE]
    )
    description = refused(result, 700027)
    assert "The key used is expired." in description and "Found key 'Start=" in description


def test_a_signature_from_another_key_fails_validation(emu: Emulator, http: RecordingSession) -> None:
    _, cert_pem, cert = certificate()
    emu.add_key_credential(CLIENT, cert_pem)
    other_key = certificate()[0]  # names the registered certificate, signed by a key that is not its own
    assertion = signed_assertion(
        other_key,
        {"x5t": b64url(hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest())},  # noqa: S324
        aud=f"{emu.url}/{TENANT}/oauth2/v2.0/token",
    )
    reply = post_assertion(emu, http, assertion)
    assert reply.status_code == 401 and reply.json()["error"] == "invalid_client"
    assert reply.json()["error_codes"] == [700027]
    assert "use of the key to verify the signature failed" in reply.json()["error_description"]


def test_an_expired_certificate_assertion_is_out_of_its_time_range(emu: Emulator, http: RecordingSession) -> None:
    key_pem, cert_pem, cert = certificate()
    emu.add_key_credential(CLIENT, cert_pem)
    now = int(time.time())
    der = cert.public_bytes(serialization.Encoding.DER)
    assertion = signed_assertion(
        key_pem,
        {"x5t#S256": b64url(hashlib.sha256(der).digest())},
        aud=f"{emu.url}/{TENANT}/oauth2/v2.0/token",
        nbf=now - 1200,
        exp=now - 600,
    )
    reply = post_assertion(emu, http, assertion)
    assert (reply.status_code, reply.json()["error"], reply.json()["error_codes"]) == (401, "invalid_client", [700024])
    assert "Client assertion is not within its valid time range." in reply.json()["error_description"]
    # The same assertion, still valid, is taken: the refusal was the time range alone.
    fresh = signed_assertion(
        key_pem, {"x5t#S256": b64url(hashlib.sha256(der).digest())}, aud=f"{emu.url}/{TENANT}/oauth2/v2.0/token"
    )
    assert post_assertion(emu, http, fresh).status_code == 200


def test_an_assertion_for_another_audience_is_an_invalid_jwt(emu: Emulator, http: RecordingSession) -> None:
    key_pem, cert_pem, cert = certificate()
    emu.add_key_credential(CLIENT, cert_pem)
    assertion = signed_assertion(
        key_pem,
        {"x5t": b64url(hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest())},  # noqa: S324
        aud="https://login.microsoftonline.com/another-tenant/oauth2/v2.0/token",
    )
    reply = post_assertion(emu, http, assertion)
    assert (reply.status_code, reply.json()["error_codes"]) == (400, [50027])


# ---------------------------------------------------------------------- federated: the identity's token


def test_the_identity_token_for_token_exchange_has_the_documented_claims(emu: Emulator) -> None:
    with identity_credential(emu) as identity:
        token = identity.get_token(f"{EXCHANGE}/.default").token
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["iss"], claims["sub"], claims["aud"]) == (ISSUER, PRINCIPAL, EXCHANGE)
    assert claims["exp"] > time.time() + 3000


def test_msal_with_the_identity_token_as_assertion_gets_a_graph_token_and_sends(
    emu: Emulator, http: RecordingSession
) -> None:
    emu.set_federated_credential(CLIENT, "relay-identity", ISSUER, PRINCIPAL, [EXCHANGE])
    emu.add_identity(IDENTITY, PRINCIPAL)  # no Graph roles of its own: the app's are what count
    client = federated_app(emu, http)
    claims = token_claims(client.acquire_token_for_client([GRAPH_SCOPE]))
    assert claims["appid"] == CLIENT
    assert assertion_header(http.forms[-1])["alg"] == "RS256"  # the emulator's own signature, Entra's keys
    reply = send_mail(emu, http, client.acquire_token_for_client([GRAPH_SCOPE])["access_token"])
    assert reply.status_code == 202, reply.text
    assert [entry["sender"] for entry in emu.outbox] == [MAILBOX]


@pytest.mark.parametrize(
    ("field", "code"),
    [("issuer", 700211), ("subject", 700213), ("audience", 700212)],
)
def test_a_federated_credential_wrong_in_one_field_is_named_by_its_code(
    emu: Emulator, http: RecordingSession, field: str, code: int
) -> None:
    fic = {"issuer": ISSUER, "subject": PRINCIPAL, "audiences": [EXCHANGE]}
    wrong = {
        "issuer": ("issuer", f"https://login.microsoftonline.com/{uuid.uuid4()}/v2.0"),
        "subject": ("subject", PRINCIPAL.upper()),  # matched case-sensitively
        "audience": ("audiences", ["api://AzureADTokenExchangeUSGov"]),
    }[field]
    fic[wrong[0]] = wrong[1]
    # Saved without complaint, as Graph saves it: the mistake shows only at token time.
    emu.set_federated_credential(CLIENT, "relay-identity", **fic)  # type: ignore[arg-type]
    result = federated_app(emu, http).acquire_token_for_client([GRAPH_SCOPE])
    description = refused(result, code)
    assert result["error"] == "invalid_client"
    presented = {"issuer": ISSUER, "subject": PRINCIPAL, "audience": EXCHANGE}[field]
    assert f"presented assertion {field} '{presented}'" in description


def test_an_expired_identity_token_is_out_of_its_time_range(emu: Emulator, http: RecordingSession) -> None:
    emu.set_federated_credential(CLIENT, "relay-identity", ISSUER, PRINCIPAL, [EXCHANGE])
    expired = emu.identity_token(IDENTITY, EXCHANGE, lifetime=-60)
    reply = post_assertion(emu, http, expired)
    assert (reply.status_code, reply.json()["error"], reply.json()["error_codes"]) == (401, "invalid_client", [700024])
    fresh = emu.identity_token(IDENTITY, EXCHANGE)
    assert post_assertion(emu, http, fresh).status_code == 200


def test_a_token_not_signed_by_entra_is_refused(emu: Emulator, http: RecordingSession) -> None:
    emu.set_federated_credential(CLIENT, "relay-identity", ISSUER, PRINCIPAL, [EXCHANGE])
    now = int(time.time())
    forged_claims = {"iss": ISSUER, "sub": PRINCIPAL, "aud": EXCHANGE, "nbf": now, "exp": now + 600}
    forged = jwt.encode(forged_claims, serialization.load_pem_private_key(certificate()[0].encode(), None), "RS256")  # type: ignore[arg-type]
    reply = post_assertion(emu, http, forged)
    assert (reply.status_code, reply.json()["error_codes"]) == (401, [700027])


def test_a_deleted_federated_credential_leaves_no_record_for_the_issuer(emu: Emulator, http: RecordingSession) -> None:
    emu.set_federated_credential(CLIENT, "relay-identity", ISSUER, PRINCIPAL, [EXCHANGE])
    assert "access_token" in federated_app(emu, http).acquire_token_for_client([GRAPH_SCOPE])
    emu.remove_federated_credential(CLIENT, "relay-identity")
    refused(federated_app(emu, http).acquire_token_for_client([GRAPH_SCOPE]), 700211)


def test_a_deleted_identity_is_no_such_identity_not_an_outage(emu: Emulator, http: RecordingSession) -> None:
    emu.set_federated_credential(CLIENT, "relay-identity", ISSUER, PRINCIPAL, [EXCHANGE])
    emu.remove_identity(IDENTITY)
    with identity_credential(emu) as identity, pytest.raises(CredentialUnavailableError) as raised:
        identity.get_token(f"{EXCHANGE}/.default")
    # A 4xx from App Service's endpoint: the relay tells it from an outage (a 5xx) by this status.
    assert "400, Unable to load the proper Managed Identity." in str(raised.value)
    with pytest.raises(CredentialUnavailableError):
        federated_app(emu, http).acquire_token_for_client([GRAPH_SCOPE])


def test_a_21st_federated_credential_is_refused(emu: Emulator, http: RecordingSession) -> None:
    for n in range(20):
        emu.set_federated_credential(CLIENT, f"fic-{n:02d}", ISSUER, str(uuid.uuid4()), [EXCHANGE])
    emu.set_federated_credential(CLIENT, "fic-00", ISSUER, PRINCIPAL, [EXCHANGE])  # replacing one is no 21st
    reply = http.post(
        f"{emu.url}/_emulator/app-federated-credential",
        json={"clientId": CLIENT, "name": "fic-20", "issuer": ISSUER, "subject": PRINCIPAL, "audiences": [EXCHANGE]},
    )
    assert reply.status_code == 400 and "Maximum of 20" in reply.json()["error"]


# ---------------------------------------------------------------------- managed identity as the Graph caller


def test_the_identity_calls_graph_itself_scoped_by_exchange(emu: Emulator, http: RecordingSession) -> None:
    emu.add_identity(IDENTITY, PRINCIPAL, roles=("Application.Read.All",), exchange_roles=("Application Mail.Send",))
    with identity_credential(emu) as identity:
        token = identity.get_token(GRAPH_SCOPE).token
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["appid"], claims["oid"], claims["roles"]) == (IDENTITY, PRINCIPAL, ["Application.Read.All"])
    assert send_mail(emu, http, token).status_code == 202
    assert send_mail(emu, http, token, "ceo@contoso.com").status_code == 403  # outside Exchange's scope
    assert [entry["sender"] for entry in emu.outbox] == [MAILBOX]
    # It has no application object: Graph does not list it as an application.
    reply = http.get(f"{emu.url}/v1.0/applications(appId='{IDENTITY}')", headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 404


def test_an_identity_without_exchange_roles_may_not_send(emu: Emulator, http: RecordingSession) -> None:
    with identity_credential(emu) as identity:
        token = identity.get_token(GRAPH_SCOPE).token
    assert send_mail(emu, http, token).status_code == 403


def test_the_identity_has_no_secret_at_the_token_endpoint(emu: Emulator, http: RecordingSession) -> None:
    reply = http.post(
        f"{emu.url}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": IDENTITY,
            "client_secret": "guess",
            "scope": GRAPH_SCOPE,
        },
    )
    assert (reply.status_code, reply.json()["error_codes"]) == (401, [7000215])


def test_the_endpoint_selects_an_identity_by_principal_id_and_refuses_two_selectors(
    emu: Emulator, http: RecordingSession
) -> None:
    params = {"api-version": "2019-08-01", "resource": GRAPH_RESOURCE}
    headers = {"X-IDENTITY-HEADER": emu.identity_header}
    by_principal = http.get(emu.msi_endpoint, params={**params, "principal_id": PRINCIPAL}, headers=headers)
    assert by_principal.status_code == 200 and by_principal.json()["client_id"] == IDENTITY
    both = http.get(
        emu.msi_endpoint, params={**params, "principal_id": PRINCIPAL, "client_id": IDENTITY}, headers=headers
    )
    unknown = http.get(emu.msi_endpoint, params={**params, "client_id": str(uuid.uuid4())}, headers=headers)
    for reply in (both, unknown):
        assert reply.status_code == 400
        assert reply.json()["message"] == "Unable to load the proper Managed Identity."


# ---------------------------------------------------------------------- secrets beside the other credentials


def test_an_app_with_no_secret_refuses_one_and_a_secret_with_an_assertion(
    emu: Emulator, http: RecordingSession
) -> None:
    no_secret = http.post(
        f"{emu.url}/{TENANT}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": "guess", "scope": GRAPH_SCOPE},
    )
    assert (no_secret.status_code, no_secret.json()["error_codes"]) == (401, [7000215])
    emu.set_federated_credential(CLIENT, "relay-identity", ISSUER, PRINCIPAL, [EXCHANGE])
    both = post_assertion(emu, http, emu.identity_token(IDENTITY, EXCHANGE), client_secret="guess")
    assert (both.status_code, both.json()["error"]) == (400, "invalid_request")


# ---------------------------------------------------------------------- Graph's view of the app registration


def test_graph_lists_key_and_federated_credentials_in_its_shapes(emu: Emulator, http: RecordingSession) -> None:
    _, cert_pem, cert = certificate()
    key_id = emu.add_key_credential(CLIENT, cert_pem, "relay-cert")
    fic_id = emu.set_federated_credential(CLIENT, "relay-identity", ISSUER, PRINCIPAL, [EXCHANGE])
    token = post_assertion(emu, http, emu.identity_token(IDENTITY, EXCHANGE)).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    body = http.get(
        f"{emu.url}/v1.0/applications(appId='{CLIENT}')?$select=passwordCredentials,keyCredentials", headers=auth
    ).json()
    assert body["passwordCredentials"] == []
    (key,) = body["keyCredentials"]
    assert key == {
        "customKeyIdentifier": base64.b64encode(bytes.fromhex(sha1_hex(cert))).decode(),
        "displayName": "relay-cert",
        "endDateTime": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "key": None,
        "keyId": key_id,
        "startDateTime": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
    }
    listed = http.get(f"{emu.url}/v1.0/applications(appId='{CLIENT}')/federatedIdentityCredentials", headers=auth)
    assert listed.status_code == 200
    assert listed.json()["value"] == [
        {
            "id": fic_id,
            "name": "relay-identity",
            "issuer": ISSUER,
            "subject": PRINCIPAL,
            "description": None,
            "audiences": [EXCHANGE],
        }
    ]
    with identity_credential(emu) as identity:
        roleless = identity.get_token(GRAPH_SCOPE).token
    denied = http.get(
        f"{emu.url}/v1.0/applications(appId='{CLIENT}')/federatedIdentityCredentials",
        headers={"Authorization": f"Bearer {roleless}"},
    )
    assert denied.status_code == 403


# ---------------------------------------------------------------------- Key Vault certificates


def test_a_key_vault_certificate_is_read_as_its_managed_pem_secret(emu: Emulator, http: RecordingSession) -> None:
    key_pem, cert_pem, cert = certificate()
    version = emu.set_certificate("graph-certificate", key_pem + cert_pem)
    with (
        identity_credential(emu) as identity,
        SecretClient(emu.url, identity, verify_challenge_resource=False, connection_verify=emu.ca_cert_path) as vault,
    ):
        secret = vault.get_secret("graph-certificate")
    assert secret.value == key_pem + cert_pem
    properties = secret.properties
    assert (properties.content_type, properties.managed, properties.version) == (
        "application/x-pem-file",
        True,
        version,
    )
    assert properties.expires_on == cert.not_valid_after_utc
    assert properties.not_before == cert.not_valid_before_utc
    assert properties.key_id == f"{emu.url}/keys/graph-certificate/{version}"
    assert emu.stats["keyvault.getSecret"] == 1

    token = emu.identity_token(IDENTITY, "https://vault.azure.net")
    bundle = http.get(
        f"{emu.url}/certificates/graph-certificate",
        params={"api-version": "7.5"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    der = cert.public_bytes(serialization.Encoding.DER)
    assert base64.b64decode(bundle["cer"]) == der
    assert bundle["x5t"] == b64url(hashlib.sha1(der).digest())  # noqa: S324
    assert bundle["sid"] == f"{emu.url}/secrets/graph-certificate/{version}"
    assert "value" not in bundle and key_pem not in json.dumps(bundle)
    missing = http.get(
        f"{emu.url}/certificates/no-such-cert",
        params={"api-version": "7.5"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "CertificateNotFound"


def test_a_pem_without_its_private_key_is_no_certificate(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="private key"):
        emu.set_certificate("graph-certificate", certificate()[1])


# ---------------------------------------------------------------------- seed and admin API


def test_the_seed_and_admin_api_build_every_mode(emu: Emulator, http: RecordingSession) -> None:
    key_pem, cert_pem, _ = certificate()
    emu.reset()
    emu.load_seed(
        {
            "apps": [
                {
                    "tenantId": TENANT,
                    "clientId": CLIENT,
                    "keyCredentials": [{"certificate": cert_pem, "displayName": "seeded"}],
                    "federatedCredentials": [
                        {"name": "relay-identity", "issuer": ISSUER, "subject": PRINCIPAL, "audiences": [EXCHANGE]}
                    ],
                }
            ],
            "identities": [{"clientId": IDENTITY, "principalId": PRINCIPAL, "roles": [], "exchangeRoles": []}],
            "certificates": [{"name": "graph-certificate", "pem": key_pem + cert_pem}],
        }
    )
    assert "access_token" in federated_app(emu, http).acquire_token_for_client([GRAPH_SCOPE])
    certificate_app = app(emu, http, {"private_key": key_pem, "public_certificate": cert_pem})
    assert "access_token" in certificate_app.acquire_token_for_client([GRAPH_SCOPE])

    def admin(path: str, body: dict[str, Any]) -> requests.Response:
        return http.post(f"{emu.url}/_emulator/{path}", json=body)

    _, other_pem, _ = certificate()
    assert "keyId" in admin("app-key-credential", {"clientId": CLIENT, "certificate": other_pem}).json()
    assert "version" in admin("certificate", {"name": "graph-certificate", "pem": key_pem + cert_pem}).json()
    assert admin("app-federated-credential", {"clientId": CLIENT, "name": "relay-identity", "delete": True}).ok
    refused(federated_app(emu, http).acquire_token_for_client([GRAPH_SCOPE]), 700211)
    assert admin("identity", {"clientId": IDENTITY, "delete": True}).ok
    with pytest.raises(KeyError):
        emu.identity_token(IDENTITY, EXCHANGE)
    bad = admin("app-federated-credential", {"clientId": CLIENT, "name": "x", "issuer": ISSUER, "subject": "s"})
    assert bad.status_code == 400 and "name" in bad.json()["error"]
