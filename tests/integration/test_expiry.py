"""The expiry check with the real Key Vault, MSAL, Graph and Table SDKs against the emulator and Azurite.

The timer function is called as the host would (devstack.timers.run_timer), the CLI as `mailrelay`.
The clock is injected where days must pass (build_expiry_runtime(clock=...)); nothing sleeps.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from devstack.emulator import Emulator
from shared import bootstrap
from shared.bootstrap import build_expiry_runtime
from shared.cli import main as mailrelay
from shared.settings import load_expiry_settings

pytestmark = pytest.mark.integration

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0d1f4a5c-2b3e-4c6d-8e9f-a0b1c2d3e4f5"
SECRET_V1 = "Qx8~first.secret-value-aaaaaaaaaaaaaaaa"
SECRET_V2 = "Zp3~second.secret-value-bbbbbbbbbbbbbbb"
SECRET_NAME = "graph-client-secret"
ALERTS = "alerts@contoso.com"
OPS = "ops@contoso.com"
WEBHOOK_SIGNATURE = "sig=w3bh00k-s1gnature"
# An unreachable Table endpoint: nothing listens on port 9 of loopback.
DOWN_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;"
)


@dataclass
class Webhook:
    """A local chat webhook: records each POSTed JSON body; `status` is what it answers."""

    url: str = ""
    posts: list[dict[str, Any]] = field(default_factory=list)
    status: int = 202


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.posts.append(json.loads(body))
            self.send_response(hook.status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/workflows/expiry?{WEBHOOK_SIGNATURE}"
    yield hook
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def table_storage() -> Iterator[str | None]:
    """Azurite's connection string, or None when Azurite cannot run here (those tests then skip)."""
    try:
        from devstack.azurite import Azurite, AzuriteError
    except ImportError:
        yield None
        return
    azurite = Azurite()
    try:
        azurite.start()
    except (AzuriteError, OSError):
        yield None
        return
    try:
        yield azurite.connection_string
    finally:
        azurite.stop()


@dataclass
class Stack:
    emulator: Emulator
    env: dict[str, str]
    webhook: Webhook


