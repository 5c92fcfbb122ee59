"""shared.tokens through the real MSAL, with a fake HTTP client answering for Entra ID: what each answer of
the token endpoint becomes (a token, an outage to retry, or a configuration error to dead-letter)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from shared.outcomes import Permanent, RelayFailure, Transient
from shared.tokens import MsalTokens
from tests.fakes import FakeSecret

AUTHORITY = "https://login.entra.test"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0d1f4a5c-2b3e-4c6d-8e9f-a0b1c2d3e4f5"


@dataclass
class Reply:
    status_code: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise requests.HTTPError(f"{self.status_code} error")


def discovery() -> Reply:
    base = f"{AUTHORITY}/{TENANT}"
    endpoints = {
        "token_endpoint": f"{base}/oauth2/v2.0/token",
        "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
        "issuer": f"{base}/v2.0",
    }
    return Reply(200, json.dumps(endpoints))


@dataclass
class FakeEntra:
    """Answers MSAL's discovery GET (with `discovery_reply`) and each token POST from `token_replies` in order."""

    token_replies: list[Reply | Exception]
    discovery_reply: Reply | Exception = field(default_factory=discovery)
    posts: int = 0

    def get(self, url: str, **_: Any) -> Reply:
        if isinstance(self.discovery_reply, Exception):
            raise self.discovery_reply
        return self.discovery_reply

    def post(self, url: str, **_: Any) -> Reply:
        self.posts += 1
        reply = self.token_replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self) -> None:
        pass


def tokens(*replies: Reply | Exception, discovery_reply: Reply | Exception | None = None) -> MsalTokens:
    entra = FakeEntra(list(replies)) if discovery_reply is None else FakeEntra(list(replies), discovery_reply)
    return MsalTokens(
        FakeSecret("s3cret"),
        tenant_id=TENANT,
        client_id=CLIENT,
        authority_host=AUTHORITY,
        http_client=entra,  # type: ignore[arg-type]
    )


def oauth_error(status: int, error: str, code: int, text: str) -> Reply:
    body = {"error": error, "error_codes": [code], "error_description": f"AADSTS{code}: {text}\r\nTrace ID: t"}
    return Reply(status, json.dumps(body))


def failure_of(source: MsalTokens) -> RelayFailure:
    with pytest.raises(RelayFailure) as caught:
        source.token()
    return caught.value


def test_a_token_is_returned() -> None:
    assert tokens(Reply(200, json.dumps({"access_token": "t-1", "expires_in": 3600}))).token() == "t-1"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(429, "<html><body>Too Many Requests</body></html>", {"Retry-After": "7"}),
        Reply(408, "<html>Request Timeout</html>"),
        Reply(503, "Service Unavailable"),
        oauth_error(429, "invalid_request", 90055, "too many requests"),  # throttled: whatever the code says
        requests.exceptions.ChunkedEncodingError("the answer was cut off"),
        requests.exceptions.ConnectionError("refused"),
    ],
    ids=["429 html", "408 html", "503 text", "429 oauth", "cut off", "refused"],
)
def test_an_unavailable_or_throttling_token_endpoint_is_an_outage_of_entra_to_retry(reply: Reply | Exception) -> None:
    failure = failure_of(tokens(reply))
    assert isinstance(failure.outcome, Transient) and failure.outcome.code == "EntraUnavailable"
    assert "Entra ID" in failure.outcome.hint
    assert "<html>" not in failure.outcome.message  # a gateway's page is no reason to keep


@pytest.mark.parametrize(
    "reply",
    [Reply(503, "<html>down</html>"), requests.exceptions.ConnectionError("refused"), Reply(429, "slow down")],
    ids=["503", "refused", "429"],
)
def test_an_outage_of_entras_discovery_endpoint_is_an_outage_of_entra_to_retry(reply: Reply | Exception) -> None:
    # MSAL reads the tenant's OpenID configuration when the relay builds its application, before any token.
    source = tokens(Reply(200, json.dumps({"access_token": "t-1", "expires_in": 3600})), discovery_reply=reply)
    failure = failure_of(source)
    assert isinstance(failure.outcome, Transient) and failure.outcome.code == "EntraUnavailable"


def test_a_tenant_entra_does_not_know_is_a_configuration_error() -> None:
    unknown = oauth_error(400, "invalid_tenant", 90002, "Tenant 'x' not found.")
    failure = failure_of(tokens(discovery_reply=unknown))
    assert isinstance(failure.outcome, Permanent) and failure.outcome.code == "AADSTS90002"
    assert "GRAPH_TENANT_ID" in failure.outcome.hint


@pytest.mark.parametrize(
    ("token_reply", "discovery_reply"),
    [(Reply(404, "<html>Not Found</html>"), None), (None, Reply(200, "<html>Welcome</html>"))],
    ids=["token endpoint", "discovery"],
)
def test_an_answer_with_no_oauth_error_from_a_reachable_host_is_a_configuration_error(
    token_reply: Reply | None, discovery_reply: Reply | None
) -> None:
    # GRAPH_AUTHORITY_HOST naming a web server that is not Entra (or a proxy answering in its place).
    failure = failure_of(tokens(*[r for r in [token_reply] if r], discovery_reply=discovery_reply))
    assert isinstance(failure.outcome, Permanent) and failure.outcome.code == "EntraUnexpectedReply"
    assert "GRAPH_AUTHORITY_HOST" in failure.outcome.hint and "<html>" not in failure.outcome.message


@pytest.mark.parametrize(
    ("code", "error"),
    [(90033, "invalid_request"), (90024, "invalid_request"), (90006, "invalid_request"), (50033, "invalid_grant")],
)
def test_documented_transient_aadsts_codes_are_retried_whatever_the_oauth_error(code: int, error: str) -> None:
    failure = failure_of(tokens(oauth_error(400, error, code, "a transient error")))
    assert isinstance(failure.outcome, Transient) and failure.outcome.code == "EntraUnavailable"
    assert f"AADSTS{code}" in failure.outcome.message


@pytest.mark.parametrize(("code", "error"), [(7000215, "invalid_client"), (700016, "unauthorized_client")])
def test_configuration_errors_stay_permanent(code: int, error: str) -> None:
    # 7000215 makes the relay re-read Key Vault once (a rotated secret); the same secret comes back.
    failure = failure_of(tokens(*[oauth_error(401, error, code, "config")] * 2))
    assert isinstance(failure.outcome, Permanent) and failure.outcome.code == f"AADSTS{code}"


def test_an_unknown_aadsts_code_points_at_entras_error_lookup_not_graph() -> None:
    failure = failure_of(tokens(oauth_error(400, "invalid_request", 9002313, "Request is malformed")))
    assert isinstance(failure.outcome, Permanent) and failure.outcome.code == "AADSTS9002313"
    assert "login.microsoftonline.com/error?code=9002313" in failure.outcome.hint
    assert "Graph" not in failure.outcome.hint
