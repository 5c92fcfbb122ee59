"""The send request, version 1: what an app puts on the queue (docs/request.md).

The pydantic models below are the single source of the contract. The JSON Schema shipped at
shared/schemas/send-request.v1.json is generated from them (`python -m shared.contract --write-schema`),
so apps in other languages validate against the same rules, except the few cross-field rules a JSON
Schema cannot express (listed in the schema's description).

Use `parse_request` on anything that comes from outside: it refuses Python attribute names in the JSON
("sender" instead of "from"), collects every violation, and words each one for a developer.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, NoReturn

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.fields import ComputedFieldInfo, FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError
from pydantic_core import ErrorDetails as PydanticErrorDetails

from shared.queues import decode, json_object

MAX_RECIPIENTS: Final = 500  # Exchange Online's recipients per message, to + cc + bcc
MAX_ID_LENGTH: Final = 128
# Graph refuses a message with more custom headers (400 InvalidInternetMessageHeaderCollection, "should be
# less or equal to 5"); not in Graph's reference, but reported alike by SDK users and in production.
MAX_HEADERS: Final = 5
MAX_INLINE_ATTACHMENT_BYTES: Final = 3 * 1024 * 1024  # Graph's limit for attachments sent inline
# base64 turns every 3 bytes into 4 characters; 3 MB is a multiple of 3, so this bound is exact.
_MAX_INLINE_ATTACHMENT_CHARS: Final = 4 * -(-MAX_INLINE_ATTACHMENT_BYTES // 3)
# Graph takes up to 150 MB per attachment through an upload session
# (https://learn.microsoft.com/graph/outlook-large-attachments).
MAX_ATTACHMENT_BYTES: Final = 150 * 1024 * 1024
# A claim-checked body still travels in one Graph request (sendMail, or the draft's creation), whose limit is 4 MB.
MAX_BODY_BYTES: Final = 3 * 1024 * 1024
MAX_BLOB_NAME_LENGTH: Final = 1024  # Azure Storage's limit for a blob name
_MAX_ADDRESS_LENGTH: Final = 254  # RFC 5321: a 256-octet path, less the angle brackets
_MAX_LOCAL_PART_LENGTH: Final = 64

SCHEMA_ID: Final = "urn:graph-mail-relay:send-request:v1"
SCHEMA_PATH: Final = Path(__file__).parent / "schemas" / "send-request.v1.json"
# The client library ships a copy (client/ is its own distribution and cannot read the relay's package).
# Both are written from this module; the schema tests fail when either drifts.
CLIENT_SCHEMA_PATH: Final = Path(__file__).parent.parent / "client" / "mailrelay_client" / "send-request.v1.json"
SCHEMA_PATHS: Final = (SCHEMA_PATH, CLIENT_SCHEMA_PATH)
MESSAGE_FIELD: Final = "(message)"  # the field name of violations about the message as a whole
RECIPIENTS_FIELD: Final = "to/cc/bcc"  # the field name of violations about the three lists together

# --- Regular expressions -------------------------------------------------------------------------
# Written in the subset that Python's `re` and ECMA-262 (the JSON Schema dialect) read the same way,
# because the very same patterns go into the JSON Schema.

# A dot-atom addr-spec (RFC 5322) with a DNS domain: quoted local parts, IP literals and
# internationalized (non-ASCII) addresses are left out: they are rare, and a sane check is the aim.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_LOCAL_PART = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_DOMAIN_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TOP_LEVEL_DOMAIN = r"[A-Za-z][A-Za-z0-9-]{0,61}[A-Za-z0-9]"  # "com", "xn--p1ai": at least 2 characters
_ADDRESS = rf"{_LOCAL_PART}@(?:{_DOMAIN_LABEL}\.)+{_TOP_LEVEL_DOMAIN}"
ADDRESS_PATTERN: Final = rf"^{_ADDRESS}$"

# A recipient written as a string: "a@contoso.com", "Ada Lovelace <a@contoso.com>" or
# "\"Lovelace, Ada\" <a@contoso.com>". An unquoted display name may not hold a comma or semicolon,
# which would make "Lovelace, Ada <a@contoso.com>" look like two recipients. No name holds a line break of
# any kind (CR, LF, NEL, U+2028, U+2029), at its edges either (where str.strip would quietly drop NEL).
_QUOTED_TEXT = r'(?:[^"\\\r\n\u0085\u2028\u2029]|\\[^\r\n\u0085\u2028\u2029])*'
_QUOTED_NAME = rf'"{_QUOTED_TEXT}"'
_PLAIN_NAME = r'[^"<>,;\r\n\u0085\u2028\u2029]*'
RECIPIENT_STRING_PATTERN: Final = rf"^(?:{_ADDRESS}|(?:{_QUOTED_NAME}|{_PLAIN_NAME})[ \t]*<{_ADDRESS}>)$"
# The same grammar with groups, to take a string apart; Python's (?P<name>...) is no ECMA-262 syntax.
_NAMED_RECIPIENT_RE: Final = re.compile(
    rf'(?:"(?P<quoted>{_QUOTED_TEXT})"|(?P<plain>{_PLAIN_NAME}))[ \t]*<(?P<address>[^<>]*)>'
)

# RFC 7230 token characters; Graph accepts custom headers only, whose names start with "X-".
_TCHAR = r"!#$%&'*+.^_`|~0-9A-Za-z-"
HEADER_NAME_PATTERN: Final = rf"^[Xx]-[{_TCHAR}]+$"

# Standard base64 with its padding, as `base64.b64decode(s, validate=True)` reads it; that function also
# lets a few non-canonical forms through ("YWJj="), which other languages' decoders refuse.
BASE64_PATTERN: Final = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

# A claim check's blob name: path segments that each start with a letter or digit, so that no "..", no leading
# "/" and no URL syntax can reach outside the mail-payloads container (a blob name is a URL path).
_BLOB_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
BLOB_NAME_PATTERN: Final = rf"^{_BLOB_SEGMENT}(?:/{_BLOB_SEGMENT})*$"
SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
# RFC 3339's date-time with its offset required (JSON Schema's "format" is only an annotation to most validators,
# so the pattern carries the rule); the relay also checks that the date exists (no 30 February).
SEND_AT_PATTERN: Final = (
    r"^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]"
    r"(?::[0-5][0-9](?:\.[0-9]{1,6})?)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)

# The same rules as the JSON Schema states them. The relay checks the lengths in Python, to say which limit
# a value breaks; a schema validator has only the pattern, so lookaheads (read alike by every engine) carry
# them: at most 64 characters before the @, and 254 in an address written inside a recipient string.
_SCHEMA_ADDRESS = rf"(?=[^@]{{1,{_MAX_LOCAL_PART_LENGTH}}}@){_ADDRESS}"
_SCHEMA_ADDRESS_PATTERN: Final = rf"^{_SCHEMA_ADDRESS}$"
_SCHEMA_RECIPIENT_STRING_PATTERN: Final = (
    rf"^(?:(?=[^<>]{{1,{_MAX_ADDRESS_LENGTH}}}$){_SCHEMA_ADDRESS}"
    rf"|(?:{_QUOTED_NAME}|{_PLAIN_NAME})[ \t]*<(?=[^<>]{{1,{_MAX_ADDRESS_LENGTH}}}>){_SCHEMA_ADDRESS}>)$"
)
_ADDRESS_WORDS: Final = (
    f"an email address such as mailbox@contoso.com (ASCII, at most {_MAX_LOCAL_PART_LENGTH} characters "
    f"before the @ and {_MAX_ADDRESS_LENGTH} in all; an internationalized domain in its xn-- form)"
)

_ADDRESS_RE: Final = re.compile(_ADDRESS)
_RECIPIENT_STRING_RE: Final = re.compile(RECIPIENT_STRING_PATTERN[1:-1])
_HEADER_NAME_RE: Final = re.compile(HEADER_NAME_PATTERN[1:-1])
_BASE64_RE: Final = re.compile(BASE64_PATTERN[1:-1])
_BLOB_NAME_RE: Final = re.compile(rf"(?=.{{1,{MAX_BLOB_NAME_LENGTH}}}$)" + BLOB_NAME_PATTERN[1:-1], re.DOTALL)
_SHA256_RE: Final = re.compile(SHA256_PATTERN[1:-1])
_SEND_AT_RE: Final = re.compile(SEND_AT_PATTERN[1:-1])

# "Must not contain CR or LF" as JSON Schema: `not` + an unanchored pattern is exact in every regex
# engine, whereas "^[^\r\n]*$" lets a trailing "\n" through in Python, Java and .NET (their "$"
# also matches before a final newline).
# CR and LF end a header line; NEL (U+0085) and the line and paragraph separators (U+2028, U+2029) are
# line breaks to Unicode-aware software (mail clients, log viewers) and have no place in a header either.
_LINE_BREAKS: Final = {
    "\r": "a carriage return (CR)",
    "\n": "a line feed (LF)",
    "\u0085": "a next line (U+0085)",
    "\u2028": "a line separator (U+2028)",
    "\u2029": "a paragraph separator (U+2029)",
}
_SINGLE_LINE_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "not": {"pattern": "[\\r\\n\u0085\u2028\u2029]"},
}
# An idempotency key is an identifier: no control characters (C0, DEL, C1) nor line separators.
ID_PATTERN: Final = "^[^\\u0000-\\u001f\\u007f-\\u009f\u2028\u2029]+$"
MAX_DEPTH: Final = 8  # a valid request nests 4 levels (attachments[0].name); deeper is not a request

# Headers that Graph sets from message fields: a request that tries to set one gets pointed there.
_FIELD_FOR_HEADER: Final = {
    "from": "from",
    "sender": "from",
    "to": "to",
    "cc": "cc",
    "bcc": "bcc",
    "reply-to": "replyTo",
    "subject": "subject",
    "importance": "importance",
    "content-type": "body.contentType",
}

_RULE_ERROR: Final = "send_request_rule"  # the pydantic error type of the rules written here


# --- Violations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One broken rule: `field` is a JSON path ("to[2]", "attachments[0].contentBytes", "(message)")."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class ContractError(ValueError):
    """A send request that breaks the contract; `violations` lists every broken rule, in input order."""

    def __init__(self, violations: Sequence[Violation], *, encoding: bool = False) -> None:
        self.violations = list(violations)
        # True when the text itself could not be read as a JSON request (not UTF-8, not JSON, encoded twice):
        # the dead letter's code is then InvalidEncoding, whose hint is about the queue's base64 encoding.
        self.encoding = encoding
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(v) for v in self.violations)

    def __reduce__(self) -> tuple[type[ContractError], tuple[list[Violation]]]:
        # ValueError pickles its args, which hold the joined text; rebuild from the violations instead.
        return (type(self), (self.violations,))


def _fail(rule: str, *, field: str | None = None, alias: str | None = None, under: str | None = None) -> NoReturn:
    """Raise a rule violation inside pydantic validation; `field` overrides pydantic's location, `alias` only its
    last part (a default that fails its check is located by the attribute's name, not the JSON one)."""
    context = {"rule": rule} if field is None else {"rule": rule, "field": field}
    if alias is not None:
        context["alias"] = alias
    if under is not None:  # a model's rule about one of its fields: located at that field
        context["under"] = under
    # The template only echoes the context, so braces in `rule` are never read as placeholders.
    raise PydanticCustomError(_RULE_ERROR, "{rule}", context)


def _quote(value: object, limit: int = 60) -> str:
    """A value as it looks in JSON, shortened: for rule texts."""
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def _describe(value: object) -> str:
    """What a JSON value is, in words: "a number (1)", "a string ("true")", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({_quote(value)})"
    if isinstance(value, int | float):
        return f"a number ({_quote(value)})"
    if isinstance(value, str):
        return f"a string ({_quote(value)})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a Python {type(value).__name__}"  # only Python callers can pass these


# --- Field rules ---------------------------------------------------------------------------------


def _address_problem(value: str) -> str | None:
    """Why `value` is not an email address the relay accepts, or None if it is one."""
    if _ADDRESS_RE.fullmatch(value):
        if len(value) > _MAX_ADDRESS_LENGTH:
            return f"is {len(value)} characters long; an email address has at most {_MAX_ADDRESS_LENGTH}"
        if len(value.rpartition("@")[0]) > _MAX_LOCAL_PART_LENGTH:
            return f"has more than {_MAX_LOCAL_PART_LENGTH} characters before the @"
        return None
    shown = _quote(value)
    if not value:
        return "must be an email address such as mailbox@contoso.com, not an empty string"
    if any(c.isspace() for c in value):
        return f"{shown} is not an email address: it contains whitespace"
    if not value.isascii():
        return (
            f"{shown} is not an email address the relay accepts: it contains non-ASCII characters "
            "(write an internationalized domain in its xn-- form)"
        )
    if value.count("@") != 1:
        return f"{shown} is not an email address: it must contain exactly one @ (local@domain.tld)"
    local, _, domain = value.partition("@")
    if not _ADDRESS_RE.fullmatch(f"{local}@contoso.com"):
        return f"{shown} is not an email address: the part before the @ is not valid"
    if "." not in domain:
        return f"{shown} is not an email address: the domain needs a top-level domain (local@domain.tld)"
    return f"{shown} is not an email address: the domain after the @ is not valid"


def _check_mailbox(value: str) -> str:
    """`from`: a bare address; Graph sends as the mailbox, so a display name has no place here."""
    if "<" in value or ">" in value:
        _fail(f"{_quote(value)} must be a bare address such as relay@contoso.com, without a display name")
    problem = _address_problem(value)
    if problem:
        _fail(problem)
    return value


def _check_address(value: str) -> str:
    problem = _address_problem(value)
    if problem:
        _fail(problem)
    return value


def _line_break_problem(value: str) -> str | None:
    for position, char in enumerate(value):
        if char in _LINE_BREAKS:
            return (
                f"must not contain CR, LF or another line break: found {_LINE_BREAKS[char]} at character "
                f"{position + 1}; "
                "a line break in a mail header would let the text inject headers of its own"
            )
    return None


def _check_id(value: str) -> str:
    for position, char in enumerate(value):
        if ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F or char in "\u2028\u2029":
            _fail(
                f"must not contain control characters: found U+{ord(char):04X} at character "
                f"{position + 1}; an idempotency key is an identifier such as invoice-17"
            )
    return value


def _check_single_line(value: str) -> str:
    problem = _line_break_problem(value)
    if problem:
        _fail(problem)
    return value


def _check_base64(value: str) -> str:
    if not _BASE64_RE.fullmatch(value):
        _fail(_base64_problem(value))
    size = len(base64.b64decode(value, validate=True))
    if size > MAX_INLINE_ATTACHMENT_BYTES:
        _fail(
            f"decodes to {size} bytes, over the {MAX_INLINE_ATTACHMENT_BYTES} bytes (3 MB) Graph takes "
            "inline; a larger attachment needs an upload session (draft, upload, send), which version 1 "
            "of the send request does not offer"
        )
    return value


def _base64_problem(value: str) -> str:
    start = "is not valid base64 (standard alphabet A-Z a-z 0-9 + /, padded with =)"
    stray = re.search(r"[^A-Za-z0-9+/=]", value)
    if stray is None:
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            return f"{start}: {str(exc).lower()}"
        return f"{start}: the = padding is wrong"
    char = stray.group()
    where = f"character {stray.start() + 1}"
    if char in "\r\n":
        return f"{start}: a line break at {where}; join wrapped (MIME-style) base64 into one line"
    if char.isspace():
        return f"{start}: whitespace at {where}"
    if char in "-_":
        return f"{start}: {_quote(char)} at {where} belongs to URL-safe base64; use the standard alphabet"
    return f"{start}: {_quote(char)} at {where}"


def _check_header_name(value: str) -> str:
    if not value.lower().startswith("x-"):
        field = _FIELD_FOR_HEADER.get(value.lower())
        instead = f"; set it with the {_quote(field)} field instead" if field else ""
        _fail(
            f"{_quote(value)} is not allowed: Graph accepts only custom headers, whose names start with "
            f'"X-" (for example "X-Correlation-Id"){instead}'
        )
    if not _HEADER_NAME_RE.fullmatch(value):
        if value.lower() == "x-":
            _fail('a header name needs a name after "X-" (for example "X-Correlation-Id")')
        _fail(
            f"{_quote(value)} is not a valid header name: it may hold only letters, digits and "
            "!#$%&'*+-.^_`|~ (no spaces, colons or non-ASCII characters)"
        )
    return value


# --- Field types ---------------------------------------------------------------------------------
# Each validated string type carries its JSON Schema, so the schema follows from the models.

Mailbox = Annotated[
    str,
    AfterValidator(_check_mailbox),
    WithJsonSchema(
        {
            "type": "string",
            "format": "email",
            "pattern": _SCHEMA_ADDRESS_PATTERN,
            "maxLength": _MAX_ADDRESS_LENGTH,
        }
    ),
]
Address = Annotated[
    str,
    AfterValidator(_check_address),
    WithJsonSchema(
        {
            "type": "string",
            "format": "email",
            "pattern": _SCHEMA_ADDRESS_PATTERN,
            "maxLength": _MAX_ADDRESS_LENGTH,
            "description": _ADDRESS_WORDS,
        }
    ),
]
SingleLine = Annotated[str, AfterValidator(_check_single_line), WithJsonSchema(_SINGLE_LINE_SCHEMA)]
NonEmptyLine = Annotated[
    str,
    Field(min_length=1),
    AfterValidator(_check_single_line),
    WithJsonSchema({**_SINGLE_LINE_SCHEMA, "minLength": 1}),
]
Base64Content = Annotated[
    str,
    AfterValidator(_check_base64),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "pattern": BASE64_PATTERN,
            "maxLength": _MAX_INLINE_ATTACHMENT_CHARS,
            "description": (
                "standard base64 on one line (A-Z a-z 0-9 + /, padded with =; no whitespace, no URL-safe - _), "
                "at most 3 MB once decoded"
            ),
        }
    ),
]
HeaderName = Annotated[str, AfterValidator(_check_header_name)]


def _check_header_count(headers: dict[str, str]) -> dict[str, str]:
    if len(headers) > MAX_HEADERS:
        _fail(f"{len(headers)} headers; Graph takes at most {MAX_HEADERS} custom headers per message")
    return headers


# pydantic would describe a dict with constrained keys by `patternProperties`, which lets every other key
# through; `propertyNames` says what is meant.
Headers = Annotated[
    dict[HeaderName, SingleLine],
    AfterValidator(_check_header_count),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_HEADERS,
            "propertyNames": {
                "pattern": HEADER_NAME_PATTERN,
                "description": 'a custom header name: "X-" and then letters, digits and !#$%&\'*+-.^_`|~ '
                "(no spaces or colons); Graph sets the standard headers from the request's fields",
            },
            "additionalProperties": _SINGLE_LINE_SCHEMA,
        }
    ),
]


def _check_content_id(value: str) -> str:
    for position, char in enumerate(value):
        if not 0x21 <= ord(char) <= 0x7E or char in '<>"':
            _fail(
                f"must be printable ASCII without spaces, quotes or angle brackets: found {char!r} at character "
                f"{position + 1}; it is the id of a MIME part, named by the body as cid:<contentId>"
            )
    return value


MAX_CONTENT_ID_LENGTH: Final = 255
ContentId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_CONTENT_ID_LENGTH),
    AfterValidator(_check_content_id),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_CONTENT_ID_LENGTH,
            "pattern": "^[!#-;=?-~]+$",
            "description": "printable ASCII, no spaces, quotes or angle brackets (a MIME Content-ID)",
        }
    ),
]
IdempotencyKey = Annotated[
    str,
    Field(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(_check_id),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": ID_PATTERN,
            "description": f"an identifier such as invoice-17: 1 to {MAX_ID_LENGTH} characters, no control "
            "characters or line separators",
        }
    ),
]


def _json_name(name: str, info: FieldInfo | ComputedFieldInfo) -> str:
    """Schema titles are the JSON names, not pydantic's "Savetosentitems"."""
    return info.alias or name


class _ContractModel(BaseModel):
    """The settings every part of the request shares.

    Unknown fields are refused (they are typos) and nothing is coerced ("true" is no bool). Aliases are
    the JSON names, attribute names the Python ones: Python code may build models by attribute name,
    while parse_request accepts JSON names only. (The config is spelled out here, in a class body,
    because that is where pydantic's mypy plugin reads it.)
    """

    model_config = ConfigDict(
        extra="forbid",
        field_title_generator=_json_name,
        strict=True,
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


# --- Models --------------------------------------------------------------------------------------


class Recipient(_ContractModel):
    """A recipient: "a@contoso.com", "Name <a@contoso.com>" or {"address": ..., "name": ...}."""

    address: Address
    name: SingleLine | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        """The two string forms become the object form; anything else is left to field validation."""
        if isinstance(data, str):
            name, address = _split_recipient(data)
            return {"address": address} if name is None else {"address": address, "name": name}
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # The string forms are accepted by `_from_string`, which pydantic cannot see; say so in the schema.
        object_form = handler.resolve_ref_schema(handler(core_schema))
        string_form = {
            "type": "string",
            "pattern": _SCHEMA_RECIPIENT_STRING_PATTERN,
            "description": (
                'one recipient: an address, or a display name and an address ("Ada Lovelace <ada@contoso.com>"; '
                'quote a name holding a comma or semicolon: "\\"Lovelace, Ada\\" <ada@contoso.com>"), '
                f"with {_ADDRESS_WORDS}, and no line breaks"
            ),
        }
        description = object_form.pop("description", None)
        schema: JsonSchemaValue = {"anyOf": [string_form, object_form]}
        return schema if description is None else {"description": description, **schema}


def _split_recipient(text: str) -> tuple[str | None, str]:
    """(display name or None, address) of a recipient string, or a violation that says what is wrong."""
    if _RECIPIENT_STRING_RE.fullmatch(text):
        named = _NAMED_RECIPIENT_RE.fullmatch(text)
        if named is None:
            return None, text
        if named.group("quoted") is not None:
            name = re.sub(r"\\(.)", r"\1", named.group("quoted"))  # "\"" and "\\" are escapes
        else:
            name = named.group("plain").strip()
        return (name or None), named.group("address")
    # Not accepted: find the most useful thing to say.
    problem = _line_break_problem(text)
    if problem:
        _fail(problem)
    named = _NAMED_RECIPIENT_RE.fullmatch(text)
    if named:
        _fail(_address_problem(named.group("address")) or f"{_quote(text)} is not a valid recipient")
    forms = '"a@contoso.com", "Ada Lovelace <a@contoso.com>" or {"address": "a@contoso.com", "name": "Ada"}'
    if re.search(r"[,;]", text):
        _fail(
            f"{_quote(text)} is not one recipient: give each recipient its own list item, and quote a "
            'display name that holds a comma or semicolon ("\\"Lovelace, Ada\\" <ada@contoso.com>")'
        )
    if "<" in text or ">" in text or '"' in text:
        _fail(f"{_quote(text)} is not a valid recipient; write {forms}")
    _fail(_address_problem(text) or f"{_quote(text)} is not a valid recipient; write {forms}")


RecipientList = Annotated[list[Recipient], Field(json_schema_extra={"maxItems": MAX_RECIPIENTS})]


def _check_blob_name(value: str) -> str:
    if not _BLOB_NAME_RE.fullmatch(value):
        _fail(
            f"{_quote(value)} is not a payload blob name: 1 to {MAX_BLOB_NAME_LENGTH} characters, segments of letters, "
            "digits, dot, underscore and hyphen separated by /, each starting with a letter or digit (no .., no "
            "leading /); it names a blob in the relay's mail-payloads container"
        )
    return value


def _check_sha256(value: str) -> str:
    if not _SHA256_RE.fullmatch(value):
        _fail(f"{_quote(value)} must be the SHA-256 of the blob's bytes: 64 lower-case hexadecimal digits")
    return value


def _check_send_at(value: str) -> str:
    if not _SEND_AT_RE.fullmatch(value):
        _fail(
            f"{_quote(value)} is not an ISO 8601 date and time with a UTC offset, such as 2026-12-24T09:00:00+01:00 "
            "(or ...Z for UTC)"
        )
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{_quote(value)} is not an ISO 8601 date and time, such as 2026-12-24T09:00:00+01:00")
    if when.utcoffset() is None:
        _fail(
            f"{_quote(value)} has no UTC offset: write one (2026-12-24T09:00:00+01:00, or Z for UTC), so the time "
            "means the same on every machine"
        )
    return value


BlobName = Annotated[
    str,
    AfterValidator(_check_blob_name),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": BLOB_NAME_PATTERN,
            "maxLength": MAX_BLOB_NAME_LENGTH,
            "description": "the name of a blob in the relay's mail-payloads container (a claim check)",
        }
    ),
]
Sha256 = Annotated[
    str,
    AfterValidator(_check_sha256),
    WithJsonSchema({"type": "string", "pattern": SHA256_PATTERN, "description": "SHA-256 of the blob, hex"}),
]
SendAt = Annotated[
    str,
    AfterValidator(_check_send_at),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": SEND_AT_PATTERN,
            "description": "when to send: ISO 8601 with a UTC offset, at most 7 days after the request is enqueued",
        }
    ),
]


