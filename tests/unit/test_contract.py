"""The send request contract, version 1: cases per rule, valid and invalid (DESIGN.md, "The send request")."""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from shared.contract import (
    MAX_ID_LENGTH,
    MAX_INLINE_ATTACHMENT_BYTES,
    MAX_RECIPIENTS,
    Attachment,
    Body,
    ContractError,
    Recipient,
    SendRequest,
    Violation,
    parse_request,
)

DATA = Path(__file__).parent.parent / "data"
DROP = object()  # a value in `request(...)` overrides that removes the field


def request(**overrides: Any) -> dict[str, Any]:
    """A minimal valid request; keyword `from_` stands for "from", a Python keyword."""
    base: dict[str, Any] = {
        "from": "relay@contoso.com",
        "to": ["ada@contoso.com"],
        "subject": "Hello",
        "body": {"contentType": "text", "content": "Hello, Ada."},
    }
    for key, value in overrides.items():
        key = "from" if key == "from_" else key
        if value is DROP:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def violations(raw: Any) -> dict[str, str]:
    """The violations of an invalid request, rule by field (one violation per field in these tests)."""
    with pytest.raises(ContractError) as caught:
        parse_request(raw)
    found = {v.field: v.rule for v in caught.value.violations}
    assert len(found) == len(caught.value.violations), "two violations on one field"
    return found


