"""End-to-end fixtures: Azurite (real storage), the emulator (Entra ID, Graph, Key Vault), the local host.

A request goes client -> Azurite queue -> devstack.host -> function_app.send_mail -> the emulator's Graph,
exactly as in Azure except for the endpoints. Each test gets its own queue, so tests share one Azurite.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.storage.queue import QueueClient

from devstack.azurite import Azurite
from devstack.emulator import Emulator
from devstack.host import LocalHost
from shared import bootstrap
from shared.queues import encode
from tests.integration import conftest as integration

# The emulator fixtures live with the integration tests; naming them here registers them for e2e too.
emulator_server = integration.emulator_server
emulator = integration.emulator

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0d1f4a5c-2b3e-4c6d-8e9f-a0b1c2d3e4f5"
SECRET = "Qx8~e2e.secret-value-cccccccccccccccccc"
SECRET_NAME = "graph-client-secret"
ALERTS = "alerts@contoso.com"  # allowed, in the Exchange scope
OUT_OF_SCOPE = "hr@contoso.com"  # allowed by the relay, outside the app's Exchange scope
NOT_ALLOWED = "ceo@contoso.com"  # a real mailbox, not on the allow-list


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with Azurite() as instance:
        yield instance


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


@dataclass
class RelayEnv:
    """The relay's settings for one test, its queues, and helpers to fill and read them."""

    env: dict[str, str]
    queue_name: str
    queue: QueueClient
    poison: QueueClient
    emulator: Emulator
    sent_ids: list[str] = field(default_factory=list)

    def request(self, subject: str, sender: str = ALERTS, **extra: Any) -> dict[str, Any]:
        return {
            "from": sender,
            "to": ["Ada Lovelace <ada@contoso.com>"],
            "subject": subject,
            "body": {"contentType": "text", "content": f"e2e body of {subject}"},
            **extra,
        }

    def enqueue(self, request: dict[str, Any]) -> str:
        """As an app would: base64 of the JSON (shared.queues.encode), no expiry."""
        message = self.queue.send_message(encode(request), time_to_live=-1)
        self.sent_ids.append(message.id)
        return str(message.id)

    def enqueue_raw(self, text: str) -> str:
        return str(self.queue.send_message(text, time_to_live=-1).id)

    def subjects_sent(self) -> Counter[str]:
        return Counter(entry["message"]["message"]["subject"] for entry in self.emulator.outbox)

    def poison_messages(self) -> list[Any]:
        """Everything in the poison queue, decoded: envelopes and wrappers as dicts, raw text as str."""
        out: list[Any] = []
        for message in self.poison.peek_messages(max_messages=32):
            text = message.content
            try:
                out.append(json.loads(base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                out.append(text)
        return out

    def queue_length(self) -> int:
        return int(self.queue.get_queue_properties().approximate_message_count)


def _forget_pacing(connection_string: str) -> None:
    """Every mailbox's pace row, deleted: the status table is the relay's fixed `mailstatus`, shared by every test
    on this Azurite, while each test's emulator is new. A row left by an earlier test would count its sends in
    this test's windows (as a bucket of the default day's width, an hour, begins at the hour, it counted for a test
    with a 120 s day run in the first 2 minutes of an hour; CI met it), where the emulator counts none."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables import TableClient

    from shared.pacing import PACE_ROW
    from shared.status import TABLE_NAME

    with TableClient.from_connection_string(connection_string, TABLE_NAME) as table:
        try:
            rows = list(table.query_entities(f"RowKey eq '{PACE_ROW}'", select=["PartitionKey", "RowKey"]))
        except ResourceNotFoundError:
            return  # no table yet: nothing was paced
        for row in rows:
            table.delete_entity(row["PartitionKey"], row["RowKey"])


@pytest.fixture
def relay_env(azurite: Azurite, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[RelayEnv]:
    """The emulator seeded, the relay's settings in the environment, a queue of this test's own."""
    emulator.add_app(TENANT, CLIENT, SECRET)
    emulator.add_mailbox(ALERTS, in_exchange_scope=True)
    emulator.add_mailbox(OUT_OF_SCOPE, in_exchange_scope=False)
    emulator.add_mailbox(NOT_ALLOWED, in_exchange_scope=False)
    emulator.set_secret(SECRET_NAME, SECRET, expires_on=datetime.now(UTC) + timedelta(days=300))
    queue_name = f"e2e-{uuid.uuid4().hex[:12]}"
    env = {
        "GRAPH_TENANT_ID": TENANT,
        "GRAPH_CLIENT_ID": CLIENT,
        "KEY_VAULT_URI": emulator.url,
        "GRAPH_CLIENT_SECRET_NAME": SECRET_NAME,
        "ALLOWED_SENDERS": f"{ALERTS},{OUT_OF_SCOPE}",
        "MAIL_QUEUE_NAME": queue_name,
        "AzureWebJobsStorage": azurite.connection_string,
        "GRAPH_BASE_URL": emulator.url,
        "GRAPH_AUTHORITY_HOST": emulator.url,
        "MAILRELAY_CA_BUNDLE": emulator.ca_cert_path,
        # azure-identity's ManagedIdentityCredential finds the App Service endpoint through these two.
        "IDENTITY_ENDPOINT": emulator.msi_endpoint,
        "IDENTITY_HEADER": emulator.identity_header,
        # Short retries, so a 429 storm passes in seconds (Retry-After still sets the floor).
        "SEND_RETRY_BASE_SECONDS": "1",
        # Short claims and settling, so a claim left by a killed host is taken over in seconds, not minutes.
        "GRAPH_TIMEOUT_SECONDS": "5",
        "SEND_CLAIM_LEASE_SECONDS": "10",
        "SEND_UNKNOWN_SETTLE_SECONDS": "1",
        # Pacing time-scaled: 30 messages a second instead of a minute, so hundreds of requests from one
        # mailbox pass in seconds (the pacing itself is tested with these limits binding).
        "MAILBOX_RATE_WINDOW_SECONDS": "1",
        # function_app.py binds its timers to these; the local host does not run timers, but like the real
        # host it refuses to start while a binding's %SETTING% does not resolve.
        "EXPIRY_CHECK_SCHEDULE": "0 0 7 * * *",
        "STATUS_CLEANUP_SCHEDULE": "0 30 * * * *",
        "QUEUE_DEPTH_SCHEDULE": "0 */5 * * * *",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()  # the runtime is built from the settings above, on the first message
    queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{queue_name}-poison")
    queue.create_queue()
    _forget_pacing(azurite.connection_string)
    yield RelayEnv(env, queue_name, queue, poison, emulator)
    bootstrap.reset()


@pytest.fixture
def local_host(relay_env: RelayEnv) -> Iterator[Callable[..., LocalHost]]:
    """Start the in-process local host (`local_host(lease_seconds=5)`); stopped at the end of the test."""
    started: list[LocalHost] = []

    def start(**kwargs: Any) -> LocalHost:
        kwargs.setdefault("lease_seconds", 5)
        host = LocalHost(**kwargs).start()
        started.append(host)
        return host

    yield start
    for host in started:
        host.stop()
