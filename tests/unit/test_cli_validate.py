"""`mailrelay validate`: the Graph body for a valid request, the violations for an invalid one."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from shared.cli import main
from shared.contract import parse_request
from shared.graph import build_send_mail_body

DATA = Path(__file__).parent.parent / "data"
VALID = DATA / "valid-request.json"
MINIMAL = DATA / "valid-request-minimal.json"
INVALID = DATA / "invalid-request.json"


def stdin_bytes(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


@pytest.mark.parametrize("path", [VALID, MINIMAL], ids=["full", "minimal"])
def test_valid_file_prints_the_graph_body(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    expected = build_send_mail_body(parse_request(path.read_bytes()))
    assert json.loads(out) == expected
    assert out == json.dumps(expected, indent=2) + "\n"


def test_graph_body_carries_the_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(VALID)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["saveToSentItems"] is False
    assert body["message"]["subject"] == "Your order 4711 has shipped"
    assert body["message"]["toRecipients"][1] == {
        "emailAddress": {"address": "grace@contoso.com", "name": "Grace Hopper"}
    }


def test_claim_checks_are_shown_as_what_they_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = json.loads(MINIMAL.read_text())
    request["body"] = {"contentType": "html", "blob": "b/body.html", "size": 1200, "sha256": "a" * 64}
    blob = {"name": "r.pdf", "contentType": "application/pdf", "blob": "b/r.pdf", "size": 9, "sha256": "b" * 64}
    request["attachments"] = [blob]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(request))
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    message = json.loads(out)["message"]
    assert message["body"]["content"] == "(claim check: 1200 bytes from blob b/body.html)"
    assert message["attachments"][0]["contentBytes"] == "(claim check: 9 bytes from blob b/r.pdf)"
    assert "2 part(s) are claim checks" in err


def test_invalid_file_prints_each_violation_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(INVALID)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 11
    assert 'from: "Relay <relay@contoso.com>" must be a bare address' in lines[0]
    assert any(line.startswith("subject: must not contain CR, LF or another line break") for line in lines)
    assert any(line.startswith('headers["Reply-To"]: "Reply-To" is not allowed') for line in lines)
    assert any(line.startswith("priority: unknown field") for line in lines)


def test_reads_stdin_by_default(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stdin_bytes(monkeypatch, MINIMAL.read_bytes())
    assert main(["validate"]) == 0
    assert json.loads(capsys.readouterr().out)["message"]["subject"] == "Hello"


def test_reads_stdin_for_dash(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stdin_bytes(monkeypatch, b'{"from": "relay@contoso.com"}')
    assert main(["validate", "-"]) == 1
    err = capsys.readouterr().err
    assert "subject: is required" in err and "to/cc/bcc: at least one recipient" in err


def test_text_only_stdin_works(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(MINIMAL.read_text(encoding="utf-8")))
    assert main(["validate"]) == 0
    assert capsys.readouterr().err == ""


def test_stdin_bytes_reach_the_contract_undecoded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The contract, not the terminal's encoding, judges the bytes: Windows-1252 is reported as such."""
    stdin_bytes(monkeypatch, MINIMAL.read_text(encoding="utf-8").replace("Ada", "Zoë").encode("cp1252"))
    assert main(["validate"]) == 1
    assert capsys.readouterr().err.startswith("(message): is not UTF-8 text")


def test_double_base64_gets_the_encoding_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import base64

    path = tmp_path / "message.txt"
    path.write_bytes(base64.b64encode(MINIMAL.read_bytes()))
    assert main(["validate", str(path)]) == 1
    assert "base64-encoded twice" in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.json"
    assert main(["validate", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"mailrelay validate: cannot read {missing}: No such file or directory\n"


def test_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path)]) == 2
    assert f"cannot read {tmp_path}" in capsys.readouterr().err


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["validate", "a.json", "b.json"]) == 2
    assert "usage: mailrelay" in capsys.readouterr().err


def test_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--help"]) == 0
    assert "standard input" in capsys.readouterr().out
