"""The App Service managed-identity endpoint (api-version 2019-08-01).

Source: https://learn.microsoft.com/azure/app-service/overview-managed-identity ("REST endpoint reference":
IDENTITY_ENDPOINT, the X-IDENTITY-HEADER header, resource, client_id, the response's fields). Assumed: the error
bodies' wording (the page lists the statuses, not the texts)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from http import HTTPStatus

from devstack.emulator.common import (
    _json_response,
    _Request,
    _Response,
    _retry_after_headers,
)
from devstack.emulator.faults import Faults

#: Client id of the emulated system-assigned managed identity (a request without ``client_id``).
SYSTEM_IDENTITY_CLIENT_ID = "00000000-0000-4000-8000-0000000005a1"

MSI_API_VERSION = "2019-08-01"


class ManagedIdentity(Faults):
    """The App Service managed-identity endpoint (api-version 2019-08-01).

    A part of `Emulator`; tokens come from `TenantState._issue_token`.
    """

    identity_header: str  # set by Emulator.__init__ (server.py), and told to clients as IDENTITY_HEADER

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
        client_id = request.param("client_id") or SYSTEM_IDENTITY_CLIENT_ID
        token, expires = self._issue_token(resource, self.default_tenant_id, client_id, ())
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
