"""The local stack with two host instances on one queue (devstack.stack.LocalStack): both consume, one can be
SIGKILLed and started again, the message it held comes back after its lease, and the app's read access to
Sent Items can be withdrawn and granted while the stack runs."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from devstack.host import HOST_JSON
from devstack.stack import LocalStack
from shared.graph import GraphClient, http_session
from shared.queues import encode
from shared.status import SENT, TABLE_NAME, StatusKey, TableStatusStore
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

SENDER = "alerts@contoso.com"
LEASE = 3  # the hosts' lease on a message: a killed host's message is visible again this long after
GRAPH_DELAY = 4.0  # a slow Graph, so a host is still inside its call when it is killed
SETTINGS = {
    "GRAPH_TIMEOUT_SECONDS": "6",  # longer than GRAPH_DELAY: the slow calls succeed
    "SEND_CLAIM_LEASE_SECONDS": "12",  # a dead worker's claim is taken over after this
    "SEND_UNKNOWN_SETTLE_SECONDS": "1",
    "SEND_RETRY_BASE_SECONDS": "0.5",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # One message at a time per host (batchSize 1, newBatchThreshold 0), so the kill test knows each host holds
    # exactly one of its two messages; the repository's host.json runs more at once.
    host_json = json.loads(HOST_JSON.read_text())
    host_json["extensions"]["queues"].update(batchSize=1, newBatchThreshold=0)
    path = tmp_path_factory.mktemp("host") / "host.json"
    path.write_text(json.dumps(host_json))
    with LocalStack(
        allowed_senders=(SENDER,), instances=2, lease_seconds=LEASE, settings=SETTINGS, host_json=path
    ) as running:
        yield running


class Requests:
    """Requests of one test: enqueued as an app would, followed in the status table."""

    def __init__(self, stack: LocalStack, name: str) -> None:
        self.stack, self.name, self.keys = stack, f"{name}-{uuid.uuid4().hex[:8]}", list[StatusKey]()
        self.queue = QueueClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
        self.status = TableStatusStore(TableClient.from_connection_string(stack.storage_connection_string, TABLE_NAME))

    def enqueue(self, count: int) -> None:
        for i in range(count):
            request_id = f"{self.name}-{i:02d}"
            self.keys.append(StatusKey.of(SENDER, request_id, None))
            request = {
                "id": request_id,
                "from": SENDER,
                "to": ["ada@contoso.com"],
                "subject": f"{self.name} {i}",
                "body": {"contentType": "text", "content": "instances test"},
            }
            self.queue.send_message(encode(request), time_to_live=-1)

    def all_sent(self) -> bool:
        records = [self.status.get(key) for key in self.keys]
        return all(record is not None and record.state == SENT for record in records)

    def copies(self) -> list[int]:
        """How many copies of each request the emulator's outbox holds (it keeps every accepted one)."""
        copies = self.stack.emulator_get("copies")
        return [int(copies.get(key.mark, 0)) for key in self.keys]


def slow_graph(stack: LocalStack, calls: int, delay: float) -> None:
    stack.emulator_post(
        "faults", {"service": "graph.sendMail", "status": None, "retryAfter": None, "delay": delay, "count": calls}
    )


def graph_calls(stack: LocalStack) -> int:
    return int(stack.emulator_get("stats").get("graph.sendMail", 0))


def test_two_instances_consume_the_one_queue_each_request_sent_once(stack: LocalStack) -> None:
    run = Requests(stack, "both")
    slow_graph(stack, 16, 0.3)  # each call takes a while: one host alone would leave the other idle
    try:
        run.enqueue(16)
        wait_for(run.all_sent, 60, "every request sent")
    finally:
        stack.emulator_post("faults-clear", {})
    assert run.copies() == [1] * 16
    for name in ("host-1", "host-2"):
        assert "send_mail completed" in stack.log_tail(name, 1000), f"{name} completed nothing"
    state = stack.state()
    assert (state["instances"], state["readAccess"]) == (2, True)
    assert set(state["pids"]) == {"azurite", "emulator", "host-1", "host-2"}


