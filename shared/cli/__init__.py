"""`mailrelay`, the relay's command line: `shared.cli:main` is the console script (pyproject.toml).

One module per command (validate, send, dead_letters, local, expiry, doctor), what they share in
common.py, and the top-level parser that registers them in parser.py. Importing the package costs
argparse and the standard library only.
"""

from shared.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
