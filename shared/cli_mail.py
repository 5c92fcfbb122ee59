"""`mailrelay send`, `mailrelay dead-letters` and `mailrelay local`: the commands that use the queues.

Registered in shared/cli.py's SUBCOMMANDS. Importing this module costs argparse and the standard
library only; the Azure SDK, pydantic and devstack load inside the commands.

Every command finds the storage account the same way (`resolve_connection`), first match wins:
`--connection-string`, `--queue-url` (signs in with DefaultAzureCredential), the environment's
`AzureWebJobsStorage`, then the state file that `mailrelay local` writes (`.mailrelay/local.json`).
The queue is `--queue`, else `MAIL_QUEUE_NAME`, else the state file's, else `mail-outbox`.
"""

from __future__ import annotations

import argparse
import base64
import json
import mimetypes
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from shared.cli import EXIT_INVALID, EXIT_OK, EXIT_USAGE, _read_input
from shared.settings import DEFAULT_QUEUE_NAME

if TYPE_CHECKING:
    from shared.cli import Subparsers
    from shared.deadletters import DeadLetter, DeadLetterQueue

EXIT_UNAVAILABLE: Final = 3  # the queue could not be reached, or refused the operation

DEFAULT_QUEUE: Final = DEFAULT_QUEUE_NAME
DEFAULT_STATE_FILE: Final = Path(".mailrelay") / "local.json"


class UsageError(Exception):
    """A command line that cannot work; the message says what to pass instead."""


# --- Where the queue is --------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    queue_name: str
    connection_string: str | None = None
    queue_url: str | None = None  # the main queue's URL (identity-based access)
    source: str = ""  # where it came from, for messages: never the connection string itself

    @property
    def poison_queue_name(self) -> str:
        return f"{self.queue_name}-poison"


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the queue is (first match wins)")
    group.add_argument(
        "--connection-string",
        metavar="CONN",
        help="storage connection string (default: env AzureWebJobsStorage, then the state file)",
    )
    group.add_argument(
        "--queue-url",
        metavar="URL",
        help="the queue's (or the queue service's) URL; signs in with DefaultAzureCredential (az login, "
        "managed identity, ...)",
    )
    group.add_argument(
        "--queue", metavar="NAME", help="queue name (default: env MAIL_QUEUE_NAME, the state file's, mail-outbox)"
    )
    group.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        default=None,
        help=f"the state file `mailrelay local` writes (default: {DEFAULT_STATE_FILE})",
    )


def resolve_connection(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Connection:
    """The storage account and queue a command uses; UsageError when nothing names one."""
    env = os.environ if env is None else env
    queue = args.queue or env.get("MAIL_QUEUE_NAME", "").strip() or None
    if args.connection_string and args.queue_url:
        raise UsageError("give --connection-string or --queue-url, not both")
    if args.connection_string:
        return Connection(
            queue or DEFAULT_QUEUE, connection_string=args.connection_string, source="--connection-string"
        )
    if args.queue_url:
        return _from_queue_url(args.queue_url, queue)
    if env.get("AzureWebJobsStorage", "").strip():
        return Connection(
            queue or DEFAULT_QUEUE, connection_string=env["AzureWebJobsStorage"].strip(), source="AzureWebJobsStorage"
        )
    state_file: Path = args.state_file or DEFAULT_STATE_FILE
    state = read_state(state_file)
    if state is None:
        raise UsageError(
            "no storage account given: pass --connection-string or --queue-url, set AzureWebJobsStorage, or "
            f"start the local stack with `mailrelay local` (it writes {state_file})"
        )
    conn = state.get("storageConnectionString")
    if not isinstance(conn, str) or not conn:
        raise UsageError(f"the state file {state_file} has no storageConnectionString; restart `mailrelay local`")
    state_queue = state.get("queueName") if isinstance(state.get("queueName"), str) else None
    return Connection(queue or state_queue or DEFAULT_QUEUE, connection_string=conn, source=str(state_file))


def _from_queue_url(url: str, queue: str | None) -> Connection:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise UsageError(f"--queue-url must be an https:// URL, got {parts.scheme or 'no scheme'}")
    path = parts.path.strip("/")
    if not path:  # the queue service's URL: the queue name comes from --queue
        name = queue or DEFAULT_QUEUE
        return Connection(name, queue_url=urlunsplit((parts.scheme, parts.netloc, "/" + name, "", "")),
                          source="--queue-url")
    # Azurite's URLs carry the account as the first path segment: the queue is the last one.
    name = path.rsplit("/", 1)[-1]
    if queue and queue != name:
        raise UsageError(f"--queue-url names queue {name!r} but --queue says {queue!r}")
    # A SAS query string is a secret: it stays in the URL the SDK gets, and out of every message.
    return Connection(name, queue_url=urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, "")),
                      source="--queue-url")


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the state file {path}: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"the state file {path} is not a JSON object; delete it and restart `mailrelay local`")
    return value