def _claim_check_schema(inline: str) -> dict[str, Any]:
    """The JSON Schema rule of a part that is either inline (`inline`) or claim-checked (blob, size, sha256)."""
    return {
        "oneOf": [{"required": [inline]}, {"required": ["blob", "size", "sha256"]}],
        "dependentRequired": {"blob": ["size", "sha256"], "size": ["blob"], "sha256": ["blob"]},
    }


def _one_form(part: Any, inline_value: object, inline: str) -> None:
    """A part is inline (`inline`) or a claim check (blob, size and sha256), never both nor half of one."""
    stored = (part.blob, part.size, part.sha256)
    if inline_value is not None and any(v is not None for v in stored):
        given = next(n for n, v in zip(("blob", "size", "sha256"), stored, strict=True) if v is not None)
        _fail(
            f'belongs to a claim check ("blob", "size", "sha256"), which replaces "{inline}": give one of them',
            under=given,
        )
    if inline_value is None:
        missing = [name for name, v in zip(("blob", "size", "sha256"), stored, strict=True) if v is None]
        if len(missing) == 3:
            _fail(
                'is required (or a claim check instead: "blob", "size" and "sha256" of a blob in mail-payloads)',
                under=inline,
            )
        if missing:
            _fail(
                f"is required in a claim check (blob, size and sha256 together): {', '.join(missing)} missing",
                under=missing[0],
            )


