"""The alert channels: mail through the relay's own send path, a webhook (Teams or Slack), the log."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.expiry.model import EVENT, Alert, ChannelError, iso, log_fields

if TYPE_CHECKING:
    import requests

    from shared.sending import Attempt

log = logging.getLogger("mailrelay.expiry")


class MailSink(Protocol):
    """The relay's own send path (shared.sending.Relay)."""

    def send(self, raw: bytes | str) -> Attempt: ...


class MailChannel:
    """Mail through the relay's own send path: a request built per the contract, from an allowed sender.

    It needs the expiring secret (or certificate, or the federated credential and the identity), so it is the
    channel that fails when that has expired or is gone; that is why it is never the only one.
    """

    name = "mail"

    def __init__(self, relay: MailSink, sender: str, recipients: Sequence[str]):
        self._relay = relay
        self._sender = sender
        self._recipients = list(recipients)

    def request(self, alert: Alert) -> dict[str, Any]:
        return {
            "from": self._sender,
            "to": self._recipients,
            "subject": f"[Graph Mail Relay] {alert.summary}"[:255],
            "body": {"contentType": "text", "content": alert.text()},
            "importance": "high" if alert.state == "critical" else "normal",
            "headers": {"X-MailRelay-Event": EVENT},
        }

    def send(self, alert: Alert) -> None:
        from shared.outcomes import Sent

        outcome = self._relay.send(json.dumps(self.request(alert))).outcome
        if not isinstance(outcome, Sent):
            message = (
                outcome.message if outcome.message.startswith(outcome.code) else f"{outcome.code}: {outcome.message}"
            )
            raise ChannelError(message)


TEAMS_CARD: Final = "application/vnd.microsoft.card.adaptive"


def is_slack_url(url: str) -> bool:
    from urllib.parse import urlsplit

    return (urlsplit(url).hostname or "").lower() == "hooks.slack.com"


def webhook_payload(alert: Alert, *, slack: bool) -> dict[str, Any]:
    """The JSON a chat webhook renders.

    Slack incoming webhooks (hooks.slack.com) get `{"text": ...}`, their documented minimum. Everything
    else gets the shape Teams' Workflows template "Post to a channel when a webhook request is received"
    reads (a message with one Adaptive Card attachment), plus a top-level `text` so a generic receiver
    still gets the summary. One payload for both is not possible: Workflows ignores `text`, and Slack
    would show the card attachment as an empty legacy attachment.
    """
    if slack:
        steps = "\n".join(f"{i}. {s}" for i, s in enumerate(alert.steps, 1))
        emoji = ":rotating_light:" if alert.state == "critical" else ":warning:"
        return {"text": f"{emoji} *{alert.summary}*\n" + "\n".join(alert.details) + f"\n*{alert.steps_title}*\n{steps}"}
    item = alert.secret
    facts = [{"title": "Credential", "value": f"GRAPH_CREDENTIAL={alert.mode}"}]
    if item is not None:
        facts += [
            {"title": item.kind.capitalize(), "value": f"{item.name} (version {item.version or '?'})"},
            {"title": "Key Vault", "value": item.vault_uri or "?"},
            {"title": "Expires", "value": iso(item.expires_on) if item.expires_on else "not set"},
            {"title": "Days left", "value": "-" if alert.days_left is None else str(alert.days_left)},
        ]
    facts += [
        {"title": "App (client) id", "value": alert.client_id},
        {"title": "State", "value": alert.state},
    ]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",  # what Teams renders on every client
        "body": [
            {
                "type": "TextBlock",
                "text": alert.summary,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": "Attention" if alert.state == "critical" else "Warning",
            },
            {"type": "FactSet", "facts": facts},
            {"type": "TextBlock", "text": alert.steps_title, "weight": "Bolder", "wrap": True},
            *({"type": "TextBlock", "text": f"{i}. {step}", "wrap": True} for i, step in enumerate(alert.steps, 1)),
        ],
    }
    return {
        "type": "message",
        "text": alert.summary,
        "attachments": [{"contentType": TEAMS_CARD, "contentUrl": None, "content": card}],
    }


class WebhookChannel:
    """A JSON POST to a chat webhook: needs neither the expiring secret nor Graph."""

    name = "webhook"

    def __init__(self, session: requests.Session, url: str, timeout: tuple[float, float] = (5.0, 10.0)):
        self._session = session
        self._url = url  # carries a signature (Teams' sig=, Slack's path): never in a message
        self._timeout = timeout
        # urllib3 logs each request's path and query at DEBUG: that is the signature, so hide it there.
        _redact_in_logs(url, logging.getLogger("urllib3.connectionpool"))

    def send(self, alert: Alert) -> None:
        import requests

        payload = webhook_payload(alert, slack=is_slack_url(self._url))
        try:
            response = self._session.post(self._url, json=payload, timeout=self._timeout)
        except requests.Timeout:
            raise ChannelError("the webhook did not answer in time") from None
        except requests.RequestException as e:
            # str(e) names the URL, signature included: only the exception's type goes out.
            raise ChannelError(f"the webhook is unreachable ({type(e).__name__})") from None
        if response.status_code >= 300:
            raise ChannelError(f"the webhook answered HTTP {response.status_code}")


class _RedactFilter(logging.Filter):
    def __init__(self, secrets: Sequence[str]):
        super().__init__()
        self.secrets = [x for x in secrets if x]

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and any(x in a for x in self.secrets) for a in record.args
        ):
            record.args = tuple(self._redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and any(x in record.msg for x in self.secrets):
            record.msg = self._redact(record.msg)
        return True

    def _redact(self, text: str) -> str:
        for x in self.secrets:
            text = text.replace(x, "/<webhook, redacted>")
        return text


def _redact_in_logs(url: str, logger: logging.Logger) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(target) <= 1:
        return
    for existing in logger.filters:
        if isinstance(existing, _RedactFilter):
            if target not in existing.secrets:
                existing.secrets.append(target)
            return
    logger.addFilter(_RedactFilter([target]))


class LogChannel:
    """A structured log line at WARNING, ERROR or CRITICAL, whose dimensions (shared/telemetry.py) infra's credential
    alerts read. The message text starts with the event name too, for a person reading the log; no alert reads it.
    """

    name = "log"

    def send(self, alert: Alert) -> None:
        log.log(
            alert.log_level,
            "%s: %s",
            EVENT,
            alert.summary,
            extra=log_fields(
                alert.secret, alert.days_left, alert.threshold, alert.state, alert.kind, alert.mode, alert.registration
            ),
        )


# --- Key Vault, Graph and Table storage -----------------------------------------------------------
