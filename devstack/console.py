"""The local web console of `mailrelay local`, as developers use Mailpit: one URL, every message rendered.

Pages (server-rendered, standard library only, no build step, nothing fetched from outside):
- `/`: the emulator's outbox, newest first, refreshed every 3 s; `/message/N`: one message, its HTML body
  rendered in a sandboxed frame (no scripts, no same origin, so a mail cannot reach the console), its
  text body escaped, its attachments with names and sizes;
- `/dead-letters`: the poison queue (both forms, via shared.deadletters) with the app (whose queue the request
  came from), code, hint and attempts, and a requeue button (back to that app's queue);
- `/faults`: the emulator's queued faults (throttling, outages), to add or clear.
There are no status records yet (the delivery-guarantees issue adds them), so there is no status page.

Everything an app wrote (subjects, addresses, names, bodies, codes) is HTML-escaped; the body frame is
the only place HTML renders. Every POST carries this process's random token and must come from the
console's own origin: another local page cannot requeue or inject faults through the browser (CSRF).
Never deployed: devstack/ is in .funcignore.
"""

from __future__ import annotations

import html
import secrets
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# The body frame: sandbox with no allow-* keyword blocks scripts, forms, popups and same-origin access; the
# CSP repeats it for browsers that honour one and not the other, and keeps the frame from loading anything
# remote (a tracking pixel in a test mail should not phone home from a developer's machine).
FRAME_CSP = "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'"
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; form-action 'self'"
STYLE = (
    "body{font:14px system-ui,sans-serif;margin:0;color:#222}header{background:#1f3a5f;color:#fff;padding:8px 16px}"
    "header a{color:#fff;margin-right:16px}main{padding:16px}table{border-collapse:collapse;width:100%}"
    "td,th{border-bottom:1px solid #ddd;padding:6px;text-align:left;vertical-align:top}"
    "iframe{width:100%;height:420px;border:1px solid #ccc}.hint{color:#555;max-width:60em}"
    "pre{white-space:pre-wrap}form{display:inline}"
)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


