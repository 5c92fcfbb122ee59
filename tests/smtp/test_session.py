"""The SMTP conversation a device has with the listener (smtp/mailrelay_smtp/server.py), over real sockets and TLS,
with a fake intake: what each command answers, and what reaches the intake."""

from __future__ import annotations

import base64
import json
import logging
import smtplib
import socket
import ssl
import time
from collections.abc import Callable

import pytest
from mailrelay_smtp.intake import Refused, Unavailable
from mailrelay_smtp.logins import FailedLogins

from tests.smtp.conftest import PASSWORD, SENDER, Running, mail, wait_until

Start = Callable[..., Running]


def reply(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """One whole SMTP reply (the last line has a space after its code)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def test_ehlo_offers_size_8bitmime_pipelining_and_starttls_and_auth_only_after_tls(start_listener: Start) -> None:
    running = start_listener()
    with smtplib.SMTP("127.0.0.1", running.ports["starttls"], timeout=30) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "3000000"  # the relay's MIME maximum
        assert {"8bitmime", "pipelining", "starttls"} <= set(client.esmtp_features)
        assert "auth" not in client.esmtp_features
        code, text = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0mfp-3f\0{PASSWORD}".encode()).decode())
        assert code == 530 and b"STARTTLS" in text
        code, _ = client.docmd("MAIL", f"FROM:<{SENDER}>")
        assert code == 530
        client.starttls(context=running.context())
        client.ehlo()
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        assert "starttls" not in client.esmtp_features
    assert running.intake.submitted == []


def test_mail_before_auth_is_refused_after_tls_too(start_listener: Start) -> None:
    running = start_listener()
    with running.smtp(login=False) as client:
        code, text = client.docmd("MAIL", f"FROM:<{SENDER}>")
        assert code == 530 and b"Authentication required" in text


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_a_login_sends_as_its_app_over_starttls(start_listener: Start, mechanism: str) -> None:
    running = start_listener()
    with running.smtp(login=False) as client:
        client.user, client.password = "mfp-3f", PASSWORD
        authobject = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, _ = client.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
        assert code == 235
        client.sendmail(SENDER, ["ada@contoso.com"], mail())
    (submitted,) = running.intake.submitted
    assert (submitted.login.app, submitted.login.device) == ("printers", "3rd floor MFP")
    assert submitted.sender == SENDER and submitted.recipients == ["ada@contoso.com"]
    assert submitted.data == mail()


def test_implicit_tls_takes_auth_at_once(start_listener: Start) -> None:
    running = start_listener()
    with running.smtp("tls") as client:
        client.sendmail(SENDER, ["ada@contoso.com"], mail())
    assert len(running.intake.submitted) == 1


def test_a_wrong_password_is_535_and_failures_are_counted_per_source_and_user(start_listener: Start) -> None:
    failed = FailedLogins()
    running = start_listener(failed=failed)
    with running.smtp(login=False) as client:
        for _ in range(FailedLogins.FREE):
            with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
                client.login("mfp-3f", "not the password")
            assert caught.value.smtp_code == 535
    # smtplib tries LOGIN then PLAIN for each login(): each try is one failure.
    assert failed.delay("127.0.0.1", "someone-else") > 0  # the source is slowed, whatever user it tries next
    assert failed.delay("10.0.0.9", "mfp-3f") > 0  # the user is slowed, from whatever source
    assert failed.delay("10.0.0.9", "someone-else") == 0


def test_a_slowed_login_waits_before_its_answer(start_listener: Start) -> None:
    class Recorded(FailedLogins):
        asked: list[tuple[str, str]] = []

        def delay(self, source: str, user: str) -> float:
            self.asked.append((source, user))
            return 0.3

    running = start_listener(failed=Recorded())
    before = time.monotonic()
    with running.smtp() as client:
        client.noop()
    assert ("127.0.0.1", "mfp-3f") in Recorded.asked
    assert time.monotonic() - before >= 0.3  # the wait happened (a floor, never a ceiling: no timing is asserted)


def test_an_unknown_user_and_a_hostile_one_are_535_and_log_no_forged_line(
    start_listener: Start, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_listener()
    with running.smtp(login=False) as client:
        for user in ("nobody", 'x\r\n{"event": "smtp.auth"}'):
            blob = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
            code, _ = client.docmd("AUTH", f"PLAIN {blob}")
            assert code == 535
    users = [r.__dict__.get("user") for r in caplog.records if r.getMessage() == "smtp.auth_failed"]
    assert users == ["nobody", "(not a user name)"]
    assert all(PASSWORD not in r.getMessage() and PASSWORD not in str(r.__dict__) for r in caplog.records)


def test_a_sender_off_the_apps_list_is_550_at_mail_from_before_any_data(start_listener: Start) -> None:
    running = start_listener()
    with running.smtp() as client:
        code, text = client.docmd("MAIL", "FROM:<billing@contoso.com>")  # another app's sender
        assert code == 550 and b"5.7.1 App printers may not send as this address" in text
        code, _ = client.docmd("RCPT", "TO:<ada@contoso.com>")
        assert code == 503  # no transaction was opened
        client.rset()
        client.sendmail(SENDER, ["ada@contoso.com"], mail())  # the connection goes on
    assert [s.sender for s in running.intake.submitted] == [SENDER]


def test_recipients_beyond_the_limit_are_452_and_the_rest_are_sent(start_listener: Start) -> None:
    running = start_listener(max_recipients=2)
    with running.smtp() as client:
        client.mail(SENDER)
        assert client.rcpt("a@contoso.com")[0] == 250
        assert client.rcpt("b@contoso.com")[0] == 250
        assert client.rcpt("c@contoso.com")[0] == 452
        assert client.data(mail(to="a@contoso.com, b@contoso.com"))[0] == 250
    assert running.intake.submitted[0].recipients == ["a@contoso.com", "b@contoso.com"]


def test_a_mail_over_the_size_is_552_declared_or_sent(start_listener: Start) -> None:
    running = start_listener(max_message_bytes=10_000)
    with running.smtp() as client:
        code, _ = client.docmd("MAIL", f"FROM:<{SENDER}> SIZE=10001")
        assert code == 552
        client.mail(SENDER)
        client.rcpt("ada@contoso.com")
        code, _ = client.data(mail(extra="X-Pad: " + "p" * 900 + "\r\n") * 12)
        assert code == 552
        assert client.noop()[0] == 250  # the session survives
    assert running.intake.submitted == []


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Unavailable("ServiceRequestError"), 451),
        (Refused("554 5.6.0 The relay cannot send this mail as it is: mime: has no From header"), 554),
    ],
)
def test_the_intakes_answer_is_the_devices(start_listener: Start, fault: Exception, code: int) -> None:
    running = start_listener()
    running.intake.fault = fault
    with running.smtp() as client:
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail(SENDER, ["ada@contoso.com"], mail())
        assert caught.value.smtp_code == code
        running.intake.fault = None
        client.sendmail(SENDER, ["ada@contoso.com"], mail("second"))  # a new transaction on the same connection
    assert [s.data for s in running.intake.submitted] == [mail("second")]


def test_a_store_slower_than_its_budget_is_451(start_listener: Start) -> None:
    running = start_listener(store_timeout=0.2)
    running.intake.fault = lambda: time.sleep(1)
    with running.smtp() as client, pytest.raises(smtplib.SMTPDataError) as caught:
        client.sendmail(SENDER, ["ada@contoso.com"], mail())
    assert caught.value.smtp_code == 451


def test_each_mail_on_one_connection_is_its_own_submission(start_listener: Start) -> None:
    """The peer's defect (each mail on a connection overwrote the last) cannot happen: the envelope is new each time."""
    running = start_listener()
    with running.smtp() as client:
        for i in range(50):
            client.sendmail(SENDER, [f"r{i}@contoso.com"], mail(f"scan-{i}", to=f"r{i}@contoso.com"))
    assert [s.recipients for s in running.intake.submitted] == [[f"r{i}@contoso.com"] for i in range(50)]
    assert [s.data for s in running.intake.submitted] == [mail(f"scan-{i}", to=f"r{i}@contoso.com") for i in range(50)]


def test_pipelined_commands_are_answered_in_order(start_listener: Start) -> None:
    running = start_listener()
    with running.smtp() as client:
        sock = client.sock
        assert sock is not None
        body = mail().replace(b"\r\n.", b"\r\n..") + b".\r\n"
        sock.sendall(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<ada@contoso.com>\r\nDATA\r\n".encode())
        answers = b""
        while answers.count(b"\r\n") < 3:
            answers += sock.recv(4096)
        assert [line[:3] for line in answers.split(b"\r\n")[:3]] == [b"250", b"250", b"354"]
        sock.sendall(body)
        assert reply(sock).startswith(b"250 2.0.0 Queued as")
    assert len(running.intake.submitted) == 1


def test_a_connection_dropped_mid_data_submits_nothing(start_listener: Start) -> None:
    running = start_listener()
    client = running.smtp()
    client.mail(SENDER)
    client.rcpt("ada@contoso.com")
    client.putcmd("DATA")
    assert client.getreply()[0] == 354
    assert client.sock is not None
    client.sock.sendall(mail()[:40])  # half a mail, then the device loses power
    client.sock.close()
    time.sleep(0.5)  # the listener sees the connection end; nothing may be submitted after it
    with running.smtp() as other:
        assert other.noop()[0] == 250
    assert running.intake.submitted == []


def test_connections_per_source_are_capped(start_listener: Start) -> None:
    running = start_listener(max_connections_per_source=2)
    first, second = running.smtp(login=False), running.smtp(login=False)
    with socket.create_connection(("127.0.0.1", running.ports["starttls"]), timeout=10) as third:
        assert reply(third).startswith(b"421 4.7.0 Too many connections")
    first.quit()
    assert wait_until(lambda: running.listener.connections["127.0.0.1"] == 1)
    with running.smtp() as again:  # a slot freed is a slot for the next
        assert again.noop()[0] == 250
    second.quit()
    assert wait_until(lambda: "127.0.0.1" not in running.listener.connections)


def test_an_idle_connection_is_closed(start_listener: Start) -> None:
    running = start_listener(idle_timeout=0.3)
    with socket.create_connection(("127.0.0.1", running.ports["starttls"]), timeout=10) as sock:
        assert reply(sock).startswith(b"220")
        sock.settimeout(10)
        assert sock.recv(4096) == b""  # closed by the listener, not by this test's timeout


def test_a_session_that_outlives_its_lifetime_is_told_421_and_closed(start_listener: Start) -> None:
    """A client that keeps the connection busy with a command now and then (slow-loris) still meets the cap."""
    running = start_listener(session_timeout=0.5, idle_timeout=60)
    with socket.create_connection(("127.0.0.1", running.ports["starttls"]), timeout=10) as sock:
        assert reply(sock).startswith(b"220")
        received = b""
        for _ in range(40):
            try:
                sock.sendall(b"NOOP\r\n")
            except OSError:
                break
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
            time.sleep(0.05)
        assert b"421 4.4.2 Session too long" in received


def test_the_plain_port_answers_only_its_listed_sources(start_listener: Start) -> None:
    import ipaddress

    from tests.smtp.conftest import _free_port

    listed = start_listener(plain_port=_free_port(), plain_sources=(ipaddress.ip_network("127.0.0.0/8"),))
    with listed.smtp("plain") as client:  # AUTH in clear: the admin's documented choice for old devices
        client.sendmail(SENDER, ["ada@contoso.com"], mail())
    assert len(listed.intake.submitted) == 1
    unlisted = start_listener(plain_port=_free_port(), plain_sources=(ipaddress.ip_network("10.0.0.0/8"),))
    with socket.create_connection(("127.0.0.1", unlisted.ports["plain"]), timeout=10) as sock:
        assert reply(sock).startswith(b"554 5.7.1 This port is only for the devices its admin listed")
        assert sock.recv(10) == b""


def test_log_lines_name_app_device_and_counts_never_addresses_or_content(
    start_listener: Start, caplog: pytest.LogCaptureFixture
) -> None:
    running = start_listener()
    with running.smtp() as client:
        client.sendmail(SENDER, ["ada@contoso.com"], mail("confidential-subject"))
    (queued,) = [r for r in caplog.records if r.getMessage() == "smtp.queued"]
    assert (queued.app, queued.device, queued.recipients) == ("printers", "3rd floor MFP", 1)  # type: ignore[attr-defined]
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.name.startswith("mailrelay"))
    assert "ada@contoso.com" not in text and "confidential-subject" not in text and PASSWORD not in text


def test_the_json_log_formatter_keeps_every_field_on_its_line() -> None:
    from mailrelay_smtp.__main__ import JsonLines

    record = logging.LogRecord("mailrelay.smtp", logging.INFO, __file__, 1, "smtp.auth", None, None)
    record.device = 'MFP\n{"level": "error", "event": "forged"}'
    (line,) = JsonLines().format(record).splitlines()
    assert json.loads(line)["device"] == record.device


def test_behind_a_proxy_logins_are_slowed_per_user_only_and_connections_are_not_capped_per_source(
    start_listener: Start,
) -> None:
    """Container Apps' TCP ingress hides the device's address: one device's wrong password must not slow the others."""
    failed = FailedLogins()
    running = start_listener(failed=failed, per_source=False, max_connections_per_source=1)
    with running.smtp(login=False) as client:
        for _ in range(FailedLogins.FREE + 1):
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("mfp-3f", "not the password")
    assert failed.delay("127.0.0.1", "billing-app") == 0  # the shared address counted nothing
    assert failed.delay(None, "mfp-3f") > 0
    with running.smtp(user="billing-app") as first, running.smtp(user="billing-app") as second:
        assert first.noop()[0] == second.noop()[0] == 250  # no cap by the (shared) address


@pytest.mark.parametrize("address", ["ada", "ada@localhost", "a b@contoso.com"])
def test_a_recipient_the_relay_cannot_send_to_is_553_at_rcpt(start_listener: Start, address: str) -> None:
    running = start_listener()
    with running.smtp() as client:
        client.mail(SENDER)
        code, _ = client.docmd("RCPT", f"TO:<{address}>")
        assert code in (553, 501)
        assert client.rcpt("ada@xn--bcher-kva.example")[0] == 250  # an internationalized domain, as the contract has it
        assert client.data(mail(to="ada@xn--bcher-kva.example"))[0] == 250
    assert running.intake.submitted[0].recipients == ["ada@xn--bcher-kva.example"]


def test_non_ascii_addresses_are_refused_since_smtputf8_is_not_offered(start_listener: Start) -> None:
    running = start_listener()
    with running.smtp() as client:
        assert "smtputf8" not in client.esmtp_features  # the relay's contract takes ASCII addresses only
        client.mail(SENDER)
        assert client.sock is not None
        client.sock.sendall("RCPT TO:<zoë@contoso.com>\r\n".encode())  # smtplib itself refuses to send it
        assert client.getreply()[0] == 500


def test_connections_in_all_are_capped_whatever_their_sources(start_listener: Start) -> None:
    running = start_listener(max_connections=2, per_source=False)
    first, second = running.smtp(login=False), running.smtp(login=False)
    with socket.create_connection(("127.0.0.1", running.ports["starttls"]), timeout=10) as third:
        assert reply(third).startswith(b"421 4.7.0 Too many connections;")
    first.quit()
    second.quit()
    assert wait_until(lambda: running.listener.connections.total() == 0)


def test_closing_the_listener_answers_a_store_under_way_then_says_421(start_listener: Start) -> None:
    """A restart (a new revision, a scale-in) must not leave a stored mail unanswered: its device would resend it."""
    import asyncio
    import threading

    running = start_listener()
    stored = threading.Event()

    def slow_store() -> None:
        stored.set()
        time.sleep(1.0)

    running.intake.fault = slow_store
    client = running.smtp()
    idle = running.smtp()
    replies: list[int] = []

    def send() -> None:
        client.mail(SENDER)
        client.rcpt("ada@contoso.com")
        replies.append(client.data(mail())[0])

    sender = threading.Thread(target=send)
    sender.start()
    assert stored.wait(10)
    loop = next(iter(running.listener.sessions)).loop
    asyncio.run_coroutine_threadsafe(running.listener.close(), loop).result(30)
    sender.join(10)
    assert replies == [250]  # the fault returned None after its sleep: stored, and told so
    assert len(running.intake.submitted) == 1
    assert idle.getreply()[0] == 421  # the other session was told, then closed
    with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError, OSError)):
        client.noop()
        client.noop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.ports["starttls"]), timeout=5)


def test_a_connection_that_keeps_guessing_is_closed_after_ten_auth_commands(start_listener: Start) -> None:
    class NoWait(FailedLogins):
        def delay(self, source: str | None, user: str) -> float:
            return 0.0

    running = start_listener(failed=NoWait())
    with running.smtp(login=False) as client:
        codes = []
        for n in range(11):
            blob = base64.b64encode(f"\0mfp-3f\0guess {n}".encode()).decode()
            codes.append(client.docmd("AUTH", f"PLAIN {blob}")[0])
    assert codes == [535] * 10 + [421]
