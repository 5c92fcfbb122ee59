"""`mailrelay doctor`: is the relay set up to send? Checks each piece in the order a send needs it.

Nothing is written: settings, then the Graph credential GRAPH_CREDENTIAL names (the client secret in Key Vault; the
Key Vault certificate, parsed; the managed identity's assertion for a federated credential, against what the app
registration's federated identity credential must hold; or the managed identity's own Graph token), then a token
from Entra ID (and the application permissions it carries, read against EXCHANGE_SCOPE_MODEL; a federated
credential's wrong issuer, subject or audience named from Entra's answer), then the queues and tables.
With `--allowed` and `--denied` it verifies the Exchange scope, the usual second check after setting it
up: without sending, by reading each mailbox's inbox id when the app may read mail (Exchange scopes that
as it scopes Mail.Send); else, with `--send-test-to`, by a real test mail from each address. A denied
address that Exchange lets through is the most important finding: the scope does not restrict.
No line shows a secret value or a token.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from shared.bootstrap import Clients
    from shared.settings import Settings

# "unproven": a check the user asked for (--allowed, --denied) that proved nothing either way. It is not a pass, so it
# exits non-zero (EXIT_UNPROVEN) even though nothing was found wrong: the user asked for a proof and did not get one.
Status = Literal["ok", "warn", "fail", "skip", "unproven"]
EXIT_FAILED: Final = 1
EXIT_UNPROVEN: Final = 3


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""


MAIL_SEND_ROLE: Final = "Mail.Send"
# Graph's application permissions on mail (https://learn.microsoft.com/graph/permissions-reference). Consented
# tenant-wide, each reaches every mailbox, and Exchange's RBAC for Applications adds to it rather than narrowing it
# ("Role Based Access Control for Applications in Exchange Online": https://learn.microsoft.com/exchange/
# permissions-exo/application-rbac, "Unsupported scenarios" and the note that Entra consent and RBAC add up).
MAIL_ROLES: Final = ("Mail.Send", "Mail.ReadWrite", "Mail.Read", "Mail.ReadBasic", "Mail.ReadBasic.All")
# What a federated identity credential that trusts the managed identity must hold ("Configure an application to
# trust a managed identity": https://learn.microsoft.com/entra/workload-id/
# workload-identity-federation-config-app-trust-managed-identity): issuer, the identity's tenant's v2.0 endpoint;
# subject, its object (principal) id; audience, api://AzureADTokenExchange (public cloud).
FIC_ISSUER: Final = "https://login.microsoftonline.com/{tenant}/v2.0"
# Entra's answers when a presented assertion matches no federated credential (reference-error-codes,
# https://learn.microsoft.com/entra/identity-platform/reference-error-codes, and the workload identity federation
# troubleshooting page): one field each, and 70021 when none matches without saying which.
FIC_FIELD_CODES: Final = {"AADSTS700211": "issuer", "AADSTS700212": "audience", "AADSTS700213": "subject"}
FIC_NO_MATCH: Final = "AADSTS70021"


def token_claims(token: str) -> dict[str, Any]:
    """An access token's claims (read, not verified: the relay only reports them); {} for anything else."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_roles(token: str) -> list[str]:
    """The `roles` claim of an access token (read, not verified: the relay only reports it)."""
    roles = token_claims(token).get("roles")
    return [str(r) for r in roles] if isinstance(roles, list) else []


