"""The Functions host's storage account (AzureWebJobsStorage): clients for the relay's queues, tables, blobs.

One place turns the settings into clients, so the dead-letter queue, the re-queue, the idempotency
status records and the expiry records all use the account the host itself uses: a connection string locally
(Azurite), identity-based service URIs in Azure.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from shared.settings import SettingsError

if TYPE_CHECKING:
    from azure.data.tables import TableClient
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

    from shared.settings import Settings


def queue_client(settings: Settings, queue_name: str, credential: Any = None) -> QueueClient:
    from azure.storage.queue import QueueClient

    storage = settings.storage
    if storage.connection_string:
        return QueueClient.from_connection_string(storage.connection_string, queue_name)
    assert storage.queue_service_uri is not None  # load_settings requires one of the two
    return QueueClient(storage.queue_service_uri, queue_name, credential=credential)


def table_client(settings: Settings, table_name: str, credential: Any = None, **options: Any) -> TableClient:
    """A client for one table; `options` go to the SDK (retry_total, connection_timeout, ...)."""
    from azure.data.tables import TableClient

    storage = settings.storage
    if storage.connection_string:
        return TableClient.from_connection_string(storage.connection_string, table_name, **options)
    if not storage.table_service_uri:
        raise SettingsError(
            "Setting AzureWebJobsStorage__tableServiceUri is missing: the relay keeps its status records and "
            "its expiry records in Table storage, https://<account>.table.core.windows.net."
        )
    return TableClient(storage.table_service_uri, table_name, credential=credential, **options)


def container_client(settings: Settings, container: str, credential: Any = None) -> ContainerClient:
    """A client for one blob container: the relay's overflow store (shared/queues.py)."""
    from azure.storage.blob import ContainerClient

    storage = settings.storage
    if storage.connection_string:
        return ContainerClient.from_connection_string(storage.connection_string, container)
    if not storage.blob_service_uri:
        raise SettingsError(
            "Setting AzureWebJobsStorage__blobServiceUri is missing: the relay keeps what does not fit in a queue "
            "message (a large dead letter or retry) in Blob storage, https://<account>.blob.core.windows.net."
        )
    return ContainerClient(storage.blob_service_uri, container, credential=credential)


def create_table(client: TableClient) -> None:
    """Create the table if it is missing.

    In Azure, infra/ creates the tables and the relay's identity may not be allowed to create one (403):
    carry on, the table is there. Locally (Azurite) the relay creates them on first use.
    """
    from azure.core.exceptions import HttpResponseError, ResourceExistsError

    try:
        with contextlib.suppress(ResourceExistsError):
            client.create_table()
    except HttpResponseError as e:
        if e.status_code != 403:
            raise
