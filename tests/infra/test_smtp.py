"""The SMTP listener in the deployment template (issue 22): main.bicep's optional module app/smtp.bicep, evaluated for a
parameter set (tests/infra/bicep_eval.py evaluates the templates' own expressions; no Bicep CLI, no Azure).

What it pins: nothing of the listener without deploySmtpListener; TCP ingress on 587 with 465 beside it; the sites'
allow-list applied, and an empty one refused; the secrets only as Key Vault references mounted as files; the relay's
user-assigned identity and no other; never fewer than one replica; the same sender lists as the Function.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.infra.bicep_eval import Ref, Template
from tests.infra.test_wiring import INFRA, MAIN, ROLE_KEY_VAULT_SECRETS_USER, main_template, source

SMTP = INFRA / "app" / "smtp.bicep"
SITES = ["203.0.113.10/32", "198.51.100.0/28"]
APPS = [{"name": "printers", "senders": ["scans@contoso.com"], "principals": []}]
ALLOWED = "scans@contoso.com,alerts@contoso.com"


def deployment(**params: Any) -> Template:
    return main_template(
        **{
            "deploySmtpListener": True,
            "smtpImage": "myregistry.azurecr.io/mailrelay-smtp:0.1.0",
            "smtpAllowedSourceCidrs": SITES,
            "apps": APPS,
            "allowedSenders": ALLOWED,
            **params,
        }
    )


def smtp_template(main: Template) -> Template:
    (module,) = main.module_instances("smtpListener")
    assert module["scope"] == main.value("rg")
    return Template(SMTP, module["params"])


def listener(main: Template) -> dict[str, Any]:
    return smtp_template(main).module_params("listener")


def container(main: Template) -> dict[str, Any]:
    (only,) = listener(main)["containers"]
    result: dict[str, Any] = only
    return result


def env(main: Template) -> dict[str, Any]:
    entries = container(main)["env"]
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"a setting is set twice: {names}"
    return {e["name"]: e for e in entries}


def decorators(path: Any, name: str) -> dict[str, Any]:
    template = Template(path, {})
    declared = template.declared[name]
    assert declared.kind == "param", name
    return {key: [template.evaluate(arg) for arg in args] for key, args in declared.decorators.items()}


# --------------------------------------------------------------------------------------------
# Optional
# --------------------------------------------------------------------------------------------


def test_nothing_of_the_listener_is_deployed_by_default() -> None:
    main = main_template()
    assert main.module_instances("smtpListener") == []
    assert main.value("deploySmtpListener") is False
    for name, output in main.of_kind("output").items():
        if name.startswith("SMTP_"):
            assert output.value is not None and main.evaluate(output.value) == "", name


def test_turned_on_it_deploys_one_listener_into_the_relays_resource_group() -> None:
    main = deployment()
    app = listener(main)
    assert app["name"] == smtp_template(main).value("appName")
    assert main.evaluate(main.declared["SMTP_FQDN"].value) == Ref("smtpListener.outputs.fqdn")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Ingress
# --------------------------------------------------------------------------------------------


def test_tcp_ingress_on_587_with_465_beside_it_both_external() -> None:
    app = listener(deployment())
    assert app["ingressTransport"] == "tcp"
    assert app["ingressExternal"] is True
    assert (app["ingressTargetPort"], app["exposedPort"]) == (587, 587)
    assert app["additionalPortMappings"] == [{"external": True, "targetPort": 465, "exposedPort": 465}]
    assert not app.get("disableIngress", False)
    ports = {e["name"]: e["value"] for e in env(deployment()).values()}
    # The container listens where the ingress sends: STARTTLS on 587, implicit TLS on 465, no plain port in Azure.
    assert (ports["SMTP_STARTTLS_PORT"], ports["SMTP_TLS_PORT"], ports["SMTP_PLAIN_PORT"]) == ("587", "465", "0")


def test_the_environment_has_its_own_vnet_as_tcp_ingress_needs() -> None:
    smtp = smtp_template(deployment())
    environment = smtp.module_params("smtpEnvironment")
    vnet = smtp.value("vnet")
    assert environment["infrastructureSubnetResourceId"] == f"{vnet.id}/subnets/{smtp.value('subnetName')}"
    assert environment["internal"] is False and environment["publicNetworkAccess"] == "Enabled"
    body = smtp.evaluate(smtp.declared["vnet"].value)  # type: ignore[arg-type]
    (subnet,) = body["properties"]["subnets"]
    assert subnet["name"] == smtp.value("subnetName")
    delegations = subnet["properties"]["delegations"]
    assert [d["properties"]["serviceName"] for d in delegations] == ["Microsoft.App/environments"]
    assert listener(deployment())["environmentResourceId"] == Ref("smtpEnvironment.outputs.resourceId")


def test_only_the_sites_may_connect() -> None:
    rules = listener(deployment())["ipSecurityRestrictions"]
    assert [r["ipAddressRange"] for r in rules] == SITES
    assert {r["action"] for r in rules} == {"Allow"}, "allow rules only: with any, all other traffic is denied"
    assert len({r["name"] for r in rules}) == len(rules)
    other = listener(deployment(smtpAllowedSourceCidrs=["192.0.2.7/32"]))["ipSecurityRestrictions"]
    assert [r["ipAddressRange"] for r in other] == ["192.0.2.7/32"]


def test_an_empty_allow_list_or_image_refuses_the_deployment() -> None:
    """No rules would let every address in (Container Apps' rule), so the module's parameter takes at least one, and
    ARM refuses a value that breaks its constraint; main.bicep's default is the empty list that is refused."""
    assert decorators(SMTP, "allowedSourceCidrs")["minLength"] == [1]
    assert decorators(SMTP, "image")["minLength"] == [1]
    main = deployment(smtpAllowedSourceCidrs=[], smtpImage="")
    (module,) = main.module_instances("smtpListener")
    assert module["params"]["allowedSourceCidrs"] == [] and module["params"]["image"] == ""
    assert main_template().value("smtpAllowedSourceCidrs") == []


# --------------------------------------------------------------------------------------------
# Secrets and identity
# --------------------------------------------------------------------------------------------


def test_secrets_are_key_vault_references_mounted_as_files_never_values() -> None:
    main = deployment()
    app = listener(main)
    identity = main.module_params("api")["identityId"]
    secrets = {s["name"]: s for s in app["secrets"]}
    assert len(secrets) == 2
    for secret in secrets.values():
        assert "value" not in secret, "a secret value in the template"
        assert secret["identity"] == identity
    urls = {s["keyVaultUrl"] for s in secrets.values()}
    vault = Ref("keyVault.outputs.uri")
    assert urls == {f"{vault}secrets/smtp-logins", f"{vault}secrets/smtp-tls"}
    (volume,) = app["volumes"]
    assert volume["storageType"] == "Secret"
    files = {item["secretRef"]: item["path"] for item in volume["secrets"]}
    assert set(files) == set(secrets)
    (mount,) = container(main)["volumeMounts"]
    assert mount["volumeName"] == volume["name"]
    settings = env(main)
    mounted = {f"{mount['mountPath']}/{path}" for path in files.values()}
    assert {settings["SMTP_LOGINS_FILE"]["value"], settings["SMTP_TLS_CERT_FILE"]["value"]} == mounted
    # No setting takes a secret: not by reference, and no value is anything Key Vault holds.
    assert all("secretRef" not in e and set(e) == {"name", "value"} for e in settings.values())
    values = " ".join(str(e["value"]) for e in settings.values())
    assert "BEGIN" not in values and "scrypt$" not in values


def test_other_secret_names_follow_the_parameters() -> None:
    app = listener(deployment(smtpLoginsSecretName="devices", smtpTlsCertificateName="smtp-contoso-com"))
    vault = Ref("keyVault.outputs.uri")
    assert {s["keyVaultUrl"] for s in app["secrets"]} == {f"{vault}secrets/devices", f"{vault}secrets/smtp-contoso-com"}


def test_the_identity_is_the_functions_user_assigned_one_and_nothing_else() -> None:
    main = deployment()
    api = main.module_params("api")
    app = listener(main)
    assert app["managedIdentities"] == {"systemAssigned": False, "userAssignedResourceIds": [api["identityId"]]}
    assert env(main)["AZURE_CLIENT_ID"]["value"] == api["identityClientId"]
    private = listener(deployment(smtpRegistryServer="myregistry.azurecr.io"))["registries"]
    assert private == [{"server": "myregistry.azurecr.io", "identity": api["identityId"]}]
    assert app["registries"] == []


def test_the_identity_reads_the_two_secrets_and_is_named_as_every_role_assignment() -> None:
    main = deployment(smtpLoginsSecretName="devices")
    smtp = smtp_template(main)
    principal = Ref("identity.outputs.principalId")
    found = smtp.role_assignments()
    assert {(a.role, a.scope_kind, a.scope_name) for a in found} == {
        (ROLE_KEY_VAULT_SECRETS_USER, "secrets", "devices"),
        (ROLE_KEY_VAULT_SECRETS_USER, "secrets", "smtp-tls"),
    }
    for a in found:
        assert a.principal == principal and a.principal_type == "ServicePrincipal"
        assert a.scope.parent is not None and a.scope.parent.name == Ref("keyVault.outputs.name")
        assert a.name == f"guid({a.scope.id},{principal},{a.role})", a.name
    raw = SMTP.read_text(encoding="utf-8")
    for a in found:
        comment = re.search(rf"((?://[^\n]*\n)+)resource\s+{a.resource}\b", raw)
        assert comment and "Key Vault Secrets User" in comment.group(1), a.resource


def test_the_listener_sends_with_the_functions_sender_lists_to_the_relays_queues() -> None:
    main = deployment()
    function = main.module_params("api")["appSettings"]
    settings = {name: e["value"] for name, e in env(main).items()}
    for name in ("MAILRELAY_APPS", "ALLOWED_SENDERS", "MAIL_QUEUE_NAME"):
        assert settings[name] == function[name], name
    assert settings["MAILRELAY_APPS"] == '[{"name":"printers","senders":["scans@contoso.com"]}]'
    assert settings["SMTP_QUEUE_SERVICE_URI"] == "https://{storage.outputs.name}.queue.{environment().suffixes.storage}"


def test_every_setting_given_is_one_the_listener_reads() -> None:
    code = INFRA.parent / "smtp" / "mailrelay_smtp"
    if not code.is_dir():
        pytest.skip("smtp/mailrelay_smtp is not there yet")
    text = "\n".join(p.read_text(encoding="utf-8") for p in code.rglob("*.py"))
    for name in env(deployment()):
        assert f'"{name}"' in text, f"{name} is set on the listener and read nowhere in smtp/mailrelay_smtp"


# --------------------------------------------------------------------------------------------
# Always answering
# --------------------------------------------------------------------------------------------


def test_never_fewer_than_one_replica_and_scaled_on_tcp_connections() -> None:
    scale = listener(deployment())["scaleSettings"]
    assert scale["minReplicas"] >= 1
    assert scale["maxReplicas"] >= scale["minReplicas"]
    (rule,) = scale["rules"]
    assert set(rule) == {"name", "tcp"} and int(rule["tcp"]["metadata"]["concurrentConnections"]) >= 1
    assert decorators(MAIN, "smtpMinReplicas")["minValue"] == [1]
    assert decorators(SMTP, "minReplicas")["minValue"] == [1]
    assert listener(deployment(smtpMinReplicas=2, smtpMaxReplicas=5))["scaleSettings"]["minReplicas"] == 2


def test_a_tcp_liveness_probe_on_the_starttls_port() -> None:
    probes = {p["type"]: p for p in container(deployment())["probes"]}
    assert probes["Liveness"]["tcpSocket"] == {"port": 587}
    assert "httpGet" not in probes["Liveness"]


def test_the_registry_modules_are_the_pinned_versions_the_comments_name() -> None:
    text = source(SMTP)
    refs = dict(re.findall(r"br/public:avm/res/app/([a-z-]+):(\d+\.\d+\.\d+)", text))
    assert refs == {"managed-environment": "0.15.0", "container-app": "0.23.0"}
    raw = SMTP.read_text(encoding="utf-8")
    for module, version in refs.items():
        assert f"avm/res/app/{module}/{version}" in raw, "the comment should name the tag the parameters were read at"


def test_the_listener_is_told_the_peer_is_the_ingress_not_the_device() -> None:
    """Container Apps' TCP ingress hides the client's address (microsoft/azure-container-apps#899): per-source limits
    would count every device as one, and one device's wrong password would slow them all."""
    text = (INFRA / "app" / "smtp.bicep").read_text()
    assert "name: 'SMTP_PEER_IS_DEVICE'\n            value: 'false'" in text
    assert "name: 'SMTP_PLAIN_PORT'\n            value: '0'" in text
