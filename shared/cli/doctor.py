"""`mailrelay doctor`: the command line of the set-up checks in shared.doctor (imported when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from shared.cli.common import settings_env

if TYPE_CHECKING:
    from shared.cli.common import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the relay's settings, Graph credential, Entra token, queues and tables; send nothing",
        description=(
            "Check each piece a send needs, in order: the settings (a missing or malformed one is named), "
            "the Graph credential GRAPH_CREDENTIAL names (the client secret in Key Vault; the Key Vault "
            "certificate, parsed, with its thumbprint and end; the managed identity's assertion and what the "
            "app registration's federated credential must hold; or the managed identity's own Graph token), an "
            "app-only token from Entra ID (a federated credential's wrong issuer, subject or audience is named) "
            "and the application permissions it carries (a tenant-wide mail consent beside an Exchange RBAC "
            "scope warns: they add up), the mail and dead-letter queues, and the tables. Nothing is sent or "
            "written; no secret or token is shown. With --allowed and --denied it verifies Exchange's scope: by "
            "reading each mailbox's "
            "inbox id when the app may read mail, else (--send-test-to) by a real test mail from each address; an "
            "allowed address that cannot send fails, and a denied address that Exchange allows fails: the scope "
            "does not restrict. A check that proves nothing says so (unproven): a denied address with no mailbox, "
            "or refused probes when the app may not read mail. Settings come from the environment, or else from the "
            "stack `mailrelay local` runs. Exit code 0: nothing failed; 1: something failed; 2: the command line "
            "is wrong; 3: nothing failed but a check asked for (--allowed, --denied) proved nothing."
        ),
    )
    parser.add_argument("--offline", action="store_true", help="check the settings only; contact no service")
    parser.add_argument(
        "--allowed",
        nargs="+",
        default=[],
        metavar="ADDRESS",
        help="mailboxes the app must be able to send as: on ALLOWED_SENDERS and inside Exchange's scope (else it "
        "fails)",
    )
    parser.add_argument(
        "--denied",
        nargs="+",
        default=[],
        metavar="ADDRESS",
        help="existing mailboxes Exchange must refuse to the app (the CEO's, say); one allowed: the scope restricts "
        "nothing; one that does not exist proves nothing (unproven)",
    )
    parser.add_argument(
        "--send-test-to",
        metavar="ADDRESS",
        help="when the app may not read mail, verify the scope by a real test mail from each address to ADDRESS",
    )
    parser.add_argument(
        "--app",
        metavar="NAME",
        help="check as this declared app sends (MAILRELAY_APPS): its senders, and its own Graph registration when it "
        "has one, so --allowed/--denied verify Exchange's scope on that registration",
    )
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        default=None,
        help="with no relay settings in the environment, check the stack `mailrelay local` runs",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    from shared.cli.common import not_listening, unreachable_local_endpoint
    from shared.doctor import Check, diagnose, exit_code, render

    env = settings_env(args.state_file, os.environ)
    down = (
        None if args.offline else unreachable_local_endpoint(env.get("AzureWebJobsStorage"), env.get("KEY_VAULT_URI"))
    )
    if down:
        checks = [Check("local stack", "fail", not_listening(down), "start it with `mailrelay local`")]
        print(render(checks, as_json=args.json))
        return exit_code(checks)
    checks = diagnose(
        env,
        offline=args.offline,
        allowed=args.allowed,
        denied=args.denied,
        send_test_to=args.send_test_to,
        app=args.app,
    )
    print(render(checks, as_json=args.json))
    return exit_code(checks)