class Console:
    """The console's HTTP server on 127.0.0.1, in a thread of the process that runs the stack.

    `outbox()` and `faults()` read the emulator; `dead_letters()` opens the poison queue. They are passed
    in, so the console knows nothing of how the stack is started (and tests can drive it alone)."""

    def __init__(
        self,
        *,
        outbox: Callable[[], list[dict[str, Any]]],
        faults: Callable[[], list[dict[str, Any]]],
        emulator_post: Callable[[str, Mapping[str, Any]], Any],
        dead_letters: Callable[[], Any],
        host: str = "127.0.0.1",
        port: int = 0,
        credential: str | None = None,
    ) -> None:
        self._outbox = outbox
        self._credential = credential  # GRAPH_CREDENTIAL of the stack, shown in every page's header
        self._faults = faults
        self._emulator_post = emulator_post
        self._dead_letters = dead_letters
        self.token = secrets.token_urlsafe(24)
        console = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                console._serve(self, "GET")

            def do_POST(self) -> None:
                console._serve(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the console is quiet: the stack's own output is what matters

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> Console:
        self._thread = threading.Thread(target=self._server.serve_forever, name="console", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- routing ---------------------------------------------------------------------------------

    def _serve(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(request.path).path.rstrip("/") or "/"
        port = self._server.server_address[1]
        if request.headers.get("Host") not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            # DNS rebinding: a page of another site whose name now points at 127.0.0.1 reaches this port,
            # but its requests carry that site's Host. Only the console's own names are served.
            status, body, location = 403, self._page("Refused", "<p>Refused: unknown Host.</p>"), None
        else:
            status, body, location = self._route(request, method, path)
        self._respond(request, path, status, body, location)

    def _route(self, request: BaseHTTPRequestHandler, method: str, path: str) -> tuple[int, str, str | None]:
        try:
            if method == "POST":
                status, body, location = self._post(request, path)
            else:
                status, body, location = self._get(path)
        except Exception as exc:  # a page must say what failed (Azurite stopped, say), not drop the socket
            status, body, location = 500, self._page("Error", f"<p>{esc(type(exc).__name__)}: {esc(exc)}</p>"), None
        return status, body, location

    def _respond(
        self, request: BaseHTTPRequestHandler, path: str, status: int, body: str, location: str | None
    ) -> None:
        request.send_response(status)
        if location:
            request.send_header("Location", location)
        csp = FRAME_CSP if path.startswith("/frame/") else PAGE_CSP
        request.send_header("Content-Security-Policy", csp)
        request.send_header("X-Content-Type-Options", "nosniff")
        # same-origin, not no-referrer: under no-referrer browsers post forms with "Origin: null", which the
        # CSRF check must refuse; same-origin keeps the URL from other sites and the Origin for our own.
        request.send_header("Referrer-Policy", "same-origin")
        request.send_header("Content-Type", "text/html; charset=utf-8")
        data = body.encode("utf-8", "replace")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _get(self, path: str) -> tuple[int, str, str | None]:
        parts = path.strip("/").split("/")
        if path == "/":
            return 200, self._outbox_page(), None
        if parts[0] == "message" and len(parts) == 2 and parts[1].isdigit():
            return self._message_page(int(parts[1]))
        if parts[0] == "frame" and len(parts) == 2 and parts[1].isdigit():
            return self._frame(int(parts[1]))
        if path == "/dead-letters":
            return 200, self._dead_letters_page(), None
        if path == "/faults":
            return 200, self._faults_page(), None
        return 404, self._page("Not found", "<p>No such page.</p>"), None

    def _post(self, request: BaseHTTPRequestHandler, path: str) -> tuple[int, str, str | None]:
        length = int(request.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(request.rfile.read(min(length, 65536)).decode("utf-8", "replace")).items()}
        origin = request.headers.get("Origin")
        # A form posted from another site carries that site's Origin (or none, with the wrong token).
        same_origin = origin is None or origin.rstrip("/") == self.url.rstrip("/")
        if not same_origin or not secrets.compare_digest(form.get("token", ""), self.token):
            return 403, self._page("Refused", "<p>Refused: this form did not come from the console.</p>"), None
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "dead-letters" and parts[2] == "requeue":
            self._dead_letters().requeue(parts[1])
            return 303, "", "/dead-letters"
        if path == "/faults":
            self._emulator_post(
                "faults",
                {
                    "service": form.get("service", "graph.sendMail"),
                    "status": int(form.get("status") or 429),
                    "count": int(form.get("count") or 1),
                    "retryAfter": float(form.get("retryAfter") or 2),
                },
            )
            return 303, "", "/faults"
        if path == "/faults/clear":
            self._emulator_post("faults-clear", {})
            return 303, "", "/faults"
        return 404, self._page("Not found", "<p>No such action.</p>"), None

    # --- pages -----------------------------------------------------------------------------------

    def _page(self, title: str, content: str, refresh: int | None = None) -> str:
        meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
        return (
            f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{esc(title)} · mailrelay local</title>'
            f"<style>{STYLE}</style></head><body><header><b>mailrelay local</b> &nbsp; "
            '<a href="/">Outbox</a><a href="/dead-letters">Dead letters</a><a href="/faults">Faults</a>'
            + (f"<span>credential: {esc(self._credential)}</span>" if self._credential else "")
            + "</header>"
            f"<main><h2>{esc(title)}</h2>{content}</main></body></html>"
        )

    def _outbox_page(self) -> str:
        entries = list(enumerate(self._outbox()))
        rows = "".join(
            f'<tr><td><a href="/message/{i}">{esc(_message(e).get("subject") or "(no subject)")}</a></td>'
            f"<td>{esc(e.get('sender'))}</td><td>{esc(', '.join(_addresses(_message(e), 'toRecipients')))}</td>"
            f"<td>{len(_message(e).get('attachments') or [])}</td><td>{esc(e.get('receivedAt', ''))}</td></tr>"
            for i, e in reversed(entries)
        )
        table = (
            "<table><tr><th>Subject</th><th>From</th><th>To</th><th>Attachments</th><th>Accepted</th></tr>"
            f"{rows}</table>"
            if rows
            else "<p>No mail yet. Send one: <code>mailrelay send --from alerts@contoso.com --to you@contoso.com "
            "--subject Hello --text Hi</code></p>"
        )
        return self._page(f"Outbox ({len(entries)})", table, refresh=3)

    def _message_page(self, index: int) -> tuple[int, str, str | None]:
        entries = self._outbox()
        if index >= len(entries):
            return 404, self._page("Not found", "<p>No such message.</p>"), None
        entry = entries[index]
        message = _message(entry)
        body = message.get("body") or {}
        fields = [
            ("From", entry.get("sender")),
            ("To", ", ".join(_addresses(message, "toRecipients"))),
            ("Cc", ", ".join(_addresses(message, "ccRecipients"))),
            ("Bcc", ", ".join(_addresses(message, "bccRecipients"))),
            ("Reply-To", ", ".join(_addresses(message, "replyTo"))),
            ("Importance", message.get("importance") or "normal"),
            (
                "Headers",
                ", ".join(f"{h.get('name')}: {h.get('value')}" for h in message.get("internetMessageHeaders") or []),
            ),
            ("Accepted", entry.get("receivedAt")),
        ]
        table = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in fields if v)
        if str(body.get("contentType", "")).lower() == "html":
            shown = f'<iframe sandbox="" title="message body" src="/frame/{index}"></iframe>'
        else:
            shown = f"<pre>{esc(body.get('content', ''))}</pre>"
        # The outbox's summary of what arrived (sendMail's or an uploaded draft's): size, SHA-256, inline or not.
        attachments = "".join(
            f"<li>{esc(a.get('name'))} ({esc(a.get('contentType'))}, {a.get('size')} bytes"
            f"{', inline as cid:' + esc(a.get('contentId')) if a.get('isInline') else ''}; "
            f"SHA-256 <code>{esc(a.get('sha256'))}</code>)</li>"
            for a in entry.get("attachments") or []
        )
        content = f"<table>{table}</table><h3>Body</h3>{shown}" + (
            f"<h3>Attachments</h3><ul>{attachments}</ul>" if attachments else ""
        )
        return 200, self._page(str(message.get("subject") or "(no subject)"), content), None

    def _frame(self, index: int) -> tuple[int, str, str | None]:
        """The HTML body alone, served under FRAME_CSP and shown only inside the sandboxed frame."""
        entries = self._outbox()
        if index >= len(entries):
            return 404, "", None
        return 200, str((_message(entries[index]).get("body") or {}).get("content", "")), None

    def _dead_letters_page(self) -> str:
        letters = self._dead_letters().peek()
        rows = "".join(
            f"<tr><td>{esc(d.id)}</td><td>{esc(d.app)}</td>"
            f"<td><b>{esc(d.code)}</b><div class=hint>{esc(d.hint)}</div></td>"
            f"<td>{esc(d.sender or '-')}</td><td>{esc(d.attempts if d.attempts is not None else '?')}</td>"
            f'<td>{esc(d.failed_at or "-")}</td><td><form method=post action="/dead-letters/{esc(d.id)}/requeue">'
            f'<input type=hidden name=token value="{esc(self.token)}"><button>Requeue</button></form></td></tr>'
            for d in letters
        )
        table = (
            "<table><tr><th>Id</th><th>App</th><th>Code and hint</th><th>Sender</th><th>Attempts</th><th>Failed at</th>"
            "<th></th></tr>"
            f"{rows}</table>"
            if rows
            else "<p>No dead letters.</p>"
        )
        return self._page(f"Dead letters ({len(letters)})", table, refresh=5)

    def _faults_page(self) -> str:
        rows = "".join(
            f"<tr><td>{esc(f['service'])}</td><td>{esc(f['status'])}</td><td>{esc(f['remaining'])}</td>"
            f"<td>{esc(f['retryAfter'])}</td></tr>"
            for f in self._faults()
        )
        token = f'<input type=hidden name=token value="{esc(self.token)}">'
        services = "".join(
            f"<option>{s}</option>" for s in ("graph.sendMail", "entra.token", "msi.token", "keyvault.getSecret")
        )
        content = (
            "<p>The emulator answers the next calls to a service with the fault below (429 with Retry-After, a "
            "5xx outage), in order, then serves normally.</p>"
            f"<table><tr><th>Service</th><th>Status</th><th>Calls left</th><th>Retry-After</th></tr>{rows}</table>"
            f'<h3>Add a fault</h3><form method=post action="/faults">{token}<select name=service>{services}</select> '
            "status <input name=status value=429 size=4> calls <input name=count value=3 size=3> "
            "Retry-After <input name=retryAfter value=2 size=3> <button>Add</button></form> "
            f'<form method=post action="/faults/clear">{token}<button>Clear all</button></form>'
        )
        return self._page("Faults", content)


def _message(entry: Mapping[str, Any]) -> dict[str, Any]:
    posted = entry.get("message") or {}
    message = posted.get("message") if isinstance(posted, dict) else None
    return message if isinstance(message, dict) else {}


def _addresses(message: Mapping[str, Any], key: str) -> list[str]:
    out = []
    for recipient in message.get(key) or []:
        address = (recipient.get("emailAddress") or {}) if isinstance(recipient, dict) else {}
        name, mail = address.get("name"), address.get("address")
        out.append(f"{name} <{mail}>" if name else str(mail))
    return out
