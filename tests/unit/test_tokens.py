"""shared.tokens through the real MSAL, with a fake HTTP client answering for Entra ID: what each answer of
the token endpoint becomes (a token, an outage to retry, or a configuration error to dead-letter)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from shared.credentials import SecretCredential
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


def tokens(
    *replies: Reply | Exception, discovery_reply: Reply | Exception | None = None, wall: WallClock | None = None
) -> MsalTokens:
    entra = FakeEntra(list(replies)) if discovery_reply is None else FakeEntra(list(replies), discovery_reply)
    return MsalTokens(
        SecretCredential(FakeSecret("s3cret")),
        tenant_id=TENANT,
        client_id=CLIENT,
        authority_host=AUTHORITY,
        http_client=entra,  # type: ignore[arg-type]
        **({"wall_clock": wall} if wall else {}),
    )


def entra_of(source: MsalTokens) -> FakeEntra:
    entra = source._http._session
    assert isinstance(entra, FakeEntra)
    return entra


@dataclass
class WallClock:
    """The wall clock, for MsalTokens and for MSAL's throttle cache (which reads time.time()); tests move it."""

    now: float

    def time(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=[1_000_000.0, 1_000_000.75], ids=["on a second", "late in a second"])
def wall(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> WallClock:
    # MSAL's cache stamps entries with int(time.time()): where in its second an answer comes matters.
    import msal.individual_cache

    clock = WallClock(request.param)
    monkeypatch.setattr(msal.individual_cache, "time", clock)
    return clock


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


# --- MSAL's throttle cache (msal/throttled_http_client.py) -------------------------------------------------

TOKEN = Reply(200, json.dumps({"access_token": "t-2", "expires_in": 3600}))


def outcome_of(source: MsalTokens) -> Transient:
    outcome = failure_of(source).outcome
    assert isinstance(outcome, Transient), outcome
    return outcome


@pytest.mark.parametrize(
    ("reply", "msal_keeps"),
    [
        (Reply(503, "Service Unavailable"), 5),  # no Retry-After: MSAL's default for a confidential client
        (Reply(503, "down", {"Retry-After": "7"}), 7),
        (Reply(429, "slow down", {"retry-after": "2"}), 2),
        (Reply(500, "oops", {"Retry-After": "1.5"}), 5),  # not an integer: MSAL falls back on its default
        (Reply(503, "down", {"Retry-After": "7200"}), 3600),  # MSAL keeps an hour at most; Entra asked for two
        (oauth_error(400, "invalid_request", 90033, "a transient error"), 60),  # MSAL keeps a 400 for 60 s
    ],
    ids=["503", "503 Retry-After 7", "429 retry-after 2", "500 Retry-After 1.5", "Retry-After 2 h", "400 transient"],
)
def test_a_retry_comes_no_sooner_than_msal_calls_entra_again(wall: WallClock, reply: Reply, msal_keeps: int) -> None:
    source = tokens(reply, TOKEN, wall=wall)
    first = outcome_of(source)
    # Entra's own answer: the try was made and counts; its retry waits out MSAL's window and Entra's Retry-After.
    assert not first.throttled
    msal_stops_at = int(wall.now) + msal_keeps
    asked = float(reply.headers.get("Retry-After") or reply.headers.get("retry-after") or 0)
    assert first.retry_after == pytest.approx(max(msal_stops_at - wall.now, asked))

    wall.now = msal_stops_at - 0.01  # the last moment MSAL still answers from its cache
    again = outcome_of(source)
    assert entra_of(source).posts == 1  # MSAL answered: Entra was not called
    assert again.throttled and "Entra ID was not called" in again.message  # the try is given back
    assert again.code == "EntraUnavailable"
    assert again.retry_after is not None and wall.now + again.retry_after >= msal_stops_at

    wall.now += again.retry_after  # the retry, when the relay schedules it, reaches Entra
    assert source.token() == "t-2" and entra_of(source).posts == 2


def test_the_retry_after_a_real_failure_reaches_entra(wall: WallClock) -> None:
    # Without the window, the relay's retry (SEND_RETRY_BASE_SECONDS, jittered) would come back while MSAL still
    # answers the 503 from its cache: the whole retry budget spent in seconds on calls Entra never saw.
    source = tokens(Reply(503, "Service Unavailable"), Reply(503, "Service Unavailable"), TOKEN, wall=wall)
    first = outcome_of(source)
    assert first.retry_after is not None
    wall.now += first.retry_after
    second = outcome_of(source)
    assert entra_of(source).posts == 2 and not second.throttled
    assert second.retry_after is not None
    wall.now += second.retry_after
    assert source.token() == "t-2" and entra_of(source).posts == 3


def test_a_429_with_an_oauth_error_answered_from_msals_cache_is_still_throttling(wall: WallClock) -> None:
    # The relay reads a 429's OAuth error as throttling, whatever its code: so must it when MSAL repeats it.
    source = tokens(oauth_error(429, "invalid_request", 9002313, "too many"), TOKEN, wall=wall)
    assert not outcome_of(source).throttled
    cached = outcome_of(source)
    assert entra_of(source).posts == 1 and cached.throttled and cached.code == "EntraUnavailable"


def test_a_configuration_error_msal_repeats_from_its_cache_stays_permanent(wall: WallClock) -> None:
    # MSAL keeps a 400 for 60 s and repeats it: Entra's verdict, given moments ago, to the same request.
    source = tokens(oauth_error(400, "invalid_request", 9002313, "Request is malformed"), TOKEN, wall=wall)
    for posts in (1, 1):
        outcome = failure_of(source).outcome
        assert isinstance(outcome, Permanent) and outcome.code == "AADSTS9002313"
        assert entra_of(source).posts == posts


@pytest.mark.parametrize(
    "reply",
    [requests.exceptions.ConnectionError("refused"), Reply(408, "<html>Request Timeout</html>")],
    ids=["refused", "408"],
)
def test_a_failure_msal_does_not_keep_is_tried_again_at_once(wall: WallClock, reply: Reply | Exception) -> None:
    # Nothing in MSAL's cache: the relay's own backoff decides, and the next try reaches Entra.
    source = tokens(reply, TOKEN, wall=wall)
    first = outcome_of(source)
    assert first.retry_after is None and not first.throttled
    assert source.token() == "t-2" and entra_of(source).posts == 2


def test_a_rotated_secret_starts_with_an_empty_throttle_cache(wall: WallClock) -> None:
    # A new secret is a new MSAL application, with its own cache: its first token request reaches Entra.
    secret = FakeSecret("s3cret")
    entra = FakeEntra([Reply(503, "Service Unavailable"), TOKEN])
    source = MsalTokens(
        SecretCredential(secret),
        tenant_id=TENANT,
        client_id=CLIENT,
        authority_host=AUTHORITY,
        http_client=entra,  # type: ignore[arg-type]
        wall_clock=wall,
    )
    assert not outcome_of(source).throttled
    secret.value = "rotated"
    source.renew_credential()
    assert source.token() == "t-2" and entra.posts == 2
