"""The send path's rules, with fakes for Entra, Key Vault and Graph: no network."""

from __future__ import annotations

import json

import pytest
import requests

from shared.outcomes import Permanent, RelayFailure, Sent, Transient, permanent
from shared.sending import Relay
from tests.fakes import FakeGraph, FakeTokens, graph_error

ALLOWED = frozenset({"alerts@contoso.com"})


def request(**overrides: object) -> bytes:
    req: dict[str, object] = {
        "from": "alerts@contoso.com",
        "to": ["Ada Lovelace <ada@contoso.com>"],
        "subject": "Disk almost full",
        "body": {"contentType": "text", "content": "97% used on /var"},
    }
    req.update(overrides)
    return json.dumps(req).encode()


def relay(graph: FakeGraph | None = None, tokens: FakeTokens | None = None) -> tuple[Relay, FakeGraph, FakeTokens]:
    graph = graph or FakeGraph()
    tokens = tokens or FakeTokens()
    return Relay(allowed_senders=ALLOWED, tokens=tokens, graph=graph), graph, tokens


def test_valid_request_makes_one_graph_call_with_the_built_body() -> None:
    r, graph, _ = relay()
    attempt = r.send(request())
    assert attempt.outcome == Sent(status=202)
    assert len(graph.calls) == 1
    sender, body, token = graph.calls[0]
    assert sender == "alerts@contoso.com"
    assert token == "token-1"
    assert body["message"]["toRecipients"] == [{"emailAddress": {"address": "ada@contoso.com", "name": "Ada Lovelace"}}]
    assert body["saveToSentItems"] is True


def test_allow_list_is_case_insensitive() -> None:
    r, graph, _ = relay()
    assert isinstance(r.send(request(**{"from": "Alerts@Contoso.COM"})).outcome, Sent)
    assert graph.calls[0][0] == "Alerts@Contoso.COM"


def test_sender_off_the_allow_list_never_reaches_graph_or_entra() -> None:
    r, graph, tokens = relay()
    attempt = r.send(request(**{"from": "ceo@contoso.com"}))
    assert isinstance(attempt.outcome, Permanent)
    assert attempt.outcome.code == "SenderNotAllowed"
    assert "ALLOWED_SENDERS" in attempt.outcome.hint
    assert graph.calls == [] and tokens.issued == 0


def test_invalid_request_is_permanent_and_names_the_field() -> None:
    r, graph, tokens = relay()
    attempt = r.send(request(subject="Hi\r\nBcc: everyone@contoso.com"))
    assert isinstance(attempt.outcome, Permanent)
    assert attempt.outcome.code == "InvalidRequest"
    assert "subject" in attempt.outcome.message
    assert attempt.request["subject"].startswith("Hi")  # kept whole for the dead letter
    assert graph.calls == [] and tokens.issued == 0


def test_non_json_message_is_an_encoding_problem() -> None:
    r, graph, _ = relay()
    attempt = r.send(b"\x89PNG not json")
    assert isinstance(attempt.outcome, Permanent)
    assert attempt.outcome.code == "InvalidEncoding"
    assert "base64" in attempt.outcome.hint
    assert graph.calls == []


@pytest.mark.parametrize(
    ("status", "code", "message", "hint_part"),
    [
        (403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", "Exchange scope"),
        (403, "ErrorAccessDenied", "Access to OData is disabled.", "EwsEnabled"),
        (400, "ErrorInvalidRecipients", "At least one recipient is not valid.", "recipient"),
        (404, "ErrorInvalidUser", "The requested user 'x@contoso.com' is invalid.", "no such mailbox"),
        (
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            "licen",
        ),
        (413, "ErrorMessageSizeExceeded", "too big", "MaxSendSize"),
    ],
)
def test_graph_refusals_are_permanent_with_a_hint(status: int, code: str, message: str, hint_part: str) -> None:
    r, graph, _ = relay(FakeGraph([graph_error(status, code, message)]))
    outcome = r.send(request()).outcome
    assert isinstance(outcome, Permanent)
    assert (outcome.code, outcome.message) == (code, message)
    assert hint_part in outcome.hint
    assert len(graph.calls) == 1


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_transient_and_keep_retry_after(status: int) -> None:
    r, _, _ = relay(FakeGraph([graph_error(status, "ApplicationThrottled", "slow down", retry_after="17")]))
    outcome = r.send(request()).outcome
    assert isinstance(outcome, Transient)
    assert outcome.retry_after == 17.0


@pytest.mark.parametrize(
    ("error", "code"),
    [(requests.ReadTimeout("slow"), "Timeout"), (requests.ConnectionError("reset"), "ConnectionError")],
)
def test_timeouts_and_connection_errors_are_transient(error: Exception, code: str) -> None:
    r, _, _ = relay(FakeGraph([error]))
    outcome = r.send(request()).outcome
    assert isinstance(outcome, Transient) and outcome.code == code


def test_401_refreshes_the_token_once_then_succeeds() -> None:
    r, graph, tokens = relay(FakeGraph([graph_error(401, "InvalidAuthenticationToken", "expired")]))
    assert isinstance(r.send(request()).outcome, Sent)
    assert [c[2] for c in graph.calls] == ["token-1", "token-2"]
    assert tokens.renewed_secrets == 0


def test_second_401_rereads_the_secret_then_succeeds() -> None:
    unauthorized = graph_error(401, "InvalidAuthenticationToken", "expired")
    r, graph, tokens = relay(FakeGraph([unauthorized, unauthorized]))
    assert isinstance(r.send(request()).outcome, Sent)
    assert len(graph.calls) == 3 and tokens.renewed_secrets == 1


def test_third_401_is_permanent() -> None:
    unauthorized = graph_error(401, "InvalidAuthenticationToken", "expired")
    r, graph, tokens = relay(FakeGraph([unauthorized] * 3))
    outcome = r.send(request()).outcome
    assert isinstance(outcome, Permanent) and outcome.code == "InvalidAuthenticationToken"
    assert len(graph.calls) == 3 and tokens.renewed_secrets == 1


def test_token_failure_is_the_outcome_and_graph_is_not_called() -> None:
    tokens = FakeTokens(
        failure=RelayFailure(permanent("AADSTS7000222", "AADSTS7000222: The provided client secret keys are expired."))
    )
    r, graph, _ = relay(tokens=tokens)
    outcome = r.send(request()).outcome
    assert isinstance(outcome, Permanent)
    assert "new version" in outcome.hint
    assert graph.calls == []