def diagnose(
    env: Mapping[str, str],
    *,
    offline: bool = False,
    allowed: Sequence[str] = (),
    denied: Sequence[str] = (),
    send_test_to: str | None = None,
    app: str | None = None,
) -> list[Check]:
    """The checks, in order. `app`: as that declared app sends (MAILRELAY_APPS): its senders, and its own Graph
    registration when it has one, so `--allowed`/`--denied` verify Exchange's scope on the app's registration."""
    from shared.settings import SettingsError, load_expiry_settings, load_settings

    checks: list[Check] = []
    try:
        settings = load_settings(env)
    except SettingsError as e:
        hint = (
            "set it in the Function App's settings; locally, `mailrelay local` provides them (or run "
            '`eval "$(mailrelay local env)"` to export them)'
        )
        return [Check("settings", "fail", str(e), hint)]
    checks.append(
        Check("settings", "ok", f"{len(settings.allowed_senders)} allowed sender(s), queue {settings.queue_name}")
    )
    try:
        expiry = load_expiry_settings(env, settings)
        channels = ["log"] + (["mail"] if expiry.alert_recipients else []) + (["webhook"] if expiry.webhook_url else [])
        checks.append(Check("expiry settings", "ok", f"alert channels: {', '.join(channels)}"))
    except SettingsError as e:
        checks.append(Check("expiry settings", "fail", str(e), "the secret-expiry timer cannot run until it is set"))
    if offline:
        return [*checks, Check("services", "skip", "--offline: Key Vault, Entra ID and storage not contacted")]

    from shared.bootstrap import build_clients

    clients = build_clients(settings)
    if app is not None:
        try:
            clients = clients.for_app(app)
        except SettingsError as e:
            declared = ", ".join(a.name for a in settings.apps) or "none"
            return [*checks, Check("app", "fail", str(e), f"declared apps: {declared}")]
        registration = clients.settings.graph
        own = registration.name == app
        checks.append(
            Check(
                "app",
                "ok",
                f"{app}: queue {settings.app(app).queue}, {len(clients.settings.allowed_senders)} sender(s); Graph as "
                + (f"its own registration {registration.client_id} ({registration.mode})" if own else "the relay's"),
            )
        )
    checks.extend(credential_checks(clients))
    checks.extend(_storage(settings, clients))
    token = next((c for c in checks if c.name == "entra token"), None)
    if allowed or denied:
        if token is None or token.status == "fail":
            checks.append(Check("exchange scope", "skip", "not verified: no working token (see above)"))
        else:
            from shared.outcomes import RelayFailure

            try:
                checks.extend(scope_checks(clients, allowed, denied, send_test_to))
            except RelayFailure as e:
                checks.append(Check("exchange scope", "fail", f"{e.outcome.code}: {e.outcome.message}", e.outcome.hint))
    return checks


def _outcome_check(name: str, action: Callable[[], Check]) -> Check:
    """Run one check; a RelayFailure carries the relay's own code, message and hint."""
    from shared.outcomes import RelayFailure

    try:
        return action()
    except RelayFailure as e:
        return Check(name, "fail", f"{e.outcome.code}: {e.outcome.message}", e.outcome.hint)


def credential_checks(clients: Clients, now: datetime | None = None) -> list[Check]:
    """GRAPH_CREDENTIAL's checks in the order a send needs them: what the relay presents to Entra ID, then a token.

    secret: the Key Vault secret; certificate: the Key Vault certificate, parsed; federated: the managed identity's
    assertion against what the federated credential must hold; managed-identity: the identity's own Graph token.
    No token is asked for when what it needs failed."""
    mode = clients.settings.credential
    if mode == "certificate":
        first = _certificate(clients, now or datetime.now(UTC))
    elif mode == "federated":
        first, claims = _federated_identity(clients)
        checks = [first]
        if first.status != "fail":
            checks.append(_federated_token(clients, claims))
        return checks
    elif mode == "managed-identity":
        first = _managed_identity(clients)
    else:
        first = _secret(clients)
    return [first, _token(clients)] if first.status != "fail" else [first]


def _secret(clients: Clients) -> Check:
    from shared.credentials import SecretCredential

    def read() -> Check:
        stored = clients.credentials.stored
        assert isinstance(stored, SecretCredential)
        stored.get()  # the value stays in the cache, as when the relay reads it
        version = getattr(stored.source, "version", None)
        return Check("key vault secret", "ok", f"{clients.settings.secret_name}, version {version}")

    return _outcome_check("key vault secret", read)


CERTIFICATE_WARN_DAYS: Final = 30


