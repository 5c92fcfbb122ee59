"""`mailrelay`, the relay's command line.

Each subcommand is two small functions: one that adds its parser to the subparsers, one that runs it
and returns the exit code. List the first in SUBCOMMANDS to make the subcommand available.

Importing this module stays cheap (argparse only): a subcommand imports what it needs (pydantic, the
Graph client, the Azure SDKs) when it runs, so `mailrelay --help` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]

# Exit codes shared by the subcommands.
EXIT_OK = 0
EXIT_INVALID = 1  # the input was read and is wrong
EXIT_USAGE = 2  # the input could not be read, or the command line is wrong (argparse's code too)


# --- validate ------------------------------------------------------------------------------------


def _add_validate(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a send request against the contract; show the Graph request it makes",
        description=(
            "Check a send request (the JSON an app puts on the queue) against the contract. "
            "If it is valid, print the JSON body the relay would POST to Graph's sendMail; "
            "if not, print each violation as 'field: rule' on standard error and exit 1."
        ),
    )
    parser.add_argument(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="the request's JSON file; - or none: standard input",
    )
    parser.set_defaults(handler=_run_validate)


def _run_validate(args: argparse.Namespace) -> int:
    from shared.contract import ContractError, parse_request
    from shared.graph import build_send_mail_body

    source: str = args.file
    try:
        raw = _read_input(source)
    except OSError as exc:
        name = "standard input" if source == "-" else source
        print(f"mailrelay validate: cannot read {name}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        request = parse_request(raw)
    except ContractError as exc:
        for violation in exc.violations:
            print(violation, file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(build_send_mail_body(request), indent=2))
    return EXIT_OK


def _read_input(source: str) -> bytes | str:
    """The bytes of a file, or of standard input for "-": the contract decides about encodings."""
    if source == "-":
        # A replaced sys.stdin (tests, embedding) may be text-only.
        buffer = getattr(sys.stdin, "buffer", None)
        return buffer.read() if buffer is not None else sys.stdin.read()
    with open(source, "rb") as file:
        return file.read()


# --- expiry check --------------------------------------------------------------------------------


def _add_expiry(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "expiry",
        help="the Graph client secret's expiry",
        description="Commands about the expiry of the client secret the relay keeps in Key Vault.",
    )
    commands = parser.add_subparsers(title="expiry commands", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="check the client secret's expiry now, and warn as the daily timer does",
        description=(
            "Read the current version of the client secret's Key Vault secret (its properties, never its "
            "value), compare its exp with the thresholds in EXPIRY_WARN_DAYS, and warn through the "
            "configured channels exactly as the daily timer function does (once per threshold and secret "
            "version). Settings come from the environment, or else from the stack `mailrelay local` runs. "
            "Exit code: 0 fine, 1 warning, 2 critical "
            "(expired, disabled or missing secret) or the check could not run (a setting is wrong)."
        ),
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--dry-run", action="store_true", help="notify nobody and record nothing; show who would be")
    check.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        default=None,
        help="with no relay settings in the environment, check the stack `mailrelay local` runs "
        "(default .mailrelay/local.json)",
    )
    check.set_defaults(handler=_run_expiry_check)


def _run_expiry_check(args: argparse.Namespace) -> int:
    import os

    from shared.expiry import EXIT_CODES, run_cli
    from shared.settings import SettingsError

    try:
        env = _settings_env(args.state_file, os.environ)
        code, text = run_cli(as_json=args.json, dry_run=args.dry_run, env=env)
    except SettingsError as exc:
        print(f"mailrelay expiry check: {exc}", file=sys.stderr)
        return EXIT_CODES["critical"]
    print(text)
    return code


def _settings_env(state_file: Path | None, environ: MutableMapping[str, str]) -> Mapping[str, str]:
    """The settings `expiry check` and `doctor` use: the environment's, or else the local stack's.

    With no relay settings in the environment (GRAPH_CLIENT_ID unset) and a state file present, the
    local stack's settings apply, and the environment still overrides them (e.g. EXPIRY_ALERT_RECIPIENTS).
    """
    from shared.cli_mail import DEFAULT_STATE_FILE, read_state

    if environ.get("GRAPH_CLIENT_ID", "").strip():
        return environ
    state = read_state(state_file or DEFAULT_STATE_FILE)
    local = state.get("relaySettings") if state else None
    if not isinstance(local, dict):
        return environ
    # azure-identity reads its managed-identity endpoint from os.environ itself, not from our mapping.
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        if name in local:
            environ.setdefault(name, str(local[name]))
    return {**{k: str(v) for k, v in local.items()}, **environ}


# --- doctor --------------------------------------------------------------------------------------


def _add_doctor(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the relay's settings, Key Vault secret, Entra token, queues and tables; send nothing",
        description=(
            "Check each piece a send needs, in order: the settings (a missing or malformed one is named), "
            "the client secret in Key Vault, an app-only token from Entra ID and the application permissions "
            "it carries, the mail and dead-letter queues, and the tables. Nothing is sent or written; no secret "
            "or token is shown. The Exchange scope has no dry run: check it with "
            "infra/exchange/Test-ExchangeScope.ps1. Settings come from the environment, or else from the stack "
            "`mailrelay local` runs. Exit code 0: nothing failed; 1: something failed."
        ),
    )
    parser.add_argument("--offline", action="store_true", help="check the settings only; contact no service")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        default=None,
        help="with no relay settings in the environment, check the stack `mailrelay local` runs",
    )
    parser.set_defaults(handler=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    import os

    from shared.doctor import diagnose, exit_code, render

    checks = diagnose(_settings_env(args.state_file, os.environ), offline=args.offline)
    print(render(checks, as_json=args.json))
    return exit_code(checks)


# --- The command ---------------------------------------------------------------------------------


def _add_queue_commands(subparsers: Subparsers) -> None:
    # send, dead-letters and local live in shared/cli_mail.py (it imports this module, hence the late import).
    from shared.cli_mail import SUBCOMMANDS as queue_commands

    for add_subcommand in queue_commands:
        add_subcommand(subparsers)


SUBCOMMANDS: Sequence[Callable[[Subparsers], None]] = (_add_validate, _add_queue_commands, _add_expiry, _add_doctor)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailrelay", description="Graph Mail Relay: send mail through Microsoft Graph from a queue."
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `mailrelay` with `argv` (default: the process's arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help and on usage errors; return its code, so callers and tests get an int.
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
