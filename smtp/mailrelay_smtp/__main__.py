"""`python -m mailrelay_smtp [serve]` runs the listener; `... hash-password` makes the hash of a login."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from mailrelay_smtp.logins import Logins, LoginsError, hash_password

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object per line: whatever a field holds, it cannot start a line of its own (no forged log lines)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            **{k: v for k, v in vars(record).items() if k not in _STANDARD},
        }
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__  # the type only: an exception's text may quote content
        return json.dumps(line, default=str)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailrelay_smtp", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the listener (the default): settings from the environment, docs/smtp.md")
    hashing = sub.add_parser(
        "hash-password", help="read a password (prompted, or one line on stdin) and print its hash"
    )
    hashing.add_argument("--cost", type=int, default=None, help=argparse.SUPPRESS)  # tests: a cheaper scrypt
    args = parser.parse_args(argv)
    if args.command == "hash-password":
        password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
        if len(password) < 12:
            print(
                "hash-password: use at least 12 characters (a device stores it; a long random one costs nothing)",
                file=sys.stderr,
            )
            return 2
        print(hash_password(password, args.cost) if args.cost else hash_password(password))
        return 0
    return serve()


def serve() -> int:
    from mailrelay_smtp.intake import Intake, client_factory
    from mailrelay_smtp.server import Listener
    from mailrelay_smtp.settings import SettingsError, load

    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        settings = load()
        logins = Logins.load(settings.logins_file, settings.senders)
    except (SettingsError, LoginsError) as exc:
        print(f"mailrelay-smtp: {exc}", file=sys.stderr)
        return 2
    listener = Listener(settings, logins, Intake(client_factory(settings)))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        bound = await listener.start()
        # One line per port on stdout, for whoever started the listener (the local stack reads it).
        for port, number in bound:
            print(json.dumps({"listening": port.kind, "port": number, "logins": len(logins)}), flush=True)
        await stop.wait()
        await listener.close()

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"mailrelay-smtp: cannot open a port: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
