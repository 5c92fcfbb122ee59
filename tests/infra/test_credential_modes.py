"""GRAPH_CREDENTIAL in the deployment template: each mode's settings and the Azure and Entra pieces it deploys.

Reads the Bicep as text, with test_wiring's helpers (the app's venv has no Bicep parser; infra/check.sh parses every
file with pycep-parser, and checkov scans them). A module's `if (...)` condition is evaluated for every combination
of mode, Exchange scope model, deployEntraApp and a given client secret, by resolving main.bicep's own `var`
definitions, so a test fails when the template's logic changes, not only its spelling.

The two shell scripts of certificate mode run against a stand-in `az` on PATH that answers as Azure CLI does and
records each call.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.infra.test_wiring import (
    API,
    ENTRA,
    INFRA,
    MAIN,
    RBAC,
    app_settings,
    block_after,
    declaration,
    decorators_of,
    param_default,
    source,
    string_var,
    top_level_pairs,
)

CERTIFICATE = INFRA / "app" / "certificate.bicep"
IDENTITY_ROLES = INFRA / "app" / "identity-graph-roles.bicep"
SCRIPTS = INFRA / "scripts"
ENSURE_SCRIPT = SCRIPTS / "ensure-graph-certificate.sh"
SYNC_SCRIPT = SCRIPTS / "sync-app-certificate.sh"
EXCHANGE = INFRA / "exchange"

MAIL_SEND_APP_ROLE = "b633e1c5-b582-4048-a93e-9f11b44c7e96"
MAIL_READ_APP_ROLE = "810c84a8-4a9e-49e6-bf7d-12d183f40d01"
ROLE_KEY_VAULT_CERTIFICATES_OFFICER = "a4417e6f-fecd-4de8-b567-7b0420556985"
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"


# --------------------------------------------------------------------------------------------
# Evaluating main.bicep's conditions
# --------------------------------------------------------------------------------------------


def bicep_condition(expression: str, names: dict[str, object]) -> bool:
    """Evaluate a Bicep boolean expression of ==, !=, &&, ||, !, parentheses, string literals, empty(x) and names.
    Names are main.bicep's parameters (given) and its `var`s (resolved from their definitions)."""
    main = source(MAIN)

    def value(name: str) -> object:
        if name in names:
            return names[name]
        m = re.search(rf"^\s*var\s+{name}\s*=\s*(.+?)\s*$", main, re.MULTILINE)
        assert m, f"{name}: neither a given parameter nor a var of main.bicep"
        return bicep_condition(m.group(1), names)

    python = expression.replace("&&", " and ").replace("||", " or ")
    python = re.sub(r"!(?!=)", " not ", python)
    used = set(re.findall(r"(?<!['\w])([A-Za-z_]\w*)(?!['\w])", python)) - {"and", "or", "not", "empty"}
    scope: dict[str, object] = {name: value(name) for name in used}
    scope["empty"] = lambda v: not v
    return bool(eval(python, {"__builtins__": {}}, scope))  # noqa: S307 - the template's own expressions


def module_condition(name: str) -> str:
    m = re.search(rf"^\s*module\s+{name}\s+'[^']+'\s*=\s*if\s*\((.+)\)\s*\{{\s*$", source(MAIN), re.MULTILINE)
    assert m, f"module {name} is not conditional"
    return m.group(1)


MODES = ("secret", "certificate", "federated", "managed-identity")
MODELS = ("RbacForApplications", "ApplicationAccessPolicy")
COMBINATIONS = [
    {"graphCredential": mode, "exchangeScopeModel": model, "deployEntraApp": deploy, "graphClientSecret": secret,
     "grantSentItemsRead": True}
    for mode, model, deploy, secret in itertools.product(MODES, MODELS, (False, True), ("", "a-secret-value"))
]


