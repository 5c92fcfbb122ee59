"""`mailrelay doctor` against the real SDKs, the emulator and Azurite: it finds what a send would hit."""

from __future__ import annotations

import json
import os

import pytest

from shared.cli import main
from shared.doctor import diagnose, exit_code, token_roles
from tests.e2e.conftest import CLIENT, SECRET, TENANT, RelayEnv


def by_name(env: RelayEnv) -> dict[str, tuple[str, str, str]]:
    return {c.name: (c.status, c.detail, c.hint) for c in diagnose(os.environ)}


def test_a_working_setup_passes_every_check_and_shows_no_secret(
    relay_env: RelayEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["settings"] == statuses["key vault secret"] == "ok"
    assert statuses["entra token"] == "ok" and "Mail.Send" in out
    assert statuses["mail queue"] == "ok"
    assert statuses["dead-letter queue"] == "warn"  # not yet: the first dead letter creates it
    assert SECRET not in out and "eyJ" not in out
    assert relay_env.emulator.outbox == []  # nothing sent


def test_a_wrong_secret_name_fails_with_key_vaults_hint(relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAPH_CLIENT_SECRET_NAME", "graph-client-secrte")
    checks = by_name(relay_env)
    status, detail, hint = checks["key vault secret"]
    assert status == "fail" and detail.startswith("SecretNotFound")
    assert "GRAPH_CLIENT_SECRET_NAME" in hint
    assert "entra token" not in checks  # no token without a secret


def test_an_expired_secret_fails_with_the_renewal_hint(relay_env: RelayEnv) -> None:
    relay_env.emulator.set_app_secret(CLIENT, SECRET, expired=True)
    status, detail, hint = by_name(relay_env)["entra token"]
    assert status == "fail" and detail.startswith("AADSTS7000222")
    assert "new version" in hint


def test_a_token_without_mail_send_is_a_warning_not_a_failure(relay_env: RelayEnv) -> None:
    relay_env.emulator.reset()
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, roles=())  # RBAC for Applications: no Entra consent
    relay_env.emulator.set_secret("graph-client-secret", SECRET)
    checks = diagnose(os.environ)
    status, detail, hint = next((c.status, c.detail, c.hint) for c in checks if c.name == "entra token")
    assert status == "warn" and "without Mail.Send" in detail
    assert "RBAC for Applications" in hint and "Delegated" in hint
    assert exit_code(checks) == 0


def test_a_missing_queue_fails(relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_QUEUE_NAME", "no-such-queue")
    checks = diagnose(os.environ)
    assert ("mail queue", "fail") in {(c.name, c.status) for c in checks}
    assert exit_code(checks) == 1


def test_token_roles_reads_the_claim_and_survives_garbage() -> None:
    import base64

    payload = base64.urlsafe_b64encode(json.dumps({"roles": ["Mail.Send"]}).encode()).decode().rstrip("=")
    assert token_roles(f"h.{payload}.s") == ["Mail.Send"]
    assert token_roles("not-a-jwt") == [] and token_roles("a.!!!.c") == []
