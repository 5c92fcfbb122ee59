"""App-only tokens for Microsoft Graph, from MSAL's client-credentials flow and MSAL's own cache.

One ConfidentialClientApplication per secret value: MSAL binds the credential at construction, so a
rotated secret needs a new application object; its token cache starts empty, which is what we want
after a rotation.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.outcomes import Failure, RelayFailure, classify_entra, permanent, transient

if TYPE_CHECKING:
    import msal
    import requests

    from shared.secrets import SecretSource

log = logging.getLogger(__name__)

GRAPH_SCOPES: Final = ["https://graph.microsoft.com/.default"]
# Entra's "the client secret is wrong" and "the client secret has expired": worth one re-read of
# Key Vault, where a rotated secret may be waiting.
REREAD_SECRET_ON: Final = frozenset({7000215, 7000222})


class TokenSource(Protocol):
    def token(self, *, fresh: bool = False) -> str:
        """An access token for Graph; `fresh` skips the cache (Graph said the cached one is no good)."""
        ...

    def renew_secret(self) -> None:
        """Re-read the client secret (Graph refused even a fresh token)."""
        ...


class _RecordingClient:
    """The HTTP client MSAL talks to Entra through, keeping the last answer: MSAL raises on some answers
    (5xx, a body that is not JSON, a failed discovery) without saying what came back, and the relay's verdict,
    outage or configuration error, depends on it. MsalTokens holds its lock around every use."""

    def __init__(self, session: requests.Session):
        self._session = session
        self.last: requests.Response | None = None

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        self.last = self._session.get(url, **kwargs)
        return self.last

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        self.last = self._session.post(url, **kwargs)
        return self.last

    def close(self) -> None:
        """The session is shared with Graph: MSAL does not get to close it."""


def _throttled_or_failed(reply: requests.Response | None) -> bool:
    return reply is not None and (reply.status_code in (408, 429) or reply.status_code >= 500)


def classify_token_reply(reply: requests.Response | None, raised: str) -> Failure:
    """What an answer of Entra's discovery or token endpoint that MSAL could not use means.

    No answer recorded (MSAL answered from its own throttling cache, which holds only 429s and 5xx), a 408, a
    429 or a 5xx: Entra is unavailable or throttling, to retry. An OAuth error body otherwise: Entra's own
    verdict (classify_entra). Any other answer from a host that does answer: not Entra's way of answering,
    so a configuration error, most likely GRAPH_AUTHORITY_HOST.
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
        status = f"HTTP {reply.status_code}" if reply is not None else "no new answer (MSAL's throttling cache)"
        detail = f": {classify_entra(oauth).message}" if oauth else ""
        return transient("EntraUnavailable", f"Entra ID's token endpoint answered {status}{detail}")
    if oauth:
        return classify_entra(oauth)
    return permanent(
        "EntraUnexpectedReply",
        f"Entra ID's endpoint answered HTTP {reply.status_code} with no OAuth error ({raised} in MSAL)",
    )


class MsalTokens:
    def __init__(
        self,
        secret: SecretSource,
        *,
        tenant_id: str,
        client_id: str,
        authority_host: str,
        http_client: requests.Session,
    ):
        self._secret = secret
        self._authority = f"{authority_host.rstrip('/')}/{tenant_id}"
        self._client_id = client_id
        self._http = _RecordingClient(http_client)
        self._app: msal.ConfidentialClientApplication | None = None
        self._app_secret: str | None = None
        self._lock = threading.Lock()

    def _application(self, secret: str) -> msal.ConfidentialClientApplication:
        if self._app is None or self._app_secret != secret:
            import msal

            # Building the application reads the tenant's OpenID configuration from Entra (a network call):
            # its failures are classified with the token request's, in _acquire.
            self._app = msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=secret,
                authority=self._authority,
                http_client=self._http,
                timeout=15,
                # Instance discovery asks login.microsoftonline.com about the authority; the authority
                # is configured explicitly, so the extra round trip buys nothing (and fails offline).
                instance_discovery=False,
            )
            self._app_secret = secret
        return self._app

    def _acquire(self, secret: str, fresh: bool) -> dict[str, Any]:
        """MSAL's result for a token request: a token, or Entra's OAuth error (a dict). What MSAL raises
        instead is turned into a classified RelayFailure here, so nothing escapes to the host's blind retry."""
        import msal
        import requests

        self._http.last = None
        try:
            app = self._application(secret)
            if fresh:
                app.remove_tokens_for_client()
            return app.acquire_token_for_client(GRAPH_SCOPES)  # type: ignore[no-any-return]
        except requests.RequestException as e:  # refused, timed out, cut off: nothing or half an answer came
            raise RelayFailure(transient("EntraUnavailable", f"Entra ID unreachable: {type(e).__name__}")) from None
        except (msal.exceptions.MsalServiceError, ValueError, RuntimeError) as e:
            # MSAL raises, instead of returning an error result, when an answer is no OAuth reply: a 5xx
            # (MsalServiceError), a body that is not JSON, a failed discovery (ValueError, RuntimeError).
            # The answer itself says which: see classify_token_reply.
            raise RelayFailure(classify_token_reply(self._http.last, type(e).__name__)) from None

    def token(self, *, fresh: bool = False) -> str:
        with self._lock:
            secret = self._secret.get()
            result = self._acquire(secret, fresh)
            if "access_token" not in result and _throttled_or_failed(self._http.last):
                # An OAuth error body on a 429 or 5xx (MSAL returns those below 500): Entra is throttling or
                # failing, whatever its error code says.
                raise RelayFailure(classify_token_reply(self._http.last, "error"))
            if set(result.get("error_codes") or []) & REREAD_SECRET_ON:
                codes = result.get("error_codes")
                log.warning(
                    "Entra ID rejected the client secret; re-reading Key Vault",
                    extra={"event": "secret.rejected", "errorCodes": codes},
                )
                renewed = self._secret.refresh()
                if renewed != secret:
                    result = self._acquire(renewed, fresh)
            if "access_token" in result:
                return str(result["access_token"])
            raise RelayFailure(classify_entra(result))

    def renew_secret(self) -> None:
        with self._lock:
            self._secret.refresh()
            self._app = None
