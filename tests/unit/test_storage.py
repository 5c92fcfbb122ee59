"""The Storage clients read no proxy settings per request unless a proxy is configured (shared/storage.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from shared import storage

AZURITE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "QueueEndpoint=http://127.0.0.1:1/devstoreaccount1;TableEndpoint=http://127.0.0.1:2/devstoreaccount1;"
    "BlobEndpoint=http://127.0.0.1:3/devstoreaccount1;"
)


def settings() -> Any:
    return SimpleNamespace(storage=SimpleNamespace(connection_string=AZURITE))


def transport_of(client: Any) -> Any:
    # Queues and blobs keep their pipeline; Tables keep it in the generated client inside theirs.
    pipeline = getattr(client, "_pipeline", None) or client._client._client._pipeline
    transport = pipeline._transport
    while hasattr(transport, "_transport"):  # the SDKs' wrappers around the one RequestsTransport
        transport = transport._transport
    transport.open()  # the session is made on first use; no request is sent
    return transport


@pytest.mark.parametrize("proxy", [None, "HTTPS_PROXY", "https_proxy", "NO_PROXY"])
def test_each_client_trusts_the_environment_only_with_a_proxy_set(
    proxy: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in storage.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    if proxy:
        monkeypatch.setenv(proxy, "http://proxy.contoso.com:3128")
    clients = [
        storage.queue_client(settings(), "mail-outbox"),
        storage.table_client(settings(), "mailstatus", retry_total=2, connection_timeout=10),
        storage.container_client(settings(), "mail-payloads"),
    ]
    for client in clients:
        assert transport_of(client).session.trust_env is (proxy is not None), type(client).__name__


def test_a_ca_bundle_alone_does_not_make_every_request_read_the_environment() -> None:
    assert storage.transport_options({"REQUESTS_CA_BUNDLE": "/etc/ssl/x.pem"}) == {"use_env_settings": False}
    assert storage.transport_options({"HTTP_PROXY": "http://p:1"}) == {}