def test_the_credential_parameter_takes_exactly_the_relays_modes_and_defaults_to_secret() -> None:
    from shared.settings import CREDENTIAL_MODES

    main = source(MAIN)
    allowed = re.search(r"@allowed\(\[(.*?)\]\)", decorators_of(main, "param", "graphCredential"), re.DOTALL)
    assert allowed, "graphCredential needs @allowed"
    assert tuple(re.findall(r"'([^']*)'", allowed.group(1))) == CREDENTIAL_MODES
    assert param_default(main, "graphCredential") == "'secret'"
    assert param_default(main, "graphCertificateName") == "'graph-client-certificate'"
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert given["graphCredential"]["value"] == "${GRAPH_CREDENTIAL}"
    assert given["graphCertificateName"]["value"] == "${GRAPH_CERTIFICATE_NAME}"


def test_each_modes_settings_reach_the_function_app() -> None:
    """GRAPH_CREDENTIAL and its companions (the contract's list) are app settings in every mode: the relay reads the
    ones its mode needs (shared.settings._MODE_NEEDS) and names a missing one at first use."""
    from shared.settings import _MODE_NEEDS

    settings = app_settings()
    assert settings["GRAPH_CREDENTIAL"] == "graphCredential"
    assert settings["GRAPH_CERTIFICATE_NAME"] == "graphCertificateName"
    assert settings["GRAPH_CLIENT_SECRET_NAME"] == "graphClientSecretName"
    assert settings["KEY_VAULT_URI"] == "keyVault.outputs.uri"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId", "federated and managed-identity need the identity"
    assert settings["GRAPH_CLIENT_ID"] == "effectiveGraphClientId"
    for mode, needs in _MODE_NEEDS.items():
        missing = [name for name in needs if name not in settings]
        assert not missing, f"{mode} needs {missing}"


@pytest.mark.parametrize("mode", MODES)
def test_the_graph_client_id_is_the_identitys_in_managed_identity_mode_and_the_apps_otherwise(mode: str) -> None:
    """The relay refuses GRAPH_CLIENT_ID different from AZURE_CLIENT_ID in managed-identity mode."""
    main = source(MAIN)
    m = re.search(r"^\s*var\s+effectiveGraphClientId\s*=\s*(.+)$", main, re.MULTILINE)
    assert m
    expression = m.group(1).strip()
    assert expression == ("graphCredential == 'managed-identity' ? identity.outputs.clientId : "
                          "(deployEntraAppRegistration ? entraApp!.outputs.appId : graphClientId)")
    picks_identity = bicep_condition("graphCredential == 'managed-identity'", {"graphCredential": mode})
    assert picks_identity == (mode == "managed-identity")


@pytest.mark.parametrize("names", COMBINATIONS, ids=lambda n: "-".join(str(v) for v in list(n.values())[:4]))
def test_what_each_combination_deploys(names: dict[str, object]) -> None:
    mode = names["graphCredential"]
    policy = names["exchangeScopeModel"] == "ApplicationAccessPolicy"
    # A client secret is stored in secret mode only, and only when one is given.
    secret_given = bool(names["graphClientSecret"])
    assert bicep_condition(module_condition("graphSecret"), names) == (mode == "secret" and secret_given)
    # The Key Vault certificate (deployment script) in certificate mode only.
    assert bicep_condition(module_condition("graphCertificate"), names) == (mode == "certificate")
    # No app registration in managed-identity mode, whatever deployEntraApp says.
    app_wanted = bool(names["deployEntraApp"])
    assert bicep_condition(module_condition("entraApp"), names) == (app_wanted and mode != "managed-identity")
    # Graph's app role to the identity: managed-identity mode under an application access policy only (under RBAC for
    # Applications it would add to Exchange's scope and defeat it).
    assert bicep_condition(module_condition("identityGraphRoles"), names) == (mode == "managed-identity" and policy)
    # The relay's identity reads Key Vault (Key Vault Secrets User) only where its credential lives there.
    assert bicep_condition("graphCredentialInKeyVault", names) == (mode in ("secret", "certificate"))


