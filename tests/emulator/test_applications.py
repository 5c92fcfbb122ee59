"""The emulator's GET /v1.0/applications(appId='...'): Graph's passwordCredentials shape and its 403."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from devstack.emulator import Emulator
from tests.emulator.test_emulator import token_reply

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "0d1f4a5c-2b3e-4c6d-8e9f-a0b1c2d3e4f5"
SECRET = "Qx8~first.secret-value-aaaaaaaaaaaaaaaa"


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def session(emu: Emulator) -> requests.Session:
    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    http.verify = emu.ca_cert_path
    return http


def token(emu: Emulator) -> str:
    return str(
        token_reply(emu.url, session(emu), client_id=CLIENT, secret=SECRET, tenant=TENANT).json()["access_token"]
    )


def get_app(emu: Emulator) -> requests.Response:
    return requests.get(
        f"{emu.url}/v1.0/applications(appId='{CLIENT}')?$select=passwordCredentials",
        headers={"Authorization": f"Bearer {token(emu)}"},
        verify=emu.ca_cert_path,
        timeout=10,
    )


def test_password_credentials_in_graphs_shape_without_the_value(emu: Emulator) -> None:
    end = datetime(2027, 1, 31, 12, 0, tzinfo=UTC)
    emu.add_app(TENANT, CLIENT, SECRET, roles=("Mail.Send", "Application.Read.All"), secret_end=end)
    old = emu.add_password_credential(CLIENT, end - timedelta(days=200), "old")
    reply = get_app(emu)
    assert reply.status_code == 200
    body = reply.json()
    assert set(body) == {"@odata.context", "passwordCredentials"}
    current, listed = body["passwordCredentials"]
    assert set(current) == {
        "customKeyIdentifier",
        "displayName",
        "endDateTime",
        "hint",
        "keyId",
        "secretText",
        "startDateTime",
    }
    assert current["endDateTime"] == "2027-01-31T12:00:00Z" and current["secretText"] is None
    assert listed["keyId"] == old and listed["displayName"] == "old"
    assert SECRET not in reply.text
    assert emu.stats["graph.applications"] == 1


def test_without_application_read_all_graph_answers_403(emu: Emulator) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, roles=("Mail.Send",))
    reply = get_app(emu)
    assert reply.status_code == 403
    assert reply.json()["error"]["code"] == "Authorization_RequestDenied"


def test_a_secret_past_its_end_date_is_expired_in_entra(emu: Emulator) -> None:
    emu.add_app(TENANT, CLIENT, SECRET, secret_end=datetime.now(UTC) - timedelta(minutes=1))
    reply = token_reply(emu.url, session(emu), client_id=CLIENT, secret=SECRET, tenant=TENANT)
    assert reply.status_code == 401 and 7000222 in reply.json()["error_codes"]


def test_key_vault_secret_attributes_can_be_changed(emu: Emulator) -> None:
    version = emu.set_secret("graph-client-secret", SECRET, expires_on=datetime.now(UTC) + timedelta(days=5))
    assert emu.update_secret("graph-client-secret", enabled=False, expires_on=None) == version
    with pytest.raises(KeyError):
        emu.update_secret("graph-client-secret", "no-such-version", enabled=True)
