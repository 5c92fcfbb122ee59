"""One send request in, one outcome out: validate, allow-list, token, sendMail, classify."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.graph import MailSender, build_send_mail_body
from shared.outcomes import Outcome, RelayFailure, Sent, as_received, classify_http, permanent, transient
from shared.tokens import TokenSource

if TYPE_CHECKING:
    from shared.contract import SendRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """What the sender knows of a request after trying it: the outcome, and the request as received."""

    outcome: Outcome
    request: Any  # the JSON object if the text parsed, else the raw text: kept whole for the dead letter
    sender: str | None = None


@dataclass(frozen=True)
class Checked:
    """A request that passed the contract and the allow-list: ready for Graph."""

    request: SendRequest
    received: dict[str, Any]  # the JSON object as the app wrote it: kept whole for a dead letter


class Relay:
    def __init__(
        self, *, allowed_senders: frozenset[str], tokens: TokenSource, graph: MailSender, scope_model: str = "rbac"
    ):
        self._allowed = allowed_senders
        self._tokens = tokens
        self._graph = graph
        self._scope_model = scope_model  # EXCHANGE_SCOPE_MODEL: which fix an ErrorAccessDenied hint names

    def send(self, raw: bytes | str) -> Attempt:
        checked = self.check(raw)
        return checked if isinstance(checked, Attempt) else self.deliver(checked)

    def check(self, raw: bytes | str) -> Checked | Attempt:
        """The request if the contract and the allow-list accept it, else the permanent failure that says why."""
        from shared.contract import ContractError, parse_request

        request = as_received(raw)
        try:
            req = parse_request(raw)
        except ContractError as e:
            code = "InvalidEncoding" if e.encoding else "InvalidRequest"
            return Attempt(permanent(code, str(e)), request)
        if req.sender.lower() not in self._allowed:
            return Attempt(
                permanent("SenderNotAllowed", f"{req.sender} is not on the relay's allow-list"), request, req.sender
            )
        assert isinstance(request, dict)  # parse_request accepted it, so it is a JSON object
        return Checked(req, request)

    def send_as(self, sender: str, request: dict[str, Any]) -> Outcome:
        """Send past the allow-list: for `mailrelay doctor --send-test-to`, which must see what *Exchange*
        answers for a mailbox the allow-list would refuse. Never reachable from the queue."""
        from shared.contract import parse_request

        try:
            return self._post(sender, build_send_mail_body(parse_request(request)))
        except RelayFailure as e:
            return e.outcome

    def deliver(self, checked: Checked) -> Attempt:
        """Send a checked request through Graph and classify the answer."""
        req = checked.request
        body = build_send_mail_body(req)
        try:
            outcome = self._post(req.sender, body)
        except RelayFailure as e:
            outcome = e.outcome
        return Attempt(outcome, checked.received, req.sender)

    def _post(self, sender: str, body: dict[str, Any]) -> Outcome:
        import requests

        # A 401 from Graph means the token is no good: try a fresh token once, then a re-read secret
        # (a rotation Entra already knows about) once. A 401 is a refusal, so re-posting cannot send twice.
        renewals: list[Callable[[], str]] = [
            lambda: self._tokens.token(fresh=True),
            self._renewed_secret_token,
        ]
        token = self._tokens.token()
        while True:
            try:
                reply = self._graph.send_mail(sender, body, token)
            except requests.Timeout:
                return transient("Timeout", "Graph did not answer sendMail in time")
            except requests.ConnectionError as e:
                return transient("ConnectionError", f"Graph unreachable: {type(e).__name__}")
            if reply.status != 401 or not renewals:
                outcome = classify_http(reply.status, reply.error, reply.retry_after, self._scope_model)
                if isinstance(outcome, Sent) and reply.status != 202:
                    log.warning("sendMail answered %s, not 202; counted as sent", reply.status)
                return outcome
            log.info("Graph answered 401; renewing the token", extra={"event": "token.renew"})
            token = renewals.pop(0)()

    def _renewed_secret_token(self) -> str:
        self._tokens.renew_secret()
        return self._tokens.token(fresh=True)
