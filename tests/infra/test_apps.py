"""Apps in the deployment template (issue 20): each app's queue, poison queue, payload container, status table and
roles, and the checks of the declaration. Azurite does not enforce Azure roles, so the isolation between apps is proven
here, on the template: main.bicep, app/rbac.bicep and app/app-access.bicep are evaluated for a declaration (tests/infra/
bicep_eval.py evaluates their own expressions), and the role assignments that come out are checked principal by
principal, scope by scope.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.infra.bicep_eval import Ref, RoleAssignment, Template
from tests.infra.test_wiring import (
    INFRA,
    RBAC,
    ROLE_BLOB_DATA_CONTRIBUTOR,
    ROLE_BLOB_DATA_OWNER,
    ROLE_QUEUE_DATA_CONTRIBUTOR,
    ROLE_QUEUE_DATA_MESSAGE_SENDER,
    ROLE_TABLE_DATA_CONTRIBUTOR,
    ROLE_TABLE_DATA_READER,
    main_template,
)

APP_ACCESS = INFRA / "app" / "app-access.bicep"
APPS_CHECK = INFRA / "app" / "apps-check.bicep"
ALLOWED = "billing@contoso.com, HR-noreply@contoso.com,alerts@contoso.com"
BILLING = ["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"]
HR = ["33333333-3333-3333-3333-333333333333"]
OUTBOX_SENDER = "99999999-9999-9999-9999-999999999999"
STATUS_READER = "88888888-8888-8888-8888-888888888888"
APPS = [
    {"name": "billing", "senders": ["billing@contoso.com"], "principals": BILLING},
    {"name": "hr-eu", "senders": ["hr-noreply@contoso.com"], "principals": HR},
    {"name": "ops-alerts", "senders": ["alerts@contoso.com"]},  # no principals: its queue exists, nobody may use it
]
RELAY_QUEUES = {"mail-outbox", "mail-outbox-poison", "mail-outbox-retry", "mail-outbox-retry-poison"}
RELAY_TABLES = ["expirywarnings", "mailstatus"]


def status_table(app: str) -> str:
    """A declared app's status table, written out here so the tests do not take the template's word for it: mailstatus
    and the app's name without its hyphens (table names are letters and digits). The relay's own is checked against
    this below (test_the_template_names_and_refuses_status_tables_as_the_relay_does)."""
    return "mailstatus" + app.replace("-", "")


class Deployment:
    """What main.bicep deploys for one set of parameters: queues, containers, settings and role assignments."""

    def __init__(self, apps: list[dict[str, Any]], sender_principal_ids: list[str] | None = None,
                 allowed_senders: str = ALLOWED, status_reader_ids: list[str] | None = None) -> None:
        self.main = main_template(apps=apps, senderPrincipalIds=sender_principal_ids or [],
                                  allowedSenders=allowed_senders, statusReaderPrincipalIds=status_reader_ids or [])
        storage = self.main.module_params("storage")
        self.queues = [q["name"] for q in storage["queueServices"]["queues"]]
        self.containers = [c["name"] for c in storage["blobServices"]["containers"]]
        self.tables = [t["name"] for t in storage["tableServices"]["tables"]]
        self.settings = self.main.module_params("api")["appSettings"]
        self.checks = self.main.module_params("appDeclarationCheck")
        self.app_modules = self.main.module_instances("appAccess")
        self.assignments: list[RoleAssignment] = Template(RBAC, self.main.module_params("rbac")).role_assignments()
        for module in self.app_modules:
            self.assignments += Template(APP_ACCESS, module["params"]).role_assignments()

    def roles_of(self, principal: str) -> set[tuple[str, str, Any]]:
        return {(a.role, a.scope_kind, a.scope_name) for a in self.assignments if a.principal == principal}

    @property
    def refused(self) -> dict[str, list[str]]:
        return {rule: names for rule, names in self.checks.items() if names}


# --------------------------------------------------------------------------------------------
# Isolation
# --------------------------------------------------------------------------------------------


def test_each_apps_principals_hold_sender_on_its_queue_contributor_on_its_container_reader_on_its_table_only() -> None:
    deployment = Deployment(APPS, sender_principal_ids=[OUTBOX_SENDER, BILLING[0]])
    assert deployment.refused == {}
    for app, principals in (("billing", BILLING), ("hr-eu", HR)):
        for principal in principals:
            assert deployment.roles_of(principal) == {
                (ROLE_QUEUE_DATA_MESSAGE_SENDER, "queues", f"mail-outbox-{app}"),
                (ROLE_BLOB_DATA_CONTRIBUTOR, "containers", f"mail-payloads-{app}"),
                (ROLE_TABLE_DATA_READER, "tables", status_table(app)),
            }, f"{app}'s principal {principal}"
    assert status_table("hr-eu") == "mailstatushreu"  # the hyphen goes: table names are letters and digits


def test_no_app_principal_holds_a_role_on_another_apps_queue_container_or_table_or_on_the_outbox() -> None:
    deployment = Deployment(APPS, sender_principal_ids=[OUTBOX_SENDER, *BILLING], status_reader_ids=[STATUS_READER])
    owner = {p: app["name"] for app in APPS for p in app.get("principals", [])}
    others = {app["name"]: {f"mail-outbox-{o['name']}", f"mail-payloads-{o['name']}", status_table(o["name"])}
              for app in APPS for o in APPS if o is not app}
    for a in deployment.assignments:
        if a.principal not in owner:
            continue
        own = owner[a.principal]
        assert a.scope_name in (f"mail-outbox-{own}", f"mail-payloads-{own}", status_table(own)), (
            f"app {own}'s principal holds {a.role} on {a.scope_kind} {a.scope_name}")
        assert a.scope_name not in RELAY_QUEUES | {"mail-payloads"} | set(RELAY_TABLES) | others[own]
        if a.scope_kind == "tables":
            assert a.role == ROLE_TABLE_DATA_READER, f"app {own}'s principal may only read its status table"
    # With apps declared, senderPrincipalIds grants nothing: the outbox and mail-payloads have no app on them.
    assert deployment.roles_of(OUTBOX_SENDER) == set()
    assert not [a for a in deployment.assignments if a.scope_name in ("mail-outbox", "mail-payloads")]
    # mailstatus (the outbox's records and every mailbox's pace row) is read by statusReaderPrincipalIds alone.
    assert {a.principal for a in deployment.assignments if a.scope_name == "mailstatus"} == {STATUS_READER}
    assert deployment.roles_of(STATUS_READER) == {(ROLE_TABLE_DATA_READER, "tables", "mailstatus")}
    # Each app's table is read by that app's principals alone (the relay reaches it through its account role).
    for app in APPS:
        on_table = {a.principal for a in deployment.assignments if a.scope_name == status_table(app["name"])}
        assert on_table == set(app.get("principals", [])), f"{app['name']}'s status table: {on_table}"
    # An app without principals gets its queue, container and table, and nobody holds a role there.
    assert "mail-outbox-ops-alerts" in deployment.queues
    assert "mailstatusopsalerts" in deployment.tables
    assert not [a for a in deployment.assignments if a.scope_name in ("mail-outbox-ops-alerts",
                                                                       "mail-payloads-ops-alerts",
                                                                       "mailstatusopsalerts")]


def test_every_app_assignment_is_named_from_scope_principal_and_role_and_says_service_principal() -> None:
    deployment = Deployment(APPS)
    app_assignments = [a for a in deployment.assignments if a.template == APP_ACCESS.name]
    assert len(app_assignments) == 3 * (len(BILLING) + len(HR))
    for a in app_assignments:
        assert a.name == f"guid({a.scope.id},{a.principal},{a.role})", a
        assert a.principal_type == "ServicePrincipal"
    raw = APP_ACCESS.read_text(encoding="utf-8")
    for resource, role in (("appMessageSender", "Storage Queue Data Message Sender"),
                           ("appPayloadContributor", "Storage Blob Data Contributor"),
                           ("appStatusReader", "Storage Table Data Reader")):
        comment = re.search(rf"((?://[^\n]*\n)+)resource\s+{resource}\b", raw)
        assert comment and role in comment.group(1), f"{resource} needs a comment naming its role"


def test_the_relays_identity_reaches_every_app_queue_container_and_table_through_its_account_roles() -> None:
    """The queue trigger reads and deletes, and the host writes the poison queue: Storage Queue Data Contributor, the
    outbox's role, held on the account, which holds every app's queue, poison queue and container; the status records
    are written with Storage Table Data Contributor, on the account too, which holds every app's status table."""
    deployment = Deployment(APPS)
    relay = Ref("identity.outputs.principalId")
    relay_roles = {(a.role, a.scope_kind) for a in deployment.assignments if a.principal == relay}
    assert (ROLE_QUEUE_DATA_CONTRIBUTOR, "storageAccounts") in relay_roles
    assert (ROLE_BLOB_DATA_OWNER, "storageAccounts") in relay_roles
    assert (ROLE_TABLE_DATA_CONTRIBUTOR, "storageAccounts") in relay_roles
    storage_account = Ref("storage.outputs.name")
    for module, app in zip(deployment.app_modules, APPS, strict=True):
        assert module["params"]["storageAccountName"] == storage_account, "app resources in the relay's account"
        # The table the app's roles are scoped to is the one the storage module creates for it.
        assert module["params"]["statusTableName"] == status_table(app["name"]) in deployment.tables


