"""The alerts and the workbook (infra/app/monitoring.bicep, monitoring-workbook.json) against what the relay emits.

No query engine runs here. Instead every query is read as deployed (the alert rules evaluated by
tests/infra/bicep_eval.py for a parameter set, the workbook's queries from its JSON), and every event name, dimension
name (customDimensions.X, customDimensions["X"]), metric name ("mailrelay.x") and dimension value it compares with is
held to what the relay really emits in tests/unit/test_telemetry.py's scenarios (emitted(), emitted_values(): records
and metric points read back from the real delivery code and timers). A renamed dimension therefore fails here, not on
the on-call rota; test_the_checker_* prove the check fails on such a rename. The rest pins what issue 21 asks of the
alerts: one per case, split by the dimensions an admin needs (a dead letter's code with its hint), never matching
message text (an app writes it), each sent to the action group, thresholds from main.bicep's parameters; and the
settings that make the dimensions arrive at all (host.json's telemetryMode, the worker's Azure Monitor distro
settings).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from shared import telemetry
from tests.infra.bicep_eval import Ref, Template
from tests.infra.test_wiring import app_settings, main_template
from tests.unit.test_telemetry import emitted, emitted_values

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "infra" / "app" / "monitoring.bicep"
WORKBOOK = ROOT / "infra" / "app" / "monitoring-workbook.json"
MAIN = ROOT / "infra" / "main.bicep"
APP_INSIGHTS_ID = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Insights/components/appi-mailrelay"
PARAMS = {"namePrefix": "mailrelay-test", "appInsightsId": APP_INSIGHTS_ID, "alertEmail": "ops@contoso.com"}

# What the issue asks the alerts to watch, by rule name.
RULES = {
    "deadlettered",
    "poison-depth",
    "throttled",
    "unknown-outcome",
    "credential-critical",
    "credential-warning",
    "recipient-budget",
    "mail-waiting",
}


@dataclass(frozen=True)
class Query:
    where: str  # "alert <rule>" or "workbook <item>"
    text: str


@dataclass(frozen=True)
class Catalog:
    events: Mapping[str, set[str]]  # event name -> the dimensions its records carry
    metrics: Mapping[str, set[str]]  # metric name -> its attributes (customDimensions in customMetrics)
    values: Mapping[str, set[str]]  # dimension -> the values it took


@cache
def relay_catalog() -> Catalog:
    events, metrics = emitted()
    return Catalog(events, metrics, emitted_values())


def alert_rules(**params: Any) -> dict[str, dict[str, Any]]:
    """Each scheduledQueryRules resource of monitoring.bicep as deployed for `params`, by its rule name."""
    template = Template(MONITORING, {**PARAMS, **params})
    bodies = template.instances(template.declared["alerts"].value)  # type: ignore[arg-type]
    prefix = f"alert-{template.value('namePrefix')}-"
    return {body["name"].removeprefix(prefix): body for body in bodies}


def workbook() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(WORKBOOK.read_text(encoding="utf-8"))
    return data


def workbook_items(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("type") == 3 and isinstance(node.get("content"), dict):
            yield node
        for value in node.values():
            yield from workbook_items(value)
    elif isinstance(node, list):
        for value in node:
            yield from workbook_items(value)


def queries() -> list[Query]:
    found = [
        Query(f"alert {name}", body["properties"]["criteria"]["allOf"][0]["query"])
        for name, body in alert_rules().items()
    ]
    found += [Query(f"workbook {item['name']}", item["content"]["query"]) for item in workbook_items(workbook())]
    return found


# --- Reading a query ------------------------------------------------------------------------------------------------

_LITERAL = re.compile(r'"([^"\\]*)"')
_EVENT_FILTER = re.compile(r'customDimensions(?:\.event|\["event"\])\)?\s*(?:==\s*("[^"]*")|in\s*\(([^)]*)\))')
_DIMENSION = re.compile(r"customDimensions(?:\.(\w+)|\[\s*\"(\w+)\"\s*\])")
_COMPARISON = re.compile(r"\b(\w+)\s*(?:==\s*(\"[^\"]*\")|\bin\s*\(([^)]*)\))")


def literals(text: str) -> list[str]:
    return _LITERAL.findall(text)


def code(text: str) -> str:
    """The query without its string literals: what is left are operators, columns and functions."""
    return _LITERAL.sub('""', text)


def metric_names(text: str) -> set[str]:
    return {lit for lit in literals(text) if lit.startswith("mailrelay.")}


def event_names(text: str) -> set[str]:
    """The literals a query compares customDimensions.event with (`== "x"`, `in ("x", "y")`)."""
    return {lit for single, many in _EVENT_FILTER.findall(text) for lit in literals(single or many)}


def dimension_names(text: str) -> set[str]:
    return {a or b for a, b in _DIMENSION.findall(text)}


def compared_values(text: str) -> dict[str, set[str]]:
    """Column -> the literals a query compares it with (`col == "x"`, `col in ("x", "y")`)."""
    out: dict[str, set[str]] = {}
    for column, single, many in _COMPARISON.findall(text):
        out.setdefault(column, set()).update(literals(single or many))
    return out


def problems(query: Query, catalog: Catalog) -> list[str]:
    """What in `query` the relay does not emit: unknown events or metrics, a dimension none of the query's events or
    metrics carries, a dimension value the relay never gives it."""
    found: list[str] = []
    events, metrics = event_names(query.text), metric_names(query.text)
    for name in sorted(events - set(catalog.events)):
        found.append(f"{query.where}: event {name!r} is not emitted")
    for name in sorted(metrics - set(catalog.metrics)):
        found.append(f"{query.where}: metric {name!r} is not emitted")
    for lit in sorted(set(literals(query.text)) - events - metrics):
        if re.fullmatch(r"[a-z]+(?:[._-][a-z]+)*\.[a-z_]+", lit):
            found.append(f"{query.where}: {lit!r} looks like an event or metric name but is compared with neither")
    if re.search(r"\btraces\b", query.text) and not events:
        found.append(f"{query.where}: reads traces without naming an event")
    if re.search(r"\bcustomMetrics\b", query.text) and not metrics:
        found.append(f"{query.where}: reads customMetrics without naming a metric")
    carried: set[str] = set()
    for name in events:
        carried |= catalog.events.get(name, set())
    for name in metrics:
        carried |= catalog.metrics.get(name, set())
    for dimension in sorted(dimension_names(query.text) - carried):
        found.append(f"{query.where}: dimension {dimension!r} is carried by none of {sorted(events | metrics)}")
    for column, values in compared_values(query.text).items():
        if column in ("name", "event") or column not in catalog.values:
            continue  # metric and event names are checked above; a computed column is not a dimension
        for value in sorted(values - catalog.values[column]):
            found.append(f"{query.where}: {column} is never {value!r} (it is one of {sorted(catalog.values[column])})")
    return found


# --- Every name the alerts and the workbook use is one the relay emits --------------------------------------------


def test_every_alert_and_workbook_query_uses_only_names_and_values_the_relay_emits() -> None:
    all_queries = queries()
    assert {q.where for q in all_queries} >= {f"alert {name}" for name in RULES}
    assert sum(q.where.startswith("workbook") for q in all_queries) >= 10
    found = [problem for q in all_queries for problem in problems(q, relay_catalog())]
    assert found == []


def test_the_queries_compare_only_plain_double_quoted_literals() -> None:
    """The name extraction reads "..." literals; a 'single-quoted' or escaped one would hide a name from it."""
    for q in queries():
        assert "'" not in q.text and "\\" not in q.text, q.where


def test_the_checker_fails_on_a_renamed_dimension_event_metric_or_value() -> None:
    catalog = relay_catalog()
    (dead,) = [q for q in queries() if q.where == "alert deadlettered"]
    assert problems(dead, catalog) == []
    renamed = Query(dead.where, dead.text.replace("customDimensions.hint", "customDimensions.fix"))
    assert problems(renamed, catalog) == [f"{dead.where}: dimension 'fix' is carried by none of ['mail.deadlettered']"]
    dropped = Catalog(
        {**catalog.events, "mail.deadlettered": catalog.events["mail.deadlettered"] - {"hint"}},
        catalog.metrics,
        catalog.values,
    )
    assert problems(dead, dropped) == [f"{dead.where}: dimension 'hint' is carried by none of ['mail.deadlettered']"]
    other_event = Query(dead.where, dead.text.replace('"mail.deadlettered"', '"mail.dead_lettered"'))
    assert any("event 'mail.dead_lettered' is not emitted" in p for p in problems(other_event, catalog))
    (poison,) = [q for q in queries() if q.where == "alert poison-depth"]
    other_metric = Query(poison.where, poison.text.replace('"mailrelay.queue_depth"', '"mailrelay.queue_length"'))
    assert any("metric 'mailrelay.queue_length' is not emitted" in p for p in problems(other_metric, catalog))
    other_kind = Query(poison.where, poison.text.replace('"retry-poison"', '"retry_poison"'))
    assert problems(other_kind, catalog) == [
        f"{poison.where}: queue is never 'retry_poison' (it is one of ['outbox', 'poison', 'retry', 'retry-poison'])"
    ]


def test_the_checker_reads_bracketed_dimensions_too() -> None:
    text = 'traces | where tostring(customDimensions["event"]) == "mail.sent" | extend x = customDimensions["nope"]'
    q = Query("t", text)
    assert problems(q, relay_catalog()) == ["t: dimension 'nope' is carried by none of ['mail.sent']"]


def test_gauges_are_never_summed() -> None:
    """A gauge's last value is exported again every minute by each process that set it: its sum means nothing."""
    gauges = {name for name, (kind, _, _) in telemetry.METRICS.items() if kind == "gauge"}
    counters = {name for name, (kind, _, _) in telemetry.METRICS.items() if kind == "counter"}
    for q in queries():
        used = metric_names(q.text)
        if used & gauges and not used & counters:
            assert "sum(" not in code(q.text) and "sumif(" not in code(q.text), q.where


