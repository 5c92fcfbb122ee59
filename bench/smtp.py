"""The SMTP section of the benchmark (bench/relay.py, "smtp"): mails over SMTP into the local stack, as a device sends.

On one local stack (Azurite, the emulator, one host; pacing time-scaled so that Exchange's 30 a minute per mailbox
does not bind), with the listener (smtp/) in this process on STARTTLS:
- N mails over ONE connection, and N over C parallel connections: the rate of 250s the devices get, as a ratio to
  the same N MIME mails handed to the client library's send_mime directly (1 thread, then C threads): what SMTP
  itself costs over the durable step both share;
- every mail delivered exactly once (COUNTED in the emulator's outbox by the SHA-256 of what recipients got) and
  byte-identical to what smtplib put on the wire;
- the time from the first mail to the last delivered.
Beside it the peer's figures, measured outside this repository (its code is not ours; bench/README.md says how), with
their date: SMTP2Graph, the SMTP-to-Graph relay in most use, before and after its fix of the defect the issue names.
"""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Measured outside the repository on 2026-12-06 against this local stack's emulator, and quoted (bench/README.md,
# "The peer", says how): nothing of the peer's, code or script, is in this tree. Its figures are not re-measured here.
PEER_FIGURES = [
    (
        "peer, SMTP2Graph v1.1.4 (2026-03-11): delivered of 200 over one connection, 3 runs (measured 2026-12-06)",
        "1 / 1 / 1 (every mail answered 250; over 20 connections: 49 / 53 / 61)",
    ),
    (
        "peer, SMTP2Graph v1.1.5 (2026-05-03, its fix of that defect): the same, 3 runs (measured 2026-12-06)",
        "200 / 200 / 200; killed (SIGKILL) after the 200th 250, 3 times: 4 duplicates each time after its restart",
    ),
]

APP = "printers"


def mime(sender: str, tag: str, i: int) -> bytes:
    """A scanner's mail: headers, a text part and a small PDF, each with its own Message-ID. CRLF line ends and no
    line starting with a dot, so the bytes smtplib sends are these bytes."""
    return (
        f"From: Scanner <{sender}>\r\nTo: ada@contoso.com\r\nSubject: scan {tag} {i}\r\n"
        f"Message-ID: <{tag}.{i}@mfp.bench>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
        f"Scanned page {i}.\r\n--b1\r\nContent-Type: application/pdf\r\n"
        'Content-Disposition: attachment; filename="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        "JVBERi0xLjQKJcOkw7zDtsOfCg==\r\n--b1--\r\n"
    ).encode("ascii")


class InProcessListener:
    """The listener on a free port of 127.0.0.1, in a thread of this process, against the stack's Azurite."""

    def __init__(self, stack: Any, senders: list[str], directory: Path) -> None:
        import json

        import trustme
        from mailrelay_smtp.intake import Intake, client_factory
        from mailrelay_smtp.logins import Logins, hash_password
        from mailrelay_smtp.server import Listener
        from mailrelay_smtp.settings import Settings

        self.ca = trustme.CA()
        pem = directory / "server.pem"
        self.ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
        self.password = uuid.uuid4().hex
        logins = directory / "logins.json"
        entry = {"user": "mfp-bench", "app": APP, "device": "bench MFP", "hash": hash_password(self.password)}
        logins.write_text(json.dumps({"logins": [entry]}))
        settings = Settings(
            logins_file=logins,
            senders={"default": frozenset(senders), APP: frozenset(senders)},
            queue_name=stack.queue_name,
            connection_string=stack.storage_connection_string,
            tls_cert_file=pem,
            starttls_port=_free_port(),
            tls_port=0,
            host="127.0.0.1",
            hostname="relay.bench",
            max_connections_per_source=100,
        )
        self.port = settings.starttls_port
        self.listener = Listener(settings, Logins.load(logins, settings.senders), Intake(client_factory(settings)))
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.listener.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not ready.wait(30):
            raise RuntimeError("the SMTP listener did not start")

    def connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
        client.starttls(context=context)
        client.login("mfp-bench", self.password)
        return client

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spread_over(
    workers: int, mails: list[tuple[str, bytes]], send: Callable[[list[tuple[str, bytes]]], None]
) -> float:
    """Seconds to send `mails` split over `workers` threads (each its own connection or client)."""
    shares = [mails[i::workers] for i in range(workers)]
    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(send, share) for share in shares]:
            future.result()
    return time.monotonic() - started