def test_the_key_vault_role_follows_the_mode() -> None:
    main = source(MAIN)
    rbac_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "rbac"))["params"], 0))
    assert rbac_params["relayReadsKeyVault"] == "graphCredentialInKeyVault"
    assert rbac_params["deployerManagesCertificates"] == "graphCredential == 'certificate'"
    text = source(RBAC)
    assert re.search(r"resource\s+relaySecretsUser\s+'Microsoft\.Authorization/roleAssignments@[^']+'\s*=\s*"
                     r"if\s*\(\s*relayReadsKeyVault\s*\)", text), "Secrets User only when the relay reads the vault"
    assert param_default(text, "relayReadsKeyVault") == "true"
    # The certificate's key is read through the secrets API: Secrets User, not Certificate User, for the relay.
    assert "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba" not in text
    officer = re.search(r"resource\s+deployerCertificatesOfficer\s+'[^']+'\s*=\s*if\s*\((.+)\)\s*\{", text)
    assert officer and "deployerManagesCertificates" in officer.group(1)
    assert top_level_pairs(block_after(top_level_pairs(declaration(text, "resource", "deployerCertificatesOfficer"))
                                       ["properties"], 0))["principalId"] == "deployerPrincipalId"
    raw = RBAC.read_text(encoding="utf-8")
    assert "secret portion of a certificate with private key" in raw, "cite why Secrets User reads a certificate"


def test_never_a_system_assigned_identity() -> None:
    """A system-assigned identity dies with the Function App: a re-created app would get a principal id that no
    federated credential, app role assignment or Exchange service principal knows."""
    assert re.search(r"managedIdentities:\s*\{\s*systemAssigned:\s*false", source(API))
    assert "system-assigned" in MAIN.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# federated: the federated identity credential
# --------------------------------------------------------------------------------------------


def test_the_federated_credential_trusts_the_relays_identity_with_entras_issuer_and_audience() -> None:
    from shared.credentials import TOKEN_EXCHANGE_AUDIENCE

    text = source(ENTRA)
    declared = re.search(r"^\s*resource\s+federatedCredential\s+'([^']+)'\s*=\s*if\s*\((.+)\)\s*\{", text, re.MULTILINE)
    assert declared, "no federated identity credential resource"
    assert declared.group(1) == "Microsoft.Graph/applications/federatedIdentityCredentials@v1.0"
    assert declared.group(2).strip() == "!empty(federatedIdentityPrincipalId)"
    fic = top_level_pairs(declaration(text, "resource", "federatedCredential"))
    # The extension's name format: '<application uniqueName>/<credential name>'.
    assert fic["name"] == "'${app.uniqueName}/${federatedCredentialName}'"
    assert fic["issuer"] == "federatedIdentityIssuer"
    assert fic["subject"] == "federatedIdentityPrincipalId"
    assert re.fullmatch(r"\[\s*federatedIdentityAudience\s*\]", fic["audiences"]), fic["audiences"]
    issuer = re.search(r"^\s*var\s+federatedIdentityIssuer\s*=\s*(.+)$", text, re.MULTILINE)
    expected_issuer = "'${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'"
    assert issuer and issuer.group(1).strip() == expected_issuer
    assert string_var(text, "federatedIdentityAudience") == TOKEN_EXCHANGE_AUDIENCE == "api://AzureADTokenExchange"
    assert len(param_default(text, "federatedCredentialName").strip("'")) <= 120
    # The subject is the identity's PRINCIPAL (object) id, only in federated mode; the client id would never match.
    main = source(MAIN)
    entra_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "entraApp"))["params"], 0))
    assert entra_params["federatedIdentityPrincipalId"] == (
        "graphCredential == 'federated' ? identity.outputs.principalId : ''")
    raw = ENTRA.read_text(encoding="utf-8")
    for cited in ("msi-as-a-fic-secretless", "workload-identity-federation-config-app-trust-managed-identity",
                  "AADSTS700211", "AADSTS700212", "AADSTS700213"):
        assert cited in raw, f"entra-app.bicep should cite {cited}"


# --------------------------------------------------------------------------------------------
# certificate: Key Vault certificate with AutoRenew, its public key on the app
# --------------------------------------------------------------------------------------------


def certificate_policy() -> dict[str, str]:
    return top_level_pairs(declaration(source(CERTIFICATE), "var", "certificatePolicy"))