def _certificate(clients: Clients, now: datetime) -> Check:
    """Read and parse the Key Vault certificate as the relay does (the key stays in memory); show what the portal
    shows of it (the SHA-1 thumbprint, as the app registration's Certificates & secrets lists it), and its end."""
    from shared.credentials import CertificateCredential
    from shared.expiry import days_left
    from shared.expiry.model import day

    name = "key vault certificate"

    def read() -> Check:
        stored = clients.credentials.stored
        assert isinstance(stored, CertificateCredential)
        stored.get()
        info = stored.info
        assert info is not None
        left = days_left(info.not_after, now)
        detail = (
            f"{clients.settings.certificate_name}, version {info.version}: thumbprint {info.thumbprint_sha1} "
            f"(SHA-1), subject {info.subject}, not after {day(info.not_after)}"
        )
        renew = (
            "Key Vault renews it by its policy's AutoRenew lifetime action, and the app registration must then get "
            "the new public key (infra/scripts/sync-app-certificate.sh; infra/README.md, `certificate`); "
            "`mailrelay expiry check` warns before it ends"
        )
        if info.not_after <= now:
            return Check(name, "fail", f"{detail}: EXPIRED", f"Entra ID refuses an expired certificate. {renew}")
        if left < CERTIFICATE_WARN_DAYS:
            return Check(name, "warn", f"{detail}, {left} days left", renew)
        return Check(name, "ok", f"{detail}, {left} days left")

    return _outcome_check(name, read)


def _federated_identity(clients: Clients) -> tuple[Check, dict[str, Any]]:
    """The managed identity's token for api://AzureADTokenExchange, the assertion the relay presents: its iss, sub
    and aud, and what the app registration's federated identity credential must hold to accept it."""
    from shared.credentials import TOKEN_EXCHANGE_AUDIENCE
    from shared.outcomes import RelayFailure

    name = "managed identity"
    settings = clients.settings
    federated = clients.credentials.federated
    assert federated is not None
    try:
        claims = federated.assertion_claims()
    except RelayFailure as e:
        return Check(name, "fail", f"{e.outcome.code}: {e.outcome.message}", e.outcome.hint), {}
    issuer = FIC_ISSUER.format(tenant=settings.tenant_id)
    audiences = claims.get("aud")
    audiences = [str(a) for a in audiences] if isinstance(audiences, list) else [str(audiences)]
    subject = str(claims.get("sub"))
    expected = {"issuer": issuer, "subject": subject, "audience": TOKEN_EXCHANGE_AUDIENCE}
    detail = (
        f"identity {settings.managed_identity_client_id}: its assertion has iss {claims.get('iss')}, sub {subject}, "
        f"aud {', '.join(audiences)}; the app registration's federated identity credential must hold issuer "
        f"{issuer}, subject {subject} (the identity's principal id), audience {TOKEN_EXCHANGE_AUDIENCE}"
    )
    problems = []
    if claims.get("iss") != issuer:
        problems.append(
            f"its issuer is not {issuer} (GRAPH_TENANT_ID's): the identity lives in another tenant than the app "
            "registration, or GRAPH_TENANT_ID is wrong"
        )
    if TOKEN_EXCHANGE_AUDIENCE not in audiences:
        problems.append(
            f"its audience is not {TOKEN_EXCHANGE_AUDIENCE}: Entra ID accepts only that audience from a managed "
            "identity in the public cloud"
        )
    if problems:
        return Check(name, "warn", detail, "; ".join(problems)), expected
    return Check(name, "ok", detail), expected


def _fic_where(client_id: str) -> str:
    return (
        f"Entra admin center > App registrations > {client_id} > Certificates & secrets > Federated credentials, "
        f"or `az ad app federated-credential list --id {client_id}` and `az ad app federated-credential update "
        f"--id {client_id} --federated-credential-id <name> --parameters <json>` (infra/README.md, `federated`)"
    )


