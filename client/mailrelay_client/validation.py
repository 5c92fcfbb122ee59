"""The send request checked as the relay checks it: the relay's JSON Schema, plus the one rule it cannot express.

`send-request.v1.json` beside this module is generated from the relay's own contract
(`python -m shared.contract --write-schema` writes both copies), and the relay's test suite runs one corpus
of valid and invalid requests through this module and through the relay to prove they agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError

SCHEMA_FILE: Final = "send-request.v1.json"
MAX_RECIPIENTS: Final = 500  # Exchange Online's per message limit, over to, cc and bcc together
RECIPIENTS_FIELD: Final = "to/cc/bcc"
_RECIPIENT_LISTS: Final = [["to"], ["cc"], ["bcc"]]


_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Violation:
    """One broken rule: `field` is a JSON path ("to[2]", "attachments[0].contentBytes")."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class ContractError(ValueError):
    """A send request that breaks the contract; `violations` lists every broken rule."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = list(violations)
        super().__init__("\n".join(str(v) for v in self.violations))


def schema() -> dict[str, Any]:
    """The relay's JSON Schema of the send request, version 1 (draft 2020-12)."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@cache
def _validator() -> Draft202012Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


def violations(request: Mapping[str, Any]) -> list[Violation]:
    """Every rule `request` breaks, or [] if the relay will accept it (the allow-list aside)."""
    surrogate = _surrogates(request)
    if surrogate:
        return surrogate  # the relay refuses such text before it reads a field, and says only that
    total = _cross_field_rules(request) + _mime_excluded(request) + _mime_rules(request)
    # The schema's "then" refuses the fields a MIME request may not hold; _mime_excluded names each of them.
    errors = (e for e in _validator().iter_errors(dict(request)) if list(e.absolute_schema_path)[:1] != ["then"])
    if total:
        # One list over 500 is also over 500 in all: say that once, as the relay does.
        errors = (e for e in errors if not (e.validator == "maxItems" and list(e.absolute_path) in _RECIPIENT_LISTS))
    return [v for error in errors for v in _violations(error)] + total


def validate(request: Mapping[str, Any]) -> None:
    """Raise ContractError listing every broken rule."""
    found = violations(request)
    if found:
        raise ContractError(found)


def _cross_field_rules(request: Mapping[str, Any]) -> list[Violation]:
    """The rule the schema's description names as the relay's own that JSON Schema cannot say."""
    lists = [request.get(name, []) for name in ("to", "cc", "bcc")]
    if all(isinstance(value, list) for value in lists):
        count = sum(len(value) for value in lists)
        if count > MAX_RECIPIENTS:
            return [
                Violation(
                    RECIPIENTS_FIELD,
                    f"{count} recipients in to, cc and bcc together; Exchange Online takes at most "
                    f"{MAX_RECIPIENTS} per message: split the message",
                )
            ]
    return []


# The JSON form's fields that the MIME message carries itself (the relay's MIME_EXCLUDED).
MIME_EXCLUDED: Final = ("subject", "body", "attachments", "replyTo", "headers", "importance", "saveToSentItems")


def _mime_excluded(request: Mapping[str, Any]) -> list[Violation]:
    """A MIME request ("mime") names none of the fields its MIME carries: each one given is named."""
    if "mime" not in request:
        return []
    rule = "has no place in a MIME request: the MIME message carries it; set it in the MIME"
    return [Violation(name, rule) for name in MIME_EXCLUDED if name in request]


MAX_MIME_BYTES: Final = 3_000_000  # the relay's: Graph takes MIME in a request of at most 4 MB, base64-encoded


def _mime_rules(request: Mapping[str, Any]) -> list[Violation]:
    """An inline MIME message is read as the relay reads it (its MIME_PROBLEM rule, the same code)."""
    import base64
    import binascii

    mime = request.get("mime")
    inline = mime.get("contentBytes") if isinstance(mime, Mapping) else None
    if not isinstance(inline, str) or not _BASE64.fullmatch(inline):
        return []  # not base64: the schema's pattern says so
    try:
        data = base64.b64decode(inline, validate=True)
    except binascii.Error:
        return []
    if len(data) > MAX_MIME_BYTES:
        rule = f"decodes to {len(data)} bytes, over the {MAX_MIME_BYTES} bytes Graph takes as MIME (4 MB base64)"
        return [Violation("mime.contentBytes", rule)]
    problem = mime_problem(data)
    return [Violation("mime.contentBytes", problem)] if problem else []


_BASE64: Final = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def mime_problem(data: bytes) -> str | None:
    """Why `data` is not a MIME message the relay sends as is, or None: a copy of the relay's
    shared.contract.mime_problem (the client cannot import the relay); a test holds the two to the same answers."""
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