def test_each_app_queue_exists_with_its_poison_queue_its_container_and_its_status_table() -> None:
    deployment = Deployment(APPS)
    for app in APPS:
        assert f"mail-outbox-{app['name']}" in deployment.queues
        assert f"mail-outbox-{app['name']}-poison" in deployment.queues
        assert f"mail-payloads-{app['name']}" in deployment.containers
    assert set(deployment.queues) >= RELAY_QUEUES
    assert len(deployment.queues) == len(set(deployment.queues)) == len(RELAY_QUEUES) + 2 * len(APPS)
    assert deployment.tables == [*RELAY_TABLES, "mailstatusbilling", "mailstatushreu", "mailstatusopsalerts"]
    for table in deployment.tables:  # Table storage's rule: letters and digits, 3 to 63, not starting with a digit
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,62}", table), table
    longest = Deployment(declared("x" * 24)).tables[-1]
    assert longest == "mailstatus" + "x" * 24 and len(longest) <= 63


def test_the_template_names_and_refuses_status_tables_as_the_relay_does() -> None:
    import shared.status
    from shared.apps import status_table as relay_status_table
    from shared.settings import SettingsError, parse_apps, parse_senders

    deployment = Deployment(APPS)
    assert deployment.tables[2:] == [relay_status_table(app["name"]) for app in APPS]
    assert deployment.tables[1] == relay_status_table("default") == shared.status.TABLE_NAME
    # A declaration the template refuses for a shared table, the relay refuses at start, and the other way round.
    for names in (("billing-eu", "billingeu"), ("billing-eu", "billing-e")):
        template_refuses = "namesSharingAStatusTable" in Deployment(declared(*names)).refused
        value = Deployment(declared(*names)).settings["MAILRELAY_APPS"]
        try:
            parse_apps(value, parse_senders(ALLOWED), "mail-outbox")
        except SettingsError:
            relay_refuses = True
        else:
            relay_refuses = False
        assert template_refuses == relay_refuses, (names, template_refuses, relay_refuses)


