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
    assert table.splitlines()[0].split() == ["UPDATED", "STATE", "ATTEMPTS", "SENDER", "KEY", "LAST", "ERROR"]
    assert "\n" not in table.splitlines()[1] and "ApplicationThrottled" in table
