"""The App Service managed-identity endpoint (api-version 2019-08-01), and the user-assigned identities it serves.

Sources:
- https://learn.microsoft.com/azure/app-service/overview-managed-identity ("REST endpoint reference";
  MicrosoftDocs/azure-docs articles/app-service/overview-managed-identity.md): IDENTITY_ENDPOINT, the
  X-IDENTITY-HEADER header, resource, and the identity selectors client_id, principal_id (object_id its alias) and
  mi_res_id, each excluding the others; with none of them, the system-assigned identity; the response's
  access_token, client_id, expires_on, not_before, resource, token_type.
- An identity the app does not have: App Service answers 400 {"statusCode":400,"message":"Unable to load the
  proper Managed Identity.","correlationId":...} (as quoted in Azure/azure-sdk-for-net#43691). MSAL Python turns
  that body into {"error": "invalid_scope", "error_description": "400, Unable to load..."}
  (msal/managed_identity.py, _obtain_token_on_app_service) and azure-identity into CredentialUnavailableError:
  a missing identity, not an outage of the endpoint (a 5xx).
- A token for api://AzureADTokenExchange (a managed identity used as an app's federated credential): "Configure an
  application to trust a managed identity" (https://learn.microsoft.com/entra/workload-id/
  workload-identity-federation-config-app-trust-managed-identity): its issuer is
  https://login.microsoftonline.com/{tenant}/v2.0, its subject the identity's object (principal) id, its audience
  api://AzureADTokenExchange; only user-assigned identities may be used.
- A Graph token for an identity carries the app roles assigned to its service principal and its client id as
  appid (access-token claims reference: roles, appid, oid, idtyp app), so Graph and Exchange authorise it as they
  do an app.
Assumed: the wording of the other error bodies (the page lists the parameters, not the refusals); a request naming
two selectors answering 400 like an unknown identity; the exchange token's claims beyond iss, sub and aud (v2.0
access-token shape: azp, oid, tid, ver).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from devstack.emulator.common import (
    GRAPH_RESOURCE,
    _json_response,
    _optional_bool,
    _Request,
    _required_str,
    _Response,
    _retry_after_headers,
)
from devstack.emulator.credentials import TOKEN_EXCHANGE_AUDIENCE
from devstack.emulator.exchange import POLICY_ACCESS, SCOPE_MODELS
from devstack.emulator.faults import Faults
from devstack.emulator.state import TOKEN_LIFETIME_SECONDS, _App, _Identity

#: Client id of the emulated system-assigned managed identity (a request without ``client_id``).
SYSTEM_IDENTITY_CLIENT_ID = "00000000-0000-4000-8000-0000000005a1"

MSI_API_VERSION = "2019-08-01"

#: App Service's answer for an identity the app does not have (Azure/azure-sdk-for-net#43691).
NO_SUCH_IDENTITY = "Unable to load the proper Managed Identity."

# Graph's resource as App Service accepts it (the relay asks for https://graph.microsoft.com, azure-identity may add
# a trailing slash when it turns a scope into a resource).
_GRAPH_RESOURCES = frozenset({GRAPH_RESOURCE, GRAPH_RESOURCE + "/"})
_EXCHANGE_RESOURCES = frozenset({TOKEN_EXCHANGE_AUDIENCE, TOKEN_EXCHANGE_AUDIENCE + "/"})


class ManagedIdentity(Faults):
    """The App Service managed-identity endpoint (api-version 2019-08-01), and its user-assigned identities.

    A part of `Emulator`; tokens come from `TenantState._issue_token`, identities live in
    `TenantState._identities`, and each is also a principal in `TenantState._apps` (Graph and Exchange read it).
    """

    identity_header: str  # set by Emulator.__init__ (server.py), and told to clients as IDENTITY_HEADER

    def add_identity(
        self,
        client_id: str,
        principal_id: str,
        roles: Sequence[str] = (),
        exchange_roles: Sequence[str] = (),
        scope_model: str = "rbac",
        tenant_id: str | None = None,
        resource_id: str | None = None,
        policy_access: str = "RestrictAccess",
    ) -> None:
        """Add (or replace) a user-assigned managed identity assigned to the Function App.

        ``roles`` are the Graph app roles assigned to its service principal (its Graph tokens' roles);
        ``exchange_roles`` Exchange's RBAC for Applications roles pointing at it, over ``scope_model``. Its
        tenant is ``tenant_id``, else the default tenant (the first app's).
        """
        if isinstance(roles, str) or isinstance(exchange_roles, str):
            raise TypeError("roles and exchange_roles must be sequences of names, not strings")
        if scope_model not in SCOPE_MODELS or policy_access not in POLICY_ACCESS:
            raise ValueError(f"scope_model is one of {SCOPE_MODELS}, policy_access one of {POLICY_ACCESS}")
        with self._lock:
            tenant = tenant_id or self.default_tenant_id
            self.remove_identity(client_id)
            identity = _Identity(client_id, principal_id, tenant, resource_id)
            principal = _App(tenant, client_id, None, tuple(roles), False, identity=identity)
            principal.scope_model, principal.policy_access = scope_model, policy_access
            principal.exchange_roles = frozenset(exchange_roles)
            self._identities[client_id.lower()] = identity
            self._apps[(tenant.lower(), client_id.lower())] = principal

    def remove_identity(self, client_id: str) -> None:
        """Remove the identity (deleted, or unassigned from the Function App): its endpoint answers 400 for it.
        Tokens already issued stay valid until they expire, as Entra's do."""
        with self._lock:
            identity = self._identities.pop(client_id.lower(), None)
            if identity is not None:
                self._apps.pop((identity.tenant_id.lower(), client_id.lower()), None)

    def _apply_identity(self, entry: Mapping[str, Any]) -> None:
        """Seed `identities[]` and admin `identity`: ``{"clientId", "principalId", "roles"?, "exchangeRoles"?,
        "scopeModel"?, "tenantId"?, "resourceId"?}``, or ``{"clientId", "delete": true}``."""
        client_id = _required_str(entry, "clientId")
        if _optional_bool(entry, "delete", False):
            self.remove_identity(client_id)
            return
        roles = entry.get("roles", [])
        exchange_roles = entry.get("exchangeRoles", [])
        for name, value in (("roles", roles), ("exchangeRoles", exchange_roles)):
            if not isinstance(value, list) or not all(isinstance(role, str) for role in value):
                raise ValueError(f"{name} must be a list of strings")
        optional = {key: entry.get(key) for key in ("tenantId", "resourceId")}
        for key, value in optional.items():
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{key} must be a non-empty string")
        self.add_identity(
            client_id,
            _required_str(entry, "principalId"),
            tuple(roles),
            tuple(exchange_roles),
            str(entry.get("scopeModel", "rbac")),
            optional["tenantId"],
            optional["resourceId"],
            str(entry.get("policyAccess", "RestrictAccess")),
        )

    def identity_token(self, client_id: str, resource: str, lifetime: int = TOKEN_LIFETIME_SECONDS) -> str:
        """The token the endpoint would hand the identity for ``resource``, with any ``lifetime`` (negative: one
        already expired). For tests; KeyError for an identity the emulator does not have."""
        with self._lock:
            identity = self._identities.get(client_id.lower())
            principal = self._apps.get((identity.tenant_id.lower(), client_id.lower())) if identity else None
        if identity is None or principal is None:
            raise KeyError(f"no identity with client id {client_id!r}")
        return self._identity_token(identity, principal.roles, resource, lifetime)[0]

    def _identity_token(
        self, identity: _Identity, roles: Sequence[str], resource: str, lifetime: int = TOKEN_LIFETIME_SECONDS
    ) -> tuple[str, int]:
        if resource.rstrip("/") in _EXCHANGE_RESOURCES:
            return self._exchange_token(identity, lifetime)
        # Only Graph reads app roles; Key Vault and others authorise by their own RBAC.
        graph_roles = roles if resource in _GRAPH_RESOURCES else ()
        audience = GRAPH_RESOURCE if resource in _GRAPH_RESOURCES else resource
        return self._issue_token(
            audience, identity.tenant_id, identity.client_id, graph_roles, identity.principal_id, lifetime
        )

    def _exchange_token(self, identity: _Identity, lifetime: int) -> tuple[str, int]:
        """The identity's token for api://AzureADTokenExchange: what an app's federated credential trusts."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": TOKEN_EXCHANGE_AUDIENCE,
            "iss": f"https://login.microsoftonline.com/{identity.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "azp": identity.client_id,
            "azpacr": "2",
            "idtyp": "app",
            "oid": identity.principal_id,
            "sub": identity.principal_id,
            "tid": identity.tenant_id,
            "uti": uuid.uuid4().hex,
            "ver": "2.0",
        }
        if identity.resource_id:
            claims["xms_mirid"] = identity.resource_id
        return self._sign(claims), now + lifetime

    def _msi_token(self, request: _Request) -> _Response:
        """App Service's managed identity endpoint (api-version 2019-08-01), as MSAL calls it."""

        def error(status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> _Response:
            # MSAL reads "statusCode" and "message" from this endpoint's error bodies.
            return _json_response(
                status,
                {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())},
                headers,
            )

        if request.method != "GET":
            return error(405, "The requested HTTP method is not supported. Use GET.")
        header = request.header("X-IDENTITY-HEADER")
        if header is None:
            return error(400, "The X-IDENTITY-HEADER header is missing from the request.")
        if header != self.identity_header:
            return error(401, "The X-IDENTITY-HEADER header does not match the expected value.")
        if request.param("api-version") != MSI_API_VERSION:
            return error(400, f"The api-version query parameter must be '{MSI_API_VERSION}'.")
        resource = request.param("resource")
        if not resource:
            return error(400, "The resource query parameter is missing or empty.")
        fault = self._next_fault("msi.token")
        if fault is not None:
            assert fault.status is not None
            return error(
                fault.status,
                fault.message or HTTPStatus(fault.status).phrase,
                _retry_after_headers(fault.retry_after),
            )
        selectors = {
            name: value
            for name in ("client_id", "principal_id", "object_id", "mi_res_id")
            if (value := request.param(name))
        }
        if len(selectors) > 1:
            return error(400, NO_SUCH_IDENTITY)
        if not selectors:
            token, expires = self._issue_token(resource, self.default_tenant_id, SYSTEM_IDENTITY_CLIENT_ID, ())
            client_id = SYSTEM_IDENTITY_CLIENT_ID
        else:
            ((name, value),) = selectors.items()
            with self._lock:
                identity = next((i for i in self._identities.values() if _selects(i, name, value)), None)
                principal = (
                    self._apps.get((identity.tenant_id.lower(), identity.client_id.lower())) if identity else None
                )
            if identity is None or principal is None:
                return error(400, NO_SUCH_IDENTITY)
            token, expires = self._identity_token(identity, principal.roles, resource)
            client_id = identity.client_id
        return _json_response(
            200,
            {
                "access_token": token,
                "expires_on": str(expires),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            },
        )


def _selects(identity: _Identity, selector: str, value: str) -> bool:
    if selector == "client_id":
        return identity.client_id.lower() == value.lower()
    if selector in ("principal_id", "object_id"):
        return identity.principal_id.lower() == value.lower()
    return identity.resource_id is not None and identity.resource_id.lower() == value.lower()
