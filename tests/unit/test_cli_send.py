"""`mailrelay send`: flags to request, usage errors, the exit codes; no I/O beyond tmp files."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.cli import build_parser, main, send
from shared.cli.common import UsageError
from shared.cli.send import files_from_args, request_from_args
from shared.contract import parse_request
from tests.unit.test_cli_common import AZURITE


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["send", *argv])


BASE = ("--from", "a@contoso.com", "--to", "b@contoso.com", "--subject", "s")


def test_flags_map_to_the_request_fields(tmp_path: Path) -> None:
    report = tmp_path / "df.csv"
    report.write_bytes(b"fs,used\n/var,97%\n")
    request = request_from_args(
        args(
            "--from",
            "alerts@contoso.com",
            "--to",
            "Ada Lovelace <ada@contoso.com>",
            "--to",
            "ops@contoso.com",
            "--cc",
            "cc@contoso.com",
            "--bcc",
            "audit@contoso.com",
            "--reply-to",
            "noreply@contoso.com",
            "--subject",
            "Disk almost full",
            "--text",
            "97% used",
            "--attach",
            str(report),
            "--header",
            "X-Alert-Id=4711",
            "--header",
            "X-Empty=",
            "--importance",
            "high",
            "--id",
            "disk-4711",
            "--no-save",
        )
    )
    assert request == {
        "from": "alerts@contoso.com",
        "to": ["Ada Lovelace <ada@contoso.com>", "ops@contoso.com"],
        "cc": ["cc@contoso.com"],
        "bcc": ["audit@contoso.com"],
        "replyTo": ["noreply@contoso.com"],
        "subject": "Disk almost full",
        "body": {"contentType": "text", "content": "97% used"},
        "importance": "high",
        "headers": {"X-Alert-Id": "4711", "X-Empty": ""},
        "saveToSentItems": False,
        "id": "disk-4711",
    }
    parse_request(request)  # and it is a valid request
    # --attach names files the client library attaches when it sends: inline when small, else streamed to a blob.
    (file,) = files_from_args(args(*BASE, "--text", "t", "--attach", str(report)))
    assert (Path(file.path), file.file_name, file.mime_type, file.content_id) == (report, "df.csv", "text/csv", None)


def test_inline_and_send_at_flags(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    logo.write_bytes(b"\x89PNG")
    parsed = args(
        *BASE, "--html", '<img src="cid:logo">', "--inline", f"logo={logo}", "--send-at", "2026-12-24T09:00+01:00"
    )
    assert request_from_args(parsed)["sendAt"] == "2026-12-24T09:00+01:00"
    (file,) = files_from_args(parsed)
    assert (file.content_id, file.mime_type) == ("logo", "image/png")
    with pytest.raises(UsageError, match="CID=FILE"):
        files_from_args(args(*BASE, "--text", "t", "--inline", str(logo)))


def test_minimal_flags_leave_defaults_out() -> None:
    request = request_from_args(args(*BASE, "--html", "<p>x</p>"))
    assert request == {
        "from": "a@contoso.com",
        "to": ["b@contoso.com"],
        "subject": "s",
        "body": {"contentType": "html", "content": "<p>x</p>"},
    }


@pytest.mark.parametrize(("name", "kind"), [("body.html", "html"), ("body.HTM", "html"), ("body.txt", "text")])
def test_body_file_content_type_follows_the_extension(tmp_path: Path, name: str, kind: str) -> None:
    path = tmp_path / name
    path.write_text("héllo", encoding="utf-8")
    request = request_from_args(args(*BASE, "--body-file", str(path)))
    assert request["body"] == {"contentType": kind, "content": "héllo"}


def test_unknown_attachment_type_is_octet_stream(tmp_path: Path) -> None:
    path = tmp_path / "blob.unknownext"
    path.write_bytes(b"\x00\x01")
    (file,) = files_from_args(args(*BASE, "--text", "t", "--attach", str(path)))
    assert file.mime_type == "application/octet-stream"


def test_json_file_is_the_whole_request_and_excludes_field_flags(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"from": "a@contoso.com"}), encoding="utf-8")
    assert request_from_args(args("--json", str(path))) == {"from": "a@contoso.com"}
    with pytest.raises(UsageError, match="--subject"):
        request_from_args(args("--json", str(path), "--subject", "x"))


def test_json_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"from": "a@contoso.com"}'), encoding="utf-8"))
    assert request_from_args(args("--json", "-")) == {"from": "a@contoso.com"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--to", "b@contoso.com", "--subject", "s", "--text", "t"], "--from"),
        (["--from", "a@contoso.com", "--to", "b@contoso.com", "--text", "t"], "--subject"),
        (["--from", "a@contoso.com", "--to", "b@contoso.com", "--subject", "s"], "--text, --html or --body-file"),
        (["--from", "a@contoso.com", "--subject", "s", "--text", "t", "--header", "X-NoValue"], "X-NAME=VALUE"),
        (["--from", "a@contoso.com", "--subject", "s", "--text", "t", "--attach", "/nonexistent/f"], "cannot read"),
    ],
)
def test_usage_errors_name_the_flag(argv: list[str], says: str) -> None:
    with pytest.raises(UsageError, match=says):
        parsed = args(*argv)
        request_from_args(parsed)
        files_from_args(parsed)


def test_text_and_html_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["send", "--from", "a@contoso.com", "--text", "t", "--html", "h"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_an_invalid_request_exits_1_with_each_violation_before_any_connection(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no state file, no connection: the request is checked first
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    code = main(["send", "--from", "not-an-address", "--to", "b@contoso.com", "--subject", "s", "--text", "t"])
    assert code == 1
    assert capsys.readouterr().err.startswith("from: ")


def test_send_prints_the_message_id(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[Any] = []

    class Client:
        def send(self, request: Any, files: Any = ()) -> str:
            sent.append(request)
            return "id-42"

    monkeypatch.setattr(send, "_mail_client", lambda conn, app: Client())
    remote = AZURITE.replace("http://127.0.0.1:10001", "https://account.queue.core.windows.net")  # never dialled
    code = main(
        [
            "send",
            "--connection-string",
            remote,
            "--from",
            "a@contoso.com",
            "--to",
            "b@contoso.com",
            "--subject",
            "s",
            "--text",
            "t",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out == "id-42\n"
    assert sent[0]["from"] == "a@contoso.com"


def test_a_too_large_request_exits_1_without_its_content(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "send",
            "--connection-string",
            AZURITE,
            "--from",
            "a@contoso.com",
            "--to",
            "b@contoso.com",
            "--subject",
            "s",
            "--text",
            "secret-words " * 6000,
            *(f"--header=X-H{i}={'h' * 14_000}" for i in range(5)),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "stored as blobs" in err and "secret-words" not in err


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


@pytest.mark.parametrize(
    "command",
    [
        ["send", "--from", "a@contoso.com", "--to", "b@contoso.com", "--subject", "s", "--text", "t"],
        ["dead-letters", "list"],
        ["dead-letters", "show", "x"],
    ],
)
def test_a_stopped_local_stack_fails_at_once_saying_what_to_do(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    port = closed_port()
    conn = AZURITE.replace("10001", str(port))
    started = time.monotonic()
    code = main([*command, "--connection-string", conn])
    assert time.monotonic() - started < 5
    assert code == 3
    assert f"nothing is listening on 127.0.0.1:{port}; is `mailrelay local` running?" in capsys.readouterr().err


def test_without_the_client_library_send_says_how_to_install_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The relay's distribution does not depend on the client's (client/): a relay installed without it.
    monkeypatch.setitem(sys.modules, "mailrelay_client", None)  # None: `import mailrelay_client` fails
    code = main(["send", *BASE, "--text", "t", "--connection-string", AZURITE])
    err = capsys.readouterr().err
    assert code == 3
    assert "mailrelay send: needs the relay's client library" in err and "pip install ./client" in err


@pytest.mark.parametrize("command", [["dead-letters", "list"], ["dead-letters", "show", "x"]])
def test_the_dead_letter_commands_do_not_need_the_client_library(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mailrelay_client", None)
    port = closed_port()
    code = main([*command, "--connection-string", AZURITE.replace("10001", str(port))])
    # They get as far as the queue (here: a stopped stack), not an ImportError.
    assert code == 3
    assert f"nothing is listening on 127.0.0.1:{port}" in capsys.readouterr().err


def test_without_an_azure_sign_in_the_queue_url_fails_at_once_with_one_short_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    import time

    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `az` on the path
    started = time.monotonic()
    code = main(
        [
            "send",
            "--queue-url",
            "https://account.queue.core.windows.net/mail-outbox",
            "--from",
            "a@contoso.com",
            "--to",
            "b@contoso.com",
            "--subject",
            "s",
            "--text",
            "t",
        ]
    )
    err = capsys.readouterr().err
    assert time.monotonic() - started < 5 and code == 3
    assert "no Azure credential found" in err and "az login" in err
    assert len(err.splitlines()) == 1


def test_the_local_queue_url_the_stack_prints_uses_azuritess_shared_key() -> None:
    from shared.cli.common import AZURITE_KEY, UsageError, _from_queue_url

    conn = _from_queue_url("http://127.0.0.1:10001/devstoreaccount1/mail-outbox", None)
    assert conn.queue_name == "mail-outbox" and conn.queue_url is None
    assert conn.connection_string and AZURITE_KEY in conn.connection_string
    assert "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;" in conn.connection_string
    with pytest.raises(UsageError):
        _from_queue_url("http://example.com/devstoreaccount1/q", None)  # plain http only to the local stack


def test_version_and_the_help_example_read_as_meant(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("mailrelay ")
    assert main(["send", "--help"]) == 0
    out = capsys.readouterr().out
    assert "97% used" in out and "%%" not in out


SEND_ARGS = ["--from", "billing@contoso.com", "--to", "b@contoso.com", "--subject", "s", "--text", "t"]


def test_send_app_enqueues_on_the_apps_queue_and_the_hint_names_the_app(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    queues: list[str] = []

    class Queue:
        def send_message(self, content: Any, **kwargs: Any) -> Any:
            return type("Sent", (), {"id": "id-7"})()

    from mailrelay_client import MailClient

    def from_connection_string(conn: str, queue_name: str = "mail-outbox", app: str | None = None) -> MailClient:
        from mailrelay_client import app_queue

        queues.append(app_queue(queue_name, app or "default"))
        return MailClient.from_queue_client(Queue(), app=app)

    monkeypatch.setattr(MailClient, "from_connection_string", staticmethod(from_connection_string))
    remote = AZURITE.replace("http://127.0.0.1:10001", "https://account.queue.core.windows.net")  # never dialled
    assert main(["send", "--connection-string", remote, "--app", "billing", "--id", "inv-1", *SEND_ARGS]) == 0
    assert main(["send", "--connection-string", remote, "--queue", "relay-q", *SEND_ARGS]) == 0
    assert queues == ["mail-outbox-billing", "relay-q"]
    err = capsys.readouterr().err
    assert "mailrelay status inv-1 --from billing@contoso.com --app billing" in err


@pytest.mark.parametrize("app", ["Billing", "retry", "../x"])
def test_send_refuses_a_name_no_app_can_have(capsys: pytest.CaptureFixture[str], app: str) -> None:
    assert main(["send", "--connection-string", AZURITE, "--app", app, *SEND_ARGS]) == 2
    assert "is not an app's name" in capsys.readouterr().err


def test_send_app_against_the_local_stack_names_the_apps_it_declares(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    monkeypatch.delenv("MAIL_QUEUE_NAME", raising=False)
    remote = AZURITE.replace("http://127.0.0.1:10001", "https://account.queue.core.windows.net")  # never dialled
    state = tmp_path / "state.json"
    apps = [{"name": "billing", "queue": "mail-outbox-billing", "senders": ["billing@contoso.com"]}]
    state.write_text(json.dumps({"storageConnectionString": remote, "queueName": "mail-outbox", "apps": apps}))
    assert main(["send", "--state-file", str(state), "--app", "hr", *SEND_ARGS]) == 2
    err = capsys.readouterr().err
    assert "declares billing, not 'hr'" in err and "mailrelay local --app hr=SENDER" in err


def _fake_outbox(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """MailClient.from_connection_string on a queue that records each send's keyword arguments; ids id-1, id-2..."""
    sends: list[dict[str, Any]] = []

    class Queue:
        def send_message(self, content: Any, **kwargs: Any) -> Any:
            sends.append(kwargs)
            return type("Sent", (), {"id": f"id-{len(sends)}"})()

    from mailrelay_client import MailClient

    def from_connection_string(conn: str, queue_name: str = "mail-outbox", app: str | None = None) -> MailClient:
        return MailClient.from_queue_client(Queue(), app=app)

    monkeypatch.setattr(MailClient, "from_connection_string", staticmethod(from_connection_string))
    return sends


