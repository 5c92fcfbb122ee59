"""The local host (devstack.host) against Azurite, with a small function app of its own (tests/e2e/host_app.py):
how many calls run at once per instance (handed over per function, run in the worker's one thread pool), several
queue triggers, settings inside names, unresolved settings, batch receives and the round-trip counter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from devstack.azurite import Azurite
from devstack.host import HostError, LocalHost, WorkerProcess
from devstack.round_trips import RoundTripCounter, endpoints
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
    env = settings(azurite, queue_name, PYTHON_THREADPOOL_THREAD_COUNT="32")  # the pool is not the bound here
    host = LocalHost(env, host_json(batch_size, threshold), lease_seconds=5, app_module=APP).start()
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


# --- The worker's one thread pool ------------------------------------------------------------------------------

PYTHON_DEFAULT_THREADS = min(32, (getattr(os, "process_cpu_count", os.cpu_count)() or 1) + 4)  # ThreadPoolExecutor's


@pytest.mark.parametrize(
    ("setting", "threads"),
    [("5", 5), ("20", 20), *[(bad_or_unset, PYTHON_DEFAULT_THREADS) for bad_or_unset in (None, "0", "six")]],
)
def test_both_queue_functions_run_in_one_pool_of_python_threadpool_thread_count(
    azurite: Azurite, queue_name: str, caplog: pytest.LogCaptureFixture, setting: str | None, threads: int
) -> None:
    """Each function is handed batchSize + newBatchThreshold = 32 messages; at most `threads` run at once IN ALL,
    as in the worker's one ThreadPoolExecutor; unset, Python's default min(32, CPUs + 4); a value the worker refuses
    (not an integer, below 1) is logged with the worker's words and the default is taken."""
    handed_over = 32
    enqueue(azurite, queue_name, handed_over)
    enqueue(azurite, f"{queue_name}-retry", handed_over)
    env = settings(azurite, queue_name)
    if setting is not None:
        env["PYTHON_THREADPOOL_THREAD_COUNT"] = setting
    caplog.set_level(logging.INFO, logger="devstack.host")
    gate = host_app.GATE
    host = LocalHost(env, host_json(16, 16), lease_seconds=5, app_module=APP).start()
    try:
        steady(threads, "the worker's threads, shared by both functions")
        assert [listener.in_flight for listener in host.listeners] == [handed_over, handed_over]  # all handed over
        gate.release(2 * handed_over)
        wait_for(lambda: sum(lst.counts["completed"] for lst in host.listeners) == 2 * handed_over, 30, "all")
    finally:
        gate.release(2 * handed_over)
        host.stop()
    assert gate.peak == threads
    assert sorted(map(len, gate.calls.values())) == [handed_over, handed_over]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "devstack.host"]
    if setting == "six":
        assert warnings == ["PYTHON_THREADPOOL_THREAD_COUNT must be an integer"]
    elif setting == "0":
        assert warnings == [
            "PYTHON_THREADPOOL_THREAD_COUNT must be set to a value between 1 and sys.maxint. "
            "Reverting to default value for max_workers"
        ]
    else:
        assert warnings == []
    assert f"one thread pool of {threads} threads for every function" in caplog.text


def test_a_message_waiting_for_a_thread_keeps_its_lease_and_runs_once(azurite: Azurite, queue_name: str) -> None:
    """Handed over but queued for the worker's only thread: in flight all the same, its lease renewed."""
    enqueue(azurite, queue_name, 4)
    queue = QueueClient.from_connection_string(azurite.connection_string, queue_name)
    gate = host_app.GATE
    env = settings(azurite, queue_name, PYTHON_THREADPOOL_THREAD_COUNT="1")
    host = LocalHost(env, host_json(4, 0), lease_seconds=2, app_module=APP).start()
    try:
        steady(1, "one thread")
        time.sleep(3)  # beyond the 2 s lease taken at the receive: only renewal keeps the three waiting hidden
        assert queue.peek_messages(max_messages=32) == []
        assert host.listeners[0].in_flight == 4 or host.listeners[1].in_flight == 4
        gate.release(4)
        wait_for(lambda: sum(lst.counts["completed"] for lst in host.listeners) == 4, 20, "the four messages")
    finally:
        gate.release(4)
        host.stop()
    assert len(gate.calls["work"]) == 4 == len(set(gate.calls["work"]))  # each once
    assert gate.peak == 1


@pytest.mark.parametrize("count", ["2", "10", "0", "two"])
def test_a_worker_process_count_other_than_one_is_refused_before_any_queue_is_touched(
    azurite: Azurite, queue_name: str, count: str
) -> None:
    env = settings(azurite, queue_name, FUNCTIONS_WORKER_PROCESS_COUNT=count)
    with pytest.raises(HostError, match=rf"FUNCTIONS_WORKER_PROCESS_COUNT='{count}': the local host runs one worker"):
        LocalHost(env, host_json(1, 0), lease_seconds=5, app_module=APP).start()
    with pytest.raises(ResourceNotFoundError):
        QueueClient.from_connection_string(azurite.connection_string, queue_name).get_queue_properties()
    WorkerProcess({"FUNCTIONS_WORKER_PROCESS_COUNT": "1"}).shutdown()  # one, the default, is what it runs


# --- Receives in batches, and the round trips counted --------------------------------------------------------


def test_one_receive_request_brings_a_whole_batch_and_round_trips_are_counted_host_apart_from_function(
    azurite: Azurite, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four visible messages, batchSize 4: ONE GetMessages request returns all four (the v5 extension's one
    ReceiveMessagesAsync(BatchSize)), not four of one message each (azure-storage-queue's default page of 1). The
    counter sees every request: the host's receives, one per receive the listeners made, and four deletes; the
    two requests the functions made themselves count as theirs."""
    enqueue(azurite, queue_name, 2)
    enqueue(azurite, queue_name, 2, touch=True)
    env = settings(azurite, queue_name, PYTHON_THREADPOOL_THREAD_COUNT="8")
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the functions read their settings from os.environ, as in Azure
    host_app.GATE.release(4)
    counter = RoundTripCounter(endpoints(azurite.connection_string)).install()
    try:
        host = LocalHost(env, host_json(4, 0), lease_seconds=5, app_module=APP).start()
        listeners = list(host.listeners)
        (work,) = [listener for listener in listeners if listener.function_name == "work"]
        try:
            wait_for(lambda: work.counts["completed"] == 4, 20, "the four messages")
        finally:
            host.stop()
    finally:
        counter.uninstall()
    counts = counter.snapshot()
    host_queue, function_queue = counts["host"]["queue"], counts["function"]["queue"]
    assert work.counts["receives"] - work.counts["emptyReceives"] == 1  # the four came in one receive
    assert host_queue["receive"] == sum(listener.counts["receives"] for listener in listeners)  # one request each
    assert host_queue["delete"] == 4
    assert function_queue == {"properties": 2}
    assert set(counts) == {"host", "function"} and set(counts["function"]) == {"queue"}
