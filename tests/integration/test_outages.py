"""Outages of Entra ID, the managed-identity endpoint and Key Vault: transient, and named in the outcome.

Configuration errors stay permanent. Each outage is a fault injected in the emulator, answered as the
service answers, and driven through the real MSAL, azure-identity and Key Vault SDKs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from devstack.emulator import Emulator
from shared.bootstrap import Runtime
from shared.outcomes import Permanent, Sent, Transient
from tests.integration.test_send_path import request
from tests.integration.test_send_path import stack as send_stack

pytestmark = pytest.mark.integration

stack = send_stack  # the same seeded emulator and runtime


@pytest.fixture
def emu_rt(stack: tuple[Emulator, Runtime]) -> Iterator[tuple[Emulator, Runtime]]:
    yield stack


@pytest.mark.parametrize(
    ("service", "status", "code", "names"),
    [
        ("entra.token", 503, "EntraUnavailable", "Entra ID"),
        ("entra.token", 500, "EntraUnavailable", "Entra ID"),
        ("entra.token", 429, "EntraUnavailable", "Entra ID"),
        ("msi.token", 503, "ManagedIdentityUnavailable", "managed identity"),
        ("msi.token", 500, "ManagedIdentityUnavailable", "managed identity"),
        ("keyvault.getSecret", 503, "KeyVaultUnavailable", "Key Vault"),
        ("keyvault.getSecret", 500, "KeyVaultUnavailable", "Key Vault"),
        ("keyvault.getSecret", 429, "KeyVaultThrottled", "Key Vault"),
    ],
)
def test_an_outage_is_transient_and_names_the_service(
    emu_rt: tuple[Emulator, Runtime], service: str, status: int, code: str, names: str
) -> None:
    emu, rt = emu_rt
    emu.add_fault(service, status, count=20, retry_after=3 if status == 429 else None)
    outcome = rt.relay.send(request()).outcome
    assert isinstance(outcome, Transient), outcome
    assert outcome.code == code
    assert names in outcome.hint and "Graph" not in outcome.hint.split(";")[0]
    assert emu.stats["graph.sendMail"] == 0


def test_after_the_outage_the_same_relay_sends(emu_rt: tuple[Emulator, Runtime]) -> None:
    emu, rt = emu_rt
    emu.add_fault("msi.token", 503, count=20)
    assert isinstance(rt.relay.send(request()).outcome, Transient)
    emu._faults.clear()  # the endpoint is back
    # MSAL answers an identical token request from its own cache for 5 s after a 5xx (ThrottledHttpClient's
    # default); the relay's retries come later than that (SEND_RETRY_BASE_SECONDS, Retry-After).
    time.sleep(5.5)
    outcome = rt.relay.send(request()).outcome
    assert isinstance(outcome, Sent), outcome


@pytest.mark.parametrize(
    ("service", "status", "error_code", "code"),
    [
        ("keyvault.getSecret", 403, "Forbidden", "Forbidden"),
        ("msi.token", 400, None, "CredentialUnavailable"),
    ],
)
def test_configuration_errors_stay_permanent(
    emu_rt: tuple[Emulator, Runtime], service: str, status: int, error_code: str | None, code: str
) -> None:
    emu, rt = emu_rt
    emu.add_fault(service, status, count=20, code=error_code)
    outcome = rt.relay.send(request()).outcome
    assert isinstance(outcome, Permanent), outcome
    assert outcome.code == code


def test_an_identity_without_a_role_on_the_vault_is_permanent_with_the_role_to_grant(
    emu_rt: tuple[Emulator, Runtime],
) -> None:
    from devstack.emulator.identity import SYSTEM_IDENTITY_CLIENT_ID

    emu, rt = emu_rt
    emu.set_vault_access(SYSTEM_IDENTITY_CLIENT_ID, False)  # the Function App's identity, no Secrets User
    outcome = rt.relay.send(request()).outcome
    assert isinstance(outcome, Permanent) and outcome.code == "Forbidden"
    assert "Key Vault Secrets User" in outcome.hint
    assert emu.stats["graph.sendMail"] == 0


def test_an_identity_endpoint_that_does_not_answer_is_an_outage_not_a_missing_identity(
    emu_rt: tuple[Emulator, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Function App's identity endpoint refusing connections (the platform's sidecar restarting): the
    # identity is assigned, so "assign the identity" would send the admin the wrong way.
    from tests.unit.test_cli_send import closed_port

    emu, rt = emu_rt
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{closed_port()}/msi/token")
    outcome = rt.relay.send(request()).outcome
    assert isinstance(outcome, Transient), outcome
    assert outcome.code == "ManagedIdentityUnavailable" and "managed identity" in outcome.hint
    assert emu.stats["graph.sendMail"] == 0


def test_a_vault_firewall_refusing_the_relay_is_permanent_and_says_so(emu_rt: tuple[Emulator, Runtime]) -> None:
    # Key Vault's documented code for its firewall (learn.microsoft.com/azure/key-vault/general/common-error-codes):
    # "ForbiddenByFirewall: Client address isn't authorized and caller isn't a trusted service."
    emu, rt = emu_rt
    emu.add_fault("keyvault.getSecret", 403, count=5, code="ForbiddenByFirewall")
    outcome = rt.relay.send(request()).outcome
    assert isinstance(outcome, Permanent), outcome
    assert outcome.code == "ForbiddenByFirewall" and "network" in outcome.hint
    assert "Key Vault Secrets User" not in outcome.hint
