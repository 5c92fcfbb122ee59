"""`mailrelay send`: build a send request from flags (or --json), check it, put it on the relay's queue."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from shared.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Connection,
    UsageError,
    add_app_arg,
    add_connection_args,
    check_declared,
    credential,
    fail,
    read_input,
    run_with_queue,
)

if TYPE_CHECKING:
    from shared.cli.common import Subparsers

# The client library is its own distribution (client/), which the relay's does not depend on: the Function
# App must not need it, and it is not on a package index yet. scripts/bootstrap installs it; a relay
# installed another way gets this instead of a traceback.
CLIENT_MISSING: Final = (
    "needs the relay's client library (graph-mail-relay-client, import name mailrelay_client), which is not "
    "installed: pip install ./client from the relay's checkout (scripts/bootstrap installs it)"
)

_FIELD_FLAGS: Final = (
    "sender",
    "to",
    "cc",
    "bcc",
    "reply_to",
    "subject",
    "text",
    "html",
    "body_file",
    "attach",
    "inline",
    "send_at",
    "header",
    "importance",
    "id",
    "no_save",
)


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "send",
        help="put a send request on the relay's queue; print its key",
        description=(
            "Build a send request from flags (or read one with --json), check it against the contract, "
            "and put it on the relay's queue, base64-encoded as the Functions host reads it. Prints the "
            "request's key: its --id, or else the queue message id. `mailrelay status KEY` and `mailrelay "
            "dead-letters show KEY` take it, and `dead-letters list` shows it. With --send-at the relay records "
            "the request `scheduled` at once (status shows it, with its notBefore) and sends it at that time. "
            "Exit 1: the request breaks the contract or is too large; 2: usage; 3: the queue could not be reached."
        ),
        epilog=(
            "example: mailrelay send --from alerts@contoso.com --to 'Ada <ada@contoso.com>' "
            "--subject 'Disk almost full' --text '97% used' --attach df.txt --header X-Alert-Id=4711"
        ),
    )
    parser.add_argument("--json", metavar="FILE", help="the whole request as JSON (- for standard input)")
    parser.add_argument(
        "--mime",
        metavar="FILE",
        type=Path,
        help=(
            "send FILE, a MIME message (.eml), as is (docs/mime.md): --from and --to/--cc/--bcc are its envelope; "
            "stored as a claim check in the app's payload container"
        ),
    )
    parser.add_argument("--from", dest="sender", metavar="MAILBOX", help="the sending mailbox")
    for flag, dest in (("--to", "to"), ("--cc", "cc"), ("--bcc", "bcc"), ("--reply-to", "reply_to")):
        parser.add_argument(
            flag,
            dest=dest,
            action="append",
            default=[],
            metavar="RECIPIENT",
            help="'a@contoso.com' or 'Name <a@contoso.com>'; repeatable",
        )
    parser.add_argument("--subject")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--text", help="a plain-text body")
    body.add_argument("--html", help="an HTML body")
    body.add_argument("--body-file", metavar="FILE", type=Path, help="the body from a file (.html/.htm: HTML)")
    parser.add_argument(
        "--attach",
        action="append",
        default=[],
        metavar="FILE",
        type=Path,
        help=(
            "attach a file (content type guessed from its name); repeatable. Files over 16 KiB are streamed to the "
            "relay's mail-payloads container and the request names them (up to 150 MB each)"
        ),
    )
    parser.add_argument(
        "--inline",
        action="append",
        default=[],
        metavar="CID=FILE",
        help="attach an image the HTML body shows as <img src=\"cid:CID\">; repeatable",
    )
    parser.add_argument(
        "--send-at",
        metavar="WHEN",
        help="send later: ISO 8601 with a UTC offset (2026-12-24T09:00:00+01:00), at most 7 days ahead; enqueued at "
        "once, and `mailrelay status KEY` shows it scheduled until then",
    )
    parser.add_argument(
        "--header", action="append", default=[], metavar="X-NAME=VALUE", help="a custom header; repeatable"
    )
    parser.add_argument("--importance", choices=("low", "normal", "high"))
    parser.add_argument("--id", metavar="KEY", help="idempotency key: one key is sent at most once")
    parser.add_argument("--no-save", action="store_true", help="do not keep a copy in Sent Items")
    add_app_arg(
        parser,
        "enqueue as app NAME, on its own queue <queue>-NAME (MAILRELAY_APPS; docs/apps.md): the relay sends only "
        "as that app's senders; default: the outbox, the default app",
    )
    add_connection_args(parser)
    parser.set_defaults(handler=run)


# What a MIME message carries itself: with --mime these flags have nothing to set.
_NOT_WITH_MIME: Final = ("reply_to", "subject", "text", "html", "body_file", "attach", "inline", "header", "importance")


def mime_request_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], bytes]:
    """(the envelope's request without its "mime", the MIME's bytes) for --mime. UsageError for what is missing,
    what --mime cannot go with, or a file that cannot be read."""
    if args.json is not None:
        raise UsageError("--mime and --json are two ways to give the message: give one")
    given = [name for name in _NOT_WITH_MIME if getattr(args, name, None) not in (None, [], False)]
    if getattr(args, "no_save", False):
        given.append("no_save")
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(f"--mime sends the MIME message as is, which carries its own {flags}: drop them")
    if args.sender is None:
        raise UsageError("missing --from (the sending mailbox; the MIME's From must name it)")
    path: Path = args.mime
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --mime {path}: {exc.strerror or exc}") from None
    request: dict[str, Any] = {"from": args.sender}
    for key, values in (("to", args.to), ("cc", args.cc), ("bcc", args.bcc)):
        if values:
            request[key] = list(values)
    if args.id is not None:
        request["id"] = args.id
    if args.send_at is not None:
        request["sendAt"] = args.send_at
    return request, data


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The send request the flags describe (not yet validated). UsageError for what flags cannot say."""
    if args.json is not None:
        given = [name for name in _FIELD_FLAGS if getattr(args, name, None) not in (None, [], False)]
        if given:
            flags = ", ".join("--" + ("from" if n == "sender" else n.replace("_", "-")) for n in given)
            raise UsageError(f"--json takes the whole request; drop {flags} or leave out --json")
        return _read_json_request(args.json)
    missing = [flag for flag, value in (("--from", args.sender), ("--subject", args.subject)) if value is None]
    if args.text is None and args.html is None and args.body_file is None:
        missing.append("--text, --html or --body-file")
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or give the whole request with --json)")
    request: dict[str, Any] = {"from": args.sender}
    for key, values in (("to", args.to), ("cc", args.cc), ("bcc", args.bcc), ("replyTo", args.reply_to)):
        if values:
            request[key] = list(values)
    request["subject"] = args.subject
    request["body"] = _body(args)
    if args.importance:
        request["importance"] = args.importance
    if args.header:
        request["headers"] = _headers(args.header)
    if args.no_save:
        request["saveToSentItems"] = False
    if args.id is not None:
        request["id"] = args.id
    if args.send_at is not None:
        request["sendAt"] = args.send_at
    return request


