"""Exchange's scope as the emulator plays it: each model x each case, with real tokens (DESIGN.md, "The
Exchange scope"; devstack/emulator/exchange.py cites Microsoft's pages)."""

from __future__ import annotations

import time

import pytest
import requests

from devstack.emulator import Emulator
from tests.emulator.test_emulator import CLIENT, SECRET, TENANT, graph_error, http, mail, running, send, token_for

__all__ = ["http", "running"]  # fixtures shared with test_emulator: the emulator, an HTTPS session to it

IN = "alerts@contoso.com"
OUT = "ceo@contoso.com"
DENIED = "Access is denied. Check credentials and try again."
# An application access policy's denial as Microsoft documents it (auth-limit-mailbox-access, "Handling API errors").
POLICY = "Access to OData is disabled."
RAOP = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."


@pytest.fixture
def emu(running: Emulator) -> Emulator:
    running.reset()
    running.add_mailbox(IN, in_exchange_scope=True)
    running.add_mailbox(OUT, in_exchange_scope=False)
    return running


def outcome(emu: Emulator, http: requests.Session, mailbox: str) -> tuple[int, str, str] | int:
    reply = send(emu, http, mail(), token_for(emu, http), mailbox=mailbox)
    return reply.status_code if reply.status_code == 202 else graph_error(reply)


# (model, Entra consent, policy access) -> what Exchange answers for the mailbox in and out of the scope
MATRIX = [
    ("rbac", False, "RestrictAccess", 202, (403, "ErrorAccessDenied", DENIED)),
    ("rbac", True, "RestrictAccess", 202, 202),  # consent and RBAC add up: the scope restricts nothing
    ("policy", True, "RestrictAccess", 202, (403, "ErrorAccessDenied", POLICY)),
    ("policy", True, "DenyAccess", (403, "ErrorAccessDenied", POLICY), 202),
    ("policy", False, "RestrictAccess", (403, "ErrorAccessDenied", DENIED), (403, "ErrorAccessDenied", DENIED)),
    ("none", True, "RestrictAccess", 202, 202),  # no model: the consent reaches every mailbox
    ("none", False, "RestrictAccess", (403, "ErrorAccessDenied", DENIED), (403, "ErrorAccessDenied", DENIED)),
]


@pytest.mark.parametrize(("model", "consent", "access", "inside", "outside"), MATRIX)
def test_each_model_in_and_out_of_scope_with_and_without_consent(
    emu: Emulator, http: requests.Session, model: str, consent: bool, access: str, inside: object, outside: object
) -> None:
    emu.add_app(
        TENANT, CLIENT, SECRET, roles=("Mail.Send",) if consent else (), scope_model=model, policy_access=access
    )
    assert outcome(emu, http, IN) == inside
    assert outcome(emu, http, OUT) == outside


def test_the_longer_policy_denial_tenants_report_can_be_switched_on_and_nothing_else(
    emu: Emulator, http: requests.Session
) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, roles=("Mail.Send",), scope_model="policy")
    emu.configure_exchange({"policyDenialText": RAOP})
    assert outcome(emu, http, OUT) == (403, "ErrorAccessDenied", RAOP)
    with pytest.raises(ValueError, match="policyDenialText"):
        emu.configure_exchange({"policyDenialText": "Access denied."})
    emu.reset()
    assert emu.policy_denial_text == POLICY


@pytest.mark.parametrize("model", ["rbac", "policy", "none"])
def test_ews_disabled_and_no_exchange_online_mailbox_refuse_under_every_model(
    emu: Emulator, http: requests.Session, model: str
) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, roles=("Mail.Send",), scope_model=model)
    emu.add_mailbox("shared@contoso.com", in_exchange_scope=True, rest_enabled=False)
    emu.add_mailbox("onprem@contoso.com", in_exchange_scope=True, exchange_online=False)
    assert outcome(emu, http, "shared@contoso.com") == (403, "ErrorAccessDenied", "Access to OData is disabled.")
    status, code, _ = outcome(emu, http, "onprem@contoso.com")  # type: ignore[misc]
    assert (status, code) == (404, "MailboxNotEnabledForRESTAPI")


@pytest.mark.parametrize("model", ["rbac", "policy"])
def test_a_scope_change_applies_only_after_its_delay(emu: Emulator, http: requests.Session, model: str) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, roles=("Mail.Send",) if model == "policy" else (), scope_model=model)
    emu.set_exchange_scope(OUT, True, delay=0.6)
    assert outcome(emu, http, OUT) != 202  # pending: Exchange still answers as before
    time.sleep(0.7)
    assert outcome(emu, http, OUT) == 202


def test_an_rbac_scope_on_a_group_exchange_does_not_recognise_matches_nobody(
    emu: Emulator, http: requests.Session
) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, scope_model="rbac")
    emu.configure_exchange({"groupMailEnabled": False})  # an Entra-only security group in MemberOfGroup
    assert outcome(emu, http, IN) == (403, "ErrorAccessDenied", DENIED)


def test_an_rbac_app_without_the_exchange_role_is_denied_even_in_scope(emu: Emulator, http: requests.Session) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, scope_model="rbac", exchange_roles=())
    assert outcome(emu, http, IN) == (403, "ErrorAccessDenied", DENIED)


def test_the_read_probe_follows_the_same_scope_and_needs_a_read_role(emu: Emulator, http: requests.Session) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send", "Application Mail.ReadBasic"))
    token = token_for(emu, http)

    def probe(mailbox: str) -> int:
        return http.get(
            f"{emu.url}/v1.0/users/{mailbox}/mailFolders/inbox",
            params={"$select": "id"},
            headers={"Authorization": f"Bearer {token}"},
        ).status_code

    assert (probe(IN), probe(OUT)) == (200, 403)
    emu.add_app(TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send",))  # no read role
    token = token_for(emu, http)
    assert probe(IN) == 403


def test_key_vault_refuses_an_identity_without_a_secrets_role(emu: Emulator, http: requests.Session) -> None:
    emu.add_app(TENANT, CLIENT, SECRET)
    emu.set_secret("graph-client-secret", "value")
    emu.set_vault_access(CLIENT, False)
    token = token_for(emu, http, scope="https://vault.azure.net/.default")
    reply = http.get(
        f"{emu.url}/secrets/graph-client-secret",
        params={"api-version": "7.5"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 403
    error = reply.json()["error"]
    assert error["code"] == "Forbidden" and error["innererror"]["code"] == "ForbiddenByRbac"
    assert "Caller is not authorized to perform action on resource." in error["message"]
    emu.set_vault_access(CLIENT, True)
    assert (
        http.get(
            f"{emu.url}/secrets/graph-client-secret",
            params={"api-version": "7.5"},
            headers={"Authorization": f"Bearer {token}"},
        ).status_code
        == 200
    )
