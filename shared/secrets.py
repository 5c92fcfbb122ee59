"""The app registration's client secret, read from Key Vault and cached in the process.

Key Vault throttles per vault, so the secret is read once and kept; it is read again only when Entra
rejects the cached value (rotated or expired), which is how a rotation is picked up without a restart.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any, Protocol

from shared.outcomes import RelayFailure, parse_retry_after, permanent, transient

if TYPE_CHECKING:
    from azure.keyvault.secrets import SecretClient

log = logging.getLogger(__name__)


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
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )
        from azure.identity import CredentialUnavailableError

        try:
            secret = self._client.get_secret(self._name)
        except ResourceNotFoundError as e:
            raise RelayFailure(permanent("SecretNotFound", _first_line(e.message))) from None
        except CredentialUnavailableError as e:
            # No identity at all (none assigned, AZURE_CLIENT_ID wrong) is configuration, not an outage. But
            # azure-identity raises this same error when the App Service identity endpoint answers an error:
            # MSAL turns its {"statusCode", "message"} body into {"error": "invalid_scope", "error_description":
            # "503, Service Unavailable"} (msal/managed_identity.py, _obtain_token_on_app_service), and
            # azure-identity into CredentialUnavailableError("... Token request error: (invalid_scope) 503,
            # ...") (azure/identity/_internal/msal_managed_identity_client.py, _request_token). The status in
            # that text is the only trace of an outage, after azure-identity's own retries of 5xx and 429.
            status = _identity_endpoint_status(str(e))
            if status is not None and (status >= 500 or status == 429):
                message = f"the managed identity endpoint answered HTTP {status} (after azure-identity's retries)"
                raise RelayFailure(transient("ManagedIdentityUnavailable", message)) from None
            raise RelayFailure(permanent("CredentialUnavailable", _first_line(str(e)))) from None
        except ClientAuthenticationError as e:
            # Raised by the identity (its endpoint answered an error) or by Key Vault (401: it refused the
            # token). The identity endpoint answering 5xx or 429 after azure-identity's own retries is an
            # outage of the endpoint, not a missing assignment: transient, and named so.
            status = e.status_code if e.status_code is not None else getattr(e.response, "status_code", None)
            status = status if status is not None else _identity_endpoint_status(str(e))  # the chain's text
            if status is not None and (status >= 500 or status == 429):
                message = f"the managed identity endpoint answered HTTP {status}: {_first_line(str(e))[:300]}"
                raise RelayFailure(transient("ManagedIdentityUnavailable", message)) from None
            raise RelayFailure(permanent("CredentialUnavailable", _first_line(str(e)))) from None
        except HttpResponseError as e:
            code = (e.error.code if e.error else None) or f"HTTP{e.status_code}"
            inner = getattr(getattr(e.error, "innererror", None), "get", lambda _k: None)("code")
            if inner == "SecretDisabled" or "disabled" in (e.message or "").lower():
                code = "SecretDisabled"
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
        # The version id is not secret; it tells an operator which rotation is in use.
        log.info(
            "client secret read from Key Vault",
            extra={"event": "secret.read", "secretName": self._name, "secretVersion": self.version, "rotated": changed},
        )


_ENDPOINT_STATUS = re.compile(r"Token request error: \(\w+\) (\d{3}),")


def _identity_endpoint_status(text: str) -> int | None:
    match = _ENDPOINT_STATUS.search(text)
    return int(match.group(1)) if match else None


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def credential(client_id: str | None, ca_bundle: str | None = None):  # type: ignore[no-untyped-def]
    """The identity the relay reads Key Vault with.

    Managed identity comes first because in Azure it is the only credential that should answer, and
    AZURE_CLIENT_ID picks the user-assigned identity (a Function App may carry several). The Azure CLI
    comes second so that an admin can run `mailrelay` commands from a workstation after `az login`;
    in Azure there is no CLI, so the chain never reaches it there.
    """
    from azure.identity import AzureCliCredential, ChainedTokenCredential, ManagedIdentityCredential

    kwargs: dict[str, Any] = {"connection_verify": ca_bundle} if ca_bundle else {}
    return ChainedTokenCredential(ManagedIdentityCredential(client_id=client_id, **kwargs), AzureCliCredential())


def key_vault_client(vault_uri: str, cred, ca_bundle: str | None = None) -> SecretClient:  # type: ignore[no-untyped-def]
    from azure.keyvault.secrets import SecretClient

    kwargs: dict[str, Any] = {"connection_verify": ca_bundle} if ca_bundle else {}
    # verify_challenge_resource=False only when a private CA is configured (the local emulator): in
    # Azure the vault's challenge must name a *.vault.azure.net resource matching the vault's host.
    return SecretClient(vault_uri, cred, verify_challenge_resource=not ca_bundle, **kwargs)
