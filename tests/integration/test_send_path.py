"""The send path with the real MSAL, azure-identity and azure-keyvault-secrets against the emulator."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.emulator import Emulator
from shared.bootstrap import Runtime, build_runtime
from shared.contract import parse_request
from shared.graph import build_send_mail_body
from shared.outcomes import Permanent, Sent, Transient
from shared.settings import load_settings

pytestmark = pytest.mark.integration

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0d1f4a5c-2b3e-4c6d-8e9f-a0b1c2d3e4f5"
SECRET_V1 = "Qx8~first.secret-value-aaaaaaaaaaaaaaaa"
SECRET_V2 = "Zp3~second.secret-value-bbbbbbbbbbbbbbb"
SECRET_NAME = "graph-client-secret"
ALERTS = "alerts@contoso.com"
BODY_TEXT = "confidential body 7f3a: the quarterly numbers"


@pytest.fixture
def stack(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Emulator, Runtime]]:
    emulator.add_app(TENANT, CLIENT, SECRET_V1)
    emulator.add_mailbox(ALERTS, in_exchange_scope=True)
    emulator.add_mailbox("ceo@contoso.com", in_exchange_scope=False)
    emulator.add_mailbox("hr@contoso.com", in_exchange_scope=False)
    emulator.set_secret(SECRET_NAME, SECRET_V1, expires_on=datetime.now(UTC) + timedelta(days=300))
    # azure-identity's ManagedIdentityCredential finds the App Service endpoint through these two.
    monkeypatch.setenv("IDENTITY_ENDPOINT", emulator.msi_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", emulator.identity_header)
    settings = load_settings(
        {
            "GRAPH_TENANT_ID": TENANT,
            "GRAPH_CLIENT_ID": CLIENT,
            "KEY_VAULT_URI": emulator.url,
            "GRAPH_CLIENT_SECRET_NAME": SECRET_NAME,
            "ALLOWED_SENDERS": f"{ALERTS},hr@contoso.com",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "GRAPH_BASE_URL": emulator.url,
            "GRAPH_AUTHORITY_HOST": emulator.url,
            "MAILRELAY_CA_BUNDLE": emulator.ca_cert_path,
        }
    )
    yield emulator, build_runtime(settings)


def request(sender: str = ALERTS, **extra: Any) -> bytes:
    return json.dumps(
        {
            "from": sender,
            "to": ["Ada Lovelace <ada@contoso.com>"],
            "cc": [{"address": "ops@contoso.com"}],
            "subject": "Quarterly numbers",
            "body": {"contentType": "html", "content": f"<p>{BODY_TEXT}</p>"},
            "headers": {"X-Relay-Test": "1"},
            **extra,
        }
    ).encode()


def test_valid_request_makes_exactly_one_graph_call_with_the_expected_body(stack: tuple[Emulator, Runtime]) -> None:
    emu, rt = stack
    attempt = rt.relay.send(request())
    assert attempt.outcome == Sent(202)
    assert emu.stats["graph.sendMail"] == 1
    (accepted,) = emu.outbox
    assert accepted["sender"] == ALERTS
    assert accepted["message"] == build_send_mail_body(parse_request(request()))


def test_sender_off_the_allow_list_makes_no_call_at_all(stack: tuple[Emulator, Runtime]) -> None:
    emu, rt = stack
    outcome = rt.relay.send(request("ceo@contoso.com")).outcome
    assert isinstance(outcome, Permanent) and outcome.code == "SenderNotAllowed"
    assert emu.stats.get("graph.sendMail", 0) == 0
    assert emu.stats.get("entra.token", 0) == 0 and emu.stats.get("keyvault.getSecret", 0) == 0


def test_mailbox_outside_the_exchange_scope_gives_access_denied_with_the_hint(stack: tuple[Emulator, Runtime]) -> None:
    emu, rt = stack
    outcome = rt.relay.send(request("hr@contoso.com")).outcome
    assert isinstance(outcome, Permanent)
    assert outcome.code == "ErrorAccessDenied"
    assert "Exchange scope" in outcome.hint and "30 minutes" in outcome.hint
    assert emu.outbox == []


def test_expired_secret_gives_a_clear_error(stack: tuple[Emulator, Runtime]) -> None:
    emu, rt = stack
    emu.set_app_secret(CLIENT, SECRET_V1, expired=True)
    outcome = rt.relay.send(request()).outcome
    assert isinstance(outcome, Permanent)
    assert outcome.code == "AADSTS7000222"
    assert "expired" in outcome.message
    assert "new secret" in outcome.hint and "Key Vault" in outcome.hint
    # Entra rejected it, so Key Vault was read again in case a rotation was waiting there.
    assert emu.stats["keyvault.getSecret"] == 2
    assert emu.outbox == []


def test_rotated_secret_is_picked_up_without_a_restart(stack: tuple[Emulator, Runtime]) -> None:
    emu, rt = stack
    assert rt.relay.send(request()).outcome == Sent(202)
    # The admin rotates: a new secret in the app registration (the old one removed), a new Key Vault
    # version. Tokens issued with the old secret lapse.
    emu.set_app_secret(CLIENT, SECRET_V2)
    emu.set_secret(SECRET_NAME, SECRET_V2, expires_on=datetime.now(UTC) + timedelta(days=700))
    emu.expire_tokens()
    assert rt.relay.send(request()).outcome == Sent(202)
    assert len(emu.outbox) == 2
    assert emu.stats["keyvault.getSecret"] == 2


@pytest.mark.parametrize(("status", "code"), [(429, "ApplicationThrottled"), (503, "ServiceUnavailable")])
def test_throttling_and_unavailability_are_transient_with_retry_after(
    stack: tuple[Emulator, Runtime], status: int, code: str
) -> None:
    emu, rt = stack
    emu.add_fault(service="graph.sendMail", status=status, retry_after=42, count=1)
    outcome = rt.relay.send(request()).outcome
    assert isinstance(outcome, Transient)
    assert outcome.code == code and outcome.retry_after == 42.0
    assert rt.relay.send(request()).outcome == Sent(202)


def test_hundred_sends_read_the_vault_once_and_ask_entra_once(stack: tuple[Emulator, Runtime]) -> None:
    emu, rt = stack
    for i in range(100):
        assert rt.relay.send(request(subject=f"report {i}")).outcome == Sent(202)
    assert len(emu.outbox) == 100
    assert emu.stats["keyvault.getSecret"] == 1
    assert emu.stats["entra.token"] == 1


def test_no_secret_token_or_body_in_any_log_line(
    stack: tuple[Emulator, Runtime], caplog: pytest.LogCaptureFixture
) -> None:
    emu, rt = stack
    caplog.set_level(logging.DEBUG)  # every logger, the SDKs' included, at their most talkative
    emu.add_fault(service="graph.sendMail", status=429, retry_after=1, count=1)
    rt.relay.send(request())
    rt.relay.send(request())
    emu.set_app_secret(CLIENT, SECRET_V2)
    emu.set_secret(SECRET_NAME, SECRET_V2)
    emu.expire_tokens()
    rt.relay.send(request())
    rt.relay.send(request("hr@contoso.com"))
    assert len(emu.outbox) == 2
    logged = "\n".join(r.getMessage() + " " + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert caplog.records, "the send path logs nothing at all; the test would prove nothing"
    for needle in (SECRET_V1, SECRET_V2, BODY_TEXT, "eyJ"):  # "eyJ" starts every JWT
        assert needle not in logged, f"{needle[:6]}... appears in the logs"