def test_mailrelay_apps_holds_names_and_senders_and_no_principal_and_the_relay_listens_where_the_queues_are() -> None:
    from shared.settings import parse_apps, parse_senders

    deployment = Deployment(APPS)
    value = deployment.settings["MAILRELAY_APPS"]
    assert json.loads(value) == [{"name": a["name"], "senders": a["senders"]} for a in APPS]  # no share: none
    for principal in [*BILLING, *HR]:
        assert principal not in value
    assert "principals" not in value
    apps = parse_apps(value, parse_senders(ALLOWED), "mail-outbox")
    assert {a.queue for a in apps} == set(deployment.queues) - RELAY_QUEUES - {f"{q}-poison" for q in
                                                                                  deployment.queues}


def test_mailrelay_apps_passes_the_declared_shares_through_and_the_relay_reads_them() -> None:
    from shared.settings import parse_apps, parse_senders

    shared = [
        {"name": "billing", "senders": ["alerts@contoso.com"], "principals": BILLING, "messagesPerMinute": 10},
        {"name": "bulk", "senders": ["alerts@contoso.com"], "principals": HR, "messagesPerMinute": 20,
         "recipientsPerDay": 5000},
    ]
    value = Deployment(shared).settings["MAILRELAY_APPS"]
    assert json.loads(value) == [
        {"name": "billing", "senders": ["alerts@contoso.com"], "messagesPerMinute": 10},
        {"name": "bulk", "senders": ["alerts@contoso.com"], "messagesPerMinute": 20, "recipientsPerDay": 5000},
    ]
    billing, bulk = parse_apps(value, parse_senders(ALLOWED), "mail-outbox")
    assert (billing.messages_per_minute, billing.recipients_per_day) == (10, None)
    assert (bulk.messages_per_minute, bulk.recipients_per_day) == (20, 5000)


