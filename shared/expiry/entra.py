"""The app registration's passwordCredentials in Entra ID, compared with the Key Vault secret's dates."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.expiry.model import ENTRA_TOLERANCE, EntraCredential, ExpiryReadError, Finding, SecretInfo, day

if TYPE_CHECKING:
    import requests

    from shared.tokens import TokenSource

def compare_with_entra(secret: SecretInfo, credentials: Sequence[EntraCredential], now: datetime) -> list[Finding]:
    """Warn when Key Vault's exp does not match any Entra end date, or Entra holds a credential ending sooner."""
    if secret.expires_on is None or secret.version is None:
        return []  # the no-exp warning already says what to do
    exp = secret.expires_on
    dated = [c for c in credentials if c.end is not None]
    findings: list[Finding] = []
    nearest = min(dated, key=lambda c: abs(_end(c) - exp), default=None)
    if nearest is None or abs(_end(nearest) - exp) > ENTRA_TOLERANCE:
        ends = ", ".join(f"{_label(c)} ends {day(_end(c))}" for c in dated) or "no password credential"
        findings.append(
            Finding(
                "warning",
                "entra-mismatch",
                f"Key Vault's exp for '{secret.name}' ({day(exp)}) matches no client secret of the app "
                f"registration within a day (Entra: {ends}); set exp to the end date of the secret stored "
                "in Key Vault, or the warnings come at the wrong time",
                key="entra-mismatch",
            )
        )
    for c in dated:
        if c is nearest or not now < _end(c) < exp - ENTRA_TOLERANCE:
            continue
        findings.append(
            Finding(
                "warning",
                "entra-sooner",
                f"The app registration holds client secret {_label(c)} ending {day(_end(c))}, before Key "
                f"Vault's exp for '{secret.name}' ({day(exp)}); if the relay uses it, sends fail from then "
                "on; if it is an old secret, delete it",
                key=f"entra-sooner-{c.key_id}",
            )
        )
    return findings


# --- The check ------------------------------------------------------------------------------------


class GraphApplicationCredentials:
    """GET /v1.0/applications(appId='...')?$select=passwordCredentials with the relay's own token.

    Needs the application permission Application.Read.All (admin consent); EXPIRY_COMPARE_ENTRA turns
    this on. The relay's token is the one the expiring secret buys, so this fails once it has expired.
    """

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        client_id: str,
        tokens: TokenSource,
        timeout: tuple[float, float] = (5.0, 15.0),
    ):
        self._session = session
        self._url = f"{base_url.rstrip('/')}/v1.0/applications(appId='{client_id}')?$select=passwordCredentials"
        self._tokens = tokens
        self._timeout = timeout

    def password_credentials(self) -> list[EntraCredential]:
        import requests

        from shared.outcomes import RelayFailure

        try:
            token = self._tokens.token()
            response = self._session.get(self._url, headers={"Authorization": f"Bearer {token}"}, timeout=self._timeout)
        except RelayFailure as e:
            raise ExpiryReadError(f"no Graph token ({e.outcome.code})") from None
        except requests.RequestException as e:
            raise ExpiryReadError(f"Graph unreachable ({type(e).__name__})") from None
        if response.status_code == 403:
            raise ExpiryReadError(
                "Graph answered 403 Authorization_RequestDenied: grant the app the application permission "
                "Application.Read.All with admin consent, or set EXPIRY_COMPARE_ENTRA=false"
            )
        if response.status_code != 200:
            code = _graph_code(response)
            raise ExpiryReadError(f"Graph answered HTTP {response.status_code}{f' {code}' if code else ''}")
        try:
            items = response.json().get("passwordCredentials") or []
            return [
                EntraCredential(
                    key_id=str(item.get("keyId")),
                    display_name=item.get("displayName"),
                    end=parse_graph_datetime(item.get("endDateTime")),
                )
                for item in items
            ]
        except (ValueError, AttributeError, TypeError):
            raise ExpiryReadError("Graph answered with an unexpected passwordCredentials shape") from None


def parse_graph_datetime(value: Any) -> datetime | None:
    """Graph's DateTimeOffset: '2026-05-01T10:00:00Z', with up to 7 fractional digits."""
    if not value:
        return None
    text = str(value)
    if "." in text:  # Python takes 6 fractional digits at most before 3.12
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _end(c: EntraCredential) -> datetime:
    assert c.end is not None
    return c.end


def _label(c: EntraCredential) -> str:
    return f"'{c.display_name}' ({c.key_id})" if c.display_name else f"{c.key_id}"


def _graph_code(response: requests.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None
