"""App-only tokens for Microsoft Graph: MSAL's client-credentials flow and MSAL's own cache (MsalTokens), or the
Function's user-assigned identity's own token in managed-identity mode (ManagedIdentityTokens).

One ConfidentialClientApplication per credential (shared/credentials.py: a secret value, a certificate, the
federated assertion's source): MSAL binds the credential at construction, so a rotated secret or a renewed
certificate needs a new application object; its token cache starts empty, which is what we want after a rotation.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.outcomes import Failure, RelayFailure, Transient, classify_entra, parse_retry_after, permanent, transient

if TYPE_CHECKING:
    import msal
    import requests

    from shared.credentials import ClientCredential, MsalCredential

log = logging.getLogger(f"mailrelay.{__name__}")  # under the logger the worker's distro exports (shared/telemetry.py)

GRAPH_SCOPES: Final = ["https://graph.microsoft.com/.default"]


class TokenSource(Protocol):
    def token(self, *, fresh: bool = False) -> str:
        """An access token for Graph; `fresh` skips the cache (Graph said the cached one is no good)."""
        ...

    def renew_credential(self) -> None:
        """Re-read the stored credential, a secret or a certificate (Graph refused even a fresh token)."""
        ...


# MSAL's throttle cache. Every ConfidentialClientApplication wraps its HTTP client in a ThrottledHttpClient
# (msal/throttled_http_client.py and msal/individual_cache.py of
# github:AzureAD/microsoft-authentication-library-for-python: msal 1.39.0 as installed, and the same rules in
# its October 2024 source, 7db6c2c, within requirements.txt's msal>=1.31), which keeps some answers of a POST
# and answers the same POST from memory, without calling Entra, until they expire:
# - a 429, a 5xx, or any answer carrying Retry-After: for Retry-After's whole seconds (`int(value)`), capped at
#   3,600 (RetryAfterParser.parse); without Retry-After, or one that is not an integer (an HTTP date, "1.5"),
#   for `default_throttle_time`, which msal/application.py sets to 5 for a confidential client (60 for a
#   public one);
# - a 400 without Retry-After (OAuth's errors, RFC 6749 section 5.2), for 60 s: the "UI required cache",
#   keyed on the request's whole form, which a client-credentials request repeats exactly.
# The entry is stored as [int(time.time()) + seconds] and answers while int(time.time()) is below that
# (_ExpiringMapping._set and __getitem__): it stops answering at that whole second of the wall clock.
MSAL_CLIENT_THROTTLE_SECONDS: Final = 5
MSAL_MAX_THROTTLE_SECONDS: Final = 3600
MSAL_HTTP_400_SECONDS: Final = 60


def msal_throttle_seconds(reply: Any) -> int:
    """How long MSAL answers the same token request with `reply` from its cache, in seconds; 0: not kept.

    The rules of msal/throttled_http_client.py (see above), restated because MSAL does not say how long it
    keeps an answer; tests/unit/test_tokens.py holds them to the MSAL installed."""
    retry_after = _retry_after_header(reply)
    if reply.status_code == 429 or reply.status_code >= 500 or retry_after is not None:
        try:
            seconds = int(retry_after) if retry_after is not None else MSAL_CLIENT_THROTTLE_SECONDS
        except (TypeError, ValueError):
            seconds = MSAL_CLIENT_THROTTLE_SECONDS
        # A negative Retry-After gives an entry already expired: never answered from.
        return max(0, min(MSAL_MAX_THROTTLE_SECONDS, seconds))
    return MSAL_HTTP_400_SECONDS if reply.status_code == 400 else 0


@dataclass
class _Held:
    """An answer of the token endpoint that MSAL keeps in its throttle cache, and until when (wall clock)."""

    reply: requests.Response
    seconds: int  # msal_throttle_seconds(reply)
    received_at: float
    msal_until: float | None = None  # when MSAL stops answering with it; stamped by _RecordingClient.settle

    def wait(self, now: float) -> float:
        """Seconds before a try may reach Entra and be welcome: MSAL has stopped answering from its cache, and
        Entra's own Retry-After, counted from when Entra gave it, has passed."""
        ends = [self.msal_until if self.msal_until is not None else now]
        entra = _retry_after(self.reply)
        if entra is not None:
            ends.append(self.received_at + entra)
        return max(0.0, max(ends) - now)