def envelope_problem(data: bytes, sender: str, envelope: Sequence[str]) -> tuple[str, str] | None:
    """(code, reason) when the relay would refuse to send the MIME `data` from `sender` to the addresses `envelope`
    (to, cc and bcc together), or None: a copy of the relay's checks in shared.sending.prepare_mime (the client
    cannot import the relay; a test holds the two to the same answers). Checked before anything is stored, so an app
    (or the SMTP listener, before it answers 250) hears it at once instead of finding a dead letter later.

    - The MIME's From must be `sender`: Graph sends as the mailbox in the URL, and the allow-list checks that one.
    - Every address the To, Cc and Bcc headers name must be in the envelope: Graph delivers to the headers'
      recipients, and the relay will not rewrite headers that others see (or that a signature covers).
    The reasons name no address (they reach logs and dead letters), only counts."""
    import email
    from email import policy
    from email.utils import getaddresses

    message = email.message_from_bytes(data, policy=policy.compat32)  # raw values, as the relay reads them
    senders = [a.lower() for _, a in getaddresses(message.get_all("From") or []) if a]
    if senders != [sender.lower()]:
        return (
            "MimeSenderMismatch",
            'the MIME\'s From header names another mailbox than the request\'s "from"; they must be the same',
        )
    named = {a.lower() for name in ("To", "Cc", "Bcc") for _, a in getaddresses(message.get_all(name) or []) if a}
    outside = named - {a.lower() for a in envelope}
    if outside:
        return (
            "MimeRecipientNotInEnvelope",
            f"{len(outside)} recipient(s) in the MIME's To, Cc or Bcc headers are not in the request's to, cc or "
            "bcc; Graph would deliver to them: add them to the envelope or remove them from the MIME",
        )
    return None


