"""The deployment template's wiring, checked against the code (no Azure, no Bicep CLI, no checkov).

Runs in the app's venv, so it reads the Bicep as text: comments are stripped, `{...}` blocks are
found by brace matching, and keys are read at the block's top level. What it guards:
- every app setting the code reads (shared.settings.DEPLOYED_SETTINGS, plus the settings the
  infra issue lists) is set on the Function App;
- every role the code needs is assigned, to the right identity, at the right scope, with a
  deterministic name;
- queue, table and container names agree between the template, the app settings and the code;
- no connection string, account key or instrumentation key appears anywhere in infra/;
- the security settings passed to the AVM modules (checkov cannot look inside registry modules).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

from tests.infra.bicep_eval import Template, strip_comments

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
API = INFRA / "app" / "api.bicep"
RBAC = INFRA / "app" / "rbac.bicep"
SECRET = INFRA / "app" / "secret.bicep"
ENTRA = INFRA / "app" / "entra-app.bicep"
EXCHANGE = INFRA / "exchange"

# Settings the deployed relay needs beyond the code's list today (the expiry check and the
# identity-based storage connection). Kept as a floor: the code's list is added to it, never
# replaces it, so neither side can drop a setting silently.
INFRA_SETTINGS = (
    "GRAPH_TENANT_ID",
    "GRAPH_CLIENT_ID",
    "KEY_VAULT_URI",
    "GRAPH_CLIENT_SECRET_NAME",
    "ALLOWED_SENDERS",
    "MAIL_QUEUE_NAME",
    "AZURE_CLIENT_ID",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "EXPIRY_CHECK_SCHEDULE",
    "EXPIRY_WARN_DAYS",
    "EXPIRY_ALERT_SENDER",
    "EXPIRY_ALERT_RECIPIENTS",
    "EXPIRY_ALERT_WEBHOOK_URL",
)

# Built-in role definition ids (identical in every tenant).
ROLE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
ROLE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
ROLE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_QUEUE_DATA_MESSAGE_SENDER = "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"
ROLE_TABLE_DATA_READER = "76199698-9eea-4c19-bc75-cec21354c6b6"
ROLE_MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
ROLE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


# --------------------------------------------------------------------------------------------
# A little Bicep reading
# --------------------------------------------------------------------------------------------


@cache
def source(path: Path) -> str:
    return strip_comments(path.read_text(encoding="utf-8"))


def block_after(text: str, start: int) -> str:
    """The `{...}` or `[...]` that opens at or after `start`, brackets included."""
    opening = min((p for p in (text.find("{", start), text.find("[", start)) if p >= 0), default=-1)
    assert opening >= 0, f"no block after offset {start}"
    pairs = {"{": "}", "[": "]"}
    stack: list[str] = []
    i = opening
    while i < len(text):
        ch = text[i]
        if text.startswith("'''", i):
            i = text.index("'''", i + 3) + 3
            continue
        if ch == "'":
            i += 1
            while text[i] != "'":
                i += 2 if text[i] == "\\" else 1
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in "}]":
            assert stack and stack.pop() == ch, f"unbalanced brackets near offset {i}"
            if not stack:
                return text[opening : i + 1]
        i += 1
    raise AssertionError("unterminated block")


def declaration(text: str, kind: str, name: str) -> str:
    """Body of `resource|module|var|param|output <name> ... = {...}` (the whole value block)."""
    m = re.search(rf"^\s*{kind}\s+{re.escape(name)}\b[^\n=]*=", text, re.MULTILINE)
    assert m, f"{kind} {name} not declared"
    return block_after(text, m.end())


def top_level_pairs(block: str) -> dict[str, str]:
    """`key: value` pairs at the top level of an object block (values as source text)."""
    inner = block[1:-1]
    pairs: dict[str, str] = {}
    depth = 0
    line_start = 0
    i = 0
    while i <= len(inner):
        ch = inner[i] if i < len(inner) else "\n"
        if inner.startswith("'''", i):
            i = inner.index("'''", i + 3) + 3
            continue
        if ch == "'":
            i += 1
            while inner[i] != "'":
                i += 2 if inner[i] == "\\" else 1
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        elif ch == "\n" and depth == 0:
            line = inner[line_start:i].strip()
            m = re.match(r"^'?([A-Za-z_][\w-]*)'?\s*:\s*(.*)$", line, re.DOTALL)
            if m:
                pairs[m.group(1)] = m.group(2).strip()
            line_start = i + 1
        i += 1
    return pairs


def string_var(text: str, name: str) -> str:
    m = re.search(rf"^\s*var\s+{name}\s*=\s*'([^']*)'\s*$", text, re.MULTILINE)
    assert m, f"var {name} is not a plain string"
    return m.group(1)


def param_default(text: str, name: str) -> str:
    m = re.search(rf"^\s*param\s+{name}\s+\w+\s*=\s*(.+?)\s*$", text, re.MULTILINE)
    assert m, f"param {name} has no default"
    return m.group(1)


def decorators_of(text: str, kind: str, name: str) -> str:
    """The decorator lines right above a declaration (up to the previous blank line or declaration)."""
    lines = text.splitlines()
    declaration_start = re.compile(r"^\s*(param|var|resource|module|output|type|targetScope|metadata)\b")
    for idx, line in enumerate(lines):
        if re.match(rf"^\s*{kind}\s+{re.escape(name)}\b", line):
            j = idx - 1
            while j >= 0 and lines[j].strip() and not declaration_start.match(lines[j]):
                j -= 1
            return "\n".join(lines[j + 1 : idx])
    raise AssertionError(f"{kind} {name} not found")


def app_settings() -> dict[str, str]:
    """Every app setting the Function App gets: main.bicep's appSettings plus api.bicep's own."""
    main = source(MAIN)
    api_module = top_level_pairs(declaration(main, "module", "api"))
    params = top_level_pairs(block_after(api_module["params"], 0))
    settings = top_level_pairs(block_after(params["appSettings"], 0))

    api = source(API)
    site_params = top_level_pairs(block_after(top_level_pairs(declaration(api, "module", "site"))["params"], 0))
    merged = site_params["appSettingsKeyValuePairs"]
    m = re.fullmatch(r"union\((.*)\)", merged)
    assert m, "appSettingsKeyValuePairs should be a union of the setting groups"
    for part in (p.strip() for p in m.group(1).split(",")):
        if part == "appSettings":
            continue  # main.bicep's settings, read above
        settings.update(top_level_pairs(declaration(api, "var", part)))
    return settings


def main_template(**params: object) -> Template:
    """main.bicep evaluated for `params` (tests/infra/bicep_eval.py); the required parameters get placeholders."""
    return Template(MAIN, {"environmentName": "dev", "location": "westeurope", **params})


def role_assignments() -> list[dict[str, str]]:
    """Each roleAssignments resource in rbac.bicep: its name, scope, role, principal, and the parameter
    it loops over ("" when it is not a loop)."""
    text = source(RBAC)
    role_vars = dict(re.findall(r"^\s*var\s+(\w+RoleId)\s*=\s*subscriptionResourceId\([^,]+,\s*'([0-9a-f-]{36})'\)",
                                text, re.MULTILINE))
    found = []
    for m in re.finditer(r"^\s*resource\s+(\w+)\s+'Microsoft\.Authorization/roleAssignments@[^']+'\s*=", text,
                         re.MULTILINE):
        body = block_after(text, m.end())
        loop_over = ""
        if body.startswith("["):  # [for x in xs: {...}]
            loop = re.match(r"\[\s*for\s+(\w+)\s+in\s+(\w+)\s*:", body)
            assert loop, f"{m.group(1)}: unexpected loop form"
            loop_over = loop.group(2)
            body = block_after(body, loop.end())
        pairs = top_level_pairs(body)
        props = top_level_pairs(block_after(pairs["properties"], 0))
        role_var = props["roleDefinitionId"]
        found.append({
            "resource": m.group(1),
            "name": pairs["name"],
            "scope": pairs["scope"],
            "role": role_vars.get(role_var, role_var),
            "role_var": role_var,
            "principal": props["principalId"],
            "principal_type": props.get("principalType", ""),
            "loop_over": loop_over,
        })
    return found


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def required_settings() -> set[str]:
    from shared.settings import DEPLOYED_SETTINGS

    return set(DEPLOYED_SETTINGS) | set(INFRA_SETTINGS)


def test_every_setting_the_code_reads_is_set_on_the_function_app() -> None:
    missing = sorted(required_settings() - set(app_settings()))
    assert not missing, f"app settings missing from infra/main.bicep or infra/app/api.bicep: {missing}"


def test_settings_are_not_set_to_empty_literals_where_the_template_knows_the_value() -> None:
    settings = app_settings()
    for name in ("GRAPH_TENANT_ID", "KEY_VAULT_URI", "MAIL_QUEUE_NAME", "AZURE_CLIENT_ID",
                 "AzureWebJobsStorage__queueServiceUri", "AzureWebJobsStorage__tableServiceUri",
                 "AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__clientId"):
        assert settings[name] not in ("''", ""), f"{name} is set to an empty string"


def test_storage_connection_is_identity_based() -> None:
    settings = app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId", "SDK code must pick the same identity as the host"
    assert "AzureWebJobsStorage" not in settings, "a plain AzureWebJobsStorage setting is a connection string"
    for service in ("blob", "queue", "table"):
        assert settings[f"AzureWebJobsStorage__{service}ServiceUri"] == f"stg.properties.primaryEndpoints.{service}"


def test_application_insights_uses_connection_string_with_entra_auth() -> None:
    settings = app_settings()
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings
    assert "APPINSIGHTS_INSTRUMENTATIONKEY" not in settings
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "'ClientId=${identityClientId};Authorization=AAD'"
    component = top_level_pairs(block_after(top_level_pairs(declaration(source(MAIN), "module", "appInsights"))
                                            ["params"], 0))
    assert component["disableLocalAuth"] == "true"


def test_the_function_app_identity_is_the_user_assigned_one() -> None:
    main = source(MAIN)
    api_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "api"))["params"], 0))
    assert api_params["identityId"] == "identity.outputs.resourceId"
    assert api_params["identityClientId"] == "identity.outputs.clientId"
    rbac_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "rbac"))["params"], 0))
    assert rbac_params["relayPrincipalId"] == "identity.outputs.principalId"


def test_delivery_settings_come_from_parameters_with_the_codes_defaults() -> None:
    import dataclasses

    from shared.settings import UNKNOWN_OUTCOMES, Settings

    main = source(MAIN)
    settings = app_settings()
    assert settings["SEND_UNKNOWN_OUTCOME"] == "sendUnknownOutcome"
    assert settings["STATUS_RETENTION_DAYS"] == "statusRetentionDays"
    assert settings["STATUS_CLEANUP_SCHEDULE"] == "statusCleanupSchedule"
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}

    # SEND_UNKNOWN_OUTCOME: exactly the values the code accepts, the code's default, the trade-off explained.
    decorators = decorators_of(main, "param", "sendUnknownOutcome")
    allowed = re.search(r"@allowed\(\[(.*?)\]\)", decorators, re.DOTALL)
    assert allowed, "sendUnknownOutcome needs @allowed"
    assert sorted(re.findall(r"'([^']*)'", allowed.group(1))) == sorted(UNKNOWN_OUTCOMES)
    assert param_default(main, "sendUnknownOutcome") == f"'{defaults['unknown_outcome']}'" == "'resend'"
    description = decorators.lower()
    for words in ("resend", "at least once", "deadletter", "at most once", "sent items"):
        assert words in description, f"sendUnknownOutcome's @description should say {words!r}"

    assert param_default(main, "statusRetentionDays") == "'30'"
    assert float("30") == defaults["status_retention_days"]
    schedule = param_default(main, "statusCleanupSchedule")
    assert schedule == "'0 30 * * * *'"
    assert len(schedule.strip("'").split()) == 6, "the Functions timer takes six-field NCRONTAB"


@pytest.mark.parametrize(
    ("setting", "param", "field", "default", "low", "high"),
    [
        ("MAX_MESSAGE_SIZE_MB", "maxMessageSizeMb", "max_message_size_mb", "35", "1", "150"),
        ("PAYLOAD_RETENTION_DAYS", "payloadRetentionDays", "payload_retention_days", "30", "8", "3650"),
    ],
)
def test_large_message_settings_come_from_parameters_with_the_codes_defaults_and_range(
    setting: str, param: str, field: str, default: str, low: str, high: str
) -> None:
    """Each setting is its own parameter (azd variable of the same name), with the code's default, and the range its
    @description states is the one the code enforces. Both take fractions, so the parameters are strings (Bicep's
    @minValue/@maxValue are for integers) and the relay checks the range, as for STATUS_RETENTION_DAYS."""
    import dataclasses

    from shared.settings import Settings, SettingsError, load_settings
    from tests.unit.test_settings import GOOD

    main = source(MAIN)
    assert app_settings()[setting] == param
    assert re.search(rf"^\s*param\s+{param}\s+string\s*=", main, re.MULTILINE), f"{param} should be a string parameter"
    assert param_default(main, param) == f"'{default}'"
    assert float(default) == {f.name: f.default for f in dataclasses.fields(Settings)}[field]
    assert getattr(load_settings(GOOD), field) == float(default)
    # The range in the description is exactly the code's: its ends load, a step beyond either fails.
    description = decorators_of(main, "param", param)
    stated = f"({setting}), {low} to {high}"
    assert stated in description, f"{param}'s @description should say {stated!r}"
    for ok in (low, high):
        assert getattr(load_settings({**GOOD, setting: ok}), field) == float(ok)
    for bad in (str(float(low) / 2), str(float(high) + 1)):
        with pytest.raises(SettingsError, match=setting):
            load_settings({**GOOD, setting: bad})
    # azd passes the variable of the same name; empty falls back to the template default.
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert given[param]["value"] == f"${{{setting}}}"


def test_the_message_size_default_is_exchanges_and_the_description_names_the_upload_session_permission() -> None:
    description = decorators_of(source(MAIN), "param", "maxMessageSizeMb")
    for words in ("35", "Exchange Online", "150", "Mail.ReadWrite", "-GrantLargeMessages"):
        assert words in description, f"maxMessageSizeMb's @description should say {words!r}"


# --------------------------------------------------------------------------------------------
# Roles
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "scope"),
    [
        (ROLE_QUEUE_DATA_CONTRIBUTOR, "storageAccount"),
        (ROLE_TABLE_DATA_CONTRIBUTOR, "storageAccount"),
        (ROLE_BLOB_DATA_OWNER, "storageAccount"),
        (ROLE_KEY_VAULT_SECRETS_USER, "keyVault"),
        (ROLE_MONITORING_METRICS_PUBLISHER, "appInsights"),
    ],
)
def test_the_relay_identity_has_each_role_it_needs(role: str, scope: str) -> None:
    matches = [a for a in role_assignments() if a["role"] == role and a["principal"] == "relayPrincipalId"]
    assert len(matches) == 1, f"role {role} for the relay identity: {matches}"
    assert matches[0]["scope"] == scope


def test_the_relay_identity_has_no_other_role() -> None:
    allowed = {ROLE_QUEUE_DATA_CONTRIBUTOR, ROLE_TABLE_DATA_CONTRIBUTOR, ROLE_BLOB_DATA_OWNER,
               ROLE_KEY_VAULT_SECRETS_USER, ROLE_MONITORING_METRICS_PUBLISHER}
    extra = [a for a in role_assignments() if a["principal"] == "relayPrincipalId" and a["role"] not in allowed]
    assert not extra, f"roles beyond least privilege: {extra}"


def test_enqueuers_get_message_sender_on_the_outbox_queue_and_nothing_else() -> None:
    """Apps may add messages to the outbox and do nothing else: not the retry queue (the relay's retry state
    must be unforgeable), not the poison queues, not the account, not a table. (Their one other role, Blob Data
    Contributor on the claim-check container, is pinned by the next test.)"""
    from shared.settings import DEFAULT_QUEUE_NAME

    assignments = role_assignments()
    senders = [a for a in assignments if a["role"] == ROLE_QUEUE_DATA_MESSAGE_SENDER]
    for_apps = [a for a in assignments if a["loop_over"] == "senderPrincipalIds"]
    # Message Sender is granted once, to the enqueuing apps; beside it they hold the payload role alone.
    assert len(senders) == 1, f"Message Sender assignments: {senders}"
    app_roles = sorted(a["role"] for a in for_apps)
    assert app_roles == sorted([ROLE_QUEUE_DATA_MESSAGE_SENDER, ROLE_BLOB_DATA_CONTRIBUTOR]), (
        f"enqueuing apps must hold exactly Message Sender and Blob Data Contributor: {for_apps}")
    sender = senders[0]
    assert sender["principal"] == "senderPrincipalId"
    assert sender["scope"] == "mailQueue", f"Message Sender must be scoped to the outbox queue, not {sender['scope']}"

    # The scope resource is the outbox queue of this account, named by the parameter main.bicep fills ...
    text = source(RBAC)
    declared = re.search(r"^\s*resource\s+mailQueue\s+'([^']+)'\s+existing\s*=", text, re.MULTILINE)
    assert declared and declared.group(1).startswith("Microsoft.Storage/storageAccounts/queueServices/queues@")
    queue = top_level_pairs(declaration(text, "resource", "mailQueue"))
    assert queue["name"] == "mailQueueName"
    assert queue["parent"] == "queueService"
    service = top_level_pairs(declaration(text, "resource", "queueService"))
    assert (service["parent"], service["name"]) == ("storageAccount", "'default'")
    # ... and it is the only queue rbac.bicep knows: no assignment can land on the retry or poison queues.
    queues = re.findall(r"^\s*resource\s+(\w+)\s+'Microsoft\.Storage/storageAccounts/queueServices/queues@",
                        text, re.MULTILINE)
    assert queues == ["mailQueue"], f"queues named in rbac.bicep: {queues}"
    # senderPrincipalIds appears in rbac.bicep as its declaration and the two loops (queue, container), nowhere else.
    assert len(re.findall(r"\bsenderPrincipalIds\b", text)) == 3

    # main.bicep hands over the outbox's name (mail-outbox, the code's default), not the retry queue's.
    main = source(MAIN)
    rbac_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "rbac"))["params"], 0))
    assert rbac_params["mailQueueName"] == "mailQueueName"
    assert string_var(main, "mailQueueName") == DEFAULT_QUEUE_NAME
    # The outbox's senders, unless apps are declared (then none: tests/infra/test_apps.py).
    assert rbac_params["senderPrincipalIds"] == "outboxSenderPrincipalIds"
    assert re.search(r"^\s*var\s+outboxSenderPrincipalIds\s*=\s*empty\(apps\)\s*\?\s*senderPrincipalIds\s*:\s*\[\]\s*$",
                     main, re.MULTILINE)
    assert re.search(r"^\s*param\s+senderPrincipalIds\s+array\s*=\s*\[\]", main, re.MULTILINE)
    # and to no other module: read as a value once, by the rbac module above (a key `x:` is not a read).
    reads = re.findall(r"(?<!param )\bsenderPrincipalIds\b(?!\s*:)", main)
    assert len(reads) == 1, "senderPrincipalIds should reach the role assignments (app/rbac.bicep) only"


def test_enqueuers_get_blob_data_contributor_on_the_payload_container_only() -> None:
    """The claim check: apps upload large attachments and bodies to mail-payloads and nowhere else. Contributor on
    the account, the blob service or any other container would let an app reach the relay's overflow (dead
    letters' requests), the host's leases and keys, or the deployment package the Function App runs."""
    assignments = role_assignments()
    contributors = [a for a in assignments if a["role"] == ROLE_BLOB_DATA_CONTRIBUTOR]
    assert len(contributors) == 1, f"Blob Data Contributor is granted once, to the enqueuing apps: {contributors}"
    payload = contributors[0]
    assert payload["loop_over"] == "senderPrincipalIds"
    assert payload["principal"] == "senderPrincipalId"
    assert payload["scope"] == "payloadContainer", f"Blob Data Contributor belongs on mail-payloads: {payload['scope']}"
    assert payload["resource"] == "senderPayloadContributor"

    # The scope is the container of this account's blob service, named by the parameter main.bicep fills ...
    text = source(RBAC)
    declared = re.search(r"^\s*resource\s+payloadContainer\s+'([^']+)'\s+existing\s*=", text, re.MULTILINE)
    assert declared and declared.group(1).startswith("Microsoft.Storage/storageAccounts/blobServices/containers@")
    container = top_level_pairs(declaration(text, "resource", "payloadContainer"))
    assert (container["parent"], container["name"]) == ("blobService", "payloadContainerName")
    service = top_level_pairs(declaration(text, "resource", "blobService"))
    assert (service["parent"], service["name"]) == ("storageAccount", "'default'")
    assert re.search(r"^\s*resource\s+blobService\s+'Microsoft\.Storage/storageAccounts/blobServices@[^']+'\s+existing",
                     text, re.MULTILINE)
    # ... and it is the only container rbac.bicep knows: no assignment can land on another one.
    containers = re.findall(r"^\s*resource\s+(\w+)\s+'Microsoft\.Storage/storageAccounts/blobServices/containers@",
                            text, re.MULTILINE)
    assert containers == ["payloadContainer"], f"containers named in rbac.bicep: {containers}"
    main = source(MAIN)
    assert string_var(main, "payloadContainerName") == "mail-payloads"
    rbac_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "rbac"))["params"], 0))
    assert rbac_params["payloadContainerName"] == "payloadContainerName"
    # The relay reads and deletes payloads through its Blob Data Owner on the account (checked above), not a
    # second assignment.
    assert not [a for a in assignments if a["principal"] == "relayPrincipalId" and a["scope"] == "payloadContainer"]


def test_status_readers_get_table_data_reader_on_the_status_table_only() -> None:
    from shared.status import TABLE_NAME

    assignments = role_assignments()
    readers = [a for a in assignments if a["role"] == ROLE_TABLE_DATA_READER]
    for_readers = [a for a in assignments if a["loop_over"] == "statusReaderPrincipalIds"]
    assert len(readers) == 1 and for_readers == readers, f"status readers: {for_readers}; Table Data Reader: {readers}"
    reader = readers[0]
    assert reader["principal"] == "statusReaderPrincipalId"
    assert reader["scope"] == "statusTable", f"Table Data Reader belongs on the status table, not {reader['scope']}"

    text = source(RBAC)
    declared = re.search(r"^\s*resource\s+statusTable\s+'([^']+)'\s+existing\s*=", text, re.MULTILINE)
    assert declared and declared.group(1).startswith("Microsoft.Storage/storageAccounts/tableServices/tables@")
    table = top_level_pairs(declaration(text, "resource", "statusTable"))
    assert (table["parent"], table["name"]) == ("tableService", "statusTableName")
    service = top_level_pairs(declaration(text, "resource", "tableService"))
    assert (service["parent"], service["name"]) == ("storageAccount", "'default'")

    main = source(MAIN)
    rbac_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "rbac"))["params"], 0))
    assert rbac_params["statusTableName"] == "statusTableName"
    assert string_var(main, "statusTableName") == TABLE_NAME
    assert rbac_params["statusReaderPrincipalIds"] == "statusReaderPrincipalIds"
    assert re.search(r"^\s*param\s+statusReaderPrincipalIds\s+array\s*=\s*\[\]", main, re.MULTILINE)


def test_role_assignment_names_are_guid_of_scope_principal_and_role() -> None:
    for a in role_assignments():
        m = re.fullmatch(r"guid\((\w+)\.id,\s*(\w+),\s*(\w+)\)", a["name"])
        assert m, f"{a['resource']}: name should be guid(scope.id, principalId, roleDefinitionId): {a['name']}"
        assert (m.group(1), m.group(2), m.group(3)) == (a["scope"], a["principal"], a["role_var"]), a


def test_each_role_assignment_is_commented_with_the_role_name() -> None:
    raw = RBAC.read_text(encoding="utf-8")
    names = {
        ROLE_QUEUE_DATA_CONTRIBUTOR: "Storage Queue Data Contributor",
        ROLE_TABLE_DATA_CONTRIBUTOR: "Storage Table Data Contributor",
        ROLE_BLOB_DATA_OWNER: "Storage Blob Data Owner",
        ROLE_KEY_VAULT_SECRETS_USER: "Key Vault Secrets User",
        ROLE_MONITORING_METRICS_PUBLISHER: "Monitoring Metrics Publisher",
        ROLE_QUEUE_DATA_MESSAGE_SENDER: "Storage Queue Data Message Sender",
        ROLE_TABLE_DATA_READER: "Storage Table Data Reader",
        ROLE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    }
    for a in role_assignments():
        if a["role"] not in names:
            continue
        block = re.search(rf"((?://[^\n]*\n)+)resource\s+{a['resource']}\b", raw)
        assert block and names[a["role"]] in block.group(1), f"{a['resource']} needs a comment naming its role"


# --------------------------------------------------------------------------------------------
# Queues and tables
# --------------------------------------------------------------------------------------------


def storage_params() -> dict[str, str]:
    return top_level_pairs(block_after(top_level_pairs(declaration(source(MAIN), "module", "storage"))["params"], 0))


def names_in(block: str, variables: dict[str, str]) -> set[str]:
    raw = re.findall(r"name:\s*(\S+)", block)
    return {variables.get(n, n.strip("'")) for n in raw}


def test_queue_and_table_names_match_the_code() -> None:
    from shared.settings import DEFAULT_QUEUE_NAME, RETRY_QUEUE_SUFFIX
    from shared.status import TABLE_NAME

    main = source(MAIN)
    queue = string_var(main, "mailQueueName")
    assert queue == DEFAULT_QUEUE_NAME == "mail-outbox"
    assert re.search(r"^\s*var\s+poisonQueueName\s*=\s*'\$\{mailQueueName\}-poison'", main, re.MULTILINE)
    # The retry queue is derived from the outbox's name as the code derives it (Settings.retry_queue_name).
    assert re.search(rf"^\s*var\s+retryQueueName\s*=\s*'\$\{{mailQueueName\}}{re.escape(RETRY_QUEUE_SUFFIX)}'",
                     main, re.MULTILINE)
    assert re.search(r"^\s*var\s+retryPoisonQueueName\s*=\s*'\$\{retryQueueName\}-poison'", main, re.MULTILINE)
    variables = {
        "mailQueueName": queue,
        "poisonQueueName": f"{queue}-poison",
        "retryQueueName": f"{queue}{RETRY_QUEUE_SUFFIX}",
        "retryPoisonQueueName": f"{queue}{RETRY_QUEUE_SUFFIX}-poison",
        "expiryWarningsTableName": string_var(main, "expiryWarningsTableName"),
        "statusTableName": string_var(main, "statusTableName"),
    }
    params = storage_params()
    queues = {q["name"] for q in main_template().module_params("storage")["queueServices"]["queues"]}
    assert queues == {"mail-outbox", "mail-outbox-poison", "mail-outbox-retry", "mail-outbox-retry-poison"}
    relay_queue_vars = ("mailQueueName", "poisonQueueName", "retryQueueName", "retryPoisonQueueName")
    assert {variables[n] for n in relay_queue_vars} == queues
    tables = names_in(params["tableServices"], variables)
    # The pace of each sender mailbox is one row of mailstatus (RowKey "pace", in the mailbox's partition), not a
    # table of its own: no template may create mailpace or scope a role to it.
    assert tables == {"expirywarnings", TABLE_NAME} == {"expirywarnings", "mailstatus"}
    for path in (MAIN, RBAC):
        assert "mailpace" not in source(path), f"{path.name} still creates or names the former mailpace table"
    assert "sentrequests" not in source(MAIN), "the sentrequests ledger is replaced by mailstatus"
    assert app_settings()["MAIL_QUEUE_NAME"] == "mailQueueName"
    # The retry trigger's binding resolves to the queue the template creates.
    function_app = (ROOT / "function_app.py").read_text(encoding="utf-8")
    assert f'queue_name="%MAIL_QUEUE_NAME%{RETRY_QUEUE_SUFFIX}"' in function_app


def test_tables_the_code_names_exist_in_the_template() -> None:
    """Any table name the relay's code spells out must be one the template creates."""
    main = source(MAIN)
    table_vars = re.findall(r"^\s*var\s+(\w+TableName)\s*=", main, re.MULTILINE)
    variables = {name: string_var(main, name) for name in table_vars}
    created = names_in(storage_params()["tableServices"], variables)
    mentioned: set[str] = set()
    for path in (ROOT / "shared").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"(?i)\b\w*table\w*\s*(?::[^=\n]*)?=\s*['\"]([A-Za-z][A-Za-z0-9]{2,62})['\"]", text):
            mentioned.add(m.group(1).lower())
    assert mentioned, "found no table name in shared/: the pattern above no longer matches the code"
    assert mentioned <= created, f"tables used by the code but not created by infra: {sorted(mentioned - created)}"


