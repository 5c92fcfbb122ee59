"""The app registration's client secret, read from Key Vault and cached in the process.

Key Vault throttles per vault, so the secret is read once and kept; it is read again only when Entra
rejects the cached value (rotated or expired), which is how a rotation is picked up without a restart.
"""

from __future__ import annotations

import logging
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
            raise RelayFailure(permanent("CredentialUnavailable", _first_line(str(e)))) from None
        except ClientAuthenticationError as e:
            # The identity could not get a token for Key Vault, or Key Vault refused it.
            status = getattr(e, "status_code", None)
            if status is not None and status >= 500:
                raise RelayFailure(transient("KeyVaultUnavailable", _first_line(str(e)))) from None
            raise RelayFailure(permanent("CredentialUnavailable", _first_line(str(e)))) from None
        except HttpResponseError as e:
            code = (e.error.code if e.error else None) or f"HTTP{e.status_code}"
            inner = getattr(getattr(e.error, "innererror", None), "get", lambda _k: None)("code")
            if inner == "SecretDisabled" or "disabled" in (e.message or "").lower():
                code = "SecretDisabled"
            if e.status_code in (429,) or (e.status_code or 0) >= 500:
                headers = getattr(e.response, "headers", None) or {}
                retry_after = parse_retry_after(headers.get("Retry-After"))
                raise RelayFailure(transient(code, _first_line(e.message), retry_after)) from None
            raise RelayFailure(permanent(code, _first_line(e.message))) from None
        except (ServiceRequestError, ServiceResponseError) as e:
            raise RelayFailure(transient("ConnectionError", f"Key Vault unreachable: {_first_line(str(e))}")) from None
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
