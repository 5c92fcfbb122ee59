"""Entra's rules for an app's credentials other than a secret: its certificates (keyCredentials) and its federated
identity credentials, and how the token endpoint checks a JWT client assertion against them.

Sources:
- Certificate assertions: "Microsoft identity platform application authentication certificate credentials"
  (https://learn.microsoft.com/entra/identity-platform/certificate-credentials; MicrosoftDocs/entra-docs,
  docs/identity-platform/certificate-credentials.md): header alg PS256 with x5t#S256 (base64url SHA-256 of the
  certificate's DER); claims aud = the token endpoint, iss = sub = the client id, jti, nbf, exp; the manifest's
  keyCredentials (customKeyIdentifier = base64 SHA-1 thumbprint, type AsymmetricX509Cert, usage Verify). MSAL
  Python still sends RS256 with x5t (SHA-1) when given a "thumbprint" (msal/application.py, _build_client), and
  Entra accepts it: both are checked here.
- Federated assertions: "Configure an application to trust a managed identity"
  (https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity):
  issuer https://login.microsoftonline.com/{tenant}/v2.0, subject = the identity's object (principal) id, matched
  case-sensitively, audience api://AzureADTokenExchange; at most 20 federated credentials per application; a wrong
  issuer, subject or audience is accepted when saved and fails only at token time; name 3-120 characters, URL
  friendly, starting alphanumeric.
- The federatedIdentityCredential resource (microsoftgraph/microsoft-graph-docs-contrib,
  api-reference/v1.0/resources/federatedidentitycredential.md): audiences, issuer, subject, name, description.
- Error codes, with their OAuth `error` and texts:
  - AADSTS700211 (issuer), 700212 (audience), 700213 (subject): "No matching federated identity record found for
    presented assertion issuer|audience|subject '...'": azure-sdk-for-js sdk/identity/identity/TROUBLESHOOTING.md
    (700211, 700212, 700213 with "Please note that the matching is done using a case-sensitive comparison. Check
    your federated identity credential Subject, Audience and Issuer against the presented assertion"); the
    wire answer {"error":"invalid_client", ... AADSTS700211 ...} as quoted in Azure/azure-workload-identity#1200;
    GitLab's Azure OIDC docs for 700212. Status 401, as Entra answers invalid_client (microsoft/Agents#202 quotes
    a 401 invalid_client for the sibling AADSTS7002137).
  - AADSTS70021 (the older single code, "No matching federated identity record found for presented assertion.
    Assertion Issuer: ... Subject: ... Audience: ...", 400 invalid_request, Azure/azure-workload-identity#616):
    not answered here; Entra now names the field (the three codes above).
  - AADSTS700027 "Client assertion failed signature validation." (reference-error-codes,
    MicrosoftDocs/entra-docs docs/identity-platform/reference-error-codes.md), invalid_client; its reasons as
    Entra words them: "The key was not found." for a certificate the app does not have
    (AzureAD/microsoft-authentication-library-for-js#8339 and #3741), "The key used is expired." with "Found key
    'Start=..., End=...'" (Azure Stack HCI registration troubleshooting, MicrosoftDocs), "Key was found, but use
    of the key to verify the signature failed." (microsoftgraph/msgraph-sdk-php#1585, for AADSTS50013).
  - AADSTS700024 "Client assertion is not within its valid time range. Current time: ..., assertion valid from
    ..., expiry time of assertion ..." (AzureAD/microsoft-authentication-library-for-dotnet#4951), invalid_client
    (AzureAD/microsoft-identity-web Constants: SignedAssertionInvalidTimeRange among the invalid_client
    certificate errors).
  - AADSTS50027 "Invalid JWT token" for a malformed assertion, an unexpected audience or a subject mismatch
    (reference-error-codes: InvalidJwtToken and its listed reasons).
Assumed (no page states them): the statuses (401 for invalid_client, 400 for invalid_request); 50027's `error`
value (invalid_request); the order of the federated checks (issuer first, as Entra must find the issuer's keys,
then signature, lifetime, subject, audience); that a federated assertion whose signature fails answers 700027;
that an assertion from an issuer the emulator cannot fetch keys for answers AADSTS501661 ("Request to External
OIDC endpoint failed", quoted in GitLab's Azure docs); the error for a secret sent with an assertion; the text of
the 21st federated credential's refusal.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.emulator.state import _FederatedCredential, _KeyCredential

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
MAX_FEDERATED_CREDENTIALS = 20

_FIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,119}$")
_ENTRA_ISSUER = re.compile(r"^https://login\.microsoftonline\.com/([0-9a-fA-F-]{36})/v2\.0$")
_CERT_DOCS = "Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials"
_FIC_DOCS = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"


@dataclass(frozen=True)
class AssertionRefusal:
    """Entra's refusal of an assertion: (status, OAuth error, AADSTS code, description)."""

    status: int
    error: str
    code: int
    description: str