def test_the_deployment_container_is_created_and_used() -> None:
    main = main_template()
    assert main.value("deploymentContainerName") in containers_created()
    api = source(API)
    assert "'${stg.properties.primaryEndpoints.blob}${deploymentContainerName}'" in api
    assert "type: 'UserAssignedIdentity'" in api


def containers_created(**params: object) -> dict[str, dict[str, object]]:
    """The storage module's blobServices.containers, evaluated (tests/infra/bicep_eval.py), by name."""
    containers = main_template(**params).module_params("storage")["blobServices"]["containers"]
    return {c["name"]: c for c in containers}


def test_the_payload_container_is_created_private_and_named_as_the_code_names_it() -> None:
    """mail-payloads exists from the first deployment (apps upload before the relay ever runs), never public, and
    its name reaches rbac.bicep and the azd outputs (apps and `mailrelay send --attach` need it)."""
    main = source(MAIN)
    created = containers_created()
    assert "mail-payloads" in created, f"mail-payloads is not created: {sorted(created)}"
    assert all(c.get("publicAccess") == "None" for c in created.values()), created
    with_apps = containers_created(apps=[{"name": "billing", "senders": ["billing@contoso.com"]}],
                                   allowedSenders="billing@contoso.com")
    assert all(c.get("publicAccess") == "None" for c in with_apps.values()), with_apps
    assert string_var(main, "payloadContainerName") == "mail-payloads"
    assert re.search(r"^\s*output\s+PAYLOAD_CONTAINER_NAME\s+string\s*=\s*payloadContainerName\s*$", main, re.MULTILINE)
    # Once the relay's code names the container (shared/payloads.py), it must be this one.
    payloads = ROOT / "shared" / "payloads.py"
    if payloads.exists():
        named = set(re.findall(r"['\"](mail-payloads[\w-]*)['\"]", payloads.read_text(encoding="utf-8")))
        assert named <= {"mail-payloads"}, f"shared/payloads.py names another container: {named}"


