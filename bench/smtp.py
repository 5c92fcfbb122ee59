"""The SMTP section of the benchmark (bench/relay.py, "smtp"): mails over SMTP into the local stack, as a device sends.

On one local stack (Azurite, the emulator, one host; pacing time-scaled so that Exchange's 30 a minute per mailbox
does not bind), with the listener (smtp/) as its own process on STARTTLS, as `mailrelay local --smtp` runs it:
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

import hashlib
import smtplib
import ssl
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


class Devices:
    """Logs in to the stack's SMTP listener (`LocalStack(smtp_port=...)`: its own process, as `mailrelay local --smtp`
    runs it and as it is deployed) as the app's login from the stack's state, trusting the state's CA bundle."""

    def __init__(self, stack: Any) -> None:
        state = stack.smtp_state()
        self.port = int(state["port"])
        self.ca = str(state["ca"])
        (login,) = [x for x in state["logins"] if x["app"] == APP]
        self.user, self.password = str(login["user"]), str(login["password"])

    def connect(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
        client.starttls(context=ssl.create_default_context(cafile=self.ca))
        client.login(self.user, self.password)
        return client


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


def _run(stack: Any, devices: Devices, senders: list[str], n: int, workers: int, via: str) -> dict[str, Any]:
    from mailrelay_client import MailClient

    tag = f"{via}{workers}-{uuid.uuid4().hex[:6]}"
    mails = [(senders[i % len(senders)], mime(senders[i % len(senders)], tag, i)) for i in range(n)]
    expected = Counter(hashlib.sha256(data).hexdigest() for _, data in mails)
    before = len(stack.emulator_get("outbox"))

    def over_smtp(share: list[tuple[str, bytes]]) -> None:
        with devices.connect() as client:
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
    from devstack.azurite import free_port

    with LocalStack(
        allowed_senders=tuple(senders),
        apps=[{"name": APP, "senders": senders}],
        settings={"MAILBOX_RATE_WINDOW_SECONDS": "1"},
        smtp_port=free_port(),
    ) as stack:
        devices = Devices(stack)
        for _ in range(repeat):
            for via, count in (("direct", 1), ("smtp", 1), ("direct", workers), ("smtp", workers)):
                results.setdefault((via, count), []).append(_run(stack, devices, senders, n, count, via))

    def column(via: str, count: int, key: str) -> list[float]:
        return [float(r[key]) for r in results[(via, count)]]

    def counts(values: list[float]) -> str:
        return " / ".join(str(int(v)) for v in (min(values), statistics.median(values), max(values)))

    rows: list[tuple[str, str]] = []
    for count, label in ((1, "one connection"), (workers, f"{workers} connections")):
        smtp_rates, direct_rates = column("smtp", count, "accept_rate"), column("direct", count, "accept_rate")
        ratios = [s / d for s, d in zip(smtp_rates, direct_rates, strict=True)]
        once = column("smtp", count, "once")
        extra = column("smtp", count, "extra")
        rows += [
            (f"SMTP, {n} mails over {label}: 250s per second", spread(smtp_rates)),
            ("  / send_mime directly (the same durable step, no SMTP), same threads", spread(ratios)),
            ("  delivered exactly once and byte-identical; extra copies", f"{counts(once)} of {n}; {counts(extra)}"),
            ("  first mail to last delivered, s", spread(column("smtp", count, "delivered_s"))),
        ]
    rows.extend(PEER_FIGURES)
    return rows