class _RecordingClient:
    """The HTTP client MSAL talks to Entra through, keeping the last answer: MSAL raises on some answers
    (5xx, a body that is not JSON, a failed discovery) without saying what came back, and the relay's verdict,
    outage or configuration error, depends on it. It also sees what MSAL's throttle cache holds: MSAL calls it
    only on a cache miss, so a token request during which it made no call was answered from that cache, with
    the answer it last held. MsalTokens holds its lock around every use."""

    def __init__(self, session: requests.Session, wall_clock: Callable[[], float]):
        self._session = session
        self._wall_clock = wall_clock
        self.last: requests.Response | None = None
        self.calls = 0  # HTTP requests made since begin()
        self.held: _Held | None = None

    def begin(self) -> None:
        self.last = None
        self.calls = 0

    def settle(self) -> None:
        """After MSAL returned or raised: it has stored what it keeps, at int(time.time()) then or earlier, so
        counting from this second never ends the window before MSAL does (and matches it unless a second
        boundary passed while MSAL parsed the answer)."""
        if self.held is not None and self.held.msal_until is None:
            self.held.msal_until = math.floor(self._wall_clock()) + self.held.seconds

    @property
    def answered_from_cache(self) -> bool:
        """MSAL answered without a call to Entra, from what its throttle cache holds. (No call and nothing held
        is not taken for a cache answer: the failure is then unexplained, and the retry budget stays its bound.)"""
        return self.calls == 0 and self.held is not None

    @property
    def answer(self) -> requests.Response | None:
        """The answer the token request got: the last one received, or the one MSAL answered with from its cache."""
        if self.answered_from_cache:
            assert self.held is not None
            return self.held.reply
        return self.last

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        # MSAL keeps only a GET's 2xx (discovery documents, for a day): nothing that fails a token request.
        self.calls += 1
        self.last = self._session.get(url, **kwargs)
        return self.last

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        self.calls += 1
        # MSAL calls through only when it holds nothing live for this request: what it held has expired.
        self.held = None
        self.last = self._session.post(url, **kwargs)
        seconds = msal_throttle_seconds(self.last)
        if seconds:
            self.held = _Held(self.last, seconds, received_at=self._wall_clock())
        return self.last

    def close(self) -> None:
        """The session is shared with Graph: MSAL does not get to close it."""


def _retry_after_header(reply: Any) -> str | None:
    """The answer's Retry-After, whatever the header's case (a fake's plain dict too)."""
    headers = {str(k).lower(): v for k, v in (getattr(reply, "headers", None) or {}).items()}
    value = headers.get("retry-after")
    return None if value is None else str(value)


def _retry_after(reply: requests.Response) -> float | None:
    return parse_retry_after(_retry_after_header(reply))


def _throttled_or_failed(reply: requests.Response | None) -> bool:
    return reply is not None and (reply.status_code in (408, 429) or reply.status_code >= 500)


def classify_token_reply(reply: requests.Response | None, raised: str) -> Failure:
    """What an answer of Entra's discovery or token endpoint that MSAL could not use means.

    No answer known, a 408, a 429 or a 5xx: Entra is unavailable or throttling, to retry after its
    Retry-After. An OAuth error body otherwise: Entra's own verdict (classify_entra). Any other answer from a
    host that does answer: not Entra's way of answering, so a configuration error, most likely
    GRAPH_AUTHORITY_HOST. MsalTokens adds what MSAL's throttle cache changes (MsalTokens._failure).
    """
    import json

    body: Any = None
    if reply is not None:
        try:
            body = json.loads(reply.text)
        except ValueError:
            body = None
    oauth = body if isinstance(body, dict) and isinstance(body.get("error"), str) else None
    if reply is None or _throttled_or_failed(reply):
        status = f"HTTP {reply.status_code}" if reply is not None else "no answer MSAL passed on"
        detail = f": {classify_entra(oauth).message}" if oauth else ""
        retry_after = _retry_after(reply) if reply is not None else None
        return transient("EntraUnavailable", f"Entra ID's token endpoint answered {status}{detail}", retry_after)
    if oauth:
        return classify_entra(oauth)
    return permanent(
        "EntraUnexpectedReply",
        f"Entra ID's endpoint answered HTTP {reply.status_code} with no OAuth error ({raised} in MSAL)",
    )