def test_the_certificate_policy_renews_automatically_before_the_relays_first_warning() -> None:
    import dataclasses

    from shared.settings import Settings

    policy = certificate_policy()
    actions = block_after(policy["lifetimeActions"], 0)
    action = top_level_pairs(block_after(actions, actions.index("{")))
    assert top_level_pairs(block_after(action["action"], 0)) == {"actionType": "'AutoRenew'"}
    assert top_level_pairs(block_after(action["trigger"], 0)) == {"daysBeforeExpiry": "renewDaysBeforeExpiry"}
    assert top_level_pairs(block_after(policy["issuerParameters"], 0)) == {"name": "'Self'"}
    key = top_level_pairs(block_after(policy["keyProperties"], 0))
    assert key["exportable"] == "true", "a non-exportable key is not in the secret: the relay could not sign"
    assert key["reuseKey"] == "false", "each renewal makes a new key pair"
    # PEM, one of the two formats the relay reads.
    assert top_level_pairs(block_after(policy["secretProperties"], 0)) == {"contentType": "'application/x-pem-file'"}

    # The renewal comes before the first expiry warning, so a warning means renewal (or its registration) failed.
    main = source(MAIN)
    renew_days = int(param_default(main, "graphCertificateRenewDaysBeforeExpiry"))
    warn_days = [int(d) for d in param_default(main, "expiryWarnDays").strip("'").split(",")]
    code_default = {f.name: f.default for f in dataclasses.fields(Settings)}.get("expiry_warn_days")
    if isinstance(code_default, tuple):
        assert tuple(warn_days) == code_default
    assert renew_days > max(warn_days)
    params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "graphCertificate"))["params"], 0))
    assert params["renewDaysBeforeExpiry"] == "graphCertificateRenewDaysBeforeExpiry"
    assert params["certificateName"] == "graphCertificateName"


def test_the_deployment_script_runs_every_provision_as_its_own_identity_with_the_policy() -> None:
    text = source(CERTIFICATE)
    declared = re.search(r"^\s*resource\s+ensureCertificate\s+'([^']+)'", text, re.MULTILINE)
    assert declared and declared.group(1).startswith("Microsoft.Resources/deploymentScripts@")
    script = top_level_pairs(declaration(text, "resource", "ensureCertificate"))
    assert script["kind"] == "'AzureCLI'"
    props = top_level_pairs(block_after(script["properties"], 0))
    # A new tag every deployment: the outputs (registered on the app) are always the current version.
    assert props["forceUpdateTag"] == "runTag" and param_default(text, "runTag") == "utcNow()"
    assert props["scriptContent"] == "loadTextContent('../scripts/ensure-graph-certificate.sh')"
    assert ENSURE_SCRIPT.is_file()
    env = props["environmentVariables"]
    assert re.search(r"name:\s*'CERTIFICATE_POLICY'\s*value:\s*string\(certificatePolicy\)", env)
    assert re.search(r"name:\s*'CERTIFICATE_NAME'\s*value:\s*certificateName", env)
    # Its identity is its own (never the relay's), with Key Vault Certificates Officer: create and renew, not read keys.
    assert "'${scriptIdentity.id}': {}" in script["identity"]
    assert re.search(r"^\s*resource\s+scriptIdentity\s+'Microsoft\.ManagedIdentity/userAssignedIdentities@", text,
                     re.MULTILINE)
    role = top_level_pairs(block_after(top_level_pairs(declaration(text, "resource", "scriptCertificatesOfficer"))
                                       ["properties"], 0))
    assert role["principalId"] == "scriptIdentity.properties.principalId"
    assert role["roleDefinitionId"] == "certificatesOfficerRoleId"
    assert ROLE_KEY_VAULT_CERTIFICATES_OFFICER in text
    main = source(MAIN)
    params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "graphCertificate"))["params"], 0))
    assert "certscript" in params["scriptIdentityName"]
    assert "relayPrincipalId" not in text and "identity.outputs" not in params.values()