def _surrogates(request: Mapping[str, Any]) -> list[Violation]:
    """A lone UTF-16 surrogate ("\\ud800") fits in a Python str but in no UTF-8 text: the relay refuses it."""
    stack: list[tuple[Any, str]] = [(request, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in item):
            return [Violation(path or "(message)", "holds a lone UTF-16 surrogate; text must be valid Unicode")]
        if isinstance(item, Mapping):
            stack.extend((v, _join(path, str(k))) for k, v in item.items())
            stack.extend((k, path) for k in item)
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
    return []


def _join(path: str, part: str | int) -> str:
    """A JSON path as the relay writes it: to[0].address, headers["X-Order-Id"].

    The contract's field names are identifiers; any other key is a map's (a header name) and is quoted.
    """
    if isinstance(part, int):
        return f"{path}[{part}]"
    if not _IDENTIFIER.fullmatch(part):
        return f"{path}[{json.dumps(part, ensure_ascii=False)}]"
    return f"{path}.{part}" if path else part


def _violations(error: ValidationError) -> list[Violation]:
    path = ""
    for part in error.absolute_path:
        path = _join(path, part)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        # One violation per unknown field, named by its own path, as the relay names them.
        allowed = set(error.schema.get("properties", {}))
        return [
            Violation(_join(path, str(name)), "unknown field (fields are case-sensitive)")
            for name in error.instance
            if name not in allowed
        ]
    if error.validator == "required" and isinstance(error.validator_value, list):
        present = error.instance if isinstance(error.instance, Mapping) else {}
        return [Violation(_join(path, name), "is required") for name in error.validator_value if name not in present]
    if error.validator == "dependentRequired" and isinstance(error.instance, Mapping):
        # A claim check needs blob, size and sha256 together: each missing one named by its own path; beside the
        # inline form, each claim-check field given is the one out of place.
        if any(name in error.instance for name in ("content", "contentBytes")):
            return [
                Violation(_join(path, field), "belongs to a claim check, which replaces the inline content: drop one")
                for field in error.validator_value
                if field in error.instance
            ]
        return [
            Violation(_join(path, name), "is required in a claim check (blob, size and sha256 together)")
            for field, needed in error.validator_value.items()
            if field in error.instance
            for name in needed
            if name not in error.instance
        ]
    if "propertyNames" in error.relative_schema_path:
        # A bad key: named as the relay names it, headers["Subject"].
        return [Violation(f"{path}[{json.dumps(error.instance, ensure_ascii=False)}]", _rule(error))]
    if error.validator == "not" and not isinstance(error.instance, str):
        return []  # `not` holds a string pattern; a value of another type has its own type error
    claim_check = [n for n in ("blob", "size", "sha256") if isinstance(error.instance, Mapping) and n in error.instance]
    if error.validator == "oneOf" and claim_check and not error.context:
        # Valid under both forms: inline content and a whole claim check. Named as the relay names it.
        return [Violation(_join(path, claim_check[0]), "belongs to a claim check, which replaces the inline content")]
    if error.validator in ("anyOf", "oneOf") and error.context:
        return _form_violations(path, error)
    return [Violation(path or "(message)", _rule(error))]


def _form_violations(path: str, error: ValidationError) -> list[Violation]:
    """What is wrong with a value that matches none of its forms (anyOf), in the form it has."""
    branches = list(error.validator_value)
    context = error.context or []
    wrong_type = {e.relative_schema_path[0] for e in context if e.validator == "type" and not e.relative_path}
    fitting = [i for i in range(len(branches)) if i not in wrong_type]
    if not fitting:
        # A recipient is a string or an object, an id a string or null: neither fits.
        forms = " or ".join(_type_words(b.get("type")) for b in branches if isinstance(b, Mapping))
        return [Violation(path or "(message)", f"must be {forms}, not {_describe(error.instance)}")]
    if error.validator == "oneOf" and context and all(e.validator == "required" for e in context):
        # Inline or claim-checked (content or blob, size and sha256): neither given; name the inline field. A
        # claim check begun but not finished is dependentRequired's to name.
        present = set(error.instance) if isinstance(error.instance, Mapping) else set()
        if any(present & set(b.get("required", [])) for b in branches if isinstance(b, Mapping)):
            return []
        first = branches[0].get("required", []) if isinstance(branches[0], Mapping) else []
        return [
            Violation(_join(path, name), 'is required (or a claim check instead: "blob", "size" and "sha256")')
            for name in first[:1]
        ]
    if len(fitting) == 1:
        # Say what is wrong with the form the value has, not that it matches no form.
        return [v for e in context if e.relative_schema_path[0] == fitting[0] for v in _violations(e)]
    required = [name for b in branches if isinstance(b, Mapping) for name in b.get("required", [])]
    if len(required) == len(branches):
        # The schema's "at least one of to, cc, bcc, not empty".
        names = ", ".join(required[:-1]) + f" or {required[-1]}"
        return [Violation("/".join(required), f"at least one recipient is required in {names}")]
    return [Violation(path or "(message)", str(error.message)[:300])]


_TYPE_WORDS: Final = {
    "string": "a string",
    "array": "an array",
    "object": "an object",
    "boolean": "true or false",
    "null": "null",
    "integer": "an integer",
    "number": "a number",
}


def _type_words(types: Any) -> str:
    names = types if isinstance(types, list) else [types]
    return " or ".join(_TYPE_WORDS.get(str(name), str(name)) for name in names)


def _describe(value: Any) -> str:
    """What a JSON value is, in words, without echoing a long one (it may be a whole body)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, int | float):
        return f"a number ({_shown(value)})"
    if isinstance(value, str):
        return f"a string ({_shown(value)})"
    return "an array" if isinstance(value, list) else "an object"


def _shown(value: Any) -> str:
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 60 else shown[:56] + '..."'


def _rule(error: ValidationError) -> str:
    """The broken rule in words; the schema's own description of the value where it has one."""
    limit = error.validator_value
    value = error.instance
    size = len(value) if isinstance(value, str | list | Mapping) else 0
    if error.validator in ("pattern", "format", "maxLength") and error.schema.get("format") == "email":
        # A field's own description ("the sending mailbox") replaces the address rule's in the schema.
        return (
            f"{_shown(value)} is not an email address the relay accepts: local@domain.tld, ASCII, at most 64 "
            "characters before the @ and 254 in all (an internationalized domain in its xn-- form)"
        )
    if error.validator in ("pattern", "format"):
        description = error.schema.get("description")
        if description:
            return f"{_shown(value)} is not {description}"
        return f"{_shown(value)} does not match the pattern {json.dumps(error.schema.get('pattern'))[:120]}"
    if error.validator == "not" and isinstance(value, str) and isinstance(limit, Mapping) and "pattern" in limit:
        # The schema's one use of `not`: a character class of line breaks (CR, LF, NEL, U+2028, U+2029).
        found = re.search(str(limit["pattern"]), value)
        where = f"U+{ord(found.group()):04X} at character {found.start() + 1}" if found else "one"
        return (
            f"must not contain CR, LF or another line break: found {where}; a line break in a mail header "
            "would let the text inject headers of its own"
        )
    if error.validator == "type":
        return f"must be {_type_words(limit)}, not {_describe(value)}"
    if error.validator == "enum":
        values = " or ".join(json.dumps(v) for v in limit)
        return f"must be {values}, not {_describe(value)} (values are case-sensitive)"
    if error.validator == "minLength":
        return "must not be empty" if limit == 1 else f"must be at least {limit} characters long, not {size}"
    if error.validator == "maxLength":
        return f"must be at most {limit:,} characters long, not {size:,}"
    if error.validator in ("minItems", "minProperties"):
        return f"must have at least {limit} entries"
    if error.validator in ("maxItems", "maxProperties"):
        return f"has {size} entries; at most {limit} are allowed"
    return str(error.message)[:300]