def _credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _mail_client(conn: Connection) -> Any:
    from shared.client import MailClient

    if conn.connection_string:
        return MailClient.from_connection_string(conn.connection_string, conn.queue_name)
    assert conn.queue_url is not None
    return MailClient(conn.queue_url, _credential())


def _dead_letter_queue(conn: Connection) -> DeadLetterQueue:
    from shared.deadletters import open_queues

    return open_queues(
        conn.queue_name,
        connection_string=conn.connection_string,
        queue_url=conn.queue_url,
        credential=_credential() if conn.queue_url else None,
    )


def _storage_error(exc: BaseException, conn: Connection) -> str | None:
    """A one-line description of an Azure SDK error, or None if `exc` is not one.

    Built from the error's type, status and code and the first line of the service's message: never
    the connection string, a SAS token, or the request.
    """
    from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

    if not isinstance(exc, AzureError):
        return None
    where = f"queue {conn.queue_name!r} (storage from {conn.source})"
    if isinstance(exc, ClientAuthenticationError):
        return f"the storage account refused the credential for {where}: {_first_line(exc.message)}"
    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "error_code", None) or f"HTTP {exc.status_code}"
        return f"{code} on {where}: {_first_line(exc.message)}"
    return f"cannot reach {where}: {type(exc).__name__}"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def _fail(command: str, message: str, code: int) -> int:
    print(f"mailrelay {command}: {message}", file=sys.stderr)
    return code


def _run_with_queue(command: str, args: argparse.Namespace, body: Any) -> int:
    """Resolve the connection, run `body(conn)`, and turn the common failures into exit codes."""
    from shared.client import QueueNotFound

    try:
        conn = resolve_connection(args)
    except UsageError as exc:
        return _fail(command, str(exc), EXIT_USAGE)
    try:
        result: int = body(conn)
        return result
    except UsageError as exc:
        return _fail(command, str(exc), EXIT_USAGE)
    except QueueNotFound as exc:
        return _fail(command, str(exc), EXIT_UNAVAILABLE)
    except ValueError as exc:
        if type(exc) is ValueError and "connection string" in str(exc).lower():
            # The SDK's parse error; say so without echoing the string (it holds the account key).
            return _fail(command, f"the connection string from {conn.source} is malformed", EXIT_USAGE)
        raise
    except Exception as exc:
        described = _storage_error(exc, conn)
        if described is None:
            raise
        return _fail(command, described, EXIT_UNAVAILABLE)


# --- send ----------------------------------------------------------------------------------------

_FIELD_FLAGS: Final = (
    "sender", "to", "cc", "bcc", "reply_to", "subject", "text", "html", "body_file", "attach", "header",
    "importance", "id", "no_save",
)