# --- Never the message text ----------------------------------------------------------------------------------------


def test_no_query_reads_the_message_text_or_matches_by_substring() -> None:
    """The message carries what an app wrote (its request id is `key=<id>` there): an app choosing the id
    "secret.expiry" must not fire the credential alerts. Only exact comparisons of the dimensions."""
    for q in queries():
        body = code(q.text)
        assert not re.search(r"\bmessage\b", body), q.where
        for operator in (
            "has",
            "contains",
            "startswith",
            "endswith",
            "hasprefix",
            "hassuffix",
            "matches",
            "like",
            "search",
            "has_any",
            "has_all",
            "in~",
            "=~",
        ):
            assert not re.search(rf"(?<![\w.]){re.escape(operator)}(?![\w])", body), (q.where, operator)
        for match in re.finditer(r"customDimensions(?:\.event|\[\"event\"\])\)?\s*(\S+)", body):
            assert match.group(1) in ("==", "in"), (q.where, match.group(0))


def test_the_credential_alerts_match_the_expiry_event_exactly_and_by_state() -> None:
    rules = alert_rules()
    for name, state in (("credential-critical", "critical"), ("credential-warning", "warning")):
        query = rules[name]["properties"]["criteria"]["allOf"][0]["query"]
        assert event_names(query) == {"secret.expiry"}
        assert 'tostring(customDimensions.event) == "secret.expiry"' in query
        assert compared_values(query)["state"] == {state}
    # The check's own troubles are other events, which an exact comparison leaves out.
    assert {"secret.expiry.store", "secret.expiry.channel"} <= set(telemetry.EVENTS)


