"""`mailrelay dead-letters list|show|requeue`: the dead-letter queue (<queue>-poison), for people."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    Connection,
    add_connection_args,
    credential,
    fail,
    run_with_queue,
)

if TYPE_CHECKING:
    from shared.cli.common import Subparsers
    from shared.deadletters import DeadLetter, DeadLetterQueue, Requeued


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "dead-letters",
        help="list, show and requeue the dead-letter queue (<queue>-poison)",
        description=(
            "The dead-letter queue holds the relay's envelopes (request, error code, message, hint) and raw "
            "messages the Functions host moved there. Fix the cause (the hint says how), then requeue. Each is "
            "named by its request's key, the one `mailrelay send` printed and `mailrelay status` takes: the "
            "request's id, else the id of the queue message that carried it."
        ),
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    listing = commands.add_parser(
        "list",
        help="the dead letters, oldest first",
        description=(
            "Lists the oldest 32 dead letters with Storage's peek, which changes nothing. --all reads beyond "
            "32: Storage has no paged peek, so it receives the messages in pages of 32 (hiding each for up to "
            "a minute and adding one to its dequeue count on the poison queue, which nothing consumes) and "
            "makes them all visible again when done."
        ),
    )
    listing.add_argument("--all", action="store_true", help="every dead letter, beyond peek's 32 (see above)")
    listing.add_argument("--json", action="store_true", help="JSON, with each request in full")
    _add_retries_flag(listing)
    add_connection_args(listing)
    listing.set_defaults(handler=run_list)

    show = commands.add_parser("show", help="one dead letter in full: error, hint, and the request")
    show.add_argument(
        "id",
        metavar="KEY",
        help="the key `list` shows and `mailrelay send` printed (or the dead letter's own id, from list --json)",
    )
    show.add_argument("--json", action="store_true", help="as JSON")
    _add_retries_flag(show)
    add_connection_args(show)
    show.set_defaults(handler=run_show)

    requeue = commands.add_parser(
        "requeue",
        help="put requests back on the queue after the cause is fixed",
        description=(
            "Puts the plain request (envelope stripped, so the relay's attempt count starts again) back on its "
            "app's queue (<queue>-<app>; the outbox for the default app), then deletes the dead letter: enqueue "
            "before delete, so nothing is lost. A dead letter that "
            "holds no valid request stays where it is, and the reason is printed. Exit 1 if any stayed."
        ),
    )
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "id", metavar="KEY", nargs="?", help="the key `list` shows (or the dead letter's own id, from list --json)"
    )
    which.add_argument("--all", action="store_true", help="every dead letter that holds a valid request")
    _add_retries_flag(requeue)
    add_connection_args(requeue)
    requeue.set_defaults(handler=run_requeue)


def shorten(text: str, width: int) -> str:
    """One table cell: on one line, controls escaped (an app wrote the sender: no terminal escapes), cut."""
    from shared.logs import safe

    text = safe(" ".join(text.split()), limit=10_000)
    return text if len(text) <= width else text[: width - 1] + "…"


def _json(value: Any) -> str:
    """JSON for the terminal: characters as they are, unless a lone surrogate forces ASCII escapes (it
    cannot be printed as UTF-8); an app's text can never stop the listing."""
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False)
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(value, indent=2, ensure_ascii=True)


def dead_letter_table(letters: Sequence[DeadLetter], hint_width: int = 60) -> str:
    """The human list: one line per dead letter, no request content beyond the sender. Each is named by its key,
    the one `mailrelay send` printed (the poison queue's own message id is another, which nobody was shown)."""
    rows = [("KEY", "FAILED AT", "APP", "CODE", "SENDER", "HINT")]
    for letter in letters:
        rows.append(
            (
                shorten(letter.key, 128),
                shorten(letter.failed_at or "-", 32),
                shorten(letter.app, 24),
                shorten(letter.code, 48),
                shorten(letter.sender or "-", 64),
                shorten(letter.hint, hint_width),
            )
        )
    last = len(rows[0]) - 1  # the hint, unpadded
    widths = [max(len(row[i]) for row in rows) for i in range(last)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:last])) + "  " + row[last] for row in rows
    )


