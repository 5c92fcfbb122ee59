"""`mailrelay status`: its command line and what it prints, without storage (the e2e test reads Azurite)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.cli import main
from shared.cli.common import UsageError
from shared.cli.status import parse_span, status_details, status_table
from shared.status import StatusKey, StatusRecord


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("1h", 3600), ("2d", 172800), ("1.5h", 5400)])
def test_spans_parse(text: str, seconds: int) -> None:
    assert parse_span(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["1w", "h", "-1h", "yesterday"])
def test_bad_spans_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(UsageError, match="30m, 1h or 2d"):
        parse_span(text)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["status"], "give a KEY"),
        (["status", "k", "--since", "1h"], "not both"),
        (["status", "k", "--state", "sent"], "--state goes with --since"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_a_record_is_shown_on_one_line_per_field_with_app_text_escaped() -> None:
    now = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    record = StatusRecord(
        key=StatusKey("alerts@contoso.com", "id", "order\n42\x1b[31m"),
        state="retrying",
        attempts=2,
        created_at=now,
        updated_at=now,
        last_error_code="ApplicationThrottled",
        recipients=3,
        recipient_domains="contoso.com,fabrikam.example",
    )
    shown = status_details(record)
    assert "\x1b" not in shown and "order\\x0a42" in shown
    assert "state:            retrying" in shown and "recipientDomains: contoso.com, fabrikam.example" in shown
    table = status_table([record])
    assert table.splitlines()[0].split() == ["UPDATED", "STATE", "ATTEMPTS", "APP", "SENDER", "KEY", "LAST", "ERROR"]
    assert "\n" not in table.splitlines()[1] and "ApplicationThrottled" in table


def _record(app: str, state: str, when: datetime) -> StatusRecord:
    key = StatusKey("billing@contoso.com", "id", "inv-1", app)
    return StatusRecord(key=key, state=state, attempts=1, created_at=when, updated_at=when)


@pytest.fixture
def two_apps_one_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two apps' records under one key and sender (ids are per app), and the default app's."""
    from shared.cli import status
    from shared.status import MemoryStatusStore

    stores = {app: MemoryStatusStore() for app in ("billing", "hr", "default")}  # a table each, as in Storage
    now = datetime.now(UTC)
    for app, state in (("billing", "sent"), ("hr", "dead-lettered"), ("default", "queued")):
        assert stores[app].create(_record(app, state, now)) is not None

    def tables(conn: object, app: str | None) -> list[MemoryStatusStore]:
        return list(stores.values()) if app is None else [stores.get(app, MemoryStatusStore())]

    monkeypatch.setattr(status, "status_stores", tables)
    monkeypatch.delenv("AzureWebJobsStorage", raising=False)


REMOTE = [
    "--connection-string",
    "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=a2V5;QueueEndpoint=https://a.queue.core.windows.net;",
]


def test_status_app_shows_only_that_apps_record_of_a_key_and_each_record_names_its_app(
    two_apps_one_key: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    assert main(["status", "inv-1", "--app", "billing", "--json", *REMOTE]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["app"], record["state"]) == ("billing", "sent")
    assert main(["status", "inv-1", "--json", *REMOTE]) == 0
    assert sorted(r["app"] for r in json.loads(capsys.readouterr().out)) == ["billing", "default", "hr"]
    assert main(["status", "inv-1", "--app", "default", *REMOTE]) == 0
    assert "app:              default" in capsys.readouterr().out
    assert main(["status", "inv-1", "--app", "payroll", *REMOTE]) == 1
    assert "no record for 'inv-1' of app payroll" in capsys.readouterr().err


def test_status_since_app_lists_that_apps_records_with_the_app_column(
    two_apps_one_key: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--since", "1h", "--app", "hr", *REMOTE]) == 0
    _header, *rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 1 and rows[0].split()[2:5] == ["dead-lettered", "1", "hr"]
    assert main(["status", "--since", "1h", "--app", "payroll", *REMOTE]) == 0
    assert "of app payroll" in capsys.readouterr().out
    assert main(["status", "--since", "1h", *REMOTE]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_status_from_a_sender_finds_each_apps_record_of_the_key(
    two_apps_one_key: None, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    assert main(["status", "inv-1", "--from", "Billing@contoso.com", "--app", "hr", "--json", *REMOTE]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "dead-lettered"
    assert main(["status", "inv-1", "--from", "billing@contoso.com", "--json", *REMOTE]) == 0
    assert sorted(r["app"] for r in json.loads(capsys.readouterr().out)) == ["billing", "default", "hr"]
    assert main(["status", "inv-1", "--from", "other@contoso.com", *REMOTE]) == 1
