from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import DEFAULT_QUEUE_NAME, SettingsError, load_settings

GOOD = {
    "GRAPH_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "GRAPH_CLIENT_ID": "66666666-7777-8888-9999-000000000000",
    "KEY_VAULT_URI": "https://relay-kv.vault.azure.net/",
    "GRAPH_CLIENT_SECRET_NAME": "graph-client-secret",
    "ALLOWED_SENDERS": "Alerts@Contoso.com, receipts@contoso.com",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def env(**changes: str | None) -> dict[str, str]:
    out = dict(GOOD)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def test_good_settings_load_with_defaults() -> None:
    s = load_settings(GOOD)
    assert s.allowed_senders == frozenset({"alerts@contoso.com", "receipts@contoso.com"})
    assert s.queue_name == DEFAULT_QUEUE_NAME and s.poison_queue_name == "mail-outbox-poison"
    assert s.key_vault_uri == "https://relay-kv.vault.azure.net"
    assert s.graph_base_url == "https://graph.microsoft.com"
    assert s.authority_host == "https://login.microsoftonline.com"
    assert s.storage.connection_string == "UseDevelopmentStorage=true"


@pytest.mark.parametrize(
    "name", ["GRAPH_TENANT_ID", "GRAPH_CLIENT_ID", "KEY_VAULT_URI", "GRAPH_CLIENT_SECRET_NAME", "ALLOWED_SENDERS"]
)
def test_each_missing_setting_is_named(name: str) -> None:
    with pytest.raises(SettingsError, match=f"Setting {name} is missing"):
        load_settings(env(**{name: None}))


def test_blank_counts_as_missing() -> None:
    with pytest.raises(SettingsError, match="GRAPH_CLIENT_ID is missing"):
        load_settings(env(GRAPH_CLIENT_ID="  "))


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("GRAPH_CLIENT_ID", "my-app", "must be a GUID"),
        ("GRAPH_TENANT_ID", "contoso", "tenant GUID or domain"),
        ("KEY_VAULT_URI", "http://kv.vault.azure.net", "https:// URL"),
        ("ALLOWED_SENDERS", "alerts@contoso.com, not-an-address", "not an email address: 'not-an-address'"),
        ("ALLOWED_SENDERS", " , ", "is empty"),
        ("MAIL_QUEUE_NAME", "Mail_Outbox", "valid queue name"),
        ("GRAPH_BASE_URL", "http://localhost", "https:// URL"),
        ("MAILRELAY_CA_BUNDLE", "/nonexistent/ca.pem", "does not exist"),
    ],
)
def test_malformed_settings_are_named_with_the_rule(name: str, value: str, rule: str) -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(env(**{name: value}))
    assert name in str(e.value) and rule in str(e.value)


def test_tenant_may_be_a_domain() -> None:
    assert load_settings(env(GRAPH_TENANT_ID="contoso.onmicrosoft.com")).tenant_id == "contoso.onmicrosoft.com"


def test_storage_needs_a_connection_string_or_an_identity_based_uri() -> None:
    with pytest.raises(SettingsError, match="AzureWebJobsStorage is missing"):
        load_settings(env(AzureWebJobsStorage=None))
    s = load_settings(
        env(
            AzureWebJobsStorage=None,
            AzureWebJobsStorage__queueServiceUri="https://relaysa.queue.core.windows.net/",
            AzureWebJobsStorage__clientId="abc",
        )
    )
    assert s.storage.queue_service_uri == "https://relaysa.queue.core.windows.net"
    assert s.storage.connection_string is None and s.storage.client_id == "abc"


def test_ca_bundle_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_settings(env(MAILRELAY_CA_BUNDLE=str(ca))).ca_bundle == str(ca)