def only_violation(raw: Any) -> Violation:
    with pytest.raises(ContractError) as caught:
        parse_request(raw)
    assert len(caught.value.violations) == 1, caught.value.violations
    return caught.value.violations[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- The whole request ---------------------------------------------------------------------------


def test_minimal_request_gets_the_defaults() -> None:
    req = parse_request(request())
    assert req.sender == "relay@contoso.com"
    assert req.to == [Recipient(address="ada@contoso.com")]
    assert (req.cc, req.bcc, req.reply_to, req.attachments, req.headers) == ([], [], [], [], {})
    assert req.importance == "normal"
    assert req.save_to_sent_items is True
    assert req.id is None
    assert req.body == Body(content_type="text", content="Hello, Ada.")


def test_full_example_file_parses_every_field() -> None:
    req = parse_request((DATA / "valid-request.json").read_bytes())
    assert req.sender == "relay@contoso.com"
    assert [r.address for r in req.to] == ["ada@contoso.com", "grace@contoso.com", "alan@contoso.com"]
    assert req.cc == [Recipient(address="ada.lovelace@contoso.com", name="Lovelace, Ada")]
    assert req.bcc == [Recipient(address="audit@contoso.com")]
    assert req.reply_to == [Recipient(address="help@contoso.com", name="Service Desk")]
    assert req.importance == "high"
    assert req.attachments == [
        Attachment(name="invoice.txt", content_type="text/plain", content_bytes=b64(b"Invoice 4711: EUR 42.00"))
    ]
    assert req.headers == {"X-Order-Id": "4711", "x-correlation-id": "c0ffee"}
    assert req.save_to_sent_items is False
    assert req.id == "order-4711-shipped"
    assert req.recipient_count() == 5


def test_bytes_str_and_mapping_give_the_same_request() -> None:
    text = json.dumps(request())
    assert parse_request(text) == parse_request(text.encode()) == parse_request(request())


def test_a_model_serializes_back_to_the_contract() -> None:
    """JSON names out, and the output parses to the same request (what a client library relies on)."""
    req = parse_request((DATA / "valid-request.json").read_bytes())
    dumped = req.model_dump(mode="json")
    assert {"from", "replyTo", "saveToSentItems"} <= dumped.keys()
    assert dumped["attachments"][0].keys() == {
        "name", "contentType", "contentBytes", "blob", "size", "sha256", "isInline", "contentId"
    }
    assert parse_request(req.model_dump_json()) == req


def test_python_code_may_build_a_request_by_attribute_name() -> None:
    req = SendRequest(  # attribute names: Python code may use them (validate_by_name)
        sender="relay@contoso.com",
        to=[Recipient(address="ada@contoso.com")],
        subject="Hi",
        body=Body(content_type="text", content="x"),
        save_to_sent_items=False,
    )
    assert req.save_to_sent_items is False


def test_models_are_frozen() -> None:
    req = parse_request(request())
    with pytest.raises(ValueError, match="frozen"):
        req.subject = "changed"  # type: ignore[misc]


def test_all_violations_are_collected() -> None:
    found = violations((DATA / "invalid-request.json").read_bytes())
    assert set(found) == {
        "from",
        "to[0]",
        "to[1]",
        "subject",
        "body.contentType",
        "importance",
        "attachments[0].contentBytes",
        'headers["Reply-To"]',
        "saveToSentItems",
        "id",
        "priority",
    }


def test_contract_error_text_is_one_field_rule_line_per_violation() -> None:
    with pytest.raises(ContractError) as caught:
        parse_request(request(from_=DROP, subject=DROP))
    assert str(caught.value).splitlines() == [str(v) for v in caught.value.violations]
    assert str(caught.value).splitlines()[0].startswith("from: is required")
    assert isinstance(caught.value, ValueError)


def test_contract_error_survives_pickling() -> None:
    error = ContractError([Violation("subject", "is required")])
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own object
    assert copy.violations == error.violations
    assert str(copy) == "subject: is required"


# --- from ----------------------------------------------------------------------------------------


def test_from_is_required() -> None:
    v = only_violation(request(from_=DROP))
    assert (v.field, v.rule) == ("from", "is required (the sending mailbox, e.g. relay@contoso.com)")


@pytest.mark.parametrize("address", ["relay@contoso.com", "first.last+tag@mail.contoso.co.uk", "a_b@xn--p1ai.xn--p1ai"])
def test_from_accepts_addresses(address: str) -> None:
    assert parse_request(request(from_=address)).sender == address


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("relay", "exactly one @"),
        ("relay@contoso", "top-level domain"),
        ("relay@@contoso.com", "exactly one @"),
        ("re lay@contoso.com", "whitespace"),
        ("relay@contoso.com ", "whitespace"),
        (".relay@contoso.com", "before the @"),
        ("relay@-contoso.com", "domain after the @"),
        ("jürgen@contoso.com", "non-ASCII"),
        ("", "not an empty string"),
        ("Relay <relay@contoso.com>", "without a display name"),
        ("x" * 65 + "@contoso.com", "more than 64 characters before the @"),
    ],
)
def test_from_must_be_a_bare_email_address(address: str, says: str) -> None:
    v = only_violation(request(from_=address))
    assert v.field == "from"
    assert says in v.rule


# --- Recipients ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("ada@contoso.com", Recipient(address="ada@contoso.com")),
        ("Ada Lovelace <ada@contoso.com>", Recipient(address="ada@contoso.com", name="Ada Lovelace")),
        ('"Lovelace, Ada" <ada@contoso.com>', Recipient(address="ada@contoso.com", name="Lovelace, Ada")),
        (
            r'"Ada \"Countess\" Lovelace" <ada@contoso.com>',
            Recipient(address="ada@contoso.com", name='Ada "Countess" Lovelace'),
        ),
        ("<ada@contoso.com>", Recipient(address="ada@contoso.com")),
        ({"address": "ada@contoso.com", "name": "Ada"}, Recipient(address="ada@contoso.com", name="Ada")),
        ({"address": "ada@contoso.com"}, Recipient(address="ada@contoso.com")),
        ({"address": "ada@contoso.com", "name": None}, Recipient(address="ada@contoso.com")),
    ],
)
@pytest.mark.parametrize("field", ["to", "cc", "bcc", "replyTo"])
def test_recipient_forms_normalise_to_recipient(field: str, written: Any, expected: Recipient) -> None:
    req = parse_request(request(**{field: [written]}))
    lists = {"to": req.to, "cc": req.cc, "bcc": req.bcc, "replyTo": req.reply_to}
    assert lists[field] == [expected]


