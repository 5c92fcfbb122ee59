"""Entra ID: app registrations and their credentials (secrets, certificates, federated identity credentials), the
token endpoint (client credentials, with a secret or a JWT client assertion), OIDC configuration and JWKS, and
Entra's error shapes. Tokens are signed and checked in state.py; the assertion rules live in credentials.py, with
their sources and the AADSTS codes they answer (700211/700212/700213, 700027, 700024, 50027).

Sources: the client credentials flow (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow:
the request with client_secret or client_assertion_type + client_assertion, the token response, the error response's
fields) and Entra's error codes (https://learn.microsoft.com/entra/identity-platform/reference-error-codes:
AADSTS7000215, 7000222, 700016, 90002, 900144...).
Assumed: the error descriptions' wording beyond the code (the pages give each code's meaning, not Entra's text);
the token's claims beyond those the access-token reference lists; that an app with no client secret, and a managed
identity's client id, asked with a secret answer 7000215 as a wrong secret does; that a secret sent beside an
assertion is refused (400 invalid_request, AADSTS90023)."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote

from jwt.algorithms import RSAAlgorithm

from devstack.emulator.common import (
    DEFAULT_TENANT_ID,
    GRAPH_APP_ID,
    GRAPH_RESOURCE,
    VAULT_APP_ID,
    VAULT_RESOURCE,
    _json_response,
    _optional_bool,
    _optional_datetime,
    _Request,
    _required_str,
    _Response,
    _retry_after_headers,
    _utcnow,
)
from devstack.emulator.credentials import (
    JWT_BEARER,
    TOKEN_EXCHANGE_AUDIENCE,
    Assertion,
    AssertionRefusal,
    add_federated_credential,
    check_certificate_assertion,
    check_federated_assertion,
    federated_credential,
    key_credential,
)
from devstack.emulator.exchange import POLICY_ACCESS, SCOPE_MODELS
from devstack.emulator.faults import Faults, _Fault
from devstack.emulator.state import TOKEN_LIFETIME_SECONDS, _App, _FederatedCredential, _PasswordCredential

# Graph's addPassword: a client secret without an endDateTime lives two years.
DEFAULT_SECRET_LIFETIME = timedelta(days=730)

# Resources the emulated Entra knows, as accepted in a "<resource>/.default" scope, to the token aud.
_KNOWN_RESOURCES: dict[str, str] = {
    GRAPH_RESOURCE: GRAPH_RESOURCE,
    GRAPH_RESOURCE + "/": GRAPH_RESOURCE,
    GRAPH_APP_ID: GRAPH_RESOURCE,
    VAULT_RESOURCE: VAULT_RESOURCE,
    VAULT_RESOURCE + "/": VAULT_RESOURCE,
    VAULT_APP_ID: VAULT_RESOURCE,
}


class EntraID(Faults):
    """Entra ID: app registrations and their secrets, the token endpoint (client credentials), OIDC.

    A part of `Emulator`; the apps are `TenantState._apps`.
    """

    def add_app(
        self,
        tenant_id: str,
        client_id: str,
        secret: str | None,
        roles: Sequence[str] = (),
        secret_expired: bool = False,
        secret_end: datetime | None = None,
        scope_model: str = "rbac",
        policy_access: str = "RestrictAccess",
        exchange_roles: Sequence[str] = ("Application Mail.Send",),
        key_credentials: Sequence[str] = (),
        federated_credentials: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Register an app in a tenant, with its one valid client secret and its application roles.

        ``roles`` is the tenant-wide Entra consent (the token's roles): none by default, as under RBAC for
        Applications, where ``exchange_roles`` over the scope ``scope_model`` grant what the app may do.

        ``secret`` None registers an app with no client secret (one that signs in with a certificate or a
        federated credential). ``secret_end`` is the secret's endDateTime in Entra (default: two years from now,
        as addPassword); once it has passed, Entra refuses the secret with AADSTS7000222, as ``secret_expired``
        does. ``key_credentials`` are PEM certificates (keyCredentials); ``federated_credentials`` mappings with
        name, issuer, subject, audiences (federatedIdentityCredentials).
        """
        if isinstance(roles, str):
            raise TypeError("roles must be a sequence of role names, not a string")
        if scope_model not in SCOPE_MODELS or policy_access not in POLICY_ACCESS:
            raise ValueError(f"scope_model is one of {SCOPE_MODELS}, policy_access one of {POLICY_ACCESS}")
        app = _App(tenant_id, client_id, secret, tuple(roles), bool(secret_expired))
        app.scope_model, app.policy_access, app.exchange_roles = scope_model, policy_access, frozenset(exchange_roles)
        app.credentials = [_password_credential(secret, secret_end)] if secret is not None else []
        app.key_credentials = [key_credential(pem) for pem in key_credentials]
        for entry in federated_credentials:
            add_federated_credential(app.federated_credentials, _federated_credential_of(entry))
        with self._lock:
            self._apps[(tenant_id.lower(), client_id.lower())] = app

    def _registered_apps(self, client_id: str) -> list[_App]:
        """The app registrations (not managed identities) with this client id, in any tenant; KeyError if none."""
        apps = [
            app for app in self._apps.values() if app.client_id.lower() == client_id.lower() and app.identity is None
        ]
        if not apps:
            raise KeyError(f"no app with client id {client_id!r}")
        return apps

    def add_key_credential(self, client_id: str, certificate_pem: str, display_name: str | None = None) -> str:
        """Upload a certificate's public key to the app registration (keyCredentials). Returns its keyId."""
        credential = key_credential(certificate_pem, display_name)
        with self._lock:
            for app in self._registered_apps(client_id):
                app.key_credentials.append(copy.copy(credential))
        return credential.key_id

    def remove_key_credential(self, client_id: str, key_id: str) -> None:
        with self._lock:
            for app in self._registered_apps(client_id):
                app.key_credentials = [k for k in app.key_credentials if k.key_id != key_id]

    def set_federated_credential(
        self,
        client_id: str,
        name: str,
        issuer: str,
        subject: str,
        audiences: Sequence[str] = (TOKEN_EXCHANGE_AUDIENCE,),
        description: str | None = None,
    ) -> str:
        """Add or replace (by name) a federated identity credential on the app registration. Returns its id.

        Saved as Graph saves it: a wrong issuer, subject or audience is accepted, and fails at token time; a 21st
        credential is refused."""
        credential = federated_credential(name, issuer, subject, audiences, description)
        with self._lock:
            for app in self._registered_apps(client_id):
                add_federated_credential(app.federated_credentials, copy.copy(credential))
        return credential.id

    def remove_federated_credential(self, client_id: str, name: str) -> None:
        with self._lock:
            for app in self._registered_apps(client_id):
                app.federated_credentials = [c for c in app.federated_credentials if c.name.lower() != name.lower()]

    def set_app_secret(
        self, client_id: str, secret: str, expired: bool = False, secret_end: datetime | None = None
    ) -> None:
        """Rotate the app's secret in Entra: the old one stops working at once (and is no longer listed)."""
        with self._lock:
            for app in self._registered_apps(client_id):
                had_secret = app.secret is not None
                app.secret = secret
                app.secret_expired = bool(expired)
                app.credentials[: 1 if had_secret else 0] = [_password_credential(secret, secret_end)]

    def add_password_credential(self, client_id: str, end: datetime, display_name: str | None = None) -> str:
        """List a further client secret in the app registration (an old one not yet deleted, say).

        Graph lists it in passwordCredentials; tokens are still issued for the app's current secret only.
        Returns its keyId.
        """
        credential = _password_credential(None, end, display_name)
        with self._lock:
            for app in self._registered_apps(client_id):
                app.credentials.append(copy.copy(credential))
        return credential.key_id

    def _apply_app(self, entry: Mapping[str, Any]) -> None:
        roles = entry.get("roles", [])
        exchange_roles = entry.get("exchangeRoles", ["Application Mail.Send"])
        for name, value in (("roles", roles), ("exchangeRoles", exchange_roles)):
            if not isinstance(value, list) or not all(isinstance(role, str) for role in value):
                raise ValueError(f"{name} must be a list of strings")
        secret = entry.get("secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise ValueError("secret must be a non-empty string, or absent for an app with no client secret")
        federated = entry.get("federatedCredentials", [])
        keys = entry.get("keyCredentials", [])
        if not isinstance(federated, list) or not all(isinstance(f, dict) for f in federated):
            raise ValueError("federatedCredentials must be a list of objects")
        if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
            raise ValueError("keyCredentials must be a list of objects")
        self.add_app(
            _required_str(entry, "tenantId"),
            _required_str(entry, "clientId"),
            secret,
            roles=tuple(roles),
            secret_expired=_optional_bool(entry, "secretExpired", False),
            secret_end=_optional_datetime(entry, "secretEnd"),
            scope_model=str(entry.get("scopeModel", "rbac")),
            policy_access=str(entry.get("policyAccess", "RestrictAccess")),
            exchange_roles=tuple(exchange_roles),
            federated_credentials=federated,
        )
        for key in keys:
            display_name = key.get("displayName")
            self.add_key_credential(
                _required_str(entry, "clientId"),
                _required_str(key, "certificate"),
                display_name if isinstance(display_name, str) else None,
            )

    def _apply_app_federated_credential(self, entry: Mapping[str, Any]) -> str | None:
        """Admin `app-federated-credential`: add or replace by name, or ``"delete": true`` to remove."""
        client_id, name = _required_str(entry, "clientId"), _required_str(entry, "name")
        if _optional_bool(entry, "delete", False):
            self.remove_federated_credential(client_id, name)
            return None
        credential = _federated_credential_of(entry)
        return self.set_federated_credential(
            client_id,
            credential.name,
            credential.issuer,
            credential.subject,
            credential.audiences,
            credential.description,
        )

    def _apply_app_key_credential(self, entry: Mapping[str, Any]) -> str:
        """Admin `app-key-credential`: upload a certificate; returns its keyId."""
        display_name = entry.get("displayName")
        return self.add_key_credential(
            _required_str(entry, "clientId"),
            _required_str(entry, "certificate"),
            display_name if isinstance(display_name, str) else None,
        )

    def _apply_app_secret(self, entry: Mapping[str, Any]) -> None:
        self.set_app_secret(
            _required_str(entry, "clientId"),
            _required_str(entry, "secret"),
            _optional_bool(entry, "expired", False),
            _optional_datetime(entry, "secretEnd"),
        )

    def _apply_app_credential(self, entry: Mapping[str, Any]) -> str:
        end = _optional_datetime(entry, "endDateTime")
        if end is None:
            raise ValueError("endDateTime is required")
        display_name = entry.get("displayName")
        return self.add_password_credential(
            _required_str(entry, "clientId"), end, display_name if isinstance(display_name, str) else None
        )

    def _known_tenant(self, tenant: str) -> bool:
        with self._lock:
            return tenant.lower() == DEFAULT_TENANT_ID or any(t == tenant.lower() for t, _ in self._apps)

    def _entra_error(
        self,
        request: _Request,
        status: int,
        error: str,
        code: int,
        description: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> _Response:
        """Entra's OAuth error JSON: error, "AADSTSnnn: ..." description, error_codes, timestamp, ids."""
        now = _utcnow()
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        trace_id = str(uuid.uuid4())
        # Entra echoes the client's correlation id (MSAL sends client-request-id).
        correlation_id = request.header("client-request-id") or str(uuid.uuid4())
        payload = {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        }
        return _json_response(status, payload, [("client-request-id", correlation_id), *headers])

    def _entra_fault(self, request: _Request, fault: _Fault) -> _Response:
        assert fault.status is not None
        return self._entra_error(
            request,
            fault.status,
            fault.code or "temporarily_unavailable",
            90033,
            fault.message or "A transient error has occurred. Please try again.",
            _retry_after_headers(fault.retry_after),
        )

    def _tenant_not_found(self, request: _Request, tenant: str) -> _Response:
        return self._entra_error(
            request,
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
            "into the correct cloud. Check with your subscription administrator, this may happen if there "
            "are no active subscriptions for the tenant.",
        )

    def _openid_configuration(self, request: _Request, tenant: str) -> _Response:
        fault = self._next_fault("entra.openid")
        if fault is not None:
            return self._entra_fault(request, fault)
        if not self._known_tenant(tenant):
            return self._tenant_not_found(request, tenant)
        base = f"{self.url}/{tenant}"
        config = {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "tid",
                "ver",
                "oid",
                "roles",
            ],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }
        return _json_response(200, config)

    def _jwks(self, request: _Request, tenant: str) -> _Response:
        if not self._known_tenant(tenant):
            return self._tenant_not_found(request, tenant)
        jwk = json.loads(RSAAlgorithm.to_jwk(self._public_key))
        jwk.update({"kid": self._key_id, "x5t": self._key_id, "use": "sig", "issuer": f"{self.url}/{tenant}/v2.0"})
        return _json_response(200, {"keys": [jwk]})

    def _check_client_assertion(
        self, app: _App, tenant: str, client_secret: str | None, assertion_type: str | None, raw: str
    ) -> AssertionRefusal | None:
        """A JWT client assertion: the app's own, signed with one of its certificates (iss = the client id), or
        another issuer's token matched against its federated identity credentials (credentials.py)."""
        if client_secret:
            # Assumed: no page gives Entra's answer to both credentials at once; it takes one client credential.
            return AssertionRefusal(
                400,
                "invalid_request",
                90023,
                "Only one client credential, 'client_secret' or 'client_assertion', may be presented.",
            )
        if assertion_type != JWT_BEARER:
            return AssertionRefusal(
                400,
                "invalid_request",
                900144 if not assertion_type else 90023,
                "The request body must contain the following parameter: 'client_assertion_type'."
                if not assertion_type
                else f"The client_assertion_type '{assertion_type}' isn't supported; use '{JWT_BEARER}'.",
            )
        assertion = Assertion.parse(raw)
        if isinstance(assertion, AssertionRefusal):
            return assertion
        now = _utcnow()
        if str(assertion.claims.get("iss", "")).lower() == app.client_id.lower():
            token_endpoint = f"{self.url}/{tenant}/oauth2/v2.0/token"
            claims = dict(assertion.claims)
            if isinstance(claims.get("aud"), str) and claims["aud"].lower() == token_endpoint.lower():
                claims["aud"] = token_endpoint
            return check_certificate_assertion(
                Assertion(assertion.raw, assertion.header, claims),
                app.client_id,
                token_endpoint,
                app.key_credentials,
                now,
            )

        def entra_signed(token: str) -> bool:
            # Entra's own keys: a token this emulator's identity endpoint issued; revocation does not apply.
            return self._check_token(token)[0] in ("ok", "expired", "revoked")

        return check_federated_assertion(assertion, app.federated_credentials, self._known_tenant, entra_signed, now)

    def _token(self, request: _Request, tenant: str) -> _Response:
        """Client credentials grant, with Entra's status codes and AADSTS errors."""
        if request.method != "POST":
            return self._entra_error(
                request,
                405,
                "invalid_request",
                900561,
                f"The endpoint only accepts POST, OPTIONS requests. Received a {request.method} request.",
            )
        fault = self._next_fault("entra.token")
        if fault is not None:
            return self._entra_fault(request, fault)
        if not self._known_tenant(tenant):
            return self._tenant_not_found(request, tenant)
        form = {key: values[0] for key, values in parse_qs(request.body.decode("utf-8", "replace")).items()}
        basic_id, basic_secret = _basic_credentials(request)
        client_id = form.get("client_id") or basic_id
        client_secret = form.get("client_secret") or basic_secret
        grant_type = form.get("grant_type")
        scope = form.get("scope")

        for name, value in (("grant_type", grant_type), ("client_id", client_id), ("scope", scope)):
            if not value:
                return self._entra_error(
                    request,
                    400,
                    "invalid_request",
                    900144,
                    f"The request body must contain the following parameter: '{name}'.",
                )
        assert grant_type is not None and client_id is not None and scope is not None
        if grant_type != "client_credentials":
            return self._entra_error(
                request,
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'. The emulator supports "
                "client_credentials only.",
            )
        scopes = scope.split()
        not_default = [s for s in scopes if not s.endswith("/.default")]
        if not_default:
            # Today's Entra answers client-credential scopes without /.default with AADSTS1002012.
            return self._entra_error(
                request,
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {not_default[0]} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        resources = {s[: -len("/.default")] for s in scopes}
        if len(resources) != 1 or not next(iter(resources)):
            return self._entra_error(
                request,
                400,
                "invalid_scope",
                70011,
                "The provided request must include a 'scope' input parameter. The provided value for the "
                f"input parameter 'scope' is not valid. The scope {scope} is not valid. The scope format is "
                "invalid. Scope must be in a valid URI form <https://example/scope> or a valid Guid "
                "<guid/scope>.",
            )
        resource = next(iter(resources))

        with self._lock:
            app = self._apps.get((tenant.lower(), client_id.lower()))
            app = copy.copy(app) if app is not None else None
        if app is None:
            return self._entra_error(
                request,
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. This "
                "can happen if the application has not been installed by the administrator of the tenant or "
                "consented to by any user in the tenant. You may have sent your authentication request to "
                "the wrong tenant.",
            )
        assertion_type = form.get("client_assertion_type")
        raw_assertion = form.get("client_assertion")
        if not client_secret and not raw_assertion:
            return self._entra_error(
                request,
                401,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
            )
        if raw_assertion:
            refusal = self._check_client_assertion(app, tenant, client_secret, assertion_type, raw_assertion)
            if refusal is not None:
                return self._entra_error(request, refusal.status, refusal.error, refusal.code, refusal.description)
        elif app.secret is None or client_secret != app.secret:
            # An app with no secret at all, and a managed identity (which has no application object, so no
            # secret), answer as a wrong secret does: assumed, no page states either case.
            return self._entra_error(
                request,
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{app.client_id}'.",
            )
        elif app.secret_expired or (app.secret_end is not None and app.secret_end <= _utcnow()):
            return self._entra_error(
                request,
                401,
                "invalid_client",
                7000222,
                f"The provided client secret keys for app '{app.client_id}' are expired. Visit the Azure "
                "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using "
                "certificate credentials for added security: https://aka.ms/certCreds.",
            )
        audience = _KNOWN_RESOURCES.get(resource)
        if audience is None:
            return self._entra_error(
                request,
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named {tenant}. This "
                "can happen if the application has not been installed by the administrator of the tenant or "
                "consented to by any user in the tenant. You might have sent your authentication request to "
                "the wrong tenant.",
            )
        # Only Graph reads app roles here; Key Vault authorizes by its own access policies / RBAC.
        roles = app.roles if audience == GRAPH_RESOURCE else ()
        token, _ = self._issue_token(audience, app.tenant_id, app.client_id, roles)
        return _json_response(
            200,
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME_SECONDS,
                "ext_expires_in": TOKEN_LIFETIME_SECONDS,
                "access_token": token,
            },
        )


def _federated_credential_of(entry: Mapping[str, Any]) -> _FederatedCredential:
    audiences = entry.get("audiences", [TOKEN_EXCHANGE_AUDIENCE])
    if not isinstance(audiences, list):
        raise ValueError("audiences must be a list of strings")
    description = entry.get("description")
    return federated_credential(
        _required_str(entry, "name"),
        _required_str(entry, "issuer"),
        _required_str(entry, "subject"),
        audiences,
        description if isinstance(description, str) else None,
    )


def _password_credential(
    secret: str | None, end: datetime | None, display_name: str | None = "mailrelay"
) -> _PasswordCredential:
    start = _utcnow().replace(microsecond=0)
    if end is not None and end.tzinfo is None:
        raise ValueError("secret_end must be timezone-aware")
    return _PasswordCredential(
        key_id=str(uuid.uuid4()),
        display_name=display_name,
        start=start,
        end=end if end is not None else start + DEFAULT_SECRET_LIFETIME,
        hint=secret[:3] if secret else None,
    )


def _basic_credentials(request: _Request) -> tuple[str | None, str | None]:
    """client_secret_basic: Authorization: Basic base64(client_id:client_secret)."""
    scheme, _, value = (request.header("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):
        return None, None
    client_id, _, secret = decoded.partition(":")
    return unquote(client_id) or None, unquote(secret) or None
