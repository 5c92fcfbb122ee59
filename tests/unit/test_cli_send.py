"""`mailrelay send`: flags to request, usage errors, the exit codes; no I/O beyond tmp files."""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.cli import build_parser, main, send
from shared.cli.common import UsageError
from shared.cli.send import request_from_args
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
            "--from", "alerts@contoso.com",
            "--to", "Ada Lovelace <ada@contoso.com>", "--to", "ops@contoso.com",
            "--cc", "cc@contoso.com", "--bcc", "audit@contoso.com", "--reply-to", "noreply@contoso.com",
            "--subject", "Disk almost full", "--text", "97% used",
            "--attach", str(report), "--header", "X-Alert-Id=4711", "--header", "X-Empty=",
            "--importance", "high", "--id", "disk-4711", "--no-save",
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
        "attachments": [
            {
                "name": "df.csv",
                "contentType": "text/csv",
                "contentBytes": base64.b64encode(report.read_bytes()).decode(),
            }
        ],
        "headers": {"X-Alert-Id": "4711", "X-Empty": ""},
        "saveToSentItems": False,
        "id": "disk-4711",
    }
    parse_request(request)  # and it is a valid request


def test_minimal_flags_leave_defaults_out() -> None:
    request = request_from_args(args(*BASE, "--html", "<p>x</p>"))
    assert request == {
        "from": "a@contoso.com", "to": ["b@contoso.com"], "subject": "s",
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
    request = request_from_args(args(*BASE, "--text", "t", "--attach", str(path)))
    assert request["attachments"][0]["contentType"] == "application/octet-stream"


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
        request_from_args(args(*argv))


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
        def send(self, request: Any) -> str:
            sent.append(request)
            return "id-42"

    monkeypatch.setattr(send, "_mail_client", lambda conn: Client())
    code = main(["send", "--connection-string", AZURITE, "--from", "a@contoso.com", "--to", "b@contoso.com",
                 "--subject", "s", "--text", "t"])
    assert code == 0
    assert capsys.readouterr().out == "id-42\n"
    assert sent[0]["from"] == "a@contoso.com"


def test_a_too_large_request_exits_1_without_its_content(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["send", "--connection-string", AZURITE, "--from", "a@contoso.com", "--to", "b@contoso.com",
                 "--subject", "s", "--text", "secret-words " * 6000])
    assert code == 1
    err = capsys.readouterr().err
    assert "claim check" in err and "secret-words" not in err
