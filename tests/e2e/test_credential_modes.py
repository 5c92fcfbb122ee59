"""Each GRAPH_CREDENTIAL mode end to end on the local stack (devstack.stack.LocalStack(credential=...)): an app's
request goes through Azurite and the local host to the emulator's Graph, the relay proving itself to the emulated
Entra ID as the mode says (issue 19, "Done when").

One stack per mode, shared by that mode's tests (a module-scoped fixture, parametrized: pytest finishes one mode's
stack before it starts the next). Tests that break a credential run after the mode's delivery test and put the
credential back, so the order inside a mode does not matter for the next test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from mailrelay_client import MailClient

from devstack.stack import CERTIFICATE_NAME, SECRET_NAME, LocalStack
from shared.deadletters import DeadLetter, open_queues
from tests.e2e.conftest import wait_for

SENDER = "alerts@contoso.com"
MODES = ("secret", "certificate", "federated", "managed-identity")
SECRETLESS = ("federated", "managed-identity")
VAULT_RESOURCE = "https://vault.azure.net"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    with LocalStack(
        allowed_senders=[SENDER],
        credential=request.param,
        # Short retries and claims: a request the relay retries comes back in seconds.
        settings={"SEND_RETRY_BASE_SECONDS": "1", "GRAPH_TIMEOUT_SECONDS": "5"},
    ) as running:
        yield running


def send(stack: LocalStack, subject: str) -> str:
    """As an app sends (the client library); returns the queue message id."""
    client = MailClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
    return client.send(
        {
            "from": SENDER,
            "to": ["Ada Lovelace <ada@contoso.com>"],
            "subject": subject,
            "body": {"contentType": "text", "content": f"credential modes: {subject}"},
        }
    )


def delivered(stack: LocalStack, subject: str) -> list[dict[str, Any]]:
    return [e for e in stack.emulator_get("outbox") if e["message"]["message"]["subject"] == subject]


def wait_delivered(stack: LocalStack, subject: str) -> dict[str, Any]:
    def done() -> bool:
        dead = stack.dead_part()
        assert dead is None, f"the {dead} exited:\n{stack.log_tail('host')}"
        return bool(delivered(stack, subject))

    try:
        wait_for(done, TIMEOUT, f"{subject!r} in the emulator's outbox")
    except AssertionError:
        letters = [f"{d.code}: {d.message}" for d in dead_letters(stack)]
        raise AssertionError(f"not delivered; dead letters {letters}\n{stack.log_tail('host')}") from None
    return delivered(stack, subject)[0]


def dead_letters(stack: LocalStack) -> list[DeadLetter]:
    return list(open_queues(stack.queue_name, connection_string=stack.storage_connection_string).peek())


def wait_dead_letter(stack: LocalStack, subject: str) -> DeadLetter:
    def find() -> DeadLetter | None:
        return next(
            (d for d in dead_letters(stack) if isinstance(d.request, dict) and d.request.get("subject") == subject),
            None,
        )

    wait_for(lambda: find() is not None, TIMEOUT, f"the dead letter of {subject!r}")
    letter = find()
    assert letter is not None
    return letter


def stats(stack: LocalStack) -> dict[str, int]:
    return {str(k): int(v) for k, v in stack.emulator_get("stats").items()}


def vault_reads(stack: LocalStack) -> int:
    """Authenticated Key Vault calls the emulator counted (secrets and certificates alike)."""
    return sum(count for name, count in stats(stack).items() if name.startswith("keyvault."))


def vault_status(stack: LocalStack, client_id: str, name: str) -> int:
    """GET /secrets/{name} with the identity's own Key Vault token: what the vault holds, asked as a reader would."""
    token = requests.get(
        f"{stack.emulator_url}/msi/token",
        params={"resource": VAULT_RESOURCE, "api-version": "2019-08-01", "client_id": client_id},
        headers={"X-IDENTITY-HEADER": stack.host_settings()["IDENTITY_HEADER"]},
        verify=stack.ca_cert_path,
        timeout=10,
    ).json()["access_token"]
    answer = requests.get(
        f"{stack.emulator_url}/secrets/{name}",
        params={"api-version": "7.4"},
        headers={"Authorization": f"Bearer {token}"},
        verify=stack.ca_cert_path,
        timeout=10,
    )
    return answer.status_code


