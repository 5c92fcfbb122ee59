"""The shipped JSON Schema: generated from the models, and in step with them for apps in other languages."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mailrelay_client import violations as client_violations

from shared.contract import CLIENT_SCHEMA_PATH, SCHEMA_PATH, ContractError, json_schema, parse_request, render_schema

DATA = Path(__file__).parent.parent / "data"
REGENERATE = "regenerate it with: python -m shared.contract --write-schema (and commit the file)"


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_PATH.exists(), f"{SCHEMA_PATH} is missing; {REGENERATE}"
    committed = SCHEMA_PATH.read_text(encoding="utf-8")
    assert json.loads(committed) == json_schema(), f"{SCHEMA_PATH.name} is out of date with the models; {REGENERATE}"
    # A checkout with CRLF line endings is still the same file.
    assert committed.replace("\r\n", "\n") == render_schema(), f"{SCHEMA_PATH.name} is not formatted; {REGENERATE}"


def test_the_client_ships_the_same_schema() -> None:
    assert CLIENT_SCHEMA_PATH.exists(), f"{CLIENT_SCHEMA_PATH} is missing; {REGENERATE}"
    assert CLIENT_SCHEMA_PATH.read_text(encoding="utf-8").replace("\r\n", "\n") == render_schema(), (
        f"the client's copy of {SCHEMA_PATH.name} is out of date; {REGENERATE}"
    )


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"]
    Draft202012Validator.check_schema(schema)


def test_description_names_the_rules_only_the_relay_enforces() -> None:
    description = json_schema()["description"]
    assert "500 recipients in to, cc and bcc together" in description
    assert "allow-list" in description
    # The schema's patterns carry the address lengths and refuse a final newline: not the relay's alone.
    assert "64 characters" not in description and "newline" not in description


# --- The schema and the model agree --------------------------------------------------------------


def request(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "from": "relay@contoso.com",
        "to": ["ada@contoso.com"],
        "subject": "Hello",
        "body": {"contentType": "text", "content": "Hello, Ada."},
    }
    base.update({("from" if k == "from_" else k): v for k, v in overrides.items()})
    return {k: v for k, v in base.items() if v is not None}


def without(*fields: str) -> dict[str, Any]:
    return {k: v for k, v in request().items() if k not in fields}


def addresses(n: int) -> list[str]:
    return [f"user{i}@contoso.com" for i in range(n)]


def attachment(content_bytes: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "a.bin",
        "contentType": "application/octet-stream",
        "contentBytes": content_bytes,
        **overrides,
    }


# An address of exactly 254 characters (RFC 5321's limit) with 64 before the @, and one of 255.
ADDRESS_254 = "x" * 64 + "@" + "b" * 63 + "." + "b" * 63 + "." + "c" * 61
ADDRESS_255 = ADDRESS_254[:-1] + "cc"
assert len(ADDRESS_254) == 254 and len(ADDRESS_255) == 255

BIG = base64.b64encode(b"x" * (3 * 1024 * 1024 + 1)).decode()
LIMIT = base64.b64encode(b"x" * (3 * 1024 * 1024)).decode()

# (case, document, the model accepts it, the schema accepts it)
CASES: list[tuple[str, dict[str, Any], bool, bool]] = [
    ("minimal", request(), True, True),
    ("full example", json.loads((DATA / "valid-request.json").read_text(encoding="utf-8")), True, True),
    ("display name", request(to=["Ada Lovelace <ada@contoso.com>"]), True, True),
    ("quoted display name", request(to=['"Lovelace, Ada" <ada@contoso.com>']), True, True),
    ("object recipient", request(to=[{"address": "ada@contoso.com", "name": "Ada"}]), True, True),
    ("only bcc", request(to=[], bcc=["ada@contoso.com"]), True, True),
    ("500 in to", request(to=addresses(500)), True, True),
    ("attachment of 3 MB", request(attachments=[attachment(LIMIT)]), True, True),
    ("X- headers", request(headers={"X-Order-Id": "4711", "x-trace": "a b"}), True, True),
    ("id of 128", request(id="k" * 128), True, True),
    ("5 headers", request(headers={f"X-H{i}": "v" for i in range(5)}), True, True),
    ("6 headers", request(headers={f"X-H{i}": "v" for i in range(6)}), False, False),
    ("all optional fields", request(cc=[], importance="low", saveToSentItems=False, replyTo=[]), True, True),
    # invalid for both
    ("unknown top-level field", request(priority="high"), False, False),
    (
        "unknown body field",
        request(body={"contentType": "text", "content": "x", "charset": "utf-8"}),
        False,
        False,
    ),
    ("unknown recipient field", request(to=[{"address": "ada@contoso.com", "type": "to"}]), False, False),
    ("unknown attachment field", request(attachments=[attachment("", size=0)]), False, False),
    ("inline image", request(attachments=[attachment("", isInline=True, contentId="logo@x")]), True, True),
    ("inline image without its contentId", request(attachments=[attachment("", isInline=True)]), False, False),
    ("missing from", without("from"), False, False),
    ("missing subject", without("subject"), False, False),
    ("missing body", without("body"), False, False),
    ("from with display name", request(from_="Relay <relay@contoso.com>"), False, False),
    ("from without top-level domain", request(from_="relay@contoso"), False, False),
    ("no recipients", without("to"), False, False),
    ("empty recipient lists", request(to=[], cc=[], bcc=[]), False, False),
    ("recipients as a string", request(to="ada@contoso.com"), False, False),
    ("unquoted comma in display name", request(to=["Lovelace, Ada <ada@contoso.com>"]), False, False),
    ("two recipients in one string", request(to=["a@contoso.com, b@contoso.com"]), False, False),
    ("recipient without address", request(to=[{"name": "Ada"}]), False, False),
    ("501 in to", request(to=addresses(501)), False, False),
    ("bad importance", request(importance="urgent"), False, False),
    ("importance in capitals", request(importance="High"), False, False),
    ("header without X-", request(headers={"Subject": "x"}), False, False),
    ("Reply-To header", request(headers={"Reply-To": "x@contoso.com"}), False, False),
    ("header name with a space", request(headers={"X-A B": "x"}), False, False),
    ("header value with CRLF", request(headers={"X-A": "x\r\nBcc: y"}), False, False),
    ("header value a number", request(headers={"X-A": 1}), False, False),
    ("id too long", request(id="k" * 129), False, False),
    ("empty id", request(id=""), False, False),
    ("subject with CRLF", request(subject="Hi\r\nBcc: all@contoso.com"), False, False),
    ("subject with a trailing LF", request(subject="Hi\n"), False, False),
    ("subject with CR", request(subject="Hi\rthere"), False, False),
    ("saveToSentItems as a string", request(saveToSentItems="true"), False, False),
    ("body content type", request(body={"contentType": "markdown", "content": "x"}), False, False),
    ("invalid base64", request(attachments=[attachment("not base64!")]), False, False),
    ("non-canonical base64 padding", request(attachments=[attachment("YWJj=")]), False, False),
    ("URL-safe base64", request(attachments=[attachment("-_-_")]), False, False),
    ("attachment over 3 MB", request(attachments=[attachment(BIG)]), False, False),
    ("attachment without a name", request(attachments=[attachment("", name="")]), False, False),
    ("attachment name with CRLF", request(attachments=[attachment("", name="a\r\nb.txt")]), False, False),
    ("attachment name with U+2028", request(attachments=[attachment("", name="a\u2028b")]), False, False),
    ("attachment type with LF", request(attachments=[attachment("", contentType="text/plain\nX: y")]), False, False),
    ("subject with U+2028", request(subject="Hi\u2028Bcc: all@contoso.com"), False, False),
    ("subject with U+2029", request(subject="Hi\u2029there"), False, False),
    ("subject with NEL", request(subject="Hi\u0085there"), False, False),
    ("subject with a tab", request(subject="Hi\tthere"), True, True),
    ("header value with U+2028", request(headers={"X-A": "x\u2028y"}), False, False),
    ('header name "X-" alone', request(headers={"X-": "x"}), False, False),
    ("id with a control character", request(id="a\x01b"), False, False),
    ("id with DEL", request(id="a\x7fb"), False, False),
    ("id with U+2028", request(id="a\u2028b"), False, False),
    ("id with a space and non-ASCII", request(id="r\u00e9f 17"), True, True),
    ("display name with CRLF", request(to=["Ada\r\nBcc: x <ada@contoso.com>"]), False, False),
    ("display name with U+2028", request(to=["Ada\u2028Bcc <ada@contoso.com>"]), False, False),
    ("display name with NEL", request(to=["Ada\u0085 <ada@contoso.com>"]), False, False),
    ("quoted display name with U+2029", request(to=['"Ada\u2029" <ada@contoso.com>']), False, False),
    ("object name with U+2028", request(to=[{"address": "ada@contoso.com", "name": "A\u2028B"}]), False, False),
    # Python's, Java's and .NET's "$" also matches before a final newline; the schema's patterns must not.
    ("from followed by a newline", request(from_="relay@contoso.com\n"), False, False),
    ("recipient followed by a newline", request(to=["ada@contoso.com\n"]), False, False),
    ("named recipient followed by a newline", request(to=["Ada <ada@contoso.com>\n"]), False, False),
    ("object address followed by a newline", request(to=[{"address": "ada@contoso.com\n"}]), False, False),
    ("base64 followed by a newline", request(attachments=[attachment("YWJj\n")]), False, False),
    ("header name followed by a newline", request(headers={"X-A\n": "x"}), False, False),
    ("id followed by a newline", request(id="k\n"), False, False),
    # the lengths of an address, in every form a recipient takes
    ("from of 254, 64 before the @", request(from_=ADDRESS_254), True, True),
    ("from of 255", request(from_=ADDRESS_255), False, False),
    ("recipient string of 254", request(to=[ADDRESS_254]), True, True),
    ("recipient string of 255", request(to=[ADDRESS_255]), False, False),
    ("named recipient of 254", request(to=[f"Ada <{ADDRESS_254}>"]), True, True),
    ("named recipient of 255", request(to=[f"Ada <{ADDRESS_255}>"]), False, False),
    ("object address of 255", request(to=[{"address": ADDRESS_255}]), False, False),
    ("local part over 64 characters", request(from_="x" * 65 + "@contoso.com"), False, False),
    ("recipient local part over 64", request(to=["x" * 65 + "@contoso.com"]), False, False),
    ("named recipient local part over 64", request(to=["Ada <" + "x" * 65 + "@contoso.com>"]), False, False),
    # cross-field rules only the relay enforces (the schema's description lists them)
    ("501 across to, cc and bcc", request(to=addresses(300), cc=addresses(201)), False, True),
]


def model_accepts(document: dict[str, Any]) -> bool:
    try:
        parse_request(document)
    except ContractError:
        return False
    return True


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return Draft202012Validator(json_schema())


@pytest.mark.parametrize(("document", "model_ok", "schema_ok"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_schema_and_model_agree(
    validator: Draft202012Validator, document: dict[str, Any], model_ok: bool, schema_ok: bool
) -> None:
    errors = [e.message[:200] for e in validator.iter_errors(document)]
    assert model_accepts(document) is model_ok
    assert (not errors) is schema_ok, errors


def test_committed_file_validates_like_the_generated_schema() -> None:
    """What apps load is the file: run a valid and an invalid example through it as well."""
    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    assert validator.is_valid(request())
    assert not validator.is_valid(request(priority="high"))


# --- The client library validates as the relay does ----------------------------------------------

# More cases where a schema alone could differ from the relay: the client adds the cross-field rules.
STORED: dict[str, Any] = {
    "name": "report.pdf",
    "contentType": "application/pdf",
    "blob": "0f3a9c/report.pdf",
    "size": 5_000_000,
    "sha256": "ab" * 32,
}

CLIENT_CASES: list[tuple[str, dict[str, Any], bool]] = [(c[0], c[1], c[2]) for c in CASES] + [
    ("500 across to, cc and bcc", request(to=addresses(200), cc=addresses(200), bcc=addresses(100)), True),
    ("501 across cc and bcc", request(to=[], cc=addresses(300), bcc=addresses(201)), False),
    ("local part of 64", request(from_="x" * 64 + "@contoso.com"), True),
    ("object recipient local part over 64", request(to=[{"address": "x" * 65 + "@contoso.com"}]), False),
    ("reply-to local part over 64", request(replyTo=["x" * 65 + "@contoso.com"]), False),
    ("recipient with whitespace", request(to=["ada @contoso.com"]), False),
    ("recipient without a domain dot", request(to=["ada@contoso"]), False),
    ("non-ASCII address", request(to=["ad\u00e1@contoso.com"]), False),
    ("non-ASCII display name", request(to=["\u00c1da <ada@contoso.com>"]), True),
    ("html body", request(body={"contentType": "html", "content": "<p>hi</p>"}), True),
    ("empty subject", request(subject=""), True),
    ("subject a number", request(subject=7), False),
    ("body content missing", request(body={"contentType": "text"}), False),
    ("attachments not a list", request(attachments={"name": "a"}), False),
    ("attachment of 0 bytes", request(attachments=[attachment("")]), True),
    ("attachment without contentType", request(attachments=[attachment("", contentType="")]), False),
    # request(field=None) leaves the field out; a JSON null is written into the document instead.
    ("cc null", {**request(), "cc": None}, False),
    ("id null", {**request(), "id": None}, True),
    ("headers null", {**request(), "headers": None}, False),
    ("object recipient with a null name", request(to=[{"address": "ada@contoso.com", "name": None}]), True),
    ("id a number", request(id=17), False),
    ("saveToSentItems false", request(saveToSentItems=False), True),
    ("importance null", {**request(), "importance": None}, False),
    ("lone surrogate in the subject", request(subject="a\ud800"), False),
    ("lone surrogate in a field name", {**request(), "\ud800": 1}, False),
    ("a list nested in a header value", request(headers={"X-A": [[[[1]]]]}), False),
    ("id a huge number", request(id=10**400), False),
    ("saveToSentItems 1", request(saveToSentItems=1), False),
    ("body contentType in capitals", request(body={"contentType": "Text", "content": "x"}), False),
    ("from with a trailing dot", request(from_="relay@contoso.com."), False),
    ("from as an IP literal", request(from_="relay@[192.0.2.1]"), False),
    ("recipient with a leading space", request(to=[" ada@contoso.com"]), False),
    ("recipient in angle brackets only", request(to=["<ada@contoso.com>"]), True),
    ("the same recipient twice", request(to=["a@contoso.com", "a@contoso.com"]), True),
    ("501 replyTo", request(replyTo=addresses(501)), True),
    ("a display name of 1000", request(to=[{"address": "ada@contoso.com", "name": "n" * 1000}]), True),
    # Claim checks and sendAt (issue 12)
    ("claim-checked attachment", request(attachments=[STORED]), True),
    ("claim-checked inline image", request(attachments=[{**STORED, "isInline": True, "contentId": "c1"}]), True),
    ("claim check without sha256", request(attachments=[{k: v for k, v in STORED.items() if k != "sha256"}]), False),
    ("claim check and contentBytes", request(attachments=[{**STORED, "contentBytes": "YWJj"}]), False),
    ("claim check of 150 MB", request(attachments=[{**STORED, "size": 150 * 1024 * 1024}]), True),
    ("claim check over 150 MB", request(attachments=[{**STORED, "size": 150 * 1024 * 1024 + 1}]), False),
    ("claim check size negative", request(attachments=[{**STORED, "size": -1}]), False),
    ("claim check size a string", request(attachments=[{**STORED, "size": "10"}]), False),
    ("blob name with ..", request(attachments=[{**STORED, "blob": "a/../b"}]), False),
    ("blob name with a leading /", request(attachments=[{**STORED, "blob": "/a"}]), False),
    ("blob name with a space", request(attachments=[{**STORED, "blob": "a b"}]), False),
    ("sha256 in capitals", request(attachments=[{**STORED, "sha256": "A" * 64}]), False),
    ("claim-checked body", request(body={"contentType": "html", "blob": "b/x", "size": 9, "sha256": "c" * 64}), True),
    (
        "claim-checked body over 3 MB",
        request(body={"contentType": "html", "blob": "b", "size": 3 * 1024 * 1024 + 1, "sha256": "c" * 64}),
        False,
    ),
    (
        "body with content and a claim check",
        request(body={"contentType": "text", "content": "x", "blob": "b", "size": 1, "sha256": "c" * 64}),
        False,
    ),
    ("sendAt with an offset", request(sendAt="2026-12-24T09:00:00+01:00"), True),
    ("sendAt in UTC", request(sendAt="2026-12-24T08:00:00Z"), True),
    ("sendAt without an offset", request(sendAt="2026-12-24T09:00:00"), False),
    ("sendAt not a date", request(sendAt="next tuesday"), False),
]


@pytest.mark.parametrize(("document", "relay_ok"), [c[1:] for c in CLIENT_CASES], ids=[c[0] for c in CLIENT_CASES])
def test_the_client_and_the_relay_agree(document: dict[str, Any], relay_ok: bool) -> None:
    assert model_accepts(document) is relay_ok
    found = client_violations(document)
    assert (not found) is relay_ok, [str(v) for v in found]


def test_the_corpus_is_large_and_mixed() -> None:
    assert len(CLIENT_CASES) >= 60
    assert sum(ok for _, _, ok in CLIENT_CASES) >= 20 and sum(not ok for _, _, ok in CLIENT_CASES) >= 40


def relay_fields(document: dict[str, Any]) -> set[str]:
    try:
        parse_request(document)
    except ContractError as exc:
        # The relay reads a recipient string as its object form, so a too-long address in "Ada <...>" is
        # its to[0].address; the client, holding the string, names to[0].
        return {v.field.removesuffix(".address") for v in exc.violations}
    return set()


@pytest.mark.parametrize(
    "document", [c[1] for c in CLIENT_CASES if not c[2]], ids=[c[0] for c in CLIENT_CASES if not c[2]]
)
def test_the_client_names_the_fields_the_relay_names(document: dict[str, Any]) -> None:
    client_fields = {v.field.removesuffix(".address") for v in client_violations(document)}
    assert client_fields == relay_fields(document)
