"""The process-wide runtimes: built on first use, from one set of clients. Building makes no network call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared import bootstrap
from shared.expiry import MailChannel
from tests.unit.test_settings import GOOD


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EXPIRY_ALERT_SENDER", "alerts@contoso.com")
    monkeypatch.setenv("EXPIRY_ALERT_RECIPIENTS", "it-ops@contoso.com")
    bootstrap.reset()
    yield
    bootstrap.reset()


def test_both_triggers_share_one_relay_so_one_secret_and_token_cache(environment: None) -> None:
    queue_side = bootstrap.runtime()
    timer_side = bootstrap.expiry_runtime()
    (mail,) = [c for c in timer_side.check._channels if isinstance(c, MailChannel)]
    # The expiry mail goes through the very relay the queue function uses: when the secret has
    # expired it fails exactly as the relay's sends do, and a rotation re-read serves both.
    assert mail._relay is queue_side.relay
    assert bootstrap.runtime() is queue_side and bootstrap.expiry_runtime() is timer_side


def test_reset_builds_afresh(environment: None) -> None:
    first = bootstrap.runtime()
    bootstrap.reset()
    assert bootstrap.runtime() is not first


def test_an_app_with_its_own_registration_gets_a_relay_calling_graph_as_it(
    environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from shared.tokens import MsalTokens

    billing = "0c222222-3333-4444-8555-666666666666"
    monkeypatch.setenv("AZURE_CLIENT_ID", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
    own = {"credential": "federated", "clientId": billing}
    apps = [
        {"name": "billing", "senders": ["alerts@contoso.com"], "graph": own},
        {"name": "ops", "senders": ["alerts@contoso.com"]},
    ]
    monkeypatch.setenv("MAILRELAY_APPS", json.dumps(apps))
    rt = bootstrap.runtime()
    billing_rt = rt.for_app("billing")
    tokens = billing_rt.relay._tokens
    assert isinstance(tokens, MsalTokens) and tokens._client_id == billing
    # An app without one calls Graph as the relay; each declared app reads its own payload container; the outbox
    # is the relay itself; all share one Graph client.
    ops_rt = rt.for_app("ops")
    assert ops_rt.relay._tokens is rt.relay._tokens and rt.for_app("default") is rt
    assert billing_rt.relay._graph is rt.relay._graph is ops_rt.relay._graph
    containers = [r.payloads._container.container_name for r in (rt, billing_rt, ops_rt)]  # type: ignore[union-attr]
    assert containers == ["mail-payloads", "mail-payloads-billing", "mail-payloads-ops"]
    assert billing_rt.payloads is billing_rt.relay.payloads  # what the relay reads is what delivery deletes


def test_the_expiry_check_watches_each_apps_own_registration(
    environment: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("AZURE_CLIENT_ID", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
    own = {"credential": "federated", "clientId": "0c222222-3333-4444-8555-666666666666"}
    apps = [
        {"name": "billing", "senders": ["alerts@contoso.com"], "graph": own},
        {"name": "ops", "senders": ["alerts@contoso.com"]},
    ]
    monkeypatch.setenv("MAILRELAY_APPS", json.dumps(apps))
    expiry = bootstrap.expiry_runtime()
    assert list(expiry.apps) == ["billing"]  # ops sends as the relay: the relay's check covers it
    billing = expiry.apps["billing"]
    assert billing._mode == "federated" and billing._secret is None  # nothing to expire: a fresh token instead
    assert billing._tokens is bootstrap.runtime().for_app("billing").relay._tokens
    assert billing._client_id == own["clientId"] and expiry.check._mode == "secret"
    # Each finding says whose registration it is about (the dimension the credential alerts split by).
    assert (expiry.check._registration, billing._registration) == ("relay", "billing")


def test_the_timer_runs_every_registrations_check_even_when_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass, field
    from typing import Any

    from shared import handlers

    @dataclass
    class Check:
        failure: Exception | None = None
        runs: list[int] = field(default_factory=list)

        def run(self) -> Any:
            self.runs.append(1)
            if self.failure:
                raise self.failure
            return "report"

    relay, broken, fine = Check(), Check(RuntimeError("store down")), Check()
    runtime = bootstrap.ExpiryRuntime(settings=None, check=relay, apps={"billing": broken, "shop": fine})  # type: ignore[arg-type]
    monkeypatch.setattr(bootstrap, "expiry_runtime", lambda: runtime)
    assert handlers.handle_expiry_timer() == "report"
    assert (relay.runs, broken.runs, fine.runs) == ([1], [1], [1])
