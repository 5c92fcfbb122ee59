"""The SMTP listener tried as a device would (issue 22, items 2 and 5): smtplib, swaks and a raw socket against the
listener, through the whole relay (Azurite, the local host running function_app.py, the emulator's Graph).

What is held: TLS before AUTH, AUTH before MAIL; a wrong password and a sender off the app's list refused with
nothing stored; oversized and malformed mail refused with the session still usable; a mail cut off mid-DATA never
queued; storage down answered 451 and the device's retry delivered once; thousands of mails on one connection and
on twenty, each delivered once and byte-identical (the SHA-256 of what smtplib put on the wire against the outbox's
delivered MIME); and with storage stopped mid-run, every 250 delivered and every other mail a 4xx.
"""

from __future__ import annotations

import base64
import os
import re
import smtplib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.e2e import smtp_fixtures
from tests.e2e.conftest import wait_for
from tests.e2e.smtp_fixtures import (
    OFF_LIST,
    PASSWORD,
    RECIPIENT,
    SENDERS,
    USER,
    RestartableAzurite,
    Sent,
    SmtpRelay,
    elapsed,
    raw_session,
)

pytestmark = [
    pytest.mark.e2e,
    # aiosmtpd warns when AUTH is taken without STARTTLS, which on 465 (TLS from the first byte) is by design; the
    # listener filters it at import, and pytest puts its own filters back for each test.
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning"),
]

# The fixtures, registered for this module (as conftest.py registers the integration tests' emulator).
smtp_tls = smtp_fixtures.smtp_tls
smtp_relay = smtp_fixtures.smtp_relay
restartable_azurite = smtp_fixtures.restartable_azurite

WAIT = 60.0
MAX_BYTES = 3_000_000


def accepted(mail: Sent) -> bool:
    return mail.reply is not None and mail.reply[0] == 250


def assert_byte_identical(delivered: dict[str, dict], mails: list[Sent]) -> None:
    """What recipients get is what the device put on the wire: the SHA-256 of each."""
    wrong = [m.subject for m in mails if delivered[m.subject]["mime"]["delivered"]["sha256"] != m.sha256]
    assert not wrong, f"{len(wrong)} mails changed on the way, e.g. {wrong[:3]}"


# --- a. TLS and AUTH --------------------------------------------------------------------------------------------


def test_starttls_then_auth_plain_and_login_each_deliver_a_mail(smtp_relay: SmtpRelay) -> None:
    mails = []
    for mechanism in ("PLAIN", "LOGIN"):
        with smtp_relay.connect(login=False) as client:
            assert "starttls" not in client.esmtp_features  # already TLS: not offered twice
            assert f" {mechanism}" in " " + client.esmtp_features["auth"]
            client.user, client.password = USER, PASSWORD
            code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            assert code == 235
            mail = smtp_relay.send(client, smtp_relay.mail(f"auth {mechanism}"))
            assert mail.reply is not None and mail.reply[0] == 250, mail.reply
            assert mail.reply[1].startswith(b"2.0.0 Queued as smtp-mfp-3f-"), mail.reply
            mails.append(mail)
    assert_byte_identical(smtp_relay.wait_delivered(mails, WAIT), mails)
    assert smtp_relay.poison() == []


def test_implicit_tls_on_the_second_port_delivers_a_mail(smtp_relay: SmtpRelay) -> None:
    with smtplib.SMTP_SSL(
        "localhost", smtp_relay.tls_port, context=smtp_relay.tls.context(), local_hostname="mfp.contoso.com"
    ) as client:
        client.ehlo()
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        assert "starttls" not in client.esmtp_features
        client.login(USER, PASSWORD)
        mail = smtp_relay.send(client, smtp_relay.mail("implicit tls"))
    assert mail.reply is not None and mail.reply[0] == 250, mail.reply
    assert_byte_identical(smtp_relay.wait_delivered([mail], WAIT), [mail])


def test_auth_before_starttls_is_refused_and_auth_is_not_offered(smtp_relay: SmtpRelay) -> None:
    with smtplib.SMTP("localhost", smtp_relay.starttls_port, local_hostname="mfp.contoso.com", timeout=30) as client:
        client.ehlo()
        assert "starttls" in client.esmtp_features
        assert "auth" not in client.esmtp_features  # never advertised in clear
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {token}")
        assert code in (530, 538), (code, text)
        code, text = client.docmd("MAIL", f"FROM:<{SENDERS[0]}>")
        assert code == 530, (code, text)
    smtp_relay.assert_nothing_queued()


