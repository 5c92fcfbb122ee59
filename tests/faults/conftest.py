"""The fault suite's summary: one line per scenario, printed at the end of the run (and in CI's output)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["RESULTS", "Result"]


@dataclass(frozen=True)
class Result:
    scenario: str
    read_access: bool
    requests: int
    graph_calls: int
    delivered: int
    copies: int
    duplicates: int
    dead_lettered: int
    unknowns_injected: int


RESULTS: list[Result] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    rows = [("scenario", "read", "requests", "graph calls", "delivered", "copies", "duplicates", "dead-lettered")]
    for r in RESULTS:
        rows.append(
            (
                r.scenario,
                "yes" if r.read_access else "no",
                *(str(v) for v in (r.requests, r.graph_calls, r.delivered, r.copies, r.duplicates, r.dead_lettered)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    terminalreporter.section("fault suite: every request's copies in the emulator's outbox")
    for row in rows:
        terminalreporter.write_line("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))
    import json
    from pathlib import Path

    out = Path(__file__).resolve().parents[1] / "artifacts" / "fault-suite.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in RESULTS], indent=2), encoding="utf-8")
