"""`mailrelay expiry check`: the Graph credential's expiry, checked and warned about as the daily timer does.

The check itself is shared.expiry's (imported when the command runs); this module is its command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from shared.cli.common import settings_env

if TYPE_CHECKING:
    from shared.cli.common import Subparsers


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "expiry",
        help="the Graph credential's expiry (client secret or certificate), or its token in the secretless modes",
        description=(
            "Commands about the expiry of the Graph credential GRAPH_CREDENTIAL names: the client secret or the "
            "certificate the relay keeps in Key Vault; in federated and managed-identity modes nothing expires, "
            "and the check proves a Graph token can be had instead."
        ),
    )
    commands = parser.add_subparsers(title="expiry commands", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="check the credential's expiry now, and warn as the daily timer does",
        description=(
            "Read the current version of the client secret's or the certificate's Key Vault item (its "
            "properties, never its value), compare its exp with the thresholds in EXPIRY_WARN_DAYS, and warn "
            "through the configured channels exactly as the daily timer function does (once per threshold and "
            "version). In federated and managed-identity modes nothing expires: ask for a fresh Graph token "
            "instead, and alert on every run while none can be had. Settings come from the environment, or "
            "else from the stack `mailrelay local` runs. Exit code: 0 fine, 1 warning, 2 critical (expired, "
            "disabled or missing secret or certificate, no Graph token) or the check could not run (a setting "
            "is wrong). A declared app with its own Graph registration (MAILRELAY_APPS \"graph\") is checked "
            "too, after the relay's, and the exit code is the worst of them."
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
        "(default $XDG_STATE_HOME/mailrelay/local.json, or MAILRELAY_STATE_FILE)",
    )
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    import os

    from shared.expiry import EXIT_CODES
    from shared.settings import SettingsError

    try:
        env = settings_env(args.state_file, os.environ)
        from shared.cli.common import not_listening, unreachable_local_endpoint

        # Key Vault only (or, in the secretless modes, Entra's and the identity's emulator): with the record store
        # down the check still warns (a duplicate beats silence).
        down = unreachable_local_endpoint(url=env.get("KEY_VAULT_URI") or env.get("GRAPH_AUTHORITY_HOST"))
        if down:
            print(f"mailrelay expiry check: {not_listening(down)}", file=sys.stderr)
            return EXIT_CODES["critical"]
        code, text = run_cli(as_json=args.json, dry_run=args.dry_run, env=env)
    except SettingsError as exc:
        print(f"mailrelay expiry check: {exc}", file=sys.stderr)
        return EXIT_CODES["critical"]
    print(text)
    return code


def run_cli(*, as_json: bool, dry_run: bool, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """`mailrelay expiry check`: (exit code, text to print). Settings come from the environment.

    Here, not in shared.expiry: bootstrap builds the check, so the expiry package never imports it back.
    """
    import json

    from shared.bootstrap import build_expiry_runtime
    from shared.expiry import EXIT_CODES, format_table
    from shared.settings import load_expiry_settings

    settings = load_expiry_settings(env)  # a SettingsError names the setting; the CLI prints it
    runtime = build_expiry_runtime(settings)
    report = runtime.check.run(dry_run=dry_run)
    code, tables, apps = report.exit_code, [format_table(report)], {}
    # Each app's own Graph registration (MAILRELAY_APPS "graph"), as the timer checks it: one app's check failing
    # is that app's critical finding, and the next is checked all the same.
    for name, check in runtime.apps.items():
        heading = f"app {name} (its own Graph registration):"
        try:
            own = check.run(dry_run=dry_run)
        except Exception as e:
            code = max(code, EXIT_CODES["critical"])
            apps[name] = {"state": "critical", "error": f"the check failed: {type(e).__name__}"}
            tables.append(f"{heading} critical: the check failed: {type(e).__name__}")
            continue
        code = max(code, own.exit_code)
        apps[name] = own.to_json()
        tables.append(f"{heading}\n{format_table(own)}")
    if as_json:
        return code, json.dumps({**report.to_json(), **({"apps": apps} if apps else {})}, indent=2)
    return code, "\n\n".join(tables)
