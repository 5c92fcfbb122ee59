"""The client library as an app installs it: `pip install ./client` into a new venv, nothing of the relay.

Then, from that venv, the client enqueues a request that the relay (the local host, the emulator's Graph)
delivers. Slow-ish (a venv and a pip install from the package index), so it runs once, with the e2e tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack.host import LocalHost
from tests.e2e.conftest import RelayEnv, wait_for

pytestmark = pytest.mark.e2e  # a venv, a pip install and the local stack: -m 'not e2e' skips it

ROOT = Path(__file__).resolve().parents[2]
RELAY_ONLY = ("azure-functions", "msal", "azure-keyvault-secrets", "pydantic", "azure-data-tables", "requests-oauthlib")

SCRIPT = """
import json, sys
from mailrelay_client import ContractError, MailClient

conn, queue, request = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = MailClient.from_connection_string(conn, queue)
try:
    client.send({**request, "to": ["not an address"]})
except ContractError as e:
    print("refused:", [v.field for v in e.violations])
print("sent:", client.send(request))
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("client-venv")
    # A copy as a fresh checkout has it: pip builds in the source folder, where setuptools' build/ of an
    # earlier build (left by a developer's pip install ./client) would put deleted modules into the wheel,
    # and a build here would write into the checkout under test.
    source = shutil.copytree(
        ROOT / "client", home / "source", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    venv.create(home / "venv", with_pip=True)
    python = home / "venv" / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        check=True,
        timeout=300,
    )
    return python


def installed(python: Path) -> set[str]:
    out = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {p["name"].lower() for p in json.loads(out)}


def test_installing_the_client_pulls_in_nothing_of_the_relay(client_venv: Path) -> None:
    names = installed(client_venv)
    assert {"graph-mail-relay-client", "azure-storage-queue", "jsonschema"} <= names
    assert not names & set(RELAY_ONLY), names & set(RELAY_ONLY)
    assert "graph-mail-relay" not in names  # nor the relay's own distribution, nor a package named shared
    check = "import importlib.util, sys; sys.exit(importlib.util.find_spec('shared') is not None)"
    subprocess.run([client_venv, "-c", check], check=True, cwd="/")


def test_the_installed_client_enqueues_what_the_relay_delivers(
    client_venv: Path, relay_env: RelayEnv, local_host: Callable[..., LocalHost]
) -> None:
    request = relay_env.request("from a fresh venv")
    out = subprocess.run(
        [client_venv, "-c", SCRIPT, relay_env.env["AzureWebJobsStorage"], relay_env.queue_name, json.dumps(request)],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # not the checkout: nothing of the relay on sys.path
        timeout=60,
    ).stdout
    assert "refused: ['to[0]']" in out and "sent: " in out
    local_host()
    wait_for(lambda: relay_env.subjects_sent()["from a fresh venv"] == 1, 30, "the relay to deliver it")
    assert relay_env.poison_messages() == []
