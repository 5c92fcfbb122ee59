"""The fault suite: the local stack (Azurite, the emulator, three host processes) driven through each failure
the relay promises to survive, counting what reached the emulator's outbox.

Each scenario enqueues its own requests (ids of its own), injects its faults, waits until every request's
status record is final (`sent` or `dead-lettered`), then counts the copies of each request's mark in the
outbox, which keeps every accepted copy. Every scenario asserts: every request reached a final state, none
is lost (each was sent, or dead-lettered with a reason), and, with read access, **none is in the outbox
twice**. Without read access (SEND_UNKNOWN_OUTCOME=resend, the default), an unknown outcome is sent again
by design: the suite then proves that nothing is lost and that duplicates happen only where Graph accepted
a message and the relay could not know it (at most one per injected unknown outcome).

The summary table (requests, Graph calls, copies, duplicates per scenario) is printed at the end of the run.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from devstack.stack import LocalStack
from shared.queues import encode
from shared.status import DEAD_LETTERED, SENT, TABLE_NAME, StatusKey, TableStatusStore
from tests.faults.conftest import RESULTS, Result

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

SENDER = "alerts@contoso.com"
INSTANCES = 3
GRAPH_TIMEOUT = 2.0
# Short, so a scenario takes seconds: a dead worker's claim is taken over after 5 s, Sent Items are trusted
# 1 s after Graph's timeout, retries start at half a second. The rules are the same as in Azure.
SETTINGS = {
    "GRAPH_TIMEOUT_SECONDS": str(GRAPH_TIMEOUT),
    "SEND_CLAIM_LEASE_SECONDS": "5",
    "SEND_UNKNOWN_SETTLE_SECONDS": "1",
    "SEND_RETRY_BASE_SECONDS": "0.5",
    "SEND_MAX_ATTEMPTS": "20",
    "MAILBOX_RATE_WINDOW_SECONDS": "1",  # 30 a second: the scenarios' bursts are not what is tested here
}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(
        allowed_senders=(SENDER,), settings=SETTINGS, instances=INSTANCES, lease_seconds=3, read_access=True
    ) as running:
        yield running


@dataclass
class Run:
    """One scenario on the shared stack: its requests, and the tools to fault and count."""

    stack: LocalStack
    name: str
    read: bool

    def __post_init__(self) -> None:
        self.stack.emulator_post("faults-clear", {})
        self.stack.set_read_access(self.read)
        self.tag = uuid.uuid4().hex[:8]
        self.keys: list[StatusKey] = []
        self.queue = QueueClient.from_connection_string(self.stack.storage_connection_string, self.stack.queue_name)
        table = TableClient.from_connection_string(self.stack.storage_connection_string, TABLE_NAME)
        self.status = TableStatusStore(table)
        self.graph_calls_before = self.graph_calls()

    def graph_calls(self) -> int:
        """Calls that send or build a message: sendMail, and the large-message flow's draft calls."""
        stats = self.stack.emulator_get("stats")
        return int(stats["graph.sendMail"]) + int(stats["graph.drafts"])

    def fault(self, **entry: Any) -> None:
        self.stack.emulator_post("faults", {"service": "graph.sendMail", "retryAfter": None, **entry})

    def request(self, i: int) -> dict[str, Any]:
        """Request `i` of this run, with an id of its own; its key is counted by `final` and `count`."""
        request_id = f"{self.name}-{self.tag}-{i:03d}"
        self.keys.append(StatusKey.of(SENDER, request_id, None))
        return {
            "id": request_id,
            "from": SENDER,
            "to": ["ada@contoso.com"],
            "subject": f"{self.name} {i}",
            "body": {"contentType": "text", "content": "fault suite"},
        }

    def enqueue(self, count: int, copies: int = 1) -> None:
        """`count` requests with ids of this run, each enqueued `copies` times (an app sending it twice)."""
        for i in range(count):
            request = self.request(i)
            for _ in range(copies):
                self.queue.send_message(encode(request), time_to_live=-1)

    def final(self) -> dict[StatusKey, str]:
        states = {}
        for key in self.keys:
            record = self.status.get(key)
            states[key] = record.state if record else "none"
        return states

    def wait_final(self, timeout: float = 90, during: Callable[[], bool] | None = None) -> dict[StatusKey, str]:
        """Wait until every request is final. `during` runs on each look and says whether it still has work to
        do; the wait is not over before it is done, so a scenario's faults all happen however fast the relay."""
        deadline = time.monotonic() + timeout
        while True:
            busy = during() if during is not None else False
            states = self.final()
            if not busy and all(s in (SENT, DEAD_LETTERED) for s in states.values()):
                time.sleep(1.5)  # a straggling copy (a duplicate in the making) would show up now
                return self.final()
            if time.monotonic() > deadline:
                pending = {k.value: s for k, s in states.items() if s not in (SENT, DEAD_LETTERED)}
                raise AssertionError(f"{self.name}: not final after {timeout:g} s: {pending}")
            time.sleep(0.3)

    def count(self, states: dict[StatusKey, str], unknowns: int = 0) -> Result:
        copies = self.stack.emulator_get("copies")
        per_key = {key: int(copies.get(key.mark, 0)) for key in self.keys}
        lost = [k.value for k, n in per_key.items() if n == 0 and states[k] != DEAD_LETTERED]
        result = Result(
            scenario=self.name,
            read_access=self.read,
            requests=len(self.keys),
            graph_calls=self.graph_calls() - self.graph_calls_before,
            delivered=sum(1 for n in per_key.values() if n),
            copies=sum(per_key.values()),
            duplicates=sum(n - 1 for n in per_key.values() if n > 1),
            dead_lettered=sum(1 for s in states.values() if s == DEAD_LETTERED),
            unknowns_injected=unknowns,
        )
        RESULTS.append(result)
        assert lost == [], f"{self.name}: lost {lost}"
        if self.read:
            assert result.duplicates == 0, f"{self.name}: {result}"
        else:
            # At least once: a duplicate only where Graph accepted a message the relay could not see.
            assert result.duplicates <= unknowns, f"{self.name}: {result}"
        return result