def subject_of(test: str) -> str:
    return f"{test} {uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("stack", MODES, indirect=True)
def test_each_mode_delivers_with_only_its_own_credential(stack: LocalStack) -> None:
    mode = stack.credential
    settings = stack.host_settings()
    subject = subject_of(f"delivered with {mode}")
    send(stack, subject)
    entry = wait_delivered(stack, subject)
    assert entry["sender"] == SENDER and len(delivered(stack, subject)) == 1
    counted = stats(stack)
    state = stack.state()
    assert state["credential"] == mode
    if mode in SECRETLESS:
        # No secret or certificate was seeded, the relay has no Key Vault setting, and it never called Key Vault.
        assert vault_reads(stack) == 0, counted
        assert "KEY_VAULT_URI" not in settings and settings["AZURE_CLIENT_ID"] == stack.identity_client_id
        assert state["identity"] == {"clientId": stack.identity_client_id, "principalId": stack.identity_principal_id}
        # Asked with the identity's own token, the vault holds neither the secret nor a certificate (404).
        assert stack.identity_client_id is not None
        for name in (SECRET_NAME, CERTIFICATE_NAME):
            assert vault_status(stack, stack.identity_client_id, name) == 404
        assert counted.get("msi.token", 0) >= 1
    else:
        assert vault_reads(stack) >= 1, counted
        assert "AZURE_CLIENT_ID" not in settings  # the relay reads Key Vault as the Function's identity
    if mode == "managed-identity":
        # The identity is the Graph caller: Entra's client-credentials endpoint is never asked.
        assert counted.get("entra.token", 0) == 0, counted
        assert "GRAPH_CLIENT_ID" not in settings
    else:
        assert counted.get("entra.token", 0) >= 1, counted
        assert settings["GRAPH_CLIENT_ID"] == stack.client_id
    if mode == "certificate":
        assert settings["GRAPH_CERTIFICATE_NAME"] == CERTIFICATE_NAME and "GRAPH_CLIENT_SECRET_NAME" not in settings
        assert state["certificate"]["thumbprint"] == stack.certificates[-1].thumbprint_sha1
        assert "PRIVATE KEY" not in repr(state)


@pytest.mark.parametrize("stack", ["certificate"], indirect=True)
def test_a_renewed_certificate_is_picked_up_without_a_restart(stack: LocalStack) -> None:
    subject = subject_of("before the renewal")
    send(stack, subject)
    wait_delivered(stack, subject)
    old = stack.certificates[-1]
    pids = stack.pids
    reads = vault_reads(stack)

    renewed = stack.renew_certificate(register=True)
    stack.remove_old_certificate_keys()
    # The relay's Graph token (and its Key Vault token) are revoked: its next send must ask Entra again, and
    # Entra now refuses the old certificate (AADSTS700027), which makes the relay read Key Vault again.
    stack.emulator_post("expire-tokens", {})
    assert renewed.thumbprint_sha1 != old.thumbprint_sha1 and renewed.version and renewed.key_id
    subject = subject_of("after the renewal")
    send(stack, subject)
    wait_delivered(stack, subject)
    assert stack.pids == pids  # no host was restarted
    assert vault_reads(stack) > reads  # the new version came from Key Vault
    assert dead_letters(stack) == []


@pytest.mark.parametrize("stack", ["certificate"], indirect=True)
def test_a_renewed_certificate_never_registered_is_dead_lettered_with_the_sync_hint(stack: LocalStack) -> None:
    # Key Vault renewed, nobody told Entra, and the old key went: Entra knows no key the relay holds.
    stack.renew_certificate(register=False)
    stack.remove_old_certificate_keys()
    stack.emulator_post("expire-tokens", {})
    subject = subject_of("renewed, not registered")
    send(stack, subject)
    letter = wait_dead_letter(stack, subject)
    assert letter.code == "AADSTS700027", letter
    assert "sync-app-certificate.sh" in letter.hint and letter.attempts == 1
    assert delivered(stack, subject) == []
    # Registered now (the sync script's job): the next request is delivered, still without a restart.
    assert stack.register_certificate().key_id
    subject = subject_of("registered after all")
    send(stack, subject)
    wait_delivered(stack, subject)