def test_mailrelay_apps_passes_the_scheduled_cap_and_an_apps_own_registration_through() -> None:
    from shared.settings import parse_apps, parse_senders

    registration = {"credential": "federated", "clientId": "0c222222-3333-4444-8555-666666666666"}
    declared = [
        {"name": "billing", "senders": ["alerts@contoso.com"], "principals": BILLING, "maxScheduled": 50,
         "graph": registration},
    ]
    value = Deployment(declared).settings["MAILRELAY_APPS"]
    assert json.loads(value) == [
        {"name": "billing", "senders": ["alerts@contoso.com"], "maxScheduled": 50, "graph": registration}
    ]
    env = {"GRAPH_TENANT_ID": "11111111-2222-3333-4444-555555555555",
           "AZURE_CLIENT_ID": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"}
    (billing,) = parse_apps(value, parse_senders(ALLOWED), "mail-outbox", env)
    assert billing.max_scheduled == 50 and billing.graph is not None and billing.graph.mode == "federated"


def test_a_deployment_without_apps_is_todays() -> None:
    """apps = []: the four relay queues, the three containers, the outbox's senders on the outbox and mail-payloads,
    no app module, and MAILRELAY_APPS '[]', which the relay reads as no app at all."""
    from shared.settings import parse_apps, parse_senders

    deployment = Deployment([], sender_principal_ids=[OUTBOX_SENDER])
    assert set(deployment.queues) == RELAY_QUEUES and len(deployment.queues) == 4
    assert deployment.containers[1:] == ["mail-relay-overflow", "mail-payloads"]
    assert deployment.containers[0].startswith("app-package-") and len(deployment.containers) == 3
    assert deployment.tables == RELAY_TABLES
    assert deployment.app_modules == []
    assert deployment.refused == {}
    assert deployment.roles_of(OUTBOX_SENDER) == {
        (ROLE_QUEUE_DATA_MESSAGE_SENDER, "queues", "mail-outbox"),
        (ROLE_BLOB_DATA_CONTRIBUTOR, "containers", "mail-payloads"),
    }
    assert deployment.settings["MAILRELAY_APPS"] == "[]"
    assert parse_apps("[]", parse_senders(ALLOWED), "mail-outbox") == ()


# --------------------------------------------------------------------------------------------
# The declaration's checks
# --------------------------------------------------------------------------------------------


def declared(*names: str, senders: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"name": n, "senders": senders or ["billing@contoso.com"], "principals": BILLING} for n in names]


@pytest.mark.parametrize(
    ("apps", "rule", "refused"),
    [
        (declared("a"), "namesOfWrongLength", ["a"]),
        (declared("x" * 25), "namesOfWrongLength", ["x" * 25]),
        (declared("Billing"), "namesWithOtherCharacters", ["Billing"]),
        (declared("bill_ing"), "namesWithOtherCharacters", ["bill_ing"]),
        (declared("bill.ing"), "namesWithOtherCharacters", ["bill.ing"]),
        (declared("bïlling"), "namesWithOtherCharacters", ["bïlling"]),
        (declared("1billing"), "namesNotStartingWithALetter", ["1billing"]),
        (declared("-billing"), "namesNotStartingWithALetter", ["-billing"]),
        (declared("bill--ing"), "namesWithMisplacedHyphens", ["bill--ing"]),
        (declared("billing-"), "namesWithMisplacedHyphens", ["billing-"]),
        (declared("retry"), "namesReserved", ["retry"]),
        (declared("poison"), "namesReserved", ["poison"]),
        (declared("retry-poison"), "namesReserved", ["retry-poison"]),
        (declared("default"), "namesReserved", ["default"]),
        (declared("billing", "hr", "billing"), "namesDeclaredTwice", ["billing", "billing"]),
        (declared("billing", "billing-poison"), "namesTakingAPoisonQueue", ["billing-poison"]),
        ([{"name": "billing", "senders": []}], "namesWithoutSenders", ["billing"]),
        ([{"name": "billing"}], "namesWithoutSenders", ["billing"]),
        (declared("billing", senders=["ceo@contoso.com"]), "namesWithSendersNotAllowed", ["billing"]),
        (declared("billing-eu", "billingeu"), "namesSharingAStatusTable", ["billing-eu", "billingeu"]),
        (declared("hr", "a-b-c", "ab-c"), "namesSharingAStatusTable", ["a-b-c", "ab-c"]),
    ],
)
def test_a_declaration_that_breaks_a_rule_is_refused_naming_the_rule(
    apps: list[dict[str, Any]], rule: str, refused: list[str]
) -> None:
    deployment = Deployment(apps)
    assert deployment.refused.get(rule) == refused, deployment.refused