def _federated_token(clients: Clients, expected: Mapping[str, str]) -> Check:
    """The token request with the assertion: Entra's answer names the federated credential's field that differs
    (AADSTS700211 issuer, 700212 audience, 700213 subject); 70021 names none, so all three are shown."""
    from shared.outcomes import RelayFailure

    try:
        clients.tokens.token()
    except RelayFailure as e:
        outcome = e.outcome
        client_id = clients.settings.client_id
        field = FIC_FIELD_CODES.get(outcome.code)
        entra = " ".join(outcome.message.split())[:300]
        if field is not None:
            # Entra matches the issuer first: an app with no federated credential at all answers 700211 too.
            none = " (or it has none at all)" if field == "issuer" else ""
            return Check(
                "entra token",
                "fail",
                f"{outcome.code}: the app registration's federated identity credential has the wrong {field}: it "
                f"must be {expected.get(field, '?')}{none} (Entra: {entra})",
                f"set the {field} to {expected.get(field, '?')} in {_fic_where(client_id)}",
            )
        if outcome.code == FIC_NO_MATCH:
            wanted = ", ".join(f"{k} {v}" for k, v in expected.items())
            return Check(
                "entra token",
                "fail",
                f"{outcome.code}: no federated identity credential of the app registration matches the identity's "
                f"token (deleted, or a field differs): one must hold {wanted} (Entra: {entra})",
                f"create or correct it in {_fic_where(client_id)}",
            )
        return Check("entra token", "fail", f"{outcome.code}: {outcome.message}", outcome.hint)
    return _token(clients)


def _managed_identity(clients: Clients) -> Check:
    """GRAPH_CREDENTIAL=managed-identity: a Graph token from the identity itself, its appid and roles."""
    name = "managed identity"

    def acquire() -> Check:
        token = clients.tokens.token()
        claims, roles = token_claims(token), token_roles(token)
        identity = clients.settings.managed_identity_client_id or "?"
        appid = str(claims.get("appid") or claims.get("azp") or "?")
        detail = f"Graph token of the identity {identity}: appid {appid}, roles: {', '.join(roles) or 'none'}"
        if appid.lower() != identity.lower():
            return Check(
                name,
                "fail",
                detail,
                "the token is not the identity AZURE_CLIENT_ID names: set AZURE_CLIENT_ID to the client id of the "
                "user-assigned identity assigned to the Function App (never a system-assigned one)",
            )
        return Check(name, "ok", detail)

    return _outcome_check(name, acquire)


def _token(clients: Clients) -> Check:
    """The token's roles read against the scope model: the same role is right under one, a hole under the other.

    Under RBAC for Applications any tenant-wide mail consent (MAIL_ROLES) adds to Exchange's scope, so it warns;
    under an application access policy the consent is what the policy narrows: expected (Mail.Send required)."""
    model = clients.settings.exchange_scope_model

    def acquire() -> Check:
        roles = token_roles(clients.tokens.token())
        shown = ", ".join(roles) or "none"
        consented = [r for r in MAIL_ROLES if r in roles]
        if model == "rbac" and consented:
            effects = []
            if MAIL_SEND_ROLE in consented:
                effects.append("send as anyone")
            if any(r != MAIL_SEND_ROLE for r in consented):
                effects.append("read every mailbox")
            return Check(
                "entra token",
                "warn",
                f"app-only token WITH the Entra consent {', '.join(consented)} (roles: {shown}), under RBAC for "
                "Applications",
                f"this consent lets the app {' and '.join(effects)}: Entra consent and RBAC for Applications add up, "
                "so the Exchange scope restricts nothing. Remove it (infra/exchange/Set-RbacApplicationScope.ps1 "
                "-RemoveEntraConsent, or Entra admin center > Enterprise applications > the app > Permissions); "
                "Exchange's role assignments alone should grant the mail roles",
            )
        if model == "rbac":
            return Check(
                "entra token",
                "ok",
                f"app-only token without a tenant-wide mail consent ({', '.join(MAIL_ROLES)}; roles: {shown}): "
                "Exchange's RBAC for Applications scope alone authorises, as it should",
            )
        if MAIL_SEND_ROLE in roles:
            return Check("entra token", "ok", f"app-only token with roles: {shown} (scoped by the access policy)")
        return Check(
            "entra token",
            "fail",
            f"app-only token without {MAIL_SEND_ROLE} (roles: {shown}), under an application access policy",
            "an access policy only narrows a consent: grant Mail.Send as an Application permission (not "
            'Delegated) with admin consent ("the token contains no permissions" is this case)',
        )

    return _outcome_check("entra token", acquire)


# --- The Exchange scope, verified ----------------------------------------------------------------