# --- The rules ----------------------------------------------------------------------------------------------------


def criterion(rule: dict[str, Any]) -> dict[str, Any]:
    (only,) = rule["properties"]["criteria"]["allOf"]
    result: dict[str, Any] = only
    return result


def test_there_is_one_rule_per_case_and_each_watches_what_it_says() -> None:
    rules = alert_rules()
    assert set(rules) == RULES
    queries_by_rule = {name: criterion(rule)["query"] for name, rule in rules.items()}
    watched = {name: (event_names(q), metric_names(q)) for name, q in queries_by_rule.items()}
    assert watched == {
        "deadlettered": ({"mail.deadlettered"}, set()),
        "poison-depth": (set(), {"mailrelay.queue_depth"}),
        "throttled": (set(), {"mailrelay.throttled"}),
        "unknown-outcome": (set(), {"mailrelay.unknown"}),
        "credential-critical": ({"secret.expiry"}, set()),
        "credential-warning": ({"secret.expiry"}, set()),
        "recipient-budget": (set(), {"mailrelay.mailbox_recipients_used"}),
        "mail-waiting": (set(), {"mailrelay.queue_depth", "mailrelay.sent"}),
    }
    assert compared_values(criterion(rules["poison-depth"])["query"])["queue"] == {"poison", "retry-poison"}
    assert compared_values(criterion(rules["mail-waiting"])["query"])["queue"] == {"outbox"}


