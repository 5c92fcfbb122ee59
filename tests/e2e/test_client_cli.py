"""The client library, `mailrelay send` / `dead-letters` / `local`, and the demo, against real Azurite."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.queue import QueueClient
from mailrelay_client import (
    MAX_MESSAGE_BYTES,
    MAX_REQUEST_BYTES,
    MailClient,
    QueueNotFound,
    RequestTooLarge,
    encode_request,
)

from devstack.azurite import Azurite
from devstack.host import LocalHost
from shared.cli import main
from shared.queues import encode
from tests.e2e.conftest import ALERTS, OUT_OF_SCOPE, RelayEnv, wait_for

pytestmark = pytest.mark.e2e


def request(subject: str, sender: str = "alerts@contoso.com", **extra: Any) -> dict[str, Any]:
    return {
        "from": sender,
        "to": ["Ada Lovelace <ada@contoso.com>"],
        "subject": subject,
        "body": {"contentType": "text", "content": "e2e body"},
        **extra,
    }


def fresh_queue(azurite: Azurite) -> QueueClient:
    queue = QueueClient.from_connection_string(azurite.connection_string, f"client-{uuid.uuid4().hex[:12]}")
    queue.create_queue()
    return queue


def test_client_round_trip_decodes_to_the_request_and_never_expires(azurite: Azurite) -> None:
    queue = fresh_queue(azurite)
    sent = request("round trip \u00e9", id="rt-1")
    message_id = MailClient.from_connection_string(azurite.connection_string, queue.queue_name).send(sent)
    (message,) = queue.receive_messages(max_messages=32)
    assert message.id == message_id
    assert json.loads(base64.b64decode(message.content, validate=True).decode("utf-8")) == sent
    assert message.expires_on.year == 9999  # time-to-live -1


def test_a_queue_that_does_not_exist_is_named_not_a_bare_404(azurite: Azurite) -> None:
    client = MailClient.from_connection_string(azurite.connection_string, f"missing-{uuid.uuid4().hex[:12]}")
    with pytest.raises(QueueNotFound, match="MAIL_QUEUE_NAME"):
        client.send(request("nowhere"))


def test_mailrelay_send_to_a_queue_that_does_not_exist_exits_3_naming_it(
    azurite: Azurite, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    argv = ["--connection-string", azurite.connection_string, "--queue", missing]
    code = main(["send", *argv, "--from", "a@contoso.com", "--to", "b@contoso.com", "--subject", "s", "--text", "t"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "mailrelay send: the relay's queue does not exist" in err and "Traceback" not in err


def largest(limit: int) -> int:
    """The longest body content whose request encodes to at most `limit` characters."""
    low, high = 0, limit
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if len(encode(sized(mid))) <= limit else (low, mid)
    return low


def sized(n: int) -> dict[str, Any]:
    return request("big", body={"contentType": "text", "content": "x" * n})


def test_the_size_limit_is_the_services_less_the_relays_room(azurite: Azurite) -> None:
    """The client lets through requests up to the queue's limit less the room the relay keeps for its retry
    state; Azurite takes a message of exactly the limit and refuses one more (the limits agree)."""
    queue = fresh_queue(azurite)
    client = MailClient.from_connection_string(azurite.connection_string, queue.queue_name)
    client.send(sized(largest(MAX_REQUEST_BYTES)))
    over = sized(largest(MAX_REQUEST_BYTES) + 3)  # base64 grows in steps of 3 bytes
    with pytest.raises(RequestTooLarge):
        encode_request(over)
    # The client stores what would not fit as a blob in mail-payloads, and the request names it (a claim check).
    client.send(over)
    stored = [json.loads(base64.b64decode(m.content)) for m in queue.receive_messages(max_messages=32)]
    inline, claim_checked = (sorted(r["body"]) for r in stored)
    assert inline == ["content", "contentType"] and claim_checked == ["blob", "contentType", "sha256", "size"]
    queue.send_message(encode(sized(largest(MAX_MESSAGE_BYTES))))  # what the relay may write: fits
    from azure.core.exceptions import HttpResponseError

    with pytest.raises(HttpResponseError):
        queue.send_message(encode(sized(largest(MAX_MESSAGE_BYTES) + 3)))


def test_cli_send_then_requeue_after_the_scope_is_fixed_delivers(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost], capsys: pytest.CaptureFixture[str]
) -> None:
    conn = ["--connection-string", relay_env.env["AzureWebJobsStorage"], "--queue", relay_env.queue_name]
    local_host()
    subject = f"requeue {uuid.uuid4().hex[:6]}"
    code = main(
        [
            "send",
            *conn,
            "--from",
            OUT_OF_SCOPE,
            "--to",
            "ada@contoso.com",
            "--subject",
            subject,
            "--text",
            "payslip",
            "--id",
            f"id-{subject}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    wait_for(lambda: len(relay_env.poison_messages()) == 1, 15, "the dead letter")
    capsys.readouterr()

    assert main(["dead-letters", "list", "--json", *conn]) == 0
    (letter,) = json.loads(capsys.readouterr().out)
    assert letter["error"]["code"] == "ErrorAccessDenied" and letter["sender"] == OUT_OF_SCOPE
    assert main(["dead-letters", "list", *conn]) == 0
    assert "ErrorAccessDenied" in capsys.readouterr().out

    # The admin fixes the Exchange scope, then requeues.
    relay_env.emulator.set_exchange_scope(OUT_OF_SCOPE, True)
    assert main(["dead-letters", "requeue", letter["id"], *conn]) == 0
    assert capsys.readouterr().out.startswith(f"requeued id-{subject} on {relay_env.queue_name}")
    wait_for(lambda: relay_env.subjects_sent()[subject] == 1, 15, "the requeued mail to be sent")
    assert relay_env.poison_messages() == []
    assert main(["dead-letters", "show", letter["id"], *conn]) == 1  # gone from the poison queue


def test_requeue_all_leaves_what_cannot_be_sent_and_says_why(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost], capsys: pytest.CaptureFixture[str]
) -> None:
    conn = ["--connection-string", relay_env.env["AzureWebJobsStorage"], "--queue", relay_env.queue_name]
    local_host()
    relay_env.enqueue_raw("plain text, not base64")
    relay_env.enqueue(relay_env.request("scope", sender=OUT_OF_SCOPE))
    wait_for(lambda: len(relay_env.poison_messages()) == 2, 15, "two dead letters")
    capsys.readouterr()
    relay_env.emulator.set_exchange_scope(OUT_OF_SCOPE, True)
    assert main(["dead-letters", "requeue", "--all", *conn]) == 1
    err = capsys.readouterr().err
    assert "InvalidEncoding" in err and "1 requeued, 1 left" in err
    wait_for(lambda: relay_env.subjects_sent()["scope"] == 1, 15, "the requeued mail to be sent")
    assert relay_env.poison_messages() == ["plain text, not base64"]


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (no psutil in the dependencies)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the ppid is the 2nd field after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_mailrelay_local_serves_and_stops_on_sigterm_leaving_nothing(tmp_path: Path) -> None:
    state_file = tmp_path / ".mailrelay" / "local.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "local",
            "--allowed-senders",
            "alerts@contoso.com,hr@contoso.com",
            "--mailbox",
            "hr@contoso.com",
            "--secret-expires-in",
            "10",
            "--state-file",
            str(state_file),
        ],
        cwd=tmp_path,  # not the checkout: `mailrelay local` finds devstack beside the shared package
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    children: list[int] = []
    try:
        wait_for(lambda: state_file.exists() or process.poll() is not None, 40, "the state file")
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        state = json.loads(state_file.read_text())
        assert set(state) == {
            "pid",
            "storageConnectionString",
            "queueName",
            "emulatorUrl",
            "caCertPath",
            "relaySettings",
            "consoleUrl",
            "pids",
            "instances",
            "readAccess",
            "credential",  # the mode (secret here); the secretless modes add "identity", certificate "certificate"
        }
        assert oct(state_file.stat().st_mode & 0o777) == "0o600"
        children = _children(process.pid)
        assert len(children) == 3  # Azurite, the emulator, the host

        # It serves: a send through the state file reaches the emulator's Graph.
        assert (
            main(
                [
                    "send",
                    "--state-file",
                    str(state_file),
                    "--from",
                    "alerts@contoso.com",
                    "--to",
                    "ada@contoso.com",
                    "--subject",
                    "via local",
                    "--text",
                    "hi",
                ]
            )
            == 0
        )

        def delivered() -> bool:
            outbox = requests.get(f"{state['emulatorUrl']}/_emulator/outbox", verify=state["caCertPath"], timeout=5)
            return any(e["message"]["message"]["subject"] == "via local" for e in outbox.json())

        wait_for(delivered, 15, "the mail in the emulator's outbox")

        # `mailrelay expiry check` checks this stack's secret (exp in 10 days: past the 14-day threshold),
        # with no relay settings in its environment, only the state file.
        bare_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GRAPH_CLIENT_ID")}
        bare_env = {k: v for k, v in bare_env.items() if not k.startswith(("IDENTITY_", "EXPIRY_"))}
        check = subprocess.run(
            [
                sys.executable,
                "-m",
                "shared.cli",
                "expiry",
                "check",
                "--json",
                "--dry-run",
                "--state-file",
                str(state_file),
            ],
            cwd=tmp_path,
            env=bare_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 1, check.stderr  # a warning
        report = json.loads(check.stdout)
        assert report["state"] == "warning", report
        assert report["daysLeft"] == 10  # as asked: --secret-expires-in 10 reads 10 days, not 9
        assert [f["threshold"] for f in report["findings"]] == [14]
        assert report["findings"][0]["wouldNotify"] == ["log"]

        # `mailrelay doctor` finds the same stack set up to send: secret, token with Mail.Send, queues.
        doctor = subprocess.run(
            [sys.executable, "-m", "shared.cli", "doctor", "--json", "--state-file", str(state_file)],
            cwd=tmp_path,
            env=bare_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert {c["name"]: c["status"] for c in json.loads(doctor.stdout)["checks"]}["entra token"] == "ok"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        output = process.stdout.read().decode() if process.stdout else ""
        assert "mailrelay local: ready" in output and "stopping" in output
        assert not any(_alive(pid) for pid in children), output
        assert not state_file.exists()
        assert "Eby8vdM02xNO" not in output  # the state file holds the account key; the terminal does not
    finally:
        # Even when an assertion failed: SIGTERM lets `mailrelay local` stop its three parts; a SIGKILL
        # would orphan them.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_demo_runs_green(capsys: pytest.CaptureFixture[str]) -> None:
    from devstack import demo

    started = time.monotonic()
    assert demo.main() == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "5 of 5 cases as expected" in out
    assert "FAIL" not in out
    assert max(len(line) for line in out.splitlines() if not line.startswith("  storage queue")) <= 100
    assert time.monotonic() - started < 60


def test_mailrelay_status_and_the_client_say_what_became_of_a_request(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost], capsys: pytest.CaptureFixture[str]
) -> None:
    from mailrelay_client import MailClient

    conn = ["--connection-string", relay_env.env["AzureWebJobsStorage"], "--queue", relay_env.queue_name]
    local_host()
    key = f"status-{uuid.uuid4().hex[:8]}"
    args = ["send", *conn, "--from", ALERTS, "--to", "ada@contoso.com", "--subject", "s", "--text", "t", "--id", key]
    assert main(args) == 0
    assert f"look it up: mailrelay status {key} --from {ALERTS}" in capsys.readouterr().err
    client = MailClient.from_connection_string(relay_env.env["AzureWebJobsStorage"], relay_env.queue_name)
    wait_for(lambda: (client.status(key) or {}).get("state") == "sent", 15, "the record to say sent")
    record = client.status(key, sender=ALERTS)
    assert record is not None and record["attempts"] == 1 and record["recipients"] == 1
    assert record["recipientDomains"] == "contoso.com" and "ada@" not in json.dumps(record)

    assert main(["status", key, *conn]) == 0
    shown = capsys.readouterr().out
    assert "state:            sent" in shown and ALERTS in shown
    assert main(["status", "--since", "1h", "--state", "sent", "--json", *conn]) == 0
    assert key in [r["key"] for r in json.loads(capsys.readouterr().out)]
    assert main(["status", "no-such-key", *conn]) == 1
    assert "dead-letters show" in capsys.readouterr().err

    # A request keyed by its queue message id (no id): `send` prints that id, and status finds it.
    assert main(["send", *conn, "--from", ALERTS, "--to", "ada@contoso.com", "--subject", "s2", "--text", "t"]) == 0
    message_id = capsys.readouterr().out.strip()
    wait_for(lambda: (client.status(message_id) or {}).get("state") == "sent", 15, "the keyless record")


def test_retries_the_host_gave_up_on_are_listed_and_requeued_to_the_outbox(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost], capsys: pytest.CaptureFixture[str]
) -> None:
    """A retry message whose function kept failing (storage down) is moved raw to <queue>-retry-poison by the
    host; `dead-letters --retries` shows it, and requeue sends its request through the outbox."""
    from shared.retries import wrap

    conn = ["--connection-string", relay_env.env["AzureWebJobsStorage"], "--queue", relay_env.queue_name]
    stranded = QueueClient.from_connection_string(
        relay_env.env["AzureWebJobsStorage"], f"{relay_env.queue_name}-retry-poison"
    )
    stranded.create_queue()
    request = relay_env.request("stranded retry", id=f"stranded-{uuid.uuid4().hex[:8]}")
    stranded.send_message(encode(wrap(request, "first-message-id", "retrying")), time_to_live=-1)

    assert main(["dead-letters", "list", "--retries", "--json", *conn]) == 0
    (letter,) = json.loads(capsys.readouterr().out)
    assert letter["request"] == request
    assert main(["dead-letters", "list", "--json", *conn]) == 0
    assert json.loads(capsys.readouterr().out) == []  # the outbox's own dead letters are apart
    from shared.doctor import diagnose

    [stranded_check] = [c for c in diagnose(os.environ) if c.name == "stranded retries"]
    assert stranded_check.status == "warn" and "--retries" in stranded_check.hint
    local_host()
    assert main(["dead-letters", "requeue", "--retries", letter["id"], *conn]) == 0
    wait_for(lambda: relay_env.subjects_sent()["stranded retry"] == 1, 15, "the requeued retry to be sent")
