"""Outlook's single-value extended properties as Graph and Exchange treat them: the id formats, the value's
type, and the one `$filter` on them the emulator answers.

An id names a MAPI property in one of three formats
(https://learn.microsoft.com/en-us/graph/api/resources/extended-properties-overview, "id formats"):
"{type} {guid} Name {name}", "{type} {guid} Id {id}" and "{type} {proptag}", for example
"String {8ECCC264-6880-4EBE-992F-8888D2EEAA1D} Name TestProperty", "Integer {...} Id 0x8012", "String 0x4001001E".
Filtering the Name in an id is case-sensitive, filtering the value case-insensitive
(https://learn.microsoft.com/en-us/graph/api/singlevaluelegacyextendedproperty-get).

Exchange's codes for a bad one (https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/responsecode):
ErrorInvalidExtendedProperty, "The extended property attribute combination is invalid." (an id Exchange cannot
read; Graph answers it so, microsoftgraph/microsoft-graph-docs#2251), and ErrorInvalidExtendedPropertyValue, "The
extended property value is inconsistent with its type.". Assumed: that Graph answers them with 400 and these texts
for a sendMail or a draft (the EWS page lists the codes, not Graph's status; the reports show the first).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from devstack.emulator.common import _Problem


def _integer(bits: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            number = int(value.strip(), 10)
        except ValueError:
            return False
        return -(1 << (bits - 1)) <= number < 1 << (bits - 1)

    return check


def _floating(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _timestamp(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _binary(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        return False
    return True


# The single-value MAPI property types (Exchange's MapiPropertyType without the Array ones, which belong to
# multi-value properties), by lower-cased name: (the canonical name, whether a string value fits the type).
_TYPES: dict[str, tuple[str, Callable[[str], bool]]] = {
    name.lower(): (name, check)
    for name, check in (
        ("String", lambda _value: True),
        ("Boolean", lambda value: value.lower() in ("true", "false")),
        ("Short", _integer(16)),
        ("Integer", _integer(32)),
        ("Long", _integer(64)),
        ("Float", _floating),
        ("Double", _floating),
        ("Currency", _floating),
        ("SystemTime", _timestamp),
        ("ApplicationTime", _timestamp),
        ("CLSID", _guid),
        ("Binary", _binary),
    )
}

_GUID = r"\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}"
_NUMBER = r"0[xX][0-9A-Fa-f]{1,8}|\d{1,10}"
_PROPERTY_ID = re.compile(
    rf"^(?P<type>[A-Za-z]+) (?:"
    rf"(?P<guid>{_GUID}) (?:(?i:name) (?P<name>\S.*)|(?i:id) (?P<number>{_NUMBER}))"  # named: by name or number
    r"|(?P<tag>0[xX][0-9A-Fa-f]{1,8})"  # a proptag
    r")$"
)

INVALID_PROPERTY: _Problem = (
    400,
    "ErrorInvalidExtendedProperty",
    "The extended property attribute combination is invalid.",
)
INVALID_VALUE: _Problem = (
    400,
    "ErrorInvalidExtendedPropertyValue",
    "The extended property value is inconsistent with its type.",
)


@dataclass(frozen=True)
class PropertyKey:
    """What an id names, so that two spellings of one property compare equal: the type and GUID whatever their
    case, the Name exactly (it is case-sensitive), a numeric id or proptag by its value."""

    type: str
    guid: uuid.UUID | None
    name: str | None
    number: int | None


def parse_property_id(text: str) -> PropertyKey | None:
    """The property an id names, or None when the id is in none of the documented formats."""
    match = _PROPERTY_ID.match(text)
    if match is None or match["type"].lower() not in _TYPES:
        return None
    canonical_type = _TYPES[match["type"].lower()][0]
    guid = uuid.UUID(match["guid"]) if match["guid"] else None
    if match["name"] is not None:
        return PropertyKey(canonical_type, guid, match["name"], None)
    if match["number"] is not None:
        return PropertyKey(canonical_type, guid, None, int(match["number"], 0))
    tag = int(match["tag"], 16)
    # A full property tag (0x4001001E) carries its type in the low 16 bits; the property id is the high ones.
    return PropertyKey(canonical_type, None, None, tag >> 16 if tag > 0xFFFF else tag)


def check_extended_properties(properties: Iterable[Mapping[str, Any]]) -> _Problem | None:
    """Exchange's checks on a message's singleValueExtendedProperties, once Graph has read their shape (each an
    object with a string id and a string value): the id's format, then the value against the id's type."""
    for item in properties:
        key = parse_property_id(item["id"])
        if key is None:
            return INVALID_PROPERTY
        if not _TYPES[key.type.lower()][1](item["value"]):
            return INVALID_VALUE
    return None


def matching_values(properties: Iterable[Mapping[str, Any]], property_id: str | None) -> list[str]:
    """The values of the properties that `property_id` names (all of them when it is None)."""
    wanted = parse_property_id(property_id) if property_id is not None else None
    if property_id is not None and wanted is None:
        raise ValueError(f"not an extended property id: {property_id!r}")
    return [p["value"] for p in properties if wanted is None or parse_property_id(p["id"]) == wanted]


# ---------------------------------------------------------------------------------------------- the $filter

# The one form the emulator answers, as documented for messages with a string-typed property:
#   singleValueExtendedProperties/Any(ep: ep/id eq '{id}' and ep/value eq '{value}')
# Graph's examples spell it `Any` and `any`, `ep/id` and `ep/Id`; OData string literals double a quote to escape it.
_LITERAL = r"'((?:[^']|'')*)'"
_MARK_FILTER = re.compile(
    r"^\s*singleValueExtendedProperties\s*/\s*any\s*\(\s*(?P<var>[A-Za-z_]\w*)\s*:\s*"
    rf"(?P=var)\s*/\s*id\s+eq\s+{_LITERAL}\s+and\s+"
    rf"(?P=var)\s*/\s*value\s+eq\s+{_LITERAL}\s*\)\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class MarkFilter:
    """A parsed `singleValueExtendedProperties/Any(ep: ep/id eq ... and ep/value eq ...)`."""

    key: PropertyKey
    value: str

    def matches(self, properties: Iterable[Mapping[str, Any]]) -> bool:
        # The Name is compared exactly (in the key), the value case-insensitively, as the doc says.
        return any(
            parse_property_id(p["id"]) == self.key and p["value"].casefold() == self.value.casefold()
            for p in properties
        )


def parse_mark_filter(text: str) -> MarkFilter | _Problem:
    """The filter, or Graph's 400 for it.

    - Unbalanced quotes or parentheses: Graph's OData parser refuses the clause, 400 BadRequest "Invalid filter
      clause" (as reported for mailFolders/{id}/messages in microsoftgraph/msgraph-sdk-java#967).
    - Well-formed but not the form above: 400 ErrorInvalidUrlQueryFilter "The query filter contains one or more
      invalid nodes.", Exchange's answer to filters it does not support on messages (reported in
      microsoftgraph/microsoft-graph-explorer-v4#3957). Real Graph supports more filters than the emulator does:
      this answer for them is the emulator's limit, said in Graph's words.
    - An id in none of the documented formats: 400 ErrorInvalidExtendedProperty.
    Assumed, all three: no Microsoft page gives these codes and texts for a $filter; they are as users report them.
    """
    syntax = _syntax_error(text)
    if syntax is not None:
        return 400, "BadRequest", f"Invalid filter clause: {syntax}"
    match = _MARK_FILTER.match(text)
    if match is None:
        return 400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes."
    property_id, value = (literal.replace("''", "'") for literal in match.groups()[1:])
    key = parse_property_id(property_id)
    if key is None:
        return INVALID_PROPERTY
    return MarkFilter(key, value)


def _syntax_error(text: str) -> str | None:
    """Why an OData parser cannot read the clause at all (unterminated literal, unbalanced parentheses), or None."""
    depth, position = 0, 0
    while position < len(text):
        character = text[position]
        if character == "'":
            end = position + 1
            while True:
                end = text.find("'", end)
                if end < 0:
                    return f"There is an unterminated string literal at position {position} in '{text}'."
                if text[end + 1 : end + 2] != "'":
                    break
                end += 2  # '' is an escaped quote inside the literal
            position = end + 1
            continue
        if character == "(":
            depth += 1
        elif character == ")":
            depth -= 1
            if depth < 0:
                return f"Syntax error at position {position} in '{text}'."
        position += 1
    if depth != 0:
        return f"')' or ',' expected at position {len(text)} in '{text}'."
    return None
