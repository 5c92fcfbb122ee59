"""One send request in, one outcome out: validate, allow-list, token, sendMail, classify."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.graph import GraphReply, MailSender, build_send_mail_body
from shared.outcomes import (
    Failure,
    Outcome,
    Permanent,
    RelayFailure,
    Sent,
    as_received,
    classify_http,
    permanent,
    transient,
)
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
    request_id: str | None = None  # Graph's request-id of the sendMail call, if it answered
    client_request_id: str | None = None  # the relay's client-request-id of that call


@dataclass(frozen=True)
class Lookup:
    """What the sender's Sent Items say about a mark: found, not there, or no answer (`failure` says why)."""

    found: bool
    failure: Failure | None = None

    @property
    def no_access(self) -> bool:
        """The app may not read the mailbox (no Mail.Read in its Exchange scope): the lookup can never answer."""
        return isinstance(self.failure, Permanent)


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

    def deliver(self, checked: Checked, mark: str | None = None) -> Attempt:
        """Send a checked request through Graph, marked with `mark` (shared/status.py), and classify the answer."""
        req = checked.request
        body = build_send_mail_body(req, mark)
        replies: list[GraphReply] = []
        try:
            outcome = self._post(req.sender, body, replies)
        except RelayFailure as e:
            outcome = e.outcome
        last = replies[-1] if replies else None
        return Attempt(
            outcome,
            checked.received,
            req.sender,
            last.request_id if last else None,
            last.client_request_id if last else None,
        )

    def find_sent(self, sender: str, mark: str) -> Lookup:
        """Is the message marked `mark` in the sender's Sent Items? Needs Mail.Read in the app's Exchange scope."""
        import requests

        try:
            reply = self._graph.find_sent(sender, mark, self._tokens.token())
        except RelayFailure as e:
            return Lookup(False, e.outcome)
        except requests.RequestException as e:
            return Lookup(False, transient("ConnectionError", f"Sent Items lookup failed: {type(e).__name__}"))
        if reply.status == 200:
            value = reply.value.get("value") if isinstance(reply.value, dict) else None
            if not isinstance(value, list):
                return Lookup(False, transient("UnexpectedReply", "the Sent Items lookup answered 200 without a list"))
            return Lookup(bool(value))
        outcome = classify_http(reply.status, reply.error, reply.retry_after, self._scope_model)
        if isinstance(outcome, Sent):  # another 2xx: no list to read
            return Lookup(False, transient("UnexpectedReply", f"the Sent Items lookup answered {reply.status}"))
        return Lookup(False, outcome)

    def _post(self, sender: str, body: dict[str, Any], replies: list[GraphReply] | None = None) -> Outcome:
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
            except requests.ConnectTimeout:
                return transient("ConnectionError", "Graph unreachable: the connection timed out before sending")
            except requests.Timeout:
                return transient("Timeout", "Graph did not answer sendMail in time", maybe_sent=True)
            except requests.ConnectionError as e:
                # Refused or unresolvable: nothing went out. Lost after the request was written: it may have.
                maybe = not _before_sending(e)
                return transient("ConnectionError", f"Graph unreachable: {type(e).__name__}", maybe_sent=maybe)
            if replies is not None:
                replies.append(reply)
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


def _before_sending(error: Exception) -> bool:
    """Did a connection error happen before the request was written (no connection at all)? urllib3 wraps a
    failed connect in NewConnectionError (refused, DNS), inside MaxRetryError once its connect retries are
    spent; anything else (a reset or an aborted read) may come after Graph received the request."""
    from urllib3.exceptions import NewConnectionError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NewConnectionError):
            return True
        reason = getattr(current, "reason", None)
        nested = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = reason if isinstance(reason, BaseException) else nested or current.__cause__ or current.__context__
    return False