class Body(_ContractModel):
    """The message body: plain text or HTML, inline (`content`) or claim-checked in a blob (UTF-8 text)."""

    model_config = ConfigDict(json_schema_extra=_claim_check_schema("content"))

    content_type: Literal["text", "html"] = Field(alias="contentType")
    content: str | None = None
    blob: BlobName | None = None
    size: Annotated[int, Field(ge=0, le=MAX_BODY_BYTES)] | None = Field(
        default=None, description=f"the blob's length in bytes, at most {MAX_BODY_BYTES}"
    )
    sha256: Sha256 | None = None

    @model_validator(mode="after")
    def _check_form(self) -> Body:
        _one_form(self, self.content, "content")
        return self

    @property
    def stored(self) -> bool:
        return self.blob is not None


class Attachment(_ContractModel):
    """A file attachment: its bytes inline in standard base64 (at most 3 MB), or claim-checked in a blob of the
    relay's mail-payloads container (`blob`, `size`, `sha256`; up to 150 MB).

    With `isInline` and a `contentId` it is an inline image: an HTML body shows it with `<img src="cid:ID">`
    (Graph's fileAttachment, https://learn.microsoft.com/graph/api/resources/fileattachment).
    """

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"isInline": {"const": True}}, "required": ["isInline"]},
            "then": {"required": ["contentId"]},
            **_claim_check_schema("contentBytes"),
        },
    )

    name: NonEmptyLine
    content_type: NonEmptyLine = Field(alias="contentType", description='a MIME type, e.g. "application/pdf"')
    content_bytes: Base64Content | None = Field(default=None, alias="contentBytes")
    blob: BlobName | None = None
    size: Annotated[int, Field(ge=0, le=MAX_ATTACHMENT_BYTES)] | None = Field(
        default=None, description="the blob's length in bytes, at most 150 MB (Graph's limit per attachment)"
    )
    sha256: Sha256 | None = None
    is_inline: bool = Field(
        default=False, alias="isInline", description="shown in the body (cid: images), not as an attachment"
    )
    content_id: ContentId | None = Field(
        default=None,
        alias="contentId",
        description='the id an HTML body names as "cid:<contentId>"',
        validate_default=True,  # so that a missing one is checked against isInline
    )

    @field_validator("content_id", mode="after")
    @classmethod
    def _required_inline(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("is_inline"):
            _fail(
                'is required for an inline attachment ("isInline": true): the HTML body shows it as cid:<contentId>',
                alias="contentId",
            )
        return value

    @model_validator(mode="after")
    def _check_form(self) -> Attachment:
        _one_form(self, self.content_bytes, "contentBytes")
        return self

    @property
    def stored(self) -> bool:
        return self.blob is not None

    @property
    def byte_size(self) -> int:
        """The attachment's length in bytes: the claim check's size, or the decoded base64's."""
        if self.size is not None:
            return self.size
        assert self.content_bytes is not None  # one of the two forms, checked above
        text = self.content_bytes
        return len(text) // 4 * 3 - text[-2:].count("=") if text else 0


class SendRequest(_ContractModel):
    """A request to send one message: the queue message's JSON, version 1."""

    model_config = ConfigDict(
        # "At least one recipient in to, cc or bcc" can be said in JSON Schema (500 in total cannot).
        json_schema_extra={
            "anyOf": [{"required": [name], "properties": {name: {"minItems": 1}}} for name in ("to", "cc", "bcc")]
        },
    )

    sender: Mailbox = Field(alias="from", description="the sending mailbox; must be on the relay's allow-list")
    to: RecipientList = Field(default_factory=list)
    cc: RecipientList = Field(default_factory=list)
    bcc: RecipientList = Field(default_factory=list)
    reply_to: list[Recipient] = Field(default_factory=list, alias="replyTo")
    subject: SingleLine
    body: Body
    importance: Literal["low", "normal", "high"] = "normal"
    attachments: list[Attachment] = Field(default_factory=list)
    headers: Headers = Field(default_factory=dict, description='custom Internet message headers; names start with "X-"')
    save_to_sent_items: bool = Field(default=True, alias="saveToSentItems")
    id: IdempotencyKey | None = Field(default=None, description="idempotency key: one key is sent at most once")
    send_at: SendAt | None = Field(default=None, alias="sendAt")

    def stored_parts(self) -> list[Body | Attachment]:
        """The claim-checked body and attachments."""
        parts: list[Body | Attachment] = [self.body, *self.attachments]
        return [p for p in parts if p.blob is not None]

    def stored_blobs(self) -> list[str]:
        """The claim checks' blob names: what the relay deletes once the request is sent."""
        return [p.blob for p in self.stored_parts() if p.blob is not None]

    def send_time(self) -> datetime | None:
        return datetime.fromisoformat(self.send_at) if self.send_at else None

    def recipient_count(self) -> int:
        """Recipients as Exchange counts them for its per-message limit: to + cc + bcc."""
        return len(self.to) + len(self.cc) + len(self.bcc)

    @model_validator(mode="after")
    def _check_recipient_count(self) -> SendRequest:
        rule = _recipient_count_problem(self.recipient_count())
        if rule:
            _fail(rule, field=RECIPIENTS_FIELD)
        return self


# --- The MIME form -------------------------------------------------------------------------------
# An app that builds its own MIME (S/MIME, calendar invites, a device's mail) sends it as is: Graph takes MIME
# on POST /users/{id}/messages (a draft) and on sendMail, "Content-Type: text/plain" and the MIME base64-encoded
# in the body (https://learn.microsoft.com/graph/api/user-post-messages,
# https://learn.microsoft.com/graph/api/user-sendmail). The request's to/cc/bcc are the envelope: docs/mime.md.

# Graph reads a request body of at most 4 MB, and a MIME payload travels base64-encoded in it: 3,000,000 bytes
# become 4,000,000 characters. Over it Graph answers 413 ("S/MIME message payloads are currently limited to 4 MB",
# https://learn.microsoft.com/graph/api/user-post-messages); no documented MIME path is larger (an upload session
# takes attachments, which would rebuild the MIME, not send it as is).
MAX_MIME_BYTES: Final = 3_000_000
# The fields of the JSON form that the MIME carries itself: a MIME request that sets one is refused, not merged.
MIME_EXCLUDED: Final = ("subject", "body", "attachments", "replyTo", "headers", "importance", "saveToSentItems")


def mime_problem(data: bytes) -> str | None:
    """Why `data` is not a MIME message Graph can take as is, or None. Python's email package, policy default,
    reads it; what it cannot read, or reads with a defect in the top-level header block, is refused, naming why.
    Graph's own answer for malformed MIME is a bare 400 ("MIME content does not contain all required information,
    malformed formatting, or empty", https://learn.microsoft.com/graph/outlook-send-mime-message): refusing here
    says which part is wrong before the request waits on a queue."""
    import email
    from email import policy

    if not data.strip():
        return "is empty; a MIME message has headers, a blank line and a body"
    head, sep, _ = data.replace(b"\r\n", b"\n").partition(b"\n\n")
    if not sep:
        return "has no blank line after its headers: it is not a MIME message (headers, a blank line, a body)"
    first = head.split(b"\n", 1)[0]
    if b":" not in first or first[:1] in (b" ", b"\t"):
        return "does not start with a header line (Name: value): it is not a MIME message"
    try:
        message = email.message_from_bytes(data, policy=policy.default)
        defects = list(message.defects)
        for name in ("From", "To", "Cc", "Bcc", "Content-Type"):
            for value in message.get_all(name) or []:
                defects.extend(getattr(value, "defects", ()))
    except Exception as exc:  # the email package raises many kinds on hostile input: every one is a refusal
        return f"cannot be read as MIME ({type(exc).__name__})"
    if defects:
        return f"is not well-formed MIME: {type(defects[0]).__name__}" + (f" ({defects[0]})" if str(defects[0]) else "")
    if message.get("From") is None:
        return 'has no From header; the MIME names its sender (the relay checks it against "from")'
    if len(message.get_all("From") or []) > 1:
        return "has more than one From header"
    return None


def mime_base64_problem(value: str) -> str | None:
    if not _BASE64_RE.fullmatch(value):
        return _base64_problem(value)
    return None


def _check_mime_bytes(value: str) -> str:
    problem = mime_base64_problem(value)
    if problem:
        _fail(problem)
    data = base64.b64decode(value, validate=True)
    if len(data) > MAX_MIME_BYTES:
        _fail(f"decodes to {len(data)} bytes, over the {MAX_MIME_BYTES} bytes Graph takes as MIME (4 MB base64)")
    problem = mime_problem(data)
    if problem:
        _fail(problem)
    return value


MimeBytes = Annotated[
    str,
    AfterValidator(_check_mime_bytes),
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "contentMediaType": "message/rfc822",
            "pattern": BASE64_PATTERN,
            "minLength": 1,
            "description": "the MIME message (RFC 5322 headers, a blank line, the body) in standard base64 on one line",
        }
    ),
]