def test_the_app_registration_gets_the_certificates_public_key_from_the_script() -> None:
    text = source(ENTRA)
    app = top_level_pairs(declaration(text, "resource", "app"))
    assert app["keyCredentials"] == "keyCredentials"
    credential = top_level_pairs(declaration(text, "var", "certificateKeyCredential"))
    assert credential["type"] == "'AsymmetricX509Cert'" and credential["usage"] == "'Verify'"
    assert credential["key"] == "certificatePublicKey"
    assert (credential["startDateTime"], credential["endDateTime"]) == ("certificateNotBefore", "certificateExpires")
    assert re.search(r"^\s*var\s+keyCredentials\s*=\s*empty\(certificatePublicKey\)\s*\?\s*\[\]\s*:\s*"
                     r"array\(certificateKeyCredential\)\s*$", text, re.MULTILINE)
    main = source(MAIN)
    entra_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "entraApp"))["params"], 0))
    for param, output in (("certificatePublicKey", "publicKey"), ("certificateNotBefore", "notBefore"),
                          ("certificateExpires", "expires")):
        expected = f"graphCredential == 'certificate' ? graphCertificate!.outputs.{output} : ''"
        assert entra_params[param] == expected, param
    outputs = dict(re.findall(r"^\s*output\s+(\w+)\s+string\s*=\s*ensureCertificate\.properties\.outputs\.(\w+)\s*$",
                              source(CERTIFICATE), re.MULTILINE))
    assert outputs == {name: name for name in ("publicKey", "thumbprint", "notBefore", "expires")}
    # ... and the script writes exactly those keys.
    script = ENSURE_SCRIPT.read_text(encoding="utf-8")
    query = re.search(r"--query '\{(.*?)\}'", script)
    assert query and {k.strip().split(":")[0] for k in query.group(1).split(",")} >= set(outputs)


# --------------------------------------------------------------------------------------------
# managed-identity: Graph's app role to the identity
# --------------------------------------------------------------------------------------------


def test_the_identitys_app_role_is_mail_send_on_graphs_service_principal() -> None:
    text = source(IDENTITY_ROLES)
    assert re.search(r"^extension\s+microsoftGraphV1\s*$", IDENTITY_ROLES.read_text(encoding="utf-8"), re.MULTILINE)
    graph = top_level_pairs(declaration(text, "resource", "microsoftGraph"))
    assert graph == {"appId": "microsoftGraphAppId"}
    assert re.search(r"resource\s+microsoftGraph\s+'Microsoft\.Graph/servicePrincipals@v1\.0'\s+existing", text)
    assert string_var(text, "microsoftGraphAppId") == "00000003-0000-0000-c000-000000000000"
    send = top_level_pairs(declaration(text, "resource", "identityMailSend"))
    assert send == {"appRoleId": "mailSendAppRoleId", "principalId": "identityPrincipalId",
                    "resourceId": "microsoftGraph.id"}
    assert string_var(text, "mailSendAppRoleId") == MAIL_SEND_APP_ROLE
    assert re.search(r"resource\s+identityMailRead\s+'Microsoft\.Graph/appRoleAssignedTo@v1\.0'\s*=\s*"
                     r"if\s*\(\s*grantMailRead\s*\)", text)
    assert string_var(text, "mailReadAppRoleId") == MAIL_READ_APP_ROLE
    main = source(MAIN)
    module = top_level_pairs(declaration(main, "module", "identityGraphRoles"))
    params = top_level_pairs(block_after(module["params"], 0))
    assert params["identityPrincipalId"] == "identity.outputs.principalId", "the principal id, the SP's object id"


# --------------------------------------------------------------------------------------------
# Exchange scripts: the identity's ids
# --------------------------------------------------------------------------------------------


def test_the_rbac_script_accepts_the_identitys_ids_and_keeps_the_apps() -> None:
    text = (EXCHANGE / "Set-RbacApplicationScope.ps1").read_text(encoding="utf-8")
    block = re.search(r"^param\((.*?)^\)", text, re.MULTILINE | re.DOTALL)
    assert block
    params = block.group(1)
    for name, parameter_set in (("AppId", "AppRegistration"), ("ServicePrincipalObjectId", "AppRegistration"),
                                ("IdentityClientId", "ManagedIdentity"), ("IdentityPrincipalId", "ManagedIdentity")):
        m = re.search(rf"\[Parameter\(Mandatory, ParameterSetName = '{parameter_set}'\)\]\s*"
                      rf"(?:\[[^\n]*\]\s*)*\[string\]\s*\${name}\b", params)
        assert m, f"-{name} should be mandatory in parameter set {parameter_set}"
    # The identity's ids become the two values New-ServicePrincipal takes: AppId = client id, ObjectId = principal id.
    assert re.search(r"\$AppId\s*=\s*\$IdentityClientId", text)
    assert re.search(r"\$ServicePrincipalObjectId\s*=\s*\$IdentityPrincipalId", text)
    assert "DefaultParameterSetName = 'AppRegistration'" in text
    for script in ("Test-ExchangeScope.ps1", "Set-ApplicationAccessPolicy.ps1"):
        body = (EXCHANGE / script).read_text(encoding="utf-8")
        assert "IdentityClientId" in body, f"{script} should accept the identity's client id"


