"""The Functions host's storage account (AzureWebJobsStorage): clients for the relay's queues, tables, blobs.

One place turns the settings into clients, so the dead-letter queue, the re-queue, the idempotency
status records and the expiry records all use the account the host itself uses: a connection string locally
(Azurite), identity-based service URIs in Azure.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Final

from shared.settings import SettingsError

if TYPE_CHECKING:
    from azure.data.tables import TableClient
    from azure.storage.blob import ContainerClient
    from azure.storage.queue import QueueClient

    from shared.settings import Settings


# The proxy variables `requests` reads from the environment on each request (urllib's getproxies).
PROXY_VARIABLES: Final = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def transport_options(environ: Any = None) -> dict[str, Any]:
    """The Storage clients' transport options: with no proxy variable set, the environment is not read on every
    request. azure-core's RequestsTransport trusts the environment by default (`use_env_settings`), and requests
    then looks the proxy settings up for each request: about 6 % of the host's CPU per message on the relay's
    Storage round trips (issue 18, item 8). With a proxy set, the SDK's default stands, so the proxy (and a CA
    bundle named for it in REQUESTS_CA_BUNDLE) still applies; without one, certificates are checked against the
    SDK's own CA bundle (certifi), which is what Azure Storage's endpoints need."""
    env = os.environ if environ is None else environ
    if any(env.get(name) or env.get(name.lower()) for name in PROXY_VARIABLES):
        return {}
    return {"use_env_settings": False}


def queue_client(settings: Settings, queue_name: str, credential: Any = None) -> QueueClient:
    from azure.storage.queue import QueueClient

    storage = settings.storage
    if storage.connection_string:
        return QueueClient.from_connection_string(storage.connection_string, queue_name, **transport_options())
    assert storage.queue_service_uri is not None  # load_settings requires one of the two
    return QueueClient(storage.queue_service_uri, queue_name, credential=credential, **transport_options())


def approximate_count(queue: QueueClient) -> int:
    """The queue's approximate message count (Get Queue Metadata: one round trip); 0 for a queue not created yet
    (the relay's retry and dead-letter queues are made on first use)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return int(queue.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0


def table_client(settings: Settings, table_name: str, credential: Any = None, **options: Any) -> TableClient:
    """A client for one table; `options` go to the SDK (retry_total, connection_timeout, ...)."""
    from azure.data.tables import TableClient

    storage = settings.storage
    options = {**transport_options(), **options}
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
        return ContainerClient.from_connection_string(storage.connection_string, container, **transport_options())
    if not storage.blob_service_uri:
        raise SettingsError(
            "Setting AzureWebJobsStorage__blobServiceUri is missing: the relay keeps what does not fit in a queue "
            "message (a large dead letter or retry) in Blob storage, https://<account>.blob.core.windows.net."
        )
    return ContainerClient(storage.blob_service_uri, container, credential=credential, **transport_options())


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