@pytest.mark.parametrize(
    ("written", "field", "says"),
    [
        ("ada@contoso", "to[1]", "top-level domain"),
        ("Ada <ada@contoso>", "to[1]", '"ada@contoso" is not an email address'),
        ("Lovelace, Ada <ada@contoso.com>", "to[1]", "quote a display name that holds a comma"),
        ("ada@contoso.com, bob@contoso.com", "to[1]", "give each recipient its own list item"),
        ("Ada <ada@contoso.com", "to[1]", "is not a valid recipient"),
        ("Ada\r\n <ada@contoso.com>", "to[1]", "must not contain CR, LF or another line break"),
        ({"address": "ada"}, "to[1].address", "exactly one @"),
        ({"name": "Ada"}, "to[1].address", "is required"),
        (
            {"address": "ada@contoso.com", "name": "Ada\nBcc: x"},
            "to[1].name",
            "must not contain CR, LF or another line break",
        ),
        ({"address": "ada@contoso.com", "name": 7}, "to[1].name", "must be a string, not a number (7)"),
        (7, "to[1]", 'must be a recipient: "a@contoso.com", "Ada Lovelace <a@contoso.com>" or {"address"'),
        (["ada@contoso.com"], "to[1]", "must be a recipient"),
    ],
)
def test_invalid_recipients_are_named_by_position(written: Any, field: str, says: str) -> None:
    v = only_violation(request(to=["ok@contoso.com", written]))
    assert v.field == field
    assert says in v.rule


def test_recipient_lists_must_be_lists() -> None:
    v = only_violation(request(to="ada@contoso.com"))
    assert v.field == "to"
    assert "must be a list of recipients" in v.rule and '["a@contoso.com"]' in v.rule


@pytest.mark.parametrize("field", ["to", "cc", "bcc"])
def test_one_recipient_in_any_list_is_enough(field: str) -> None:
    overrides: dict[str, Any] = {"to": DROP, field: ["ada@contoso.com"]}
    assert parse_request(request(**overrides)).recipient_count() == 1


@pytest.mark.parametrize(
    "overrides", [{"to": DROP}, {"to": []}, {"to": [], "cc": [], "bcc": [], "replyTo": ["a@b.co"]}]
)
def test_at_least_one_recipient_in_to_cc_bcc(overrides: dict[str, Any]) -> None:
    v = only_violation(request(**overrides))
    assert v == Violation("to/cc/bcc", "at least one recipient is required in to, cc or bcc")


def test_missing_recipients_are_reported_along_with_other_violations() -> None:
    found = violations(request(to=[], subject=DROP))
    assert set(found) == {"subject", "to/cc/bcc"}


def _addresses(n: int) -> list[str]:
    return [f"user{i}@contoso.com" for i in range(n)]


@pytest.mark.parametrize("split", [(500, 0, 0), (200, 200, 100), (0, 0, 500)])
def test_500_recipients_in_all_are_accepted(split: tuple[int, int, int]) -> None:
    to, cc, bcc = (_addresses(n) for n in split)
    assert parse_request(request(to=to, cc=cc, bcc=bcc)).recipient_count() == MAX_RECIPIENTS


@pytest.mark.parametrize("split", [(501, 0, 0), (200, 200, 101), (0, 1, 500)])
def test_501_recipients_in_all_are_refused(split: tuple[int, int, int]) -> None:
    to, cc, bcc = (_addresses(n) for n in split)
    v = only_violation(request(to=to, cc=cc, bcc=bcc))
    assert v.field == "to/cc/bcc"
    assert "501 recipients" in v.rule and "at most 500" in v.rule


def test_too_many_recipients_are_reported_along_with_other_violations() -> None:
    found = violations(request(to=[*_addresses(500), "not-an-address"]))
    assert set(found) == {"to[500]", "to/cc/bcc"}