class Mime(_ContractModel):
    """The MIME message of a MIME request: inline (`contentBytes`, base64) or claim-checked in a blob of the app's
    payload container (`blob`, `size`, `sha256`), as an attachment is."""

    model_config = ConfigDict(json_schema_extra=_claim_check_schema("contentBytes"))

    content_bytes: MimeBytes | None = Field(default=None, alias="contentBytes")
    blob: BlobName | None = None
    size: Annotated[int, Field(ge=0, le=MAX_MIME_BYTES)] | None = Field(
        default=None, description=f"the blob's length in bytes, at most {MAX_MIME_BYTES} (Graph's MIME limit)"
    )
    sha256: Sha256 | None = None

    @model_validator(mode="after")
    def _check_form(self) -> Mime:
        _one_form(self, self.content_bytes, "contentBytes")
        return self

    @property
    def stored(self) -> bool:
        return self.blob is not None

    @property
    def byte_size(self) -> int:
        if self.size is not None:
            return self.size
        assert self.content_bytes is not None
        text = self.content_bytes
        return len(text) // 4 * 3 - text[-2:].count("=")

    def inline_bytes(self) -> bytes | None:
        return None if self.content_bytes is None else base64.b64decode(self.content_bytes)


class MimeRequest(_ContractModel):
    """A request to send a MIME message as is: `to`, `cc` and `bcc` are the envelope (who receives it), the MIME
    carries everything else. It has the JSON form's `from`, `id` and `sendAt`, and none of the fields the MIME
    carries (MIME_EXCLUDED)."""

    sender: Mailbox = Field(alias="from", description="the sending mailbox; must be on the relay's allow-list")
    to: RecipientList = Field(default_factory=list)
    cc: RecipientList = Field(default_factory=list)
    bcc: RecipientList = Field(default_factory=list)
    mime: Mime
    id: IdempotencyKey | None = Field(default=None, description="idempotency key: one key is sent at most once")
    send_at: SendAt | None = Field(default=None, alias="sendAt")

    @property
    def save_to_sent_items(self) -> bool:
        """A sent draft is always saved to Sent Items (https://learn.microsoft.com/graph/api/message-send), which
        is where the relay looks for an unknown outcome's mark."""
        return True

    def stored_parts(self) -> list[Mime]:
        return [self.mime] if self.mime.blob is not None else []

    def stored_blobs(self) -> list[str]:
        return [self.mime.blob] if self.mime.blob is not None else []

    def send_time(self) -> datetime | None:
        return datetime.fromisoformat(self.send_at) if self.send_at else None

    def recipient_count(self) -> int:
        return len(self.to) + len(self.cc) + len(self.bcc)

    def envelope(self) -> list[str]:
        """The envelope's addresses, lower case, in order, without repeats."""
        seen: dict[str, None] = {}
        for r in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(r.address.lower(), None)
        return list(seen)

    @model_validator(mode="after")
    def _check_recipient_count(self) -> MimeRequest:
        rule = _recipient_count_problem(self.recipient_count())
        if rule:
            _fail(rule, field=RECIPIENTS_FIELD)
        return self


