"""A small function app for the local host's own tests (devstack.host), shaped like the relay's: two queue
triggers, the second on "%HOST_TEST_QUEUE%-retry" (a setting inside a name), and a timer on a setting.

Its functions hold each call at a gate the test opens (`GATE.release(n)`), so a test sees exactly how many
calls the host runs at once; a body of `{"fail": true}` raises, to reach the poison queue; a body of
`{"touch": true}` makes one Storage request of the function's own (its queue's properties, through the connection
in os.environ, as a function reads its settings), for the round-trip counter to tell apart from the host's.
"""

from __future__ import annotations

import json
import os
import threading

import azure.functions as func

app = func.FunctionApp()


class Gate:
    """Counts the calls running now and at most, by function; each call waits until the test lets it go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = threading.Semaphore(0)
        self.running = 0
        self.peak = 0
        self.calls: dict[str, list[str]] = {}  # function name -> message ids, in call order

    def reset(self) -> None:
        with self._lock:
            self._open = threading.Semaphore(0)
            self.running = self.peak = 0
            self.calls = {}

    def release(self, calls: int) -> None:
        """Let `calls` held (or future) calls return."""
        self._open.release(calls)

    def run(self, function: str, msg: func.QueueMessage) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.calls.setdefault(function, []).append(msg.id)
            gate = self._open
        try:
            body = json.loads(msg.get_body())
            if body.get("fail"):
                raise RuntimeError("asked to fail")
            if body.get("touch"):
                from azure.storage.queue import QueueClient

                connection = os.environ["AzureWebJobsStorage"]  # noqa: SIM112 - the Functions setting's name
                QueueClient.from_connection_string(connection, os.environ["HOST_TEST_QUEUE"]).get_queue_properties()
            if not gate.acquire(timeout=30):  # a test that forgot to open the gate fails, it does not hang
                raise RuntimeError("the gate stayed shut")
        finally:
            with self._lock:
                self.running -= 1


GATE = Gate()


@app.queue_trigger(arg_name="msg", queue_name="%HOST_TEST_QUEUE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage) -> None:
    GATE.run("work", msg)


@app.queue_trigger(arg_name="msg", queue_name="%HOST_TEST_QUEUE%-retry", connection="AzureWebJobsStorage")
def work_retry(msg: func.QueueMessage) -> None:
    GATE.run("work_retry", msg)


@app.timer_trigger(arg_name="timer", schedule="%HOST_TEST_SCHEDULE%", run_on_startup=False, use_monitor=False)
def tick(timer: func.TimerRequest) -> None:
    raise AssertionError("the local host does not run timers")