# --------------------------------------------------------------------------------------------
# No keys, no connection strings
# --------------------------------------------------------------------------------------------


FORBIDDEN = [
    (re.compile(r"listKeys", re.IGNORECASE), "listKeys (account keys)"),
    (re.compile(r"AccountKey=", re.IGNORECASE), "AccountKey= (connection string)"),
    (re.compile(r"DefaultEndpointsProtocol", re.IGNORECASE), "storage connection string"),
    (re.compile(r"SharedAccessSignature|sig=", re.IGNORECASE), "SAS token"),
    (re.compile(r"InstrumentationKey", re.IGNORECASE), "Application Insights instrumentation key"),
    (re.compile(r"\bAzureWebJobsStorage\s*:"), "AzureWebJobsStorage connection string setting"),
    (re.compile(r"\bWEBSITE_CONTENTAZUREFILECONNECTIONSTRING\b"), "Azure Files connection string"),
]


def infra_files() -> list[Path]:
    files = [*INFRA.rglob("*.bicep"), *INFRA.rglob("*.json"), ROOT / "azure.yaml"]
    return [p for p in files if p.is_file()]


@pytest.mark.parametrize("path", infra_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_connection_string_account_key_or_instrumentation_key(path: Path) -> None:
    text = source(path) if path.suffix == ".bicep" else path.read_text(encoding="utf-8")
    for pattern, what in FORBIDDEN:
        m = pattern.search(text)
        assert not m, f"{path.relative_to(ROOT)}: {what}: {text[max(0, m.start() - 40):m.end() + 40]!r}"


# --------------------------------------------------------------------------------------------
# Security settings handed to the AVM modules (checkov does not see inside registry modules)
# --------------------------------------------------------------------------------------------


def test_storage_account_is_locked_down() -> None:
    p = storage_params()
    assert p["allowSharedKeyAccess"] == "false"
    assert p["minimumTlsVersion"] == "'TLS1_2'"
    assert p["allowBlobPublicAccess"] == "false"
    assert p["supportsHttpsTrafficOnly"] == "true"


def test_key_vault_uses_rbac_soft_delete_and_purge_protection() -> None:
    p = top_level_pairs(block_after(top_level_pairs(declaration(source(MAIN), "module", "keyVault"))["params"], 0))
    assert p["enableRbacAuthorization"] == "true"
    assert p["enableSoftDelete"] == "true"
    assert p["enablePurgeProtection"] == "true"


def test_the_secret_always_carries_an_expiry() -> None:
    text = source(SECRET)
    secret = top_level_pairs(declaration(text, "resource", "graphClientSecret"))
    attributes = top_level_pairs(block_after(top_level_pairs(block_after(secret["properties"], 0))["attributes"], 0))
    assert attributes["exp"] == "dateTimeToEpoch(expiresOn)"
    assert "@minLength(20)" in decorators_of(text, "param", "expiresOn"), "the expiry must be required"
    assert "= ''" not in re.search(r"^\s*param\s+expiresOn\b.*$", text, re.MULTILINE).group(0)
    assert "@secure()" in decorators_of(text, "param", "secretValue")
    main = source(MAIN)
    assert "@secure()" in decorators_of(main, "param", "graphClientSecret")
    conditional = (r"module\s+graphSecret\s+'app/secret\.bicep'\s*=\s*"
                   r"if\s*\(\s*graphCredential\s*==\s*'secret'\s*&&\s*!empty\(graphClientSecret\)\s*\)")
    assert re.search(conditional, main), "the secret module runs only in secret mode, and only when a secret is given"


def test_the_instance_cap_deploys_in_every_region_and_bounds_cost_not_graph() -> None:
    """Flex Consumption's lowest accepted maximumInstanceCount has been 40 in every docs revision that had a floor
    (lower values only in some regions, or later everywhere): the default is 40, so the template deploys wherever
    the README suggests; the parameter still takes 1 to 1000 (the platform's highest) for regions that accept less.
    Sends per mailbox are bounded by the relay's pacing, not by the cap (README's arithmetic: instances x 12)."""
    main = source(MAIN)
    assert param_default(main, "maximumInstanceCount") == "40"
    decorators = decorators_of(main, "param", "maximumInstanceCount")
    assert "@minValue(1)" in decorators and "@maxValue(1000)" in decorators
    for words in ("40", "per function", "paces each sender mailbox", "cost"):
        assert words in decorators, f"maximumInstanceCount's @description should say {words!r}"
    raw = MAIN.read_text(encoding="utf-8")
    assert "flex-consumption-plan.md" in raw and "event-driven-scaling.md" in raw, "the rule's sources are cited"
    api = source(API)
    assert "maximumInstanceCount: maximumInstanceCount" in api
    assert param_default(api, "maximumInstanceCount") == "40"
    assert "@maxValue(1000)" in decorators_of(api, "param", "maximumInstanceCount")
    api_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "api"))["params"], 0))
    assert api_params["maximumInstanceCount"] == "maximumInstanceCount"
    queues = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))["extensions"]["queues"]
    assert queues["batchSize"] + queues["newBatchThreshold"] == 12
    from shared.settings import load_settings
    from tests.unit.test_settings import GOOD

    assert load_settings(GOOD).mailbox_max_concurrent == 4  # Graph's per app and mailbox


