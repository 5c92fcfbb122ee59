"""`python -m devstack.emulator`: serve until SIGTERM or SIGINT, printing the ready JSON line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from devstack.emulator.server import Emulator

# A fixed name: under `python -m` __name__ would be "__main__".
logger = logging.getLogger("devstack.emulator")


def _write_ready_file(path: Path, text: str) -> None:
    # Written whole, then renamed, so a reader never sees half a line.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text + "\n", encoding="utf-8")
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.emulator",
        description="Local emulator of Entra ID, Microsoft Graph and Key Vault.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--seed", type=Path, help="JSON file with apps, mailboxes, secrets (and faults)")
    parser.add_argument("--ready-file", type=Path, help="where to write the ready JSON line")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    emulator = Emulator(host=args.host, port=args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.seed is not None:
            emulator.load_seed(json.loads(args.seed.read_text(encoding="utf-8")))
        emulator.start()
        ready = json.dumps(
            {
                "url": emulator.url,
                "caCertPath": emulator.ca_cert_path,
                "identityHeader": emulator.identity_header,
                "msiEndpoint": emulator.msi_endpoint,
            }
        )
        if args.ready_file is not None:
            _write_ready_file(args.ready_file, ready)
        print(ready, flush=True)
        stop.wait()
        logger.info("stopping")
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