class MsalTokens:
    def __init__(
        self,
        credential: ClientCredential,
        *,
        tenant_id: str,
        client_id: str,
        authority_host: str,
        http_client: requests.Session,
        wall_clock: Callable[[], float] = time.time,  # MSAL's throttle cache runs on time.time(); tests move both
    ):
        self._credential = credential
        self._authority = f"{authority_host.rstrip('/')}/{tenant_id}"
        self._client_id = client_id
        self._wall_clock = wall_clock
        self._http = _RecordingClient(http_client, wall_clock)
        self._app: msal.ConfidentialClientApplication | None = None
        self._app_key: str | None = None  # MsalCredential.key of the credential the application was built with
        self._lock = threading.Lock()

    def _application(self, credential: MsalCredential) -> msal.ConfidentialClientApplication:
        if self._app is None or self._app_key != credential.key:
            import msal

            # Building the application reads the tenant's OpenID configuration from Entra (a network call):
            # its failures are classified with the token request's, in _acquire.
            self._app = msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=credential.value,
                authority=self._authority,
                http_client=self._http,
                timeout=15,
                # Instance discovery asks login.microsoftonline.com about the authority; the authority
                # is configured explicitly, so the extra round trip buys nothing (and fails offline).
                instance_discovery=False,
            )
            self._app_key = credential.key
            self._http.held = None  # a new application has a new, empty throttle cache
        return self._app

    def _acquire(self, credential: MsalCredential, fresh: bool) -> dict[str, Any]:
        """MSAL's result for a token request: a token, or Entra's OAuth error (a dict). What MSAL raises
        instead is turned into a classified RelayFailure here, so nothing escapes to the host's blind retry."""
        import msal
        import requests

        self._http.begin()
        try:
            try:
                app = self._application(credential)
                if fresh:
                    app.remove_tokens_for_client()
                return app.acquire_token_for_client(GRAPH_SCOPES)  # type: ignore[no-any-return]
            finally:
                self._http.settle()
        except requests.RequestException as e:  # refused, timed out, cut off: nothing or half an answer came
            raise self._failure(transient("EntraUnavailable", f"Entra ID unreachable: {type(e).__name__}")) from None
        except (msal.exceptions.MsalServiceError, ValueError, RuntimeError) as e:
            # MSAL raises, instead of returning an error result, when an answer is no OAuth reply: a 5xx
            # (MsalServiceError), a body that is not JSON, a failed discovery (ValueError, RuntimeError).
            # The answer itself says which: see classify_token_reply.
            raise self._failure(classify_token_reply(self._http.answer, type(e).__name__)) from None

    def _failure(self, failure: Failure) -> RelayFailure:
        """`failure` as MSAL's throttle cache shapes what follows it. A retry must not come back while MSAL
        would answer it from the cache (it would fail without reaching Entra): its Retry-After covers the
        window MSAL holds the answer for. And an answer MSAL gave from its cache, without calling Entra, is
        no try of the request's: it is `throttled`, so the try is given back (shared/delivery.py).
        A permanent verdict stays: it is the one Entra gave, moments ago, to the same request."""
        if not isinstance(failure, Transient):
            return RelayFailure(failure)
        held, now = self._http.held, self._wall_clock()
        if self._http.answered_from_cache:
            assert held is not None
            # Not failure.retry_after: that is the held answer's Retry-After read again, counted from now.
            message = f"{failure.message} (MSAL's throttle cache; Entra ID was not called)"
            return RelayFailure(replace(failure, message=message, retry_after=held.wait(now) or None, throttled=True))
        window = held.wait(now) if held is not None else 0.0
        return RelayFailure(replace(failure, retry_after=max(failure.retry_after or 0.0, window) or None))

    def token(self, *, fresh: bool = False) -> str:
        with self._lock:
            if fresh:
                self._credential.skip_cache()
            credential = self._credential.get()
            result = self._acquire(credential, fresh)
            if "access_token" not in result and _throttled_or_failed(self._http.answer):
                # An OAuth error body on a 429 or 5xx (MSAL returns those below 500): Entra is throttling or
                # failing, whatever its error code says.
                raise self._failure(classify_token_reply(self._http.answer, "error"))
            if set(result.get("error_codes") or []) & self._credential.reread_on:
                mode = self._credential.mode
                log.warning(
                    "Entra ID rejected the client %s; re-reading Key Vault",
                    mode,
                    extra={"event": f"{mode}.rejected", "errorCodes": result.get("error_codes")},
                )
                renewed = self._credential.refresh()
                if renewed.key != credential.key:
                    result = self._acquire(renewed, fresh)
            if "access_token" in result:
                return str(result["access_token"])
            raise self._failure(classify_entra(result))

    def renew_credential(self) -> None:
        with self._lock:
            self._credential.refresh()
            self._app = None


class ManagedIdentityTokens:
    """GRAPH_CREDENTIAL=managed-identity: the Function's user-assigned identity is the Graph caller. Its tokens come
    from the identity endpoint through azure-identity, which caches them (for hours: a permission change reaches
    the relay only with a new token). Graph's roles are those assigned to the identity's service principal, and
    Exchange's RBAC for Applications points at that principal (docs/credentials.md)."""

    def __init__(self, identity: Any):
        self._identity = identity  # a RelayCredential over the user-assigned identity, without the CLI fallback

    def token(self, *, fresh: bool = False) -> str:
        from shared.secrets import identity_failure

        # `claims` makes azure-identity skip its cache (MSAL's ManagedIdentityClient, claims_challenge), as
        # MsalTokens' `fresh` does: Graph refused the cached token.
        kwargs = {"claims": "{}"} if fresh else {}
        try:
            return str(self._identity.get_token(*GRAPH_SCOPES, **kwargs).token)
        except Exception as e:
            failure = identity_failure(e, "the managed identity's Graph token")
            if failure is None:
                raise
            raise failure from None

    def renew_credential(self) -> None:
        """Nothing is stored: the next `token(fresh=True)` asks the identity endpoint again."""
