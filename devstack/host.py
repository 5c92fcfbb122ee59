"""A small local stand-in for the Azure Functions host: runs function_app.py's queue triggers on Azurite.

It reads host.json's `extensions.queues` and gives each queue-triggered function the host's semantics
(Microsoft.Azure.WebJobs.Extensions.Storage.Queues v5), so the relay meets locally what it meets in Azure:

- receive up to `batchSize` messages in ONE request (GetMessages with numofmessages) under a lease (the real
  host: 10 minutes, renewed while the function runs; here `lease_seconds`, also renewed), hand them to the
  worker, and fetch again once no more than `newBatchThreshold` are in flight: up to
  `batchSize + newBatchThreshold` handed over at once per queue function; an empty queue is polled with
  exponential back-off up to `maxPollingInterval`;
- decode each message per `messageEncoding`; text that is not base64 goes to `<queue>-poison` at once,
  without calling the function (as the v5 extension does);
- call the function with an `azure.functions.queue.QueueMessage` (the one with `dequeue_count`);
- success: delete the message. Exception: once `dequeue_count` reaches `maxDequeueCount`, copy the raw
  message text to `<queue>-poison` and delete it (the host's poison move), else make it visible again
  after `visibilityTimeout`.

The functions run as the Python worker runs them (WorkerProcess below): every synchronous function of the app in
ONE thread pool of PYTHON_THREADPOOL_THREAD_COUNT threads (Python's default, min(32, cpu_count + 4), when unset).
So a message handed over may wait for a thread; it is in flight all the same (leased, counted, renewed), as in
Azure, where the host hands over and the worker queues the invocation. One worker process per host:
FUNCTIONS_WORKER_PROCESS_COUNT other than 1 is refused (see WorkerProcess).

Every queue trigger gets its own listener (the relay has two: the outbox and `<outbox>-retry`). A
binding's values may hold `%SETTING%`, alone or inside a name ("%MAIL_QUEUE_NAME%-retry"), resolved
from the environment; as the real host, start() refuses when one does not resolve, timers' schedules
included, before any listener starts. The connection named by the binding (`AzureWebJobsStorage`) must
be a connection string. The queues and their poison queues are created if missing. One log line per
message outcome, with ids and counts, never a body.

Only queue triggers run here; other triggers (timers) are listed and skipped (devstack.timers runs one).

    host = LocalHost(lease_seconds=5)   # env: os.environ; host_json: the repository's host.json
    host.start()                        # polls in background threads
    host.stop()                         # no new receives; waits for the messages in flight

`app_module` names the module whose `app` is indexed (default function_app; the tests use a small app).

`python -m devstack.host [--host-json PATH] [--lease-seconds N]` runs until SIGTERM or SIGINT, stops
gracefully and exits 0. Settings come from the environment, as in Azure. With DEVSTACK_ROUND_TRIPS_DIR set it
counts its Storage round trips (the host's and the functions', by service and operation) and writes them there
when it stops (devstack.round_trips; the benchmark reads them).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from devstack import round_trips
from devstack.functions import APP_MODULE
from devstack.round_trips import host_calls

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

    from devstack.functions import IndexedFunction

ROOT = Path(__file__).resolve().parents[1]
HOST_JSON = ROOT / "host.json"
DEFAULT_LEASE_SECONDS = 600  # the real host's lease on a message it runs (renewed while it runs)
MIN_POLLING_INTERVAL = 0.1  # the real host's first back-off step on an empty queue

log = logging.getLogger("devstack.host")


class HostError(RuntimeError):
    pass


# --- host.json -----------------------------------------------------------------------------------

_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


def timespan_seconds(value: Any, *, numbers_are_ms: bool = False) -> float:
    """A .NET TimeSpan from host.json ("00:00:02", "1.00:00:00") in seconds; a bare number is ms or s."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 1000 if numbers_are_ms else float(value)
    match = _TIMESPAN.match(str(value).strip())
    if not match:
        raise HostError(f"host.json: {value!r} is not a TimeSpan (hh:mm:ss)")
    days = int(match["d"] or 0)
    return days * 86400 + int(match["h"]) * 3600 + int(match["m"]) * 60 + float(match["s"])


