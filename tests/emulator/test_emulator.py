"""The local emulator against the real SDKs (MSAL, azure-identity, azure-keyvault-secrets) and plain requests.

No mocks: every test talks HTTPS to a running emulator, so what passes here is what the relay's own
integration tests can rely on.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError
from azure.identity import ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient

from devstack.emulator import SERVICES, Emulator

TENANT = "8a3c0e58-4f1b-4d6e-9a7c-2b5d8e1f0a93"
CLIENT = "5e2f9c1a-7b3d-4e8f-a6c0-1d4b7e9f2a35"
SECRET = "Yq8~emulator-test-secret-value-0000000"
MAILBOX = "alerts@contoso.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def running() -> Iterator[Emulator]:
    emu = Emulator()
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(running: Emulator) -> Emulator:
    running.reset()
    # The legacy model with its Entra consent: the token carries Mail.Send, a policy scopes it.
    running.add_app(TENANT, CLIENT, SECRET, roles=("Mail.Send",), scope_model="policy")
    running.add_mailbox(MAILBOX)
    return running


@pytest.fixture
def http(emu: Emulator) -> Iterator[requests.Session]:
    session = requests.Session()
    # REQUESTS_CA_BUNDLE is set on this machine and would override `verify` with trust_env on.
    session.trust_env = False
    session.verify = emu.ca_cert_path
    yield session
    session.close()


def confidential_app(
    emu: Emulator, http: requests.Session, client_id: str = CLIENT, secret: str = SECRET, tenant: str = TENANT
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=secret,
        authority=f"{emu.url}/{tenant}",
        instance_discovery=False,
        http_client=http,
    )


def token_reply(
    url: str,
    http: requests.Session,
    scope: str = GRAPH_SCOPE,
    client_id: str = CLIENT,
    secret: str = SECRET,
    tenant: str = TENANT,
) -> requests.Response:
    """Entra's answer to a client-credentials request, on the wire (MSAL would hide the status)."""
    return http.post(
        f"{url}/{tenant}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": scope},
    )


def token_for(
    emu: Emulator,
    http: requests.Session,
    scope: str = GRAPH_SCOPE,
    client_id: str = CLIENT,
    secret: str = SECRET,
) -> str:
    reply = token_reply(emu.url, http, scope, client_id, secret)
    assert reply.status_code == 200, reply.text
    token: str = reply.json()["access_token"]
    return token


def mail(**message: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "subject": "Quarterly numbers",
        "body": {"contentType": "Text", "content": "See attached."},
        "toRecipients": [{"emailAddress": {"address": "ada@contoso.com", "name": "Ada"}}],
    }
    base.update(message)
    return {"message": base, "saveToSentItems": False}


def send(
    emu: Emulator,
    http: requests.Session,
    body: Any,
    token: str | None,
    mailbox: str = MAILBOX,
    **headers: str,
) -> requests.Response:
    all_headers = {"Content-Type": "application/json", **headers}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(f"{emu.url}/v1.0/users/{mailbox}/sendMail", data=data, headers=all_headers)


def graph_error(reply: requests.Response) -> tuple[int, str, str]:
    error = reply.json()["error"]
    inner = error["innerError"]
    assert inner["request-id"] == reply.headers["request-id"]
    assert inner["client-request-id"] == reply.headers["client-request-id"]
    assert datetime.fromisoformat(inner["date"])
    return reply.status_code, error["code"], error["message"]


# ---------------------------------------------------------------------- Entra ID with MSAL


