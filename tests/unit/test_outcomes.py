from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from shared.outcomes import (
    Permanent,
    Sent,
    Transient,
    classify_entra,
    classify_http,
    dead_letter_envelope,
    parse_retry_after,
    permanent,
)


def test_retry_after_in_seconds_and_as_a_date() -> None:
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert 100 < (parse_retry_after(later) or 0) <= 120


def test_any_2xx_is_sent_and_unknown_4xx_permanent_5xx_transient() -> None:
    assert classify_http(202, None) == Sent(202)
    assert isinstance(classify_http(405, None), Permanent)
    assert isinstance(classify_http(507, None), Transient)
    assert classify_http(413, None).code == "RequestEntityTooLarge"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("result", "code", "kind", "hint_part"),
    [
        (
            {
                "error": "invalid_client",
                "error_codes": [7000215],
                "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: abc",
            },
            "AADSTS7000215",
            Permanent,
            "ID instead of its value",
        ),
        (
            {
                "error": "invalid_client",
                "error_codes": [7000222],
                "error_description": "AADSTS7000222: The provided client secret keys for app 'x' are expired.",
            },
            "AADSTS7000222",
            Permanent,
            "requeue",
        ),
        (
            {"error": "unauthorized_client", "error_codes": [700016], "error_description": "AADSTS700016: not found"},
            "AADSTS700016",
            Permanent,
            "GRAPH_CLIENT_ID",
        ),
        (
            {"error": "temporarily_unavailable", "error_description": "try later"},
            "EntraUnavailable",
            Transient,
            "Entra ID",
        ),
        (
            {"error": "server_error", "error_codes": [90033], "error_description": "AADSTS90033: A transient error"},
            "EntraUnavailable",
            Transient,
            "Entra ID",
        ),
    ],
)
def test_entra_errors(result: dict[str, object], code: str, kind: type, hint_part: str) -> None:
    outcome = classify_entra(result)
    assert isinstance(outcome, kind) and outcome.code == code
    assert "Trace ID" not in outcome.message
    assert hint_part in outcome.hint


def test_envelope_has_designs_shape() -> None:
    failure = permanent("ErrorAccessDenied", "Access is denied.")
    env = dead_letter_envelope({"from": "a@b.c"}, failure, attempts=2, now=datetime(2026, 11, 25, 7, 0, tzinfo=UTC))
    assert env == {
        "request": {"from": "a@b.c"},
        "error": {"code": "ErrorAccessDenied", "message": "Access is denied.", "hint": failure.hint},
        "attempts": 2,
        "failedAt": "2026-11-25T07:00:00Z",
    }


def test_the_docs_quote_the_access_denied_hints_the_code_gives() -> None:
    from pathlib import Path

    from shared.outcomes import ACCESS_DENIED_HINTS, hint_for

    # The reference moved from README.md to docs/ (issue 21): docs/outcomes.md quotes the hints.
    page = (Path(__file__).parents[2] / "docs" / "outcomes.md").read_text(encoding="utf-8")
    for model, hint in ACCESS_DENIED_HINTS.items():
        assert hint in page, f"docs/outcomes.md's quoted ErrorAccessDenied hint for {model} differs from the code's"
        assert hint_for("ErrorAccessDenied", "Access is denied. Check credentials and try again.", model) == hint
    assert "consent" in ACCESS_DENIED_HINTS["rbac"] and "send as anyone" in ACCESS_DENIED_HINTS["rbac"]


# "Access to OData is disabled.": under an application access policy, its documented denial
# (auth-limit-mailbox-access, "Handling API errors") and also EWS/REST blocked on the mailbox; under RBAC for
# Applications, EWS/REST blocked only (a scope denial reads "Access is denied...").
ODATA = "Access to OData is disabled."
RAOP = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."


def test_odata_disabled_under_an_access_policy_names_both_causes_and_the_check_for_each() -> None:
    outcome = classify_http(403, {"error": {"code": "ErrorAccessDenied", "message": ODATA}}, None, "policy")
    assert isinstance(outcome, Permanent)
    assert "application access policy" in outcome.hint and "Test-ApplicationAccessPolicy -Identity" in outcome.hint
    assert "Get-CASMailbox <mailbox> | fl EwsEnabled" in outcome.hint and "30 minutes" in outcome.hint


def test_odata_disabled_under_rbac_keeps_meaning_ews_or_rest_blocked() -> None:
    outcome = classify_http(403, {"error": {"code": "ErrorAccessDenied", "message": ODATA}}, None, "rbac")
    assert isinstance(outcome, Permanent)
    assert "EwsEnabled" in outcome.hint and "Test-ApplicationAccessPolicy" not in outcome.hint
    assert "application access policy" not in outcome.hint


@pytest.mark.parametrize("model", ["rbac", "policy"])
def test_the_raop_text_names_the_policy_whatever_the_model(model: str) -> None:
    from shared.outcomes import ACCESS_DENIED_HINTS, hint_for

    assert hint_for("ErrorAccessDenied", RAOP, model) == ACCESS_DENIED_HINTS["policy"]


def test_a_send_still_in_transport_is_unknown_with_a_hint_about_the_settling_time() -> None:
    from shared.outcomes import transient

    outcome = transient("StillInTransport", "in transport", maybe_sent=True)
    assert outcome.maybe_sent and "SEND_UNKNOWN_SETTLE_SECONDS" in outcome.hint and "Drafts" in outcome.hint