READ = [pytest.param(True, id="read-access"), pytest.param(False, id="no-read-access")]


@pytest.mark.parametrize("read", READ)
def test_instances_racing_for_requests_enqueued_twice(stack: LocalStack, read: bool) -> None:
    run = Run(stack, "race", read)
    run.fault(status=None, delay=0.3, count=200)  # 300 ms of Graph latency: the claims overlap
    run.enqueue(20, copies=2)
    result = run.count(run.wait_final())
    assert result.delivered == 20 and result.duplicates == 0 and result.dead_lettered == 0


@pytest.mark.parametrize("read", READ)
def test_accepted_then_504(stack: LocalStack, read: bool) -> None:
    run = Run(stack, "accept-504", read)
    run.fault(status=504, accept=True, count=4)
    run.enqueue(10)
    result = run.count(run.wait_final(), unknowns=4)
    assert result.delivered == 10 and result.dead_lettered == 0


@pytest.mark.parametrize("read", READ)
def test_accepted_then_answered_after_the_timeout(stack: LocalStack, read: bool) -> None:
    run = Run(stack, "accept-timeout", read)
    run.fault(status=None, accept=True, delay=GRAPH_TIMEOUT + 1, count=3)
    run.enqueue(8)
    result = run.count(run.wait_final(), unknowns=3)
    assert result.delivered == 8 and result.dead_lettered == 0


