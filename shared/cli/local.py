"""`mailrelay local`: run the local stack (devstack/, from a checkout of the repository) in the foreground."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.cli.common import DEFAULT_QUEUE, DEFAULT_STATE_FILE, EXIT_USAGE, default_state_file, fail
from shared.settings import CREDENTIAL_MODES

if TYPE_CHECKING:
    from shared.cli.common import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "local",
        help="run the relay locally: Azurite, the Entra/Graph/Key Vault emulator, and the local host",
        description=(
            "Starts the local stack from a checkout of the repository (devstack/ is never deployed): Azurite, "
            "the HTTPS emulator of Entra ID, Graph and Key Vault, and the local stand-in for the Functions host "
            "running function_app.py. Writes the state file that the other commands read, prints the endpoints, "
            "and runs until Ctrl-C or SIGTERM, then stops all three."
        ),
        epilog=(
            "examples: mailrelay local --allowed-senders alerts@contoso.com,hr@contoso.com --mailbox hr@contoso.com; "
            "mailrelay local --app billing=billing@contoso.com --app hr=hr-noreply@contoso.com; "
            "mailrelay local --smtp 2587 --app printers=scans@contoso.com"
        ),
    )
    parser.add_argument(
        "--allowed-senders",
        action="append",
        default=[],
        metavar="ADDR[,ADDR]",
        help="the relay's allow-list (default alerts@contoso.com); repeatable",
    )
    parser.add_argument(
        "--exchange-scope",
        action="append",
        default=[],
        metavar="ADDR[,ADDR]",
        help="mailboxes inside the app's Exchange scope (default: the allowed senders not given to --mailbox)",
    )
    parser.add_argument(
        "--mailbox",
        action="append",
        default=[],
        metavar="ADDR[,ADDR]",
        help="mailboxes that exist but are outside the Exchange scope; repeatable",
    )
    parser.add_argument("--queue", metavar="NAME", default=DEFAULT_QUEUE, help="queue name (default mail-outbox)")
    parser.add_argument(
        "--app",
        dest="apps",
        action="append",
        default=[],
        metavar="NAME=SENDER[,SENDER]",
        help="declare an app (MAILRELAY_APPS; docs/apps.md): its own queue <queue>-NAME, sending only as these "
        "senders, which join the allow-list and the Exchange scope; repeatable. `mailrelay send --app NAME` "
        "enqueues on it. None: the outbox is the one app, as before",
    )
    parser.add_argument(
        "--credential",
        choices=CREDENTIAL_MODES,
        default="secret",
        help="GRAPH_CREDENTIAL, how the relay proves itself to Entra ID (default secret): secret (a client secret "
        "in Key Vault), certificate (a Key Vault certificate whose public key the app registration holds), "
        "federated (the app registration trusts a user-assigned managed identity: no secret anywhere), "
        "managed-identity (the identity calls Graph itself: no app registration); docs/credentials.md",
    )
    parser.add_argument(
        "--expires-in",
        "--secret-expires-in",
        dest="expires_in",
        metavar="DAYS",
        type=float,
        default=365.0,
        help="the emulated secret's or certificate's lifetime, in days from now (default 365); e.g. 10 to see "
        "`mailrelay expiry check` warn. --secret-expires-in is its older name",
    )
    parser.add_argument(
        "--instances",
        metavar="N",
        type=int,
        default=1,
        help="local hosts on the one queue, as Azure scales out (default 1); watch two of them race for one "
        "request and send it once",
    )
    parser.add_argument(
        "--smtp",
        metavar="PORT",
        type=int,
        default=None,
        help="also run the SMTP listener (docs/smtp.md) on 127.0.0.1:PORT, STARTTLS, with a login for the default "
        "app and one for each --app (user: the app's name, a random password); the state file and the banner "
        "list them",
    )
    parser.add_argument(
        "--smtps",
        metavar="PORT",
        type=int,
        default=None,
        help="with --smtp: implicit TLS (as port 465 in Azure) on this port too",
    )
    parser.add_argument(
        "--read-access",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="grant the app Exchange's \"Application Mail.Read\" over its scope (default: granted), so an "
        "unknown send (a timeout, a 5xx) is looked up in Sent Items; --no-read-access leaves it to "
        "SEND_UNKNOWN_OUTCOME",
    )
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        default=None,
        help=f"where to write the endpoints for the other commands (default {DEFAULT_STATE_FILE}, or "
        "MAILRELAY_STATE_FILE)",
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=["run", "env"],
        default="run",
        help="run (default): start the stack; env: print the running stack's relay settings as shell exports "
        '(`eval "$(mailrelay local env)"`, then `python -m devstack.timers check_secret_expiry` and the like)',
    )
    parser.add_argument(
        "--format",
        choices=["shell", "local-settings"],
        default="shell",
        help="for `env`: shell exports (default), or a local.settings.json for Azure Functions Core Tools "
        "(`func start` against the stack's emulator), shaped as local.settings.json.example",
    )
    parser.set_defaults(handler=run)


def print_env(state_file: Path, fmt: str = "shell") -> int:
    """The running stack's relay settings as `export NAME='value'` lines, for tools that read the environment."""
    import shlex

    from shared.cli.common import UsageError, read_state

    try:
        state = read_state(state_file)
    except UsageError as exc:
        return fail("local env", str(exc), EXIT_USAGE)
    settings = state.get("relaySettings") if state else None
    if not isinstance(settings, dict):
        return fail("local env", f"no running stack: {state_file} is missing; start one with `mailrelay local`", 3)
    if fmt == "local-settings":
        import json

        values = {"FUNCTIONS_WORKER_RUNTIME": "python", **{str(k): str(v) for k, v in settings.items()}}
        print(json.dumps({"IsEncrypted": False, "Values": values}, indent=2))
        return 0
    for name, value in settings.items():
        if not str(name).replace("_", "").isalnum():
            continue  # only names a shell can export
        print(f"export {name}={shlex.quote(str(value))}")
    return 0