def files_from_args(args: argparse.Namespace) -> list[Any]:
    """The files --attach and --inline name, as the client library attaches them (streamed when large)."""
    from mailrelay_client import File

    files: list[Any] = []
    for path in getattr(args, "attach", []) or []:
        files.append(File(path))
    for item in getattr(args, "inline", []) or []:
        cid, sep, name = item.partition("=")
        if not sep or not cid or not name:
            raise UsageError(f"--inline takes CID=FILE, got {item[:60]!r}")
        files.append(File(Path(name), content_id=cid))
    for file in files:
        if not Path(file.path).is_file():
            raise UsageError(f"cannot read {file.path}: no such file")
    return files


def _read_json_request(source: str) -> dict[str, Any]:
    name = "standard input" if source == "-" else source
    try:
        raw = read_input(source)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    text = raw.decode("utf-8-sig", errors="strict") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{name} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{name} must hold one JSON object, the send request")
    return value


def _body(args: argparse.Namespace) -> dict[str, str]:
    if args.text is not None:
        return {"contentType": "text", "content": args.text}
    if args.html is not None:
        return {"contentType": "html", "content": args.html}
    path: Path = args.body_file
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read --body-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--body-file {path} is not UTF-8 text") from None
    kind = "html" if path.suffix.lower() in (".html", ".htm") else "text"
    return {"contentType": kind, "content": content}