def _run(stack: Any, listener: InProcessListener, senders: list[str], n: int, workers: int, via: str) -> dict[str, Any]:
    from mailrelay_client import MailClient

    tag = f"{via}{workers}-{uuid.uuid4().hex[:6]}"
    mails = [(senders[i % len(senders)], mime(senders[i % len(senders)], tag, i)) for i in range(n)]
    expected = Counter(hashlib.sha256(data).hexdigest() for _, data in mails)
    before = len(stack.emulator_get("outbox"))

    def over_smtp(share: list[tuple[str, bytes]]) -> None:
        with listener.connect() as client:
            for sender, data in share:
                client.sendmail(sender, ["ada@contoso.com"], data)

    def direct(share: list[tuple[str, bytes]]) -> None:
        client = MailClient.from_connection_string(stack.storage_connection_string, stack.queue_name, app=APP)
        for sender, data in share:
            client.send_mime(data, sender, to=["ada@contoso.com"], id=f"direct-{hashlib.sha256(data).hexdigest()[:32]}")

    started = time.monotonic()
    accepted = _spread_over(workers, mails, over_smtp if via == "smtp" else direct)
    deadline = time.monotonic() + 900
    while len(stack.emulator_get("outbox")) < before + n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"smtp: only {len(stack.emulator_get('outbox')) - before} of {n} delivered")
        time.sleep(0.2)
    delivered = time.monotonic() - started
    time.sleep(1.0)  # a duplicate would arrive within the host's next poll
    outbox = stack.emulator_get("outbox")[before:]
    got = Counter(e.get("mime", {}).get("delivered", {}).get("sha256") for e in outbox)
    return {
        "accept_rate": n / accepted,
        "delivered_s": delivered,
        "once": sum(1 for h in expected if got[h] == 1),
        "extra": sum(got.values()) - n,
    }


def smtp_section(n: int, workers: int, repeat: int, spread: Callable[[list[float]], str]) -> list[tuple[str, str]]:
    """The rows of the "smtp" section (bench/relay.py)."""
    from devstack.stack import LocalStack

    senders = [f"scans{i:02d}@contoso.com" for i in range(40)]
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    # Pacing time-scaled (a mailbox's minute lasts a second): the listener and the relay are measured, not Exchange's
    # 30 a minute, which the relay keeps whatever the intake (the "throttling" section measures that).
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalStack(
            allowed_senders=tuple(senders),
            apps=[{"name": APP, "senders": senders}],
            settings={"MAILBOX_RATE_WINDOW_SECONDS": "1"},
        ) as stack,
    ):
        listener = InProcessListener(stack, senders, Path(tmp))
        try:
            for _ in range(repeat):
                for via, count in (("direct", 1), ("smtp", 1), ("direct", workers), ("smtp", workers)):
                    results.setdefault((via, count), []).append(_run(stack, listener, senders, n, count, via))
        finally:
            listener.close()

    def column(via: str, count: int, key: str) -> list[float]:
        return [float(r[key]) for r in results[(via, count)]]

    rows: list[tuple[str, str]] = []
    for count, label in ((1, "one connection"), (workers, f"{workers} connections")):
        smtp_rates, direct_rates = column("smtp", count, "accept_rate"), column("direct", count, "accept_rate")
        ratios = [s / d for s, d in zip(smtp_rates, direct_rates, strict=True)]
        once = column("smtp", count, "once")
        extra = column("smtp", count, "extra")
        rows += [
            (f"SMTP, {n} mails over {label}: 250s per second", spread(smtp_rates)),
            ("  / send_mime directly (the same durable step, no SMTP), same threads", spread(ratios)),
            (
                "  delivered exactly once and byte-identical (of N); extra copies",
                f"{spread(once)} of {n}; {spread(extra)}",
            ),
            ("  first mail to last delivered, s", spread(column("smtp", count, "delivered_s"))),
        ]
    rows.extend(PEER_FIGURES)
    return rows