def parse_app_flags(values: Sequence[str]) -> list[dict[str, Any]]:
    """--app NAME=SENDER[,SENDER] flags as the declaration's objects; UsageError says what is wrong. The name's
    rules are the relay's own (shared/settings.parse_apps), checked when the stack is built."""
    from shared.cli.common import UsageError

    apps: list[dict[str, Any]] = []
    for value in values:
        name, sep, senders = value.partition("=")
        addresses = split_addresses([senders])
        if not sep or not name.strip() or not addresses:
            raise UsageError(f"--app takes NAME=SENDER[,SENDER], got {value[:80]!r}")
        bad = [a for a in addresses if not _looks_like_address(a)]
        if bad:
            raise UsageError(f"--app {name.strip()}: not an email address: {', '.join(repr(a) for a in bad)}")
        apps.append({"name": name.strip(), "senders": addresses})
    return apps


def _looks_like_address(value: str) -> bool:
    local, _, domain = value.partition("@")
    return bool(local) and "." in domain and not any(c.isspace() or c in "<>,;@" for c in local + domain)


def split_addresses(values: Sequence[str]) -> list[str]:
    return [a.strip() for value in values for a in value.split(",") if a.strip()]


def _import_devstack() -> Any:
    """devstack.stack from the checkout this `shared` package lives in; None when there is none."""
    import importlib

    try:
        return importlib.import_module("devstack.stack")
    except ImportError:
        pass
    # An editable install puts only `shared` on the path; the checkout's root (above shared/cli/)
    # holds devstack beside it.
    root = Path(__file__).resolve().parents[2]
    if not (root / "devstack" / "stack.py").is_file():
        return None
    sys.path.insert(0, str(root))
    return importlib.import_module("devstack.stack")


def run(args: argparse.Namespace) -> int:
    state_file: Path = args.state_file or default_state_file()
    if args.action == "env":
        return print_env(state_file, args.format)
    stack_module = _import_devstack()
    if stack_module is None:
        return fail(
            "local",
            "the local stack runs only from a checkout of the repository (devstack/ is never deployed or "
            "installed): clone it and run `scripts/demo` or `.venv/bin/mailrelay local` there",
            EXIT_USAGE,
        )
    from shared.cli.common import UsageError

    try:
        apps = parse_app_flags(args.apps)
    except UsageError as exc:
        return fail("local", str(exc), EXIT_USAGE)
    allowed = split_addresses(args.allowed_senders) or ["alerts@contoso.com"]
    outside = split_addresses(args.mailbox)
    # Checked before anything starts: a bad address used to surface as a traceback from the stack.
    bad = [a for a in (*allowed, *outside, *split_addresses(args.exchange_scope)) if not _looks_like_address(a)]
    if bad:
        return fail("local", f"not an email address: {', '.join(repr(a) for a in bad)}", EXIT_USAGE)
    if not 1 <= args.instances <= 8:
        why = "several hosts play Azure's scale-out, which infra/ caps at 40 instances"
        return fail("local", f"--instances takes 1 to 8 ({why}), got {args.instances}", EXIT_USAGE)
    # By default the allowed senders (the apps' included: they join the allow-list) are inside the Exchange scope,
    # except those named by --mailbox.
    outside_lower = {m.lower() for m in outside}
    senders = [*allowed, *(s for app in apps for s in app["senders"])]
    scope = split_addresses(args.exchange_scope) or [a for a in senders if a.lower() not in outside_lower]
    result: int = stack_module.run_foreground(
        allowed_senders=allowed,
        exchange_scope=scope,
        mailboxes=outside,
        queue_name=args.queue,
        state_file=state_file,
        expires_in_days=args.expires_in,
        instances=args.instances,
        read_access=args.read_access,
        credential=args.credential,
        apps=apps,
        smtp_port=args.smtp,
        smtps_port=args.smtps,
    )
    return result
