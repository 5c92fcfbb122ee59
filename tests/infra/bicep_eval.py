"""A small evaluator of the Bicep this repository's templates use, for the infra tests (no Bicep CLI, no Azure).

The app's venv has no Bicep parser (infra/check.sh parses with pycep-parser in its own venv), and Azurite does not
enforce Azure roles, so the infra tests prove isolation by evaluating the templates' own expressions for a given
parameter set: which queues and containers the storage module gets, which settings the Function App gets, and which
role assignments land on which scope for which principal.

What it reads: `param`, `var`, `resource`, `module` and `output` declarations with their decorators; literals (strings
with ${} interpolation, numbers, booleans, null, arrays, objects); `[for x in xs: ...]` and `[for (x, i) in xs: ...]`
with an optional `if (...)`; `if (...)` conditions; member access (`.`, `.?`), indexing, `!` (non-null), `??`, the
ternary, `!`, `&&`, `||`, comparisons, lambdas, and the ARM functions in FUNCTIONS below with ARM's semantics (the
Bicep function reference, learn.microsoft.com/azure/azure-resource-manager/bicep/bicep-functions). Anything the tests
cannot know (another module's outputs, subscription(), a resource's id) evaluates to a Ref that carries its path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------

_PUNCT = (".?", "??", "=>", "==", "!=", "<=", ">=", "&&", "||", "(", ")", "[", "]", "{", "}", ",", ":", ".", "?",
          "!", "<", ">", "+", "-", "*", "/", "%", "@", "=")


@dataclass
class Token:
    kind: str  # ident, number, string, punct, nl
    value: Any
    pos: int


def strip_comments(text: str) -> str:
    """Remove // and /* */ comments, leaving strings ('...' and '''...''') intact. A '...' string ends at its line's
    end at the latest, as Bicep's do."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("'''", i):
            end = text.find("'''", i + 3)
            end = n if end < 0 else end + 3
            out.append(text[i:end])
            i = end
        elif text[i] == "'":
            j = i + 1
            while j < n and text[j] != "'" and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _read_string(text: str, i: int) -> tuple[list[Any], int]:
    """A '...' string from offset i (at the quote): its parts, literal text or ${...} expression source."""
    parts: list[Any] = []
    buf: list[str] = []
    i += 1
    escapes = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", "$": "$"}
    while True:
        ch = text[i]
        if ch == "\\":
            buf.append(escapes[text[i + 1]])
            i += 2
        elif ch == "'":
            break
        elif text.startswith("${", i):
            if buf:
                parts.append("".join(buf))
                buf = []
            depth, j = 1, i + 2
            while depth:
                if text[j] == "'":
                    _, j = _read_string(text, j)
                    continue
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            parts.append(Expression(text[i + 2 : j - 1]))
            i = j
        else:
            buf.append(ch)
            i += 1
    if buf or not parts:
        parts.append("".join(buf))
    return parts, i + 1


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            tokens.append(Token("nl", "\n", i))
            i += 1
        elif ch.isspace():
            i += 1
        elif text.startswith("'''", i):
            end = text.index("'''", i + 3)
            tokens.append(Token("string", [text[i + 3 : end]], i))
            i = end + 3
        elif ch == "'":
            parts, j = _read_string(text, i)
            tokens.append(Token("string", parts, i))
            i = j
        elif ch.isdigit():
            m = re.match(r"\d+", text[i:])
            assert m
            tokens.append(Token("number", int(m.group(0)), i))
            i += len(m.group(0))
        elif ch.isalpha() or ch == "_":
            m = re.match(r"[A-Za-z_]\w*", text[i:])
            assert m
            tokens.append(Token("ident", m.group(0), i))
            i += len(m.group(0))
        else:
            for p in _PUNCT:
                if text.startswith(p, i):
                    tokens.append(Token("punct", p, i))
                    i += len(p)
                    break
            else:
                raise SyntaxError(f"unexpected character {ch!r} at {i}")
    tokens.append(Token("eof", None, n))
    return tokens


# --------------------------------------------------------------------------------------------
# Syntax
# --------------------------------------------------------------------------------------------

Node = tuple[Any, ...]


class Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    # Newlines separate array items and object entries; everywhere else they are space. Expressions here never
    # continue on the next line with a token that could also start an item, so skipping them always is enough.
    def peek(self, offset: int = 0) -> Token:
        j, seen = self.i, -1
        while True:
            while self.tokens[j].kind == "nl":
                j += 1
            seen += 1
            if seen == offset:
                return self.tokens[j]
            j += 1

    def take(self) -> Token:
        while self.tokens[self.i].kind == "nl":
            self.i += 1
        token = self.tokens[self.i]
        self.i += 1
        return token

    def at(self, value: str, offset: int = 0) -> bool:
        token = self.peek(offset)
        return token.kind in ("punct", "ident") and token.value == value

    def expect(self, value: str) -> Token:
        token = self.take()
        assert token.value == value, f"expected {value!r}, got {token.value!r} at {token.pos}"
        return token

    def ident(self) -> str:
        token = self.take()
        assert token.kind == "ident", f"expected a name, got {token.value!r} at {token.pos}"
        return str(token.value)

    # expression := ternary
    def expression(self) -> Node:
        if self.peek().kind == "ident" and self.at("=>", 1):
            name = self.ident()
            self.expect("=>")
            return ("lambda", (name,), self.expression())
        if self.at("(") and self.peek(1).kind == "ident" and self.at(",", 2) and self.at("=>", 5):
            self.expect("(")
            names: tuple[str, ...] = (self.ident(),)
            self.expect(",")
            names += (self.ident(),)
            self.expect(")")
            self.expect("=>")
            return ("lambda", names, self.expression())
        condition = self.binary(0)
        if self.at("?"):
            self.take()
            yes = self.expression()
            self.expect(":")
            return ("if", condition, yes, self.expression())
        return condition

    _LEVELS = (("??",), ("||",), ("&&",), ("==", "!="), ("<", "<=", ">", ">="), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek().kind == "punct" and self.peek().value in self._LEVELS[level]:
            op = self.take().value
            left = ("op", op, left, self.binary(level + 1))
        return left

    def unary(self) -> Node:
        if self.at("!"):
            self.take()
            return ("not", self.unary())
        if self.at("-"):
            self.take()
            return ("neg", self.unary())
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while True:
            if self.at("."):
                self.take()
                node = ("member", node, self.ident(), False)
            elif self.at(".?"):
                self.take()
                node = ("member", node, self.ident(), True)
            elif self.at("[") and self.tokens[self.i].kind != "nl":
                self.take()
                index = self.expression()
                self.expect("]")
                node = ("index", node, index)
            elif self.at("(") and node[0] in ("name", "member") and self.tokens[self.i].kind != "nl":
                self.take()
                args = []
                while not self.at(")"):
                    args.append(self.expression())
                    if self.at(","):
                        self.take()
                self.expect(")")
                node = ("call", node, args)
            elif self.at("!") and not self.at("=", 1):
                self.take()  # non-null assertion
            else:
                return node

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return ("lit", token.value)
        if token.kind == "string":
            return ("str", [Parser(p.source).expression() if isinstance(p, Expression) else p for p in token.value])
        if token.kind == "ident":
            if token.value in ("true", "false"):
                return ("lit", token.value == "true")
            if token.value == "null":
                return ("lit", None)
            return ("name", token.value)
        if token.value == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        if token.value == "[":
            return self.array()
        if token.value == "{":
            return self.object()
        raise SyntaxError(f"unexpected {token.value!r} at {token.pos}")

    def array(self) -> Node:
        if self.at("for"):
            self.take()
            names: tuple[str, ...]
            if self.at("("):
                self.take()
                names = (self.ident(),)
                self.expect(",")
                names += (self.ident(),)
                self.expect(")")
            else:
                names = (self.ident(),)
            self.expect("in")
            source = self.expression()
            self.expect(":")
            body = self.conditional()
            self.expect("]")
            return ("for", names, source, body)
        items = []
        while not self.at("]"):
            items.append(self.expression())
            if self.at(","):
                self.take()
        self.expect("]")
        return ("array", items)

    def object(self) -> Node:
        entries = []
        while not self.at("}"):
            token = self.take()
            key = token.value if token.kind == "ident" else "".join(token.value)
            self.expect(":")
            entries.append((key, self.expression()))
            if self.at(","):
                self.take()
        self.expect("}")
        return ("object", entries)

    def conditional(self) -> Node:
        """A declaration's value, or a for body: `if (condition) value` or a plain value."""
        if self.at("if") and self.at("(", 1):
            self.take()
            self.expect("(")
            condition = self.expression()
            self.expect(")")
            return ("when", condition, self.expression())
        return self.expression()


@dataclass(frozen=True)
class Expression:
    source: str


# --------------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------------


@dataclass
class Declaration:
    kind: str  # param, var, resource, module, output
    name: str
    type: str  # param/output type, resource type, module path
    value: Node | None  # var value, param default, resource/module body (maybe a `for` or a `when`)
    decorators: dict[str, list[Node]] = field(default_factory=dict)
    existing: bool = False


def declarations(text: str) -> dict[str, Declaration]:
    parser = Parser(strip_comments(text))
    found: dict[str, Declaration] = {}
    decorators: dict[str, list[Node]] = {}
    while parser.peek().kind != "eof":
        if parser.at("@"):
            parser.take()
            call = parser.postfix(("name", parser.ident()))
            assert call[0] == "call"
            decorators[call[1][1]] = call[2]
            continue
        keyword = parser.ident()
        if keyword in ("targetScope", "metadata"):
            if keyword == "metadata":
                parser.ident()
            parser.expect("=")
            parser.expression()
        elif keyword == "extension":
            parser.ident()
        elif keyword in ("param", "output"):
            name = parser.ident()
            type_ = parser.ident()
            value = None
            if parser.at("="):
                parser.take()
                value = parser.expression()
            found[name] = Declaration(keyword, name, type_, value, decorators)
        elif keyword == "var":
            name = parser.ident()
            parser.expect("=")
            found[name] = Declaration("var", name, "", parser.expression(), decorators)
        elif keyword in ("resource", "module"):
            name = parser.ident()
            type_ = "".join(parser.take().value)
            existing = parser.at("existing")
            if existing:
                parser.take()
            parser.expect("=")
            found[name] = Declaration(keyword, name, type_, parser.conditional(), decorators, existing)
        else:
            raise SyntaxError(f"unknown declaration {keyword!r}")
        decorators = {}
    return found


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A value only Azure knows (another deployment's output, a resource's id): its path stands for it."""

    path: str

    def __str__(self) -> str:
        return "{" + self.path + "}"


@dataclass(frozen=True)
class Resource:
    """A resource declared in the template being evaluated: its type and name, and its parent's."""

    type: str
    name: Any
    parent: Resource | None = None

    @property
    def id(self) -> str:
        own = f"{self.type.split('@')[0]}/{self.name}"
        return f"{self.parent.id}|{own}" if self.parent else own


@dataclass(frozen=True)
class Lambda:
    names: tuple[str, ...]
    body: Node
    scope: Mapping[str, Any]


def _string(value: Any) -> str:
    """ARM's string(): a string as is, an array or object as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _contains(container: Any, item: Any) -> bool:
    # "The string comparison is case-sensitive" (bicep-functions-array, contains).
    if isinstance(container, str):
        return item in container
    if isinstance(container, dict):
        return item in container
    return item in container


def _first(value: Any) -> Any:
    return value[:1] if isinstance(value, str) else (value[0] if value else None)


def _last(value: Any) -> Any:
    return value[-1:] if isinstance(value, str) else (value[-1] if value else None)


def _concat(*values: Any) -> Any:
    if all(isinstance(v, str) for v in values):
        return "".join(values)
    out: list[Any] = []
    for v in values:
        out.extend(v)
    return out


def _split(value: str, delimiter: Any) -> list[str]:
    delimiters = [delimiter] if isinstance(delimiter, str) else list(delimiter)
    return re.split("|".join(re.escape(d) for d in delimiters), value)


def _union(*values: Any) -> Any:
    if all(isinstance(v, dict) for v in values):
        out: dict[str, Any] = {}
        for v in values:
            out.update(v)
        return out
    merged: list[Any] = []
    for v in values:
        merged.extend(x for x in v if x not in merged)
    return merged


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "contains": _contains,
    "empty": lambda v: v is None or len(v) == 0,
    "length": len,
    "first": _first,
    "last": _last,
    "endsWith": lambda s, end: s.lower().endswith(end.lower()),  # "case-insensitive" (bicep-functions-string)
    "startsWith": lambda s, start: s.lower().startswith(start.lower()),
    "join": lambda items, delimiter: delimiter.join(_string(i) for i in items),
    "concat": _concat,
    "string": _string,
    "toLower": lambda s: s.lower(),
    "toUpper": lambda s: s.upper(),
    "trim": lambda s: s.strip(),
    "replace": lambda s, old, new: s.replace(old, new),  # every instance (bicep-functions-string, replace)
    "split": _split,
    "substring": lambda s, start, length=None: s[start:] if length is None else s[start : start + length],
    "range": lambda start, count: list(range(start, start + count)),
    "union": _union,
    "take": lambda v, n: v[:n],
    "indexOf": lambda v, item: v.index(item) if item in v else -1,
    "guid": lambda *parts: "guid(" + ",".join(_string(p) for p in parts) + ")",
    "uniqueString": lambda *parts: "unique(" + ",".join(_string(p) for p in parts) + ")",
    # A built-in role's definition id: the role's GUID stands for it (the same in every tenant).
    "subscriptionResourceId": lambda *parts: parts[-1],
    "loadJsonContent": lambda path: Ref(f"loadJsonContent({path})"),
}


class Template:
    """One Bicep file evaluated for given parameter values (the rest take their defaults)."""

    def __init__(self, path: Path, params: Mapping[str, Any]) -> None:
        self.path = path
        self.declared = declarations(path.read_text(encoding="utf-8"))
        unknown = set(params) - {n for n, d in self.declared.items() if d.kind == "param"}
        assert not unknown, f"{path.name} has no parameter {sorted(unknown)}"
        self.given = dict(params)
        self._values: dict[str, Any] = {}

    # -- names ---------------------------------------------------------------------------------
    def value(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        d = self.declared.get(name)
        if d is None:
            result: Any = Ref(name)
        elif d.kind == "param":
            if name in self.given:
                result = self.given[name]
            else:
                assert d.value is not None, f"{self.path.name}: parameter {name} is required and not given"
                result = self.evaluate(d.value)
        elif d.kind == "var":
            assert d.value is not None
            result = self.evaluate(d.value)
        elif d.kind == "resource":
            result = self._resource(d)
        else:
            result = Ref(name)
        self._values[name] = result
        return result

    def _resource(self, d: Declaration) -> Resource:
        body = d.value
        assert body is not None and body[0] == "object", f"{d.name}: only plain resources can be scopes"
        entries = dict(body[1])
        parent = self.evaluate(entries["parent"]) if "parent" in entries else None
        return Resource(d.type, self.evaluate(entries["name"]), parent)

    # -- expressions ---------------------------------------------------------------------------
    def evaluate(self, node: Node, scope: Mapping[str, Any] | None = None) -> Any:
        scope = scope or {}
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "str":
            return "".join(p if isinstance(p, str) else _string(self.evaluate(p, scope)) for p in node[1])
        if kind == "name":
            return scope[node[1]] if node[1] in scope else self.value(node[1])
        if kind == "array":
            return [self.evaluate(item, scope) for item in node[1]]
        if kind == "object":
            return {key: self.evaluate(value, scope) for key, value in node[1]}
        if kind == "for":
            return [v for v in self.instances(node, scope)]
        if kind == "member":
            target = self.evaluate(node[1], scope)
            name, safe = node[2], node[3]
            if isinstance(target, dict):
                if name not in target:
                    assert safe, f"property {name!r} does not exist (ARM refuses the expression)"
                    return None
                return target[name]
            if isinstance(target, Resource):
                return target.id if name == "id" else Ref(f"{target.id}.{name}")
            if isinstance(target, Ref):
                return Ref(f"{target.path}.{name}")
            assert safe and target is None, f"{name!r} of {target!r}"
            return None
        if kind == "index":
            return self.evaluate(node[1], scope)[self.evaluate(node[2], scope)]
        if kind == "call":
            callee = node[1]
            if callee[0] == "member":  # az.x(), sys.x(), or a method of a Ref
                target = callee[1]
                if target[0] == "name" and target[1] in ("sys", "az"):
                    callee = ("name", callee[2])
                else:
                    return Ref(f"{self.evaluate(target, scope)}.{callee[2]}()")
            name = callee[1]
            args = [Lambda(a[1], a[2], scope) if a[0] == "lambda" else self.evaluate(a, scope) for a in node[2]]
            if name == "filter":
                items, keep = args
                assert isinstance(keep, Lambda) and not isinstance(items, Lambda)
                return [x for x in items if self.call(keep, x)]
            if name in FUNCTIONS:
                return FUNCTIONS[name](*args)
            return Ref(f"{name}()")
        if kind == "if":
            return self.evaluate(node[2] if self.evaluate(node[1], scope) else node[3], scope)
        if kind == "not":
            return not self.evaluate(node[1], scope)
        if kind == "neg":
            return -self.evaluate(node[1], scope)
        if kind == "op":
            op = node[1]
            left = self.evaluate(node[2], scope)
            if op == "&&":
                return bool(left) and bool(self.evaluate(node[3], scope))
            if op == "||":
                return bool(left) or bool(self.evaluate(node[3], scope))
            if op == "??":
                return left if left is not None else self.evaluate(node[3], scope)
            right = self.evaluate(node[3], scope)
            if op in ("==", "!="):
                # Case-sensitive: Bicep's case-insensitive comparisons are =~ and !~ (bicep-operators-comparison).
                return (left == right) if op == "==" else (left != right)
            return {"<": lambda: left < right, "<=": lambda: left <= right, ">": lambda: left > right,
                    ">=": lambda: left >= right, "+": lambda: left + right, "-": lambda: left - right,
                    "*": lambda: left * right, "/": lambda: left // right, "%": lambda: left % right}[op]()
        if kind == "when":
            raise AssertionError("a condition outside a declaration")
        raise AssertionError(f"unknown node {kind}")

    def call(self, fn: Lambda, *args: Any) -> Any:
        return self.evaluate(fn.body, {**fn.scope, **dict(zip(fn.names, args, strict=False))})

    def instances(self, node: Node, scope: Mapping[str, Any] | None = None) -> list[Any]:
        """The values a declaration's body stands for: one, none (a false `if`), or one per loop element."""
        scope = dict(scope or {})
        if node[0] == "when":
            return [self.evaluate(node[2], scope)] if self.evaluate(node[1], scope) else []
        if node[0] != "for":
            return [self.evaluate(node, scope)]
        names, source, body = node[1], node[2], node[3]
        out = []
        for index, item in enumerate(self.evaluate(source, scope)):
            inner = {**scope, names[0]: item}
            if len(names) == 2:
                inner[names[1]] = index
            out.extend(self.instances(body, inner))
        return out

    # -- declarations ----------------------------------------------------------------------------
    def of_kind(self, kind: str) -> dict[str, Declaration]:
        return {n: d for n, d in self.declared.items() if d.kind == kind}

    def module_instances(self, name: str) -> list[dict[str, Any]]:
        """Each deployment of module `name`: its body evaluated (name, params, ...)."""
        d = self.declared[name]
        assert d.kind == "module" and d.value is not None
        return self.instances(d.value)

    def module_params(self, name: str) -> dict[str, Any]:
        (only,) = self.module_instances(name)
        params: dict[str, Any] = only["params"]
        return params

    def role_assignments(self) -> list[RoleAssignment]:
        found = []
        for d in self.of_kind("resource").values():
            if not d.type.startswith("Microsoft.Authorization/roleAssignments@"):
                continue
            assert d.value is not None
            for body in self.instances(d.value):
                props = body["properties"]
                found.append(RoleAssignment(
                    resource=d.name, name=body["name"], scope=body["scope"], role=props["roleDefinitionId"],
                    principal=props["principalId"], principal_type=props.get("principalType"),
                    template=self.path.name,
                ))
        return found


@dataclass(frozen=True)
class RoleAssignment:
    resource: str
    name: str
    scope: Resource
    role: str
    principal: Any
    principal_type: str | None
    template: str

    @property
    def scope_kind(self) -> str:
        return self.scope.type.split("@")[0].rsplit("/", 1)[-1]

    @property
    def scope_name(self) -> Any:
        return self.scope.name
