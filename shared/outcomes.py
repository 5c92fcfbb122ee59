"""What became of a send request, and what an admin can do about it.

Every answer from Entra ID, Key Vault or Graph is classified once, here, into one of three outcomes:
- `Sent`: Graph answered 202 Accepted (accepted for delivery, not yet delivered);
- `Permanent`: sending again cannot help; the request goes to the dead-letter queue with a hint;
- `Transient`: try again later, honouring Retry-After when the service gave one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final


@dataclass(frozen=True)
class Sent:
    status: int = 202


@dataclass(frozen=True)
class Permanent:
    code: str
    message: str
    hint: str


@dataclass(frozen=True)
class Transient:
    code: str
    message: str
    hint: str
    retry_after: float | None = None  # seconds, from the service's Retry-After header
    # Graph may have accepted the message anyway (a read timeout, a 5xx, a connection lost after the request
    # went out): the outcome is unknown, and it is resolved before any second try (shared/delivery.py).
    maybe_sent: bool = False
    # Graph throttled the call (429), or the call never reached the service (MSAL answered a token request from
    # its throttle cache, shared/tokens.py): nothing was sent and the request is not at fault, so the try does not
    # spend the retry budget; Retry-After says when to come back (shared/delivery.py).
    throttled: bool = False


Failure = Permanent | Transient
Outcome = Sent | Permanent | Transient


@dataclass
class RelayFailure(Exception):
    """Raised by the secret, token and Graph layers; carries the classified outcome up to the sender."""

    outcome: Failure
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.outcome.code}: {self.outcome.message}"


SCOPE_CHANGE_DELAY: Final = "changes to the scope take 30 minutes to 2 hours, or more, to apply"

# Hints by Graph error code: the fix an admin can make. Codes are Graph's `error.code`, Entra's
# AADSTS number, Key Vault's error code, or the relay's own codes for checks made before Graph.
# ErrorAccessDenied on send, by the Exchange scope model in use (EXCHANGE_SCOPE_MODEL). Under RBAC for
# Applications the usual advice, "grant Mail.Send with admin consent", is exactly what defeats the scope:
# Entra consent and RBAC for Applications add up, and the consent reaches every mailbox.
ACCESS_DENIED_HINTS: Final[dict[str, str]] = {
    "rbac": (
        "this mailbox is outside the app's Exchange scope (RBAC for Applications): not in the management scope of "
        "the app's \"Application Mail.Send\" role assignment, the scope's group is not mail-enabled, or the "
        "assignment is missing. Add the mailbox to the scope (infra/exchange/Set-RbacApplicationScope.ps1) and "
        "check with `mailrelay doctor --allowed <mailbox>` or Test-ServicePrincipalAuthorization. Do not grant "
        f"Mail.Send consent in Entra instead: it would let the app send as anyone; {SCOPE_CHANGE_DELAY}"
    ),
    "policy": (
        "this mailbox is outside the app's Exchange scope: its application access policy does not include it "
        "(add it to the policy's mail-enabled security group), or the app lacks the Mail.Send application "
        "permission with admin consent. Check with `mailrelay doctor --allowed <mailbox>` or "
        f"Test-ApplicationAccessPolicy (infra/exchange); {SCOPE_CHANGE_DELAY}"
    ),
}

_HINTS: Final[dict[str, str]] = {
    "ErrorAccessDenied": ACCESS_DENIED_HINTS["rbac"],
    "ErrorSendAsDenied": (
        "the mailbox in 'from' differs from the one in the URL; the relay sends as 'from', so this "
        "points at a mailbox that refuses send-as for the app"
    ),
    "MailboxNotEnabledForRESTAPI": (
        "the sending mailbox is not in Exchange Online (on-premises or not migrated) or has no "
        "Exchange Online licence; send from a licensed cloud mailbox or a shared mailbox"
    ),
    "ErrorInvalidUser": (
        "no such mailbox in the tenant: check the 'from' address for typos and that it is a mailbox, "
        "not a distribution list or a guest"
    ),
    "ResourceNotFound": "no such mailbox in the tenant: check the 'from' address",
    "ErrorInvalidRecipients": "a recipient address is malformed or cannot be resolved; correct the request",
    "ErrorInvalidRequest": "Graph refused the message's shape; run `mailrelay validate` on the request",
    "RequestBodyRead": "Graph could not read the message body; run `mailrelay validate` on the request",
    "InvalidInternetMessageHeader": "custom headers must start with 'X-'; rename or drop the header",
    "InvalidInternetMessageHeaderCollection": "Graph takes at most 5 custom headers per message; drop some",
    "ErrorMessageSizeExceeded": (
        "the message is over the sending mailbox's maximum message size in Exchange Online (35 MB by default, "
        "attachments counted base64-encoded, a third larger): send less, or raise the mailbox's limit "
        "(Set-Mailbox -MaxSendSize, up to 150 MB) and MAX_MESSAGE_SIZE_MB with it, then requeue"
    ),
    "RequestEntityTooLarge": (
        "one Graph request was over its 4 MB limit: the relay sends anything larger through a draft and an upload "
        "session, so report this with the request's size"
    ),
    "MessageTooLarge": (
        "the message is over MAX_MESSAGE_SIZE_MB (Exchange Online's maximum message size for the mailbox, 35 MB "
        "by default; attachments count a third larger once base64-encoded for mail): nothing was uploaded. Send "
        "the large files as links, or split the message; an admin may raise the mailbox's limit (Set-Mailbox "
        "-MaxSendSize, up to 150 MB) and MAX_MESSAGE_SIZE_MB with it"
    ),
    "PayloadMissing": (
        "a claim-checked attachment or body is not in the mail-payloads container: the app did not upload it (or "
        "under another name), or it was deleted (after the request was sent, or by PAYLOAD_RETENTION_DAYS). "
        "Upload it again and enqueue a new request"
    ),
    "PayloadMismatch": (
        "a claim-checked blob differs from what the request says of it (size or SHA-256): it was overwritten or "
        "corrupted after the request was made, or the app computed the hash of other bytes. Nothing was sent; "
        "upload the file again under a new name and enqueue a new request"
    ),
    "PayloadUnavailable": "Blob storage failed while the relay read a payload; the relay retries",
    "SendAtInPast": (
        "sendAt is earlier than the moment the request was enqueued (beyond SEND_AT_TOLERANCE_SECONDS of clock "
        "skew): a mistake in the app's time zone or clock, most likely. Fix sendAt, or drop it to send now"
    ),
    "SendAtTooFar": (
        "sendAt is more than 7 days after the request was enqueued: a queue message can stay hidden 7 days at "
        "most. Enqueue it later"
    ),
    "ErrorQuotaExceeded": "the sending mailbox is full; free space or send with saveToSentItems false",
    "InvalidAuthenticationToken": (
        "Graph refused the relay's token even after a new token and a re-read secret: check that "
        "GRAPH_TENANT_ID and GRAPH_CLIENT_ID name the app registration that holds Mail.Send"
    ),
    "ApplicationThrottled": (
        "Graph is throttling the app (4 concurrent requests, 10,000 per 10 minutes per mailbox); "
        "the relay retries after Retry-After"
    ),
    "MailboxConcurrency": "Graph allows 4 concurrent requests per app; the relay retries after Retry-After",
    "ServiceUnavailable": "Graph is briefly unavailable; the relay retries",
    # Outages of the services before Graph: transient, retried with the relay's backoff and budget. If one
    # never clears, the dead letter names the service; requeue once its status page shows it healthy.
    "EntraUnavailable": (
        "Entra ID (the token endpoint) is unavailable or throttling; the relay retries. If it lasts, check "
        "https://status.azure.com and the tenant's service health, then requeue the dead letters"
    ),
    "ManagedIdentityUnavailable": (
        "the managed identity endpoint of the Function App is failing (not a missing assignment: it answered "
        "with a server error); the relay retries. If it lasts, restart the Function App or check App Service "
        "health, then requeue the dead letters"
    ),
    "KeyVaultUnavailable": (
        "Key Vault is unavailable or unreachable; the relay retries. If it lasts, check the vault's Resource "
        "health, and that KEY_VAULT_URI names the vault (a typo fails in DNS), then requeue the dead letters"
    ),
    "KeyVaultThrottled": (
        "Key Vault is throttling reads of the client secret (per vault); the relay caches the secret and "
        "retries after Retry-After. Check what else reads this vault often"
    ),
    "Timeout": (
        "Graph did not answer in time (GRAPH_TIMEOUT_SECONDS); the message may still have been accepted, so the "
        "relay looks for it in the sender's Sent Items before trying again (or follows SEND_UNKNOWN_OUTCOME)"
    ),
    "StillInTransport": (
        "an earlier try of this large message was sent and was still in Exchange's transport when the relay looked "
        "(in the sender's Drafts, submitted, not yet in Sent Items): the relay sent nothing more and looks in Sent "
        "Items again after GRAPH_TIMEOUT_SECONDS + SEND_UNKNOWN_SETTLE_SECONDS. If this recurs, raise "
        "SEND_UNKNOWN_SETTLE_SECONDS to cover Exchange's transport time; if it ends in a dead letter, check the "
        "sender's Drafts and the message trace (Get-MessageTraceV2) before requeueing"
    ),
    "SendOutcomeUnknown": (
        "Graph may or may not have accepted this message (a timeout, a server error or a crash during the call), "
        "and the relay could not look in the sender's Sent Items (no Mail.Read in the app's Exchange scope, or "
        "saveToSentItems false), so SEND_UNKNOWN_OUTCOME=deadletter kept it from a second send. Check the "
        "recipients' mailboxes or the sender's Sent Items; requeue only if it did not arrive"
    ),
    "RetryWrapperRefused": (
        "the message on the outbox carries the relay's retry wrapper (\"$retry\"): retries are the relay's own, on "
        "its internal queue, and an app may not write them. Enqueue the plain send request"
    ),
    "ConnectionError": "the relay could not reach Graph; the relay retries",
    # Entra ID (token requests)
    "AADSTS7000215": (
        "Entra ID rejects the client secret: the Key Vault secret probably holds the secret's ID "
        "instead of its value; store the value (shown once, when the secret is created) as a new version"
    ),
    "AADSTS7000222": (
        "the client secret has expired: create a new secret in the app registration, store it in Key "
        "Vault as a new version with its expiry date (exp); the relay picks it up without a restart, "
        "then requeue the dead letters (`mailrelay dead-letters requeue --all`)"
    ),
    "AADSTS700016": (
        "Entra ID does not know this app in this tenant: check GRAPH_CLIENT_ID and GRAPH_TENANT_ID, "
        "and that the app registration was not deleted"
    ),
    "AADSTS90002": "the tenant does not exist: check GRAPH_TENANT_ID",
    # A certificate (GRAPH_CREDENTIAL=certificate) and a federated credential (GRAPH_CREDENTIAL=federated): the
    # codes of https://learn.microsoft.com/entra/identity-platform/reference-error-codes and the workload identity
    # federation troubleshooting page. `mailrelay doctor` names the federated credential's wrong field.
    "AADSTS700027": (
        "Entra ID refused the certificate's signature: the app registration does not hold this certificate's "
        "public key (Key Vault renewed it and nobody uploaded the new one: run infra/scripts/sync-app-certificate.sh), "
        "or the certificate has expired. The relay re-reads Key Vault on this answer"
    ),
    "AADSTS700024": (
        "Entra ID found the client assertion outside its valid time: check this machine's clock (the assertion is "
        "dated by it), or, with a federated credential, the identity's token has expired"
    ),
    "AADSTS70021": (
        "no federated identity credential of the app registration matches the managed identity's token: its "
        "issuer must be https://login.microsoftonline.com/<tenant>/v2.0, its subject the identity's principal "
        "(object) id, its audience api://AzureADTokenExchange; `mailrelay doctor` names the field that differs"
    ),
    "AADSTS700211": (
        "the app registration's federated identity credential names another issuer: it must be "
        "https://login.microsoftonline.com/<GRAPH_TENANT_ID>/v2.0 (run `mailrelay doctor`)"
    ),
    "AADSTS700212": (
        "the app registration's federated identity credential names another audience: it must be "
        "api://AzureADTokenExchange (run `mailrelay doctor`)"
    ),
    "AADSTS700213": (
        "the app registration's federated identity credential names another subject: it must be the principal "
        "(object) id of the identity AZURE_CLIENT_ID names, not its client id (run `mailrelay doctor`)"
    ),
    "CertificateUnreadable": (
        "GRAPH_CERTIFICATE_NAME must name a Key Vault certificate whose policy makes the key exportable, with "
        "content type application/x-pem-file or application/x-pkcs12 and no password"
    ),
    "EntraUnexpectedReply": (
        "the token endpoint answered in a way Entra ID never does (no OAuth error): check GRAPH_AUTHORITY_HOST "
        "(https://login.microsoftonline.com unless in a national cloud) and any proxy between the relay and Entra ID"
    ),
    "AADSTS70011": "the relay asked for a scope Entra refuses; it must be https://graph.microsoft.com/.default",
    # Key Vault (reading the client secret)
    "SecretNotFound": "Key Vault has no such secret: check GRAPH_CLIENT_SECRET_NAME and KEY_VAULT_URI",
    "SecretDisabled": "the client secret's Key Vault version is disabled: enable it or add a new version",
    "Forbidden": (
        "the relay's identity may not read the secret: grant it 'Key Vault Secrets User' on the vault "
        "(role assignments take a few minutes to apply), or a Get secret access policy on a vault that uses "
        "access policies"
    ),
    "ForbiddenByFirewall": (
        "the vault's network rules refuse the Function App: allow its outbound addresses or its virtual network "
        "in the vault's Networking settings, or reach the vault through a private endpoint (a role does not help)"
    ),
    "CredentialUnavailable": (
        "no managed identity answered: assign the user-assigned identity to the Function App and set "
        "AZURE_CLIENT_ID to its client id (an identity deleted or detached since also answers this)"
    ),
    # The relay's own checks, made before Graph is called
    "InvalidRequest": (
        "the request does not follow the send-request contract (shared/schemas/send-request.v1.json); "
        "fix it at the source and validate with `mailrelay validate`"
    ),
    "InvalidEncoding": (
        "the queue message is not base64 text of a JSON request; host.json decodes messages as base64 "
        "(messageEncoding), so send with the relay's client or encode the JSON as base64 yourself"
    ),
    "DuplicateKey": (
        "the request's key was already used by a request the relay sent, with different content (or before the "
        "relay recorded content); give each "
        "new message its own id (requeueing this one will not send it while the first is on record)"
    ),
    "SenderNotAllowed": (
        "the 'from' mailbox is not on the relay's allow-list (ALLOWED_SENDERS); add it there and to the "
        "app's Exchange scope if it should be allowed"
    ),
    "SenderNotAllowedForApp": (
        "the app may not send as this mailbox: it is not among the app's senders in MAILRELAY_APPS (infra/: the "
        "`apps` parameter). If the app should send as it, the relay's admin adds it to that app's senders; "
        "otherwise send from one of the app's own mailboxes"
    ),
    "ScheduleLimitReached": (
        "the app holds as many scheduled requests (sendAt in the future) as its maxScheduled in MAILRELAY_APPS "
        "allows: send this one later, cancel none (the relay has no cancel), or ask the relay's admin to raise "
        "the app's maxScheduled"
    ),
    "AppNotDeclared": (
        "the request came from an app MAILRELAY_APPS no longer declares (a retry of an app since removed): declare "
        "the app again, or requeue the request on another app's queue"
    ),
}

_TRANSIENT_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})


# ErrorAccessDenied in the large-message flow (draft, attachments, upload session): Mail.Send alone does not
# cover it. https://learn.microsoft.com/graph/outlook-large-attachments: "request Mail.ReadWrite permission to
# create an uploadSession for a message".
LARGE_MESSAGE_ACCESS_HINTS: Final[dict[str, str]] = {
    "rbac": (
        "messages over 3 MB go through a draft and an upload session, which need Graph's Mail.ReadWrite for this "
        'mailbox, not only Mail.Send: assign "Application Mail.ReadWrite" in the same management scope '
        "(infra/exchange/Set-RbacApplicationScope.ps1 -GrantLargeMessages), not an Entra consent; "
        f"{SCOPE_CHANGE_DELAY}"
    ),
    "policy": (
        "messages over 3 MB go through a draft and an upload session, which need Graph's Mail.ReadWrite, not only "
        "Mail.Send: grant the application permission Mail.ReadWrite with admin consent (the application access "
        f"policy limits it to the same mailboxes); {SCOPE_CHANGE_DELAY}"
    ),
}


# "Access to OData is disabled." is both the documented denial of an application access policy
# (https://learn.microsoft.com/graph/auth-limit-mailbox-access, "Handling API errors") and what Exchange answers for
# a mailbox with EWS/REST blocked: under the access policy the text cannot tell the two apart, so the hint names
# both, with the check for each. Under RBAC for Applications a denial reads "Access is denied..." instead, so there
# the text means EWS/REST blocked. (Some tenants add "[RAOP] : Blocked by tenant configured AppOnly AccessPolicy
# settings.": that one names the policy, and gets the policy's hint.)
EWS_BLOCKED_HINT: Final = (
    "REST/EWS access is blocked for the app or the mailbox (EwsApplicationAccessPolicy, the EWS "
    "block list, or EWS disabled on the mailbox: `Get-CASMailbox <mailbox> | fl EwsEnabled`)"
)
ODATA_DISABLED_POLICY_HINT: Final = (
    "Exchange gives this answer for two causes, and the text does not say which: (1) the mailbox is outside the app's "
    "application access policy (not a member of the policy's mail-enabled security group under RestrictAccess, or a "
    "member under DenyAccess): check with `Test-ApplicationAccessPolicy -Identity <mailbox> -AppId <app id>` "
    "(AccessCheckResult Denied) and fix the group's membership; or (2) EWS/REST is blocked for the mailbox or the "
    "app: check with `Get-CASMailbox <mailbox> | fl EwsEnabled` (False blocks it) and the organisation's "
    f"EwsApplicationAccessPolicy and block list (`Get-OrganizationConfig | fl Ews*`); {SCOPE_CHANGE_DELAY}"
)


def hint_for(code: str, message: str = "", scope_model: str = "rbac") -> str:
    if code == "ErrorAccessDenied" and "OData is disabled" in message and "AccessPolicy" not in message:
        return ODATA_DISABLED_POLICY_HINT if scope_model == "policy" else EWS_BLOCKED_HINT
    if code == "ErrorAccessDenied":
        return ACCESS_DENIED_HINTS["policy" if "AccessPolicy" in message else scope_model]
    if code in _HINTS:
        return _HINTS[code]
    if code.startswith("AADSTS") and code[6:].isdigit():
        return (
            f"Entra ID refused the relay's token request: look the code up at "
            f"https://login.microsoftonline.com/error?code={code[6:]} and fix the app registration or the settings "
            "it names (GRAPH_TENANT_ID, GRAPH_CLIENT_ID, the client secret)"
        )
    return "see the code and message; if it persists, check Microsoft Graph's service health"


def permanent(code: str, message: str, scope_model: str = "rbac") -> Permanent:
    return Permanent(code=code, message=message, hint=hint_for(code, message, scope_model))


def transient(code: str, message: str, retry_after: float | None = None, maybe_sent: bool = False) -> Transient:
    return Transient(code, message, hint_for(code, message), retry_after, maybe_sent)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds. Graph sends delta-seconds; an HTTP date is honoured too."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf", "nan" and "1e999" parse as floats too, and no delay can be made of them: not a Retry-After.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def classify_http(status: int, error: Any, retry_after: str | None = None, scope_model: str = "rbac") -> Outcome:
    """Classify an HTTP answer from Graph; `error` is the parsed JSON body (or None)."""
    if 200 <= status < 300:
        return Sent(status=status)
    code, message = _graph_error(error, status)
    if status in _TRANSIENT_STATUS or status >= 500:
        # A 5xx says nothing about whether the message went out: Graph's front end may answer 502 or 504
        # after Exchange accepted it. 408 and 429 are refusals: nothing was accepted.
        outcome = transient(code, message, parse_retry_after(retry_after), maybe_sent=status >= 500)
        return replace(outcome, throttled=status == 429)
    return permanent(code, message, scope_model)


def _graph_error(error: Any, status: int) -> tuple[str, str]:
    if isinstance(error, dict) and isinstance(error.get("error"), dict):
        body = error["error"]
        code = str(body.get("code") or f"HTTP{status}")
        message = str(body.get("message") or "")
        return code, message
    defaults = {413: "RequestEntityTooLarge", 429: "ApplicationThrottled", 503: "ServiceUnavailable"}
    return defaults.get(status, f"HTTP{status}"), f"HTTP {status} with no Graph error body"


# AADSTS codes Entra documents as transient ("Microsoft Entra authentication and authorization error codes",
# https://learn.microsoft.com/entra/identity-platform/reference-error-codes, MicrosoftDocs/entra-docs
# docs/identity-platform/reference-error-codes.md): 50033 RetryableError, 90006 ExternalServerRetryableError,
# 90012 RequestTimeout, 90024 RequestBudgetExceededError ("A transient error has occurred. Try again."),
# 90033 MsodsServiceUnavailable, 90055 TenantThrottlingError, 90090 GraphRetryableError, 90091
# GraphServiceUnreachable. The same page lists the configuration errors that stay permanent: 7000215 (invalid
# client secret), 7000222 (expired client secret), 700016 (application not found in the tenant), 90002
# (tenant not found), 7000112 (application disabled).
TRANSIENT_AADSTS: Final = frozenset({50033, 90006, 90012, 90024, 90033, 90055, 90090, 90091})


def classify_entra(result: dict[str, Any]) -> Failure:
    """Classify an MSAL error result (Entra's token endpoint error JSON)."""
    codes = [c for c in result.get("error_codes") or [] if isinstance(c, int)]
    description = str(result.get("error_description") or result.get("error") or "unknown error")
    # The first line of the description carries the AADSTS code and text; the rest is trace ids.
    first_line = description.splitlines()[0] if description.strip() else description
    code = f"AADSTS{codes[0]}" if codes else str(result.get("error") or "EntraError")
    # RFC 6749 section 5.2's "temporarily_unavailable" and "server_error" (the same page's table: "Retry the
    # request"), or a code documented as transient: the token endpoint cannot answer now. Retry; name Entra.
    if result.get("error") in {"temporarily_unavailable", "server_error"} or TRANSIENT_AADSTS & set(codes):
        return transient("EntraUnavailable", f"{code}: {first_line}")
    return permanent(code, first_line)


def as_received(raw: bytes | str) -> Any:
    """A request as the dead letter keeps it: the JSON value if the text parses, else the text itself.

    Text that nests too deeply, or holds a number Python refuses (over 4,300 digits), is kept as text:
    the envelope must be writable whatever an app enqueued.
    """
    import json

    from shared.queues import MAX_NESTING, nesting_at_most

    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return value if nesting_at_most(value, MAX_NESTING) else text


def dead_letter_envelope(
    request: Any,
    failure: Failure,
    attempts: int,
    now: datetime | None = None,
    queue_message_id: str | None = None,
    app: str | None = None,
) -> dict[str, Any]:
    """The dead-letter envelope (docs/outcomes.md): the request as received, why it failed, and how often it was tried.

    `queueMessageId` is the id of the queue message that first carried the request: the id `mailrelay send`
    and the client print, so `mailrelay dead-letters show <that id>` finds the letter. `app`: whose queue it came
    from (shared/apps.py), so a requeue goes back to that app's queue."""
    envelope: dict[str, Any] = {
        "request": request,
        "error": {"code": failure.code, "message": failure.message, "hint": failure.hint},
        "attempts": attempts,
        "failedAt": (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if queue_message_id:
        envelope["queueMessageId"] = queue_message_id
    if app:
        envelope["app"] = app
    return envelope