REMOTE = AZURITE.replace("http://127.0.0.1:10001", "https://account.queue.core.windows.net")  # never dialled


def test_send_at_prints_a_confirmation_naming_the_time_in_utc_and_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    sends = _fake_outbox(monkeypatch)
    utc = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    offset = (utc + timedelta(hours=1)).replace(tzinfo=None).isoformat() + "+01:00"  # the same moment at +01:00
    assert main(["send", "--connection-string", REMOTE, *SEND_ARGS, "--send-at", offset]) == 0
    out, err = capsys.readouterr()
    assert out == "id-1\n"
    assert f"scheduled for {utc:%Y-%m-%d %H:%M:%S} UTC (sendAt {offset})" in err
    assert "key id-1" in err and "mailrelay status id-1 --from billing@contoso.com" in err
    assert sends == [{"time_to_live": -1}]  # visible at once: the relay records it scheduled now


def test_send_prints_the_requests_key_the_one_status_and_dead_letters_know(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_outbox(monkeypatch)
    assert main(["send", "--connection-string", REMOTE, *SEND_ARGS, "--id", "inv-1"]) == 0
    out, err = capsys.readouterr()
    assert out == "inv-1\n"  # its id, not the queue message id (id-1), which no status record is kept under
    assert "look it up: mailrelay status inv-1 --from billing@contoso.com" in err and "scheduled" not in err
    assert main(["send", "--connection-string", REMOTE, *SEND_ARGS]) == 0
    assert capsys.readouterr().out == "id-2\n"  # no id: the queue message id is its key
