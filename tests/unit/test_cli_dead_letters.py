"""`mailrelay dead-letters` output: the human table."""

from __future__ import annotations

from shared.cli.dead_letters import dead_letter_details, dead_letter_table
from shared.deadletters import parse_dead_letter
from shared.outcomes import dead_letter_envelope, permanent
from shared.queues import encode


def test_the_table_has_one_line_per_dead_letter_and_no_body() -> None:
    request = {
        "from": "hr@contoso.com",
        "to": ["a@contoso.com"],
        "subject": "s",
        "body": {"contentType": "text", "content": "private body text"},
    }
    letters = [
        parse_dead_letter("id-1", encode(dead_letter_envelope(request, permanent("ErrorAccessDenied", "denied"), 1))),
        parse_dead_letter("id-2", "not base64!"),
    ]
    table = dead_letter_table(letters, hint_width=40)
    lines = table.splitlines()
    assert lines[0].split() == ["KEY", "FAILED", "AT", "APP", "CODE", "SENDER", "HINT"]
    assert "ErrorAccessDenied" in lines[1] and "hr@contoso.com" in lines[1] and lines[1].endswith("…")
    assert "InvalidEncoding" in lines[2]
    assert "private body text" not in table


REQUEST = {
    "from": "billing@contoso.com",
    "to": ["a@contoso.com"],
    "subject": "s",
    "body": {"contentType": "text", "content": "x"},
}


def test_the_table_and_the_details_name_each_letters_app() -> None:
    refused = permanent("SenderNotAllowedForApp", "app 'billing' may not send as hr@contoso.com")
    letters = [
        parse_dead_letter("id-1", encode(dead_letter_envelope(REQUEST, refused, 0, app="billing"))),
        parse_dead_letter("id-2", encode(dead_letter_envelope(REQUEST, refused, 0))),  # written before apps
    ]
    header, billing, before = dead_letter_table(letters).splitlines()
    app_column = header.index("APP")
    assert billing[app_column:].split()[0] == "billing"
    assert before[app_column:].split()[0] == "default"
    assert "app:          billing" in dead_letter_details(letters[0]).splitlines()


def test_an_app_name_an_envelope_holds_is_escaped_in_the_table() -> None:
    refused = permanent("SenderNotAllowedForApp", "no")
    letter = parse_dead_letter("id-1", encode(dead_letter_envelope(REQUEST, refused, 0, app="a\x1b[31mb\nc")))
    table = dead_letter_table([letter])
    assert "\x1b" not in table and len(table.splitlines()) == 2


def test_the_table_names_each_letter_by_the_key_send_printed() -> None:
    failure = permanent("SenderNotAllowed", "no")
    letters = [
        parse_dead_letter("poison-1", encode(dead_letter_envelope(REQUEST, failure, 0, queue_message_id="sent-1"))),
        parse_dead_letter("poison-2", encode(dead_letter_envelope({**REQUEST, "id": "inv-7"}, failure, 0))),
    ]
    header, first, second = dead_letter_table(letters).splitlines()
    assert header.split()[0] == "KEY" and first.split()[0] == "sent-1" and second.split()[0] == "inv-7"
    assert "poison-" not in first + second
    details = dead_letter_details(letters[0]).splitlines()
    assert "key:          sent-1" in details and "mailrelay dead-letters requeue sent-1" in "\n".join(details)
