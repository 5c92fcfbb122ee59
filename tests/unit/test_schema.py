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
    assert json.loads(committed) == json_schema(), (
        f"{SCHEMA_PATH.name} is out of date with the models; {REGENERATE}"
    )
    # A checkout with CRLF line endings is still the same file.
    assert committed.replace("\r\n", "\n") == render_schema(), (
        f"{SCHEMA_PATH.name} is not formatted; {REGENERATE}"
    )


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
    ("unknown attachment field", request(attachments=[attachment("", isInline=True)]), False, False),
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
    # cross-field rules only the relay enforces (the schema's description lists them)
    ("501 across to, cc and bcc", request(to=addresses(300), cc=addresses(201)), False, True),
    ("local part over 64 characters", request(from_="x" * 65 + "@contoso.com"), False, True),
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


@pytest.mark.parametrize(
    ("document", "model_ok", "schema_ok"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
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
CLIENT_CASES: list[tuple[str, dict[str, Any], bool]] = [(c[0], c[1], c[2]) for c in CASES] + [
    ("500 across to, cc and bcc", request(to=addresses(200), cc=addresses(200), bcc=addresses(100)), True),
    ("501 across cc and bcc", request(to=[], cc=addresses(300), bcc=addresses(201)), False),
    ("local part of 64", request(from_="x" * 64 + "@contoso.com"), True),
    ("recipient local part over 64", request(to=["x" * 65 + "@contoso.com"]), False),
    ("named recipient local part over 64", request(to=["Ada <" + "x" * 65 + "@contoso.com>"]), False),
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
    ("cc as null", request(cc=None), True),
    ("id a number", request(id=17), False),
    ("saveToSentItems false", request(saveToSentItems=False), True),
    ("importance null", request(importance=None), True),
]


@pytest.mark.parametrize(("document", "relay_ok"), [c[1:] for c in CLIENT_CASES], ids=[c[0] for c in CLIENT_CASES])
def test_the_client_and_the_relay_agree(document: dict[str, Any], relay_ok: bool) -> None:
    assert model_accepts(document) is relay_ok
    found = client_violations(document)
    assert (not found) is relay_ok, [str(v) for v in found]
