"""`mailrelay validate`: check a send request against the contract; print the Graph body it makes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from shared.cli.common import EXIT_INVALID, EXIT_OK, EXIT_USAGE, read_input

if TYPE_CHECKING:
    from shared.cli.common import Subparsers


def register(subparsers: Subparsers) -> None:
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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from shared.contract import ContractError, MimeRequest, parse_request
    from shared.graph import build_send_mail_body

    source: str = args.file
    if source == "-" and sys.stdin.isatty():
        # Otherwise it waits for input with no word: looks like a hang to someone who forgot the file.
        print(
            "mailrelay validate: reading the request from standard input (end with Ctrl-D; or give a FILE)",
            file=sys.stderr,
        )
    try:
        raw = read_input(source)
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
    if isinstance(request, MimeRequest):  # the MIME goes to Graph as is: show the envelope and the MIME's size
        print(json.dumps({"from": request.sender, "envelope": request.envelope(), "mime": request.mime.byte_size}))
        return EXIT_OK
    print(json.dumps(build_send_mail_body(request), indent=2))
    if request.stored_parts():
        print(
            f"mailrelay validate: {len(request.stored_parts())} part(s) are claim checks, read from mail-payloads when "
            "sent; a message of 3 MB or more goes through a draft and upload sessions instead of this one sendMail",
            file=sys.stderr,
        )
    return EXIT_OK
