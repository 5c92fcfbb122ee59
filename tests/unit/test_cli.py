"""The `mailrelay` package as a whole: its entry points, its subcommands, and what importing it costs."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import shared.cli

ROOT = Path(__file__).parents[2]
COMMANDS = ["validate", "send", "status", "report", "dead-letters", "local", "expiry", "doctor"]


def test_importing_the_cli_does_not_import_pydantic() -> None:
    """`mailrelay --help` must answer at once: subcommands import their heavy modules when they run."""
    code = "import sys, shared.cli; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    loaded = result.stdout.split()
    assert "shared.cli" in loaded
    assert not [m for m in loaded if m.startswith(("pydantic", "shared.contract", "shared.graph"))]
    # Nor the Azure SDK, the doctor's and expiry's logic, or the local stack.
    assert not [m for m in loaded if m.startswith(("azure", "msal", "devstack", "shared.doctor", "shared.expiry"))]


def test_python_m_lists_every_command_in_order() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "--help"], capture_output=True, text=True, check=True, cwd=ROOT
    )
    # argparse indents each command by 4 and a wrapped help line by more.
    listed = [match[1] for match in re.finditer(r"^    (\S+)", result.stdout, re.MULTILINE)]
    assert listed == COMMANDS


def test_python_m_returns_the_command_exit_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "validate", str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("mailrelay validate: cannot read")


def test_the_console_script_is_shared_cli_main() -> None:
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "mailrelay"]
    assert script.value == "shared.cli:main"
    assert script.load() is shared.cli.main