@pytest.mark.parametrize("read", READ)
def test_hosts_killed_during_graph_calls_at_random_points(stack: LocalStack, read: bool) -> None:
    run = Run(stack, "sigkill", read)
    run.fault(status=None, delay=0.8, count=200)  # every call takes 0.8 s: a kill lands inside one
    run.enqueue(15)
    rng = random.Random(run.tag)
    kills: list[int] = []
    next_kill = [time.monotonic() + rng.uniform(0.3, 1.0)]

    def chaos() -> bool:
        # Three kills close together, while the first wave's calls (0.8 s each) and the takeovers are in flight.
        # The wait lasts until all three have happened: a fast run must not end the scenario with fewer.
        if len(kills) < 3 and time.monotonic() >= next_kill[0]:
            index = rng.randint(1, INSTANCES)
            stack.kill_host(index)  # SIGKILL: mid-call, mid-write, wherever it is
            kills.append(index)
            stack.start_host(index)
            next_kill[0] = time.monotonic() + rng.uniform(0.5, 1.2)
        return len(kills) < 3

    states = run.wait_final(timeout=120, during=chaos)
    assert len(kills) == 3
    # Each kill can leave at most the calls in flight on that instance unknown (batchSize + newBatchThreshold).
    result = run.count(states, unknowns=3 * 2)
    assert result.delivered == 15 and result.dead_lettered == 0


def test_hosts_killed_in_the_middle_of_an_upload_session(stack: LocalStack, tmp_path: Any) -> None:
    """A 12 MB attachment: three ranges of 4 MB, each taking 0.6 s. Every host is killed once a range is in
    flight, then restarted. The claim is taken over after its lease, the unknown try looked up in Sent Items, the
    draft the dead host left found by its mark and deleted, and a fresh draft sent: one copy, no draft left."""
    from mailrelay_client import MailClient

    run = Run(stack, "kill-upload", True)
    stack.emulator_post("throttling", {"graphLatencySeconds": 0.6})
    try:
        path = tmp_path / "large.bin"
        path.write_bytes(uuid.uuid4().bytes * (12 * 1024 * 1024 // 16))
        MailClient.from_connection_string(stack.storage_connection_string, stack.queue_name).send(
            run.request(0), files=[path]
        )
        deadline = time.monotonic() + 60
        while not any(d["uploadSessions"] for d in stack.emulator_get("drafts")):
            assert time.monotonic() < deadline, "no upload session started"
            time.sleep(0.05)
        time.sleep(0.3)  # inside the first range
        for index in range(1, INSTANCES + 1):
            stack.kill_host(index)
        left = stack.emulator_get("drafts")
        for index in range(1, INSTANCES + 1):
            stack.start_host(index)
        states = run.wait_final(timeout=120)
    finally:
        stack.emulator_post("throttling", {"graphLatencySeconds": 0})
    assert len(left) == 1 and stack.emulator_get("outbox")[-1]["attachments"][0]["size"] == 12 * 1024 * 1024
    result = run.count(states)
    assert result.delivered == 1 and result.duplicates == 0 and result.dead_lettered == 0
    assert stack.emulator_get("drafts") == []


def test_a_429_storm(stack: LocalStack) -> None:
    run = Run(stack, "429-storm", True)
    run.fault(status=429, retryAfter=1, count=25)
    run.enqueue(15)
    result = run.count(run.wait_final())
    assert result.delivered == 15 and result.duplicates == 0 and result.dead_lettered == 0


@pytest.mark.parametrize(
    "service", ["entra.token", "msi.token", "keyvault.getSecret"], ids=["entra", "identity", "key-vault"]
)
def test_a_service_before_graph_down_for_a_while_with_the_secret_rotated(stack: LocalStack, service: str) -> None:
    """The secret is rotated and every token expired, so each host must read Key Vault (through the identity
    endpoint) and ask Entra again, while `service` answers 503 for a while."""
    run = Run(stack, f"down-{service.split('.')[0]}", True)
    new_secret = uuid.uuid4().hex + "~Rotated"
    stack.emulator_post("app-secret", {"clientId": stack.client_id, "secret": new_secret})
    stack.emulator_post("secrets", {"name": "graph-client-secret", "value": new_secret})
    stack.emulator_post("expire-tokens", {})
    stack.emulator_post("faults", {"service": service, "status": 503, "retryAfter": 1, "count": 6})
    run.enqueue(10)
    result = run.count(run.wait_final(timeout=120))
    assert result.delivered == 10 and result.duplicates == 0 and result.dead_lettered == 0
