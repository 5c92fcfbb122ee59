"""Apps as principals: each app declared once (MAILRELAY_APPS), with its own queue and its own senders.

The queue is the identity. Only an app's principals hold Storage Queue Data Message Sender on its queue
(infra/), so the relay knows the app from the queue a message came from (function_app.py registers one trigger
per app), never from anything the app wrote. The outbox, MAIL_QUEUE_NAME, is the implicit app `default`, whose
senders are all of ALLOWED_SENDERS: a deployment that declares no app behaves as before.

shared.settings parses and checks the declaration (parse_apps). It is a JSON array:
[{"name": "billing", "senders": ["billing@contoso.com"], "principals": [...]}].
`principals` (the Entra object ids allowed to enqueue) are the Bicep's business; the relay checks their form only.

Cheap to import: function_app.py reads the declaration here when the host indexes it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from shared.settings import GraphRegistration

log = logging.getLogger(f"mailrelay.{__name__}")  # under the logger the worker's distro exports (shared/telemetry.py)

DEFAULT_APP: Final = "default"
# Names an app may not take: the implicit app, and those that would make an app's queue one of the relay's own
# (<MAIL_QUEUE_NAME>-retry, -poison, -retry-poison).
RESERVED_NAMES: Final = frozenset({DEFAULT_APP, "retry", "poison", "retry-poison"})
NAME_RULE: Final = "2 to 24 lower-case letters, digits and single hyphens, starting with a letter"
_NAME = re.compile(r"^[a-z](?:[a-z0-9]|-(?=[a-z0-9])){1,23}$")
FIELDS: Final = frozenset(
    {"name", "senders", "principals", "messagesPerMinute", "recipientsPerDay", "maxScheduled", "graph"}
)
# How many requests waiting for their `sendAt` a declared app may hold at once: enough for any app's reminders,
# few enough that one app cannot fill the relay's table and retry queue for a week. The outbox (the default app)
# keeps no cap: a single-app deployment behaves as before.
DEFAULT_MAX_SCHEDULED: Final = 1000
MAX_SCHEDULED_CEILING: Final = 100_000
# An app's own Graph app registration ("graph"): GRAPH_CREDENTIAL's companions, by the same names, in camel case.
GRAPH_FIELDS: Final = {
    "credential": "GRAPH_CREDENTIAL",
    "clientId": "GRAPH_CLIENT_ID",
    "secretName": "GRAPH_CLIENT_SECRET_NAME",
    "certificateName": "GRAPH_CERTIFICATE_NAME",
}
SETTING: Final = "MAILRELAY_APPS"
POISON_SUFFIX: Final = "-poison"
STATUS_TABLE: Final = "mailstatus"  # the status records' table (shared/status.py); a declared app has its own


@dataclass(frozen=True)
class App:
    """One app: the queue it enqueues on, and the mailboxes it may send as."""

    name: str
    queue: str
    senders: frozenset[str]  # lower-cased, a subset of ALLOWED_SENDERS
    # Its share of each of its sender mailboxes' budgets (shared/pacing.py): at most this many messages a minute
    # and recipients a day, whatever other apps do. None: no share of its own; the apps without one share what the
    # declared shares leave of the mailbox's limits.
    messages_per_minute: int | None = None
    recipients_per_day: int | None = None
    max_scheduled: int | None = DEFAULT_MAX_SCHEDULED  # None: no cap (the default app)
    # Its own Graph app registration and credential (shared/credentials.py), so that Exchange, too, scopes it to
    # its senders: a bug in the relay's policy still cannot send as another app's mailbox. None: the relay's.
    graph: GraphRegistration | None = None


def is_app_name(name: str) -> bool:
    """A name a declared app may have, or the default app's."""
    return name == DEFAULT_APP or is_declarable(name)


def is_declarable(name: str) -> bool:
    """A name an app may be declared with (NAME_RULE, and not reserved)."""
    return bool(_NAME.match(name)) and name not in RESERVED_NAMES


def trigger_name(app: str) -> str:
    """The app's queue trigger's name in function_app.py: unique per app, as the programming model requires."""
    return "send_mail" if app == DEFAULT_APP else f"send_mail_{app.replace('-', '_')}"


def status_table(app: str) -> str:
    """The table of `app`'s status records: `mailstatus` for the default app (beside every mailbox's pace row),
    `mailstatus<app, without its hyphens>` for a declared app (table names are letters and digits). A table is the
    narrowest scope of a role on table data ("subscription, resource group, storage account, or table":
    https://learn.microsoft.com/azure/storage/tables/assign-azure-role-data-access), so a table of its own is how
    an app's credentials read its records and no other app's. Two names alike but for hyphens would share one:
    the declaration is refused (shared/settings.py parse_apps). Here, not in shared/status.py, so the settings
    can check names without importing Storage."""
    return STATUS_TABLE if app == DEFAULT_APP else STATUS_TABLE + app.replace("-", "")


def app_queue(queue_name: str, app: str) -> str:
    """The queue of `app`: the outbox itself for the default app, else `<outbox>-<app>`."""
    return queue_name if app == DEFAULT_APP else f"{queue_name}-{app}"


def default_app(queue_name: str, allowed: frozenset[str]) -> App:
    """The outbox as an app: every sender on ALLOWED_SENDERS, no cap on scheduled requests, as before apps."""
    return App(DEFAULT_APP, queue_name, allowed, max_scheduled=None)


def indexed_apps(env: Mapping[str, str]) -> tuple[str, ...]:
    """The names of the declared apps function_app.py registers a trigger for, read when the host indexes it.

    Lenient by design: an import error would hide every function ("0 functions found"), so a malformed declaration
    registers no app trigger here (their messages wait on their queues, nothing is lost) and fails, named, when
    the relay loads its settings (the outbox's first message, the timer, `mailrelay doctor`)."""
    try:
        declared: Any = json.loads(env.get(SETTING, "") or "[]")
        names = [entry["name"] for entry in declared]
    except (ValueError, TypeError, KeyError):
        log.error("%s is malformed: no app's queue is listened to until it is fixed", SETTING)
        return ()
    valid = tuple(dict.fromkeys(n for n in names if isinstance(n, str) and is_declarable(n)))
    if len(valid) != len(names):
        log.error("%s names an app wrongly: its queue is not listened to until it is fixed", SETTING)
    return valid
