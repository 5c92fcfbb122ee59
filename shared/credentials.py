"""How the relay proves itself to Entra ID: GRAPH_CREDENTIAL's four modes, each built from a GraphRegistration.

- `secret`: the app registration's client secret, read from Key Vault (shared/secrets.py) and cached.
- `certificate`: a Key Vault certificate. Its private key is read through the secrets API, as Key Vault documents
  for a certificate's addressable secret ("About Azure Key Vault certificates", "Composition of a Certificate":
  https://learn.microsoft.com/azure/key-vault/certificates/about-certificates: the secret holds the key and the
  certificate, PEM or PKCS#12 by the policy's content type; the key must be exportable for it to be there). The key
  stays in this process's memory; MSAL signs each client assertion with it (msal/application.py, `_build_client`:
  given `private_key` and `public_certificate`, MSAL sends PS256 with x5t#S256, and x5c).
- `federated`: nothing stored. The Function's user-assigned identity gets a token for `api://AzureADTokenExchange`,
  and MSAL presents it as the client assertion of the app registration, whose federated identity credential trusts
  that identity ("Configure an application to trust a managed identity":
  https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity:
  issuer https://login.microsoftonline.com/{tenant}/v2.0, subject the identity's object (principal) id, audience
  api://AzureADTokenExchange). MSAL calls the callable only when it sends a token request (msal/application.py's
  docstring of client_credential), and azure-identity caches the identity's token: asked again whenever needed.
- `managed-identity`: no app registration; the identity's own Graph token (shared/tokens.ManagedIdentityTokens).

A second app registration is a second GraphRegistration (settings.parse_registration on its own settings) handed
to `token_source`: nothing here is specific to the one the relay holds today.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.outcomes import RelayFailure, permanent

if TYPE_CHECKING:
    import requests
    from azure.keyvault.secrets import SecretClient

    from shared.secrets import KeyVaultSecret, SecretSource
    from shared.settings import GraphRegistration
    from shared.tokens import TokenSource

log = logging.getLogger(f"mailrelay.{__name__}")  # under the logger the worker's distro exports (shared/telemetry.py)

# The audience of a managed identity's token used as a federated credential, in Entra's public cloud (the page
# above; Azure Government and Azure China use api://AzureADTokenExchangeUSGov and ...China).
TOKEN_EXCHANGE_AUDIENCE: Final = "api://AzureADTokenExchange"  # noqa: S105 - an audience, not a password
TOKEN_EXCHANGE_SCOPE: Final = TOKEN_EXCHANGE_AUDIENCE + "/.default"

# Entra's verdicts that a fresh read of Key Vault may cure (https://learn.microsoft.com/entra/identity-platform/
# reference-error-codes): 7000215 invalid client secret, 7000222 expired client secret (a rotated one may be
# waiting); 700027 the client assertion failed signature validation (the certificate is not, or no longer,
# registered, or it expired: Key Vault may hold a renewed one).
SECRET_REREAD_ON: Final = frozenset({7000215, 7000222})
CERTIFICATE_REREAD_ON: Final = frozenset({700027})


@dataclass(frozen=True)
class MsalCredential:
    """What MSAL's ConfidentialClientApplication is built with, and a key that changes when the credential does
    (a new application, with an empty cache, is built then). The key is a digest: never the value."""

    key: str
    value: str | dict[str, Any]


class ClientCredential(Protocol):
    mode: str
    reread_on: frozenset[int]  # Entra's error codes after which the stored credential is read again

    def get(self) -> MsalCredential:
        """The credential, read on first use and cached."""
        ...

    def refresh(self) -> MsalCredential:
        """Read the stored credential again (Entra rejected the cached one)."""
        ...

    def skip_cache(self) -> None:
        """The next credential MSAL asks for must not come from a cache (a fresh token was asked for)."""
        ...


def _digest(value: str | bytes) -> str:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).hexdigest()


class SecretCredential:
    """A client secret from Key Vault (or any SecretSource)."""

    mode = "secret"
    reread_on = SECRET_REREAD_ON

    def __init__(self, source: SecretSource):
        self.source = source

    def get(self) -> MsalCredential:
        value = self.source.get()
        return MsalCredential(_digest(value), value)

    def refresh(self) -> MsalCredential:
        value = self.source.refresh()
        return MsalCredential(_digest(value), value)

    def skip_cache(self) -> None:
        """The secret is what Key Vault holds; Entra's verdict on it, not a cache, decides a re-read."""