def test_api_comments_describe_host_json_as_it_is() -> None:
    """api.bicep once said one message per instance (batchSize 1); host.json runs 8 + 4."""
    raw = API.read_text(encoding="utf-8")
    assert "batchSize 1" not in raw and "newBatchThreshold 0" not in raw
    assert "8 + 4 = 12" in raw


def queue_functions() -> list[str]:
    """Names of function_app.py's queue-triggered functions (each gets batchSize + newBatchThreshold at once)."""
    text = (ROOT / "function_app.py").read_text(encoding="utf-8")
    return re.findall(r"^@app\.queue_trigger\([^\n]*\)\s*\ndef\s+(\w+)", text, re.MULTILINE)


def test_the_worker_thread_pool_holds_every_message_the_host_hands_over() -> None:
    """The Python worker runs all synchronous functions of a worker process in one thread pool of
    PYTHON_THREADPOOL_THREAD_COUNT threads (Python's default, about 5 on one vCPU, when unset). The host hands
    each queue function up to batchSize + newBatchThreshold messages at once, so the pool must hold that many for
    every queue function: 2 x (8 + 4) = 24 today, recomputed here so a change to host.json or a new queue
    function cannot leave the setting behind."""
    functions = queue_functions()
    assert sorted(functions) == ["retry_mail", "send_mail"], f"queue functions found: {functions}"
    queues = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))["extensions"]["queues"]
    expected = len(functions) * (queues["batchSize"] + queues["newBatchThreshold"])
    assert expected == 24
    settings = app_settings()
    assert settings["PYTHON_THREADPOOL_THREAD_COUNT"] == f"'{expected}'", settings.get("PYTHON_THREADPOOL_THREAD_COUNT")
    # The app settings reference gives 32 as the setting's maximum.
    assert expected <= 32
    # Flex Consumption refuses FUNCTIONS_WORKER_PROCESS_COUNT ("Setting not valid"): one worker process per instance.
    assert "FUNCTIONS_WORKER_PROCESS_COUNT" not in settings
    raw = API.read_text(encoding="utf-8")
    for source_named in ("dispatcher.py", "python-scale-performance-reference", "flex-consumption-plan-deprecations"):
        assert source_named in raw, f"api.bicep should cite {source_named}"
    # func start / the local host read the same value from local.settings.json.
    example = json.loads((ROOT / "local.settings.json.example").read_text(encoding="utf-8"))
    assert example["Values"]["PYTHON_THREADPOOL_THREAD_COUNT"] == str(expected)


