"""`mailrelay doctor` and the expiry check in each credential mode, on the local stack (devstack.stack.LocalStack
with credential=...): the real SDKs (azure-identity, MSAL, Key Vault, Tables) against the emulator's Entra ID,
identity endpoint, Key Vault and Graph, and Azurite. The credential is broken through the emulator's admin API, as
an admin's mistake or a deletion would break it, and put back after each test.

One stack per mode (module-scoped); the checks run in this process with the stack's settings (the identity
endpoint is found through IDENTITY_ENDPOINT / IDENTITY_HEADER in the environment, as in Azure).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.stack import CERTIFICATE_NAME, LocalStack, make_certificate
from shared import bootstrap
from shared.bootstrap import build_expiry_runtime
from shared.doctor import Check, diagnose
from shared.expiry import Report
from shared.settings import load_expiry_settings
from tests.integration import test_expiry as integration_expiry

SENDER = "alerts@contoso.com"
OPS = "ops@contoso.com"
webhook = integration_expiry.webhook  # a local chat webhook that records each POST
Webhook = integration_expiry.Webhook


def start(credential: str) -> LocalStack:
    return LocalStack(allowed_senders=[SENDER], credential=credential)


@pytest.fixture(scope="module")
def federated_stack() -> Iterator[LocalStack]:
    with start("federated") as stack:
        yield stack


@pytest.fixture(scope="module")
def identity_stack() -> Iterator[LocalStack]:
    with start("managed-identity") as stack:
        yield stack


@pytest.fixture(scope="module")
def certificate_stack() -> Iterator[LocalStack]:
    with start("certificate") as stack:
        yield stack


def use(stack: LocalStack, monkeypatch: pytest.MonkeyPatch, hook: Webhook | None = None, **more: str) -> dict[str, str]:
    """The stack's settings in this process's environment (azure-identity reads the identity endpoint there),
    with the expiry alerts going by mail and to `hook`."""
    env = {**stack.host_settings(), "EXPIRY_ALERT_SENDER": SENDER, "EXPIRY_ALERT_RECIPIENTS": OPS, **more}
    if hook is not None:
        env["EXPIRY_ALERT_WEBHOOK_URL"] = hook.url
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    return env


def doctor(env: dict[str, str]) -> dict[str, Check]:
    return {c.name: c for c in diagnose(env)}


def expiry(env: dict[str, str], clock: datetime | None = None) -> Report:
    """One run of the check as the timer makes it: new clients, as after a cold start."""
    bootstrap.reset()
    now = clock
    return build_expiry_runtime(load_expiry_settings(env), clock=(lambda: now) if now else None).check.run()


def key_vault_calls(stack: LocalStack) -> int:
    stats: dict[str, int] = stack.emulator_get("stats")
    return sum(count for name, count in stats.items() if name.startswith("keyvault."))


# --- federated: the doctor names the federated credential's wrong field -------------------------------------


@pytest.fixture
def federated(federated_stack: LocalStack, monkeypatch: pytest.MonkeyPatch, webhook: Webhook) -> Iterator[Any]:
    env = use(federated_stack, monkeypatch, webhook)
    yield federated_stack, env, webhook
    federated_stack.set_federated_credential()  # as Microsoft documents it, whatever the test did
    bootstrap.reset()


def test_federated_doctor_shows_the_assertion_and_what_the_fic_holds(federated: Any) -> None:
    stack, env, _ = federated
    checks = doctor(env)
    identity = checks["managed identity"]
    assert identity.status == "ok", identity
    assert f"sub {stack.identity_principal_id}" in identity.detail
    assert f"issuer https://login.microsoftonline.com/{stack.tenant_id}/v2.0" in identity.detail
    assert checks["entra token"].status == "ok", checks["entra token"]
    assert "key vault secret" not in checks and "key vault certificate" not in checks


@pytest.mark.parametrize(
    ("field", "wrong"),
    [
        ("issuer", {"issuer": "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0"}),
        ("subject", {"subject": "client id"}),  # the classic mistake: the identity's client id, not its principal id
        ("audience", {"audiences": ["api://AzureADTokenExchangeUSGov"]}),
    ],
    ids=["wrong issuer", "wrong subject", "wrong audience"],
)
def test_the_doctor_names_the_fics_wrong_field(federated: Any, field: str, wrong: dict[str, Any]) -> None:
    stack, env, _ = federated
    if wrong.get("subject") == "client id":
        wrong = {"subject": stack.identity_client_id}
    stack.set_federated_credential(**wrong)
    token = doctor(env)["entra token"]
    assert token.status == "fail", token
    must = stack.expected_federated_credential()
    value = {"issuer": must["issuer"], "subject": must["subject"], "audience": must["audiences"][0]}[field]
    assert f"has the wrong {field}: it must be {value}" in token.detail
    assert f"set the {field} to {value}" in token.hint and stack.client_id in token.hint
    assert not [f for f in ("issuer", "subject", "audience") if f != field and f"wrong {f}" in token.detail]


def test_federated_expiry_is_a_fresh_token_and_never_key_vault(federated: Any) -> None:
    stack, env, hook = federated
    before = key_vault_calls(stack)
    report = expiry(env)
    assert report.state == "ok" and [f.kind for f in report.findings] == ["nothing-to-expire", "token"]
    assert report.to_json()["credential"] == "federated" and hook.posts == []
    assert key_vault_calls(stack) == before == 0


def test_a_deleted_fic_is_critical_on_every_run_and_the_webhook_still_hears(federated: Any) -> None:
    stack, env, hook = federated
    stack.delete_federated_credential()
    outbox = len(stack.emulator_get("outbox"))
    for run in (1, 2):
        report = expiry(env)
        finding = report.findings[1]
        assert report.state == "critical" and finding.kind == "token-failed", finding
        assert finding.notified == ["webhook", "log"] and "mail" in finding.failed
        assert len(hook.posts) == run
    # Entra matches the issuer first: with no federated credential left, none has the identity's issuer.
    assert "AADSTS700211" in hook.posts[0]["text"] and "AADSTS700211: AADSTS700211" not in hook.posts[0]["text"]
    assert len(stack.emulator_get("outbox")) == outbox  # the mail channel needs the token it cannot get
    token = doctor(env)["entra token"]
    assert token.status == "fail" and token.detail.startswith("AADSTS700211") and "or it has none" in token.detail


# --- managed-identity ----------------------------------------------------------------------------------------


@pytest.fixture
def managed(identity_stack: LocalStack, monkeypatch: pytest.MonkeyPatch, webhook: Webhook) -> Iterator[Any]:
    env = use(identity_stack, monkeypatch, webhook)
    yield identity_stack, env, webhook
    identity_stack.restore_identity()
    bootstrap.reset()


def test_the_identitys_own_token_shows_its_appid(managed: Any) -> None:
    stack, env, hook = managed
    checks = doctor(env)
    assert checks["managed identity"].status == "ok", checks["managed identity"]
    assert f"appid {stack.identity_client_id}" in checks["managed identity"].detail
    assert checks["entra token"].status == "ok"
    report = expiry(env)
    assert report.state == "ok" and hook.posts == [] and key_vault_calls(stack) == 0


def test_a_removed_identity_is_critical_and_the_doctor_says_so(managed: Any) -> None:
    stack, env, hook = managed
    stack.delete_identity()
    report = expiry(env)
    finding = report.findings[1]
    assert report.state == "critical" and "CredentialUnavailable" in finding.message, finding
    assert finding.notified == ["webhook", "log"] and len(hook.posts) == 1
    assert "deleted or detached" in str(hook.posts[0])  # the fix, in the card
    check = doctor(env)["managed identity"]
    assert check.status == "fail" and "CredentialUnavailable" in check.detail


# --- certificate ---------------------------------------------------------------------------------------------


@pytest.fixture
def certificate(certificate_stack: LocalStack, monkeypatch: pytest.MonkeyPatch, webhook: Webhook) -> Iterator[Any]:
    env = use(certificate_stack, monkeypatch, webhook)
    yield certificate_stack, env, webhook
    certificate_stack.renew_certificate(register=True)  # a fresh, registered version for the next test
    bootstrap.reset()


def store_certificate(stack: LocalStack, lifetime: timedelta, now: datetime | None = None) -> str:
    """A new version of the Key Vault certificate with the given lifetime, its key registered on the app."""
    made = make_certificate(stack.tenant_id, lifetime, now)
    stack.emulator_post("certificate", {"name": CERTIFICATE_NAME, "pem": made.pem})
    stack.emulator_post("app-key-credential", {"clientId": stack.client_id, "certificate": made.certificate_pem})
    return made.thumbprint_sha1


def test_the_doctor_reads_and_parses_the_certificate(certificate: Any) -> None:
    stack, env, _ = certificate
    current = stack.certificates[-1]
    check = doctor(env)["key vault certificate"]
    assert check.status == "ok" and f"thumbprint {current.thumbprint_sha1} (SHA-1)" in check.detail
    assert "PRIVATE KEY" not in check.detail


def test_a_certificate_ten_days_from_expiry_warns_at_14_days_once(certificate: Any) -> None:
    stack, env, hook = certificate
    store_certificate(stack, timedelta(days=10, hours=1))
    first, second = expiry(env), expiry(env)
    (finding,) = first.findings
    assert finding.kind == "threshold" and finding.threshold == 14 and finding.message.startswith("Certificate")
    assert finding.notified == ["mail", "webhook", "log"]
    assert second.findings[0].notified == [] and second.findings[0].previously == ["log", "mail", "webhook"]
    assert len(hook.posts) == 1 and "To renew the certificate" in str(hook.posts[0])
    (mail,) = [m for m in stack.emulator_get("outbox") if "14-day warning" in m["message"]["message"]["subject"]]
    assert "sync-app-certificate.sh" in mail["message"]["message"]["body"]["content"]
    check = doctor(env)["key vault certificate"]
    assert check.status == "warn" and "10 days left" in check.detail


def test_an_expired_certificate_is_critical_on_every_run(certificate: Any) -> None:
    stack, env, hook = certificate
    store_certificate(stack, timedelta(days=1), now=datetime.now(UTC) - timedelta(days=3))
    assert [expiry(env).findings[0].kind for _ in range(2)] == ["expired", "expired"]
    assert len(hook.posts) == 2 and all("expired" in p["text"] for p in hook.posts)


def test_a_renewed_certificate_entra_was_not_told_about_warns(certificate: Any) -> None:
    stack, env, _ = certificate
    # Entra comparison needs Application.Read.All on the app (README, EXPIRY_COMPARE_ENTRA).
    stack.emulator_post("apps", {**stack._app_entry(read_access=True), "roles": ["Application.Read.All"]})
    env = {**env, "EXPIRY_COMPARE_ENTRA": "true"}
    assert [f.kind for f in expiry(env).findings] == ["ok"]  # the current version is registered
    renewed = stack.renew_certificate(register=False)  # Key Vault's AutoRenew; nobody ran the sync script
    # A new process reads Key Vault's current version, which Entra refuses: no token even to compare with.
    report = expiry(env)
    assert [f.kind for f in report.findings] == ["ok", "entra-certificate-unregistered"]
    assert report.state == "critical" and "AADSTS700027" in report.findings[1].message
    assert f"version {renewed.version}" in report.findings[1].message
    assert "sync-app-certificate.sh" in report.findings[1].message