@dataclass(frozen=True)
class QueueOptions:
    """host.json's extensions.queues, with the v5 extension's defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8 * (os.cpu_count() or 1)  # batchSize / 2 times the cores
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    max_polling_interval: float = 60.0
    message_encoding: str = "base64"

    @classmethod
    def from_host_json(cls, host_json: Mapping[str, Any]) -> QueueOptions:
        queues = host_json.get("extensions", {}).get("queues", {})
        batch_size = int(queues.get("batchSize", 16))
        threshold = queues.get("newBatchThreshold")
        encoding = str(queues.get("messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise HostError(f"host.json: messageEncoding must be base64 or none, got {encoding!r}")
        if not 1 <= batch_size <= 32:
            raise HostError(f"host.json: batchSize must be 1 to 32 (Storage's limit), got {batch_size}")
        return cls(
            batch_size=batch_size,
            new_batch_threshold=int(threshold) if threshold is not None else batch_size // 2 * (os.cpu_count() or 1),
            visibility_timeout=timespan_seconds(queues.get("visibilityTimeout", 0)),
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            # Older host.json files give this one in milliseconds.
            max_polling_interval=timespan_seconds(queues.get("maxPollingInterval", 60000), numbers_are_ms=True),
            message_encoding=encoding,
        )


def resolve(value: str, env: Mapping[str, str]) -> str:
    """Replace each %SETTING% with its value, as the host does in binding expressions."""

    def setting(match: re.Match[str]) -> str:
        name = match[1]
        if not env.get(name):
            raise HostError(f"the binding refers to %{name}%, and no setting {name} is set")
        return env[name]

    return re.sub(r"%([^%]+)%", setting, value)


# --- The worker process: one thread pool for every synchronous function --------------------------

THREAD_COUNT_SETTING = "PYTHON_THREADPOOL_THREAD_COUNT"
PROCESS_COUNT_SETTING = "FUNCTIONS_WORKER_PROCESS_COUNT"


def sync_pool_max_workers(env: Mapping[str, str]) -> int | None:
    """`max_workers` for the worker's thread pool, as azure-functions-python-worker reads it on Python 3.9 and later
    (azure_functions_worker/dispatcher.py, `Dispatcher._get_sync_tp_max_workers`, with utils/common.py's
    `get_app_setting`; constants.py: PYTHON_THREADPOOL_THREAD_COUNT_MIN = 1, MAX = sys.maxsize, the cap of 32
    applying to Python 3.7 and older only):

    - unset: None, so ThreadPoolExecutor takes Python's default, min(32, os.cpu_count() + 4) on 3.8 to 3.12
      (min(32, os.process_cpu_count() + 4) from 3.13);
    - not an integer: the worker logs "PYTHON_THREADPOOL_THREAD_COUNT must be an integer" and takes the default;
    - below 1: it logs "... must be set to a value between 1 and sys.maxint. Reverting to default value for
      max_workers" and takes the default;
    - otherwise that many, with no upper bound (Microsoft's app settings reference still gives 32 as the maximum).

    Microsoft's "Improve throughput performance of Python apps in Azure Functions"
    (https://learn.microsoft.com/azure/azure-functions/python-scale-performance-reference, "Set up max workers
    within a language worker process"): a function without `async` runs in the worker's ThreadPoolExecutor, whose
    max_workers PYTHON_THREADPOOL_THREAD_COUNT sets, per worker process; "For Python version 3.9, max_worker is set
    to None"."""
    value = env.get(THREAD_COUNT_SETTING)
    if value is None:
        return None
    try:
        count = int(value)
    except ValueError:
        log.warning("%s must be an integer", THREAD_COUNT_SETTING)  # the worker's own words
        return None
    if count < 1:
        log.warning(
            "%s must be set to a value between 1 and sys.maxint. Reverting to default value for max_workers",
            THREAD_COUNT_SETTING,
        )
        return None
    return count


class WorkerProcess:
    """One Python worker process of a host: the thread pool every synchronous function of the app runs in.

    The worker creates ONE ThreadPoolExecutor per process and runs each invocation of a synchronous function in it
    (`loop.run_in_executor(self._sync_call_tp, ...)` in dispatcher.py's `_handle__invocation_request`): the
    outbox's and the retry queue's functions (and timers, in Azure; the local host runs none) compete for the same
    threads. A message the host has handed over waits in the executor's queue for a thread; the host's lease on it
    is renewed meanwhile, as in Azure.

    FUNCTIONS_WORKER_PROCESS_COUNT (default 1, at most 10: Microsoft's app settings reference and the page above,
    "Use multiple language worker processes") would give each process its own pool and its own module state. The
    relay deploys to Flex Consumption, where that setting is not valid (flex-consumption-plan.md, "Deprecated
    properties and settings": "FUNCTIONS_WORKER_PROCESS_COUNT | Setting not valid"; functions-app-settings.md,
    "Flex Consumption plan deprecations"), so the local host models one worker process and refuses any other
    count, naming the setting; several hosts (`LocalStack(instances=N)`, `mailrelay local --instances N`) are how
    several processes, each with its own pool and module state, run locally."""

    def __init__(self, env: Mapping[str, str]) -> None:
        processes = env.get(PROCESS_COUNT_SETTING)
        if processes is not None and processes.strip() != "1":
            raise HostError(
                f"{PROCESS_COUNT_SETTING}={processes!r}: the local host runs one worker process, as Flex Consumption "
                "does (the setting is not valid there); raise PYTHON_THREADPOOL_THREAD_COUNT for more at once in "
                "one process, or run several hosts (mailrelay local --instances N)"
            )
        self.setting = env.get(THREAD_COUNT_SETTING)
        self._executor = ThreadPoolExecutor(sync_pool_max_workers(env), thread_name_prefix="worker-sync")
        # What the worker logs as "sync threadpool max workers": the executor's own figure
        # (Dispatcher.get_sync_tp_workers_set reads the same private attribute).
        self.thread_count: int = self._executor._max_workers

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._executor.submit(fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


def deployment_thread_count(host_json: Path = HOST_JSON, app_module: str = APP_MODULE) -> int:
    """PYTHON_THREADPOOL_THREAD_COUNT as the deployment sets it: every message the host can hand over at once,
    batchSize + newBatchThreshold for each queue-triggered function (2 x (8 + 4) = 24 for the relay), so the pool
    is never the lower bound. Computed from host.json and the app, so the two cannot drift apart."""
    from devstack.functions import indexed

    options = QueueOptions.from_host_json(json.loads(Path(host_json).read_text(encoding="utf-8")))
    queue_functions = sum(1 for fn in indexed(app_module).values() if fn.trigger["type"] == "queueTrigger")
    return queue_functions * (options.batch_size + options.new_batch_threshold)


# --- One queue, one function ---------------------------------------------------------------------


class _Lease:
    """A message being run: its current pop receipt (renewing changes it) and whether it is settled."""

    def __init__(self, message: QueueMessage, lease_seconds: float) -> None:
        self.message = message
        self.pop_receipt: str = message.pop_receipt or ""
        self.renew_at = time.monotonic() + lease_seconds / 2
        self.lock = threading.Lock()
        self.settled = False


class QueueListener:
    """Polls one queue for one function with the host's semantics."""

    def __init__(
        self,
        function_name: str,
        call: Callable[[Any], Any],
        queue: QueueClient,
        poison: QueueClient,
        options: QueueOptions,
        lease_seconds: float,
        worker: WorkerProcess | None = None,
    ) -> None:
        """`worker`: the host's worker process, whose thread pool runs the function (shared with the host's other
        functions); without one, the listener starts a worker process of its own from os.environ."""
        self.function_name = function_name
        self.call = call
        self.queue = queue
        self.poison = poison
        self.options = options
        self.lease_seconds = lease_seconds
        self._stopping = threading.Event()  # no new receives
        self._drained = threading.Event()  # nothing in flight any more: stop renewing
        self._in_flight: dict[str, _Lease] = {}
        self._changed = threading.Condition()
        # The real host fetches a new batch once in-flight messages drop to newBatchThreshold, so up to
        # batchSize + newBatchThreshold run at once per instance ("The maximum number of messages processed
        # in parallel by the job is NewBatchThreshold plus BatchSize": QueuesOptions.BatchSize in
        # Microsoft.Azure.WebJobs.Extensions.Storage.Queues 5.x, https://azuresdkdocs.z19.web.core.windows.net/
        # dotnet/Microsoft.Azure.WebJobs.Extensions.Storage.Queues/5.3.3/api/Microsoft.Azure.WebJobs.Host/
        # Microsoft.Azure.WebJobs.Host.QueuesOptions.html; host.json's extensions.queues:
        # https://learn.microsoft.com/en-us/azure/azure-functions/functions-bindings-storage-queue#host-json).
        # The poller's wait on newBatchThreshold keeps it there; how many of them RUN at once is the worker's
        # thread pool's to say (WorkerProcess), shared with the host's other functions.
        self._owns_worker = worker is None
        self.worker = worker if worker is not None else WorkerProcess(os.environ)
        self._threads: list[threading.Thread] = []
        # Outcomes, and the GetMessages requests made (those that found the queue empty apart: idle polling costs
        # round trips by the second, not by the message).
        self.counts: dict[str, int] = {"completed": 0, "failed": 0, "poisoned": 0, "receives": 0, "emptyReceives": 0}

    @property
    def queue_name(self) -> str:
        return str(self.queue.queue_name)

    @property
    def in_flight(self) -> int:
        """Messages handed over and not yet settled: running, or waiting for one of the worker's threads."""
        with self._changed:
            return len(self._in_flight)

    def start(self) -> None:
        for queue in (self.queue, self.poison):
            with host_calls():
                _create_if_missing(queue)
        for target, name in ((self._poll, "poll"), (self._renew, "renew")):
            thread = threading.Thread(target=target, name=f"{name}-{self.queue_name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("polling queue %s for function %s", self.queue_name, self.function_name)

    def stop_receiving(self) -> None:
        """No new receive from now on (a receive under way still hands its batch over)."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Receive nothing more, let the messages in flight finish, then stop renewing."""
        self.stop_receiving()
        if self._threads:
            self._threads[0].join(timeout)  # the poller: after this no new message is handed over
        with self._changed:
            # The worker's pool runs on for the host's other functions: wait for this one's messages only.
            self._changed.wait_for(lambda: not self._in_flight, timeout)
        if self._owns_worker:
            self.worker.shutdown()
        self._drained.set()
        if len(self._threads) > 1:
            self._threads[1].join(timeout)

    # The poll loop ------------------------------------------------------------------------------

    def _poll(self) -> None:
        delay = MIN_POLLING_INTERVAL
        while not self._stopping.is_set():
            with self._changed:
                # Like the host: fetch a new batch only once in-flight work is down to newBatchThreshold.
                self._changed.wait_for(
                    lambda: self._stopping.is_set() or len(self._in_flight) <= self.options.new_batch_threshold
                )
            if self._stopping.is_set():
                break
            try:
                batch = self._receive()
            except Exception as e:
                log.warning("receiving from %s failed: %s; backing off", self.queue_name, type(e).__name__)
                batch = []
            if not batch:
                self._stopping.wait(delay)
                delay = min(delay * 2, self.options.max_polling_interval)
                continue
            delay = MIN_POLLING_INTERVAL
            for message in batch:
                lease = _Lease(message, self.lease_seconds)
                with self._changed:
                    self._in_flight[message.id] = lease
                self.worker.submit(self._run, lease)

    def _receive(self) -> list[QueueMessage]:
        """One GetMessages request for up to batchSize messages, as the v5 extension's QueueListener makes it
        (`_queue.ReceiveMessagesAsync(_queueProcessor.QueuesOptions.BatchSize, _visibilityTimeout, ...)`,
        Azure/azure-sdk-for-net, sdk/storage/Microsoft.Azure.WebJobs.Extensions.Storage.Queues/src/Listeners/
        QueueListener.cs). azure-storage-queue needs `messages_per_page` for that: without it, `receive_messages`
        asks for ONE message per request ("By default, a single message is retrieved from the queue with this
        operation"; MessagesPaged sets results_per_page to 1 when only max_messages is given) and keeps asking
        until max_messages or an empty answer: batchSize + 1 round trips for a full batch. The first page alone is
        the one request."""
        pages = self.queue.receive_messages(
            messages_per_page=self.options.batch_size,
            max_messages=self.options.batch_size,
            visibility_timeout=int(self.lease_seconds),
        ).by_page()
        with host_calls():
            batch = list(next(pages, []))
        self._count("receives")
        if not batch:
            self._count("emptyReceives")
        return batch

    def _renew(self) -> None:
        # The host keeps its lease while the function runs, so a slow function is not run twice at once.
        interval = max(self.lease_seconds / 4, 0.25)
        while not self._drained.wait(interval):
            with self._changed:
                leases = list(self._in_flight.values())
            for lease in leases:
                if time.monotonic() < lease.renew_at:
                    continue
                with lease.lock, host_calls():
                    if lease.settled:
                        continue
                    try:
                        updated = self.queue.update_message(
                            lease.message.id, pop_receipt=lease.pop_receipt, visibility_timeout=int(self.lease_seconds)
                        )
                    except Exception as e:
                        log.warning("renewing the lease on message %s failed: %s", lease.message.id, type(e).__name__)
                        continue
                    lease.pop_receipt = updated.pop_receipt or lease.pop_receipt
                    lease.renew_at = time.monotonic() + self.lease_seconds / 2

    # One message ---------------------------------------------------------------------------------

    def _count(self, outcome: str) -> None:
        with self._changed:
            self.counts[outcome] += 1

    def _run(self, lease: _Lease) -> None:
        try:
            self._process(lease)
        except Exception as e:  # storage trouble while settling: the lease runs out and it comes back
            log.error("settling message %s failed: %s", lease.message.id, type(e).__name__)
        finally:
            with self._changed:
                self._in_flight.pop(lease.message.id, None)
                self._changed.notify_all()

    def _process(self, lease: _Lease) -> None:
        from azure.functions.queue import QueueMessage as FunctionQueueMessage

        message = lease.message
        text = message.content if isinstance(message.content, str) else str(message.content or "")
        ids = f"message {message.id} (dequeue count {message.dequeue_count})"
        if self.options.message_encoding == "base64":
            try:
                body = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                # The v5 extension moves undecodable text to the poison queue at once: no retry can fix it.
                self._settle(lease, poison=text)
                log.error(
                    "%s: not base64; moved to %s without calling %s", ids, self.poison.queue_name, self.function_name
                )
                self._count("poisoned")
                return
        else:
            body = text.encode("utf-8")
        msg = FunctionQueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            pop_receipt=lease.pop_receipt,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
            time_next_visible=message.next_visible_on,
        )
        started = time.monotonic()
        try:
            self.call(msg)
        except Exception as e:
            # The type and first line only: the relay's own errors carry no message content.
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            if (message.dequeue_count or 0) >= self.options.max_dequeue_count:
                self._settle(lease, poison=text)
                log.error(
                    "%s: %s failed (%s); moved to %s after %d tries",
                    ids,
                    self.function_name,
                    reason,
                    self.poison.queue_name,
                    message.dequeue_count,
                )
                self._count("poisoned")
            else:
                self._settle(lease, retry=True)
                log.warning(
                    "%s: %s failed (%s); visible again in %g s",
                    ids,
                    self.function_name,
                    reason,
                    self.options.visibility_timeout,
                )
                self._count("failed")
            return
        self._settle(lease)
        log.info("%s: %s completed in %.0f ms", ids, self.function_name, (time.monotonic() - started) * 1000)
        self._count("completed")

    def _settle(self, lease: _Lease, *, poison: str | None = None, retry: bool = False) -> None:
        with lease.lock, host_calls():
            lease.settled = True
            if retry:
                self.queue.update_message(
                    lease.message.id,
                    pop_receipt=lease.pop_receipt,
                    visibility_timeout=int(self.options.visibility_timeout),
                )
                return
            if poison is not None:
                # Copy before delete: a crash in between leaves a duplicate in the poison queue, never a loss.
                self.poison.send_message(poison, time_to_live=-1)
            self.queue.delete_message(lease.message.id, lease.pop_receipt)


def _bind(function: Callable[..., Any], arg_name: str) -> Callable[[Any], Any]:
    """The user function called as the host calls it: the message passed by its binding's name."""

    def call(message: Any) -> Any:
        return function(**{arg_name: message})

    return call


def _queue_client(connection_string: str, queue_name: str) -> QueueClient:
    """A client that gives up on Storage within about a second. The poll loop retries with its own back-off,
    and a settle that fails leaves the message to come back after its lease; the SDK's default policy (three
    tries, 15 s apart and growing) held a host that had lost Azurite in one call for 87 s, and its stop with it."""
    from azure.storage.queue import LinearRetry, QueueClient

    policy = LinearRetry(backoff=0.5, retry_total=2, random_jitter_range=0)
    return QueueClient.from_connection_string(connection_string, queue_name, retry_policy=policy)


def _create_if_missing(queue: QueueClient) -> None:
    from azure.core.exceptions import ResourceExistsError

    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()


# --- The host ------------------------------------------------------------------------------------


class LocalHost:
    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        host_json: Mapping[str, Any] | str | Path | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        app_module: str = APP_MODULE,
    ) -> None:
        """`env`: where binding expressions and connections are resolved (default os.environ; the functions
        themselves read os.environ, as in Azure). `host_json`: a dict or a path (default the repo's).
        `app_module`: the module whose `app` (an azure.functions.FunctionApp) is run."""
        self.env = os.environ if env is None else env
        if host_json is None or isinstance(host_json, str | Path):
            host_json = dict(json.loads(Path(host_json or HOST_JSON).read_text(encoding="utf-8")))
        assert isinstance(host_json, Mapping)
        self.options = QueueOptions.from_host_json(host_json)
        if lease_seconds < 1:
            raise HostError("lease_seconds must be at least 1 (Storage's unit is the second)")
        self.lease_seconds = lease_seconds
        self.app_module = app_module
        self.listeners: list[QueueListener] = []
        self.worker: WorkerProcess | None = None

    def triggers(self) -> list[tuple[IndexedFunction, dict[str, Any]]]:
        """Each function with its trigger binding, every `%SETTING%` in it resolved.

        The real host resolves binding expressions while indexing and refuses to start a function whose
        `%NAME%` is not an app setting ("'%NAME%' does not resolve to a value"), timers included: here
        the whole start fails, before any listener polls, naming the function and the setting."""
        from devstack.functions import indexed

        out = []
        for fn in indexed(self.app_module).values():
            try:
                trigger = {k: resolve(v, self.env) if isinstance(v, str) else v for k, v in fn.trigger.items()}
            except HostError as e:
                raise HostError(f"function {fn.name}: {e}") from None
            out.append((fn, trigger))
        return out

    def start(self) -> LocalHost:
        listeners = []
        triggers = self.triggers()
        # The worker reads its settings as it starts, before any function runs; a refused one stops the start
        # before any queue is touched.
        worker = self.worker = WorkerProcess(self.env)
        log.info(
            "worker process: one thread pool of %d threads for every function (%s)",
            worker.thread_count,
            f"{THREAD_COUNT_SETTING}={worker.setting}"
            if worker.setting is not None
            else f"{THREAD_COUNT_SETTING} unset: Python's default, min(32, CPUs + 4)",
        )
        for fn, trigger in triggers:
            if trigger["type"] != "queueTrigger":
                detail = f" (schedule {trigger['schedule']})" if "schedule" in trigger else ""
                log.info("function %s has a %s%s: not run by the local host", fn.name, trigger["type"], detail)
                continue
            queue_name = trigger["queueName"]
            connection = trigger.get("connection") or "AzureWebJobsStorage"
            conn_str = self.env.get(connection, "")
            if not conn_str:
                raise HostError(f"the local host needs a connection string in {connection} (Azurite's)")
            listeners.append(
                QueueListener(
                    fn.name,
                    _bind(fn.call, trigger["name"]),
                    _queue_client(conn_str, queue_name),
                    _queue_client(conn_str, f"{queue_name}-poison"),
                    self.options,
                    self.lease_seconds,
                    worker,
                )
            )
        try:
            for listener in listeners:
                listener.start()
                self.listeners.append(listener)
        except BaseException:
            self.stop()  # the ones that did start: none is left polling behind a failed start
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        for listener in self.listeners:
            listener.stop_receiving()  # every function at once: none goes on receiving while another drains
        for listener in self.listeners:
            listener.stop(timeout)
        self.listeners = []
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.host", description=__doc__.split("\n")[0])
    parser.add_argument("--host-json", type=Path, default=HOST_JSON)
    parser.add_argument("--lease-seconds", type=float, default=DEFAULT_LEASE_SECONDS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDKs' HTTP logging would print every request: keep it to warnings.
    logging.getLogger("azure").setLevel(logging.WARNING)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    counter = None
    count_dir = os.environ.get(round_trips.ENV)
    if count_dir:
        connection = "AzureWebJobsStorage"  # the relay's bindings' connection: Storage's endpoints are its
        counter = round_trips.RoundTripCounter(round_trips.endpoints(os.environ.get(connection, ""))).install()
    host = LocalHost(host_json=args.host_json, lease_seconds=args.lease_seconds).start()
    log.info("local host ready (pid %d)", os.getpid())
    while not stop.wait(0.5):  # a timed wait, so the signal handler runs promptly
        pass
    log.info("stopping: finishing the messages in flight")
    listeners = list(host.listeners)
    thread_count = host.worker.thread_count if host.worker else None
    host.stop()
    if counter is not None and count_dir:
        # Written after the stop: the last messages' deletes and outcomes are in.
        functions = {listener.function_name: dict(listener.counts) for listener in listeners}
        path = counter.write(count_dir, {"functions": functions, "threadCount": thread_count})
        log.info("round trips written to %s", path)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