def test_mail_before_auth_is_refused_after_starttls(smtp_relay: SmtpRelay) -> None:
    with smtp_relay.connect(login=False) as client:
        code, text = client.mail(SENDERS[0])
        assert code == 530, (code, text)
        code, _ = client.rcpt(RECIPIENT)
        assert code != 250
    smtp_relay.assert_nothing_queued()


# --- b. Wrong password, a sender off the list ------------------------------------------------------------------


def test_a_wrong_password_is_535_and_nothing_is_queued(smtp_relay: SmtpRelay) -> None:
    with smtp_relay.connect(login=False) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(USER, "wrong horse battery staple")
        assert refused.value.smtp_code == 535
        code, _ = client.mail(SENDERS[0])
        assert code == 530  # still not logged in
    with smtp_relay.connect(login=False) as client, pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        client.login("no-such-device", PASSWORD)
    assert refused.value.smtp_code == 535
    smtp_relay.assert_nothing_queued()


def test_a_sender_off_the_apps_list_is_550_at_mail_from_before_any_data(smtp_relay: SmtpRelay) -> None:
    with smtp_relay.connect() as client:
        code, text = client.mail(OFF_LIST)
        assert code == 550, (code, text)
        assert text.startswith(b"5.7.1 App printers may not send as this address"), text
        assert OFF_LIST.encode() not in text  # the reply names the app and the fix, not the address
        # No transaction was opened: RCPT has no MAIL to belong to.
        code, _ = client.rcpt(RECIPIENT)
        assert code == 503
        client.rset()
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(OFF_LIST, [RECIPIENT], smtp_relay.mail("off the list", sender=OFF_LIST).wire)
        assert refused.value.smtp_code == 550
        # The same session sends as one of the app's senders.
        mail = smtp_relay.send(client, smtp_relay.mail("after the refusal"))
    assert mail.reply is not None and mail.reply[0] == 250, mail.reply
    smtp_relay.wait_delivered([mail], WAIT)
    assert len(smtp_relay.outbox()) == 1 and smtp_relay.poison() == []


# --- c. Oversized and malformed mail ---------------------------------------------------------------------------


def test_an_oversized_mail_is_552_and_nothing_is_queued(smtp_relay: SmtpRelay) -> None:
    big = smtp_relay.mail("too big", size=MAX_BYTES + 1000)
    assert len(big.wire) > MAX_BYTES
    with smtp_relay.connect() as client:
        assert client.esmtp_features["size"] == str(MAX_BYTES)  # the device knows before it sends
        # A device that declares the size hears it at MAIL FROM (smtplib's sendmail adds SIZE=)...
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(SENDERS[0], [RECIPIENT], big.wire)
        assert refused.value.smtp_code == 552
        # ...one that does not, at the end of DATA, after sending every byte.
        client.rset()
        assert smtp_relay.send(client, big).reply is not None
        assert big.reply is not None and big.reply[0] == 552, big.reply
        smtp_relay.assert_nothing_queued()
        mail = smtp_relay.send(client, smtp_relay.mail("after the big one"))
    assert mail.reply is not None and mail.reply[0] == 250, mail.reply
    smtp_relay.wait_delivered([mail], WAIT)


@pytest.mark.parametrize(
    ("label", "mime"),
    [
        ("no blank line", f"From: {SENDERS[0]}\r\nTo: {RECIPIENT}\r\nSubject: headers only\r\n".encode()),
        ("no from", f"To: {RECIPIENT}\r\nSubject: who sent this\r\n\r\nbody\r\n".encode()),
    ],
)
def test_malformed_mime_is_554_nothing_queued_and_the_session_goes_on(
    smtp_relay: SmtpRelay, label: str, mime: bytes
) -> None:
    with smtp_relay.connect() as client:
        bad = smtp_relay.send(client, Sent(label, SENDERS[0], mime))
        assert bad.reply is not None and bad.reply[0] == 554, bad.reply
        assert bad.reply[1].startswith(b"5.6.0 The relay cannot send this mail as it is"), bad.reply
        smtp_relay.assert_nothing_queued()
        mail = smtp_relay.send(client, smtp_relay.mail(f"after {label}"))
    assert mail.reply is not None and mail.reply[0] == 250, mail.reply
    assert_byte_identical(smtp_relay.wait_delivered([mail], WAIT), [mail])
    assert len(smtp_relay.relay.emulator.outbox) == 1


