"""function_app.py as the Functions host calls it: a QueueMessage in, a dead letter or an exception out."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.functions.queue import QueueMessage

from shared import bootstrap
from shared.bootstrap import Runtime
from shared.sending import Relay
from shared.settings import load_settings
from shared.status import MemoryStatusStore
from tests.fakes import FakeDeadLetters, FakeGraph, FakeRequeue, FakeTokens, graph_error
from tests.unit.test_settings import GOOD


@pytest.fixture
def fakes() -> Iterator[tuple[FakeGraph, FakeDeadLetters]]:
    graph, dead = FakeGraph(), FakeDeadLetters()
    relay = Relay(allowed_senders=frozenset({"alerts@contoso.com"}), tokens=FakeTokens(), graph=graph)
    bootstrap._runtime = Runtime(
        settings=load_settings(GOOD),
        relay=relay,
        dead_letters=dead,
        retries=FakeRequeue(),
        status=MemoryStatusStore(),
    )
    yield graph, dead
    bootstrap.reset()


def message(payload: dict[str, object] | str, dequeue_count: int = 1) -> QueueMessage:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return QueueMessage(id="msg-1", body=body.encode(), dequeue_count=dequeue_count, pop_receipt="pr")


REQUEST = {
    "from": "alerts@contoso.com",
    "to": ["ops@contoso.com"],
    "subject": "Backup done",
    "body": {"contentType": "text", "content": "secret-body-text 42"},
}


def test_trigger_is_bound_to_the_mail_queue_setting(indexed: dict[str, Any]) -> None:
    bindings = indexed["send_mail"].trigger
    assert bindings["type"] == "queueTrigger"
    assert bindings["queueName"] == "%MAIL_QUEUE_NAME%"
    assert bindings["connection"] == "AzureWebJobsStorage"


def test_the_retry_trigger_reads_the_queue_the_settings_name(indexed: dict[str, Any]) -> None:
    from devstack.host import resolve

    bindings = indexed["retry_mail"].trigger
    assert bindings["type"] == "queueTrigger" and bindings["connection"] == "AzureWebJobsStorage"
    settings = load_settings({**GOOD, "MAIL_QUEUE_NAME": "relay-out"})
    assert resolve(bindings["queueName"], {"MAIL_QUEUE_NAME": "relay-out"}) == settings.retry_queue_name


def test_the_cleanup_timer_runs_on_its_setting(indexed: dict[str, Any]) -> None:
    assert indexed["clean_status_records"].trigger["schedule"] == "%STATUS_CLEANUP_SCHEDULE%"


def test_the_queue_depth_timer_runs_on_its_setting(indexed: dict[str, Any]) -> None:
    assert indexed["record_queue_depths"].trigger["schedule"] == "%QUEUE_DEPTH_SCHEDULE%"


def test_sent_request_completes_without_dead_letter(
    functions: dict[str, Callable[..., None]], fakes: tuple[FakeGraph, FakeDeadLetters]
) -> None:
    graph, dead = fakes
    functions["send_mail"](message(REQUEST))
    assert len(graph.calls) == 1 and dead.envelopes == []


def test_permanent_failure_is_dead_lettered_with_the_request_and_completes(
    functions: dict[str, Callable[..., None]],
    fakes: tuple[FakeGraph, FakeDeadLetters],
    caplog: pytest.LogCaptureFixture,
) -> None:
    graph, dead = fakes
    graph.replies.append(graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."))
    with caplog.at_level(logging.INFO):
        functions["send_mail"](message(REQUEST, dequeue_count=2))
    (envelope,) = dead.envelopes
    assert envelope["request"] == REQUEST
    assert envelope["error"]["code"] == "ErrorAccessDenied" and "Exchange scope" in envelope["error"]["hint"]
    assert envelope["attempts"] == 1  # one sendMail call was made
    assert "secret-body-text" not in caplog.text
    (line,) = [r for r in caplog.records if getattr(r, "event", None) == "mail.deadlettered"]
    # Application Insights gets only the text from the Python worker: the alert rule matches its start.
    assert line.getMessage().startswith("mail.deadlettered: ErrorAccessDenied [")
    assert "queueMessageId=msg-1" in line.getMessage()


def test_transient_failure_goes_to_the_retry_queue_and_its_function_sends_it(
    functions: dict[str, Callable[..., None]], fakes: tuple[FakeGraph, FakeDeadLetters]
) -> None:
    graph, dead = fakes
    graph.replies.append(graph_error(429, "ApplicationThrottled", "slow down", retry_after="5"))
    functions["send_mail"](message(REQUEST))  # returns: the host deletes the original
    assert dead.envelopes == []
    retries = bootstrap.runtime().retries
    assert isinstance(retries, FakeRequeue)
    ((payload, delay),) = retries.puts
    assert payload["request"] == REQUEST and payload["$retry"]["originalMessageId"] == "msg-1"
    assert delay >= 5  # Retry-After is a floor
    later = bootstrap.runtime()
    bootstrap._runtime = Runtime(**{**later.__dict__, "clock": lambda: datetime.now(UTC) + timedelta(minutes=5)})
    body = json.dumps(payload).encode()
    functions["retry_mail"](QueueMessage(id="r-1", body=body, dequeue_count=1, pop_receipt="p"))
    assert len(graph.calls) == 2 and dead.envelopes == []


def test_raw_text_that_is_not_json_is_dead_lettered_as_an_encoding_problem(
    functions: dict[str, Callable[..., None]],
    fakes: tuple[FakeGraph, FakeDeadLetters],
) -> None:
    graph, dead = fakes
    doubly = base64.b64encode(json.dumps(REQUEST).encode()).decode()
    functions["send_mail"](message(doubly))
    (envelope,) = dead.envelopes
    assert envelope["error"]["code"] == "InvalidEncoding"
    assert envelope["request"] == doubly
    assert graph.calls == []


def test_the_host_indexes_both_functions_with_no_settings_at_all() -> None:
    """Importing function_app.py must never need a setting: an error there hides every function."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    probe = (
        "import sys, function_app; fns = function_app.app.get_functions(); "
        "print(sorted(f.get_function_name() for f in fns)); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('msal', 'requests', 'pydantic') "
        "or m.startswith(('azure.identity', 'azure.keyvault', 'azure.storage', 'azure.data'))))"
    )
    bare = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "SYSTEMROOT")}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[2],
        env=bare,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "['check_secret_expiry', 'clean_status_records', 'record_queue_depths', 'retry_mail', 'send_mail']"
    assert out[1] == "[]", f"heavy SDKs loaded at indexing: {out[1]}"
