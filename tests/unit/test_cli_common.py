"""Where the queue commands find the queue (shared/cli/common.py): flags, environment, state file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from shared.cli import build_parser, main
from shared.cli.common import UsageError, resolve_connection

# An Azurite-shaped connection string that parses; the tests that pass it never reach a queue.
AZURITE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=c2VjcmV0LWtleQ==;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
)


def conn_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["dead-letters", "list", *argv])


def test_flags_win_over_the_environment_and_the_state_file(tmp_path: Path) -> None:
    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "MAIL_QUEUE_NAME": "env-queue"}
    conn = resolve_connection(conn_args("--connection-string", AZURITE, "--queue", "flag-queue"), env)
    assert (conn.connection_string, conn.queue_name, conn.source) == (AZURITE, "flag-queue", "--connection-string")
    conn = resolve_connection(conn_args(), env)
    assert (conn.connection_string, conn.queue_name) == ("UseDevelopmentStorage=true", "env-queue")
    assert conn.poison_queue_name == "env-queue-poison"


def test_the_state_file_is_the_last_resort(tmp_path: Path) -> None:
    state = tmp_path / "local.json"
    state.write_text(json.dumps({"storageConnectionString": AZURITE, "queueName": "local-q",
                                 "emulatorUrl": "https://127.0.0.1:1", "caCertPath": "/x"}))
    conn = resolve_connection(conn_args("--state-file", str(state)), {})
    assert (conn.connection_string, conn.queue_name, conn.source) == (AZURITE, "local-q", str(state))
    with pytest.raises(UsageError, match="mailrelay local"):
        resolve_connection(conn_args("--state-file", str(tmp_path / "missing.json")), {})


def test_queue_url_forms() -> None:
    conn = resolve_connection(conn_args("--queue-url", "https://acct.queue.core.windows.net/"), {})
    assert (conn.queue_url, conn.queue_name) == ("https://acct.queue.core.windows.net/mail-outbox", "mail-outbox")
    conn = resolve_connection(conn_args("--queue-url", "https://acct.queue.core.windows.net/relay"), {})
    assert conn.queue_name == "relay" and conn.connection_string is None
    with pytest.raises(UsageError, match="--queue says"):
        resolve_connection(conn_args("--queue-url", "https://acct.queue.core.windows.net/relay", "--queue", "x"), {})
    with pytest.raises(UsageError, match="not both"):
        resolve_connection(conn_args("--queue-url", "https://a/q", "--connection-string", AZURITE), {})


def test_no_connection_anywhere_is_a_usage_error_naming_the_options(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    assert main(["dead-letters", "list"]) == 2
    err = capsys.readouterr().err
    assert "--connection-string" in err and "mailrelay local" in err


def test_a_malformed_connection_string_is_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dead-letters", "list", "--connection-string", "AccountKey=hunter2-secret"]) == 2
    err = capsys.readouterr().err
    assert "malformed" in err and "hunter2" not in err
