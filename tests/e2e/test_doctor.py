"""`mailrelay doctor` against the real SDKs, the emulator and Azurite: it finds what a send would hit."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from shared.cli import main
from shared.doctor import diagnose, exit_code, token_roles
from tests.e2e.conftest import ALERTS, CLIENT, NOT_ALLOWED, OUT_OF_SCOPE, SECRET, TENANT, RelayEnv


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


@pytest.mark.parametrize(
    ("model", "roles", "status", "words"),
    [
        ("rbac", (), "ok", "scope alone authorises"),
        ("rbac", ("Mail.Send",), "warn", "WITH the Entra consent"),
        ("policy", ("Mail.Send",), "ok", "scoped by the access policy"),
        ("policy", (), "fail", "without Mail.Send"),
    ],
)
def test_the_token_check_reads_the_scope_model(
    relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch, model: str, roles: tuple[str, ...], status: str, words: str
) -> None:
    monkeypatch.setenv("EXCHANGE_SCOPE_MODEL", model)
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, roles=roles, scope_model=model)
    check = next(c for c in diagnose(os.environ) if c.name == "entra token")
    assert check.status == status and words in check.detail
    if status == "warn":
        assert "lets the app send as anyone" in check.hint


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


# --- The Exchange scope, verified (mailrelay doctor --allowed ... --denied ...) --------------------


def scope(relay_env: RelayEnv, _to: str | None = None, **app: Any) -> list[tuple[str, str, str]]:
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, **app)
    checks = diagnose(os.environ, allowed=[ALERTS], denied=[NOT_ALLOWED], send_test_to=_to)
    return [(c.name, c.status, c.detail + " " + c.hint) for c in checks if "scope" in c.name]


READS = ("Application Mail.Send", "Application Mail.ReadBasic")


def test_a_restricting_rbac_scope_is_green(relay_env: RelayEnv) -> None:
    found = scope(relay_env, exchange_roles=READS)
    assert [(n, s) for n, s, _ in found] == [(f"scope allows {ALERTS}", "ok"), (f"scope denies {NOT_ALLOWED}", "ok")]


def test_a_consent_beside_rbac_defeats_the_scope_and_the_doctor_says_so(relay_env: RelayEnv) -> None:
    found = scope(relay_env, exchange_roles=READS, roles=("Mail.Send", "Mail.ReadBasic"))
    [denied] = [f for f in found if f[0].startswith("scope denies")]
    assert denied[1] == "fail" and "NOT RESTRICTED" in denied[2]
    assert "-RemoveEntraConsent" in denied[2] and "30 minutes to 2 hours" in denied[2]
    assert exit_code(diagnose(os.environ, allowed=[ALERTS], denied=[NOT_ALLOWED])) == 1


def test_a_mailbox_outside_the_scope_lists_the_causes(relay_env: RelayEnv) -> None:
    relay_env.emulator.set_exchange_scope(ALERTS, False)
    # Nothing answers a read probe now, nor does the other allowed sender (hr@, out of scope too): inconclusive (no
    # read role, or nothing in scope); each address says it proved nothing, and a test mail tells.
    assert [(n, s) for n, s, _ in scope(relay_env, exchange_roles=READS)] == [
        (f"scope allows {ALERTS}", "unproven"),
        (f"scope denies {NOT_ALLOWED}", "unproven"),
    ]
    found = scope(relay_env, _to="it@contoso.com", exchange_roles=READS)
    [allowed] = [f for f in found if f[0].startswith("scope allows")]
    assert allowed[1] == "fail" and "EwsEnabled" in allowed[2] and "replicated" in allowed[2]


def test_without_read_access_the_doctor_says_so_and_can_send_a_test(relay_env: RelayEnv) -> None:
    found = scope(relay_env)  # Application Mail.Send only: no read role
    assert [(n, s) for n, s, _ in found] == [
        (f"scope allows {ALERTS}", "unproven"),
        (f"scope denies {NOT_ALLOWED}", "unproven"),
    ]
    assert all("--send-test-to" in text and "Test-ServicePrincipalAuthorization" in text for _, _, text in found)
    assert exit_code(diagnose(os.environ, allowed=[ALERTS], denied=[NOT_ALLOWED])) == 3  # asked for, not proved
    sent_before = len(relay_env.emulator.outbox)
    found = scope(relay_env, _to="it@contoso.com")
    assert [(n, s) for n, s, _ in found] == [(f"scope allows {ALERTS}", "ok"), (f"scope denies {NOT_ALLOWED}", "ok")]
    assert len(relay_env.emulator.outbox) == sent_before + 1  # the allowed address's test mail, and only it


def test_an_allowed_address_off_the_allow_list_fails(relay_env: RelayEnv) -> None:
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, exchange_roles=READS)
    checks = diagnose(os.environ, allowed=[NOT_ALLOWED], denied=[])
    assert (f"allow-list {NOT_ALLOWED}", "fail") in {(c.name, c.status) for c in checks}


@pytest.mark.parametrize(
    ("roles", "outcome", "status", "words"),
    [
        ((*READS, "Application Mail.Read"), "resend", "ok", "looked up in Sent Items"),
        (READS, "resend", "warn", "SEND_UNKNOWN_OUTCOME=resend, sent again: may arrive twice"),
        (READS, "deadletter", "warn", "SEND_UNKNOWN_OUTCOME=deadletter, dead-lettered"),
    ],
    ids=["Mail.Read", "ReadBasic, resend", "ReadBasic, deadletter"],
)
def test_the_doctor_says_how_an_unknown_send_would_be_resolved(
    relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch, roles: tuple[str, ...], outcome: str, status: str, words: str
) -> None:
    monkeypatch.setenv("SEND_UNKNOWN_OUTCOME", outcome)
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, exchange_roles=roles)
    checks = diagnose(os.environ, allowed=[ALERTS], denied=[NOT_ALLOWED])
    [check] = [c for c in checks if c.name == f"unknown sends from {ALERTS}"]
    assert check.status == status and words in check.detail
    if status == "warn":
        assert "Application Mail.Read" in check.hint


# --- Issue 21's first-hour defects: a check fails when the mailbox cannot send, and says when it proved nothing


def test_an_allowed_mailbox_outside_the_scope_fails_and_exits_1(
    relay_env: RelayEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    """hr@ alone: its refused read probe used to be inconclusive (a warning, exit 0). The other allowed sender's inbox
    answers, so the app can read and hr@'s refusal is the scope's: it cannot send."""
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, exchange_roles=READS)  # as the local stack sets it up
    assert main(["doctor", "--allowed", OUT_OF_SCOPE]) == 1
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if f"scope allows {OUT_OF_SCOPE}" in line]
    assert line.startswith("fail") and f"{OUT_OF_SCOPE} cannot send" in line and f"the app reads {ALERTS}" in line
    assert "EwsEnabled" in out  # the causes, as the hint


def test_a_denied_mailbox_that_does_not_exist_is_not_green_and_says_what_to_do(
    relay_env: RelayEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, exchange_roles=READS)
    assert main(["doctor", "--allowed", ALERTS, "--denied", "nobody@contoso.com", "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    [check] = [c for c in report["checks"] if c["name"] == "scope denies nobody@contoso.com"]
    assert check["status"] == "unproven" and "proves nothing" in check["detail"]
    assert "ErrorInvalidUser" in check["detail"]
    assert "typo" in check["hint"] and "must stay outside the scope" in check["hint"]
    assert report["ok"] is False
    assert {c["name"]: c["status"] for c in report["checks"]}[f"scope allows {ALERTS}"] == "ok"


def test_an_allowed_address_with_no_mailbox_fails_even_when_the_app_cannot_read(
    relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOWED_SENDERS", f"{ALERTS},ghost@contoso.com")
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET)  # Mail.Send only: no read probe answers
    checks = diagnose(os.environ, allowed=["ghost@contoso.com"])
    [check] = [c for c in checks if c.name == "scope allows ghost@contoso.com"]
    assert check.status == "fail" and "ErrorInvalidUser" in check.detail
    assert exit_code(checks) == 1


def test_the_text_report_shows_an_unproven_check_with_its_hint(
    relay_env: RelayEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET)  # Mail.Send only
    assert main(["doctor", "--allowed", ALERTS]) == 3
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if f"scope allows {ALERTS}" in line)
    assert lines[at].startswith("unproven  ") and "not verified" in lines[at]
    assert "hint:" in lines[at + 1] and "--send-test-to" in lines[at + 1]


# --- "Access to OData is disabled.": the access policy's denial, or EWS/REST blocked ----------------------------


def test_under_an_access_policy_odata_disabled_names_the_policys_group_or_ews_and_the_check_for_each(
    relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy's documented denial and a mailbox with EWS/REST blocked answer the same text
    (auth-limit-mailbox-access, "Handling API errors"): the doctor says so, with both checks."""
    monkeypatch.setenv("EXCHANGE_SCOPE_MODEL", "policy")
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, roles=("Mail.Send", "Mail.ReadBasic"), scope_model="policy")
    checks = diagnose(os.environ, allowed=[ALERTS, NOT_ALLOWED], denied=[])
    [refused] = [c for c in checks if c.name == f"scope allows {NOT_ALLOWED}"]  # outside the policy's group
    assert refused.status == "fail" and "outside the application access policy's group" in refused.detail
    assert "or EWS/REST blocked" in refused.detail
    assert "Test-ApplicationAccessPolicy -Identity <mailbox>" in refused.hint and "fl EwsEnabled" in refused.hint


