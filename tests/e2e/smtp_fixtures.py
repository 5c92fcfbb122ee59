"""Fixtures for the SMTP listener's end-to-end tests (tests/e2e/test_smtp.py): the whole relay as a device meets it.

device (smtplib, swaks, a raw socket) -> the listener (smtp/, in this process, on free ports, TLS with a trustme
certificate) -> Azurite (the app's payload container and queue) -> the local host running function_app.py -> the
emulator's Graph (MIME drafts).

- The listener logs in devices of one app, `printers`, declared through MAILRELAY_APPS as the relay reads it. The
  in-process local host indexes function_app.py once per module name, and the suite imports it without apps, so this
  file loads it again under a name of its own with the app declared (RELAY_APP_MODULE): the app's trigger exists.
- Logins are hashed with scrypt at N=2^14 (the lowest the listener loads), not the deployed 2^17: 16 MiB and a few
  milliseconds per check instead of 128 MiB and a third of a second, so that 20 devices log in at once cheaply.
- The app has several senders, each its own mailbox: the relay paces each mailbox (30 a second with relay_env's
  MAILBOX_RATE_WINDOW_SECONDS=1), so thousands of mails spread over SENDERS pass in seconds, not minutes.
- RestartableAzurite: a private Azurite that can be stopped and started again on the same ports with its data kept
  (devstack's keeps its data in memory, so a restart would lose every queue: not "storage down", storage gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient

from devstack.azurite import Azurite, AzuriteError, die_with_parent, free_port, owned_workdir
from devstack.host import LocalHost
from shared import bootstrap
from tests.e2e.conftest import CLIENT, SECRET, TENANT, RelayEnv, wait_for

ROOT = Path(__file__).resolve().parents[2]
APP = "printers"
# The app's senders, each a mailbox of its own (in the app's Exchange scope): the relay paces per mailbox.
SENDERS = tuple(f"scans-{n}@contoso.com" for n in range(1, 5))
OFF_LIST = "ceo@contoso.com"  # a real mailbox, on no list of the app's
RECIPIENT = "ada@contoso.com"
USER, PASSWORD = "mfp-3f", "correct horse battery staple"
RELAY_APP_MODULE = "tests_e2e_smtp_function_app"
CRLF_FIX = re.compile(r"\r\n|\n|\r")


# --- The relay's function app, with the app declared ------------------------------------------------------------


def relay_app_module() -> str:
    """function_app.py loaded once more under RELAY_APP_MODULE while MAILRELAY_APPS declares APP, so that the local
    host registers the app's trigger (function_app.py reads the declaration at import, as the real host indexes it).
    The trigger's queue is `%MAIL_QUEUE_NAME%-printers`, resolved per test when the host starts."""
    if RELAY_APP_MODULE not in sys.modules:
        import os

        spec = importlib.util.spec_from_file_location(RELAY_APP_MODULE, ROOT / "function_app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        before = os.environ.get("MAILRELAY_APPS")
        os.environ["MAILRELAY_APPS"] = json.dumps([{"name": APP, "senders": list(SENDERS)}])
        try:
            spec.loader.exec_module(module)
        finally:
            if before is None:
                del os.environ["MAILRELAY_APPS"]
            else:
                os.environ["MAILRELAY_APPS"] = before
        sys.modules[RELAY_APP_MODULE] = module
    return RELAY_APP_MODULE


# --- A private Azurite that can go down and come back -----------------------------------------------------------


class RestartableAzurite(Azurite):
    """Azurite persisting to a folder of its own (no --inMemoryPersistence), on ports kept across restarts.

    halt() ends the process with SIGTERM, on which Azurite saves its metadata (a SIGKILL would lose the last
    seconds of writes: its database is saved on an interval and at shutdown, a loss Azure Storage does not have);
    start() brings it back on the same ports with the same queues, messages and blobs. The connection string stays
    the same throughout, as an Azure account's does while it is unreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.data_dir = owned_workdir("azurite-")
        self.blob_port, self.queue_port, self.table_port = free_port(), free_port(), free_port()

    def start(self) -> RestartableAzurite:
        if self._process:
            return self
        self._process = subprocess.Popen(
            self.arguments(location=self.data_dir),
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        if not self._wait_ready():
            self.halt()
            raise AzuriteError("the private Azurite did not start again on its ports")
        return self

    def halt(self) -> None:
        """Storage down: the process ends (SIGTERM, its data saved), its ports refuse connections."""
        process, self._process = self._process, None
        if process and process.poll() is None:
            process.terminate()
            process.wait(30)

    @property
    def connection_string(self) -> str:
        # The same while halted: clients keep it, and meet a refused connection.
        base = "http://127.0.0.1"
        from devstack.azurite import ACCOUNT_KEY, ACCOUNT_NAME

        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{ACCOUNT_NAME};"
            f"QueueEndpoint={base}:{self.queue_port}/{ACCOUNT_NAME};"
            f"TableEndpoint={base}:{self.table_port}/{ACCOUNT_NAME};"
        )

    def stop(self, timeout: float = 10.0) -> None:
        self.halt()
        shutil.rmtree(self.data_dir, ignore_errors=True)


# --- TLS ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    server_pem: Path  # the listener's certificate chain and key, one PEM (SMTP_TLS_CERT_FILE)
    ca_pem: Path  # what a device trusts

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))


@pytest.fixture(scope="session")
def smtp_tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    import trustme

    folder = tmp_path_factory.mktemp("smtp-tls")
    ca = trustme.CA()
    certificate = ca.issue_cert("localhost", "127.0.0.1")
    certificate.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return Tls(folder / "server.pem", folder / "ca.pem")


# --- The listener in this process ---------------------------------------------------------------------------------


class RunningListener:
    """The listener on its own event loop in a thread, as `python -m mailrelay_smtp` runs it."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.loop = asyncio.new_event_loop()
        self.ports: dict[str, int] = {}
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                bound = self.loop.run_until_complete(listener.start())
                self.ports = {port.kind: number for port, number in bound}
            except BaseException as exc:  # handed to the test's thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="smtp-listener", daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise AssertionError("the listener did not start within 30 s")
        if failure:
            raise failure[0]

    def close(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(60)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@dataclass
class Sent:
    """One mail as a device sent it: what went on the wire and what the listener answered."""

    subject: str
    sender: str
    wire: bytes  # the message as smtplib sent it (CRLF line ends), before dot-stuffing
    reply: tuple[int, bytes] | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.wire).hexdigest()


@dataclass
class SmtpRelay:
    """The listener in front of the relay, and what a test needs to drive it and read what it did."""

    relay: RelayEnv
    azurite: Azurite
    tls: Tls
    running: RunningListener
    app_queue: QueueClient
    app_poison: QueueClient
    host: LocalHost | None = None
    # Every subject this test sent, so that only this test's mails are counted in the shared emulator's outbox.
    subjects: set[str] = field(default_factory=set)

    @property
    def starttls_port(self) -> int:
        return self.running.ports["starttls"]

    @property
    def tls_port(self) -> int:
        return self.running.ports["tls"]

    def connect(self, *, login: bool = True, timeout: float = 120) -> smtplib.SMTP:
        """A device on 587: EHLO, STARTTLS, EHLO, AUTH (smtplib picks PLAIN, or LOGIN when it must)."""
        client = smtplib.SMTP("localhost", self.starttls_port, local_hostname="mfp.contoso.com", timeout=timeout)
        client.starttls(context=self.tls.context())
        client.ehlo()
        if login:
            client.login(USER, PASSWORD)
        return client

    def mail(self, label: str, sender: str = SENDERS[0], body: str = "", size: int = 0) -> Sent:
        """A mail a scanner would send, with its own Message-ID and a unique subject; written with bare LF line ends
        and a body line starting with a dot, as smtplib is given it: smtplib turns the line ends into CRLF and doubles
        the dot on the wire, and the listener must give the relay back exactly the CRLF form."""
        subject = f"{label} {uuid.uuid4().hex[:12]}"
        text = (
            f"From: Scanner <{sender}>\n"
            f"To: Ada <{RECIPIENT}>\n"
            f"Subject: {subject}\n"
            f"Message-ID: <{uuid.uuid4().hex}@mfp.contoso.com>\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=us-ascii\n"
            "\n"
            f"Scanned by the 3rd floor MFP.\n.a line that starts with a dot\n{body}"
        )
        if size:
            text += "x" * 76 + "\n"
            text += ("y" * 76 + "\n") * ((size - len(text)) // 77 + 1)
        self.subjects.add(subject)
        return Sent(subject, sender, CRLF_FIX.sub("\r\n", text).encode("ascii"))

    def send(self, client: smtplib.SMTP, mail: Sent) -> Sent:
        """MAIL, RCPT, DATA one at a time, recording DATA's reply (sendmail raises on some and hides the code)."""
        code, text = client.mail(mail.sender)
        if code != 250:
            mail.reply = (code, text)
            client.rset()
            return mail
        code, text = client.rcpt(RECIPIENT)
        if code not in (250, 251):
            mail.reply = (code, text)
            client.rset()
            return mail
        mail.reply = client.data(mail.wire)
        return mail

    # --- What the relay did ---

    def outbox(self) -> list[dict[str, Any]]:
        return [e for e in self.relay.emulator.outbox if e["message"]["message"].get("subject") in self.subjects]

    def delivered_counts(self) -> Counter[str]:
        return Counter(str(e["message"]["message"]["subject"]) for e in self.outbox())

    def wait_delivered(self, mails: list[Sent], timeout: float) -> dict[str, dict[str, Any]]:
        """Every mail in the outbox, the app's queue drained; then each subject's one entry (exactly once)."""
        wanted = {m.subject for m in mails}
        wait_for(
            lambda: wanted <= set(self.delivered_counts()), timeout, f"{len(wanted)} mails delivered", interval=1.0
        )
        wait_for(lambda: self.queue_length() == 0, timeout, "the app's queue drained", interval=0.5)
        counts = self.delivered_counts()
        twice = {s: n for s, n in counts.items() if s in wanted and n != 1}
        assert not twice, f"delivered more than once: {sorted(twice.items())[:10]}"
        return {
            str(e["message"]["message"]["subject"]): e
            for e in self.outbox()
            if e["message"]["message"]["subject"] in wanted
        }

    def queue_length(self) -> int:
        return int(self.app_queue.get_queue_properties().approximate_message_count)

    def poison(self) -> list[str]:
        """What is in the app's poison queue and the outbox's (a MIME request dead-lettered goes to its app's)."""
        return [m.content for q in (self.app_poison, self.relay.poison) for m in q.peek_messages(max_messages=32)]

    def payload_blobs(self) -> set[str]:
        from mailrelay_client.client import payload_container

        container = ContainerClient.from_connection_string(self.azurite.connection_string, payload_container(APP))
        return {b.name for b in container.list_blobs()} if container.exists() else set()

    def assert_nothing_queued(self) -> None:
        assert self.queue_length() == 0, "a request is on the app's queue"
        assert self.payload_blobs() == set(), "a MIME was stored"


def start_smtp_relay(
    relay_env: RelayEnv,
    azurite: Azurite,
    tls: Tls,
    monkeypatch: pytest.MonkeyPatch,
    folder: Path,
    start_host: Callable[..., LocalHost] | None,
    **settings: Any,
) -> SmtpRelay:
    """Seed the emulator and the settings for APP, start the listener (and the local host, unless start_host is
    None), and return the SmtpRelay. `settings`: Settings fields to change (e.g. store_timeout)."""
    from mailrelay_smtp.intake import Intake, client_factory
    from mailrelay_smtp.logins import Logins, hash_password
    from mailrelay_smtp.server import Listener
    from mailrelay_smtp.settings import load

    emulator = relay_env.emulator
    # A MIME request goes through a marked draft: Mail.ReadWrite as well as Mail.Send (docs/mime.md).
    emulator.add_app(TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send", "Application Mail.ReadWrite"))
    for sender in SENDERS:
        emulator.add_mailbox(sender, in_exchange_scope=True)
    apps = json.dumps([{"name": APP, "senders": list(SENDERS)}])
    allowed = f"{relay_env.env['ALLOWED_SENDERS']},{','.join(SENDERS)}"
    for name, value in (("MAILRELAY_APPS", apps), ("ALLOWED_SENDERS", allowed)):
        monkeypatch.setenv(name, value)
        relay_env.env[name] = value
    bootstrap.reset()  # the relay reads the settings above on its first message

    queue_name = relay_env.queue_name
    app_queue = QueueClient.from_connection_string(azurite.connection_string, f"{queue_name}-{APP}")
    app_poison = QueueClient.from_connection_string(azurite.connection_string, f"{queue_name}-{APP}-poison")
    for queue in (app_queue, app_poison):
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()

    logins = folder / "logins.json"
    entry = {"user": USER, "app": APP, "device": "3rd floor MFP", "hash": hash_password(PASSWORD, 14)}
    logins.write_text(json.dumps({"logins": [entry]}), encoding="utf-8")
    env = {
        "SMTP_LOGINS_FILE": str(logins),
        "AzureWebJobsStorage": azurite.connection_string,
        "MAILRELAY_APPS": apps,
        "ALLOWED_SENDERS": allowed,
        "MAIL_QUEUE_NAME": queue_name,
        "SMTP_TLS_CERT_FILE": str(tls.server_pem),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_HOSTNAME": "localhost",
    }
    # Real ports (0 in Settings means "off"): free ones, each checked free just before.
    config = dataclasses.replace(load(env), starttls_port=free_port(), tls_port=free_port(), **settings)
    listener = Listener(config, Logins.load(config.logins_file, config.senders), Intake(client_factory(config)))
    running = RunningListener(listener)
    relay = SmtpRelay(relay_env, azurite, tls, running, app_queue, app_poison)
    if start_host is not None:
        relay.host = start_host(app_module=relay_app_module())
    return relay


@pytest.fixture
def smtp_relay(
    relay_env: RelayEnv,
    azurite: Azurite,
    smtp_tls: Tls,
    local_host: Callable[..., LocalHost],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[SmtpRelay]:
    relay = start_smtp_relay(relay_env, azurite, smtp_tls, monkeypatch, tmp_path, local_host)
    yield relay
    relay.running.close()


@pytest.fixture
def restartable_azurite() -> Iterator[RestartableAzurite]:
    instance = RestartableAzurite().start()
    try:
        yield instance
    finally:
        instance.stop()


def raw_session(relay: SmtpRelay) -> ssl.SSLSocket:
    """A TLS socket on 465, logged in with AUTH PLAIN, read line by line: a device that can be cut off mid-DATA."""
    import base64

    sock = socket.create_connection(("127.0.0.1", relay.tls_port), timeout=60)
    tls = relay.tls.context().wrap_socket(sock, server_hostname="localhost")
    reader = tls.makefile("rb")

    def expect(code: bytes) -> None:
        while True:
            line = reader.readline()
            assert line[:3] == code, line
            if line[3:4] == b" ":
                return

    expect(b"220")
    tls.sendall(b"EHLO mfp.contoso.com\r\n")
    expect(b"250")
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    tls.sendall(f"AUTH PLAIN {token}\r\n".encode())
    expect(b"235")
    tls.sendall(f"MAIL FROM:<{SENDERS[0]}>\r\n".encode())
    expect(b"250")
    tls.sendall(f"RCPT TO:<{RECIPIENT}>\r\n".encode())
    expect(b"250")
    tls.sendall(b"DATA\r\n")
    expect(b"354")
    tls.reader = reader  # type: ignore[attr-defined]
    return tls


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """wait_for at a gentler interval, for conditions that copy the emulator's outbox."""
    wait_for(condition, timeout, what, interval=0.5)


def elapsed(start: float) -> float:
    return round(time.monotonic() - start, 1)
