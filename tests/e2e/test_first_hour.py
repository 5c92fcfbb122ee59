"""Issue 13's edges, as a new user meets them on the local stack (Azurite, the local host, the emulator)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack.host import LocalHost
from shared.cli import main
from tests.e2e.conftest import NOT_ALLOWED, RelayEnv, wait_for


def conn(relay_env: RelayEnv) -> list[str]:
    return ["--connection-string", relay_env.env["AzureWebJobsStorage"], "--queue", relay_env.queue_name]


def test_the_id_send_prints_finds_the_dead_letter(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost], capsys: pytest.CaptureFixture[str]
) -> None:
    local_host()
    assert (
        main(
            ["send", *conn(relay_env), "--from", NOT_ALLOWED, "--to", "a@contoso.com", "--subject", "s", "--text", "t"]
        )
        == 0
    )
    sent_id = capsys.readouterr().out.strip()
    wait_for(lambda: len(relay_env.poison_messages()) == 1, 15, "the dead letter")
    assert main(["dead-letters", "show", sent_id, "--json", *conn(relay_env)]) == 0
    letter = json.loads(capsys.readouterr().out)
    assert letter["error"]["code"] == "SenderNotAllowed" and letter["key"] == sent_id
    # The list names it by the key send printed (issue 21: it showed the poison queue's own message id).
    assert main(["dead-letters", "list", *conn(relay_env)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[0] == "KEY" and row.split()[0] == sent_id and letter["id"] not in row


def test_a_queue_name_typo_is_named_not_read_as_no_dead_letters(
    relay_env: RelayEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["dead-letters", "list", "--connection-string", relay_env.env["AzureWebJobsStorage"], "--queue", "mail-outbx"]
    )
    assert code == 2 and "'mail-outbx' does not exist" in capsys.readouterr().err


def test_the_local_url_the_stack_prints_works_for_send(
    relay_env: RelayEnv, local_host: Callable[..., LocalHost], capsys: pytest.CaptureFixture[str]
) -> None:
    queue_url = relay_env.queue.url  # http://127.0.0.1:PORT/devstoreaccount1/<queue>
    assert queue_url.startswith("http://127.0.0.1:")
    local_host()
    assert (
        main(
            [
                "send",
                "--queue-url",
                queue_url,
                "--from",
                "alerts@contoso.com",
                "--to",
                "a@contoso.com",
                "--subject",
                "over the local url",
                "--text",
                "t",
            ]
        )
        == 0
    ), capsys.readouterr().err
    wait_for(lambda: relay_env.subjects_sent()["over the local url"] == 1, 15, "the send")


def test_local_env_prints_the_stacks_settings_as_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "local.json"
    state.write_text(json.dumps({"relaySettings": {"GRAPH_TENANT_ID": "t", "ALLOWED_SENDERS": "a@b.c,d@e.f"}}))
    assert main(["local", "env", "--state-file", str(state)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["export GRAPH_TENANT_ID=t", "export ALLOWED_SENDERS=a@b.c,d@e.f"]
    assert main(["local", "env", "--format", "local-settings", "--state-file", str(state)]) == 0
    settings = json.loads(capsys.readouterr().out)
    example = json.loads((Path(__file__).parents[2] / "local.settings.json.example").read_text())
    assert set(settings) == set(example) and settings["Values"]["GRAPH_TENANT_ID"] == "t"
    assert settings["Values"]["FUNCTIONS_WORKER_RUNTIME"] == example["Values"]["FUNCTIONS_WORKER_RUNTIME"]
    assert main(["local", "env", "--state-file", str(tmp_path / "none.json")]) == 3
    assert "no running stack" in capsys.readouterr().err


def test_local_refuses_a_bad_address_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "--allowed-senders", "not-an-email"]) == 2
    err = capsys.readouterr().err
    assert "not an email address: 'not-an-email'" in err and "Traceback" not in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG")
def test_a_killed_stack_leaves_no_process_and_its_folders_go_with_the_next_start(tmp_path: Path) -> None:
    from devstack.azurite import sweep_stale_workdirs
    from tests.e2e.test_client_cli import _alive, _children

    state_file = tmp_path / "local.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "local", "--state-file", str(state_file)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: state_file.exists() or process.poll() is not None, 40, "the state file")
        children = _children(process.pid)
        assert len(children) == 3
        workdirs = [
            p
            for p in Path(tempfile.gettempdir()).iterdir()
            if p.name.startswith(("azurite-", "mailrelay-local-"))
            and (p / "owner.pid").is_file()
            and (p / "owner.pid").read_text() == str(process.pid)
        ]
        assert len(workdirs) == 2  # Azurite's and the stack's
        assert not any(p.name == "seed.json" for d in workdirs for p in d.iterdir())  # the secret left at once
    finally:
        process.kill()  # SIGKILL: nothing of `mailrelay local` runs to clean up
        process.wait()
    wait_for(lambda: not any(_alive(pid) for pid in children), 10, "the children to die with their parent")
    assert {p.name for p in sweep_stale_workdirs()} >= {d.name for d in workdirs}
    assert not any(d.exists() for d in workdirs)


def test_a_second_stack_does_not_take_over_a_live_ones_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    state = tmp_path / "local.json"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # the "running" stack
    try:
        state.write_text(json.dumps({"pid": sleeper.pid, "emulatorUrl": "https://127.0.0.1:1"}))
        assert main(["local", "--state-file", str(state)]) == 2
        assert f"pid {sleeper.pid}" in capsys.readouterr().err
        assert json.loads(state.read_text())["pid"] == sleeper.pid  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    assert os.path.exists(state)


def test_the_state_file_does_not_depend_on_the_current_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from shared.cli.common import default_state_file

    monkeypatch.delenv("MAILRELAY_STATE_FILE", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    first = default_state_file()
    monkeypatch.chdir(tmp_path)
    assert default_state_file() == first == tmp_path / "mailrelay" / "local.json"
    monkeypatch.setenv("MAILRELAY_STATE_FILE", str(tmp_path / "mine.json"))
    assert default_state_file() == tmp_path / "mine.json"


def test_doctor_and_expiry_fail_at_once_when_the_stack_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from tests.unit.test_cli_send import closed_port

    port = closed_port()
    state = tmp_path / "local.json"
    settings = {
        "AzureWebJobsStorage": f"UseDevelopmentStorage=false;QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1",
        "KEY_VAULT_URI": f"https://127.0.0.1:{port}/",
        "GRAPH_CLIENT_ID": "",
    }
    state.write_text(json.dumps({"relaySettings": settings}))
    monkeypatch.delenv("GRAPH_CLIENT_ID", raising=False)
    for command in (["doctor"], ["expiry", "check"]):
        started = time.monotonic()
        code = main([*command, "--state-file", str(state)])
        assert time.monotonic() - started < 5 and code != 0
        out = capsys.readouterr()
        assert f"nothing is listening on 127.0.0.1:{port}" in out.out + out.err


def test_indexing_the_app_no_longer_prints_the_auth_level_notice() -> None:
    code = "import logging; logging.basicConfig(); from devstack.functions import indexed; print(sorted(indexed()))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2]
    )
    assert "send_mail" in done.stdout and "Auth level" not in done.stderr
