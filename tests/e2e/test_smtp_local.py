"""`mailrelay local --smtp PORT`: the SMTP listener beside the local stack, driven as a device would from what the
state file says (port, CA, each login), and the console naming the app and the device of each mail it took.

The stack is started as a user starts it (a process, stopped with Ctrl-C), as test_docs_first_hour.py does."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.azurite import free_port, pid_alive
from devstack.console import Console
from shared.cli import main
from shared.status import MARK_PROPERTY_ID, StatusKey, StatusRecord
from tests.e2e.conftest import wait_for
from tests.e2e.test_console import alone
from tests.e2e.test_docs_first_hour import ROOT, outbox, user_env

pytestmark = pytest.mark.e2e

SCANS = "scans@contoso.com"


def mime(subject: str) -> bytes:
    """A scanner's mail: a PDF attached, its own Message-ID, CRLF line ends (what SMTP carries, byte for byte)."""
    return (
        f"From: Scanner <{SCANS}>\r\n"
        "To: Ada <ada@contoso.com>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@printers.contoso.com>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "Scanned document attached.\r\n"
        "--b1\r\n"
        "Content-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="scan.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        "JVBERi0xLjQKJcOkw7zDtsOfCg==\r\n"
        "--b1--\r\n"
    ).encode("ascii")