AnyRequest = SendRequest | MimeRequest


def _recipient_count_problem(count: int) -> str | None:
    if count == 0:
        return "at least one recipient is required in to, cc or bcc"
    if count > MAX_RECIPIENTS:
        return (
            f"{count} recipients in to, cc and bcc together; Exchange Online takes at most {MAX_RECIPIENTS} "
            "per message: split the message"
        )
    return None


# The model behind each JSON object in a request, by the field that holds it: to name allowed fields.
_NESTED_MODELS: Final[dict[str, type[BaseModel]]] = {
    "body": Body,
    "to": Recipient,
    "cc": Recipient,
    "bcc": Recipient,
    "replyTo": Recipient,
    "attachments": Attachment,
    "mime": Mime,
}


# --- Parsing -------------------------------------------------------------------------------------


def parse_request(raw: bytes | bytearray | str | Mapping[str, Any]) -> SendRequest | MimeRequest:
    """A valid send request from JSON (UTF-8 bytes or text) or an already parsed object: the JSON form, or the
    MIME form when it has a "mime" field.

    Raises ContractError listing every violation found.
    """
    data = _load_object(raw)
    if "mime" in data:
        return _parse_mime_request(data)
    try:
        return SendRequest.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        violations = [_violation(error) for error in exc.errors(include_url=False)]
        if not any(v.field == RECIPIENTS_FIELD for v in violations):
            # The recipient count is checked after the fields, so it was not reached: count the raw lists.
            rule = _raw_recipient_count_problem(data)
            if rule:
                violations.append(Violation(RECIPIENTS_FIELD, rule))
        raise ContractError(violations) from exc