def test_each_alert_splits_by_dimensions_that_are_columns_of_its_query() -> None:
    rules = alert_rules()
    for name, rule in rules.items():
        c = criterion(rule)
        dims = [d["name"] for d in c["dimensions"]]
        assert 1 <= len(dims) <= 6, name  # six per rule at most (alerts-create-log-alert-rule, "Split by dimensions")
        assert all(d["operator"] == "Include" and d["values"] == ["*"] for d in c["dimensions"]), name
        project = c["query"].strip().splitlines()[-1]
        assert project.startswith("| project timestamp, "), name
        columns = [part.strip().split(" = ")[0] for part in project.removeprefix("| project ").split(",")]
        assert set(dims) <= set(columns) and c["metricMeasureColumn"] in columns, name
        assert c["timeAggregation"] in ("Total", "Maximum"), name
    assert [d["name"] for d in criterion(rules["deadlettered"])["dimensions"]][:2] == ["code", "hint"]
    assert {d["name"] for d in criterion(rules["recipient-budget"])["dimensions"]} == {"sender"}


def test_every_alert_notifies_through_the_action_group_and_fires_without_one() -> None:
    for rule in alert_rules().values():
        props = rule["properties"]
        assert rule["kind"] == "LogAlert" and props["enabled"] is True and props["autoMitigate"] is True
        assert props["scopes"] == [APP_INSIGHTS_ID]
        assert props["actions"] == {"actionGroups": [Ref("actionGroup.outputs.resourceId")]}
    for rule in alert_rules(alertEmail="").values():
        assert rule["properties"]["actions"] == {"actionGroups": []}
    text = MONITORING.read_text(encoding="utf-8")
    assert re.search(r"module actionGroup '[^']+' = if \(!empty\(alertEmail\)\)", text)
    assert "actions: {\n      actionGroups: actionGroupIds\n    }" in text


def test_the_thresholds_come_from_the_parameters() -> None:
    defaults = alert_rules()
    assert criterion(defaults["throttled"])["threshold"] == 10
    assert criterion(defaults["recipient-budget"])["threshold"] == 80
    assert "ago(30m)" in criterion(defaults["mail-waiting"])["query"]
    changed = alert_rules(throttledAlertThreshold=3, mailboxRecipientsAlertPercent=90, mailWaitingAlertMinutes=45)
    assert criterion(changed["throttled"])["threshold"] == 3
    assert criterion(changed["recipient-budget"])["threshold"] == 90
    waiting = criterion(changed["mail-waiting"])["query"]
    assert "ago(45m)" in waiting and "ago(35m)" in waiting and "__" not in waiting
    assert "45 minutes" in changed["mail-waiting"]["properties"]["description"]


def test_main_wires_the_monitoring_module_with_its_parameters() -> None:
    given = {"throttledAlertThreshold": 4, "mailboxRecipientsAlertPercent": 70, "mailWaitingAlertMinutes": 20}
    params = main_template(alertEmail="ops@contoso.com", **given).module_params("monitoring")
    assert params["appInsightsId"] == Ref("appInsights.outputs.resourceId")
    assert (params["alertEmail"], params["throttledAlertThreshold"]) == ("ops@contoso.com", 4)
    assert (params["mailboxRecipientsAlertPercent"], params["mailWaitingAlertMinutes"]) == (70, 20)
    main = MAIN.read_text(encoding="utf-8")
    assert "module monitoring 'app/monitoring.bicep'" in main and "alerts.bicep" not in main
    assert not (ROOT / "infra" / "app" / "alerts.bicep").exists()


