"""`mailrelay`'s top-level parser: registers each subcommand's module and dispatches to it.

Each subcommand module (validate, send, status, report, dead_letters, local, expiry, doctor) has a `register` that adds
its parser to the subparsers and sets the handler that runs it and returns the exit code. List the
`register` in SUBCOMMANDS to make the subcommand available; the list's order is --help's.

Importing this module stays cheap (argparse only): a subcommand imports what it needs (pydantic, the
Graph client, the Azure SDKs, devstack) when it runs, so `mailrelay --help` answers at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shared.cli import dead_letters, doctor, expiry, local, report, send, status, validate
from shared.cli.common import EXIT_OK, EXIT_USAGE, Handler

if TYPE_CHECKING:
    from shared.cli.common import Subparsers

SUBCOMMANDS: Sequence[Callable[[Subparsers], None]] = (
    validate.register,
    send.register,
    status.register,
    report.register,
    dead_letters.register,
    local.register,
    expiry.register,
    doctor.register,
)


class _Version(argparse.Action):
    """--version, looked up only when asked (importlib.metadata is not free at every start)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("graph-mail-relay")
        except PackageNotFoundError:
            found = "unknown (not installed)"
        print(f"mailrelay {found}")  # to standard output, as --version does everywhere
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailrelay", description="Graph Mail Relay: send mail through Microsoft Graph from a queue."
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the relay's version and exit")
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
