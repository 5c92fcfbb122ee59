"""The send request checked as the relay checks it: the relay's JSON Schema, plus the rules it cannot express.

`send-request.v1.json` beside this module is generated from the relay's own contract
(`python -m shared.contract --write-schema` writes both copies), and the relay's test suite runs one corpus
of valid and invalid requests through this module and through the relay to prove they agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError

SCHEMA_FILE: Final = "send-request.v1.json"
MAX_RECIPIENTS: Final = 500  # Exchange Online's per message limit, over to, cc and bcc together
MAX_LOCAL_PART: Final = 64  # RFC 5321's limit on the part before the @
RECIPIENTS_FIELD: Final = "to/cc/bcc"


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
    found = [v for error in _validator().iter_errors(dict(request)) for v in _violations(error)]
    found += _cross_field_rules(request)
    found += _surrogates(request)
    return found


def validate(request: Mapping[str, Any]) -> None:
    """Raise ContractError listing every broken rule."""
    found = violations(request)
    if found:
        raise ContractError(found)


def _cross_field_rules(request: Mapping[str, Any]) -> list[Violation]:
    """The rules the schema's description names as the relay's own: JSON Schema cannot say them."""
    found: list[Violation] = []
    lists = [request.get(name, []) for name in ("to", "cc", "bcc")]
    if all(isinstance(value, list) for value in lists):
        count = sum(len(value) for value in lists)
        if count > MAX_RECIPIENTS:
            found.append(
                Violation(
                    RECIPIENTS_FIELD,
                    f"{count} recipients in to, cc and bcc together; Exchange Online takes at most "
                    f"{MAX_RECIPIENTS} per message: split the message",
                )
            )
    sender = request.get("from")
    if isinstance(sender, str) and len(sender.rpartition("@")[0]) > MAX_LOCAL_PART:
        found.append(Violation("from", f"has more than {MAX_LOCAL_PART} characters before the @"))
    for name in ("to", "cc", "bcc", "replyTo"):
        for i, recipient in enumerate(request.get(name) or [] if isinstance(request.get(name), list) else []):
            address = recipient.get("address") if isinstance(recipient, Mapping) else recipient
            if isinstance(address, str):
                local = address.rpartition("<")[2].rpartition("@")[0]
                if len(local) > MAX_LOCAL_PART:
                    found.append(Violation(f"{name}[{i}]", f"has more than {MAX_LOCAL_PART} characters before the @"))
    return found


def _surrogates(request: Mapping[str, Any]) -> list[Violation]:
    """A lone UTF-16 surrogate ("\\ud800") fits in a Python str but in no UTF-8 text: the relay refuses it."""
    stack: list[tuple[Any, str]] = [(request, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in item):
            return [Violation(path or "(message)", "holds a lone UTF-16 surrogate; text must be valid Unicode")]
        if isinstance(item, Mapping):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in item.items())
            stack.extend((k, path) for k in item)
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
    return []


def _violations(error: ValidationError) -> list[Violation]:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        # One violation per unknown field, named by its own path, as the relay names them.
        allowed = set(error.schema.get("properties", {}))
        return [
            Violation(f"{path}.{name}" if path else str(name), "unknown field (fields are case-sensitive)")
            for name in error.instance
            if name not in allowed
        ]
    return [Violation(path or "(message)", _rule(error))]


def _rule(error: ValidationError) -> str:
    """The validator's message, without echoing a long value back (it may be a whole body)."""
    if error.validator in ("pattern", "maxLength", "minLength", "format", "type", "enum", "const"):
        shown = json.dumps(error.instance, ensure_ascii=False)
        shown = shown if len(shown) <= 60 else shown[:56] + '..."'
        return f"{shown} breaks the rule {error.validator}: {json.dumps(error.validator_value)[:120]}"
    return str(error.message)[:300]