@pytest.mark.parametrize("stack", ["federated"], indirect=True)
def test_a_deleted_federated_credential_is_dead_lettered_with_entras_code_and_hint(stack: LocalStack) -> None:
    subject = subject_of("federated before")
    send(stack, subject)
    wait_delivered(stack, subject)
    reads = vault_reads(stack)  # the delivery test's own probes of the vault are counted too

    stack.delete_federated_credential()
    stack.emulator_post("expire-tokens", {})  # the relay must ask Entra again, with its assertion
    subject = subject_of("federated credential deleted")
    send(stack, subject)
    letter = wait_dead_letter(stack, subject)
    # No federated credential of the app names the assertion's issuer: Entra's AADSTS700211, a configuration error
    # (permanent), so the relay dead-letters at the first try instead of retrying.
    assert letter.code == "AADSTS700211", letter
    assert "https://login.microsoftonline.com/" in letter.hint and "mailrelay doctor" in letter.hint
    assert letter.attempts == 1 and delivered(stack, subject) == []

    stack.set_federated_credential()  # put back as documented: the relay recovers without a restart
    subject = subject_of("federated credential restored")
    send(stack, subject)
    wait_delivered(stack, subject)
    assert vault_reads(stack) == reads  # failing or not, the relay never turned to Key Vault


@pytest.mark.parametrize("stack", ["federated"], indirect=True)
def test_a_federated_credential_naming_the_client_id_as_subject_is_refused_at_token_time(stack: LocalStack) -> None:
    # The classic mistake: the identity's client id where its principal (object) id belongs. Saved without a word.
    assert stack.identity_client_id is not None
    stack.set_federated_credential(subject=stack.identity_client_id)
    stack.emulator_post("expire-tokens", {})
    subject = subject_of("federated wrong subject")
    send(stack, subject)
    letter = wait_dead_letter(stack, subject)
    assert letter.code == "AADSTS700213" and "principal (object) id" in letter.hint, letter
    stack.set_federated_credential()


@pytest.mark.parametrize("stack", ["managed-identity"], indirect=True)
def test_a_deleted_identity_is_dead_lettered_as_a_missing_credential(stack: LocalStack) -> None:
    subject = subject_of("identity before")
    send(stack, subject)
    wait_delivered(stack, subject)
    reads = vault_reads(stack)

    stack.delete_identity()
    stack.emulator_post("expire-tokens", {})  # the cached Graph token is refused: the identity is asked again
    subject = subject_of("identity deleted")
    send(stack, subject)
    letter = wait_dead_letter(stack, subject)
    # The identity endpoint answers 400 for an identity it does not have: configuration, not an outage.
    assert letter.code == "CredentialUnavailable", letter
    assert letter.attempts == 1 and delivered(stack, subject) == []

    stack.restore_identity()
    subject = subject_of("identity restored")
    send(stack, subject)
    wait_delivered(stack, subject)
    assert vault_reads(stack) == reads


def test_mailrelay_local_takes_the_mode_and_the_lifetime_under_both_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from devstack import stack as stack_module
    from shared.cli import main

    calls: list[dict[str, Any]] = []

    def run_foreground(**kwargs: Any) -> int:
        calls.append(kwargs)
        return 0

    monkeypatch.setattr(stack_module, "run_foreground", run_foreground)
    assert main(["local", "--credential", "certificate", "--expires-in", "10"]) == 0
    assert main(["local", "--secret-expires-in", "12"]) == 0  # the older name still works
    assert [(c["credential"], c["expires_in_days"]) for c in calls] == [("certificate", 10.0), ("secret", 12.0)]
    assert main(["local", "--credential", "password"]) == 2
    assert "invalid choice: 'password'" in capsys.readouterr().err and len(calls) == 2


