"""The local host (devstack.host) against Azurite, with a small function app of its own (tests/e2e/host_app.py):
how many calls run at once per instance, several queue triggers, settings inside names, unresolved settings.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from devstack.azurite import Azurite
from devstack.host import HostError, LocalHost
from shared.queues import encode
from tests.e2e import host_app
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

APP = "tests.e2e.host_app"
SCHEDULE = "0 */5 * * * *"


@pytest.fixture
def queue_name(azurite: Azurite) -> Iterator[str]:
    name = f"host-{uuid.uuid4().hex[:12]}"
    host_app.GATE.reset()
    yield name
    host_app.GATE.release(1000)  # nothing left waiting at the gate, whatever the test did


def settings(azurite: Azurite, queue_name: str, **extra: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "HOST_TEST_QUEUE": queue_name,
        "HOST_TEST_SCHEDULE": SCHEDULE,
        **extra,
    }


def host_json(batch_size: int, threshold: int, max_dequeue_count: int = 5) -> dict[str, Any]:
    return {
        "extensions": {
            "queues": {
                "batchSize": batch_size,
                "newBatchThreshold": threshold,
                "maxPollingInterval": "00:00:00.200",
                "visibilityTimeout": "00:00:00",
                "maxDequeueCount": max_dequeue_count,
            }
        }
    }


def enqueue(azurite: Azurite, queue_name: str, count: int, **body: Any) -> None:
    queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
    for i in range(count):
        queue.send_message(encode({"n": i, **body}), time_to_live=-1)


def steady(expected: int, what: str) -> None:
    """`expected` calls at the gate now, and still after several polling intervals (no late fetch)."""
    gate = host_app.GATE
    wait_for(lambda: gate.running == expected, 15, f"{expected} calls at once ({what})")
    time.sleep(1.0)  # five of the host's polling intervals: a fetch it should not make would show now
    assert gate.running == expected, what


@pytest.mark.parametrize(("batch_size", "threshold"), [(4, 2), (1, 0)])
def test_an_instance_runs_batch_size_plus_new_batch_threshold_calls_at_once(
    azurite: Azurite, queue_name: str, batch_size: int, threshold: int
) -> None:
    """As Microsoft.Azure.WebJobs.Extensions.Storage.Queues: a batch of batchSize, and a new one only once the
    calls in flight are down to newBatchThreshold, so at most batchSize + newBatchThreshold at once."""
    total = 3 * (batch_size + threshold)
    enqueue(azurite, queue_name, total)
    gate = host_app.GATE
    host = LocalHost(
        settings(azurite, queue_name), host_json(batch_size, threshold), lease_seconds=5, app_module=APP
    ).start()
    try:
        steady(batch_size, "the first batch, more than newBatchThreshold in flight: no new fetch")
        gate.release(batch_size - threshold)  # down to newBatchThreshold in flight: the next batch comes
        steady(batch_size + threshold, "a second batch beside the calls still held")
        gate.release(total)
        (work,) = [listener for listener in host.listeners if listener.function_name == "work"]
        wait_for(lambda: work.counts["completed"] == total, 30, "every message")
    finally:
        gate.release(total)
        host.stop()
    assert gate.peak == batch_size + threshold
    assert len(gate.calls["work"]) == total == len(set(gate.calls["work"]))  # each message once


def test_every_queue_trigger_runs_with_settings_inside_its_queue_name(
    azurite: Azurite, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    retry_queue = f"{queue_name}-retry"
    enqueue(azurite, queue_name, 2)
    enqueue(azurite, retry_queue, 1)
    enqueue(azurite, retry_queue, 1, fail=True)
    host_app.GATE.release(10)
    caplog.set_level(logging.INFO, logger="devstack.host")
    host = LocalHost(
        settings(azurite, queue_name), host_json(2, 1, max_dequeue_count=1), lease_seconds=5, app_module=APP
    ).start()
    retry_poison = QueueClient.from_connection_string(azurite.connection_string, f"{retry_queue}-poison")
    try:
        assert sorted(listener.queue_name for listener in host.listeners) == [queue_name, retry_queue]
        wait_for(
            lambda: sum(listener.counts["completed"] + listener.counts["poisoned"] for listener in host.listeners) == 4,
            20,
            "the four messages",
        )
    finally:
        host.stop()
    calls = host_app.GATE.calls
    assert (len(calls["work"]), len(calls["work_retry"])) == (2, 2)
    # A failure on "<queue>-retry" ends in "<queue>-retry-poison": the relay's name for its retries' dead letters.
    (dead,) = retry_poison.peek_messages()
    assert dead.content == encode({"n": 0, "fail": True})
    timers = [r.getMessage() for r in caplog.records if "timerTrigger" in r.getMessage()]
    assert timers == [f"function tick has a timerTrigger (schedule {SCHEDULE}): not run by the local host"]


def test_a_setting_a_binding_names_but_nobody_set_stops_the_start_before_any_queue_is_touched(
    azurite: Azurite, queue_name: str
) -> None:
    env = settings(azurite, queue_name)
    del env["HOST_TEST_SCHEDULE"]  # the timer's: the real host refuses to index it, so does this one
    with pytest.raises(HostError, match=r"function tick: .*%HOST_TEST_SCHEDULE%"):
        LocalHost(env, host_json(1, 0), lease_seconds=5, app_module=APP).start()
    with pytest.raises(ResourceNotFoundError):
        QueueClient.from_connection_string(azurite.connection_string, queue_name).get_queue_properties()