# --- d. A connection dropped mid-DATA ---------------------------------------------------------------------------


def test_a_connection_dropped_mid_data_queues_nothing(smtp_relay: SmtpRelay) -> None:
    mail = smtp_relay.mail("cut off", size=200_000)
    session = raw_session(smtp_relay)
    session.sendall(mail.wire[: len(mail.wire) // 2])
    session.reader.close()  # type: ignore[attr-defined]  # the file holds the socket open until it is closed too
    session.close()
    # The listener saw the close: its count of connections from this source is back to none.
    wait_for(lambda: not smtp_relay.running.listener.connections, 30, "the listener to let the connection go")
    # And a whole mail after it goes through, so the relay had every chance to store the cut one.
    with smtp_relay.connect() as client:
        after = smtp_relay.send(client, smtp_relay.mail("after the cut"))
    assert after.reply is not None and after.reply[0] == 250, after.reply
    smtp_relay.wait_delivered([after], WAIT)
    assert smtp_relay.delivered_counts().get(mail.subject) is None
    wait_for(lambda: smtp_relay.payload_blobs() == set(), 30, "the delivered mail's blob deleted")
    smtp_relay.assert_nothing_queued()


# --- f. swaks, Debian's SMTP test tool ------------------------------------------------------------------------------

SWAKS = Path("/usr/bin/swaks")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_with_starttls_and_auth_delivers_one_mail(smtp_relay: SmtpRelay, mechanism: str) -> None:
    if not SWAKS.exists():
        if os.environ.get("CI"):
            pytest.fail(f"swaks is missing at {SWAKS}: .ci/run installs Debian's swaks package")
        pytest.skip("swaks is not installed: apt-get install swaks (.ci/run installs it)")
    mail = smtp_relay.mail(f"swaks {mechanism}")
    # fmt: off
    command = [
        str(SWAKS), "--server", "127.0.0.1", "--port", str(smtp_relay.starttls_port), "--ehlo", "mfp.contoso.com",
        "--tls", "--tls-verify", "--tls-ca-path", str(smtp_relay.tls.ca_pem),
        "--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD,
        "--from", mail.sender, "--to", RECIPIENT, "--data", "-",
    ]
    # fmt: on
    # swaks ends DATA with CRLF . CRLF after whatever it read, so the mail's last line end is its own: given the mail
    # without it, swaks puts on the wire exactly mail.wire.
    run = subprocess.run(command, input=mail.wire[:-2], capture_output=True, timeout=120, check=False)
    transcript = run.stdout.decode(errors="replace")
    assert run.returncode == 0, transcript[-3000:]
    assert f"AUTH {mechanism}" in transcript and "<~  250 2.0.0 Queued as smtp-mfp-3f-" in transcript, transcript
    assert PASSWORD not in transcript  # swaks shows the AUTH exchange base64-encoded, never in clear
    assert_byte_identical(smtp_relay.wait_delivered([mail], WAIT), [mail])


# --- g. Thousands of mails, each its own request ------------------------------------------------------------------

MANY = 1000
PARALLEL = 20


def send_many(relay: SmtpRelay, label: str, count: int) -> list[Sent]:
    """`count` mails on one connection, their senders in turn (each a mailbox the relay paces on its own)."""
    mails = []
    with relay.connect() as client:
        for n in range(count):
            mail = relay.send(client, relay.mail(f"{label} {n}", sender=SENDERS[n % len(SENDERS)], body=f"mail {n}\n"))
            assert accepted(mail), (n, mail.reply)
            mails.append(mail)
    return mails


def test_1000_mails_over_one_connection_are_each_delivered_once_byte_identical(smtp_relay: SmtpRelay) -> None:
    start = time.monotonic()
    mails = send_many(smtp_relay, "one connection", MANY)
    accepted_in = elapsed(start)
    ids = {m.reply[1] for m in mails if m.reply}
    assert len(ids) == MANY  # each mail its own request: the peer's defect (each overwrote the last) cannot be
    delivered = smtp_relay.wait_delivered(mails, 240)
    print(f"\n{MANY} mails over one connection: 250 for all in {accepted_in} s, all delivered in {elapsed(start)} s")
    assert_byte_identical(delivered, mails)
    assert smtp_relay.poison() == []


def test_1000_mails_over_20_parallel_connections_are_each_delivered_once_byte_identical(
    smtp_relay: SmtpRelay,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    start = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        batches = list(pool.map(lambda c: send_many(smtp_relay, f"connection {c}", MANY // PARALLEL), range(PARALLEL)))
    mails = [m for batch in batches for m in batch]
    accepted_in = elapsed(start)
    assert len({m.reply[1] for m in mails if m.reply}) == MANY
    delivered = smtp_relay.wait_delivered(mails, 240)
    print(
        f"\n{MANY} mails over {PARALLEL} connections: 250 for all in {accepted_in} s, delivered in {elapsed(start)} s"
    )
    assert_byte_identical(delivered, mails)
    assert smtp_relay.poison() == []


# --- e, h. Storage down -------------------------------------------------------------------------------------------


class TestStorageDown:
    """Against a private Azurite that goes down and comes back on the same ports with its data (RestartableAzurite):
    the whole relay uses it, the listener's intake and the local host alike."""

    @pytest.fixture
    def azurite(self, restartable_azurite: RestartableAzurite) -> RestartableAzurite:
        return restartable_azurite  # relay_env, the local host and the listener all take this one

    def test_storage_down_during_data_is_451_and_the_devices_retry_is_delivered_once(
        self, smtp_relay: SmtpRelay, restartable_azurite: RestartableAzurite
    ) -> None:
        mail = smtp_relay.mail("storage down")
        with smtp_relay.connect() as client:
            assert client.mail(mail.sender)[0] == 250 and client.rcpt(RECIPIENT)[0] == 250
            restartable_azurite.halt()
            code, text = client.data(mail.wire)
            assert (code, text) == (451, b"4.3.0 The relay could not store the mail now; please try again later")
            restartable_azurite.start()
            # The device tries again, on the same connection, with the same mail.
            retried = smtp_relay.send(client, mail)
        assert accepted(retried), retried.reply
        # The first attempt's store may still finish behind the 451 (the SDK retries): closing the listener waits
        # for it, so that a second request it might enqueue is on the queue before the count below.
        smtp_relay.running.close()
        delivered = smtp_relay.wait_delivered([mail], WAIT)
        assert_byte_identical(delivered, [mail])
        assert smtp_relay.poison() == []

    def test_storage_stopped_mid_run_every_250_is_delivered_once_and_every_other_mail_got_a_4xx(
        self, smtp_relay: SmtpRelay, restartable_azurite: RestartableAzurite
    ) -> None:
        connections, per_connection = 3, 100
        replies: list[Sent] = []
        lock = threading.Lock()

        def device(c: int) -> None:
            client = smtp_relay.connect()
            for n in range(per_connection):
                mail = smtp_relay.mail(f"mid-run {c}.{n}", sender=SENDERS[(c + n) % len(SENDERS)])
                try:
                    smtp_relay.send(client, mail)
                except (smtplib.SMTPException, OSError) as exc:  # a dropped connection: no 250, so the device retries
                    mail.reply = (0, repr(exc).encode())
                    client = smtp_relay.connect()
                with lock:
                    replies.append(mail)
            client.quit()

        start = time.monotonic()
        threads = [threading.Thread(target=device, args=(c,)) for c in range(connections)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(replies) >= 100, 120, "100 replies before storage stops")
        restartable_azurite.halt()
        halted = len(replies)
        # Down until the devices have met it: at least one mail answered with a 4xx (the store's 30 s budget).
        wait_for(lambda: any(not accepted(m) for m in replies), 120, "a device to get a 4xx")
        restartable_azurite.start()
        for thread in threads:
            thread.join(240)
        sent_in = elapsed(start)
        assert len(replies) == connections * per_connection
        others = [m for m in replies if not accepted(m)]
        assert others, "no mail met the outage"
        assert all(m.reply is not None and 400 <= m.reply[0] < 500 for m in others), {m.reply for m in others}
        # The devices retry what was not accepted.
        with smtp_relay.connect() as client:
            retried = [smtp_relay.send(client, Sent(m.subject, m.sender, m.wire)) for m in others]
        assert all(accepted(m) for m in retried), [m.reply for m in retried if not accepted(m)]
        smtp_relay.running.close()  # every store behind a 4xx finished (see the test above)
        delivered = smtp_relay.wait_delivered(replies, 240)
        print(
            f"\n{len(replies)} mails, storage stopped after {halted} replies: {len(others)} got a 4xx "
            f"({sorted({m.reply[0] for m in others if m.reply})}), sent in {sent_in} s, retried and all delivered once "
            f"in {elapsed(start)} s"
        )
        assert_byte_identical(delivered, replies)
        assert smtp_relay.poison() == []


# --- A listener killed --------------------------------------------------------------------------------------------


class ListenerProcess:
    """`python -m mailrelay_smtp` as a process of its own, with the in-process listener's settings, on a fixed port:
    started again after a kill on the same one, as a restarted container is."""

    def __init__(self, relay: SmtpRelay, port: int) -> None:
        settings = relay.running.listener.settings
        self.env = {
            **os.environ,
            "SMTP_LOGINS_FILE": str(settings.logins_file),
            "AzureWebJobsStorage": relay.azurite.connection_string,
            "MAILRELAY_APPS": relay.relay.env["MAILRELAY_APPS"],
            "ALLOWED_SENDERS": relay.relay.env["ALLOWED_SENDERS"],
            "MAIL_QUEUE_NAME": relay.relay.queue_name,
            "SMTP_TLS_CERT_FILE": str(settings.tls_cert_file),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_HOSTNAME": "localhost",
            "SMTP_STARTTLS_PORT": str(port),
            "SMTP_TLS_PORT": "0",
        }
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        import sys

        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailrelay_smtp"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # one line per port, once it is open
        assert '"listening": "starttls"' in line, line

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no close(), no answer for what is under way
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def test_a_listener_killed_mid_mail_loses_nothing_and_the_devices_retry_is_delivered_once(
    smtp_relay: SmtpRelay,
) -> None:
    """The listener's process is killed right after a mail's final dot, while its store may be under way, and starts
    again: the device, which saw no 250, sends that mail again, and goes on. Every mail is delivered exactly once,
    whatever the kill interrupted (the store not begun, half done, or done and its 250 unsent: the same id)."""
    import random

    from devstack.azurite import free_port

    smtp_relay.running.close()  # this test's listener is a process of its own
    port = free_port()
    process = ListenerProcess(smtp_relay, port)
    process.start()
    smtp_relay.running.ports["starttls"] = port
    mails = [smtp_relay.mail(f"killed {n}", sender=SENDERS[n % len(SENDERS)]) for n in range(60)]
    killed_at, retried = {20, 40}, []
    try:
        client = smtp_relay.connect()
        for n, mail in enumerate(mails):
            if n not in killed_at:
                smtp_relay.send(client, mail)
                assert accepted(mail), mail.reply
                continue
            assert client.mail(mail.sender)[0] == 250 and client.rcpt(RECIPIENT)[0] == 250
            client.putcmd("data")
            assert client.getreply()[0] == 354
            stuffed = re.sub(rb"(?m)^\.", b"..", mail.wire)  # as smtplib's data() sends it
            client.send(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
            time.sleep(0 if n == min(killed_at) else random.uniform(0, 0.02))
            process.kill()
            try:
                mail.reply = client.getreply()  # the 250 may have left before the kill: then it is accepted
            except (smtplib.SMTPServerDisconnected, OSError):
                mail.reply = None
            process.start()
            client = smtp_relay.connect()
            if not accepted(mail):
                retried.append(n)
                smtp_relay.send(client, mail)  # the device's retry: the same bytes
                assert accepted(mail), mail.reply
        client.quit()
    finally:
        process.stop()
    delivered = smtp_relay.wait_delivered(mails, 120)
    assert_byte_identical(delivered, mails)
    assert smtp_relay.poison() == []
    print(f"\nkilled at mails {sorted(killed_at)}; retried by the device: {retried}")