def start_local(state_file: Path, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    """`mailrelay local FLAGS` in the checkout, its output in `log`, in a new user's environment."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "local", "--state-file", str(state_file), *flags],
            cwd=ROOT,
            env=user_env(state_file),
            stdout=out,
            stderr=out,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`mailrelay local --smtp P --smtps Q --app printers=scans@contoso.com`, running; its state file, read. Stopped
    with Ctrl-C at the end, which must stop the listener too."""
    folder = tmp_path_factory.mktemp("smtp-local")
    state_file, log = folder / "local.json", folder / "mailrelay-local.log"
    port, tls_port = free_port(), free_port()
    process = start_local(state_file, log, "--smtp", str(port), "--smtps", str(tls_port), "--app", f"printers={SCANS}")
    try:
        wait_for(lambda: state_file.exists() or process.poll() is not None, 60, "mailrelay local's state file")
        assert process.poll() is None, log.read_text(errors="replace")
        wait_for(lambda: "mailrelay local: ready" in log.read_text(errors="replace"), 30, "the ready banner")
        state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
        state["stateFile"], state["log"] = str(state_file), log
        yield state
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    listener = state["pids"].get("smtp")
    assert code == 0 and listener is not None and not pid_alive(listener), log.read_text(errors="replace")[-2000:]
    assert not state_file.exists()


def login_of(state: dict[str, Any], user: str) -> dict[str, str]:
    found: dict[str, str] = next(x for x in state["smtp"]["logins"] if x["user"] == user)
    return found


def tls(state: dict[str, Any]) -> ssl.SSLContext:
    # The state file's CA: the listener's certificate (localhost, 127.0.0.1) is verified, not waved through.
    return ssl.create_default_context(cafile=state["smtp"]["ca"])


def session(state: dict[str, Any]) -> smtplib.SMTP:
    smtp = smtplib.SMTP(state["smtp"]["host"], state["smtp"]["port"], timeout=30)
    smtp.starttls(context=tls(state))
    return smtp


def test_the_state_file_records_the_listener_and_a_login_per_app(stack: dict[str, Any]) -> None:
    smtp = stack["smtp"]
    assert smtp["host"] == "127.0.0.1" and smtp["starttls"] is True and isinstance(smtp["tlsPort"], int)
    logins = {x["user"]: (x["app"], x["device"]) for x in smtp["logins"]}
    assert logins == {"default": ("default", "local default"), "printers": ("printers", "local printers")}
    assert all(len(x["password"]) >= 12 for x in smtp["logins"])
    banner = stack["log"].read_text(errors="replace")
    printers = login_of(stack, "printers")
    assert f"user printers password {printers['password']} (app printers" in banner
    assert f"swaks --server 127.0.0.1:{smtp['port']} --tls" in banner and f"--from {SCANS}" in banner
    # The one CA file verifies the emulator too.
    answer = requests.get(f"{stack['emulatorUrl']}/_emulator/outbox", verify=smtp["ca"], timeout=10)
    assert answer.status_code == 200


def test_each_password_in_the_state_file_logs_in_and_a_wrong_one_gets_535(stack: dict[str, Any]) -> None:
    for login in stack["smtp"]["logins"]:
        with session(stack) as smtp:
            code, _ = smtp.login(login["user"], login["password"])
            assert code == 235
    with session(stack) as smtp, pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        smtp.login("printers", login_of(stack, "default")["password"])  # another login's password
    assert refused.value.smtp_code == 535
    # Implicit TLS (--smtps) takes the same logins.
    printers = login_of(stack, "printers")
    with smtplib.SMTP_SSL(stack["smtp"]["host"], stack["smtp"]["tlsPort"], context=tls(stack), timeout=30) as smtp:
        assert smtp.login(printers["user"], printers["password"])[0] == 235


def test_a_mime_mail_over_starttls_is_delivered_once_as_sent_and_the_console_names_its_app_and_device(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = f"scan {uuid.uuid4().hex[:8]}"
    data = mime(subject)
    printers = login_of(stack, "printers")
    with session(stack) as smtp:
        smtp.login(printers["user"], printers["password"])
        assert smtp.mail(SCANS)[0] == 250
        assert smtp.rcpt("ada@contoso.com")[0] == 250
        code, reply = smtp.data(data)
    assert code == 250, reply
    request_id = reply.decode().rsplit(" ", 1)[-1]
    assert request_id.startswith("smtp-printers-")

    def mine() -> list[dict[str, Any]]:
        return [e for e in outbox(stack) if e["message"]["message"]["subject"] == subject]

    # And one mail not from SMTP, sent through the outbox's queue: the console says nothing extra beside it.
    monkeypatch.setenv("MAILRELAY_STATE_FILE", stack["stateFile"])
    other = f"not smtp {uuid.uuid4().hex[:8]}"
    argv = ["send", "--from", "alerts@contoso.com", "--to", "ada@contoso.com", "--subject", other, "--text", "t"]
    assert main(argv) == 0, capsys.readouterr().err

    def sent() -> bool:
        if main(["status", request_id, "--app", "printers", "--json"]) != 0:
            capsys.readouterr()
            return False
        return bool(json.loads(capsys.readouterr().out)["state"] == "sent")

    wait_for(sent, 60, "the SMTP request's status record to say sent")
    wait_for(lambda: any(e["message"]["message"]["subject"] == other for e in outbox(stack)), 60, "the JSON mail")
    (entry,) = mine()  # sent, and once
    assert entry["sender"] == SCANS and entry["via"] == "draft"
    assert entry["mime"]["delivered"]["sha256"] == hashlib.sha256(data).hexdigest()  # byte-identical

    page = requests.get(stack["consoleUrl"], timeout=10).text
    rows = {row.split("</a>")[0].rsplit(">", 1)[-1]: row for row in page.split("<tr>")[2:]}
    assert 'data-device="local printers" data-app="printers">via SMTP: local printers (app: printers)' in rows[subject]
    assert "via SMTP" not in rows[other]
    link = re.search(r'href="(/message/\d+)"', rows[subject])
    assert link is not None
    message = requests.get(stack["consoleUrl"].rstrip("/") + link[1], timeout=10).text
    assert f"<title>{subject} " in message and "via SMTP: local printers (app: printers)" in message


def test_a_port_already_taken_fails_the_start_with_the_listeners_words(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        state_file, log = tmp_path / "local.json", tmp_path / "log"
        process = start_local(state_file, log, "--smtp", str(port))
        try:
            code = process.wait(timeout=90)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    out = log.read_text(errors="replace")
    assert code == 1, out
    assert f"the SMTP listener (port {port}) exited with 1" in out and "cannot open a port" in out
    assert "mailrelay local: ready" not in out and not state_file.exists()


@pytest.mark.parametrize("port", ["0", "70000"])
def test_a_port_the_listener_cannot_take_is_refused_before_anything_starts(
    port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["local", "--smtp", port, "--state-file", str(tmp_path / "s.json")]) == 2
    assert f"--smtp takes a port from 1 to 65535, got {port}" in capsys.readouterr().err
    assert main(["local", "--smtps", "2465", "--state-file", str(tmp_path / "s.json")]) == 2
    assert "--smtps needs --smtp" in capsys.readouterr().err


# --- the console's mapping, over fakes (no stack) -------------------------------------------------------


class Store:
    def __init__(self, records: list[StatusRecord]) -> None:
        self.records = records
        self.reads = 0

    def since(self, when: datetime, state: str | None = None) -> Iterator[StatusRecord]:
        self.reads += 1
        return iter(r for r in self.records if r.updated_at >= when)


def marked(subject: str, key: StatusKey) -> dict[str, Any]:
    prop = {"id": MARK_PROPERTY_ID, "value": key.mark}
    return {
        "sender": key.sender,
        "receivedAt": datetime.now(UTC).isoformat(),
        "message": {"message": {"subject": subject, "singleValueExtendedProperties": [prop]}},
    }


def test_the_console_names_the_device_only_of_a_known_login_and_reads_each_mark_once() -> None:
    scanner = StatusKey.of(SCANS, "smtp-printers-0a1b", None, "printers")
    front_desk = StatusKey.of(SCANS, "smtp-front-desk-2c3d", None, "printers")  # a user with a dash
    posing = StatusKey.of("alerts@contoso.com", "smtp-nobody-4e5f", None)  # `mailrelay send --id smtp-...`
    other_app = StatusKey.of("billing@contoso.com", "smtp-printers-6a7b", None, "billing")  # billing posing as one
    plain = StatusKey.of("alerts@contoso.com", "invoice-7", None)
    keys = (scanner, front_desk, posing, other_app, plain)
    store = Store([StatusRecord(k, "sent") for k in keys])
    entries = [marked(subject, k) for subject, k in zip("abcde", keys, strict=True)]
    devices = {"printers": ("2nd floor MFP", "printers"), "front-desk": ("Front <desk>", "printers")}
    console: Console = alone(entries, status=lambda: [store], smtp_devices=devices)
    try:
        page = requests.get(console.url, timeout=5).text
        again = requests.get(console.url, timeout=5).text
    finally:
        console.stop()
    assert page == again and store.reads == 1  # a mark's record is looked up once
    assert page.count("via SMTP") == 2
    assert "via SMTP: 2nd floor MFP (app: printers)" in page
    assert "via SMTP: Front &lt;desk&gt; (app: printers)" in page  # what a login names is escaped


def test_the_outbox_still_shows_when_the_status_records_cannot_be_read() -> None:
    def down() -> list[Store]:
        raise ConnectionError("Azurite stopped")

    key = StatusKey.of(SCANS, "smtp-printers-0a1b", None, "printers")
    console: Console = alone([marked("still here", key)], status=down, smtp_devices={"printers": ("MFP", "printers")})
    try:
        answer = requests.get(console.url, timeout=5)
    finally:
        console.stop()
    assert answer.status_code == 200 and "still here" in answer.text and "via SMTP" not in answer.text