# --- The workbook ---------------------------------------------------------------------------------------------------


def test_the_workbook_runs_on_the_component_over_the_chosen_time_range() -> None:
    data = workbook()
    assert data["version"] == "Notebook/1.0" and data["fallbackResourceIds"] == ["__APP_INSIGHTS_ID__"]
    text = MONITORING.read_text(encoding="utf-8")
    assert "replace(loadTextContent('monitoring-workbook.json'), '__APP_INSIGHTS_ID__', appInsightsId)" in text
    assert "sourceId: appInsightsId" in text
    (parameters,) = [i for i in data["items"] if i["type"] == 9]
    names = {p["name"] for p in parameters["content"]["parameters"]}
    for item in workbook_items(data):
        content = item["content"]
        assert content["queryType"] == 0 and content["resourceType"] == "microsoft.insights/components", item["name"]
        assert content["timeContextFromParameter"] in names, item["name"]
        assert set(re.findall(r"\{(\w+)(?::\w+)?\}", content["query"])) <= names, item["name"]


def test_the_workbook_shows_what_the_issue_asks() -> None:
    by_name = {item["name"]: item["content"]["query"] for item in workbook_items(workbook())}
    volume = by_name["volume-by-app-and-mailbox"]
    outcomes = {"mailrelay.sent", "mailrelay.deadlettered", "mailrelay.retries", "mailrelay.throttled"}
    assert outcomes <= metric_names(volume)
    assert re.search(r"by app, sender\s*$", volume.splitlines()[-2])
    for name, dimension in (
        ("enqueue-to-sent-percentiles", "enqueueToOutcomeMs"),
        ("graph-latency-percentiles", "graphLatencyMs"),
    ):
        assert "percentiles(ms, 50, 95, 99)" in by_name[name] and dimension in dimension_names(by_name[name])
    assert {"mailrelay.enqueue_to_sent", "mailrelay.graph_latency"} <= metric_names(by_name["latency-over-time"])
    assert event_names(by_name["top-deadletter-codes"]) == {"mail.deadlettered"}
    assert "top 10 by letters" in by_name["top-deadletter-codes"]
    assert {"code", "hint"} <= dimension_names(by_name["top-deadletter-codes"])
    assert metric_names(by_name["recipient-budget"]) == {"mailrelay.mailbox_recipients_used"}
    assert "paceLimit" in dimension_names(by_name["paced-waits"])


# --- The settings that make the dimensions arrive --------------------------------------------------------------------


def test_the_worker_exports_the_relays_logger_with_the_azure_monitor_distro() -> None:
    settings = app_settings()
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "'true'"
    assert settings["PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME"] == f"'{telemetry.LOGGER_NAME}'"
    # Entra-only ingestion: the exporter builds its credential from this setting (api.bicep says where).
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "'ClientId=${identityClientId};Authorization=AAD'"
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert re.search(r"^azure-monitor-opentelemetry>=", requirements, re.MULTILINE)


def test_host_json_turns_on_opentelemetry_never_samples_traces_and_the_local_host_still_reads_it() -> None:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    assert host["telemetryMode"] == "OpenTelemetry"
    excluded = host["logging"]["applicationInsights"]["samplingSettings"]["excludedTypes"].split(";")
    assert "Trace" in excluded and "Request" in excluded
    from devstack.host import QueueOptions

    assert QueueOptions.from_host_json(host).batch_size == host["extensions"]["queues"]["batchSize"]


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_rule_says_what_to_do(name: str) -> None:
    rule = alert_rules()[name]
    props = rule["properties"]
    assert props["displayName"].startswith("Graph Mail Relay: ")
    assert 60 <= len(props["description"]) <= 4096  # log search alerts: 4,096 characters at most
    assert re.search(r"mailrelay |infra/README|workbook|Check|Renew|look for", props["description"]), name
