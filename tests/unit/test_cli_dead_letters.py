"""`mailrelay dead-letters` output: the human table."""

from __future__ import annotations

from shared.cli.dead_letters import dead_letter_table
from shared.deadletters import parse_dead_letter
from shared.outcomes import dead_letter_envelope, permanent
from shared.queues import encode


def test_the_table_has_one_line_per_dead_letter_and_no_body() -> None:
    request = {"from": "hr@contoso.com", "to": ["a@contoso.com"], "subject": "s",
               "body": {"contentType": "text", "content": "private body text"}}
    letters = [
        parse_dead_letter("id-1", encode(dead_letter_envelope(request, permanent("ErrorAccessDenied", "denied"), 1))),
        parse_dead_letter("id-2", "not base64!"),
    ]
    table = dead_letter_table(letters, hint_width=40)
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "FAILED", "AT", "CODE", "SENDER", "HINT"]
    assert "ErrorAccessDenied" in lines[1] and "hr@contoso.com" in lines[1] and lines[1].endswith("…")
    assert "InvalidEncoding" in lines[2]
    assert "private body text" not in table