def test_mailrelay_local_runs_a_mode_and_says_so(tmp_path: Path) -> None:
    """The real command, as a user runs it: the banner and the state file name the mode and the certificate (never
    its key), and a request sent with `mailrelay send` through the state file is delivered."""
    import json
    import signal
    import subprocess
    import sys

    from shared.cli import main

    state_file = tmp_path / "local.json"
    banner = tmp_path / "banner.txt"
    with banner.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "local", "--credential", "certificate", "--expires-in", "10",
             "--state-file", str(state_file)],
            cwd=Path(__file__).parents[2],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    try:
        wait_for(lambda: state_file.exists() or process.poll() is not None, 40, "the state file")
        wait_for(lambda: "Ctrl-C stops everything" in banner.read_text(), 10, "the banner")
        state = json.loads(state_file.read_text())
        assert state["credential"] == "certificate" and "identity" not in state
        not_after = datetime.fromisoformat(state["certificate"]["notAfter"])
        assert timedelta(days=10) <= not_after - datetime.now(UTC) <= timedelta(days=10, minutes=2)
        assert state["relaySettings"]["GRAPH_CERTIFICATE_NAME"] == CERTIFICATE_NAME
        assert "PRIVATE KEY" not in state_file.read_text()
        text = banner.read_text()
        assert f"credential       certificate: Key Vault certificate {CERTIFICATE_NAME} (thumbprint " in text
        assert state["certificate"]["thumbprint"] in text
        assert "<span>credential: certificate</span>" in requests.get(state["consoleUrl"], timeout=5).text
        subject = subject_of("sent with mailrelay local --credential certificate")
        command = ["send", "--state-file", str(state_file), "--from", SENDER, "--to", "ada@contoso.com"]
        assert main([*command, "--subject", subject, "--text", "t"]) == 0

        def outbox() -> list[str]:
            entries = requests.get(
                f"{state['emulatorUrl']}/_emulator/outbox", verify=state["caCertPath"], timeout=5
            ).json()
            return [e["message"]["message"]["subject"] for e in entries]

        wait_for(lambda: subject in outbox(), TIMEOUT, "the send")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert not state_file.exists()


def test_the_demo_runs_in_certificate_mode_with_the_same_five_outcomes(capsys: pytest.CaptureFixture[str]) -> None:
    from devstack import demo

    assert demo.main(["--credential", "certificate"]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "credential: certificate: Key Vault certificate" in out and "5 of 5 cases as expected" in out


def test_the_stack_refuses_an_unknown_mode_and_two_different_lifetimes() -> None:
    from devstack.stack import StackError

    with pytest.raises(StackError, match="credential must be one of secret, certificate, federated, managed-identity"):
        LocalStack(credential="password")
    with pytest.raises(StackError, match="name one lifetime"):
        LocalStack(expires_in_days=10, secret_expires_in_days=20)
    with pytest.raises(StackError, match="renew_certificate needs credential='certificate'"):
        LocalStack(credential="federated").renew_certificate()
    # What each mode seeds, read before anything starts: nothing secret outside its own mode.
    seeds = {mode: LocalStack(credential=mode)._seed() for mode in MODES}
    assert [sorted(seed) for seed in seeds.values()] == [
        ["apps", "mailboxes", "secrets"],
        ["apps", "certificates", "mailboxes"],
        ["apps", "identities", "mailboxes"],
        ["identities", "mailboxes"],
    ]
    assert "secret" not in seeds["certificate"]["apps"][0] and "secret" not in seeds["federated"]["apps"][0]
    assert len(seeds["certificate"]["apps"][0]["keyCredentials"]) == 1
    federated = seeds["federated"]["apps"][0]["federatedCredentials"][0]
    identity = seeds["federated"]["identities"][0]
    assert federated["subject"] == identity["principalId"] != identity["clientId"]
    assert federated["audiences"] == ["api://AzureADTokenExchange"]
    assert federated["issuer"] == f"https://login.microsoftonline.com/{identity['tenantId']}/v2.0"
    assert identity["exchangeRoles"] == [] and seeds["managed-identity"]["identities"][0]["exchangeRoles"]