def test_flex_consumption_python_311_linux() -> None:
    api = source(API)
    assert "kind: 'functionapp,linux'" in api
    assert re.search(r"runtime:\s*\{\s*name:\s*'python'\s*version:\s*'3\.11'\s*\}", api)
    plan = top_level_pairs(block_after(top_level_pairs(declaration(source(MAIN), "module", "plan"))["params"], 0))
    assert "'FC1'" in plan["sku"] and "'FlexConsumption'" in plan["sku"]


def test_registry_modules_are_pinned() -> None:
    for path in INFRA.rglob("*.bicep"):
        for ref in re.findall(r"^\s*module\s+\w+\s+'(br[:/][^']+)'", source(path), re.MULTILINE):
            assert re.fullmatch(r"br/public:avm/(res|ptn|utl)/[a-z0-9/-]+:\d+\.\d+\.\d+", ref), f"{path.name}: {ref}"


# --------------------------------------------------------------------------------------------
# azd, alerts, Entra module
# --------------------------------------------------------------------------------------------


def test_azd_outputs() -> None:
    outputs = set(re.findall(r"^\s*output\s+(\w+)\s", source(MAIN), re.MULTILINE))
    expected = {"AZURE_LOCATION", "AZURE_TENANT_ID", "RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME", "KEY_VAULT_URI",
                "MAIL_QUEUE_URL", "STORAGE_QUEUE_SERVICE_URI", "MAIL_QUEUE_NAME", "RETRY_QUEUE_NAME",
                "STATUS_TABLE_NAME", "PAYLOAD_CONTAINER_NAME"}
    assert expected <= outputs
    main = source(MAIN)
    for output, var in (("RETRY_QUEUE_NAME", "retryQueueName"), ("STATUS_TABLE_NAME", "statusTableName")):
        assert re.search(rf"^\s*output\s+{output}\s+string\s*=\s*{var}\s*$", main, re.MULTILINE), output
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", o) for o in outputs), "azd outputs are UPPER_SNAKE"


