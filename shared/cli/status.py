"""`mailrelay status`: what became of a request, from the relay's status records (shared/status.py)."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from shared.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    Connection,
    UsageError,
    add_app_arg,
    add_connection_args,
    fail,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from shared.cli.common import Subparsers
    from shared.status import StatusRecord, StatusStore

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def register(subparsers: Subparsers) -> None:
    from shared.status import STATES

    parser = subparsers.add_parser(
        "status",
        help="what became of a request: its state, attempts, last error and hint",
        description=(
            "Reads the relay's status records (Table mailstatus, and each app's own, mailstatus<app>): one per "
            "request, keyed by the sender mailbox "
            "and the request's id, or, for a request without one, the queue message id `mailrelay send` printed. "
            "A record holds states, counts, codes, hints, times and Graph's request ids; never a subject, a body "
            "or a recipient's address. Requests refused before sending (invalid, sender not allowed) have no "
            "record: `mailrelay dead-letters show KEY` finds them."
        ),
    )
    parser.add_argument("key", metavar="KEY", nargs="?", help="the request's id, or the queue message id send printed")
    parser.add_argument("--from", dest="sender", metavar="SENDER", help="the sender mailbox (when several used KEY)")
    parser.add_argument("--since", metavar="SPAN", help="list the records changed in the last SPAN: 30m, 1h, 2d")
    parser.add_argument("--state", choices=STATES, help="with --since: only records in this state")
    parser.add_argument("--json", action="store_true", help="as JSON")
    add_app_arg(
        parser,
        "only app NAME's records (ids are per app: two apps' requests may share a KEY); default (the outbox's app) "
        "is a name too. Every record names its app",
    )
    add_connection_args(parser)
    parser.set_defaults(handler=run)


def parse_span(text: str) -> timedelta:
    match = _SPAN.match(text.strip().lower())
    if not match:
        raise UsageError(f"--since takes a span such as 30m, 1h or 2d, got {text!r}")
    return timedelta(**{_UNITS[match[2]]: float(match[1])})


def run(args: argparse.Namespace) -> int:
    from shared.cli.common import run_with_queue

    if bool(args.key) == bool(args.since):
        return fail("status", "give a KEY, or --since SPAN to list records (not both)", EXIT_USAGE)
    if args.state and not args.since:
        return fail("status", "--state goes with --since", EXIT_USAGE)

    def body(conn: Connection) -> int:
        stores = status_stores(conn, args.app)
        if args.since:
            since = datetime.now(UTC) - parse_span(args.since)
            changed = (r for store in stores for r in store.since(since, args.state))
            records = sorted(of_app(changed, args.app), key=lambda r: r.updated_at)
            if args.json:
                print(json.dumps([r.to_json() for r in records], indent=2))
            elif not records:
                which = f" in state {args.state}" if args.state else ""
                which += f" of app {args.app}" if args.app else ""
                print(f"no records changed since {since:%Y-%m-%d %H:%M:%S} UTC{which}")
            else:
                print(status_table(records))
            return EXIT_OK
        found = lookup(stores, args.key, args.sender, args.app)
        if not found:
            where = f" from {args.sender}" if args.sender else ""
            where += f" of app {args.app}" if args.app else ""
            return fail(
                "status",
                f"no record for {args.key!r}{where}: not received by the relay yet (still on the queue), refused "
                "before sending (see `mailrelay dead-letters show KEY`), or older than STATUS_RETENTION_DAYS",
                EXIT_INVALID,
            )
        if args.json:
            print(json.dumps([r.to_json() for r in found] if len(found) > 1 else found[0].to_json(), indent=2))
        else:
            print("\n\n".join(status_details(r) for r in found))
        return EXIT_OK

    return run_with_queue("status", args, body)


def lookup(stores: list[StatusStore], key: str, sender: str | None, app: str | None) -> list[StatusRecord]:
    """The records of `key`: with a sender and an app, point reads of that app's key (ids are per app); otherwise a
    query on the key across the tables, narrowed to the sender and the app given."""
    from shared.status import StatusKey

    if sender and app:
        found = [store.get(StatusKey(sender.lower(), kind, key, app)) for store in stores for kind in ("id", "msg")]
        return [r for r in found if r is not None]
    records = [r for store in stores for r in store.find(key, sender)]
    return of_app(records, app)


def of_app(records: Iterable[StatusRecord], app: str | None) -> list[StatusRecord]:
    """The records of `app` (all with None)."""
    return [r for r in records if app is None or r.key.app == app]


def status_stores(conn: Connection, app: str | None) -> list[StatusStore]:
    """Where the records are read: app NAME's own table with --app (the one table an app's credentials may read,
    shared/apps.py status_table), else every status table on the account that holds the queue, the outbox's
    `mailstatus` and each app's `mailstatus<name>`: the operator's view."""
    import sys

    from azure.core.exceptions import HttpResponseError
    from azure.data.tables import TableServiceClient

    from shared.apps import STATUS_TABLE, status_table
    from shared.cli.common import credential
    from shared.status import TableStatusStore

    if conn.connection_string:
        if "TableEndpoint=" not in conn.connection_string and "AccountName=" not in conn.connection_string:
            raise UsageError("the connection string names no Table endpoint; status records live in Table storage")
        service = TableServiceClient.from_connection_string(conn.connection_string)
    else:
        from urllib.parse import urlsplit

        assert conn.queue_url is not None
        host = urlsplit(conn.queue_url).hostname or ""
        if ".queue." not in host:
            raise UsageError("give --connection-string: the table endpoint cannot be told from this --queue-url")
        service = TableServiceClient(f"https://{host.replace('.queue.', '.table.', 1)}", credential=credential())
    if app is not None:
        return [TableStatusStore(service.get_table_client(status_table(app)))]
    try:
        names = sorted(t.name for t in service.list_tables() if t.name.lower().startswith(STATUS_TABLE))
    except HttpResponseError as e:
        # Listing tables needs a role on the account; an app's reader holds one on its own table only.
        why = getattr(e, "error_code", None) or type(e).__name__
        print(
            f"mailrelay status: cannot list the account's tables ({why}): reading {STATUS_TABLE} only; an app's "
            "records: --app NAME",
            file=sys.stderr,
        )
        names = []
    return [TableStatusStore(service.get_table_client(name)) for name in names or [STATUS_TABLE]]


def status_table(records: list[StatusRecord]) -> str:
    from shared.cli.dead_letters import shorten

    rows = [("UPDATED", "STATE", "ATTEMPTS", "APP", "SENDER", "KEY", "LAST ERROR")]
    for r in records:
        rows.append(
            (
                f"{r.updated_at:%Y-%m-%d %H:%M:%S}",
                r.state,
                str(r.attempts),
                shorten(r.key.app, 24),
                shorten(r.key.sender, 40),
                shorten(r.key.value, 40),
                shorten(r.last_error_code or "-", 40),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def status_details(record: StatusRecord) -> str:
    from shared.logs import safe

    lines = []
    for name, value in record.to_json().items():
        text = ", ".join(value) if isinstance(value, list) else str(value)
        lines.append(f"{name + ':':<17} {safe(text, 1000)}")
    return "\n".join(lines)