def _headers(items: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--header takes X-NAME=VALUE, got {item.split('=')[0][:40]!r} with no '='")
        headers[name.strip()] = value
    return headers


def run(args: argparse.Namespace) -> int:
    if getattr(args, "mime", None) is not None:
        return _run_mime(args)
    try:
        request = request_from_args(args)
    except UsageError as exc:
        return fail("send", str(exc), EXIT_USAGE)
    try:
        from mailrelay_client import ContractError, QueueNotFound, RequestTooLarge, SendAtRefused, check_files
    except ModuleNotFoundError as exc:
        if exc.name != "mailrelay_client":
            raise  # the client is installed but broken: its own traceback says more
        return fail("send", CLIENT_MISSING, EXIT_UNAVAILABLE)

    # Checked before the connection is resolved: a bad request is reported even with no stack running.
    try:
        files = files_from_args(args) if args.json is None else []
        check_files(request, files)
    except UsageError as exc:
        return fail("send", str(exc), EXIT_USAGE)
    except ContractError as exc:
        for violation in exc.violations:
            print(violation, file=sys.stderr)
        return EXIT_INVALID
    except RequestTooLarge as exc:
        return fail("send", str(exc), EXIT_INVALID)

    app = args.app or "default"

    def send(conn: Connection) -> int:
        check_declared(conn, app)
        try:
            message_id = _mail_client(conn, app).send(request, files)
        except QueueNotFound as exc:
            return fail("send", str(exc), EXIT_UNAVAILABLE)
        except (RequestTooLarge, SendAtRefused) as exc:
            return fail("send", str(exc), EXIT_INVALID)
        # The request's key, the one name status and dead-letters know it by: its id, or this message id for a
        # request without one (with an id, the message id finds no status record: it is not printed alone).
        request_id = request.get("id")
        key = request_id if isinstance(request_id, str) and request_id else str(message_id)
        print(key)  # standard output: the key alone, for scripts
        sender = request.get("from")
        of_app = f" --app {app}" if app != "default" else ""
        look_up = f"mailrelay status {shlex.quote(key)} --from {shlex.quote(str(sender))}{of_app}"
        send_at = request.get("sendAt")
        if isinstance(send_at, str):
            # Validated by the contract (an offset is required): said in UTC, where the relay's records are.
            when = datetime.fromisoformat(send_at).astimezone(UTC)
            print(
                f"scheduled for {when:%Y-%m-%d %H:%M:%S} UTC (sendAt {send_at}): the relay holds it until then; "
                f"key {key}; look it up: {look_up}",
                file=sys.stderr,
            )
        else:
            print(f"look it up: {look_up}", file=sys.stderr)
        return EXIT_OK

    return run_with_queue("send", args, send)


def _run_mime(args: argparse.Namespace) -> int:
    """`mailrelay send --mime FILE`: the MIME checked as the relay checks it, stored, then the request enqueued."""
    import base64

    try:
        request, data = mime_request_from_args(args)
    except UsageError as exc:
        return fail("send", str(exc), EXIT_USAGE)
    try:
        from mailrelay_client import ContractError, QueueNotFound, RequestTooLarge, SendAtRefused, validate
    except ModuleNotFoundError as exc:
        if exc.name != "mailrelay_client":
            raise
        return fail("send", CLIENT_MISSING, EXIT_UNAVAILABLE)
    try:  # before the connection: a bad MIME is reported with no stack running
        validate({**request, "mime": {"contentBytes": base64.b64encode(data).decode("ascii")}})
    except ContractError as exc:
        for violation in exc.violations:
            print(violation, file=sys.stderr)
        return EXIT_INVALID
    app = args.app or "default"

    def send(conn: Connection) -> int:
        check_declared(conn, app)
        envelope = {k: request[k] for k in ("to", "cc", "bcc") if k in request}
        try:
            message_id = _mail_client(conn, app).send_mime(
                data, request["from"], **envelope, id=request.get("id"), send_at=request.get("sendAt")
            )
        except QueueNotFound as exc:
            return fail("send", str(exc), EXIT_UNAVAILABLE)
        except (ContractError, RequestTooLarge, SendAtRefused) as exc:
            return fail("send", str(exc), EXIT_INVALID)
        request_id = request.get("id")
        key = request_id if isinstance(request_id, str) and request_id else str(message_id)
        print(key)
        of_app = f" --app {app}" if app != "default" else ""
        look_up = f"mailrelay status {shlex.quote(key)} --from {shlex.quote(str(request['from']))}{of_app}"
        print(f"look it up: {look_up}", file=sys.stderr)
        return EXIT_OK

    return run_with_queue("send", args, send)


def _mail_client(conn: Connection, app: str = "default") -> Any:
    """The client on `app`'s queue: the outbox the connection names, or `<outbox>-<app>` beside it."""
    from mailrelay_client import MailClient

    if conn.connection_string:
        return MailClient.from_connection_string(conn.connection_string, conn.queue_name, app=app)
    assert conn.queue_url is not None
    return MailClient(conn.queue_url, credential(), app=app)