def test_parameters_file_matches_the_template() -> None:
    main = source(MAIN)
    declared = dict(re.findall(r"^\s*param\s+(\w+)\s+\w+(\s*=)?", main, re.MULTILINE))
    required = {name for name, has_default in declared.items() if not has_default}
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(given) <= set(declared), f"unknown parameters: {sorted(set(given) - set(declared))}"
    assert required <= set(given), f"required parameters missing: {sorted(required - set(given))}"
    assert given["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert given["location"]["value"] == "${AZURE_LOCATION}"
    assert given["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"


def test_azure_yaml_deploys_the_repository_root_as_a_python_function() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    service = re.search(r"^services:\s*\n\s+(\w[\w-]*):\s*\n((?:\s{4,}.+\n?)+)", text, re.MULTILINE)
    assert service, "azure.yaml: no service"
    body = service.group(2)
    assert re.search(r"^\s+project:\s*\.\s*$", body, re.MULTILINE)
    assert re.search(r"^\s+language:\s*python\s*$", body, re.MULTILINE)
    assert re.search(r"^\s+host:\s*function\s*$", body, re.MULTILINE)
    # azd finds the app through the azd-service-name tag
    api_module = top_level_pairs(block_after(top_level_pairs(declaration(source(MAIN), "module", "api"))["params"], 0))
    assert api_module["serviceName"] == f"'{service.group(1)}'"
    assert "'azd-service-name': serviceName" in source(API)


def test_alert_on_secret_expiry_matches_the_code_once_it_exists() -> None:
    emitted = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "shared").rglob("*.py"))
    if "secret.expiry" not in emitted:
        pytest.skip("no code logs event secret.expiry yet (the expiry check)")
    assert '"event": "secret.expiry"' in emitted


def test_entra_module_is_optional_and_grants_mail_send_as_an_application_permission() -> None:
    main = source(MAIN)
    assert param_default(main, "deployEntraApp") == "false"
    # Optional, and never in managed-identity mode (no app registration there): deployEntraApp is ignored.
    assert re.search(r"module\s+entraApp\s+'app/entra-app\.bicep'\s*=\s*if\s*\(\s*deployEntraAppRegistration\s*\)",
                     main)
    assert re.search(r"^\s*var\s+deployEntraAppRegistration\s*=\s*deployEntraApp\s*&&\s*graphCredential\s*!=\s*"
                     r"'managed-identity'\s*$", main, re.MULTILINE)
    text = ENTRA.read_text(encoding="utf-8")
    assert re.search(r"^extension\s+microsoftGraphV1\s*$", text, re.MULTILINE)
    assert "b633e1c5-b582-4048-a93e-9f11b44c7e96" in text  # Microsoft Graph app role Mail.Send
    assert "type: 'Role'" in text  # application permission, not a delegated Scope
    assert "Microsoft.Graph/appRoleAssignedTo@v1.0" in text
    config = json.loads((INFRA / "bicepconfig.json").read_text(encoding="utf-8"))
    extension = config["extensions"]["microsoftGraphV1"]
    assert extension.startswith("br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:")


# --------------------------------------------------------------------------------------------
# Read access for resolving unknown sends (Mail.Read, scoped by Exchange like Mail.Send)
# --------------------------------------------------------------------------------------------

MAIL_READ_APP_ROLE = "810c84a8-4a9e-49e6-bf7d-12d183f40d01"  # Microsoft Graph application role Mail.Read


def test_mail_read_is_consented_in_entra_only_in_the_policy_model() -> None:
    """In the RBAC model an Entra consent of Mail.Read would let the app read every mailbox in the tenant:
    the template may grant it only where an application access policy narrows it."""
    main = source(MAIN)
    assert param_default(main, "grantSentItemsRead") == "true"
    description = decorators_of(main, "param", "grantSentItemsRead")
    for words in ("Mail.Read", "ALL mail", "send-only", "least privilege"):
        assert words in description, f"grantSentItemsRead's @description should say {words!r}"
    assert re.search(r"^\s*var\s+grantMailSendInEntra\s*=\s*exchangeScopeModel\s*==\s*'ApplicationAccessPolicy'\s*$",
                     main, re.MULTILINE)
    assert re.search(r"^\s*var\s+grantMailReadInEntra\s*=\s*grantMailSendInEntra\s*&&\s*grantSentItemsRead\s*$",
                     main, re.MULTILINE)
    entra_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "entraApp"))["params"], 0))
    assert entra_params["grantMailSend"] == "grantMailSendInEntra"
    assert entra_params["grantMailRead"] == "grantMailReadInEntra"

    text = source(ENTRA)
    assert param_default(text, "grantMailRead") == "false"
    assert string_var(text, "mailReadAppRoleId") == MAIL_READ_APP_ROLE
    grant = re.search(
        r"resource\s+mailReadGrant\s+'Microsoft\.Graph/appRoleAssignedTo@v1\.0'\s*=\s*if\s*\(\s*grantMailRead\s*\)",
        text,
    )
    assert grant, "the Mail.Read consent must depend on grantMailRead"
    assert top_level_pairs(declaration(text, "resource", "mailReadGrant"))["appRoleId"] == "mailReadAppRoleId"
    # Declared only when granted: a declared permission invites the portal's "Grant admin consent".
    assert top_level_pairs(declaration(text, "var", "mailReadAccess"))["type"] == "'Role'"
    declared = re.search(r"^\s*var\s+declaredAccess\s*=\s*(.+)$", text, re.MULTILINE)
    assert declared and declared.group(1).startswith("grantMailRead ?"), "Mail.Read is declared only with grantMailRead"
    assert "mailReadAccess" not in declared.group(1).split(":", 1)[1], "without grantMailRead: Mail.Send alone"


def exchange_script(name: str) -> str:
    return (EXCHANGE / name).read_text(encoding="utf-8")