def test_reply_to_does_not_count_towards_the_limit() -> None:
    assert parse_request(request(to=_addresses(500), replyTo=_addresses(10))).recipient_count() == 500


# --- subject and body ----------------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["", "Hello", "Ünïcödé ✓", "tab\tinside"])
def test_subject_may_be_any_single_line(subject: str) -> None:
    assert parse_request(request(subject=subject)).subject == subject


@pytest.mark.parametrize(
    ("subject", "says"),
    [
        ("Hello\r\nBcc: all@contoso.com", "carriage return (CR) at character 6"),
        ("Hello\nBcc: all@contoso.com", "line feed (LF) at character 6"),
        ("Hello\r", "carriage return (CR)"),
        ("Hello\n", "line feed (LF)"),
    ],
)
def test_subject_refuses_cr_and_lf(subject: str, says: str) -> None:
    v = only_violation(request(subject=subject))
    assert v.field == "subject"
    assert "must not contain CR, LF or another line break" in v.rule and says in v.rule and "inject" in v.rule


def test_subject_is_required() -> None:
    v = only_violation(request(subject=DROP))
    assert v == Violation("subject", 'is required (use "" for a message without a subject)')


@pytest.mark.parametrize("content_type", ["text", "html"])
def test_body_content_types(content_type: str) -> None:
    body = {"contentType": content_type, "content": "<p>x</p>"}
    assert parse_request(request(body=body)).body.content_type == content_type


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (DROP, "body", "is required"),
        ("Hello", "body", "must be a JSON object, not a string"),
        ({"contentType": "markdown", "content": "x"}, "body.contentType", 'must be "text" or "html"'),
        ({"contentType": "HTML", "content": "x"}, "body.contentType", "lower case"),
        ({"content": "x"}, "body.contentType", "is required"),
        ({"contentType": "text"}, "body.content", "is required"),
        ({"contentType": "text", "content": None}, "body.content", "is required"),
    ],
)
def test_body_rules(body: Any, field: str, says: str) -> None:
    v = only_violation(request(body=body))
    assert v.field == field
    assert says in v.rule


# --- importance, saveToSentItems, id -------------------------------------------------------------


@pytest.mark.parametrize("importance", ["low", "normal", "high"])
def test_importance_values(importance: str) -> None:
    assert parse_request(request(importance=importance)).importance == importance


@pytest.mark.parametrize(
    ("importance", "says"), [("urgent", 'not a string ("urgent")'), ("High", "lower case"), (2, "a number")]
)
def test_importance_refuses_other_values(importance: Any, says: str) -> None:
    v = only_violation(request(importance=importance))
    assert v.field == "importance"
    assert v.rule.startswith('must be "low", "normal" or "high"') and says in v.rule


@pytest.mark.parametrize("value", [True, False])
def test_save_to_sent_items(value: bool) -> None:
    assert parse_request(request(saveToSentItems=value)).save_to_sent_items is value


@pytest.mark.parametrize("key", ["a", "x" * MAX_ID_LENGTH, "order-4711/2024-01-01T00:00:00Z"])
def test_id_of_1_to_128_characters(key: str) -> None:
    assert parse_request(request(id=key)).id == key


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("x" * (MAX_ID_LENGTH + 1), "must be at most 128 characters long, not 129"),
        ("", "must not be empty"),
        (4711, "must be a string, not a number (4711)"),
    ],
)
def test_id_refuses(key: Any, says: str) -> None:
    assert only_violation(request(id=key)) == Violation("id", says)


