"""The listener's rules without a socket: logins and their hashes, failed-login slow-down, settings, request ids, and
the intake's mapping of the client library's answers to SMTP replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mailrelay_client import ContractError, Violation
from mailrelay_smtp.intake import Intake, Refused, Unavailable, request_id
from mailrelay_smtp.logins import FailedLogins, Logins, LoginsError, hash_password
from mailrelay_smtp.settings import SettingsError, app_senders, load

from tests.smtp.conftest import CHEAP, PASSWORD, mail

HASH = hash_password(PASSWORD, CHEAP)


def write_logins(tmp_path: Path, *logins: dict[str, Any]) -> Path:
    path = tmp_path / "logins.json"
    path.write_text(json.dumps({"logins": list(logins)}))
    return path


def login(**overrides: Any) -> dict[str, Any]:
    return {"user": "mfp-3f", "app": "printers", "device": "3rd floor MFP", "hash": HASH, **overrides}


# --- Logins ---------------------------------------------------------------------------------------------------


def test_a_hash_is_scrypt_with_its_cost_and_a_random_salt_and_verifies_only_its_password(tmp_path: Path) -> None:
    default = hash_password(PASSWORD)
    assert default.startswith("scrypt$17$8$1$")  # OWASP's minimum for scrypt: N=2^17, r=8, p=1
    assert hash_password(PASSWORD, CHEAP) != HASH  # salted
    logins = Logins.load(write_logins(tmp_path, login(hash=default)), ["printers"])
    found = logins.verify(b"mfp-3f", PASSWORD.encode())
    assert found is not None and (found.app, found.device) == ("printers", "3rd floor MFP")
    assert logins.verify(b"mfp-3f", b"wrong") is None
    assert logins.verify(b"MFP-3F", PASSWORD.encode()) is None  # users are exact
    assert logins.verify(b"nobody", PASSWORD.encode()) is None
    assert logins.verify(b"\xff\xfe", PASSWORD.encode()) is None


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (login(app="payroll"), "app 'payroll' is not declared"),
        (login(user="bad user"), "user must be"),
        (login(user="x\ny"), "user must be"),
        (login(hash="plain-text-password"), "hash is not a scrypt"),
        (login(hash="scrypt$10$8$1$" + HASH.split("$", 4)[4]), "cost is out of range"),
        (login(device="a\nb"), "device must be a printable name"),
        ({**login(), "password": "x"}, "unknown fields: password"),
        (login(hash=None), "hash is missing"),
    ],
)
def test_a_bad_login_is_refused_at_load_naming_what(tmp_path: Path, entry: dict[str, Any], words: str) -> None:
    with pytest.raises(LoginsError, match=words):
        Logins.load(write_logins(tmp_path, entry), ["printers", "default"])


def test_a_user_listed_twice_or_a_file_that_is_not_logins_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoginsError, match="listed twice"):
        Logins.load(write_logins(tmp_path, login(), login(device="other")), ["printers"])
    path = tmp_path / "x.json"
    path.write_text("[]")
    with pytest.raises(LoginsError, match=r'must hold \{"logins"'):
        Logins.load(path, ["printers"])
    path.write_text("{not json")
    with pytest.raises(LoginsError, match="is not JSON"):
        Logins.load(path, ["printers"])
    with pytest.raises(LoginsError, match="cannot be read"):
        Logins.load(tmp_path / "missing.json", ["printers"])


def test_failed_logins_are_free_a_few_times_then_double_up_to_the_cap_and_are_forgotten() -> None:
    now = [1000.0]
    failed = FailedLogins(clock=lambda: now[0])
    delays = []
    for _ in range(12):
        delays.append(failed.delay("10.0.0.1", "mfp-3f"))
        failed.failed("10.0.0.1", "mfp-3f")
    assert delays[: FailedLogins.FREE] == [0.0] * FailedLogins.FREE
    assert delays[FailedLogins.FREE : FailedLogins.FREE + 4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == FailedLogins.MAX_DELAY
    failed.succeeded("mfp-3f")  # the right password clears the user, not the address that guessed
    assert failed.delay("10.0.0.2", "mfp-3f") == 0.0
    assert failed.delay("10.0.0.1", "other") == FailedLogins.MAX_DELAY
    now[0] += FailedLogins.WINDOW + 1
    assert failed.delay("10.0.0.1", "other") == 0.0


def test_failed_logins_cannot_grow_without_bound() -> None:
    failed = FailedLogins()
    for i in range(FailedLogins.MAX_KEYS + 50):
        failed.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "mfp-3f")
    assert len(failed._failures) <= FailedLogins.MAX_KEYS + 2


# --- Settings -------------------------------------------------------------------------------------------------

BASE = {"SMTP_LOGINS_FILE": "/etc/logins.json", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def test_settings_need_the_logins_storage_and_a_certificate_for_tls(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SMTP_LOGINS_FILE is missing"):
        load({})
    with pytest.raises(SettingsError, match="SMTP_QUEUE_SERVICE_URI"):
        load({"SMTP_LOGINS_FILE": "x"})
    with pytest.raises(SettingsError, match="SMTP_TLS_CERT_FILE is missing"):
        load(BASE)
    with pytest.raises(SettingsError, match="not a file"):
        load({**BASE, "SMTP_TLS_CERT_FILE": str(tmp_path / "none.pem")})
    pem = tmp_path / "server.pem"
    pem.write_text("x")
    settings = load({**BASE, "SMTP_TLS_CERT_FILE": str(pem)})
    assert (settings.starttls_port, settings.tls_port, settings.plain_port) == (587, 465, 0)
    assert settings.max_message_bytes == 3_000_000 and settings.max_recipients == 500


def test_the_plain_port_needs_its_sources_and_needs_no_certificate() -> None:
    plain = {**BASE, "SMTP_STARTTLS_PORT": "0", "SMTP_TLS_PORT": "0", "SMTP_PLAIN_PORT": "2525"}
    with pytest.raises(SettingsError, match="SMTP_PLAIN_SOURCES is missing"):
        load(plain)
    with pytest.raises(SettingsError, match="not an address or CIDR"):
        load({**plain, "SMTP_PLAIN_SOURCES": "10.0.0.0/8, printers"})
    settings = load({**plain, "SMTP_PLAIN_SOURCES": "10.1.2.0/24,192.168.7.7"})
    assert [str(n) for n in settings.plain_sources] == ["10.1.2.0/24", "192.168.7.7/32"]
    with pytest.raises(SettingsError, match="all 0"):
        load({**plain, "SMTP_PLAIN_PORT": "0"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("SMTP_MAX_RECIPIENTS", "501"), ("SMTP_IDLE_TIMEOUT_SECONDS", "soon"), ("SMTP_STARTTLS_PORT", "70000")],
)
def test_a_bad_number_is_named(name: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=name):
        plain = {
            "SMTP_STARTTLS_PORT": "0",
            "SMTP_TLS_PORT": "0",
            "SMTP_PLAIN_PORT": "25",
            "SMTP_PLAIN_SOURCES": "10.0.0.0/8",
        }
        load({**BASE, **plain, name: value})


def test_each_apps_senders_come_from_the_relays_own_settings() -> None:
    senders = app_senders(
        json.dumps([{"name": "printers", "senders": ["Scans@Contoso.com"], "messagesPerMinute": 10}]),
        "alerts@contoso.com, scans@contoso.com",
    )
    assert senders == {"default": {"alerts@contoso.com", "scans@contoso.com"}, "printers": {"scans@contoso.com"}}
    with pytest.raises(SettingsError, match="MAILRELAY_APPS"):
        app_senders('[{"name": "Printers!"}]', "")


# --- Request ids and the intake ---------------------------------------------------------------------------------


def a_login(tmp_path: Path, user: str = "mfp-3f") -> Any:
    logins = Logins.load(write_logins(tmp_path, login(user=user)), ["printers"])
    found = logins.verify(user.encode(), PASSWORD.encode())
    assert found is not None
    return found


def test_a_retried_mail_has_the_same_id_and_another_mail_another(tmp_path: Path) -> None:
    device = a_login(tmp_path)
    first = request_id(device, "scans@contoso.com", ["ada@contoso.com"], mail("a"))
    assert first.startswith("smtp-mfp-3f-") and len(first) <= 128
    assert request_id(device, "SCANS@contoso.com", ["ada@contoso.com"], mail("a")) == first  # the same mail again
    assert request_id(device, "scans@contoso.com", ["ada@contoso.com"], mail("b")) != first
    assert request_id(device, "scans@contoso.com", ["bob@contoso.com"], mail("a")) != first
    assert request_id(a_login(tmp_path, "mfp-4f"), "scans@contoso.com", ["ada@contoso.com"], mail("a")) != first
    # Without a Message-ID, two identical mails are two mails (a printer's "toner low" twice).
    bare = b"From: scans@contoso.com\r\nTo: ada@contoso.com\r\n\r\nToner low\r\n"
    assert request_id(device, "scans@contoso.com", ["ada@contoso.com"], bare) != request_id(
        device, "scans@contoso.com", ["ada@contoso.com"], bare
    )


class FakeClient:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def send_mime(self, data: bytes, sender: str, **kwargs: Any) -> str:
        self.calls.append({"data": data, "sender": sender, **kwargs})
        if self.error:
            raise self.error
        return "queue-message-id"


def test_the_intake_sends_the_mime_as_is_on_the_logins_app_with_the_envelope_and_its_id(tmp_path: Path) -> None:
    client, apps = FakeClient(), []

    def client_for(app: str) -> FakeClient:
        apps.append(app)
        return client

    intake = Intake(client_for)
    device = a_login(tmp_path)
    accepted = intake.submit(device, "scans@contoso.com", ["ada@contoso.com", "eve@contoso.com"], mail())
    intake.submit(device, "scans@contoso.com", ["ada@contoso.com"], mail("2"))
    assert apps == ["printers"]  # one client per app, built once
    call = client.calls[0]
    assert call == {
        "data": mail(),
        "sender": "scans@contoso.com",
        "to": ["ada@contoso.com", "eve@contoso.com"],
        "id": accepted.id,
    }


def test_a_contract_refusal_is_554_with_its_reason_and_anything_else_is_unavailable(tmp_path: Path) -> None:
    from azure.core.exceptions import ServiceRequestError

    device = a_login(tmp_path)
    refusal = ContractError([Violation("mime", "has no From header\r\n250 forged")])
    with pytest.raises(Refused) as caught:
        Intake(lambda app: FakeClient(refusal)).submit(device, "scans@contoso.com", ["a@contoso.com"], mail())
    assert caught.value.reply.startswith("554 5.6.0 ") and "\n" not in caught.value.reply  # one line, always
    for error in (ServiceRequestError("connection refused"), TimeoutError(), RuntimeError("queue not found")):
        with pytest.raises(Unavailable):
            Intake(lambda app, e=error: FakeClient(e)).submit(device, "scans@contoso.com", ["a@contoso.com"], mail())


def test_the_plain_port_cannot_be_opened_when_the_peer_is_not_the_device() -> None:
    proxy = {**BASE, "SMTP_STARTTLS_PORT": "0", "SMTP_TLS_PORT": "0", "SMTP_PEER_IS_DEVICE": "false"}
    with pytest.raises(SettingsError, match="SMTP_PEER_IS_DEVICE"):
        load({**proxy, "SMTP_PLAIN_PORT": "25", "SMTP_PLAIN_SOURCES": "10.0.0.0/8"})
    with pytest.raises(SettingsError, match="true or false"):
        load({**BASE, "SMTP_PEER_IS_DEVICE": "maybe"})