def test_exchange_scripts_use_exchanges_role_names() -> None:
    """The scripts assign and test the roles the emulator models (devstack/emulator/exchange.py), as named in
    Microsoft's application RBAC article, which both scripts cite."""
    from devstack.emulator.exchange import EXCHANGE_ROLE

    for script in ("Set-RbacApplicationScope.ps1", "Test-ExchangeScope.ps1"):
        text = exchange_script(script)
        assert f"$SendRoleName = '{EXCHANGE_ROLE['Mail.Send']}'" in text, script
        assert f"$ReadRoleName = '{EXCHANGE_ROLE['Mail.Read']}'" in text, script
        assert f"$ReadWriteRoleName = '{EXCHANGE_ROLE['Mail.ReadWrite']}'" in text, script
        assert "https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac" in text, script


def test_the_read_role_is_assigned_over_the_sending_scope_and_only_when_asked() -> None:
    text = exchange_script("Set-RbacApplicationScope.ps1")
    assert re.search(r"^\s*\[switch\]\s*\$GrantSentItemsRead\b", text, re.MULTILINE | re.IGNORECASE)
    # Both assignments are planned against the one management scope the script maintains.
    send_plan = re.search(r"^\$sendPlan\s*=\s*Get-RoleAssignmentPlan\s+(.*)$", text, re.MULTILINE)
    read_plan = re.search(r"^\$readPlan\s*=\s*Get-RoleAssignmentPlan\s+(.*)$", text, re.MULTILINE)
    assert send_plan and "-Role $SendRoleName" in send_plan.group(1) and "-Scope $ScopeName" in send_plan.group(1)
    assert read_plan and "-Role $ReadRoleName" in read_plan.group(1) and "-Scope $ScopeName" in read_plan.group(1)
    # One code path creates both, with -CustomResourceScope from the plan.
    assert text.count("New-ManagementRoleAssignment -Name") == 1
    assert "-Role $Plan.Role -CustomResourceScope $Plan.Scope" in text
    # The read assignment is made only under -GrantSentItemsRead.
    invoke_read = re.search(r"if \(\$GrantSentItemsRead\) \{\s*Invoke-RoleAssignmentPlan \$readPlan\b", text)
    assert invoke_read, "Invoke-RoleAssignmentPlan $readPlan must sit under if ($GrantSentItemsRead)"
    assert len(re.findall(r"Invoke-RoleAssignmentPlan \$readPlan\b", text)) == 1
    # A tenant-wide Entra consent of Mail.Read defeats the scope just as Mail.Send's does: it is looked for.
    assert f"'{MAIL_READ_APP_ROLE}' = 'Mail.Read'" in text


def test_the_scope_test_checks_read_access_with_test_serviceprincipalauthorization() -> None:
    text = exchange_script("Test-ExchangeScope.ps1")
    assert re.search(r"^\s*\[switch\]\s*\$SentItemsRead\b", text, re.MULTILINE | re.IGNORECASE)
    assert "Test-ServicePrincipalAuthorization -Identity $spIdentity -Resource $case.Address" in text
    # Read is checked on allowed addresses when asked, and on denied ones always (reading outside is a leak).
    assert "if ($SentItemsRead -or $case.Expected -eq 'Denied') { $roles += $ReadRoleName }" in text
    assert "Get-RbacVerdict $rows $role" in text


MAIL_READWRITE_APP_ROLE = "e2a3a72e-5f79-4c64-b1b1-878b674786c9"  # Microsoft Graph application role Mail.ReadWrite


def test_the_readwrite_role_for_large_messages_is_assigned_over_the_sending_scope_and_only_when_asked() -> None:
    """Messages over 3 MB go through a draft and an upload session, which need Mail.ReadWrite: under RBAC for
    Applications that is "Application Mail.ReadWrite" over the SAME management scope as Mail.Send, made the same
    idempotent way as the read role, and only with -GrantLargeMessages."""
    text = exchange_script("Set-RbacApplicationScope.ps1")
    assert re.search(r"^\s*\[switch\]\s*\$GrantLargeMessages\b", text, re.MULTILINE | re.IGNORECASE)
    plan = re.search(r"^\$readWritePlan\s*=\s*Get-RoleAssignmentPlan\s+(.*)$", text, re.MULTILINE)
    assert plan, "the Mail.ReadWrite assignment must be planned like the others"
    assert "-Role $ReadWriteRoleName" in plan.group(1) and "-Scope $ScopeName" in plan.group(1)
    assert "-Name $ReadWriteAssignmentName" in plan.group(1)
    assert "[string] $ReadWriteAssignmentName = 'Graph Mail Relay Mail.ReadWrite'" in text
    # Still one code path creates assignments (with -CustomResourceScope), and this one only under the switch.
    assert text.count("New-ManagementRoleAssignment -Name") == 1
    invoke = re.search(r"if \(\$GrantLargeMessages\) \{\s*Invoke-RoleAssignmentPlan \$readWritePlan\b", text)
    assert invoke, "Invoke-RoleAssignmentPlan $readWritePlan must sit under if ($GrantLargeMessages)"
    assert len(re.findall(r"Invoke-RoleAssignmentPlan \$readWritePlan\b", text)) == 1
    # A held but unrequested Mail.ReadWrite is reported, never removed silently.
    assert "Remove-ManagementRoleAssignment -Identity" in text and "Run with -GrantLargeMessages" in text
    assert not re.search(r"^\s*Remove-ManagementRoleAssignment\b", text, re.MULTILINE)
    # A tenant-wide Entra consent of Mail.ReadWrite would reach every mailbox: it is looked for like the others.
    assert f"'{MAIL_READWRITE_APP_ROLE}' = 'Mail.ReadWrite'" in text
    # The verification it prints asks for the matching check.
    assert "$verifyWrite = if ($GrantLargeMessages) { ' -LargeMessages' }" in text


def test_the_scope_test_checks_write_access_on_allowed_addresses_when_asked_and_on_denied_ones_always() -> None:
    text = exchange_script("Test-ExchangeScope.ps1")
    assert re.search(r"^\s*\[switch\]\s*\$LargeMessages\b", text, re.MULTILINE | re.IGNORECASE)
    assert "if ($LargeMessages -or $case.Expected -eq 'Denied') { $roles += $ReadWriteRoleName }" in text
    # An allowed address that is not writable has its own hint, not the "not in the group" one.
    assert "$_.Access -notin @($ReadRoleName, $ReadWriteRoleName)" in text
    assert "Set-RbacApplicationScope.ps1 -GrantLargeMessages" in text


def test_the_policy_script_says_the_policy_limits_mail_readwrite_and_that_its_entra_consent_is_needed() -> None:
    """Under an application access policy the app holds Graph permissions through Entra consent, and the policy
    narrows each of them (Mail.ReadWrite included) to the group: Microsoft's list of supported permissions."""
    text = exchange_script("Set-ApplicationAccessPolicy.ps1")
    assert "https://learn.microsoft.com/graph/auth-limit-mailbox-access" in text
    for words in ("Mail.ReadWrite", "admin consent", "APPLICATION permission", "upload session"):
        assert words in text, f"Set-ApplicationAccessPolicy.ps1 should say {words!r}"
    assert re.search(r"Write-Host 'Optional: Mail\.ReadWrite \(APPLICATION permission, admin consent\)", text)
    test = exchange_script("Test-ExchangeScope.ps1")
    assert "https://learn.microsoft.com/graph/auth-limit-mailbox-access" in test