@dataclass(frozen=True)
class CertificateInfo:
    """The public facts of a certificate: what the doctor and the expiry check show, and Entra matches."""

    thumbprint_sha1: str  # hex, upper case: the app registration's customKeyIdentifier, and the portal's thumbprint
    thumbprint_sha256: str  # hex: x5t#S256, what MSAL sends
    subject: str
    not_before: datetime
    not_after: datetime
    version: str | None  # the Key Vault version it was read from


PEM_CONTENT_TYPE: Final = "application/x-pem-file"
PKCS12_CONTENT_TYPE: Final = "application/x-pkcs12"


def parse_certificate(
    value: str, content_type: str | None, version: str | None = None
) -> tuple[str, str, CertificateInfo]:
    """(private key PEM, certificate PEM, info) from a Key Vault certificate's secret value.

    PEM (application/x-pem-file) holds the key and the chain; PKCS#12 (application/x-pkcs12, Key Vault's default)
    is the PFX, base64 encoded, without a password. The certificate kept is the one whose public key matches the
    private key (the leaf), whatever the chain's order. Raises RelayFailure(permanent CertificateUnreadable)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    def unreadable(why: str) -> RelayFailure:
        return RelayFailure(permanent("CertificateUnreadable", f"the Key Vault certificate {why}"))

    key: Any
    certificates: list[x509.Certificate]
    try:
        if content_type == PKCS12_CONTENT_TYPE or (content_type != PEM_CONTENT_TYPE and "-----BEGIN" not in value):
            key, leaf, extra = pkcs12.load_key_and_certificates(base64.b64decode(value, validate=False), None)
            certificates = [c for c in (leaf, *extra) if c is not None]
        else:
            data = value.encode()
            key = serialization.load_pem_private_key(data, password=None) if b"PRIVATE KEY-----" in data else None
            certificates = x509.load_pem_x509_certificates(data) if b"-----BEGIN CERTIFICATE-----" in data else []
    except (ValueError, TypeError) as e:
        # The error names the format problem (a password-protected PFX, a truncated PEM); never the value.
        raise unreadable(f"could not be parsed as {content_type or 'PEM or PKCS#12'}: {type(e).__name__}") from None
    if key is None:
        raise unreadable(
            "holds no private key: its policy must make the key exportable (keyProperties.exportable true), "
            "or the relay cannot sign with it"
        )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    leaf_cert = next(
        (
            c
            for c in certificates
            if c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            == public
        ),
        None,
    )
    if leaf_cert is None:
        raise unreadable("holds no certificate for its private key")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    cert_pem = leaf_cert.public_bytes(serialization.Encoding.PEM).decode()
    info = CertificateInfo(
        thumbprint_sha1=leaf_cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - Entra's thumbprint is SHA-1
        thumbprint_sha256=leaf_cert.fingerprint(hashes.SHA256()).hex(),
        subject=leaf_cert.subject.rfc4514_string(),
        not_before=leaf_cert.not_valid_before_utc,
        not_after=leaf_cert.not_valid_after_utc,
        version=version,
    )
    return key_pem, cert_pem, info


class CertificateCredential:
    """A Key Vault certificate, given to MSAL as a certificate credential.

    Read once and cached, like the secret. Read again when Entra rejects the assertion (AADSTS700027: not
    registered, or expired), and before use once the cached certificate has passed its end: Key Vault's AutoRenew
    has made a new version by then, and Entra accepts it as soon as the app registration holds its public key
    (infra/README.md: the renewal does not tell Entra). No restart either way."""

    mode = "certificate"
    reread_on = CERTIFICATE_REREAD_ON

    def __init__(self, source: KeyVaultSecret, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._source = source
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[str, MsalCredential, CertificateInfo] | None = None  # (raw digest, credential, info)

    @property
    def info(self) -> CertificateInfo | None:
        """The certificate in use, once read."""
        return self._cached[2] if self._cached else None

    def get(self) -> MsalCredential:
        with self._lock:
            if self._cached is not None and self._clock() < self._cached[2].not_after:
                return self._cached[1]
            value = self._source.get() if self._cached is None else self._source.refresh()
            return self._parse(value)

    def refresh(self) -> MsalCredential:
        with self._lock:
            return self._parse(self._source.refresh())

    def skip_cache(self) -> None:
        """As the secret's: Entra's refusal (AADSTS700027) or the certificate's end decide a re-read."""

    def _parse(self, value: str) -> MsalCredential:
        key_pem, cert_pem, info = parse_certificate(value, self._source.content_type, self._source.version)
        credential = MsalCredential(info.thumbprint_sha256, {"private_key": key_pem, "public_certificate": cert_pem})
        changed = self._cached is not None and self._cached[2].thumbprint_sha256 != info.thumbprint_sha256
        self._cached = (_digest(value), credential, info)
        # Thumbprints and dates are public: they tell an operator which certificate is in use.
        log.info(
            "certificate read from Key Vault",
            extra={
                "event": "certificate.read",
                "thumbprint": info.thumbprint_sha1,
                "notAfter": info.not_after.isoformat(),
                "certificateVersion": info.version,
                "renewed": changed,
            },
        )
        return credential