# --------------------------------------------------------------------------------------------
# The two certificate scripts, against a stand-in az
# --------------------------------------------------------------------------------------------

FAKE_AZ = r"""#!/usr/bin/env bash
# Stand-in for Azure CLI: answers from $FAKE_AZ_STATE (a directory), records each call in $FAKE_AZ_STATE/calls.
echo "$*" >>"$FAKE_AZ_STATE/calls"
case "$1 $2 $3" in
  "keyvault certificate show")
    if [[ -f "$FAKE_AZ_STATE/outage" ]]; then echo "ERROR: (ServiceUnavailable) try later" >&2; exit 1; fi
    if [[ ! -f "$FAKE_AZ_STATE/cert" ]]; then
      echo "ERROR: (CertificateNotFound) A certificate with (name/id) x was not found in this key vault." >&2; exit 3
    fi
    if [[ "$*" == *"--query id"* ]]; then echo "https://kv.vault.azure.net/certificates/c/v1"; exit 0; fi
    if [[ "$*" == *"x509ThumbprintHex, attributes.expires"* ]]; then
      printf '%s\n%s\n' "$(cat "$FAKE_AZ_STATE/cert")" "2027-05-01T00:00:00+00:00"; exit 0
    fi
    printf '{"publicKey": "MIIB", "thumbprint": "%s", ' "$(cat "$FAKE_AZ_STATE/cert")"
    printf '"notBefore": "2026-05-01T00:00:00+00:00", '
    printf '"expires": "2027-05-01T00:00:00+00:00", "version": "v1"}\n'
    ;;
  "keyvault certificate create") echo "ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34" >"$FAKE_AZ_STATE/cert" ;;
  "keyvault certificate set-attributes") : ;;
  "keyvault certificate pending") echo completed ;;
  "ad app credential")
    if [[ "$4" == "list" ]]; then cat "$FAKE_AZ_STATE/registered" 2>/dev/null || true; fi
    ;;
  *) echo "fake az: unexpected: $*" >&2; exit 9 ;;
esac
"""