def _add_send(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "send",
        help="put a send request on the relay's queue; print the queue message id",
        description=(
            "Build a send request from flags (or read one with --json), check it against the contract, "
            "and put it on the relay's queue, base64-encoded as the Functions host reads it. Prints the "
            "queue message id. Exit 1: the request breaks the contract or is too large; 2: usage; "
            "3: the queue could not be reached."
        ),
        epilog=(
            "example: mailrelay send --from alerts@contoso.com --to 'Ada <ada@contoso.com>' "
            "--subject 'Disk almost full' --text '97%% used' --attach df.txt --header X-Alert-Id=4711"
        ),
    )
    parser.add_argument("--json", metavar="FILE", help="the whole request as JSON (- for standard input)")
    parser.add_argument("--from", dest="sender", metavar="MAILBOX", help="the sending mailbox")
    for flag, dest in (("--to", "to"), ("--cc", "cc"), ("--bcc", "bcc"), ("--reply-to", "reply_to")):
        parser.add_argument(
            flag, dest=dest, action="append", default=[], metavar="RECIPIENT",
            help="'a@contoso.com' or 'Name <a@contoso.com>'; repeatable",
        )
    parser.add_argument("--subject")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--text", help="a plain-text body")
    body.add_argument("--html", help="an HTML body")
    body.add_argument("--body-file", metavar="FILE", type=Path, help="the body from a file (.html/.htm: HTML)")
    parser.add_argument(
        "--attach", action="append", default=[], metavar="FILE", type=Path,
        help="attach a file (content type guessed from its name); repeatable",
    )
    parser.add_argument(
        "--header", action="append", default=[], metavar="X-NAME=VALUE", help="a custom header; repeatable"
    )
    parser.add_argument("--importance", choices=("low", "normal", "high"))
    parser.add_argument("--id", metavar="KEY", help="idempotency key: one key is sent at most once")
    parser.add_argument("--no-save", action="store_true", help="do not keep a copy in Sent Items")
    _add_connection_args(parser)
    parser.set_defaults(handler=_run_send)


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
    if args.attach:
        request["attachments"] = [_attachment(path) for path in args.attach]
    if args.header:
        request["headers"] = _headers(args.header)
    if args.no_save:
        request["saveToSentItems"] = False
    if args.id is not None:
        request["id"] = args.id
    return request


def _read_json_request(source: str) -> dict[str, Any]:
    name = "standard input" if source == "-" else source
    try:
        raw = _read_input(source)
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