# --- Strict types --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        (
            {"saveToSentItems": "true"},
            "saveToSentItems",
            'must be true or false (a JSON boolean), not a string ("true")',
        ),
        (
            {"saveToSentItems": 1},
            "saveToSentItems",
            "must be true or false (a JSON boolean), not a number (1)",
        ),
        ({"saveToSentItems": None}, "saveToSentItems", "must be true or false (a JSON boolean), not null"),
        ({"subject": 1}, "subject", "must be a string, not a number (1)"),
        ({"subject": True}, "subject", "must be a string, not a boolean (true)"),
        ({"subject": ["Hi"]}, "subject", "must be a string, not an array"),
        ({"from_": None}, "from", "must be a string, not null"),
        ({"attachments": {}}, "attachments", "must be a list (JSON array), not an object"),
        ({"headers": []}, "headers", "must be a JSON object, not an array"),
        ({"headers": {"X-Count": 3}}, 'headers["X-Count"]', "must be a string, not a number (3)"),
    ],
)
def test_no_type_coercion(overrides: dict[str, Any], field: str, says: str) -> None:
    assert only_violation(request(**overrides)) == Violation(field, says)


# --- Unknown fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"subjet": "Hi"}, "subjet", 'unknown field (did you mean "subject"?)'),
        ({"ReplyTo": ["a@contoso.com"]}, "ReplyTo", 'unknown field (did you mean "replyTo"?)'),
        ({"priority": "high"}, "priority", "unknown field; allowed here: from, to, cc, bcc, replyTo"),
        (
            {"save_to_sent_items": False},
            "save_to_sent_items",
            'in JSON this field is called "saveToSentItems"',
        ),
        (
            {"body": {"contentType": "text", "content": "x", "charset": "utf-8"}},
            "body.charset",
            "allowed here: contentType, content, blob, size, sha256",
        ),
        ({"to": [{"address": "a@contoso.com", "nmae": "Ada"}]}, "to[0].nmae", 'did you mean "name"?'),
        ({"cc": [{"address": "a@contoso.com", "type": "cc"}]}, "cc[0].type", "allowed here: address, name"),
        (
            {"attachments": [{"name": "a", "contentType": "text/plain", "contentBytes": "", "length": 0}]},
            "attachments[0].length",
            "allowed here: name, contentType, contentBytes, blob, size, sha256, isInline, contentId",
        ),
    ],
)
def test_unknown_fields_are_refused_at_every_level(overrides: dict[str, Any], field: str, says: str) -> None:
    v = only_violation(request(**overrides))
    assert v.field == field
    assert v.rule.startswith("unknown field") and says in v.rule


def test_python_names_are_not_json_names() -> None:
    """validate_by_name is for Python code; parse_request takes the contract's names only."""
    found = violations(request(from_=DROP, sender="relay@contoso.com"))
    assert found == {
        "from": "is required (the sending mailbox, e.g. relay@contoso.com)",
        "sender": 'unknown field; in JSON this field is called "from"',
    }
    found = violations(request(body={"content_type": "text", "content": "x"}))
    assert found == {
        "body.contentType": 'is required ("text" or "html")',
        "body.content_type": 'unknown field; in JSON this field is called "contentType"',
    }


# --- Attachments ---------------------------------------------------------------------------------


def attachment(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "a.txt", "contentType": "text/plain", "contentBytes": b64(b"hello")}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


@pytest.mark.parametrize("content", [b"", b"a", b"ab", b"abc", bytes(range(256)), b"x" * MAX_INLINE_ATTACHMENT_BYTES])
def test_attachments_in_standard_base64_up_to_3_mb(content: bytes) -> None:
    req = parse_request(request(attachments=[attachment(contentBytes=b64(content))]))
    assert base64.b64decode(req.attachments[0].content_bytes) == content


def test_attachment_over_3_mb_is_refused_with_the_upload_session_hint() -> None:
    v = only_violation(request(attachments=[attachment(contentBytes=b64(b"x" * (MAX_INLINE_ATTACHMENT_BYTES + 1)))]))
    assert v.field == "attachments[0].contentBytes"
    assert "decodes to 3145729 bytes" in v.rule and "3 MB" in v.rule and "upload session" in v.rule


