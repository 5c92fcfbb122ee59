"""Fixtures for integration tests: the local emulator of Entra ID, Microsoft Graph and Key Vault."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.emulator import Emulator


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[Emulator]:
    """One running emulator for the whole session: starting one costs a CA and an RSA key."""
    emulator = Emulator(host="127.0.0.1", port=0)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator(emulator_server: Emulator) -> Emulator:
    """The session's emulator, reset (no apps, mailboxes, secrets, faults, outbox or stats) for this test."""
    emulator_server.reset()
    return emulator_server