def _attachment(path: Path) -> dict[str, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read --attach {path}: {exc.strerror or exc}") from None
    content_type, _encoding = mimetypes.guess_type(path.name)
    return {
        "name": path.name,
        "contentType": content_type or "application/octet-stream",
        "contentBytes": base64.b64encode(data).decode("ascii"),
    }


def _headers(items: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--header takes X-NAME=VALUE, got {item.split('=')[0][:40]!r} with no '='")
        headers[name.strip()] = value
    return headers


def _run_send(args: argparse.Namespace) -> int:
    try:
        request = request_from_args(args)
    except UsageError as exc:
        return _fail("send", str(exc), EXIT_USAGE)
    from shared.client import RequestTooLarge, encode_request
    from shared.contract import ContractError

    # Checked before the connection is resolved: a bad request is reported even with no stack running.
    try:
        encode_request(request)
    except ContractError as exc:
        for violation in exc.violations:
            print(violation, file=sys.stderr)
        return EXIT_INVALID
    except RequestTooLarge as exc:
        return _fail("send", str(exc), EXIT_INVALID)

    def send(conn: Connection) -> int:
        print(_mail_client(conn).send(request))
        return EXIT_OK

    return _run_with_queue("send", args, send)


# --- dead-letters --------------------------------------------------------------------------------


def _add_dead_letters(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "dead-letters",
        help="list, show and requeue the dead-letter queue (<queue>-poison)",
        description=(
            "The dead-letter queue holds the relay's envelopes (request, error code, message, hint) and raw "
            "messages the Functions host moved there. Fix the cause (the hint says how), then requeue."
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
    _add_connection_args(listing)
    listing.set_defaults(handler=_run_list)

    show = commands.add_parser("show", help="one dead letter in full: error, hint, and the request")
    show.add_argument("id", metavar="ID", help="the dead letter's message id (from list)")
    show.add_argument("--json", action="store_true", help="as JSON")
    _add_connection_args(show)
    show.set_defaults(handler=_run_show)

    requeue = commands.add_parser(
        "requeue",
        help="put requests back on the queue after the cause is fixed",
        description=(
            "Puts the plain request (envelope stripped, so the relay's attempt count starts again) on the main "
            "queue, then deletes the dead letter: enqueue before delete, so nothing is lost. A dead letter that "
            "holds no valid request stays where it is, and the reason is printed. Exit 1 if any stayed."
        ),
    )
    which = requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("id", metavar="ID", nargs="?", help="the dead letter's message id")
    which.add_argument("--all", action="store_true", help="every dead letter that holds a valid request")
    _add_connection_args(requeue)
    requeue.set_defaults(handler=_run_requeue)


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def dead_letter_table(letters: Sequence[DeadLetter], hint_width: int = 60) -> str:
    """The human list: one line per dead letter, no request content beyond the sender."""
    rows = [("ID", "FAILED AT", "CODE", "SENDER", "HINT")]
    for letter in letters:
        rows.append(
            (letter.id, letter.failed_at or "-", letter.code, letter.sender or "-", shorten(letter.hint, hint_width))
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4] for row in rows
    )


def dead_letter_details(letter: DeadLetter) -> str:
    lines = [
        f"id:           {letter.id}",
        f"form:         {letter.form}"
        + (" (the relay's envelope)" if letter.form == "envelope" else " (moved by the host as it was)"),
        f"code:         {letter.code}",
        f"message:      {letter.message}",
        f"hint:         {letter.hint}",
        f"attempts:     {letter.attempts if letter.attempts is not None else 'unknown'}",
        f"failed at:    {letter.failed_at or '-'}",
        f"sender:       {letter.sender or '-'}",
    ]
    for key, value in letter.extra.items():
        lines.append(f"{key + ':':<13} {json.dumps(value) if not isinstance(value, str) else value}")
    try:
        letter.requeue_payload()
        lines.append("requeue:      possible (`mailrelay dead-letters requeue " + letter.id + "`)")
    except ValueError as exc:
        lines.append(f"requeue:      not possible: {exc}")
    lines.append("request:")
    request = letter.request
    shown = json.dumps(request, indent=2, ensure_ascii=False) if not isinstance(request, str) else request
    lines.extend("  " + line for line in shown.splitlines())
    return "\n".join(lines)


def _run_list(args: argparse.Namespace) -> int:
    from shared.deadletters import PEEK_LIMIT

    def run(conn: Connection) -> int:
        queue = _dead_letter_queue(conn)
        letters = queue.scan() if args.all else queue.peek()
        if args.json:
            print(json.dumps([letter.to_json() for letter in letters], indent=2, ensure_ascii=False))
        elif not letters:
            print(f"no dead letters in {conn.poison_queue_name}")
        else:
            print(dead_letter_table(letters))
        if not args.all and len(letters) == PEEK_LIMIT:
            print(f"(the oldest {PEEK_LIMIT}; --all lists every one)", file=sys.stderr)
        return EXIT_OK

    return _run_with_queue("dead-letters list", args, run)


def _run_show(args: argparse.Namespace) -> int:
    from shared.deadletters import DeadLetterNotFound

    def run(conn: Connection) -> int:
        try:
            letter = _dead_letter_queue(conn).get(args.id)
        except DeadLetterNotFound as exc:
            return _fail("dead-letters show", str(exc), EXIT_INVALID)
        print(json.dumps(letter.to_json(), indent=2, ensure_ascii=False) if args.json else dead_letter_details(letter))
        return EXIT_OK

    return _run_with_queue("dead-letters show", args, run)


def _run_requeue(args: argparse.Namespace) -> int:
    from shared.deadletters import DeadLetterNotFound, NotRequeueable, Requeued

    def run(conn: Connection) -> int:
        queue = _dead_letter_queue(conn)
        if not args.all:
            try:
                done = queue.requeue(args.id)
            except (DeadLetterNotFound, NotRequeueable) as exc:
                return _fail("dead-letters requeue", str(exc), EXIT_INVALID)
            print(f"requeued {done.dead_letter_id} as {done.message_id} on {conn.queue_name}")
            return EXIT_OK
        results = queue.requeue_all()
        requeued = [r for r in results if isinstance(r, Requeued)]
        refused = [r for r in results if isinstance(r, NotRequeueable)]
        for r in requeued:
            print(f"requeued {r.dead_letter_id} as {r.message_id} on {conn.queue_name}")
        for reason in refused:
            print(f"not requeued: {reason}", file=sys.stderr)
        print(f"{len(requeued)} requeued, {len(refused)} left in {conn.poison_queue_name}", file=sys.stderr)
        return EXIT_INVALID if refused else EXIT_OK

    return _run_with_queue("dead-letters requeue", args, run)


# --- local ---------------------------------------------------------------------------------------


def _add_local(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "local",
        help="run the relay locally: Azurite, the Entra/Graph/Key Vault emulator, and the local host",
        description=(
            "Starts the local stack from a checkout of the repository (devstack/ is never deployed): Azurite, "
            "the HTTPS emulator of Entra ID, Graph and Key Vault, and the local stand-in for the Functions host "
            "running function_app.py. Writes the state file that the other commands read, prints the endpoints, "
            "and runs until Ctrl-C or SIGTERM, then stops all three."
        ),
        epilog="example: mailrelay local --allowed-senders alerts@contoso.com,hr@contoso.com --mailbox hr@contoso.com",
    )
    parser.add_argument(
        "--allowed-senders", action="append", default=[], metavar="ADDR[,ADDR]",
        help="the relay's allow-list (default alerts@contoso.com); repeatable",
    )
    parser.add_argument(
        "--exchange-scope", action="append", default=[], metavar="ADDR[,ADDR]",
        help="mailboxes inside the app's Exchange scope (default: the allowed senders not given to --mailbox)",
    )
    parser.add_argument(
        "--mailbox", action="append", default=[], metavar="ADDR[,ADDR]",
        help="mailboxes that exist but are outside the Exchange scope; repeatable",
    )
    parser.add_argument("--queue", metavar="NAME", default=DEFAULT_QUEUE, help="queue name (default mail-outbox)")
    parser.add_argument(
        "--secret-expires-in", metavar="DAYS", type=float, default=365.0,
        help="the emulated client secret's exp, in days from now (default 365); e.g. 10 to see "
        "`mailrelay expiry check` warn",
    )
    parser.add_argument(
        "--state-file", metavar="PATH", type=Path, default=DEFAULT_STATE_FILE,
        help=f"where to write the endpoints for the other commands (default {DEFAULT_STATE_FILE})",
    )
    parser.set_defaults(handler=_run_local)


def split_addresses(values: Sequence[str]) -> list[str]:
    return [a.strip() for value in values for a in value.split(",") if a.strip()]


def _import_devstack() -> Any:
    """devstack.stack from the checkout this `shared` package lives in; None when there is none."""
    import importlib

    try:
        return importlib.import_module("devstack.stack")
    except ImportError:
        pass
    # An editable install puts only `shared` on the path; the checkout's root holds devstack beside it.
    root = Path(__file__).resolve().parent.parent
    if not (root / "devstack" / "stack.py").is_file():
        return None
    sys.path.insert(0, str(root))
    return importlib.import_module("devstack.stack")


def _run_local(args: argparse.Namespace) -> int:
    stack_module = _import_devstack()
    if stack_module is None:
        return _fail(
            "local",
            "the local stack runs only from a checkout of the repository (devstack/ is never deployed or "
            "installed): clone it and run `scripts/demo` or `.venv/bin/mailrelay local` there",
            EXIT_USAGE,
        )
    allowed = split_addresses(args.allowed_senders) or ["alerts@contoso.com"]
    outside = split_addresses(args.mailbox)
    # By default the allowed senders are inside the Exchange scope, except those named by --mailbox.
    outside_lower = {m.lower() for m in outside}
    scope = split_addresses(args.exchange_scope) or [a for a in allowed if a.lower() not in outside_lower]
    result: int = stack_module.run_foreground(
        allowed_senders=allowed, exchange_scope=scope, mailboxes=outside,
        queue_name=args.queue, state_file=args.state_file, secret_expires_in_days=args.secret_expires_in,
    )
    return result


SUBCOMMANDS: Final = (_add_send, _add_dead_letters, _add_local)