def test_under_an_access_policy_a_test_mail_refused_with_odata_disabled_names_both_causes(
    relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXCHANGE_SCOPE_MODEL", "policy")
    relay_env.emulator.set_exchange_scope(ALERTS, False, delay=0)  # out of the group: no probe can answer
    found = scope(relay_env, _to="it@contoso.com", roles=("Mail.Send",), scope_model="policy")
    [allowed] = [f for f in found if f[0] == f"scope allows {ALERTS}"]
    assert allowed[1] == "fail" and "outside the application access policy's group" in allowed[2]
    assert "Test-ApplicationAccessPolicy" in allowed[2] and "EwsEnabled" in allowed[2]


def test_under_rbac_odata_disabled_still_means_ews_or_rest_blocked(relay_env: RelayEnv) -> None:
    relay_env.emulator.add_mailbox(NOT_ALLOWED, in_exchange_scope=True, rest_enabled=False)
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, exchange_roles=READS)
    checks = diagnose(os.environ, allowed=[ALERTS, NOT_ALLOWED], denied=[])
    [refused] = [c for c in checks if c.name == f"scope allows {NOT_ALLOWED}"]
    assert refused.status == "fail" and "EWS/REST blocked on the mailbox" in refused.detail
    assert "policy" not in refused.detail and "Test-ApplicationAccessPolicy" not in refused.hint
    assert "EwsEnabled" in refused.hint


@pytest.mark.parametrize(
    ("roles", "status", "words"),
    [
        ((*READS, "Application Mail.ReadWrite"), "ok", "MIME (SMTP) can be sent"),
        (READS, "warn", "every mail of the SMTP listener"),
    ],
    ids=["Mail.ReadWrite", "no Mail.ReadWrite"],
)
def test_the_doctor_says_whether_large_messages_and_mime_can_be_sent(
    relay_env: RelayEnv, roles: tuple[str, ...], status: str, words: str
) -> None:
    """Large messages and MIME requests (every mail of the SMTP listener) go through a draft: Mail.ReadWrite. Without
    it, a device is told 250 and its mail is dead-lettered later: the doctor says so before."""
    relay_env.emulator.add_app(TENANT, CLIENT, SECRET, exchange_roles=roles)
    checks = diagnose(os.environ, allowed=[ALERTS], denied=[NOT_ALLOWED])
    [check] = [c for c in checks if c.name == f"drafts as {ALERTS}"]
    assert check.status == status and words in check.detail
    if status == "warn":
        assert "Application Mail.ReadWrite" in check.hint
    assert relay_env.emulator.drafts_view() == [] and relay_env.emulator.outbox == []  # the probe left nothing
