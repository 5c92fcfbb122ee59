"""The app registration's client secret, read from Key Vault and cached in the process.

Key Vault throttles per vault, so the secret is read once and kept; it is read again only when Entra
rejects the cached value (rotated or expired), which is how a rotation is picked up without a restart.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any, Protocol

from azure.core.exceptions import ClientAuthenticationError

from shared.outcomes import RelayFailure, parse_retry_after, permanent, transient

if TYPE_CHECKING:
    from azure.keyvault.secrets import SecretClient

log = logging.getLogger(f"mailrelay.{__name__}")  # under the logger the worker's distro exports (shared/telemetry.py)


class SecretSource(Protocol):
    def get(self) -> str:
        """The cached secret value, read on first use."""
        ...

    def refresh(self) -> str:
        """Read the current version again (after Entra rejected the cached one)."""
        ...


class KeyVaultSecret:
    def __init__(self, client: SecretClient, name: str):
        self._client = client
        self._name = name
        self._value: str | None = None
        self.version: str | None = None
        self.content_type: str | None = None  # a certificate's secret: application/x-pem-file or x-pkcs12
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            if self._value is None:
                self._read()
            assert self._value is not None
            return self._value

    def refresh(self) -> str:
        with self._lock:
            self._read()
            assert self._value is not None
            return self._value

    def _read(self) -> None:
        from azure.core.exceptions import (
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        try:
            secret = self._client.get_secret(self._name)
        except ResourceNotFoundError as e:
            raise RelayFailure(permanent("SecretNotFound", _first_line(e.message))) from None
        except ClientAuthenticationError as e:
            # The identity failed (shared.secrets.identity_failure), or Key Vault refused its token (401).
            failure = identity_failure(e, "Key Vault")
            assert failure is not None
            raise failure from None
        except HttpResponseError as e:
            code = (e.error.code if e.error else None) or f"HTTP{e.status_code}"
            inner = getattr(getattr(e.error, "innererror", None), "get", lambda _k: None)("code")
            if inner == "SecretDisabled" or "disabled" in (e.message or "").lower():
                code = "SecretDisabled"
            if "ForbiddenByFirewall" in (code, inner):
                # Key Vault's documented code for its network rules ("Client address isn't authorized and caller
                # isn't a trusted service", learn.microsoft.com/azure/key-vault/general/common-error-codes):
                # configuration, and not the missing role that "Forbidden" (ForbiddenByRbac) means.
                code = "ForbiddenByFirewall"
            if e.status_code in (429,) or (e.status_code or 0) >= 500:
                # Key Vault throttles per vault (429, Retry-After) and can be briefly unavailable (5xx):
                # https://learn.microsoft.com/azure/key-vault/general/overview-throttling. Its own error
                # code ("Throttled", "ServiceUnavailable") is kept in the message; the outcome's code names
                # the service, so the dead letter says which one failed.
                headers = getattr(e.response, "headers", None) or {}
                retry_after = parse_retry_after(headers.get("Retry-After"))
                outage = "KeyVaultThrottled" if e.status_code == 429 else "KeyVaultUnavailable"
                message = f"Key Vault answered HTTP {e.status_code} ({code}): {_first_line(e.message)[:300]}"
                raise RelayFailure(transient(outage, message, retry_after)) from None
            raise RelayFailure(permanent(code, _first_line(e.message))) from None
        except (ServiceRequestError, ServiceResponseError) as e:
            message = f"Key Vault unreachable: {_first_line(str(e))[:300]}"
            raise RelayFailure(transient("KeyVaultUnavailable", message)) from None
        if secret.value is None:
            raise RelayFailure(permanent("SecretNotFound", f"secret {self._name!r} has no value"))
        changed = self.version is not None and secret.properties.version != self.version
        self._value = secret.value
        self.version = secret.properties.version
        self.content_type = secret.properties.content_type
        # The version id is not secret; it tells an operator which rotation is in use.
        log.info(
            "client secret read from Key Vault",
            extra={"event": "secret.read", "secretName": self._name, "secretVersion": self.version, "rotated": changed},
        )


def identity_failure(error: BaseException, what: str) -> RelayFailure | None:
    """The relay's outcome for a failure of the Function's identity (or of a service refusing its token), as a
    dead letter or a retry must name it; None for an error that is not the identity's.

    An outage of the identity endpoint is transient; no identity, or one that was refused, is configuration."""
    from azure.identity import CredentialUnavailableError

    if isinstance(error, IdentityEndpointUnavailable):
        # The identity is there; its endpoint failed (RelayCredential tells the two apart): retry.
        return RelayFailure(transient("ManagedIdentityUnavailable", _first_line(error.message)))
    if isinstance(error, CredentialUnavailableError):
        # No identity at all (none assigned, AZURE_CLIENT_ID wrong or removed, no `az login` on a workstation).
        return RelayFailure(permanent("CredentialUnavailable", f"{what}: {_first_line(str(error))}"))
    if isinstance(error, ClientAuthenticationError):
        # The identity endpoint refused the request (a 4xx), or the service refused the token (401).
        status = error.status_code if error.status_code is not None else getattr(error.response, "status_code", None)
        if _endpoint_outage(status):
            message = f"the managed identity endpoint answered HTTP {status}: {_first_line(str(error))[:300]}"
            return RelayFailure(transient("ManagedIdentityUnavailable", message))
        return RelayFailure(permanent("CredentialUnavailable", f"{what}: {_first_line(str(error))}"))
    return None


_ENDPOINT_STATUS = re.compile(r"Token request error: \(\w+\) (\d{3}),")


def _identity_endpoint_status(text: str) -> int | None:
    match = _ENDPOINT_STATUS.search(text)
    return int(match.group(1)) if match else None


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


class IdentityEndpointUnavailable(ClientAuthenticationError):
    """The managed identity endpoint failed: it refused the connection, timed out, or answered 5xx or 429
    (after azure-identity's own retries). An outage of the endpoint, not a missing identity.

    A ClientAuthenticationError, as what a credential raises: azure-core's retry policy passes those straight
    through (the relay's own backoff retries), and callers that catch AzureError (mailrelay doctor) catch it."""


def _endpoint_outage(status: int | None) -> bool:
    return status is not None and (status >= 500 or status == 429)


class RelayCredential:
    """Managed identity first, then the Azure CLI: ChainedTokenCredential's order, with one difference.

    ChainedTokenCredential folds whatever a credential raised into one ClientAuthenticationError whose only
    trace of the cause is text, so an identity endpoint that is down reads like an identity that was never
    assigned (and a dead letter would tell the admin to assign it). Here a failure of the endpoint itself
    stops the chain with IdentityEndpointUnavailable, and only "no managed identity here" moves on to the CLI.

    Managed identity comes first because in Azure it is the only credential that should answer, and
    AZURE_CLIENT_ID picks the user-assigned identity (a Function App may carry several). The Azure CLI comes
    second so that an admin can run the relay's code from a workstation after `az login`; in Azure there is no
    CLI, so the chain never reaches it there.
    """

    def __init__(self, managed: Any, cli: Any | None):
        self._managed = managed
        self._cli = cli  # None: the managed identity only (the secretless modes: a CLI sign-in is a user, not it)

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return self._first(lambda credential: credential.get_token(*scopes, **kwargs))

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return self._first(lambda credential: credential.get_token_info(*scopes, options=options))

    def _first(self, call: Any) -> Any:
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError
        from azure.identity import CredentialUnavailableError

        try:
            return call(self._managed)
        except (ServiceRequestError, ServiceResponseError) as e:  # App Service's endpoint refused or timed out
            raise IdentityEndpointUnavailable(
                message=f"the managed identity endpoint did not answer: {_first_line(str(e))[:300]}"
            ) from None
        except CredentialUnavailableError as e:
            # azure-identity raises this both for "no identity here" and, on App Service, for an endpoint that
            # answered an error: MSAL turns its {"statusCode", "message"} body into {"error": "invalid_scope",
            # "error_description": "503, Service Unavailable"} (msal/managed_identity.py,
            # _obtain_token_on_app_service), and azure-identity into CredentialUnavailableError("... Token
            # request error: (invalid_scope) 503, ...") (azure/identity/_internal/msal_managed_identity_client.py,
            # _request_token). The status in that text is the only trace of an outage.
            status = _identity_endpoint_status(str(e))
            if _endpoint_outage(status):
                raise IdentityEndpointUnavailable(
                    message=f"the managed identity endpoint answered HTTP {status} (after azure-identity's retries)"
                ) from None
            no_identity = _first_line(str(e))
        except ClientAuthenticationError as e:
            status = e.status_code if e.status_code is not None else getattr(e.response, "status_code", None)
            if _endpoint_outage(status):
                raise IdentityEndpointUnavailable(
                    message=f"the managed identity endpoint answered HTTP {status}: {_first_line(str(e))[:300]}"
                ) from None
            raise
        if self._cli is None:
            raise CredentialUnavailableError(f"no managed identity answered ({no_identity})")
        try:
            return call(self._cli)
        except CredentialUnavailableError as e:
            raise CredentialUnavailableError(
                f"no managed identity answered ({no_identity}), and no Azure CLI sign-in ({_first_line(str(e))})"
            ) from None

    def close(self) -> None:
        for credential in (self._managed, self._cli):
            if credential is not None:
                credential.close()

    def __enter__(self) -> RelayCredential:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def credential(client_id: str | None, ca_bundle: str | None = None, *, cli: bool = True) -> RelayCredential:
    """The identity the relay reads Key Vault and its storage with (RelayCredential); `cli=False`: the managed
    identity alone, for the Graph credential of the federated and managed-identity modes, which only it can be."""
    from azure.identity import AzureCliCredential, ManagedIdentityCredential

    kwargs: dict[str, Any] = {"connection_verify": ca_bundle} if ca_bundle else {}
    return RelayCredential(
        ManagedIdentityCredential(client_id=client_id, **kwargs), AzureCliCredential() if cli else None
    )


def key_vault_client(vault_uri: str, cred: Any, ca_bundle: str | None = None) -> SecretClient:
    from azure.keyvault.secrets import SecretClient

    kwargs: dict[str, Any] = {"connection_verify": ca_bundle} if ca_bundle else {}
    # verify_challenge_resource=False only when a private CA is configured (the local emulator): in
    # Azure the vault's challenge must name a *.vault.azure.net resource matching the vault's host.
    return SecretClient(vault_uri, cred, verify_challenge_resource=not ca_bundle, **kwargs)