def test_apps_whose_names_differ_only_by_hyphens_are_refused_as_they_would_share_a_status_table() -> None:
    """billing-eu and billingeu: two queues, two containers, one table, mailstatusbillingeu. The relay refuses such a
    declaration at start; the template refuses it before the storage account gets anything."""
    deployment = Deployment(declared("billing-eu", "billingeu"))
    assert deployment.refused == {"namesSharingAStatusTable": ["billing-eu", "billingeu"]}
    assert deployment.tables[2:] == ["mailstatusbillingeu", "mailstatusbillingeu"]
    # Not the rule's business: the same name twice (namesDeclaredTwice), and names whose hyphen-less forms differ.
    assert "namesSharingAStatusTable" not in Deployment(declared("billing", "billing")).refused
    assert Deployment(declared("billing-eu", "billing-e", "billing", "bill-ing-eu2")).refused == {}


def test_senders_are_compared_as_the_relay_compares_them() -> None:
    """Exchange addresses are case-insensitive and ALLOWED_SENDERS may hold spaces: the relay lower-cases and trims
    (shared/settings.py parse_senders), and so does the check."""
    deployment = Deployment(declared("billing", senders=["Billing@Contoso.com", " hr-noreply@contoso.com"]))
    assert deployment.refused == {}


@pytest.mark.parametrize(
    "name",
    ["ab", "billing", "a1", "a-b", "x" * 24, "hr-2", "billing-poison",
     "a", "x" * 25, "1ab", "-ab", "ab-", "a--b", "Billing", "bill_ing", "bill ing", "bïlling", "default", "retry",
     "poison", "retry-poison"],
)
def test_the_template_refuses_exactly_the_names_the_relay_refuses(name: str) -> None:
    from shared.apps import is_declarable

    assert (Deployment(declared(name)).refused == {}) == is_declarable(name), Deployment(declared(name)).refused


def test_each_rule_is_a_parameter_that_takes_no_name_and_the_storage_account_waits_for_the_check() -> None:
    check = Template(APPS_CHECK, {})
    params = check.of_kind("param")
    assert set(params) == set(Deployment([]).checks), "main.bicep passes one list per rule apps-check.bicep declares"
    for name, d in params.items():
        assert d.type == "array"
        (limit,) = d.decorators["maxLength"]
        assert limit == ("lit", 0), f"{name} must take no element"
        assert "description" in d.decorators
    assert not check.of_kind("resource") and not check.of_kind("module"), "the check creates nothing"
    storage = main_template().declared["storage"].value
    assert storage is not None
    depends = dict(storage[1])["dependsOn"]
    assert ("name", "appDeclarationCheck") in depends[1], "the storage account must wait for the check"
    # The app modules need the storage account's name, so they run after it (and after the check).
    for module in Deployment(APPS).app_modules:
        assert module["params"]["storageAccountName"] == Ref("storage.outputs.name")


def test_the_apps_parameter_defaults_to_none_and_the_parameters_file_passes_an_array() -> None:
    main = main_template()
    d = main.declared["apps"]
    assert (d.type, d.value) == ("array", ("array", []))
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert given["apps"]["value"] == []
