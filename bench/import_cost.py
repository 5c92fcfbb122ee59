"""Cold-import cost of function_app.py against a bare `import azure.functions`, as a ratio in one run.

The Functions host imports function_app.py to index it at every cold start, so everything it pulls in
at module level is paid before the first message. Each sample is a fresh interpreter timing only the
import statement (not interpreter start-up); the two imports alternate so machine noise hits both.

    python bench/import_cost.py [--runs 30] [--max-ratio 1.5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import time, json, resource, sys; t = time.perf_counter(); import {module}; "
    "d = time.perf_counter() - t; "
    "print(json.dumps({{'s': d, 'rss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
    "'modules': len(sys.modules)}}))"
)


def sample(module: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAPH_", "KEY_VAULT", "ALLOWED_"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--max-ratio", type=float, default=1.5)
    args = parser.parse_args()
    modules = ("azure.functions", "function_app")
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in modules}
    for m in modules:  # warm the OS file cache and .pyc files once, untimed
        sample(m)
    for _ in range(args.runs):
        for m in modules:
            samples[m].append(sample(m))
    result = {}
    for m in modules:
        result[m] = {
            "median_ms": round(statistics.median(s["s"] for s in samples[m]) * 1000, 1),
            "max_rss_kb": int(statistics.median(s["rss_kb"] for s in samples[m])),
            "modules": int(statistics.median(s["modules"] for s in samples[m])),
        }
    ratio = result["function_app"]["median_ms"] / result["azure.functions"]["median_ms"]
    rss_ratio = result["function_app"]["max_rss_kb"] / result["azure.functions"]["max_rss_kb"]
    print(
        json.dumps(
            {"runs": args.runs, **result, "time_ratio": round(ratio, 3), "rss_ratio": round(rss_ratio, 3)}, indent=2
        )
    )
    if ratio > args.max_ratio:
        print(f"FAIL: importing function_app costs {ratio:.2f}x a bare azure.functions (limit {args.max_ratio}x)")
        return 1
    print(f"ok: {ratio:.2f}x (limit {args.max_ratio}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
