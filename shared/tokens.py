"""App-only tokens for Microsoft Graph, from MSAL's client-credentials flow and MSAL's own cache.

One ConfidentialClientApplication per secret value: MSAL binds the credential at construction, so a
rotated secret needs a new application object; its token cache starts empty, which is what we want
after a rotation.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.outcomes import RelayFailure, classify_entra, transient

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
        self._http = http_client
        self._app: msal.ConfidentialClientApplication | None = None
        self._app_secret: str | None = None
        self._lock = threading.Lock()

    def _application(self, secret: str) -> msal.ConfidentialClientApplication:
        if self._app is None or self._app_secret != secret:
            import msal

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
        import requests

        app = self._application(secret)
        if fresh:
            app.remove_tokens_for_client()
        import msal

        try:
            return app.acquire_token_for_client(GRAPH_SCOPES)  # type: ignore[no-any-return]
        except (requests.ConnectionError, requests.Timeout) as e:
            raise RelayFailure(transient("EntraUnavailable", f"Entra ID unreachable: {type(e).__name__}")) from None
        except msal.exceptions.MsalServiceError as e:
            # MSAL raises (rather than returning an error result) when the token endpoint answers 5xx with
            # no OAuth error body: an outage of Entra ID, to retry, never a verdict on the app.
            message = f"Entra ID's token endpoint failed: {str(e).splitlines()[0][:300]}"
            raise RelayFailure(transient("EntraUnavailable", message)) from None

    def token(self, *, fresh: bool = False) -> str:
        with self._lock:
            secret = self._secret.get()
            result = self._acquire(secret, fresh)
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
