"""The client secret's or the certificate's properties in Key Vault (version, enabled, exp), never its value.

A Key Vault certificate is read through its addressable secret of the same name, as the relay itself reads it
(shared/credentials.py): each certificate version has a secret version whose exp and nbf are the certificate's
("About Azure Key Vault certificates", "Composition of a Certificate":
https://learn.microsoft.com/azure/key-vault/certificates/about-certificates). Listing its versions needs the same
permission as a client secret's listing: nothing on the certificates API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.expiry.model import ExpiryReadError, SecretInfo, safe_reason

if TYPE_CHECKING:
    from azure.keyvault.secrets import SecretClient


class KeyVaultSecretProperties:
    """The current version's properties, from the versions list: needs no permission to read the value."""

    def __init__(self, client: SecretClient, name: str, vault_uri: str, kind: str = "secret"):
        self._client = client
        self._name = name
        self._vault_uri = vault_uri
        self._kind = kind  # "secret" or "certificate" (SecretInfo.kind)

    def current(self) -> SecretInfo:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            versions = list(self._client.list_properties_of_secret_versions(self._name))
        except ResourceNotFoundError:
            versions = []
        except AzureError as e:
            raise ExpiryReadError(f"Key Vault: {safe_reason(e)}") from None
        if not versions:
            return SecretInfo(self._name, self._vault_uri, None, kind=self._kind)
        # The current version is the newest; list order is not documented, so sort (ties: the later listed).
        oldest = datetime.min.replace(tzinfo=UTC)
        _, newest = max(enumerate(versions), key=lambda iv: (iv[1].created_on or oldest, iv[0]))
        return SecretInfo(
            name=self._name,
            vault_uri=self._vault_uri,
            version=newest.version,
            enabled=bool(newest.enabled),
            expires_on=newest.expires_on,
            created_on=newest.created_on,
            kind=self._kind,
        )
