"""Property-based: whatever bytes an app enqueues, the message path ends in sent, retried or a dead letter
with a reason, and no exception escapes `handle_mail_message` (which would hand the message to the host's
blind retries and, five tries later, to the poison queue without a reason).

The strategies do produce what broke the relay before: lone surrogates, control characters and line
separators, deep nesting, numbers past Python's 4,300-digit limit, retry wrappers, near-miss requests.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from azure.functions.queue import QueueMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.bootstrap import Runtime
from shared.handlers import handle_mail_message
from shared.queues import QueueDeadLetters, QueueRequeue
from shared.sending import Relay
from shared.settings import load_settings
from shared.status import MemoryStatusStore
from tests.fakes import FakeGraph, FakeTokens, MemoryOverflow, graph_error
from tests.unit.test_hostile import REQUEST, StorageQueue
from tests.unit.test_settings import GOOD

NASTY_CHARS = st.sampled_from(list('\r\n\t\x00\x1b\u0085\u2028\u2029\ud800\udfff\ufeff<>@,;"\\é'))
TEXT = st.text(st.one_of(st.characters(), NASTY_CHARS), max_size=40)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT
)
JSON = st.recursive(
    SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(TEXT, kids, max_size=4)), max_leaves=20
)

FIELDS = [
    "from",
    "to",
    "cc",
    "bcc",
    "replyTo",
    "subject",
    "body",
    "importance",
    "attachments",
    "headers",
    "id",
    "saveToSentItems",
]


@st.composite
def near_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with some fields replaced, dropped or added."""
    request: dict[str, Any] = dict(REQUEST)
    for name in draw(st.lists(st.sampled_from([*FIELDS, "extra"]), max_size=3)):
        if draw(st.booleans()):
            request[name] = draw(JSON)
        else:
            request.pop(name, None)
    if draw(st.booleans()):
        request["subject"] = draw(TEXT)
    return request


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def raw_messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["near", "json", "wrapper", "deep", "number", "bytes", "text"]))
    if kind == "near":
        text = json.dumps(draw(near_requests()))
    elif kind == "json":
        text = json.dumps(draw(JSON))
    elif kind == "wrapper":
        meta = draw(
            st.one_of(
                JSON,
                st.fixed_dictionaries(
                    {"attempts": st.integers(-2, 20), "firstAttemptAt": TEXT, "originalMessageId": TEXT}
                ),
            )
        )
        text = json.dumps({"$retry": meta, "request": draw(st.one_of(near_requests(), JSON))})
    elif kind == "deep":
        nested = deep(draw(st.sampled_from([9, 10, 33, 500, 999, 1000, 1500, 5000, 100_000])))
        text = draw(st.sampled_from([nested, '{"$retry": ' + nested + "}", '{"subject": ' + nested + "}"]))
    elif kind == "number":
        text = '{"from": ' + "9" * draw(st.integers(4000, 6000)) + "}"
    elif kind == "bytes":
        return draw(st.binary(max_size=200))
    else:
        text = draw(TEXT)
    return text.encode("utf-8", "surrogatepass")


def runtime(graph: FakeGraph) -> Runtime:
    overflow = MemoryOverflow()
    return Runtime(
        settings=load_settings(GOOD),
        relay=Relay(allowed_senders=frozenset({"alerts@contoso.com"}), tokens=FakeTokens(), graph=graph),
        dead_letters=QueueDeadLetters(StorageQueue(), overflow),  # type: ignore[arg-type]
        retries=QueueRequeue(StorageQueue()),  # type: ignore[arg-type]
        status=MemoryStatusStore(),
        overflow=overflow,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=raw_messages(), graph_status=st.sampled_from([202, 429, 503, 403]))
def test_every_message_ends_sent_retried_or_dead_lettered_with_a_reason(raw: bytes, graph_status: int) -> None:
    replies = [] if graph_status == 202 else [graph_error(graph_status, "Code", "msg", retry_after="2")]
    graph = FakeGraph(replies=list(replies))
    rt = runtime(graph)
    handle_mail_message(QueueMessage(id="m1", body=raw, dequeue_count=1, pop_receipt="p"), rt)  # never raises
    dead = rt.dead_letters._client.decoded()  # type: ignore[attr-defined]
    retried = rt.retries._client.messages  # type: ignore[attr-defined]
    sent = graph_status == 202 and len(graph.calls) == 1
    assert sent + len(dead) + len(retried) == 1, (sent, dead, retried)
    for envelope in dead:
        assert envelope["error"]["code"] and envelope["error"]["hint"]
        assert envelope["error"]["message"] or envelope["error"]["code"]
    for text, _ in retried:
        assert json.loads(base64.b64decode(text))["$retry"]["originalMessageId"] == "m1"