class FederatedCredential:
    """The user-assigned identity's token for api://AzureADTokenExchange, as MSAL's client assertion."""

    mode = "federated"
    reread_on: frozenset[int] = frozenset()  # nothing stored to read again

    def __init__(self, identity: Any):
        self._identity = identity  # a RelayCredential over the user-assigned identity (shared/secrets.py)
        self._credential = MsalCredential("federated", {"client_assertion": self.assertion})
        self._skip_cache = False

    def skip_cache(self) -> None:
        """The next assertion comes from the identity endpoint, not azure-identity's cache: a fresh Graph token
        (the expiry check's health check, a 401 from Graph) must prove the identity is still there."""
        self._skip_cache = True

    def assertion(self) -> str:
        """A token for the exchange audience; azure-identity serves it from its cache until near its expiry. A
        failure of the identity raises the relay's RelayFailure, which passes through MSAL to shared/tokens.py."""
        from shared.secrets import identity_failure

        # `claims` makes azure-identity skip its cache (MSAL's ManagedIdentityClient, claims_challenge).
        kwargs = {"claims": "{}"} if self._skip_cache else {}
        self._skip_cache = False
        try:
            return str(self._identity.get_token(TOKEN_EXCHANGE_SCOPE, **kwargs).token)
        except Exception as e:
            failure = identity_failure(e, "the federated credential's assertion")
            if failure is None:
                raise
            raise failure from None

    def assertion_claims(self) -> dict[str, Any]:
        """iss, sub and aud of the assertion the relay presents (read, not verified): what the app registration's
        federated identity credential must name. For `mailrelay doctor`."""
        import json

        payload = self.assertion().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return {k: claims.get(k) for k in ("iss", "sub", "aud")} if isinstance(claims, dict) else {}

    def get(self) -> MsalCredential:
        return self._credential

    def refresh(self) -> MsalCredential:
        return self._credential


@dataclass(frozen=True)
class Credentials:
    """A registration's token source, and what it holds (None: nothing stored, as in the secretless modes)."""

    tokens: TokenSource
    stored: SecretCredential | CertificateCredential | None
    federated: FederatedCredential | None = None
    vault: SecretClient | None = None  # built only in the modes that keep the credential in Key Vault


def token_source(
    registration: GraphRegistration,
    *,
    identity: Any,
    session: requests.Session,
    authority_host: str,
    ca_bundle: str | None = None,
) -> Credentials:
    """The token source for one Graph caller. `identity` is the Function's identity (RelayCredential); Key Vault
    is built only for the secret and certificate modes, so the secretless modes never reach it."""
    from shared.tokens import ManagedIdentityTokens, MsalTokens

    if registration.mode == "managed-identity":
        return Credentials(ManagedIdentityTokens(identity), None)
    stored: SecretCredential | CertificateCredential | None = None
    federated: FederatedCredential | None = None
    vault: SecretClient | None = None
    credential: ClientCredential
    if registration.mode == "federated":
        credential = federated = FederatedCredential(identity)
    else:
        from shared.secrets import KeyVaultSecret, key_vault_client

        assert registration.key_vault_uri is not None and registration.vault_item is not None
        vault = key_vault_client(registration.key_vault_uri, identity, ca_bundle)
        source = KeyVaultSecret(vault, registration.vault_item)
        stored = SecretCredential(source) if registration.mode == "secret" else CertificateCredential(source)
        credential = stored
    tokens = MsalTokens(
        credential,
        tenant_id=registration.tenant_id,
        client_id=registration.client_id,
        authority_host=authority_host,
        http_client=session,
    )
    return Credentials(tokens, stored, federated, vault)