@pytest.fixture
def stack(emulator: Emulator, webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    emulator.add_app(
        TENANT,
        CLIENT,
        SECRET_V1,
        roles=("Mail.Send", "Application.Read.All"),
        secret_end=datetime.now(UTC) + timedelta(days=10),
    )
    emulator.add_mailbox(ALERTS, in_exchange_scope=True)
    emulator.set_secret(SECRET_NAME, SECRET_V1, expires_on=datetime.now(UTC) + timedelta(days=10))
    env = {
        "GRAPH_TENANT_ID": TENANT,
        "GRAPH_CLIENT_ID": CLIENT,
        "KEY_VAULT_URI": emulator.url,
        "GRAPH_CLIENT_SECRET_NAME": SECRET_NAME,
        "ALLOWED_SENDERS": ALERTS,
        "AzureWebJobsStorage": DOWN_STORAGE,
        "GRAPH_BASE_URL": emulator.url,
        "GRAPH_AUTHORITY_HOST": emulator.url,
        "MAILRELAY_CA_BUNDLE": emulator.ca_cert_path,
        "EXPIRY_CHECK_SCHEDULE": "0 0 7 * * *",
        "EXPIRY_ALERT_SENDER": ALERTS,
        "EXPIRY_ALERT_RECIPIENTS": OPS,
        "EXPIRY_ALERT_WEBHOOK_URL": webhook.url,
        "IDENTITY_ENDPOINT": emulator.msi_endpoint,
        "IDENTITY_HEADER": emulator.identity_header,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    yield Stack(emulator, env, webhook)
    bootstrap.reset()


def outputs(stack: Stack, caplog: pytest.LogCaptureFixture, *more: str) -> str:
    """Everything the check put out: logs, webhook bodies, mail sent, CLI text."""
    return "\n".join([caplog.text, json.dumps(stack.webhook.posts), json.dumps(stack.emulator.outbox), *more])


def assert_no_secret(text: str) -> None:
    for value in (SECRET_V1, SECRET_V2, SECRET_V1[:12], SECRET_V2[:12], WEBHOOK_SIGNATURE):
        assert value not in text
    assert "eyJ" not in text  # no JWT (token) either


def with_azurite(stack: Stack, connection_string: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if connection_string is None:
        pytest.skip("Azurite is not available here (devstack/azurite.py, node_modules)")
    stack.env["AzureWebJobsStorage"] = connection_string
    monkeypatch.setenv("AzureWebJobsStorage", connection_string)


def test_timer_function_warns_by_mail_webhook_and_log(
    stack: Stack, caplog: pytest.LogCaptureFixture, table_storage: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devstack.timers import run_timer

    with_azurite(stack, table_storage, monkeypatch)
    caplog.set_level(logging.DEBUG)
    report = run_timer("check_secret_expiry")  # what the host calls on schedule
    assert report is None  # a timer function returns nothing; look at what went out instead
    (mail,) = stack.emulator.outbox
    assert mail["sender"] == ALERTS
    message = mail["message"]["message"]  # the outbox keeps sendMail's whole body
    assert message["toRecipients"] == [{"emailAddress": {"address": OPS}}]
    assert "14-day warning" in message["subject"]
    (post,) = stack.webhook.posts
    assert post["attachments"][0]["contentType"] == "application/vnd.microsoft.card.adaptive"
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "secret.expiry"]
    assert record.levelno == logging.WARNING and record.__dict__["threshold"] == 14
    # Run again the same day: recorded in Table storage, so nothing is repeated.
    bootstrap.reset()  # a new process, as after a cold start: only the table remembers
    run_timer("check_secret_expiry")
    assert len(stack.emulator.outbox) == 1 and len(stack.webhook.posts) == 1
    assert_no_secret(outputs(stack, caplog))


def test_each_threshold_once_across_days_and_a_new_version_starts_afresh(
    stack: Stack, table_storage: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_azurite(stack, table_storage, monkeypatch)
    clock = [datetime.now(UTC)]
    settings = load_expiry_settings(stack.env)
    check = build_expiry_runtime(settings, clock=lambda: clock[0]).check
    fired: list[int | None] = []
    for _ in range(10):
        report = check.run()
        fired += [f.threshold for f in report.findings if f.notified]
        clock[0] += timedelta(days=1)
    assert fired == [14, 7, 3, 1]
    # The admin renews: a new Key Vault version (same short life, to see the thresholds again).
    stack.emulator.set_app_secret(CLIENT, SECRET_V2)
    stack.emulator.set_secret(SECRET_NAME, SECRET_V2, expires_on=clock[0] + timedelta(days=6, hours=12))
    fresh = build_expiry_runtime(settings, clock=lambda: clock[0]).check
    report = fresh.run()
    assert report.secret is not None and report.findings[0].threshold == 7 and report.findings[0].notified
    assert report.findings[0].notified == ["mail", "webhook", "log"]


def test_expired_secret_mail_fails_but_webhook_and_log_go_out(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    stack.emulator.set_app_secret(CLIENT, SECRET_V1, expired=True)
    stack.emulator.update_secret(SECRET_NAME, expires_on=datetime.now(UTC) - timedelta(hours=2))
    caplog.set_level(logging.INFO)
    code = mailrelay(["expiry", "check"])
    assert code == 2
    assert stack.emulator.outbox == []  # mail needs the expired secret: AADSTS7000222
    assert len(stack.webhook.posts) == 1 and "expired" in stack.webhook.posts[0]["text"]
    critical = [
        r for r in caplog.records if getattr(r, "event", None) == "secret.expiry" and r.levelno == logging.CRITICAL
    ]
    assert len(critical) == 1
    failed = [r for r in caplog.records if getattr(r, "event", None) == "secret.expiry.channel"]
    assert failed and "AADSTS7000222" in failed[0].__dict__["reason"]
    assert_no_secret(outputs(stack, caplog))


def test_record_store_unreachable_warns_anyway_on_each_run(
    stack: Stack, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO)
    assert mailrelay(["expiry", "check"]) == 1
    assert mailrelay(["expiry", "check"]) == 1
    assert len(stack.webhook.posts) == 2 and len(stack.emulator.outbox) == 2  # duplicates, not silence
    assert any(getattr(r, "event", None) == "secret.expiry.store" for r in caplog.records)
    out = capsys.readouterr().out
    assert "record store unreachable" in out
    assert_no_secret(outputs(stack, caplog, out))


def test_disabled_and_undated_secrets(stack: Stack) -> None:
    stack.emulator.update_secret(SECRET_NAME, enabled=False)
    code, text = _cli_json(["expiry", "check", "--json", "--dry-run"])
    assert code == 2 and text["findings"][0]["kind"] == "disabled"
    stack.emulator.set_secret(SECRET_NAME, SECRET_V2, expires_on=None)
    code, text = _cli_json(["expiry", "check", "--json", "--dry-run"])
    assert code == 1 and text["findings"][0]["kind"] == "no-exp"
    assert text["findings"][0]["wouldNotify"] == ["mail", "webhook", "log"]
    assert stack.emulator.outbox == [] and stack.webhook.posts == []  # --dry-run notifies nobody


def test_far_expiry_is_exit_0_and_the_table_shows_it(
    stack: Stack, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    version = stack.emulator.set_secret(SECRET_NAME, SECRET_V2, expires_on=datetime.now(UTC) + timedelta(days=400))
    assert mailrelay(["expiry", "check"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["SECRET", "VERSION", "EXPIRES"]
    assert SECRET_NAME in out and version in out and "ok" in out
    assert stack.webhook.posts == [] and stack.emulator.outbox == []
    assert_no_secret(outputs(stack, caplog, out))


def test_entra_comparison(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPIRY_COMPARE_ENTRA", "true")
    # Key Vault says 10 days, Entra says 10 days: no comparison warning; an old credential ending sooner: one.
    stack.emulator.add_password_credential(CLIENT, datetime.now(UTC) + timedelta(days=3), "old secret")
    code, report = _cli_json(["expiry", "check", "--json", "--dry-run"])
    assert [f["kind"] for f in report["findings"]] == ["threshold", "entra-sooner"]
    assert code == 1 and stack.emulator.stats["graph.applications"] == 1
    # Key Vault's exp typed in wrong: 40 days, while Entra's secret ends in 10.
    stack.emulator.update_secret(SECRET_NAME, expires_on=datetime.now(UTC) + timedelta(days=40))
    _, report = _cli_json(["expiry", "check", "--json", "--dry-run"])
    assert "entra-mismatch" in [f["kind"] for f in report["findings"]]


def test_entra_comparison_without_application_read_all_is_a_clear_warning(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXPIRY_COMPARE_ENTRA", "true")
    stack.emulator.add_app(TENANT, CLIENT, SECRET_V1, roles=("Mail.Send",))
    code, report = _cli_json(["expiry", "check", "--json", "--dry-run"])
    (entra,) = [f for f in report["findings"] if f["kind"] == "entra-unavailable"]
    assert "Application.Read.All" in entra["message"] and code == 1


def test_cli_names_a_bad_setting_with_exit_2(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EXPIRY_ALERT_SENDER", "ceo@contoso.com")
    assert mailrelay(["expiry", "check"]) == 2
    assert "EXPIRY_ALERT_SENDER" in capsys.readouterr().err


BILLING_CLIENT = "0c222222-3333-4444-8555-666666666666"
BILLING_SECRET = "Bq7~billing.secret-value-cccccccccccccc"
BILLING_SECRET_NAME = "billing-graph-secret"


def test_cli_checks_each_apps_own_registration_after_the_relays_and_exits_with_the_worst(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """An app that brings its own Graph registration (MAILRELAY_APPS "graph") has its own secret to expire: the CLI
    checks it as the timer does, after the relay's, so an admin running `mailrelay expiry check` sees it too."""
    now = datetime.now(UTC)
    stack.emulator.set_secret(SECRET_NAME, SECRET_V1, expires_on=now + timedelta(days=400))
    stack.emulator.add_app(
        TENANT, BILLING_CLIENT, BILLING_SECRET, roles=("Mail.Send",), secret_end=now + timedelta(days=5)
    )
    stack.emulator.set_secret(BILLING_SECRET_NAME, BILLING_SECRET, expires_on=now + timedelta(days=5, hours=1))
    own = {"credential": "secret", "clientId": BILLING_CLIENT, "secretName": BILLING_SECRET_NAME}
    monkeypatch.setenv("MAILRELAY_APPS", json.dumps([{"name": "billing", "senders": [ALERTS], "graph": own}]))
    code, report = _cli_json(["expiry", "check", "--json", "--dry-run"])
    assert code == 1  # the relay's is fine; billing's ends in 5 days
    assert report["findings"][0]["state"] == "ok"
    (finding,) = report["apps"]["billing"]["findings"]
    assert (finding["state"], finding["threshold"]) == ("warning", 7)
    assert mailrelay(["expiry", "check", "--dry-run"]) == 1
    out = capsys.readouterr().out
    relay, billing = out.split("app billing (its own Graph registration):")
    assert SECRET_NAME in relay and BILLING_SECRET_NAME not in relay and BILLING_SECRET_NAME in billing
    assert BILLING_SECRET not in outputs(stack, caplog, out) and BILLING_SECRET[:12] not in out
    # Without its own registration, the app sends as the relay: nothing more to check, and no "apps" key.
    monkeypatch.setenv("MAILRELAY_APPS", json.dumps([{"name": "billing", "senders": [ALERTS]}]))
    code, report = _cli_json(["expiry", "check", "--json", "--dry-run"])
    assert code == 0 and "apps" not in report


def _cli_json(argv: list[str]) -> tuple[int, dict[str, Any]]:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = mailrelay(argv)
    text = buffer.getvalue()
    assert_no_secret(text)
    return code, json.loads(text)
