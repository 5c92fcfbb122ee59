"""`mailrelay doctor`: is the relay set up to send? Checks each piece in the order a send needs it.

Nothing is sent and nothing is written: settings, then the client secret in Key Vault, then a token
from Entra ID (and the application permissions it carries), then the queues and tables. Graph's
sendMail has no dry run, so the Exchange scope is checked with infra/exchange/Test-ExchangeScope.ps1.
No line shows a secret value or a token.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from shared.bootstrap import Clients
    from shared.settings import Settings

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    hint: str = ""


MAIL_SEND_ROLE: Final = "Mail.Send"


def token_roles(token: str) -> list[str]:
    """The `roles` claim of an access token (read, not verified: the relay only reports it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return []
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return [str(r) for r in roles] if isinstance(roles, list) else []


def diagnose(env: Mapping[str, str], *, offline: bool = False) -> list[Check]:
    from shared.settings import SettingsError, load_expiry_settings, load_settings

    checks: list[Check] = []
    try:
        settings = load_settings(env)
    except SettingsError as e:
        return [Check("settings", "fail", str(e), "set it in the app settings (locally: local.settings.json)")]
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
    checks.append(_secret(clients))
    if checks[-1].status == "ok":
        checks.append(_token(clients))
    checks.extend(_storage(settings, clients))
    return checks


def _outcome_check(name: str, action: Callable[[], Check]) -> Check:
    """Run one check; a RelayFailure carries the relay's own code, message and hint."""
    from shared.outcomes import RelayFailure

    try:
        return action()
    except RelayFailure as e:
        return Check(name, "fail", f"{e.outcome.code}: {e.outcome.message}", e.outcome.hint)


def _secret(clients: Clients) -> Check:
    def read() -> Check:
        clients.secret.get()  # the value stays in the cache, as when the relay reads it
        return Check("key vault secret", "ok", f"{clients.settings.secret_name}, version {clients.secret.version}")

    return _outcome_check("key vault secret", read)


def _token(clients: Clients) -> Check:
    def acquire() -> Check:
        roles = token_roles(clients.tokens.token())
        if MAIL_SEND_ROLE in roles:
            return Check("entra token", "ok", f"app-only token with roles: {', '.join(roles)}")
        return Check(
            "entra token",
            "warn",
            f"app-only token without {MAIL_SEND_ROLE} (roles: {', '.join(roles) or 'none'})",
            "right for RBAC for Applications, where Exchange grants Mail.Send and a tenant-wide consent would "
            "defeat the scope; with an application access policy, grant Mail.Send as an Application permission "
            "(not Delegated) with admin consent",
        )

    return _outcome_check("entra token", acquire)


def _storage(settings: Settings, clients: Clients) -> list[Check]:
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    from shared.expiry import TABLE_NAME as EXPIRY_TABLE
    from shared.ledger import TABLE_NAME as LEDGER_TABLE
    from shared.storage import queue_client, table_client

    checks = []
    for name, role in ((settings.queue_name, "mail queue"), (settings.poison_queue_name, "dead-letter queue")):
        try:
            props = queue_client(settings, name, clients.storage_identity).get_queue_properties()
            checks.append(Check(role, "ok", f"{name}: about {props.approximate_message_count} message(s)"))
        except ResourceNotFoundError:
            if name == settings.poison_queue_name:  # the first dead letter creates it (shared/queues.py)
                checks.append(Check(role, "warn", f"{name} does not exist yet", "created with the first dead letter"))
            else:
                checks.append(
                    Check(role, "fail", f"{name} does not exist", "infra/main.bicep creates it; or create it")
                )
        except AzureError as e:
            checks.append(
                Check(role, "fail", f"{name}: {type(e).__name__}", "grant the identity Storage Queue Data Contributor")
            )
    for table in (LEDGER_TABLE, EXPIRY_TABLE):
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
    return 1 if any(c.status == "fail" for c in checks) else 0


def render(checks: list[Check], *, as_json: bool) -> str:
    if as_json:
        return json.dumps({"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}, indent=2)
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.hint and c.status in ("warn", "fail"):
            lines.append(f"{'':<4}  {'':<{width}}  hint: {c.hint}")
    return "\n".join(lines)
