"""Parse every .bicep file under a folder with pycep-parser; fail on the first syntax error per file.

Usage: python infra/tools/parse_bicep.py <folder> [--mirror <dir>]

pycep-parser is the parser checkov uses for its Bicep framework, so a file it cannot read is a file
checkov silently skips. Version 0.5.1 (the one checkov 3.3.x pins) predates Bicep's `extension`
declaration, which has no other spelling; it is the one construct this script (and check.sh, for
checkov) blanks before parsing, keeping line numbers. Anything else that fails must be rewritten in
a form the parser accepts.

With --mirror, the folder is copied to <dir> with those lines blanked, for checkov to scan.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from pycep import BicepParser

# `extension microsoftGraphV1`, `extension 'br:...' with {...} as name`: a whole line of its own.
EXTENSION_LINE = re.compile(r"^\s*extension\s+\S.*$")


def blank_extensions(text: str) -> str:
    """Replace `extension ...` declarations with a comment of the same line count."""
    lines = text.split("\n")
    return "\n".join(
        "// (extension declaration blanked for pycep-parser)" if EXTENSION_LINE.match(line) else line
        for line in lines
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--mirror", type=Path, default=None)
    args = ap.parse_args()

    files = sorted(p for p in args.folder.rglob("*.bicep") if p.is_file())
    if not files:
        print(f"no .bicep files under {args.folder}", file=sys.stderr)
        return 1

    parser = BicepParser(add_line_numbers=True)
    failed = 0
    for path in files:
        text = blank_extensions(path.read_text(encoding="utf-8"))
        try:
            parser.parse(text=text)
        except Exception as exc:
            failed += 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"FAIL {path}: {type(exc).__name__}: {first}", file=sys.stderr)
        else:
            print(f"ok   {path}")

    if args.mirror is not None:
        if args.mirror.exists():
            shutil.rmtree(args.mirror)
        shutil.copytree(args.folder, args.mirror, ignore=shutil.ignore_patterns("*.ps1", "*.md"))
        for path in args.mirror.rglob("*.bicep"):
            path.write_text(blank_extensions(path.read_text(encoding="utf-8")), encoding="utf-8")

    if failed:
        print(f"{failed} of {len(files)} Bicep file(s) failed to parse", file=sys.stderr)
        return 1
    print(f"parsed {len(files)} Bicep file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
