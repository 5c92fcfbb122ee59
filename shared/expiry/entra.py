"""The app registration's credentials in Entra ID compared with Key Vault: its passwordCredentials with the client
secret's dates, its keyCredentials with the certificate's (GRAPH_CREDENTIAL=certificate)."""

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


def compare_certificate_with_entra(
    certificate: SecretInfo, credentials: Sequence[EntraCredential], thumbprint: str | None
) -> list[Finding]:
    """Warn when the Key Vault certificate is not among the app registration's keyCredentials: Key Vault renewed
    it and nobody gave Entra the new public key, so Entra refuses its assertions (AADSTS700027) as soon as the
    relay uses it. Matched by thumbprint when the relay knows the current version's (it has read it), else by the
    end date: a keyCredential's endDateTime is the certificate's own not-after, as Key Vault's exp is."""
    if certificate.version is None or (certificate.expires_on is None and thumbprint is None):
        return []  # not-found and no-exp already say what to do
    if thumbprint is not None:
        registered = any(c.thumbprint == thumbprint for c in credentials)
        which = f"thumbprint {thumbprint}"
    else:
        assert certificate.expires_on is not None
        exp = certificate.expires_on
        registered = any(c.end is not None and abs(c.end - exp) <= ENTRA_TOLERANCE for c in credentials)
        which = f"ending {day(exp)}"
    if registered:
        return []
    held = (
        ", ".join(
            f"{_label(c)}{f' thumbprint {c.thumbprint}' if c.thumbprint else ''} ends {day(c.end) if c.end else '?'}"
            for c in credentials
        )
        or "no certificate"
    )
    return [
        Finding(
            "warning",
            "entra-certificate-unregistered",
            f"Key Vault certificate '{certificate.name}' (version {certificate.version}, {which}) is not among the "
            f"app registration's certificates (Entra: {held}): Key Vault renewed it and Entra ID was not told, so "
            "Entra refuses it (AADSTS700027) once the relay uses it; upload its public key to the app registration "
            "(infra/scripts/sync-app-certificate.sh; infra/README.md, `certificate`)",
            key="entra-certificate-unregistered",
        )
    ]


def thumbprint_of(custom_key_identifier: Any) -> str | None:
    """A keyCredential's customKeyIdentifier as a hex thumbprint. Graph types it Binary (base64 in JSON) and fills
    it with the certificate's thumbprint when the upload gave none (keyCredential resource type,
    https://learn.microsoft.com/graph/api/resources/keycredential): the 20 bytes of the SHA-1 digest, or (assumed:
    uploads through older tools) the 40 hex characters of it. Anything else is a custom identifier: None."""
    import base64
    import binascii
    import re

    if not isinstance(custom_key_identifier, str) or not custom_key_identifier:
        return None
    try:
        raw = base64.b64decode(custom_key_identifier, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) == 20:
        return raw.hex().upper()
    text = raw.decode("ascii", "replace")
    return text.upper() if re.fullmatch(r"[0-9A-Fa-f]{40}", text) else None


# --- The check ------------------------------------------------------------------------------------


class GraphApplicationCredentials:
    """GET /v1.0/applications(appId='...')?$select=passwordCredentials,keyCredentials with the relay's own token
    (application resource type, https://learn.microsoft.com/graph/api/resources/application: both are returned only
    when selected). A run asks for the one list its mode compares.

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
        self._url = (
            f"{base_url.rstrip('/')}/v1.0/applications(appId='{client_id}')?$select=passwordCredentials,keyCredentials"
        )
        self._tokens = tokens
        self._timeout = timeout

    def password_credentials(self) -> list[EntraCredential]:
        return self._credentials("passwordCredentials")

    def key_credentials(self) -> list[EntraCredential]:
        return self._credentials("keyCredentials")

    def _credentials(self, which: str) -> list[EntraCredential]:
        import requests

        from shared.outcomes import RelayFailure

        try:
            token = self._tokens.token()
            response = self._session.get(self._url, headers={"Authorization": f"Bearer {token}"}, timeout=self._timeout)
        except RelayFailure as e:
            raise ExpiryReadError(f"no Graph token ({e.outcome.code})", e.outcome.code) from None
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
            items = response.json().get(which) or []
            return [
                EntraCredential(
                    key_id=str(item.get("keyId")),
                    display_name=item.get("displayName"),
                    end=parse_graph_datetime(item.get("endDateTime")),
                    thumbprint=thumbprint_of(item.get("customKeyIdentifier")) if which == "keyCredentials" else None,
                )
                for item in items
            ]
        except (ValueError, AttributeError, TypeError):
            raise ExpiryReadError(f"Graph answered with an unexpected {which} shape") from None


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