def test_the_script_switches_the_docs_name_exist() -> None:
    """docs/permissions.md, infra/README.md and main.bicep tell admins which switch to run; each must be one the
    script has."""
    def parameters(script: str) -> set[str]:
        text = exchange_script(script)
        block = re.search(r"^param\((.*?)^\)", text, re.MULTILINE | re.DOTALL)
        assert block, f"{script}: no param( ... ) block"
        declared = re.findall(r"\]\s*\$(\w+)\s*(?:=|,|$)", block.group(1), re.MULTILINE)
        aliases = re.findall(r"\[Alias\('(\w+)'\)\]", block.group(1))  # another name of the same parameter
        return {name.lower() for name in [*declared, *aliases, "WhatIf", "Confirm", "Verbose"]}

    switches = {name: parameters(name) for name in ("Set-RbacApplicationScope.ps1", "Test-ExchangeScope.ps1")}
    assert {"grantlargemessages", "grantsentitemsread", "appid"} <= switches["Set-RbacApplicationScope.ps1"]
    assert {"largemessages", "sentitemsread", "model"} <= switches["Test-ExchangeScope.ps1"]
    pages = (ROOT / "docs" / "permissions.md", INFRA / "README.md", MAIN)  # permissions moved out of README.md
    docs = {path: path.read_text(encoding="utf-8") for path in pages}
    for path, text in docs.items():
        for script, switch in re.findall(r"(Set-RbacApplicationScope\.ps1|Test-ExchangeScope\.ps1)`?\s+`?-(\w+)", text):
            assert switch.lower() in switches[script], f"{path.name} names {script} -{switch}, which does not exist"
    for text in docs.values():
        assert "-GrantLargeMessages" in text, "each doc should name the switch for large messages"


# --------------------------------------------------------------------------------------------
# Deployment details Microsoft's references pin (issue 18, item 7)
# --------------------------------------------------------------------------------------------


def test_role_assignments_to_app_identities_name_their_principal_type() -> None:
    """A role assignment to a principal Entra has not replicated yet fails with PrincipalNotFound unless it
    carries principalType ("Troubleshoot Azure RBAC"); the relay's identity is created in the same deployment.
    App identities say ServicePrincipal; status readers may be people or groups, so theirs stays unset; the
    deployer's comes from AZURE_PRINCIPAL_TYPE."""
    by_principal: dict[str, set[str]] = {}
    for a in role_assignments():
        by_principal.setdefault(a["principal"], set()).add(a["principal_type"])
    assert by_principal["relayPrincipalId"] == {"'ServicePrincipal'"}
    assert by_principal["senderPrincipalId"] == {"'ServicePrincipal'"}
    assert by_principal["statusReaderPrincipalId"] == {""}, "a status reader may be a user or a group"
    assert by_principal["deployerPrincipalId"] == {"deployerPrincipalType"}
    raw = RBAC.read_text(encoding="utf-8")
    assert "https://learn.microsoft.com/azure/role-based-access-control/troubleshooting" in raw


def test_azure_yaml_requires_an_azd_whose_bicep_compiles_the_graph_extension() -> None:
    """entra-app.bicep (Microsoft Graph Bicep extension, Bicep 0.36.1+) compiles on every provision, even with
    DEPLOY_ENTRA_APP=false; azd 1.17.0 is the first release bundling Bicep 0.36.1 (azd's CHANGELOG, #5245)."""
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    block = re.search(r"^requiredVersions:\s*\n((?:[ \t]+.+\n?)+)", text, re.MULTILINE)
    assert block, "azure.yaml: no requiredVersions"
    azd = re.search(r"^\s+azd:\s*[\"']?([^\"'\n]+?)[\"']?\s*$", block.group(1), re.MULTILINE)
    assert azd and azd.group(1) == ">= 1.17.0", azd and azd.group(1)
    # azure.yaml's schema allows only azd and extensions under requiredVersions (additionalProperties: false).
    keys = re.findall(r"^[ \t]+(\w+):", block.group(1), re.MULTILINE)
    assert set(keys) <= {"azd", "extensions"}, keys
    assert "0.36.1" in text and "5245" in text, "azure.yaml should cite the azd release that bundles Bicep 0.36.1"
    assert re.search(r"^extension\s+microsoftGraphV1\s*$", ENTRA.read_text(encoding="utf-8"), re.MULTILINE)


def test_the_entra_app_is_one_per_environment_and_found_by_a_name_that_survives_a_rename() -> None:
    main = source(MAIN)
    entra_params = top_level_pairs(block_after(top_level_pairs(declaration(main, "module", "entraApp"))["params"], 0))
    assert entra_params["uniqueName"] == "'graph-mail-relay-${resourceToken}'"
    assert entra_params["displayName"] == "entraAppDisplayName"
    # The resource token is per environment (and subscription and region), so two environments in one tenant differ.
    token = re.search(r"^\s*var\s+resourceToken\s*=\s*(.+)$", main, re.MULTILINE)
    assert token and "environmentName" in token.group(1) and "subscription().id" in token.group(1)

    text = source(ENTRA)
    assert re.search(r"^\s*param\s+uniqueName\s+string\s*$", text, re.MULTILINE), "uniqueName has no default"
    app = top_level_pairs(declaration(text, "resource", "app"))
    assert app["uniqueName"] == "uniqueName", "the app's alternate key must not come from its display name"
    assert app["displayName"] == "displayName"
    assert "displayName" not in app["uniqueName"]


def test_a_second_provision_finds_the_same_consent_by_its_key() -> None:
    """The Graph extension keys appRoleAssignedTo by (appRoleId, principalId) under resourceId and never updates
    it: a redeploy finds the existing grant as long as those three are the same on every run, which they are
    only if each comes from a fixed id or from this app's own service principal (never a value that changes)."""
    text = source(ENTRA)
    for grant, role_var in (("mailSendGrant", "mailSendAppRoleId"), ("mailReadGrant", "mailReadAppRoleId")):
        pairs = top_level_pairs(declaration(text, "resource", grant))
        assert set(pairs) == {"appRoleId", "principalId", "resourceId"}, f"{grant}: {sorted(pairs)}"
        assert pairs["appRoleId"] == role_var
        assert pairs["principalId"] == "servicePrincipal.id"
        assert pairs["resourceId"] == "microsoftGraph.id"
    assert string_var(text, "microsoftGraphAppId") == "00000003-0000-0000-c000-000000000000"
    raw = ENTRA.read_text(encoding="utf-8")
    assert '"compositeKeyProperties": ["appRoleId", "principalId"]' in raw, "cite the extension's key"
    assert "#161" in raw and "#164" in raw
    config = json.loads((INFRA / "bicepconfig.json").read_text(encoding="utf-8"))
    assert config["extensions"]["microsoftGraphV1"].endswith("/microsoftgraph/v1.0:1.0.0"), "the version cited"


def test_the_rbac_script_assigns_roles_to_the_service_principals_object_id() -> None:
    """New-ManagementRoleAssignment -App takes "the ObjectId GUID value from the output of the Get-ServicePrincipal
    cmdlet" (it said ServiceId until 2023), and New-ServicePrincipal's -ServiceId "is being deprecated"."""
    text = exchange_script("Set-RbacApplicationScope.ps1")
    assignment = re.search(r"^\s*\$appIdentity\s*=\s*(.+)$", text, re.MULTILINE)
    assert assignment and assignment.group(1).strip() == "\"$(Get-Prop $ServicePrincipal 'ObjectId')\""
    assert "-App $appIdentity" in text
    assert "'ServiceId'" not in text, "nothing may read the deprecated ServiceId"
    created = re.findall(r"^\s*\$sp\s*=\s*New-ServicePrincipal\s+([^\n]*)$", text, re.MULTILINE)
    assert len(created) == 1 and "-ObjectId $ServicePrincipalObjectId" in created[0], created
    assert "-ServiceId" not in created[0]
    assert "New-ManagementRoleAssignment.md" in text and "New-ServicePrincipal.md" in text
    # The scope test identifies the service principal by its Identity or app id, both of which -Identity takes.
    test = exchange_script("Test-ExchangeScope.ps1")
    assert "'ServiceId'" not in test
    assert "Test-ServicePrincipalAuthorization.md" in test
