"""Issue 9's reproductions on the local stack (Azurite, the local host, the emulator): each ends in the relay's
own dead letter with a reason, a retry, or a send; the dead-letter tool reads any bytes in the poison queue."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from devstack.host import LocalHost
from shared.cli import main
from tests.e2e.conftest import RelayEnv, wait_for


def conn(relay_env: RelayEnv) -> list[str]:
    return ["--connection-string", relay_env.env["AzureWebJobsStorage"], "--queue", relay_env.queue_name]


def test_hostile_requests_are_dead_lettered_at_once_and_the_tool_lists_them_all(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost], capsys: pytest.CaptureFixture[str]
) -> None:
    big_bad = relay_env.request("500 bad", to=[f"recipient {i:03d} at contoso dot com, invalid" for i in range(500)])
    texts = [
        "[" * 20_000 + "]" * 20_000,
        '{"subject": ' + "9" * 5000 + "}",
        json.dumps(relay_env.request("surrogate \ud800")),
        json.dumps(relay_env.request("forged\r\nCRITICAL mailrelay: secret.expiry: FORGED LINE", id="a\nb")),
        json.dumps(big_bad),
    ]

    for text in texts:
        relay_env.enqueue_raw(_b64(text))
    local_host()
    wait_for(lambda: len(relay_env.poison_messages()) == len(texts), 30, "every dead letter")
    assert relay_env.emulator.stats["graph.sendMail"] == 0
    letters = relay_env.poison_messages()
    assert all(isinstance(e, dict) and e["error"]["code"] == "InvalidRequest" for e in letters), letters
    assert all(e["attempts"] == 0 for e in letters)  # refused at the first delivery: never tried, not five retries
    stored = [e for e in letters if e.get("stored")]
    assert len(stored) == 1  # the 500-violation envelope went to the overflow container (Azurite's blobs)

    capsys.readouterr()
    assert main(["dead-letters", "list", *conn(relay_env)]) == 0
    table = capsys.readouterr().out
    assert len(table.splitlines()) == len(texts) + 1 and "\x1b" not in table
    assert main(["dead-letters", "list", "--json", *conn(relay_env)]) == 0
    listed = json.loads(capsys.readouterr().out)
    [whole] = [e for e in listed if isinstance(e["request"], dict) and e["request"].get("subject") == "500 bad"]
    assert len(whole["request"]["to"]) == 500  # read back from the overflow store
    assert main(["dead-letters", "requeue", "--all", *conn(relay_env)]) == 1  # none is valid: all stay, with reasons
    err = capsys.readouterr().err
    assert len(relay_env.poison_messages()) == len(texts), err


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


def test_a_near_limit_request_under_429_is_retried_through_the_overflow_and_sent_once(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    from shared.queues import MAX_QUEUE_TEXT, encode

    size = 47_000
    while (
        len(encode(relay_env.request("near the limit", body={"contentType": "text", "content": "x" * (size + 1)})))
        <= MAX_QUEUE_TEXT
    ):
        size += 1
    request = relay_env.request("near the limit", body={"contentType": "text", "content": "x" * size})
    relay_env.emulator.add_fault("graph.sendMail", 429, retry_after=2, count=1)
    relay_env.enqueue(request)
    local_host()
    wait_for(lambda: relay_env.subjects_sent()["near the limit"] == 1, 30, "the retried send")
    assert relay_env.emulator.stats["graph.sendMail"] == 2  # the 429, then the send: not five host retries
    assert relay_env.poison_messages() == []