NON_RESTRICTING_CAUSES: Final = (
    "likely causes: a tenant-wide Mail.Send consent in Entra beside RBAC for Applications (the two add up: remove "
    "it with Set-RbacApplicationScope.ps1 -RemoveEntraConsent); no management scope or access policy at all; the "
    "scope or policy on the wrong group (or, for an access policy, DenyAccess where RestrictAccess was meant). Fix "
    "it, then check again: changes take 30 minutes to 2 hours, or more, to apply"
)
NOT_ALLOWED_CAUSES: Final = (
    "likely causes: the mailbox is not in the mail-enabled group or the management scope; the change has not "
    "replicated yet (30 minutes to 2 hours, or more); EWS disabled on the mailbox (`Get-CASMailbox <mailbox> | "
    "fl EwsEnabled`); no Exchange Online mailbox (on-premises or unlicensed user; a shared mailbox needs no licence)"
)


# Under an application access policy, "Access to OData is disabled." is the policy's documented denial
# (https://learn.microsoft.com/graph/auth-limit-mailbox-access, "Handling API errors") and also what a mailbox with
# EWS/REST blocked answers: the doctor names both, with the check an admin runs for each (shared/outcomes.py).
ODATA_DISABLED_POLICY_CAUSES: Final = (
    "under an application access policy this answer has two causes: the mailbox is outside the policy's group "
    "(`Test-ApplicationAccessPolicy -Identity <mailbox> -AppId <app id>` says Denied: fix the mail-enabled security "
    "group's membership, then wait 30 minutes to 2 hours, or more), or EWS/REST is blocked for it "
    "(`Get-CASMailbox <mailbox> | fl EwsEnabled` says False; also the organisation's EwsApplicationAccessPolicy and "
    "block list: `Get-OrganizationConfig | fl Ews*`)"
)


def _verdict(reply_status: int, error: object, scope_model: str = "rbac") -> tuple[str, str]:
    """("allowed" | "denied" | "blocked" | "missing" | "error", detail) of one probe or send. `scope_model`
    (EXCHANGE_SCOPE_MODEL) says what "Access to OData is disabled." means: under RBAC for Applications, EWS/REST
    blocked on the mailbox; under an access policy, that or the policy's denial (the text is the same)."""
    code = ""
    message = ""
    if isinstance(error, dict) and isinstance(error.get("error"), dict):
        code = str(error["error"].get("code") or "")
        message = str(error["error"].get("message") or "")
    if 200 <= reply_status < 300:
        return "allowed", f"HTTP {reply_status}"
    if code == "ErrorAccessDenied" and message.strip() == "Access to OData is disabled." and scope_model == "policy":
        return "blocked", (
            "ErrorAccessDenied: Access to OData is disabled (outside the application access policy's group, "
            "or EWS/REST blocked on the mailbox)"
        )
    if code == "ErrorAccessDenied" and message.strip() == "Access to OData is disabled.":
        return "blocked", "ErrorAccessDenied: Access to OData is disabled (EWS/REST blocked on the mailbox)"
    if code == "ErrorAccessDenied":
        return "denied", f"ErrorAccessDenied: {message[:120]}"
    if code in ("MailboxNotEnabledForRESTAPI", "ErrorInvalidUser", "ResourceNotFound"):
        return "missing", f"{code}: no Exchange Online mailbox by that address"
    return "error", f"HTTP {reply_status} {code}: {message[:120]}"


# How many other allowed senders the doctor reads when every address named was refused: one that answers proves the
# app holds a read role, which turns the refusals into findings. A few, so a long allow-list costs a few requests.
SCOPE_WITNESSES: Final = 3


