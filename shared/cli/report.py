"""`mailrelay report`: the delivery report, per app and sender mailbox, from the status records (shared/report.py)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.cli.common import EXIT_OK, EXIT_USAGE, Connection, UsageError, add_app_arg, add_connection_args, fail
from shared.cli.status import parse_span, status_stores

if TYPE_CHECKING:
    from shared.cli.common import Subparsers
    from shared.report import Report

DEFAULT_SPAN = "24h"


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="the delivery report: per app and sender, requests, sent, dead-lettered by code, retried, paced, "
        "unknown, and enqueue-to-sent p50/p95",
        description=(
            "Reads the status records changed in the last SPAN (the records `mailrelay status --since SPAN` "
            "lists; kept STATUS_RETENTION_DAYS) and counts, per app and sender mailbox: requests, sent, "
            "dead-lettered by code, retried (more than one try, or waiting to retry), paced (held by the mailbox's "
            "or the app's pace), unknown (an outcome that had to be looked up), and the time from enqueue to "
            "Graph's 202 (p50, p95). A request still in flight counts where it stands."
        ),
    )
    parser.add_argument(
        "--since", metavar="SPAN", default=DEFAULT_SPAN, help=f"the window: 30m, 24h, 7d (default {DEFAULT_SPAN})"
    )
    parser.add_argument("--json", action="store_true", help="as JSON")
    add_app_arg(parser, "only app NAME's requests, read from its own table; default (the outbox's app) is a name too")
    add_connection_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from shared.cli.common import check_declared, run_with_queue

    try:
        span = parse_span(args.since)
    except UsageError as exc:
        return fail("report", str(exc), EXIT_USAGE)

    def body(conn: Connection) -> int:
        from shared.report import build

        if args.app:
            check_declared(conn, args.app)
        until = datetime.now(UTC)
        since = until - span
        records = [r for store in status_stores(conn, args.app) for r in store.since(since)]
        made = build(records, since, until, args.app)
        print(json.dumps(made.to_json(), indent=2) if args.json else report_text(made))
        return EXIT_OK

    return run_with_queue("report", args, body)


def report_text(report: Report) -> str:
    from shared.cli.dead_letters import shorten
    from shared.report import duration

    which = f" of app {report.app}" if report.app else ""
    head = f"requests{which} changed from {report.since:%Y-%m-%d %H:%M:%S} to {report.until:%Y-%m-%d %H:%M:%S} UTC"
    if not report.rows:
        return f"no requests changed since {report.since:%Y-%m-%d %H:%M:%S} UTC{which}"
    rows: list[tuple[str, ...]] = [
        ("APP", "SENDER", "REQUESTS", "SENT", "DEAD-LETTERED", "RETRIED", "PACED", "UNKNOWN", "IN FLIGHT", "P50", "P95")
    ]
    for f in (*report.rows, report.total):
        in_flight = f.requests - f.sent - f.dead_lettered_total
        rows.append(
            (
                shorten(f.app or "all", 24),
                shorten(f.sender or "", 40),
                *(str(n) for n in (f.requests, f.sent, f.dead_lettered_total, f.retried, f.paced, f.unknown)),
                str(in_flight),
                duration(f.latency.p50),
                duration(f.latency.p95),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    dead = [(f, code, n) for f in report.rows for code, n in f.dead_lettered.items()]
    if dead:
        lines.append("")
        lines.append("dead-lettered by code:")
        lines += [f"  {shorten(f.app or '', 24)}  {shorten(f.sender or '', 40)}  {code} {n}" for f, code, n in dead]
    untimed = report.total.latency.from_created_at
    if untimed:
        lines.append("")
        lines.append(
            f"{untimed} sent request{' has' if untimed == 1 else 's have'} no enqueuedAt (written before the relay "
            "kept it): timed from when the relay first saw it (createdAt), so the queue's wait before that is missing"
        )
    lines.append("")
    lines.append(
        "P50/P95: enqueue to Graph's 202, sent requests only; IN FLIGHT: scheduled, queued, sending, "
        "retrying or unknown now"
    )
    return "\n".join(lines)