@pytest.mark.parametrize(
    ("content_bytes", "says"),
    [
        ("not base64!", "whitespace at character 4"),
        ("bm90!", '"!" at character 5'),
        ("aGVsbG8", "padding"),
        ("YWJj=", "padding"),
        ("aGVs\nbG8=", "join wrapped (MIME-style) base64"),
        ("-_-_", "URL-safe"),
        ("aGVsbG8=aGVsbG8=", "padding"),
        (b64(b"hello").encode(), None),  # bytes, not a string
    ],
)
def test_attachment_content_must_be_strict_base64(content_bytes: Any, says: str | None) -> None:
    v = only_violation(request(attachments=[attachment(contentBytes=content_bytes)]))
    assert v.field == "attachments[0].contentBytes"
    if says is None:
        assert v.rule.startswith("must be a string")
    else:
        assert v.rule.startswith("is not valid base64 (standard alphabet") and says in v.rule


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"name": ""}, "attachments[1].name", "must not be empty"),
        ({"name": DROP}, "attachments[1].name", "is required"),
        ({"contentType": ""}, "attachments[1].contentType", "must not be empty"),
        ({"contentType": DROP}, "attachments[1].contentType", "is required"),
        (
                {"contentBytes": DROP},
                "attachments[1].contentBytes",
                'is required (or a claim check instead: "blob", "size" and "sha256" of a blob in mail-payloads)',
            ),
    ],
)
def test_attachment_fields(overrides: dict[str, Any], field: str, says: str) -> None:
    assert only_violation(request(attachments=[attachment(), attachment(**overrides)])) == Violation(field, says)


# --- headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["X-Correlation-Id", "x-lower", "X-Tenant.Region_1", "X-!#$%&'*+-.^_`|~"])
def test_custom_x_headers_are_accepted(name: str) -> None:
    assert parse_request(request(headers={name: "value"})).headers == {name: "value"}


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Subject", 'Graph accepts only custom headers, whose names start with "X-"'),
        ("Subject", 'set it with the "subject" field instead'),
        ("Reply-To", 'set it with the "replyTo" field instead'),
        ("Correlation-Id", 'start with "X-"'),
        ("X-Has Space", "is not a valid header name"),
        ("X-Colon:", "is not a valid header name"),
        ("X-Ünicode", "is not a valid header name"),
        ("X-", 'needs a name after "X-"'),
        ("", 'start with "X-"'),
    ],
)
def test_header_names_must_be_x_tokens(name: str, says: str) -> None:
    v = only_violation(request(headers={name: "value"}))
    assert v.field == f"headers[{json.dumps(name, ensure_ascii=False)}]"
    assert says in v.rule


@pytest.mark.parametrize("value", ["a\r\nBcc: all@contoso.com", "a\nb", "a\r"])
def test_header_values_refuse_cr_and_lf(value: str) -> None:
    v = only_violation(request(headers={"X-Note": value}))
    assert v.field == 'headers["X-Note"]'
    assert "must not contain CR, LF or another line break" in v.rule


def test_five_headers_at_most_as_graph_takes() -> None:
    five = {f"X-H{i}": "v" for i in range(5)}
    assert len(parse_request(request(headers=five)).headers) == 5
    v = only_violation(request(headers={**five, "X-H5": "v"}))
    assert v == Violation("headers", "6 headers; Graph takes at most 5 custom headers per message")


def test_every_bad_header_is_reported() -> None:
    found = violations(request(headers={"Subject": "x", "X-Ok": "fine", "X-Bad": "a\nb", "To": "y"}))
    assert set(found) == {'headers["Subject"]', 'headers["X-Bad"]', 'headers["To"]'}


# --- The raw message -----------------------------------------------------------------------------