def _unproven_hint(model: str) -> str:
    """What proves the scope when a read probe cannot: a read role, a test mail, or Exchange's own test cmdlet."""
    cmdlet = (
        "`Test-ApplicationAccessPolicy -Identity <mailbox> -AppId <app id>`"
        if model == "policy"
        else "`Test-ServicePrincipalAuthorization -Identity <app id> -Resource <mailbox>` (InScope)"
    )
    # Test-ServicePrincipalAuthorization: https://learn.microsoft.com/powershell/module/exchange/
    # Test-ServicePrincipalAuthorization; Test-ApplicationAccessPolicy: https://learn.microsoft.com/powershell/module/
    # exchange/Test-ApplicationAccessPolicy. Both answer for one mailbox without sending.
    return (
        "to prove it, run again with --send-test-to ADDRESS (a real test mail from each address), or grant the app a "
        'read role in the same scope (RBAC: "Application Mail.ReadBasic", or "Application Mail.Read", which also lets '
        f"the relay resolve unknown sends) so the doctor can probe without sending, or ask Exchange: {cmdlet}"
    )


def scope_checks(
    clients: Clients, allowed: Sequence[str], denied: Sequence[str], send_test_to: str | None = None
) -> list[Check]:
    """Exchange's scope, address by address: allowed ones must work, denied ones must be refused.

    Each address gets one of: ok (proved), fail (proved wrong: an allowed address that cannot send, a denied one that
    can), or unproven (the answer cannot tell, and the user asked for a proof). A refused read probe proves a refusal
    only once the app is known to read mail: an address named, or one of a few other allowed senders, that answers
    (Exchange scopes a read role as it scopes Mail.Send when both are assigned on one scope, as infra/ does). A denied
    address with no Exchange Online mailbox proves nothing: nothing can send as a mailbox that does not exist."""
    from shared.graph import GraphClient

    settings = clients.settings
    checks = [
        Check(
            f"allow-list {a}",
            "fail",
            f"{a} is not on ALLOWED_SENDERS",
            "add it there too: the relay refuses it before Graph whatever Exchange allows",
        )
        for a in allowed
        if a.lower() not in settings.allowed_senders
    ]
    graph = GraphClient(clients.session, settings.graph_base_url)
    token = clients.tokens.token()
    model = settings.exchange_scope_model
    replies = {a: graph.read_inbox(a, token) for a in (*allowed, *denied)}
    probes = {a: _verdict(reply.status, reply.error, model) for a, reply in replies.items()}
    method = "read probe (GET mailFolders/inbox)"
    # Reading is conclusive once one mailbox answers: the app does hold a read permission.
    conclusive = any(v[0] == "allowed" for v in probes.values())
    if not conclusive:
        named = {a.lower() for a in (*allowed, *denied)}
        for other in sorted(settings.allowed_senders - named)[:SCOPE_WITNESSES]:
            reply = graph.read_inbox(other, token)
            if _verdict(reply.status, reply.error, model)[0] == "allowed":
                conclusive = True
                method = f"read probe (GET mailFolders/inbox; the app reads {other}, so a refusal is the scope's)"
                break
    results = probes
    if not conclusive and send_test_to:
        method = f"test mail to {send_test_to}"
        results = {a: _send_test(clients, a, send_test_to) for a in (*allowed, *denied)}
        conclusive = True  # a refused sendMail is the answer itself
    unproven_hint = _unproven_hint(model)
    not_told = (
        "not verified: the read probe was refused, and no other allowed sender answered one either: the app may not "
        "read mail at all, or {address} is outside its scope; a read probe cannot tell the two apart"
    )
    for address in allowed:
        verdict, detail = results[address]
        name = f"scope allows {address}"
        if verdict == "allowed":
            checks.append(Check(name, "ok", f"{detail} ({method})"))
        elif verdict == "error":
            checks.append(Check(name, "unproven", f"could not tell: {detail} ({method})", unproven_hint))
        elif verdict == "missing" or conclusive:  # no mailbox cannot send, whatever the app may read
            blocked_by_either = verdict == "blocked" and model == "policy"
            causes = ODATA_DISABLED_POLICY_CAUSES if blocked_by_either else NOT_ALLOWED_CAUSES
            checks.append(Check(name, "fail", f"refused: {detail} ({method}): {address} cannot send", causes))
        else:
            checks.append(Check(name, "unproven", f"{not_told.format(address=address)} ({detail})", unproven_hint))
    checks.extend(sent_items_checks(clients, [a for a in allowed if results[a][0] == "allowed"]))
    checks.extend(draft_checks(clients, [a for a in allowed if results[a][0] == "allowed"]))
    for address in denied:
        verdict, detail = results[address]
        name = f"scope denies {address}"
        if verdict == "allowed":
            checks.append(
                Check(
                    name,
                    "fail",
                    f"NOT RESTRICTED: the app can act on {address} ({method}); the scope does not restrict",
                    NON_RESTRICTING_CAUSES,
                )
            )
        elif verdict == "missing":
            checks.append(
                Check(
                    name,
                    "unproven",
                    f"proves nothing: {detail}, and nothing can send as a mailbox that does not exist, whatever the "
                    "scope says",
                    "check the address for a typo, or name a mailbox that exists in Exchange Online and must stay "
                    "outside the scope (the CEO's, a shared mailbox not in the scope's group)",
                )
            )
        elif verdict == "error":
            checks.append(Check(name, "unproven", f"could not tell: {detail} ({method})", unproven_hint))
        elif conclusive:
            checks.append(Check(name, "ok", f"refused as it should be: {detail} ({method})"))
        else:
            checks.append(Check(name, "unproven", f"{not_told.format(address=address)} ({detail})", unproven_hint))
    return checks