def test_msal_gets_a_graph_token_and_serves_the_second_call_from_its_cache(
    emu: Emulator, http: requests.Session
) -> None:
    app = confidential_app(emu, http)
    first = app.acquire_token_for_client([GRAPH_SCOPE])
    second = app.acquire_token_for_client([GRAPH_SCOPE])

    assert first["token_type"] == "Bearer" and first["expires_in"] > 3000
    assert second["access_token"] == first["access_token"]
    assert second["token_source"] == "cache"
    # MSAL 1.39 with instance_discovery=False fetches the openid configuration, then the token: nothing else.
    assert emu.stats["entra.openid"] == 1
    assert emu.stats["entra.token"] == 1
    claims = jwt.decode(first["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://graph.microsoft.com"
    assert claims["iss"] == f"https://sts.windows.net/{TENANT}/"
    assert claims["tid"] == TENANT and claims["appid"] == CLIENT
    assert claims["roles"] == ["Mail.Send"]
    assert claims["exp"] - claims["iat"] == 3599 and claims["nbf"] == claims["iat"]
    assert jwt.get_unverified_header(first["access_token"])["alg"] == "RS256"


def test_the_token_response_has_entras_fields(emu: Emulator, http: requests.Session) -> None:
    reply = token_reply(emu.url, http)
    assert reply.status_code == 200
    assert set(reply.json()) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert reply.json()["expires_in"] == reply.json()["ext_expires_in"] == 3599


@pytest.mark.parametrize(
    ("setup", "client_id", "secret", "status", "error", "code"),
    [
        ("none", CLIENT, "the-secret-id-not-its-value", 401, "invalid_client", 7000215),
        ("expired", CLIENT, SECRET, 401, "invalid_client", 7000222),
        ("none", "0b9d2c4e-6f8a-4b1c-9d3e-5a7f1c2e4b60", SECRET, 400, "unauthorized_client", 700016),
    ],
    ids=["invalid-secret", "expired-secret", "unknown-app"],
)
def test_msal_sees_entras_errors(
    emu: Emulator,
    http: requests.Session,
    setup: str,
    client_id: str,
    secret: str,
    status: int,
    error: str,
    code: int,
) -> None:
    if setup == "expired":
        emu.set_app_secret(CLIENT, SECRET, expired=True)
    result = confidential_app(emu, http, client_id=client_id, secret=secret).acquire_token_for_client([GRAPH_SCOPE])

    assert "access_token" not in result
    assert result["error"] == error
    assert result["error_codes"] == [code]
    assert result["error_description"].startswith(f"AADSTS{code}: ")
    for line in ("Trace ID: ", "Correlation ID: ", "Timestamp: "):
        assert f"\r\n{line}" in result["error_description"]
    assert {"timestamp", "trace_id", "correlation_id", "error_uri"} <= set(result)
    # The status code too, seen from the wire.
    reply = token_reply(emu.url, http, client_id=client_id, secret=secret)
    assert reply.status_code == status


def test_the_invalid_secret_error_names_the_secret_id_mistake(emu: Emulator, http: requests.Session) -> None:
    result = confidential_app(emu, http, secret="wrong").acquire_token_for_client([GRAPH_SCOPE])
    assert "client secret value, not the client secret ID" in result["error_description"]
    assert f"app '{CLIENT}'" in result["error_description"]


def test_a_rotated_secret_replaces_the_old_one(emu: Emulator, http: requests.Session) -> None:
    emu.set_app_secret(CLIENT, "the-new-secret")
    old = confidential_app(emu, http).acquire_token_for_client([GRAPH_SCOPE])
    new = confidential_app(emu, http, secret="the-new-secret").acquire_token_for_client([GRAPH_SCOPE])
    assert old["error_codes"] == [7000215]
    assert "access_token" in new


def test_unknown_tenant_answers_aadsts90002(emu: Emulator, http: requests.Session) -> None:
    reply = http.get(f"{emu.url}/no-such-tenant.onmicrosoft.com/v2.0/.well-known/openid-configuration")
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_tenant" and reply.json()["error_codes"] == [90002]
    # MSAL refuses the authority up front.
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        confidential_app(emu, http, tenant="no-such-tenant.onmicrosoft.com")


@pytest.mark.parametrize(
    ("scope", "error", "code"),
    [
        ("https://graph.microsoft.com/Mail.Send", "invalid_scope", 1002012),
        ("/.default", "invalid_scope", 70011),
        ("https://unknown.example.com/.default", "invalid_resource", 500011),
    ],
)
def test_scopes_must_be_a_known_resources_default(
    emu: Emulator, http: requests.Session, scope: str, error: str, code: int
) -> None:
    reply = token_reply(emu.url, http, scope=scope)
    assert reply.status_code == 400
    assert reply.json()["error"] == error and reply.json()["error_codes"] == [code]


def test_openid_configuration_points_at_the_emulator(emu: Emulator, http: requests.Session) -> None:
    config = http.get(f"{emu.url}/{TENANT}/v2.0/.well-known/openid-configuration").json()
    assert config["token_endpoint"] == f"{emu.url}/{TENANT}/oauth2/v2.0/token"
    keys = http.get(config["jwks_uri"]).json()["keys"]
    token = token_for(emu, http)
    key = jwt.PyJWK(keys[0])
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience="https://graph.microsoft.com")
    assert claims["appid"] == CLIENT


# ---------------------------------------------------------------------- Key Vault with azure-identity


@pytest.fixture
def managed_identity(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagedIdentityCredential]:
    monkeypatch.setenv("IDENTITY_ENDPOINT", emu.msi_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", emu.identity_header)
    # A user-assigned identity answers only once the Function App has it (an unknown one is a 400).
    emu.add_identity("9c7e5a3b-1d2f-4e6a-8b0c-3f5d7a9e1c24", "3b1d9e7a-5c2f-4a8e-b6d0-7f9a1c3e5b24")
    # The credential has its own HTTP pipeline: SecretClient's connection_verify does not reach it.
    credential = ManagedIdentityCredential(
        client_id="9c7e5a3b-1d2f-4e6a-8b0c-3f5d7a9e1c24", connection_verify=emu.ca_cert_path
    )
    yield credential
    credential.close()


@pytest.fixture
def vault(emu: Emulator, managed_identity: ManagedIdentityCredential) -> Iterator[SecretClient]:
    client = SecretClient(
        vault_url=emu.url,
        credential=managed_identity,
        verify_challenge_resource=False,
        connection_verify=emu.ca_cert_path,
    )
    yield client
    client.close()


def test_secret_client_reads_a_secret_with_its_expiry_and_then_a_new_version(
    emu: Emulator, vault: SecretClient
) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    first_version = emu.set_secret("graph-client-secret", "value-one", expires_on=expires)

    secret = vault.get_secret("graph-client-secret")
    assert secret.value == "value-one"
    assert secret.properties.expires_on == expires
    assert secret.properties.version == first_version
    assert secret.properties.enabled is True
    assert secret.id == f"{emu.url}/secrets/graph-client-secret/{first_version}"

    second_version = emu.set_secret("graph-client-secret", "value-two")
    latest = vault.get_secret("graph-client-secret")
    assert (latest.value, latest.properties.version, latest.properties.expires_on) == (
        "value-two",
        second_version,
        None,
    )
    assert vault.get_secret("graph-client-secret", first_version).value == "value-one"
    assert emu.stats["msi.token"] == 1  # the credential's token is reused
    assert emu.stats["keyvault.getSecret"] == 3  # authenticated reads; the challenge probe is not counted


def test_secret_client_lists_versions_with_their_expiry(emu: Emulator, vault: SecretClient) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=9)
    emu.set_secret("graph-client-secret", "one", expires_on=expires)
    emu.set_secret("graph-client-secret", "two", expires_on=expires + timedelta(days=365))
    versions = list(vault.list_properties_of_secret_versions("graph-client-secret"))
    assert [v.expires_on for v in versions] == [expires, expires + timedelta(days=365)]
    assert all(v.name == "graph-client-secret" and v.enabled for v in versions)


def test_unknown_and_disabled_secrets_fail_as_key_vault_does(emu: Emulator, vault: SecretClient) -> None:
    with pytest.raises(ResourceNotFoundError) as missing:
        vault.get_secret("no-such-secret")
    assert missing.value.error is not None and missing.value.error.code == "SecretNotFound"
    assert "was not found in this key vault" in str(missing.value)

    emu.set_secret("turned-off", "x", enabled=False)
    with pytest.raises(HttpResponseError) as disabled:
        vault.get_secret("turned-off")
    assert disabled.value.status_code == 403
    assert "Operation get is not allowed on a disabled secret." in str(disabled.value)


def test_key_vault_challenges_an_unauthenticated_request(emu: Emulator, http: requests.Session) -> None:
    reply = http.get(f"{emu.url}/secrets/anything", params={"api-version": "7.5"})
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == (
        f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net"'
    )
    assert reply.json()["error"]["code"] == "Unauthorized"
    assert emu.stats["keyvault.getSecret"] == 0


def test_key_vault_refuses_a_graph_token(emu: Emulator, http: requests.Session) -> None:
    reply = http.get(
        f"{emu.url}/secrets/anything",
        params={"api-version": "7.5"},
        headers={"Authorization": f"Bearer {token_for(emu, http)}"},
    )
    assert reply.status_code == 401
    assert reply.json()["error"]["message"].startswith("AKV10022: Invalid audience.")


def test_key_vault_answers_a_revoked_token_with_a_cae_claims_challenge(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http, scope="https://vault.azure.net/.default")
    emu.expire_tokens()
    reply = http.get(
        f"{emu.url}/secrets/anything",
        params={"api-version": "7.5"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 401
    challenge = reply.headers["WWW-Authenticate"]
    assert 'error="insufficient_claims"' in challenge
    claims = challenge.split('claims="')[1].rstrip('"')
    assert json.loads(base64.b64decode(claims))["access_token"]["nbf"]["essential"] is True
    assert "eyJ" not in challenge  # SDKs log this header; it must not look like a token to log scanners


def test_secret_client_recovers_after_tokens_are_revoked(emu: Emulator, vault: SecretClient) -> None:
    emu.set_secret("graph-client-secret", "v1")
    assert vault.get_secret("graph-client-secret").value == "v1"
    emu.expire_tokens()
    emu.set_secret("graph-client-secret", "v2")
    # Key Vault answers the revoked token with a CAE claims challenge; the SDK fetches a fresh token.
    assert vault.get_secret("graph-client-secret").value == "v2"
    assert emu.stats["msi.token"] == 2
    assert emu.stats["keyvault.getSecret"] == 2


def test_managed_identity_credential_needs_connection_verify_of_its_own(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding: SecretClient(connection_verify=...) does not reach the credential's own pipeline."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", emu.msi_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", emu.identity_header)
    emu.set_secret("graph-client-secret", "v1")
    credential = ManagedIdentityCredential(retry_total=0)
    # retry_total=0 on both: the client's retry policy would otherwise retry the credential's failure.
    client = SecretClient(
        vault_url=emu.url,
        credential=credential,
        verify_challenge_resource=False,
        connection_verify=emu.ca_cert_path,
        retry_total=0,
    )
    with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"), client:
        client.get_secret("graph-client-secret")


def test_managed_identity_endpoint_shapes(emu: Emulator, http: requests.Session) -> None:
    emu.add_identity("mi-7", "0f6b2d8e-4a1c-4e3b-9d5f-7a2c8e1b4d60")
    params = {"api-version": "2019-08-01", "resource": "https://vault.azure.net", "client_id": "mi-7"}
    good = http.get(emu.msi_endpoint, params=params, headers={"X-IDENTITY-HEADER": emu.identity_header})
    assert good.status_code == 200
    body = good.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert isinstance(body["expires_on"], str) and int(body["expires_on"]) > time.time() + 3000
    assert (body["resource"], body["token_type"], body["client_id"]) == (
        "https://vault.azure.net",
        "Bearer",
        "mi-7",
    )
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["aud"] == "https://vault.azure.net"

    missing = http.get(emu.msi_endpoint, params=params)
    wrong = http.get(emu.msi_endpoint, params=params, headers={"X-IDENTITY-HEADER": "guess"})
    assert (missing.status_code, missing.json()["statusCode"]) == (400, 400)
    assert (wrong.status_code, wrong.json()["statusCode"]) == (401, 401)
    assert emu.stats["msi.token"] == 3


# ---------------------------------------------------------------------- Microsoft Graph


def test_send_mail_accepts_and_records_the_message(emu: Emulator, http: requests.Session) -> None:
    body = mail(
        attachments=[
            {
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "a.txt",
                "contentType": "text/plain",
                "contentBytes": base64.b64encode(b"hi").decode(),
            }
        ],
        internetMessageHeaders=[{"name": "X-Relay-Id", "value": "42"}],
    )
    reply = send(emu, http, body, token_for(emu, http), **{"client-request-id": "my-correlation-id"})

    assert reply.status_code == 202 and reply.content == b""
    assert reply.headers["client-request-id"] == "my-correlation-id" and reply.headers["request-id"]
    (accepted,) = emu.outbox
    assert accepted["sender"] == MAILBOX and accepted["message"] == body
    assert datetime.fromisoformat(accepted["receivedAt"]).tzinfo is not None
    assert emu.stats["graph.sendMail"] == 1


def test_send_mail_by_object_id_and_from_the_same_mailbox(emu: Emulator, http: requests.Session) -> None:
    token = token_for(emu, http)
    same_from = mail(**{"from": {"emailAddress": {"address": MAILBOX.upper()}}})
    assert send(emu, http, same_from, token, mailbox=MAILBOX.upper()).status_code == 202
    assert send(emu, http, mail(), token, mailbox=emu.mailbox_id(MAILBOX)).status_code == 202
    assert [m["sender"] for m in emu.outbox] == [MAILBOX, MAILBOX]


@pytest.mark.parametrize(
    ("case", "status", "code", "message"),
    [
        ("no-token", 401, "InvalidAuthenticationToken", "Access token is empty."),
        (
            "garbage-token",
            401,
            "InvalidAuthenticationToken",
            "CompactToken parsing failed with error code: 80049217",
        ),
        ("forged-token", 401, "InvalidAuthenticationToken", "Access token validation failure."),
        (
            "expired-token",
            401,
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
        ),
        (
            "vault-token",
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        ),
        ("no-mail-send", 403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."),
        ("unknown-mailbox", 404, "ErrorInvalidUser", "The requested user 'nobody@contoso.com' is invalid."),
        # Under an application access policy, the documented denial (auth-limit-mailbox-access, "Handling API errors").
        ("out-of-scope", 403, "ErrorAccessDenied", "Access to OData is disabled."),
        ("rest-disabled", 403, "ErrorAccessDenied", "Access to OData is disabled."),
    ],
)
def test_send_mail_auth_and_mailbox_errors(
    emu: Emulator, http: requests.Session, case: str, status: int, code: str, message: str
) -> None:
    token: str | None = token_for(emu, http)
    mailbox = MAILBOX
    if case == "no-token":
        token = None
    elif case == "garbage-token":
        token = "not-a-jwt"
    elif case == "forged-token":
        assert token is not None
        header, payload, _ = token.split(".")
        token = f"{header}.{payload}.{base64.urlsafe_b64encode(b'x' * 256).decode().rstrip('=')}"
    elif case == "expired-token":
        emu.expire_tokens()
    elif case == "vault-token":
        token = token_for(emu, http, scope="https://vault.azure.net/.default")
    elif case == "no-mail-send":
        emu.add_app(
            TENANT, "3d5f7b9c-2e4a-4c6d-8f0b-1a3c5e7d9f20", "other", roles=("User.Read.All",), exchange_roles=()
        )
        token = token_for(emu, http, client_id="3d5f7b9c-2e4a-4c6d-8f0b-1a3c5e7d9f20", secret="other")
    elif case == "unknown-mailbox":
        mailbox = "nobody@contoso.com"
    elif case == "out-of-scope":
        emu.set_exchange_scope(MAILBOX, False)
    elif case == "rest-disabled":
        emu.add_mailbox(MAILBOX, rest_enabled=False)

    reply = send(emu, http, mail(), token, mailbox=mailbox)
    assert graph_error(reply) == (status, code, message)
    if status == 401:
        assert reply.headers["WWW-Authenticate"].startswith('Bearer realm=""')
    assert emu.outbox == []


@pytest.mark.parametrize(
    ("body", "status", "code", "message_start"),
    [
        (b"{not json", 400, "BadRequest", "Unable to read JSON request payload."),
        ({"message": {"subject": "x"}, "saveToSentItems": "yes"}, 400, "RequestBodyRead", "Cannot convert"),
        ({"mesage": {}}, 400, "RequestBodyRead", "The parameter 'mesage' in the request payload"),
        ({}, 400, "ErrorInvalidParameter", "The value of the parameter 'Message' is empty."),
        (mail(subjet="typo"), 400, "RequestBodyRead", "The property 'subjet' does not exist on type"),
        (
            mail(toRecipients=[]),
            400,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid., A message can't be sent because it contains no recipients.",
        ),
        (
            mail(ccRecipients=[{"emailAddress": {"address": "not an address"}}]),
            400,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid., Recipient 'not an address' is not resolved.",
        ),
        (
            mail(**{"from": {"emailAddress": {"address": "ceo@contoso.com"}}}),
            403,
            "ErrorSendAsDenied",
            "The user account which was used to submit this request does not have the right to send mail",
        ),
        (
            mail(internetMessageHeaders=[{"name": "Relay-Id", "value": "1"}]),
            400,
            "InvalidInternetMessageHeader",
            "The internet message header name 'Relay-Id' should start with 'x-' or 'X-'.",
        ),
        (
            mail(internetMessageHeaders=[{"name": f"X-H{i}", "value": "1"} for i in range(6)]),
            400,
            "InvalidInternetMessageHeaderCollection",
            "The number of internet message headers is invalid",
        ),
        (
            mail(attachments=[{"name": "a.txt", "contentBytes": "aGk="}]),
            400,
            "RequestBodyRead",
            "The property 'contentBytes' does not exist on type 'microsoft.graph.attachment'.",
        ),
        (
            mail(attachments=[{"@odata.type": "#microsoft.graph.fileAttachment", "name": "a", "contentBytes": "%%%"}]),
            400,
            "RequestBodyRead",
            "Cannot convert the literal '%%%' to the expected type 'Edm.Binary'.",
        ),
        (
            mail(attachments=[{"@odata.type": "#microsoft.graph.fileAttachment", "name": "a"}]),
            400,
            "ErrorRequiredPropertyMissing",
            "Required property is missing.",
        ),
        (
            mail(body={"contentType": "markdown", "content": "x"}),
            400,
            "RequestBodyRead",
            "Requested value 'markdown' was not found.",
        ),
    ],
    ids=[
        "malformed-json",
        "save-not-bool",
        "unknown-parameter",
        "no-message",
        "unknown-property",
        "no-recipients",
        "bad-address",
        "send-as",
        "non-x-header",
        "six-headers",
        "attachment-without-type",
        "bad-base64",
        "attachment-without-content",
        "bad-body-type",
    ],
)
def test_send_mail_body_errors(
    emu: Emulator, http: requests.Session, body: Any, status: int, code: str, message_start: str
) -> None:
    reply = send(emu, http, body, token_for(emu, http))
    got_status, got_code, got_message = graph_error(reply)
    assert (got_status, got_code) == (status, code)
    assert got_message.startswith(message_start)
    assert emu.outbox == []


def test_send_mail_needs_a_json_content_type(emu: Emulator, http: requests.Session) -> None:
    reply = send(emu, http, mail(), token_for(emu, http), **{"Content-Type": "application/xml"})
    assert graph_error(reply)[:2] == (400, "BadRequest")
    # text/plain means MIME (user-sendmail): JSON sent as text/plain is read as base64 MIME, and is not base64.
    reply = send(emu, http, mail(), token_for(emu, http), **{"Content-Type": "text/plain"})
    assert graph_error(reply)[:2] == (400, "ErrorMimeContentInvalidBase64String")


def test_send_mail_refuses_bodies_over_4_mb(emu: Emulator, http: requests.Session) -> None:
    big = base64.b64encode(b"\0" * (3 * 1024 * 1024 + 200_000)).decode()
    body = mail(
        attachments=[{"@odata.type": "#microsoft.graph.fileAttachment", "name": "big.bin", "contentBytes": big}]
    )
    assert graph_error(send(emu, http, body, token_for(emu, http))) == (
        413,
        "BadRequest",
        "The maximum request length supported is 4MB.",
    )


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "ApplicationThrottled"),
        (503, "ServiceUnavailable"),
        (500, "InternalServerError"),
        (502, "BadGateway"),
        (504, "GatewayTimeout"),
    ],
)
def test_faults_answer_with_status_retry_after_then_clear(
    emu: Emulator, http: requests.Session, status: int, code: str
) -> None:
    emu.add_fault("graph.sendMail", status=status, retry_after=2, count=2)
    token = token_for(emu, http)
    for _ in range(2):
        reply = send(emu, http, mail(), token)
        assert graph_error(reply)[:2] == (status, code)
        assert reply.headers["Retry-After"] == "2"
    assert send(emu, http, mail(), token).status_code == 202
    assert emu.stats["graph.sendMail"] == 3 and len(emu.outbox) == 1


def test_throttling_uses_outlooks_message(emu: Emulator, http: requests.Session) -> None:
    emu.add_fault("graph.sendMail", status=429, retry_after=7)
    reply = send(emu, http, mail(), token_for(emu, http))
    assert graph_error(reply) == (
        429,
        "ApplicationThrottled",
        "Application is over its MailboxConcurrency limit.",
    )
    assert reply.headers["Retry-After"] == "7"


def test_a_delay_fault_provokes_a_client_timeout(emu: Emulator, http: requests.Session) -> None:
    emu.add_fault("graph.sendMail", status=None, delay=0.5)
    token = token_for(emu, http)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(
            f"{emu.url}/v1.0/users/{MAILBOX}/sendMail",
            json=mail(),
            headers={"Authorization": f"Bearer {token}"},
            timeout=0.2,
        )
    # The delayed call then completes on the server: a client timeout is not a refusal.
    deadline = time.monotonic() + 3
    while not emu.outbox and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(emu.outbox) == 1


def test_faults_reach_every_service(emu: Emulator, http: requests.Session) -> None:
    emu.add_fault("entra.token", status=503, retry_after=1)
    reply = token_reply(emu.url, http)
    assert reply.status_code == 503 and reply.json()["error_codes"] and reply.headers["Retry-After"] == "1"
    emu.add_fault("keyvault.getSecret", status=429, retry_after=3)
    vault_token = token_for(emu, http, scope="https://vault.azure.net/.default")
    reply = http.get(
        f"{emu.url}/secrets/x",
        params={"api-version": "7.5"},
        headers={"Authorization": f"Bearer {vault_token}"},
    )
    assert reply.status_code == 429 and reply.json()["error"]["code"] == "Throttled"
    with pytest.raises(ValueError, match="unknown service"):
        emu.add_fault("graph.listMessages")


# ---------------------------------------------------------------------- admin API, state, process


def test_admin_http_api_mirrors_the_python_api(running: Emulator, http: requests.Session) -> None:
    admin = f"{running.url}/_emulator"
    assert http.post(f"{admin}/reset").json() == {"ok": True}
    assert http.post(f"{admin}/apps", json={"tenantId": TENANT, "clientId": CLIENT, "secret": SECRET}).ok
    assert http.post(f"{admin}/mailboxes", json={"address": MAILBOX}).ok
    version = http.post(
        f"{admin}/secrets",
        json={"name": "s", "value": "v", "expiresOn": "2030-01-01T00:00:00Z", "enabled": True},
    ).json()["version"]
    assert len(version) == 32
    assert http.post(f"{admin}/scope", json={"address": MAILBOX, "inScope": False}).ok
    assert http.post(f"{admin}/scope", json={"address": MAILBOX, "inScope": "no"}).status_code == 400
    assert http.post(f"{admin}/faults", json={"service": "graph.sendMail", "status": 503, "retryAfter": 1}).ok
    assert http.post(f"{admin}/expire-tokens").ok
    assert http.post(f"{admin}/app-secret", json={"clientId": CLIENT, "secret": "rotated"}).ok
    assert http.post(f"{admin}/apps", json={"tenantId": TENANT}).status_code == 400

    token = token_for(running, http, secret="rotated")
    assert send(running, http, mail(), token).status_code == 403  # out of scope, checked before the fault
    http.post(f"{admin}/scope", json={"address": MAILBOX, "inScope": True})
    assert send(running, http, mail(), token).status_code == 503
    assert send(running, http, mail(), token).status_code == 202
    assert http.get(f"{admin}/outbox").json() == running.outbox and len(running.outbox) == 1
    assert http.get(f"{admin}/stats").json() == running.stats
    assert set(running.stats) == set(SERVICES)


def test_admin_secret_expiry_is_iso_8601_read_as_utc_when_naive(emu: Emulator, http: requests.Session) -> None:
    admin = f"{emu.url}/_emulator/secrets"
    refused = http.post(admin, json={"name": "s", "value": "v", "expiresOn": 1893456000})
    assert refused.status_code == 400 and refused.json() == {"error": "expiresOn must be an ISO 8601 string or null"}
    version = http.post(admin, json={"name": "s", "value": "v", "expiresOn": "2030-01-01T00:00:00"}).json()["version"]
    vault_token = token_for(emu, http, scope="https://vault.azure.net/.default")
    reply = http.get(
        f"{emu.url}/secrets/s/{version}",
        params={"api-version": "7.5"},
        headers={"Authorization": f"Bearer {vault_token}"},
    )
    assert reply.json()["attributes"]["exp"] == 1893456000  # 2030-01-01T00:00:00Z


def test_reset_clears_everything(emu: Emulator, http: requests.Session) -> None:
    emu.set_secret("s", "v")
    emu.add_fault("graph.sendMail")
    send(emu, http, mail(), token_for(emu, http))
    emu.reset()
    assert emu.outbox == [] and emu.stats == dict.fromkeys(SERVICES, 0)
    reply = token_reply(emu.url, http)
    assert reply.json()["error"] == "invalid_tenant"  # the app and its tenant are gone


def test_the_emulator_logs_no_secret_or_token(
    emu: Emulator, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="devstack.emulator")
    token = token_for(emu, http)
    send(emu, http, mail(), token)
    http.get(
        emu.msi_endpoint,
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
        headers={"X-IDENTITY-HEADER": emu.identity_header},
    )
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "/sendMail -> 202" in logged
    for needle in (SECRET, token, emu.identity_header, "eyJ", "See attached."):
        assert needle not in logged


def test_stop_closes_pooled_connections_and_is_final(tmp_path: Path) -> None:
    emu = Emulator()
    emu.start()
    session = requests.Session()
    session.trust_env = False
    session.verify = str(tmp_path / "ca.pem")  # a copy: stop() removes the emulator's own
    shutil.copyfile(emu.ca_cert_path, session.verify)
    url = emu.url
    assert session.get(f"{url}/_emulator/stats").ok  # leaves a keep-alive connection in the pool
    emu.stop()
    emu.stop()  # idempotent
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(f"{url}/_emulator/stats", timeout=2)
    session.close()
    with pytest.raises(RuntimeError, match="cannot be started again"):
        emu.start()


def test_the_process_writes_its_ready_line_and_stops_on_sigterm(tmp_path: Path) -> None:
    seed = {
        "apps": [{"tenantId": TENANT, "clientId": CLIENT, "secret": SECRET}],
        "mailboxes": [{"address": MAILBOX, "inExchangeScope": True}],
        "secrets": [{"name": "graph-client-secret", "value": SECRET, "expiresOn": None}],
    }
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    ready_file = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.emulator",
            "--port",
            "0",
            "--seed",
            str(tmp_path / "seed.json"),
            "--ready-file",
            str(ready_file),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not ready_file.exists():
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "the emulator never became ready"
            time.sleep(0.05)
        ready = json.loads(ready_file.read_text())
        assert set(ready) >= {"url", "caCertPath", "identityHeader"}
        assert process.stdout is not None and json.loads(process.stdout.readline()) == ready

        session = requests.Session()
        session.trust_env = False
        session.verify = ready["caCertPath"]
        reply = token_reply(ready["url"], session)
        assert reply.status_code == 200
        session.close()

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert time.monotonic() - started < 5
        assert not Path(ready["caCertPath"]).exists()  # the throwaway CA is removed on exit
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
