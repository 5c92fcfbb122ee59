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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    from shared.doctor import diagnose, exit_code, render

    checks = diagnose(settings_env(args.state_file, os.environ), offline=args.offline)
    print(render(checks, as_json=args.json))
    return exit_code(checks)