def test_utf8_bytes_with_a_byte_order_mark_are_accepted() -> None:
    raw = "\ufeff".encode() + json.dumps(request(subject="Grüße"), ensure_ascii=False).encode()
    assert parse_request(raw).subject == "Grüße"


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"not json", "is not valid JSON: Expecting value (line 1, column 1)"),
        (b'{"from": "a@contoso.com",}', "is not valid JSON: "),
        ("{'from': 'a@contoso.com'}", "is not valid JSON: "),
        (b"[]", "must be a JSON object ({...}), not an array"),
        (b'"hello"', "must be a JSON object ({...}), not a string"),
        (b"null", "must be a JSON object ({...}), not null"),
        (b"42", "must be a JSON object ({...}), not a number (42)"),
        (
            json.dumps(request(subject="Gr\u00fc\u00dfe"), ensure_ascii=False).encode("cp1252"),
            "is not UTF-8 text (byte 0xfc",
        ),
        (json.dumps(request()).encode("utf-16"), "is UTF-16 text"),
        (json.dumps(request()).encode("utf-16-le"), "is UTF-16 text"),
        (json.dumps(json.dumps(request())).encode(), "JSON-encoded twice"),
    ],
)
def test_message_level_problems(raw: bytes | str, says: str) -> None:
    v = only_violation(raw)
    assert v.field == "(message)"
    assert says in v.rule


@pytest.mark.parametrize("as_bytes", [True, False])
def test_double_base64_is_recognised(as_bytes: bool) -> None:
    """The host decodes base64 once; a client that encodes twice hands the relay base64 text."""
    once = b64(json.dumps(request()).encode())
    v = only_violation(once.encode() if as_bytes else once)
    assert v.field == "(message)"
    assert "base64-encoded twice" in v.rule and "messageEncoding" in v.rule


def test_base64_of_something_else_is_just_not_json() -> None:
    v = only_violation(b64(b"[1, 2, 3]"))
    assert v.field == "(message)"
    assert v.rule.startswith("is not valid JSON") and "base64" not in v.rule


def test_other_python_types_are_a_programming_error() -> None:
    with pytest.raises(TypeError, match="bytes, str or a mapping"):
        parse_request(42)  # type: ignore[arg-type]


# --- Inline images ----------------------------------------------------------------------------------------

PIXEL = "R0lGODlhAQABAAAAACw="  # a GIF's first bytes: the content is not what these tests check


def inline(**fields: Any) -> dict[str, Any]:
    return {"name": "logo.gif", "contentType": "image/gif", "contentBytes": PIXEL, **fields}


def test_an_inline_image_with_its_content_id_is_accepted_and_sent_as_graph_takes_it() -> None:
    from shared.graph import build_send_mail_body

    raw = {
        "from": "relay@contoso.com",
        "to": ["ada@contoso.com"],
        "subject": "Report",
        "body": {"contentType": "html", "content": '<p>Hi</p><img src="cid:logo-1@contoso">'},
        "attachments": [inline(isInline=True, contentId="logo-1@contoso"), inline(name="report.gif")],
    }
    body = build_send_mail_body(parse_request(json.dumps(raw)))
    first, second = body["message"]["attachments"]
    assert first["isInline"] is True and first["contentId"] == "logo-1@contoso"
    assert "isInline" not in second and "contentId" not in second  # an ordinary attachment stays as it was


@pytest.mark.parametrize(
    ("attachment", "words"),
    [
        (inline(isInline=True), "is required for an inline attachment"),
        (inline(isInline=True, contentId="<logo>"), "angle brackets"),
        (inline(isInline=True, contentId="my logo"), "without spaces"),
        (inline(isInline=True, contentId="x" * 256), "at most 255"),
        (inline(isInline="yes", contentId="a"), "boolean"),
    ],
)
def test_a_broken_inline_image_is_refused_naming_the_rule(attachment: dict[str, Any], words: str) -> None:
    raw = {
        "from": "relay@contoso.com",
        "to": ["ada@contoso.com"],
        "subject": "s",
        "body": {"contentType": "html", "content": "x"},
        "attachments": [attachment],
    }
    with pytest.raises(ContractError) as caught:
        parse_request(json.dumps(raw))
    assert words in str(caught.value) and "attachments[0]" in str(caught.value)
