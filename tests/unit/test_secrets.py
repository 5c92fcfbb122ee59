"""shared.secrets: the relay's credential tells an identity endpoint that is down from an identity that is not
there, and KeyVaultSecret turns each into the outcome that names it. Fake credentials; no I/O."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity import CredentialUnavailableError

from shared.outcomes import Permanent, RelayFailure, Transient
from shared.secrets import IdentityEndpointUnavailable, KeyVaultSecret, RelayCredential


class Credential:
    def __init__(self, outcome: Exception | str):
        self.outcome = outcome
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return AccessToken(self.outcome, 0)

    def close(self) -> None:
        pass


class Response:
    def __init__(self, status_code: int):
        self.status_code = status_code
        self.reason = "Too Many Requests"
        self.headers: dict[str, str] = {}

    def text(self) -> str:
        return ""


# What azure-identity raises when App Service's endpoint answers 503 (see RelayCredential._first).
ENDPOINT_503 = CredentialUnavailableError(
    "ManagedIdentityCredential authentication unavailable. Token request error: (invalid_scope) 503, Service "
    "Unavailable"
)


@pytest.mark.parametrize(
    "failure",
    [
        ServiceRequestError("HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection"),
        ENDPOINT_503,
        ClientAuthenticationError(message="throttled", response=Response(429)),
    ],
    ids=["refused", "503 through MSAL", "429"],
)
def test_an_identity_endpoint_that_fails_stops_the_chain_as_an_outage(failure: Exception) -> None:
    cli = Credential("cli-token")
    with pytest.raises(IdentityEndpointUnavailable, match="managed identity endpoint"):
        RelayCredential(Credential(failure), cli).get_token("https://vault.azure.net/.default")
    assert cli.calls == 0  # not "try the next credential": the identity is there, its endpoint is down


def test_no_managed_identity_falls_back_to_the_azure_cli() -> None:
    managed = Credential(CredentialUnavailableError("no response from the IMDS endpoint"))
    assert RelayCredential(managed, Credential("cli-token")).get_token("scope").token == "cli-token"


def test_neither_gives_credential_unavailable_naming_both() -> None:
    managed = Credential(CredentialUnavailableError("ManagedIdentityCredential authentication unavailable"))
    cli = Credential(CredentialUnavailableError("Azure CLI not found on path"))
    with pytest.raises(CredentialUnavailableError, match=r"no managed identity answered.*Azure CLI not found"):
        RelayCredential(managed, cli).get_token("scope")


def test_an_identity_that_refuses_is_not_an_outage() -> None:
    refused = ClientAuthenticationError(message="Unable to load the proper Managed Identity.")
    with pytest.raises(ClientAuthenticationError) as caught:
        RelayCredential(Credential(refused), Credential("cli-token")).get_token("scope")
    assert not isinstance(caught.value, IdentityEndpointUnavailable)


class Vault:
    def __init__(self, failure: Exception):
        self.failure = failure

    def get_secret(self, name: str) -> Any:
        raise self.failure


@pytest.mark.parametrize(
    ("failure", "kind", "code"),
    [
        (
            IdentityEndpointUnavailable(message="the managed identity endpoint did not answer: refused"),
            Transient,
            "ManagedIdentityUnavailable",
        ),
        (CredentialUnavailableError("no managed identity answered"), Permanent, "CredentialUnavailable"),
        (ServiceRequestError("Name or service not known"), Transient, "KeyVaultUnavailable"),
    ],
)
def test_each_failure_of_the_secret_read_names_its_service(failure: Exception, kind: type, code: str) -> None:
    with pytest.raises(RelayFailure) as caught:
        KeyVaultSecret(Vault(failure), "graph-client-secret").get()  # type: ignore[arg-type]
    assert isinstance(caught.value.outcome, kind) and caught.value.outcome.code == code
