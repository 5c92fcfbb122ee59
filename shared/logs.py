"""The relay's log lines: one physical line per event, whatever an app put in the fields.

Apps are not trusted: an `id`, a sender, a retry field or an error message that Graph echoes back can
hold any character. A line feed there would start a second log line, and a forged line such as "CRITICAL
mailrelay: secret.expiry: ..." would mislead whoever reads the log (the alert rules query the records'
dimensions, shared/telemetry.py, never the text, so an app's `id` of "secret.expiry" fires nothing). Every
value that reaches a log line goes through `safe`, which escapes what could break the line and caps its length.
"""

from __future__ import annotations

import logging
from typing import Any, Final

MAX_FIELD_CHARS: Final = 200

# What must not reach a log line raw: the C0 controls (CR, LF, ESC for ANSI sequences, ...), DEL, the
# C1 controls (U+0085 NEXT LINE among them), and the Unicode line and paragraph separators, which some
# log viewers break lines on. Escaped as \xNN / \uNNNN so an operator still sees what was there.
_UNSAFE: Final = frozenset(
    [chr(c) for c in range(0x20)] + [chr(c) for c in range(0x7F, 0xA0)] + ["\u2028", "\u2029"]
)


def safe(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """`value` as text that stays on one line: controls and separators escaped, at most `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    out: list[str] = []
    size = 0
    for char in text:
        if char in _UNSAFE:
            piece = f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
        elif 0xD800 <= ord(char) <= 0xDFFF:
            piece = f"\\u{ord(char):04x}"  # a lone surrogate cannot even be encoded by the log handler
        else:
            piece = char
        if size + len(piece) > limit:
            out.append("…")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


def log_event(logger: logging.Logger, level: int, event: str, text: str, **fields: Any) -> None:
    """One line per event: the event name first, then the fields, also as `extra`, which the worker's OpenTelemetry
    distro exports as the record's dimensions (shared/telemetry.py: their names are fixed there, and the alerts
    query them, never the text); and the metrics the event counts.

    Without OpenTelemetry the Functions Python worker forwards only the message text, so the text carries the
    fields too, for an operator reading it: "mail.deadlettered: ErrorAccessDenied [queueMessageId=… sender=…]".
    Fields never hold a request's subject, body, a secret or a token. Every value is passed through `safe`, in
    the text and in `extra` alike.
    """
    # Numbers and booleans stay typed in `extra`; every string is made safe there as in the text.
    from shared.telemetry import count_event

    clean = {k: v if isinstance(v, int | float) else safe(v) for k, v in fields.items() if v is not None}
    shown = " ".join(f"{k}={safe(v)}" for k, v in clean.items() if k != "hint")
    logger.log(level, "%s: %s [%s]", event, safe(text, 1000), shown, extra={"event": event, **clean})
    count_event(event, clean)