def _parse_mime_request(data: dict[str, Any]) -> MimeRequest:
    """The MIME form: the fields the MIME carries are refused by name, with why, before the rest is read."""
    excluded = [
        Violation(name, "has no place in a MIME request: the MIME message carries it; set it in the MIME")
        for name in MIME_EXCLUDED
        if name in data
    ]
    rest = {k: v for k, v in data.items() if k not in MIME_EXCLUDED}
    try:
        request = MimeRequest.model_validate(rest, by_alias=True, by_name=False)
    except ValidationError as exc:
        violations = [
            Violation(_field_path(error["loc"]), _unknown_field_rule(error["loc"], MimeRequest))
            if error["type"] == "extra_forbidden"
            else _violation(error)
            for error in exc.errors(include_url=False)
        ]
        if not any(v.field == RECIPIENTS_FIELD for v in violations):
            rule = _raw_recipient_count_problem(rest)
            if rule:
                violations.append(Violation(RECIPIENTS_FIELD, rule))
        raise ContractError(excluded + violations) from exc
    if excluded:
        raise ContractError(excluded)
    return request


def _raw_recipient_count_problem(data: Mapping[str, Any]) -> str | None:
    lists = [data.get(name, []) for name in ("to", "cc", "bcc")]
    if not all(isinstance(value, list) for value in lists):
        return None  # a list that is not a list has its own violation; a count would only add noise
    return _recipient_count_problem(sum(len(value) for value in lists))