def test_a_killed_instance_is_no_failure_and_its_message_comes_back_after_the_lease(stack: LocalStack) -> None:
    run = Requests(stack, "kill")
    before = graph_calls(stack)
    first_pid = stack.pids["host-1"]
    slow_graph(stack, 2, GRAPH_DELAY)
    try:
        run.enqueue(2)
        # batchSize 1, newBatchThreshold 0 (the fixture's host.json): each host runs one message at a time, so with two
        # calls inside Graph each host holds one. A host polls an empty queue at least every 2 s
        # (maxPollingInterval), well within GRAPH_DELAY: both calls are in flight together.
        wait_for(lambda: graph_calls(stack) - before == 2, 10, "both hosts inside a Graph call")
        stack.kill_host(1)
        assert stack.dead_part() is None  # killed on purpose: the stack is not failing
        assert "host-1" not in stack.pids
        assert run.queue.peek_messages() == []  # the dead host's message is still under its lease, hidden
        stack.start_host(1)
        assert stack.pids["host-1"] != first_pid
        redelivered = re.compile(r"message (\S+) \(dequeue count 2\): send_mail completed")
        wait_for(lambda: redelivered.search(stack.log_tail("host", 1000)) is not None, 30, "the redelivery")
        wait_for(run.all_sent, 60, "both requests sent")
    finally:
        stack.emulator_post("faults-clear", {})
    logs = stack.log_tail("host", 1000)
    match = redelivered.search(logs)
    assert match is not None
    # The message that came back is the one the dead host held: no host ever settled its first delivery.
    assert f"message {match[1]} (dequeue count 1)" not in logs
    # The dead host's call was accepted by Graph; the relay found it in Sent Items instead of sending again.
    assert run.copies() == [1, 1]
    assert stack.log_tail("host-1", 1000).count("local host ready") == 2  # one log across both lives
    assert stack.dead_part() is None


def test_read_access_is_withdrawn_and_granted_while_the_stack_runs(stack: LocalStack) -> None:
    http = http_session(stack.ca_cert_path)
    token = http.post(
        f"{stack.emulator_url}/{stack.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": stack.client_id,
            "client_secret": stack._client_secret,  # the throwaway secret the stack registered
            "scope": "https://graph.microsoft.com/.default",
        },
        timeout=10,
    ).json()["access_token"]
    graph = GraphClient(http, stack.emulator_url)
    mark = "0" * 64

    def look_up() -> int:
        return graph.find_sent(SENDER, mark, token).status

    try:
        assert look_up() == 200  # granted by default: the look-up answers (nothing found)
        stack.set_read_access(False)
        assert not stack.read_access
        assert look_up() == 403  # Mail.ReadBasic alone does not cover extended properties
        stack.set_read_access(True)
        assert look_up() == 200  # the same token: Exchange reads the roles at each request
    finally:
        stack.set_read_access(True)
        http.close()
    # Sending still works after the app was registered again.
    run = Requests(stack, "after-reregister")
    run.enqueue(1)
    wait_for(run.all_sent, 30, "a send after the change")
    assert run.copies() == [1]


def test_the_retry_queues_and_the_status_table_exist_from_the_start(stack: LocalStack) -> None:
    from azure.data.tables import TableServiceClient
    from azure.storage.queue import QueueServiceClient

    conn = stack.storage_connection_string
    queues = {queue.name for queue in QueueServiceClient.from_connection_string(conn).list_queues()}
    q = stack.queue_name
    assert {q, f"{q}-poison", f"{q}-retry", f"{q}-retry-poison"} <= queues
    tables = {table.name for table in TableServiceClient.from_connection_string(conn).list_tables()}
    assert TABLE_NAME in tables