@pytest.fixture
def fake_az(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text(FAKE_AZ, encoding="utf-8")
    az.chmod(az.stat().st_mode | stat.S_IEXEC)
    state = tmp_path / "state"
    state.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_AZ_STATE": str(state)}
    return env, state


def run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(script), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def calls(state: Path) -> list[str]:
    path = state / "calls"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


POLICY_ENV = {"VAULT_NAME": "kv-relay", "CERTIFICATE_NAME": "graph-client-certificate",
              "CERTIFICATE_POLICY": json.dumps({"lifetimeActions": [{"action": {"actionType": "AutoRenew"}}]})}


def test_the_certificate_script_creates_a_missing_certificate_and_outputs_its_public_part(fake_az, tmp_path) -> None:
    env, state = fake_az
    out = tmp_path / "outputs.json"
    result = run(ENSURE_SCRIPT, {**env, **POLICY_ENV, "AZ_SCRIPTS_OUTPUT_PATH": str(out)})
    assert result.returncode == 0, result.stderr
    made = [c for c in calls(state) if c.startswith("keyvault certificate create")]
    assert len(made) == 1 and "--policy @" in made[0] and "--name graph-client-certificate" in made[0]
    outputs = json.loads(out.read_text(encoding="utf-8"))
    assert outputs["thumbprint"] == "ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34"
    assert set(outputs) >= {"publicKey", "thumbprint", "notBefore", "expires"}


def test_the_certificate_script_keeps_an_existing_certificate_and_sets_its_policy(fake_az) -> None:
    env, state = fake_az
    (state / "cert").write_text("ffff0000ffff0000ffff0000ffff0000ffff0000", encoding="utf-8")
    result = run(ENSURE_SCRIPT, {**env, **POLICY_ENV})
    assert result.returncode == 0, result.stderr
    assert not [c for c in calls(state) if c.startswith("keyvault certificate create")], "never a second certificate"
    assert [c for c in calls(state) if c.startswith("keyvault certificate set-attributes") and "--policy @" in c]
    assert "ffff0000" in result.stdout


def test_the_certificate_script_fails_on_an_outage_instead_of_creating_a_new_certificate(fake_az) -> None:
    env, state = fake_az
    (state / "cert").write_text("ffff0000ffff0000ffff0000ffff0000ffff0000", encoding="utf-8")
    (state / "outage").write_text("", encoding="utf-8")
    result = run(ENSURE_SCRIPT, {**env, **POLICY_ENV})
    assert result.returncode != 0
    assert "ServiceUnavailable" in result.stderr
    assert not [c for c in calls(state) if c.startswith("keyvault certificate create")]


def test_the_certificate_script_refuses_to_run_without_its_settings(fake_az) -> None:
    env, state = fake_az
    result = run(ENSURE_SCRIPT, {**env, "VAULT_NAME": "kv"})
    assert result.returncode != 0 and "CERTIFICATE_NAME" in result.stderr
    assert calls(state) == []


APP_ID = "11111111-2222-3333-4444-555555555555"
THUMBPRINT = "ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34"
SYNC_ARGS = ("--vault-name", "kv-relay", "--certificate-name", "graph-client-certificate", "--app-id", APP_ID)


def _base64_of_hex(hex_digits: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hex_digits)).decode()


@pytest.mark.parametrize("spelling", ["hex", "base64"])
def test_sync_leaves_an_app_that_already_holds_the_current_certificate_alone(fake_az, spelling: str) -> None:
    env, state = fake_az
    (state / "cert").write_text(THUMBPRINT, encoding="utf-8")
    registered = THUMBPRINT.upper() if spelling == "hex" else _base64_of_hex(THUMBPRINT)
    (state / "registered").write_text(f"0000\n{registered}\n", encoding="utf-8")
    result = run(SYNC_SCRIPT, env, *SYNC_ARGS)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert not [c for c in calls(state) if c.startswith("ad app credential reset")]


def test_sync_appends_a_renewed_certificate_read_from_key_vault(fake_az) -> None:
    env, state = fake_az
    (state / "cert").write_text(THUMBPRINT, encoding="utf-8")
    older = _base64_of_hex("ffff0000ffff0000ffff0000ffff0000ffff0000")
    (state / "registered").write_text(older + "\n", encoding="utf-8")
    result = run(SYNC_SCRIPT, env, *SYNC_ARGS)
    assert result.returncode == 0, result.stderr
    reset = [c for c in calls(state) if c.startswith("ad app credential reset")]
    assert len(reset) == 1
    for part in (f"--id {APP_ID}", "--keyvault kv-relay", "--cert graph-client-certificate", "--append",
                 "--end-date 2027-05-01T00:00:00+00:00"):
        assert part in reset[0], f"{part!r} missing from {reset[0]!r}"


def test_sync_dry_run_reports_a_missing_key_and_changes_nothing(fake_az) -> None:
    env, state = fake_az
    (state / "cert").write_text(THUMBPRINT, encoding="utf-8")
    result = run(SYNC_SCRIPT, env, *SYNC_ARGS, "--dry-run")
    assert result.returncode == 3
    assert "does NOT hold" in result.stdout
    assert not [c for c in calls(state) if c.startswith("ad app credential reset")]


@pytest.mark.parametrize("args", [(), ("--vault-name", "kv"), (*SYNC_ARGS[:4], "--app-id", "not-a-guid")])
def test_sync_refuses_incomplete_or_wrong_arguments(fake_az, args: tuple[str, ...]) -> None:
    env, state = fake_az
    result = run(SYNC_SCRIPT, env, *args)
    assert result.returncode == 2
    assert calls(state) == []
