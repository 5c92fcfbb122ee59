"""Azure Key Vault secrets and certificates: versions, attributes, the challenge, and Key Vault's error shapes.

Sources: Key Vault's REST reference (Get Secret, Get Secret Versions: https://learn.microsoft.com/rest/api/keyvault/
secrets/; Get Certificate: https://learn.microsoft.com/rest/api/keyvault/certificates/get-certificate, its
CertificateBundle's id, kid, sid, x5t, cer, attributes) and its authentication page (the 401 challenge naming the
tenant and resource). A certificate's private key is read through the secrets API: "About Azure Key Vault
certificates" (https://learn.microsoft.com/azure/key-vault/certificates/about-certificates, "Composition of a
certificate": an addressable key and secret of the same name, the secret's content type application/x-pem-file
or application/x-pkcs12, managed by Key Vault, its attributes the certificate's nbf and exp). Assumed: the error
messages' wording (the REST reference gives the codes, e.g. SecretNotFound, Forbidden, not the texts), as the SDK
surfaces them in users' reports."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from http import HTTPStatus
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devstack.emulator.common import (
    VAULT_APP_ID,
    VAULT_RESOURCE,
    _bearer,
    _json_response,
    _optional_bool,
    _optional_datetime,
    _Request,
    _required_str,
    _Response,
    _retry_after_headers,
)
from devstack.emulator.faults import Faults
from devstack.emulator.state import _SecretVersion

#: The content type of a PEM certificate's secret (Key Vault's certificate docs: application/x-pem-file or
#: application/x-pkcs12).
PEM_CONTENT_TYPE = "application/x-pem-file"

# update_secret's "not given": there, expires_on=None clears the expiry.
_UNSET: Any = object()

# Key Vault is strict: "https://vault.azure.net/" (trailing slash) is rejected with AKV10022.
_VAULT_AUDIENCES = frozenset({VAULT_RESOURCE, VAULT_APP_ID})

_SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


class KeyVault(Faults):
    """Azure Key Vault secrets: versions, attributes, the challenge, and Key Vault's error shapes.

    A part of `Emulator`; the secrets are `TenantState._secrets`, the RBAC refusals `_vault_denied`.
    """

    def set_secret(self, name: str, value: str, expires_on: datetime | None = None, enabled: bool = True) -> str:
        """Add a new version of a Key Vault secret; it becomes the current one. Returns its version id."""
        if not _SECRET_NAME.match(name):
            raise ValueError(f"invalid Key Vault secret name: {name!r}")
        version = _SecretVersion(
            name=name,
            version=uuid.uuid4().hex,
            value=value,
            created=int(time.time()),
            expires_on=_epoch(expires_on) if expires_on is not None else None,
            enabled=bool(enabled),
        )
        with self._lock:
            self._secrets.setdefault(name.lower(), []).append(version)
        return version.version

    def set_certificate(self, name: str, pem: str) -> str:
        """Add a new version of a Key Vault certificate from a PEM holding its private key and certificate (an
        imported certificate, or one the vault issued or renewed). Returns its version id.

        As Key Vault keeps a certificate: a secret of the same name and version holds the key and certificate
        (content type application/x-pem-file, managed: true), whose exp and nbf are the certificate's; GET
        /certificates/{name} gives the public part."""
        if not _SECRET_NAME.match(name):
            raise ValueError(f"invalid Key Vault certificate name: {name!r}")
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
            serialization.load_pem_private_key(pem.encode("ascii"), password=None)
        except (ValueError, TypeError) as exc:
            # The messages name the field, never the key material.
            raise ValueError("pem must hold an unencrypted private key and its X.509 certificate, PEM-encoded") from exc
        version = _SecretVersion(
            name=name,
            version=uuid.uuid4().hex,
            value=pem,
            created=int(time.time()),
            expires_on=int(certificate.not_valid_after_utc.timestamp()),
            enabled=True,
            content_type=PEM_CONTENT_TYPE,
            not_before=int(certificate.not_valid_before_utc.timestamp()),
            certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        )
        with self._lock:
            self._secrets.setdefault(name.lower(), []).append(version)
        return version.version

    def _apply_certificate(self, entry: Mapping[str, Any]) -> str:
        return self.set_certificate(_required_str(entry, "name"), _required_str(entry, "pem"))

    def update_secret(
        self,
        name: str,
        version: str | None = None,
        *,
        expires_on: datetime | None = _UNSET,
        enabled: bool | None = None,
    ) -> str:
        """Change a version's attributes (the current one by default): exp (None clears it), enabled.

        As ``az keyvault secret set-attributes``: the value and the version id stay. Returns the version id.
        """
        with self._lock:
            versions = self._secrets.get(name.lower(), [])
            found = (
                versions[-1]
                if versions and version is None
                else next((v for v in versions if v.version == version), None)
            )
            if found is None:
                raise KeyError(f"no secret {name!r}" + (f" version {version!r}" if version else ""))
            if expires_on is not _UNSET:
                found.expires_on = _epoch(expires_on) if expires_on is not None else None
            if enabled is not None:
                found.enabled = bool(enabled)
            return found.version

    def _apply_secret(self, entry: Mapping[str, Any]) -> str:
        return self.set_secret(
            _required_str(entry, "name"),
            _required_str(entry, "value"),
            expires_on=_optional_datetime(entry, "expiresOn"),
            enabled=_optional_bool(entry, "enabled", True),
        )

    def _apply_secret_properties(self, entry: Mapping[str, Any]) -> str:
        enabled = entry.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ValueError("enabled must be true or false")
        version = entry.get("version")
        return self.update_secret(
            _required_str(entry, "name"),
            version if isinstance(version, str) and version else None,
            expires_on=_optional_datetime(entry, "expiresOn") if "expiresOn" in entry else _UNSET,
            enabled=enabled,
        )

    def set_vault_access(self, client_id: str, can_read_secrets: bool) -> None:
        """Give or take the identity's secrets-reading role on the vault ("Key Vault Secrets User")."""
        with self._lock:
            (self._vault_denied.discard if can_read_secrets else self._vault_denied.add)(client_id.lower())

    def _keyvault(self, request: _Request, parts: list[str], collection: str = "secrets") -> _Response:
        """/secrets/... (``collection`` "secrets") or /certificates/{name}[/{version}] ("certificates")."""
        certificates = collection == "certificates"
        service = "keyvault.getCertificate" if certificates else "keyvault.getSecret"
        request_id = str(uuid.uuid4())
        base_headers = [
            ("x-ms-request-id", request_id),
            ("x-ms-keyvault-service-version", "1.9.0.0"),
            ("x-ms-keyvault-region", "local-emulator"),
        ]
        challenge = (
            "WWW-Authenticate",
            f'Bearer authorization="https://login.microsoftonline.com/{self.default_tenant_id}", '
            f'resource="{VAULT_RESOURCE}"',
        )

        def error(
            status: int,
            code: str,
            message: str,
            inner: str | None = None,
            extra: Iterable[tuple[str, str]] = (),
        ) -> _Response:
            body: dict[str, Any] = {"code": code, "message": message}
            if inner:
                body["innerError"] = {"code": inner}
            return _json_response(status, {"error": body}, [*base_headers, *extra])

        # The SDK's first request carries no token on purpose: the 401 challenge tells it the tenant
        # and resource to ask a token for.
        token = _bearer(request)
        if not token:
            return error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", extra=[challenge])
        outcome, claims = self._check_token(token)
        if outcome == "revoked":
            # Key Vault evaluates revocation continuously (CAE): the challenge carries claims, and the
            # SDK answers it with a token fetched past its cache. A plain 401 would leave MSAL's cached,
            # revoked token in use for good.
            return error(
                401,
                "Unauthorized",
                "Continuous access evaluation resulted in challenge with result: InteractionRequired and "
                "code: "
                "TokenIssuedBeforeRevocationTimestamp",
                extra=[
                    (
                        challenge[0],
                        challenge[1] + ', error="insufficient_claims", claims="' + _revocation_claims() + '"',
                    )
                ],
            )
        if outcome == "expired":
            return error(401, "Unauthorized", "Error validating token: IDX10223", extra=[challenge])
        if outcome != "ok":
            return error(401, "Unauthorized", "Error validating token: IDX10511", extra=[challenge])
        if claims.get("aud") not in _VAULT_AUDIENCES:
            return error(
                401,
                "Unauthorized",
                f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, found: {claims.get('aud')}.",
                extra=[challenge],
            )
        # Counted once authenticated: the SDK's bare challenge probe and its CAE retry are protocol
        # overhead, and whether they happen depends on process-wide SDK caches, not on the caller.
        self._count(service)
        with self._lock:
            denied = str(claims.get("appid", "")).lower() in self._vault_denied
        if denied:
            # Key Vault's RBAC refusal (a vault with enableRbacAuthorization and no "Key Vault Secrets User"
            # for the caller), as users quote it: 403, code Forbidden, innererror ForbiddenByRbac, the
            # message naming caller, action and DecisionReason (hashicorp/terraform-provider-azurerm#27817,
            # piyushsachdeva/Terraform_AKS#2).
            caller = f"appid={claims.get('appid')};oid={claims.get('oid')};iss={claims.get('iss')}"
            # Assumed for certificates: the same refusal naming the certificates read action, and one role flag for
            # both (a vault's "Key Vault Secrets User" alone would not read /certificates; not modelled).
            action = (
                "Microsoft.KeyVault/vaults/certificates/read"
                if certificates
                else "Microsoft.KeyVault/vaults/secrets/getSecret/action"
            )
            message = (
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments "
                "or role definitions were changed recently, please observe propagation time.\r\n"
                f"Caller: {caller}\r\nAction: '{action}'\r\n"
                "Assignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\n"
            )
            return _json_response(
                403, {"error": {"code": "Forbidden", "message": message, "innererror": {"code": "ForbiddenByRbac"}}}
            )
        if not request.param("api-version"):
            return error(400, "BadParameter", "The api-version query parameter is missing.")
        fault = self._next_fault(service)
        if fault is not None:
            assert fault.status is not None
            default = (
                ("Throttled", "Request was not processed because too many requests were received.")
                if fault.status == 429
                else (HTTPStatus(fault.status).phrase.replace(" ", ""), HTTPStatus(fault.status).phrase + ".")
            )
            return error(
                fault.status,
                fault.code or default[0],
                fault.message or default[1],
                extra=_retry_after_headers(fault.retry_after),
            )
        if request.method != "GET":
            return error(405, "BadParameter", f"The emulator serves GET on {collection} only, not {request.method}.")
        if certificates:
            return self._certificate_bundle(parts, error, base_headers)
        if not parts or len(parts) > 2:
            return error(404, "BadParameter", "The emulator serves /secrets/{name}[/{version}|/versions] only.")
        name = parts[0]
        if not _SECRET_NAME.match(name):
            return error(400, "BadParameter", f"The request URI contains an invalid name: {name}")
        with self._lock:
            versions = list(self._secrets.get(name.lower(), []))
        if len(parts) == 2 and parts[1].lower() == "versions":
            items = [
                {
                    "id": f"{self.url}/secrets/{v.name}/{v.version}",
                    "attributes": self._secret_attributes(v),
                    "tags": {},
                }
                for v in versions
            ]
            return _json_response(200, {"value": items, "nextLink": None}, base_headers)
        wanted = parts[1] if len(parts) == 2 else None
        found = (
            versions[-1] if versions and wanted is None else next((v for v in versions if v.version == wanted), None)
        )
        if found is None:
            shown = name if wanted is None else f"{name}/{wanted}"
            return error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {shown} was not found in this key vault. If you recently deleted "
                "this secret you may be able to recover it using the correct recovery command. For help "
                "resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
            )
        if not found.enabled:
            return error(403, "Forbidden", "Operation get is not allowed on a disabled secret.", inner="SecretDisabled")
        bundle: dict[str, Any] = {
            "value": found.value,
            "id": f"{self.url}/secrets/{found.name}/{found.version}",
            "attributes": self._secret_attributes(found),
            "tags": {},
        }
        if found.content_type is not None:
            bundle["contentType"] = found.content_type
        if found.certificate_der is not None:
            # A certificate's secret (Get Secret's SecretBundle): managed by Key Vault, and kid names the key of the
            # same name and version.
            bundle["managed"] = True
            bundle["kid"] = f"{self.url}/keys/{found.name}/{found.version}"
        return _json_response(200, bundle, base_headers)

    def _certificate_bundle(
        self, parts: list[str], error: Callable[..., _Response], headers: list[tuple[str, str]]
    ) -> _Response:
        """GET /certificates/{name}[/{version}]: Get Certificate's CertificateBundle (id, kid, sid, x5t, cer,
        attributes). Assumed: the policy is left out (the emulator keeps none), and "CertificateNotFound" texts."""
        if not parts or len(parts) > 2:
            return error(404, "BadParameter", "The emulator serves /certificates/{name}[/{version}] only.")
        name = parts[0]
        if not _SECRET_NAME.match(name):
            return error(400, "BadParameter", f"The request URI contains an invalid name: {name}")
        wanted = parts[1] if len(parts) == 2 else None
        with self._lock:
            versions = [v for v in self._secrets.get(name.lower(), []) if v.certificate_der is not None]
        found = (
            versions[-1] if versions and wanted is None else next((v for v in versions if v.version == wanted), None)
        )
        if found is None or found.certificate_der is None:
            shown = name if wanted is None else f"{name}/{wanted}"
            return error(
                404,
                "CertificateNotFound",
                f"A certificate with (name/id) {shown} was not found in this key vault. If you recently deleted "
                "this certificate you may be able to recover it using the correct recovery command. For help "
                "resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
            )
        der = found.certificate_der
        bundle = {
            "id": f"{self.url}/certificates/{found.name}/{found.version}",
            "kid": f"{self.url}/keys/{found.name}/{found.version}",
            "sid": f"{self.url}/secrets/{found.name}/{found.version}",
            "x5t": base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("="),  # noqa: S324
            "cer": base64.b64encode(der).decode(),
            "attributes": self._secret_attributes(found),
            "tags": {},
        }
        return _json_response(200, bundle, headers)

    @staticmethod
    def _secret_attributes(version: _SecretVersion) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.created,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        }
        if version.expires_on is not None:
            attributes["exp"] = version.expires_on
        if version.not_before is not None:
            attributes["nbf"] = version.not_before
        return attributes


def _epoch(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("expires_on must be timezone-aware")
    return int(value.timestamp())


def _revocation_claims() -> str:
    """The base64 claims of a CAE challenge: "a token issued before now is no longer accepted"."""
    claims = {"access_token": {"nbf": {"essential": True, "value": str(int(time.time()))}}}
    # A space after each "{" keeps '{"' (base64 "eyJ", the prefix log scanners, ours included, flag as a
    # JWT) out of the encoding: the SDKs log this header, and it is not a token.
    text = json.dumps(claims).replace('{"', '{ "')
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