def sent_items_checks(clients: Clients, senders: Sequence[str]) -> list[Check]:
    """Can the relay resolve an unknown send from each sender's Sent Items (Mail.Read in the Exchange scope)?
    A look-up of a mark no message carries: it reads nothing but the answer's status."""
    import uuid

    from shared.status import StatusKey

    outcome = clients.settings.unknown_outcome
    checks = []
    for sender in senders:
        lookup = clients.relay.find_sent(sender, StatusKey(sender.lower(), "msg", f"doctor-{uuid.uuid4()}").mark)
        name = f"unknown sends from {sender}"
        if lookup.failure is None:
            checks.append(Check(name, "ok", "looked up in Sent Items before any second try (Mail.Read in scope)"))
        elif lookup.no_access:
            effect = "sent again: may arrive twice" if outcome == "resend" else "dead-lettered: may never arrive"
            checks.append(
                Check(
                    name,
                    "warn",
                    f"cannot read Sent Items ({lookup.failure.code}): SEND_UNKNOWN_OUTCOME={outcome}, {effect}",
                    'grant "Application Mail.Read" on the same management scope (infra/exchange) so the relay can '
                    "tell whether a timed-out send went out",
                )
            )
        else:
            checks.append(Check(name, "warn", f"the Sent Items look-up failed for now: {lookup.failure.code}"))
    return checks


def draft_checks(clients: Clients, senders: Sequence[str]) -> list[Check]:
    """Can the relay send large messages and MIME (the SMTP listener's every mail) as each sender? Both go through a
    draft, which needs "Application Mail.ReadWrite" in the Exchange scope. Probed by creating an empty draft and
    deleting it at once: nothing is sent, and a draft left by a failed delete has no recipient."""
    from shared.graph import GraphClient

    graph = GraphClient(clients.session, clients.settings.graph_base_url)
    token = clients.tokens.token()
    checks = []
    for sender in senders:
        name = f"drafts as {sender}"
        reply = graph.create_draft(sender, {"subject": "mailrelay doctor: draft test (deleted at once)"}, token)
        draft_id = reply.value.get("id") if reply.status == 201 and isinstance(reply.value, dict) else None
        if isinstance(draft_id, str):
            graph.delete_message(sender, draft_id, token)
            checks.append(Check(name, "ok", "large messages and MIME (SMTP) can be sent (Mail.ReadWrite in scope)"))
        elif reply.status in (401, 403):
            checks.append(
                Check(
                    name,
                    "warn",
                    f"cannot create a draft (HTTP {reply.status}): attachments over 3 MB and MIME requests, which "
                    "are every mail of the SMTP listener, are dead-lettered",
                    'grant "Application Mail.ReadWrite" on the same management scope (infra/exchange; '
                    "docs/permissions.md)",
                )
            )
        else:
            checks.append(Check(name, "warn", f"the draft probe failed for now: HTTP {reply.status}"))
    return checks