def _invalid_client(code: int, description: str) -> AssertionRefusal:
    return AssertionRefusal(401, "invalid_client", code, description)


def _invalid_jwt(reason: str) -> AssertionRefusal:
    return AssertionRefusal(400, "invalid_request", 50027, f"Invalid JWT token. {reason}")


# ---------------------------------------------------------------------- registering credentials


def key_credential(pem: str, display_name: str | None = None) -> _KeyCredential:
    """A keyCredential for the PEM certificate (its public part; a private key in the PEM is ignored)."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError as exc:
        raise ValueError("certificate must be a PEM X.509 certificate") from exc
    der = certificate.public_bytes(serialization.Encoding.DER)
    return _KeyCredential(
        key_id=str(uuid.uuid4()),
        display_name=display_name if display_name is not None else certificate.subject.rfc4514_string(),
        certificate=certificate,
        start=certificate.not_valid_before_utc,
        end=certificate.not_valid_after_utc,
        sha1=hashlib.sha1(der).digest(),  # noqa: S324 - the thumbprint Entra names keys by, not a security use
        sha256=hashlib.sha256(der).digest(),
    )


def federated_credential(
    name: str, issuer: str, subject: str, audiences: Sequence[str], description: str | None = None
) -> _FederatedCredential:
    """A federatedIdentityCredential, validated as Graph validates one when it is saved (and no further: a wrong
    issuer, subject or audience is accepted, and fails at token time)."""
    if not _FIC_NAME.match(name):
        raise ValueError(
            "name must be 3-120 characters, alphanumeric, dash or underscore, starting with an alphanumeric"
        )
    if isinstance(audiences, str) or not audiences or not all(isinstance(a, str) and a for a in audiences):
        raise ValueError("audiences must be a list of one or more non-empty strings")
    if not issuer or not subject:
        raise ValueError("issuer and subject are required")
    return _FederatedCredential(str(uuid.uuid4()), name, issuer, subject, tuple(audiences), description)


def add_federated_credential(existing: list[_FederatedCredential], credential: _FederatedCredential) -> None:
    """Add or replace (by name, case-insensitively) in place; a 21st credential is refused."""
    for index, current in enumerate(existing):
        if current.name.lower() == credential.name.lower():
            credential.id = current.id  # an update keeps the credential's id
            existing[index] = credential
            return
    if len(existing) >= MAX_FEDERATED_CREDENTIALS:
        # Assumed wording: the page states the limit, not Graph's refusal text.
        raise ValueError(
            f"Maximum of {MAX_FEDERATED_CREDENTIALS} federated identity credentials per application reached; "
            "remove one before adding another"
        )
    existing.append(credential)


# ---------------------------------------------------------------------- checking an assertion


@dataclass(frozen=True)
class Assertion:
    """A client assertion read without verification: enough to choose the rules that verify it."""

    raw: str
    header: dict[str, Any]
    claims: dict[str, Any]

    @classmethod
    def parse(cls, raw: str) -> Assertion | AssertionRefusal:
        try:
            header = jwt.get_unverified_header(raw)
            claims = jwt.decode(raw, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return _invalid_jwt("The token format isn't proper.")
        return cls(raw, dict(header), dict(claims))


def check_certificate_assertion(
    assertion: Assertion,
    client_id: str,
    token_endpoint: str,
    credentials: Iterable[_KeyCredential],
    now: datetime,
) -> AssertionRefusal | None:
    """The rules for an assertion the app signed with one of its certificates (iss = the client id)."""
    header, claims = assertion.header, assertion.claims
    if claims.get("sub") != client_id:
        return _invalid_jwt("The subject identifier doesn't match the issuer of the client assertion.")
    if claims.get("aud") != token_endpoint:
        return _invalid_jwt(f"Unexpected audience '{claims.get('aud')}'; expected '{token_endpoint}'.")
    algorithm = header.get("alg")
    named = header.get("x5t#S256") if "x5t#S256" in header else header.get("x5t")
    if algorithm not in ("RS256", "PS256") or not isinstance(named, str):
        return _invalid_jwt("No certificate thumbprint specified in token header.")
    digest = _b64url_bytes(named)
    thumbprint = digest.hex().upper() if digest is not None else named
    by_sha256 = "x5t#S256" in header
    key = next((k for k in credentials if digest is not None and (k.sha256 if by_sha256 else k.sha1) == digest), None)
    if key is None:
        return _invalid_client(
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application. "
            f"[Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the "
            "Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id "
            f"'{client_id}'.]",
        )
    found = f"Found key 'Start={_entra_time(key.start)}, End={_entra_time(key.end)}'"
    if not key.start <= now < key.end:
        return _invalid_client(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key used is expired. Thumbprint of key "
            f"used by client: '{thumbprint}', {found}]",
        )
    public_key = key.certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        return _invalid_client(700027, "Client assertion failed signature validation. [Reason - not an RSA key.]")
    try:
        jwt.decode(
            assertion.raw,
            public_key,
            algorithms=[algorithm],
            options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.InvalidTokenError:
        return _invalid_client(
            700027,
            "Client assertion failed signature validation. [Reason - Key was found, but use of the key to verify "
            f"the signature failed., Thumbprint of key used by client: '{thumbprint}', {found}]",
        )
    return _time_range(claims, now)


def check_federated_assertion(
    assertion: Assertion,
    credentials: Sequence[_FederatedCredential],
    known_tenant: Any,
    verify_entra_token: Any,
    now: datetime,
) -> AssertionRefusal | None:
    """The rules for a token another issuer signed, matched against the app's federated identity credentials.

    ``known_tenant(tenant_id) -> bool`` says whether this Entra knows the tenant of an Entra issuer;
    ``verify_entra_token(raw) -> bool`` checks the signature with the emulator's own key (Entra's keys).
    """
    claims = assertion.claims
    issuer, subject, audience = claims.get("iss"), claims.get("sub"), claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else list(audience or [])
    matching = [c for c in credentials if c.issuer == issuer]
    if not matching:
        return _invalid_client(
            700211,
            f"No matching federated identity record found for presented assertion issuer '{issuer}'. Please check "
            f"your federated identity credential Subject, Audience and Issuer against the presented assertion. "
            f"{_FIC_DOCS}",
        )
    entra = _ENTRA_ISSUER.match(str(issuer))
    if entra is None or not known_tenant(entra.group(1)):
        # The only issuer whose keys this emulator has is its own Entra (a managed identity's tokens).
        return AssertionRefusal(400, "invalid_request", 501661, "Request to External OIDC endpoint failed.")
    if not verify_entra_token(assertion.raw):
        return _invalid_client(
            700027, "Client assertion failed signature validation. [Reason - The key was not found.]"
        )
    expired = _time_range(claims, now)
    if expired is not None:
        return expired
    matching = [c for c in matching if c.subject == subject]
    if not matching:
        return _invalid_client(
            700213,
            f"No matching federated identity record found for presented assertion subject '{subject}'. Please note "
            "that the matching is done using a case-sensitive comparison. Check your federated identity credential "
            f"Subject, Audience and Issuer against the presented assertion. {_FIC_DOCS}",
        )
    if not any(a in c.audiences for c in matching for a in audiences):
        return _invalid_client(
            700212,
            f"No matching federated identity record found for presented assertion audience '{audience}'. Please "
            f"check your federated identity credential Subject, Audience and Issuer against the presented "
            f"assertion. {_FIC_DOCS}",
        )
    return None


def _time_range(claims: dict[str, Any], now: datetime) -> AssertionRefusal | None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return _invalid_jwt("The token has no expiry ('exp').")
    start = nbf if isinstance(nbf, int | float) and not isinstance(nbf, bool) else 0
    stamp = now.timestamp()
    if stamp < start or stamp >= exp:
        return _invalid_client(
            700024,
            f"Client assertion is not within its valid time range. Current time: {_iso(stamp)}, assertion valid "
            f"from {_iso(start)}, expiry time of assertion {_iso(exp)}. {_CERT_DOCS}",
        )
    return None


def _b64url_bytes(value: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, binascii.Error):
        return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def _entra_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%m/%d/%Y %H:%M:%S")
