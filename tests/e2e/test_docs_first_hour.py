"""The README's "First hour", run as a new user runs it: each step's commands read from README.md itself, typed into
a shell in the checkout, against the stack `mailrelay local` starts; then the outcome each step promises is checked.
And docs/sending.md's local Python example, as written, against the same stack.

Issue 21 found the first hour broken: step 4 started the stack with `--mailbox hr@contoso.com` alone, so hr@ was
not on the allow-list and the promised ErrorAccessDenied was SenderNotAllowed (steps 5 and 6 could not work), and
the Python example used a `connection_string` nobody had given it. Reading the commands from the docs is what keeps
them true: change a step, and this test runs the new one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.outcomes import ACCESS_DENIED_HINTS
from shared.settings import DEPLOYED_SETTINGS
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SETTINGS = ("AzureWebJobsStorage", "GRAPH_BASE_URL", "GRAPH_AUTHORITY_HOST", "MAILRELAY_CA_BUNDLE")


def section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : None if end < 0 else end]


def fenced_blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """(the list item's number it sits under, 0 if none; its language; its text, dedented) for each fenced block."""
    step, language, block = 0, "", None
    for line in text.splitlines():
        item = re.match(r"^(\d+)\. ", line)
        if item and block is None:
            step = int(item.group(1))
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence:
            if block is None:
                language, block = fence.group(1), []
            else:
                yield step, language, textwrap.dedent("\n".join(block)).strip()
                block = None
            continue
        if block is not None:
            block.append(line)


def first_hour_steps() -> dict[int, str]:
    steps: dict[int, str] = {}
    for step, _, block in fenced_blocks(section(ROOT / "README.md", "## First hour")):
        assert step not in steps, f"first hour, step {step}: one code block per step, please"
        steps[step] = block
    return steps


def user_env(state_file: Path) -> dict[str, str]:
    """A new user's shell: none of the relay's settings (another test's, a developer's), the state file of this test's
    own stack (so it never meets a stack someone else runs), and the checkout's venv not yet activated."""
    relay = {*DEPLOYED_SETTINGS, *LOCAL_SETTINGS, "MAILRELAY_APPS", "PYTHONPATH", "VIRTUAL_ENV"}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in relay and not k.startswith(("IDENTITY_", "EXPIRY_", "AzureWebJobsStorage"))
    }
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["MAILRELAY_STATE_FILE"] = str(state_file)
    return env


class Terminal:
    """The user's second terminal: each step's block runs in bash in the checkout, after what earlier steps did to
    the shell that lasts (`. .venv/bin/activate`)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.prelude: list[str] = []

    def run(self, block: str) -> subprocess.CompletedProcess[str]:
        script = "\n".join(["set -euo pipefail", *self.prelude, block])
        done = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180, check=False
        )
        self.prelude += [line for line in block.splitlines() if line.strip() == ". .venv/bin/activate"]
        return done

    def json(self, command: str) -> Any:
        done = self.run(command)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def stack_of_step_2(tmp_path: Path) -> Iterator[Callable[[str], dict[str, Any]]]:
    """Starts the README's `mailrelay local` command as the user does (it runs until Ctrl-C); stops it after."""
    processes: list[subprocess.Popen[bytes]] = []
    state_file = tmp_path / "state" / "local.json"
    log = tmp_path / "mailrelay-local.log"

    def start(command: str) -> dict[str, Any]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=ROOT, env=user_env(state_file), stdout=out, stderr=out
            )
        processes.append(process)
        wait_for(lambda: state_file.exists() or process.poll() is not None, 60, "mailrelay local's state file")
        assert process.poll() is None, log.read_text(errors="replace")
        wait_for(lambda: "mailrelay local: ready" in log.read_text(errors="replace"), 30, "the ready banner")
        state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
        state["stateFile"] = str(state_file)
        state["log"] = log
        return state

    yield start
    for process in processes:  # Ctrl-C, as step 7 says; SIGINT lets it stop its three parts
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def outbox(state: dict[str, Any]) -> list[dict[str, Any]]:
    answer = requests.get(f"{state['emulatorUrl']}/_emulator/outbox", verify=state["caCertPath"], timeout=5)
    answer.raise_for_status()
    entries: list[dict[str, Any]] = answer.json()
    return entries