def dead_letter_details(letter: DeadLetter) -> str:
    from shared.logs import safe

    lines = [
        f"key:          {safe(letter.key)}",
        f"id:           {safe(letter.id)} (the dead letter's own, on the poison queue)",
        f"app:          {safe(letter.app)}",
        f"form:         {letter.form}"
        + (" (the relay's envelope)" if letter.form == "envelope" else " (moved by the host as it was)"),
        f"code:         {safe(letter.code)}",
        # A contract error lists one violation a line: keep those lines, escape anything else.
        "message:      " + "\n              ".join(safe(line, limit=2_000) for line in letter.message.splitlines()),
        f"hint:         {safe(letter.hint, limit=10_000)}",
        f"attempts:     {letter.attempts if letter.attempts is not None else 'unknown'}",
        f"failed at:    {safe(letter.failed_at or '-')}",
        f"sender:       {safe(letter.sender or '-')}",
    ]
    for key, value in letter.extra.items():
        lines.append(f"{key + ':':<13} {safe(json.dumps(value) if not isinstance(value, str) else value, 1000)}")
    try:
        letter.requeue_payload()
        lines.append("requeue:      possible (`mailrelay dead-letters requeue " + safe(letter.key) + "`)")
    except ValueError as exc:
        lines.append(f"requeue:      not possible: {safe(str(exc), 2000)}")
    lines.append("request:")
    request = letter.request
    shown = _json(request) if not isinstance(request, str) else safe(request, limit=100_000)
    lines.extend("  " + line for line in shown.splitlines())
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    from shared.deadletters import PEEK_LIMIT

    def run(conn: Connection) -> int:
        queue = _dead_letter_queue(conn, args.retries, args.app)
        if not queue.main_queue_exists():
            # A typo in --queue would otherwise read as "no dead letters": say the queue is not there.
            return fail(
                "dead-letters list",
                f"queue {conn.queue_name!r} does not exist on this storage account "
                f"(from {conn.source}); check --queue or MAIL_QUEUE_NAME",
                EXIT_USAGE,
            )
        letters = queue.scan() if args.all else queue.peek()
        if args.json:
            print(_json([letter.to_json() for letter in letters]))
        elif not letters:
            print(f"no dead letters in {_poison_name(conn, args.retries, args.app)}")
        else:
            print(dead_letter_table(letters))
        if not args.all and len(letters) == PEEK_LIMIT:
            print(f"(the oldest {PEEK_LIMIT}; --all lists every one)", file=sys.stderr)
        return EXIT_OK

    return run_with_queue("dead-letters list", args, run)


def run_show(args: argparse.Namespace) -> int:
    from shared.deadletters import DeadLetterNotFound

    def run(conn: Connection) -> int:
        try:
            letter = _dead_letter_queue(conn, args.retries, args.app).get(args.id)
        except DeadLetterNotFound as exc:
            return fail("dead-letters show", str(exc), EXIT_INVALID)
        print(_json(letter.to_json()) if args.json else dead_letter_details(letter))
        return EXIT_OK

    return run_with_queue("dead-letters show", args, run)


def run_requeue(args: argparse.Namespace) -> int:
    from shared.deadletters import DeadLetterNotFound, NotRequeueable, Requeued

    def run(conn: Connection) -> int:
        queue = _dead_letter_queue(conn, args.retries, args.app)
        if not args.all:
            try:
                done = queue.requeue(args.id)
            except (DeadLetterNotFound, NotRequeueable) as exc:
                return fail("dead-letters requeue", str(exc), EXIT_INVALID)
            print(_requeued(conn, done))
            return EXIT_OK
        results = queue.requeue_all()
        requeued = [r for r in results if isinstance(r, Requeued)]
        refused = [r for r in results if isinstance(r, NotRequeueable)]
        for r in requeued:
            print(_requeued(conn, r))
        for reason in refused:
            print(f"not requeued: {reason}", file=sys.stderr)
        left_in = _poison_name(conn, args.retries, args.app)
        print(f"{len(requeued)} requeued, {len(refused)} left in {left_in}", file=sys.stderr)
        return EXIT_INVALID if refused else EXIT_OK

    return run_with_queue("dead-letters requeue", args, run)


def _requeued(conn: Connection, done: Requeued) -> str:
    """One requeue, by the key `list` showed; a request without an id has a new key now (its new message's id)."""
    from shared.logs import safe

    line = f"requeued {safe(done.key)} on {_target(conn, done)}"
    return line if done.new_key == done.key else f"{line} as {safe(done.new_key)} (its key from now on)"


def _target(conn: Connection, done: Requeued) -> str:
    """The queue a requeued letter went back to: its app's."""
    from shared.apps import app_queue

    return app_queue(conn.queue_name, done.app)


def _add_retries_flag(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--retries",
        action="store_true",
        help="the relay's retry queue's dead letters (<queue>-retry-poison): retries the host gave up on after "
        "maxDequeueCount failed deliveries (storage unreachable, say); requeue puts their requests back on their app's "
        "queue",
    )
    which.add_argument(
        "--app",
        metavar="NAME",
        help="a declared app's own poison queue (<queue>-NAME-poison): what the host moved from the app's queue "
        "(not base64, or failing every try); every letter there is that app's, and requeue puts it back on its queue",
    )


def _poison_name(conn: Connection, retries: bool, app: str | None = None) -> str:
    from shared.apps import app_queue

    if app:
        return f"{app_queue(conn.queue_name, app)}-poison"
    return f"{conn.queue_name}-retry-poison" if retries else conn.poison_queue_name


def _dead_letter_queue(conn: Connection, retries: bool = False, app: str | None = None) -> DeadLetterQueue:
    from shared.apps import is_declarable
    from shared.deadletters import open_queues

    if app is not None and not is_declarable(app):
        raise ValueError(f"--app {app!r} is no app's name (a declared app: lower-case letters, digits, hyphens)")
    return open_queues(
        conn.queue_name,
        connection_string=conn.connection_string,
        queue_url=conn.queue_url,
        credential=credential() if conn.queue_url else None,
        poison_suffix="-retry-poison" if retries else "-poison",
        app=app,
    )