def _message_error(rule: str, *, encoding: bool = False) -> ContractError:
    return ContractError([Violation(MESSAGE_FIELD, rule)], encoding=encoding)


def _load_object(raw: bytes | bytearray | str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        problem = structure_problem(raw)  # a Python caller (requeue, the client) may hold a lone surrogate too
        if problem:
            raise ContractError([Violation(*problem)])
        return dict(raw)
    if isinstance(raw, bytes | bytearray):
        text = _decode_utf8(bytes(raw))
    elif isinstance(raw, str):
        text = raw
    else:
        raise TypeError(f"parse_request takes bytes, str or a mapping, not {type(raw).__name__}")
    # RFC 8259 lets a parser ignore a byte order mark; Windows tools write one often.
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise _message_error("is empty; a send request is a JSON object", encoding=True)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _message_error(_not_json_rule(text, exc), encoding=True) from None
    except (ValueError, RecursionError) as exc:
        # Python refuses integers of more than 4,300 digits (a ValueError that is no JSONDecodeError), and
        # its parser recurses once per level of nesting: neither may escape as anything but a violation.
        if isinstance(exc, RecursionError):
            rule = f"nests arrays or objects too deeply; a send request nests {MAX_DEPTH} levels at most"
        else:
            rule = "holds a number of more than 4,300 digits; no field of a send request is such a number"
        raise _message_error(rule) from None
    problem = structure_problem(value)
    if problem:
        raise ContractError([Violation(*problem)])
    if isinstance(value, str) and json_object(value) is not None:
        raise _message_error(
            "is a JSON string that holds a JSON object: the request seems JSON-encoded twice; "
            "serialize the object once",
            encoding=True,
        )
    if not isinstance(value, dict):
        raise _message_error(f"must be a JSON object ({{...}}), not {_describe(value)}")
    return value


def structure_problem(value: Any) -> tuple[str, str] | None:
    """(field, rule) of what makes a parsed JSON value unfit to be a request before any field is read:
    nesting deeper than MAX_DEPTH, or a lone UTF-16 surrogate ("\\ud800") in a string or a key, which
    no UTF-8 text can hold (Graph, the queue and the logs would all choke on it). Iterative: a value nested
    a thousand levels deep must not exhaust the stack here either."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict | list) and depth > MAX_DEPTH:
            rule = f"nests arrays or objects more than {MAX_DEPTH} levels deep; a request is flat"
            return path or MESSAGE_FIELD, rule
        if isinstance(item, str):
            position = next((i for i, c in enumerate(item) if 0xD800 <= ord(c) <= 0xDFFF), None)
            if position is not None:
                return path or MESSAGE_FIELD, (
                    f"holds a lone UTF-16 surrogate (U+{ord(item[position]):04X}) at character {position + 1}; "
                    "text must be valid Unicode (a character outside the BMP is written as one surrogate pair)"
                )
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth, path))
                stack.append((child, depth + 1, f"{path}.{key}" if path else str(key)))
        elif isinstance(item, list):
            stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(item))
    return None


def _decode_utf8(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw[:4]:
        raise _message_error(
            "is UTF-16 text (byte order mark or NUL bytes); a send request is JSON encoded as UTF-8", encoding=True
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _message_error(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start} is invalid); a send "
            "request is JSON encoded as UTF-8, so convert text in another encoding (Windows-1252, "
            "Latin-1) first",
            encoding=True,
        ) from None


def _not_json_rule(text: str, exc: json.JSONDecodeError) -> str:
    if json_object(decode(text)) is not None:
        return (
            "is base64 text, not JSON, and it decodes to a JSON object: the request seems base64-encoded "
            "twice, or the encoding does not match the queue's messageEncoding (host.json, base64 by "
            "default); encode the JSON once"
        )
    return f"is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"


# --- pydantic errors as violations ---------------------------------------------------------------


def _field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as a JSON path: ("to", 2, "name") -> "to[2].name"."""
    path = ""
    for position, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            continue  # pydantic's marker for an error in a dict key: the key is already in the path
        elif position == 1 and loc[0] == "headers":
            path += f"[{_quote(part)}]"  # a header name, which may hold dots
        else:
            path += f".{part}" if path else part
    return path or MESSAGE_FIELD


def _model_at(loc: tuple[int | str, ...], root: type[BaseModel] | None = None) -> type[BaseModel]:
    model: type[BaseModel] = root or SendRequest
    for part in loc:
        if isinstance(part, str):
            model = _NESTED_MODELS.get(part, model)
    return model


def _unknown_field_rule(loc: tuple[int | str, ...], root: type[BaseModel] | None = None) -> str:
    unknown = str(loc[-1])
    model = _model_at(loc[:-1], root)
    allowed = {name: field.alias or name for name, field in model.model_fields.items()}
    json_names = list(allowed.values())
    if unknown in allowed and allowed[unknown] != unknown:
        return f"unknown field; in JSON this field is called {_quote(allowed[unknown])}"

    def squashed(name: str) -> str:
        return name.replace("_", "").replace("-", "").lower()

    close = [name for name in json_names if squashed(name) == squashed(unknown)]
    close = close or difflib.get_close_matches(unknown, json_names, n=1, cutoff=0.7)
    if close:
        return f"unknown field (did you mean {_quote(close[0])}?)"
    return f"unknown field; allowed here: {', '.join(json_names)}"


_REQUIRED_HINTS: Final = {
    "from": "the sending mailbox, e.g. relay@contoso.com",
    "subject": 'use "" for a message without a subject',
    "body": '{"contentType": "text" or "html", "content": "..."}',
    "body.contentType": '"text" or "html"',
    "address": "the recipient's email address",
}
_RECIPIENT_FORMS: Final = (
    '"a@contoso.com", "Ada Lovelace <a@contoso.com>" or {"address": "a@contoso.com", "name": "Ada"}'
)


def _violation(error: PydanticErrorDetails) -> Violation:
    loc = error["loc"]
    ctx = error.get("ctx", {})
    value = error.get("input")
    field = _field_path(loc)
    kind = error["type"]
    last = loc[-1] if loc else ""

    if kind == _RULE_ERROR:
        if "alias" in ctx:
            field = _field_path((*loc[:-1], ctx["alias"]))
        if "under" in ctx:
            field = _field_path((*loc, ctx["under"]))
        return Violation(ctx.get("field", field), ctx["rule"])
    if kind == "missing":
        hint = _REQUIRED_HINTS.get(field) or _REQUIRED_HINTS.get(str(last))
        return Violation(field, f"is required ({hint})" if hint else "is required")
    if kind == "extra_forbidden":
        return Violation(field, _unknown_field_rule(loc))
    if kind == "string_type":
        return Violation(field, f"must be a string, not {_describe(value)}")
    if kind == "bool_type":
        return Violation(field, f"must be true or false (a JSON boolean), not {_describe(value)}")
    if kind == "list_type":
        if last in ("to", "cc", "bcc", "replyTo"):
            return Violation(field, f'must be a list of recipients, not {_describe(value)}; write ["a@contoso.com"]')
        return Violation(field, f"must be a list (JSON array), not {_describe(value)}")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if isinstance(last, int) and _model_at(loc) is Recipient:
            return Violation(field, f"must be a recipient: {_RECIPIENT_FORMS}; not {_describe(value)}")
        return Violation(field, f"must be a JSON object, not {_describe(value)}")
    if kind == "literal_error":
        expected = ctx.get("expected", "").replace("'", '"')
        rule = f"must be {expected}, not {_describe(value)}"
        if isinstance(value, str) and value.lower() != value and f'"{value.lower()}"' in expected:
            rule += " (the values are lower case)"
        return Violation(field, rule)
    if kind in ("int_type", "int_parsing"):
        return Violation(field, f"must be a whole number (a JSON integer), not {_describe(value)}")
    if kind == "less_than_equal":
        limit = ctx.get("le")
        words = " (150 MB, Graph's limit per attachment)" if limit == MAX_ATTACHMENT_BYTES else ""
        return Violation(field, f"is {value} bytes; at most {limit}{words}")
    if kind == "greater_than_equal":
        return Violation(field, f"must not be negative, not {value}")
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return Violation(field, "must not be empty")
    if kind == "string_too_long":
        length = len(value) if isinstance(value, str) else "more"
        return Violation(field, f"must be at most {ctx.get('max_length')} characters long, not {length}")
    return Violation(field, error["msg"])  # a case not worded above: pydantic's own words


# --- The JSON Schema -----------------------------------------------------------------------------

_SCHEMA_DESCRIPTION: Final = (
    "A request to the Graph Mail Relay to send one message (version 1): the JSON of one queue message, "
    "UTF-8, carried base64-encoded in the queue. Field names follow Microsoft Graph's message resource. "
    'A recipient is "a@contoso.com", "Ada Lovelace <ada@contoso.com>" or '
    '{"address": "a@contoso.com", "name": "Ada"}. Unknown fields are refused. '
    "The relay also enforces rules this schema cannot express: at most 500 recipients in to, cc and bcc "
    "together (the schema limits each list alone to 500); 'from' must be on the relay's allow-list; "
    "one id is sent at most once; a sendAt names a date that exists (no 30 February) and lies at most 7 days after "
    "the request is enqueued; a claim check names a blob in the relay's mail-payloads container that holds exactly "
    "size bytes with that SHA-256; a MIME request's (\"mime\") message is MIME that Python's email package reads "
    "without a defect in its From, To, Cc, Bcc or Content-Type header, with one From, of at most 3,000,000 bytes "
    "(docs/mime.md)."
)


def _exact_end(schema: Any) -> Any:
    """`schema` with each pattern's final "$" made exact in every regex engine.

    In Python, Java and .NET, "$" also matches before a final newline, so "^...$" alone would let
    "mailbox@contoso.com\n" or "YWJj\n" pass a schema validator there while the relay refuses them.
    "$(?!\n)" reads the same in ECMA-262 (the JSON Schema dialect) and refuses the newline elsewhere.
    """
    if isinstance(schema, dict):
        return {
            key: (
                value + "(?!\\n)"
                if key == "pattern" and isinstance(value, str) and value.endswith("$") and not value.endswith("\\$")
                else _exact_end(value)
            )
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_exact_end(item) for item in schema]
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the send request, generated from the models by JSON name."""
    generated = SendRequest.model_json_schema(by_alias=True, mode="validation")
    generated.pop("description", None)
    # The MIME form shares the object: "mime" replaces subject, body and the other fields the MIME carries.
    mime = MimeRequest.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    generated.setdefault("$defs", {}).update(mime.get("$defs", {}))
    generated["properties"]["mime"] = {
        "$ref": "#/$defs/Mime",
        "description": "the MIME message to send as is; to, cc and bcc are then its envelope (docs/mime.md)",
    }
    generated["required"] = ["from"]
    generated["if"] = {"required": ["mime"]}
    generated["then"] = {"properties": dict.fromkeys(MIME_EXCLUDED, False)}
    generated["else"] = {"required": ["subject", "body"]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Graph Mail Relay send request, version 1",
        "description": _SCHEMA_DESCRIPTION,
        **{key: _exact_end(value) for key, value in generated.items() if key != "title"},
    }


def render_schema() -> str:
    """The schema file's text: a stable format, so a regenerated file differs only where the schema does."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m shared.contract", description="The send request's JSON Schema file."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-schema", action="store_true", help=f"regenerate {SCHEMA_PATH.name} (both copies)")
    action.add_argument("--check-schema", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render_schema()
    paths = [p for p in SCHEMA_PATHS if p == SCHEMA_PATH or p.parent.is_dir()]  # no client/ when deployed
    if args.write_schema:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path}")
        return 0
    stale = [p for p in paths if (p.read_text(encoding="utf-8") if p.exists() else "").replace("\r\n", "\n") != text]
    for path in stale:
        print(f"{path} is out of date: run python -m shared.contract --write-schema")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(_main())