def delivered(state: dict[str, Any], sender: str, subject: str) -> bool:
    return any(e["sender"] == sender and e["message"]["message"]["subject"] == subject for e in outbox(state))


def test_the_readme_first_hour_does_what_each_step_says(stack_of_step_2: Callable[[str], dict[str, Any]]) -> None:
    steps = first_hour_steps()
    assert sorted(steps) == [1, 2, 3, 4, 5, 6, 7], "a step changed: teach this test what the new one promises"
    # 1. The demo (scripts/bootstrap, then devstack.demo) is test_client_cli.py's test_the_demo_runs_green.
    assert steps[1] == "scripts/demo"

    # 2. Run the stack, leave it running; it prints the console's URL, which serves the outbox.
    (command,) = steps[2].splitlines()
    assert command.startswith(".venv/bin/mailrelay local ")
    state = stack_of_step_2(command)
    banner = state["log"].read_text(errors="replace")
    assert state["consoleUrl"] in banner
    console = requests.get(state["consoleUrl"], timeout=5)
    assert console.status_code == 200 and "Outbox" in console.text

    terminal = Terminal(user_env(Path(state["stateFile"])))

    # 3. Send your own mail: it is delivered (the emulator's Graph accepted it).
    done = terminal.run(steps[3])
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: delivered(state, "alerts@contoso.com", "Hello"), 30, "alerts@'s mail in the emulator's outbox")

    # 4. Break it: one sender off the allow-list, one allowed by the relay but outside the Exchange scope.
    done = terminal.run(steps[4])
    assert done.returncode == 0, done.stdout + done.stderr
    letters: list[dict[str, Any]] = []

    def two_dead_letters() -> bool:
        letters[:] = terminal.json("mailrelay dead-letters list --json")
        return len(letters) >= 2

    wait_for(two_dead_letters, 30, "the two dead letters")
    codes = {letter["sender"]: letter["error"]["code"] for letter in letters}
    assert codes == {"ceo@contoso.com": "SenderNotAllowed", "hr@contoso.com": "ErrorAccessDenied"}, letters
    assert [letter["key"] for letter in letters if letter["sender"] == "hr@contoso.com"] == ["hr-1"]
    assert not any(e["sender"] in ("ceo@contoso.com", "hr@contoso.com") for e in outbox(state))

    # 5. Read the dead letters: the key send printed, the code and the hint (the fix).
    done = terminal.run(steps[5])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SenderNotAllowed" in done.stdout and "hr-1" in done.stdout
    assert "ErrorAccessDenied" in done.stdout and ACCESS_DENIED_HINTS["rbac"] in done.stdout

    # 6. Check the set-up: alerts@ can send and hr@ cannot, proved without sending (exit 0: nothing failed or
    # unproven).
    done = terminal.run(steps[6])
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^ok\b.*alerts@contoso\.com", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^ok\b.*hr@contoso\.com", done.stdout, re.MULTILINE), done.stdout

    # 7. Fix it and requeue: hr-1 is sent, once, and its status record says so.
    done = terminal.run(steps[7])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hr-1" in done.stdout

    def hr_sent() -> bool:
        record = terminal.json("mailrelay status hr-1 --json")
        return bool(record and record.get("state") == "sent")

    wait_for(hr_sent, 30, "hr-1's status record to say sent")
    assert [e["sender"] for e in outbox(state)].count("hr@contoso.com") == 1
    assert [letter["sender"] for letter in terminal.json("mailrelay dead-letters list --json")] == ["ceo@contoso.com"]

    # docs/sending.md, "Against the local stack": the shell line, then the Python example, as written.
    local_example = section(ROOT / "docs" / "sending.md", "## Against the local stack")
    blocks = {language: block for _, language, block in fenced_blocks(local_example)}
    assert set(blocks) == {"sh", "python"}, blocks
    example = Path(state["stateFile"]).parent / "example.py"
    example.write_text(blocks["python"] + "\n", encoding="utf-8")
    done = Terminal(user_env(Path(state["stateFile"]))).run(f"{blocks['sh']}\n.venv/bin/python {example}")
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: delivered(state, "alerts@contoso.com", "Hello from my app"), 30, "the example's mail")