def _send_test(clients: Clients, sender: str, recipient: str) -> tuple[str, str]:
    from shared.outcomes import Permanent, Sent

    request = {
        "from": sender,
        "to": [recipient],
        "subject": f"mailrelay doctor: Exchange scope test from {sender}",
        "body": {"contentType": "text", "content": "A test of the relay's Exchange scope. No action needed."},
        "saveToSentItems": False,
    }
    outcome = clients.relay.send_as(sender, request)
    if isinstance(outcome, Sent):
        return "allowed", "HTTP 202 (test mail sent)"
    if isinstance(outcome, Permanent):
        return _verdict(
            403 if outcome.code == "ErrorAccessDenied" else 404,
            {"error": {"code": outcome.code, "message": outcome.message}},
            clients.settings.exchange_scope_model,
        )
    return "error", f"{outcome.code}: {outcome.message[:120]}"


def _storage(settings: Settings, clients: Clients) -> list[Check]:
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    from shared.expiry import TABLE_NAME as EXPIRY_TABLE
    from shared.status import TABLE_NAME as STATUS_TABLE
    from shared.storage import queue_client, table_client

    checks = []
    queues = (
        (settings.queue_name, "mail queue"),
        (settings.retry_queue_name, "retry queue"),
        (settings.poison_queue_name, "dead-letter queue"),
    )
    for name, role in queues:
        try:
            props = queue_client(settings, name, clients.storage_identity).get_queue_properties()
            checks.append(Check(role, "ok", f"{name}: about {props.approximate_message_count} message(s)"))
        except ResourceNotFoundError:
            if name != settings.queue_name:  # the first dead letter or retry creates it (shared/queues.py)
                checks.append(Check(role, "warn", f"{name} does not exist yet", "created on first use"))
            else:
                checks.append(
                    Check(role, "fail", f"{name} does not exist", "infra/main.bicep creates it; or create it")
                )
        except AzureError as e:
            checks.append(
                Check(role, "fail", f"{name}: {type(e).__name__}", "grant the identity Storage Queue Data Contributor")
            )
    try:
        stranded = queue_client(settings, settings.retry_poison_queue_name, clients.storage_identity)
        count = stranded.get_queue_properties().approximate_message_count
        if count:
            checks.append(
                Check(
                    "stranded retries",
                    "warn",
                    f"about {count} message(s) in {settings.retry_poison_queue_name}: retries the host gave up on",
                    "`mailrelay dead-letters list --retries`, then `requeue --retries --all` once storage is healthy",
                )
            )
    except ResourceNotFoundError:
        pass  # created by the host on its first give-up: none so far
    except AzureError:
        pass  # the queue checks above already report an unreachable account
    from shared.apps import status_table

    for table in (STATUS_TABLE, *(status_table(app.name) for app in settings.apps), EXPIRY_TABLE):
        try:
            client = table_client(settings, table, clients.storage_identity)
            next(iter(client.list_entities(results_per_page=1, select=["RowKey"])), None)
            checks.append(Check(f"table {table}", "ok", "reachable"))
        except ResourceNotFoundError:
            checks.append(
                Check(
                    f"table {table}", "warn", "does not exist yet", "created on first use; in Azure infra/ creates it"
                )
            )
        except AzureError as e:
            checks.append(
                Check(f"table {table}", "fail", type(e).__name__, "grant the identity Storage Table Data Contributor")
            )
    return checks


def exit_code(checks: list[Check]) -> int:
    """1 when a check failed; else 3 when a check asked for proved nothing (not a pass: no proof); else 0."""
    if any(c.status == "fail" for c in checks):
        return EXIT_FAILED
    return EXIT_UNPROVEN if any(c.status == "unproven" for c in checks) else 0


def render(checks: list[Check], *, as_json: bool) -> str:
    if as_json:
        return json.dumps({"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}, indent=2)
    width = max(len(c.name) for c in checks)
    column = max(4, *(len(c.status) for c in checks))
    lines = []
    for c in checks:
        lines.append(f"{c.status:<{column}}  {c.name:<{width}}  {c.detail}")
        if c.hint and c.status in ("warn", "fail", "unproven"):
            lines.append(f"{'':<{column}}  {'':<{width}}  hint: {c.hint}")
    return "\n".join(lines)
