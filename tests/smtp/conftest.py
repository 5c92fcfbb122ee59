"""The listener in-process, on free ports of 127.0.0.1, with a throwaway CA (trustme) and a fake intake: the SMTP
conversation itself, with no storage (tests/e2e/test_smtp.py drives it through Azurite and the relay)."""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from mailrelay_smtp.intake import Accepted
from mailrelay_smtp.logins import FailedLogins, Login, Logins, hash_password
from mailrelay_smtp.server import Listener
from mailrelay_smtp.settings import Settings

PASSWORD = "correct horse battery staple"
SENDER = "scans@contoso.com"
CHEAP = 14  # scrypt's lowest accepted cost: 16 MiB a check, fast enough for tests


@dataclass
class Submitted:
    login: Login
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class FakeIntake:
    """Records each submission; `fault` (an exception, or a callable raising one) makes the next ones fail."""

    submitted: list[Submitted] = field(default_factory=list)
    fault: Any = None

    def submit(self, login: Login, sender: str, recipients: Sequence[str], data: bytes) -> Accepted:
        if callable(self.fault):
            self.fault()
        elif self.fault is not None:
            raise self.fault
        self.submitted.append(Submitted(login, sender, list(recipients), data))
        return Accepted(f"smtp-{login.user}-{len(self.submitted)}")


@dataclass
class Running:
    listener: Listener
    intake: FakeIntake
    ports: dict[str, int]
    ca: trustme.CA
    logs: list[dict[str, Any]]

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def smtp(self, kind: str = "starttls", login: bool = True, user: str = "mfp-3f") -> smtplib.SMTP:
        if kind == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", self.ports["tls"], context=self.context(), timeout=30)
        else:
            client = smtplib.SMTP("127.0.0.1", self.ports[kind], timeout=30)
            if kind == "starttls":
                client.starttls(context=self.context())
        client.ehlo()
        if login:
            client.login(user, PASSWORD)
        return client


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def start_listener(
    ca: trustme.CA, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[Callable[..., Running]]:
    """start_listener(**settings overrides) -> Running; stopped at the end of the test."""
    pem = tmp_path / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    logins_file = tmp_path / "logins.json"
    hashed = hash_password(PASSWORD, CHEAP)
    logins_file.write_text(
        json.dumps(
            {
                "logins": [
                    {"user": "mfp-3f", "app": "printers", "device": "3rd floor MFP", "hash": hashed},
                    {"user": "billing-app", "app": "billing", "device": "billing server", "hash": hashed},
                ]
            }
        )
    )
    started: list[tuple[asyncio.AbstractEventLoop, Listener, threading.Thread]] = []

    def start(failed: FailedLogins | None = None, **overrides: Any) -> Running:
        settings = Settings(
            logins_file=logins_file,
            senders={
                "default": frozenset({"alerts@contoso.com"}),
                "printers": frozenset({SENDER}),
                "billing": frozenset({"billing@contoso.com"}),
            },
            connection_string="UseDevelopmentStorage=true",
            tls_cert_file=pem,
            starttls_port=_free_port(),
            tls_port=_free_port(),
            plain_port=0,
            hostname="relay.test",
            host="127.0.0.1",
        )
        settings = replace(settings, **overrides)
        intake = FakeIntake()
        listener = Listener(settings, Logins.load(logins_file, settings.senders), intake, failed)  # type: ignore[arg-type]
        loop = asyncio.new_event_loop()
        bound: list[Any] = []
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            bound.extend(loop.run_until_complete(listener.start()))
            ready.set()
            loop.run_forever()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert ready.wait(10), "the listener did not start"
        started.append((loop, listener, thread))
        return Running(listener, intake, {port.kind: number for port, number in bound}, ca, [])

    caplog.set_level("INFO", logger="mailrelay.smtp")
    yield start
    for loop, listener, thread in started:
        asyncio.run_coroutine_threadsafe(listener.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def mail(subject: str = "scan", sender: str = SENDER, to: str = "ada@contoso.com", extra: str = "") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@mfp.test>\r\n{extra}\r\n"
        f"Your scan.\r\n"
    ).encode()
