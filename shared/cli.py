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
from collections.abc import Callable, Sequence
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


# --- The command ---------------------------------------------------------------------------------

def _add_queue_commands(subparsers: Subparsers) -> None:
    # send, dead-letters and local live in shared/cli_mail.py (it imports this module, hence the late import).
    from shared.cli_mail import SUBCOMMANDS as queue_commands

    for add_subcommand in queue_commands:
        add_subcommand(subparsers)


SUBCOMMANDS: Sequence[Callable[[Subparsers], None]] = (_add_validate, _add_queue_commands)


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
