"""The local web console of `mailrelay local`, as developers use Mailpit: one URL, every message rendered.

Pages (server-rendered, standard library only, no build step, nothing fetched from outside):
- `/`: the emulator's outbox, newest first, refreshed every 3 s; `/message/N`: one message, its HTML body
  rendered in a sandboxed frame (no scripts, no same origin, so a mail cannot reach the console), its inline
  images (cid:) shown from the attachments' bytes, its text body escaped, its attachments with names and sizes;
- `/status`: the delivery report of `mailrelay report` (shared/report.py: the same figures from the same records),
  the requests waiting for their sendAt, and each request's timeline; `?since=SPAN&app=NAME` as the command takes;
- `/dead-letters`: the poison queue (both forms, via shared.deadletters) with the app (whose queue the request
  came from), code, hint and attempts, and a requeue button (back to that app's queue) that says what it requeued
  and where;
- `/faults`: the emulator's queued faults (throttling, outages), to add or clear.
A mail the SMTP listener took (`mailrelay local --smtp`) says which device and app sent it, in the list and on its
page: its mark (the relay's extended property) names its status record, whose key holds the app and the request id
`smtp-<user>-<hex>` (smtp/mailrelay_smtp/intake.py), and the login `<user>` names the device.

Everything an app wrote (subjects, addresses, names, bodies, codes) is HTML-escaped; the body frame is
the only place HTML renders, and every response that carries a mail's HTML is sandboxed by its own CSP, whatever
URL reached it (a frame opened on its own is no frame, so its iframe's sandbox attribute does not apply). Every
POST carries this process's random token and must come from the console's own origin: another local page cannot
requeue or inject faults through the browser (CSRF).
Never deployed: devstack/ is in .funcignore.
"""

from __future__ import annotations

import html
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    from shared.report import Figures
    from shared.status import StatusRecord, StatusStore

# The body frame: sandbox with no allow-* keyword blocks scripts, forms, popups, meta refresh navigation and
# same-origin access. The iframe's sandbox attribute applies only inside /message/N: the CSP's `sandbox` directive
# applies to the response itself, so the body opened on its own (/frame/N in a tab, a link) is sandboxed too
# (https://developer.mozilla.org/docs/Web/HTTP/Headers/Content-Security-Policy/sandbox; CSP Level 2, "sandbox").
# It also keeps the frame from loading anything remote (a tracking pixel in a test mail should not phone home from
# a developer's machine); inline images arrive as data: URIs (`inline_images`).
FRAME_CSP = "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; sandbox"
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; form-action 'self'"
STYLE = (
    "body{font:14px system-ui,sans-serif;margin:0;color:#222}header{background:#1f3a5f;color:#fff;padding:8px 16px}"
    "header a{color:#fff;margin-right:16px}main{padding:16px}table{border-collapse:collapse;width:100%}"
    "td,th{border-bottom:1px solid #ddd;padding:6px;text-align:left;vertical-align:top}"
    "iframe{width:100%;height:420px;border:1px solid #ccc}.hint{color:#555;max-width:60em}"
    "pre{white-space:pre-wrap}form{display:inline}.notice{background:#e8f3e8;border:1px solid #9c9;padding:8px}"
    ".timeline{margin:0;padding-left:1em}.timeline li{white-space:nowrap}"
)
# A scheduled request waits at most 7 days (shared/delivery.py MAX_SEND_AT_AHEAD): its record may have been written
# that long ago, before any report window; a day more covers the sendAt tolerance.
SCHEDULED_LOOKBACK = timedelta(days=8)
TIMELINES_SHOWN = 100  # the newest records of the window: a page, not an export (mailrelay status --since --json)
REQUEUES_KEPT = 20  # requeue confirmations the console remembers (one per POST, shown after its redirect)


@dataclass(frozen=True)
class Reply:
    """A response: its status, its HTML, a redirect, and its CSP (FRAME_CSP for anything that carries mail HTML)."""

    status: int
    body: str
    location: str | None = None
    csp: str = PAGE_CSP


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
        status: Callable[[], Sequence[StatusStore]] | None = None,
        queue_name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        credential: str | None = None,
        smtp_devices: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self._outbox = outbox
        self._status = status  # the status tables (status_tables): the Status page reads them
        self._queue_name = queue_name  # the outbox: requeue names the queue it put a letter back on
        self._credential = credential  # GRAPH_CREDENTIAL of the stack, shown in every page's header
        self._faults = faults
        self._smtp_devices = dict(smtp_devices or {})  # SMTP login user -> (its device's name, its app)
        # A mail's mark -> (device, app) if the listener took it, None if not: a record's key never changes, so
        # each mark is looked up once.
        self._via: dict[str, tuple[str, str] | None] = {}
        self._emulator_post = emulator_post
        self._dead_letters = dead_letters
        # What each requeue did, under a random id its redirect carries: the page after it says so, and a link made
        # elsewhere cannot make the console claim a requeue it did not do.
        self._requeued: OrderedDict[str, str] = OrderedDict()
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
        parts = urlsplit(request.path)
        path = parts.path.rstrip("/") or "/"
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        port = self._server.server_address[1]
        if request.headers.get("Host") not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            # DNS rebinding: a page of another site whose name now points at 127.0.0.1 reaches this port,
            # but its requests carry that site's Host. Only the console's own names are served.
            reply = Reply(403, self._page("Refused", "<p>Refused: unknown Host.</p>"))
        else:
            reply = self._route(request, method, path, query)
        self._respond(request, reply)

    def _route(self, request: BaseHTTPRequestHandler, method: str, path: str, query: Mapping[str, str]) -> Reply:
        try:
            if method == "POST":
                return self._post(request, path)
            return self._get(path, query)
        except Exception as exc:  # a page must say what failed (Azurite stopped, say), not drop the socket
            return Reply(500, self._page("Error", f"<p>{esc(type(exc).__name__)}: {esc(exc)}</p>"))

    def _respond(self, request: BaseHTTPRequestHandler, reply: Reply) -> None:
        request.send_response(reply.status)
        if reply.location:
            request.send_header("Location", reply.location)
        # Chosen by what the response carries, not by its URL: a mail's HTML is sandboxed whatever path reached it.
        request.send_header("Content-Security-Policy", reply.csp)
        request.send_header("X-Content-Type-Options", "nosniff")
        # same-origin, not no-referrer: under no-referrer browsers post forms with "Origin: null", which the
        # CSRF check must refuse; same-origin keeps the URL from other sites and the Origin for our own.
        request.send_header("Referrer-Policy", "same-origin")
        request.send_header("Content-Type", "text/html; charset=utf-8")
        data = reply.body.encode("utf-8", "replace")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _get(self, path: str, query: Mapping[str, str]) -> Reply:
        parts = path.strip("/").split("/")
        if path == "/":
            return Reply(200, self._outbox_page())
        if parts[0] == "message" and len(parts) == 2 and parts[1].isdigit():
            return self._message_page(int(parts[1]))
        if parts[0] == "frame" and len(parts) == 2 and parts[1].isdigit():
            return self._frame(int(parts[1]))
        if path == "/status":
            return self._status_page(query)
        if path == "/dead-letters":
            return Reply(200, self._dead_letters_page(query.get("requeued")))
        if path == "/faults":
            return Reply(200, self._faults_page())
        return Reply(404, self._page("Not found", "<p>No such page.</p>"))

    def _post(self, request: BaseHTTPRequestHandler, path: str) -> Reply:
        length = int(request.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(request.rfile.read(min(length, 65536)).decode("utf-8", "replace")).items()}
        origin = request.headers.get("Origin")
        # A form posted from another site carries that site's Origin (or none, with the wrong token).
        same_origin = origin is None or origin.rstrip("/") == self.url.rstrip("/")
        if not same_origin or not secrets.compare_digest(form.get("token", ""), self.token):
            return Reply(403, self._page("Refused", "<p>Refused: this form did not come from the console.</p>"))
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "dead-letters" and parts[2] == "requeue":
            return self._requeue(unquote(parts[1]))
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
            return Reply(303, "", "/faults")
        if path == "/faults/clear":
            self._emulator_post("faults-clear", {})
            return Reply(303, "", "/faults")
        return Reply(404, self._page("Not found", "<p>No such action.</p>"))

    def _requeue(self, letter_id: str) -> Reply:
        """Requeue one dead letter, then show the dead letters with what was requeued, onto which queue, as which
        message, and how to follow it; a letter that cannot be requeued says why, on the same page."""
        from shared.apps import app_queue
        from shared.deadletters import DeadLetterNotFound, NotRequeueable

        queue = self._dead_letters()
        letter = next((d for d in queue.peek() if d.id == letter_id), None)
        try:
            done = queue.requeue(letter_id)
        except (DeadLetterNotFound, NotRequeueable) as exc:
            notice = f"<p class=notice><b>Not requeued:</b> {esc(exc)}</p>"
        else:
            target = app_queue(self._queue_name, done.app) if self._queue_name else f"app {done.app}'s queue"
            request_id = letter.request.get("id") if letter and isinstance(letter.request, dict) else None
            key = request_id if isinstance(request_id, str) else done.message_id
            what = f" ({esc(letter.code)} from {esc(letter.sender or '-')})" if letter else ""
            notice = (
                f"<p class=notice><b>Requeued</b> dead letter <code>{esc(done.dead_letter_id)}</code>{what} of app "
                f"<b>{esc(done.app)}</b> onto queue <b>{esc(target)}</b> as message <code>{esc(done.message_id)}</code>"
                f'. The relay tries it again now: follow it on the <a href="/status">Status</a> page or with '
                f"<code>mailrelay status {esc(key)}</code>.</p>"
            )
        ref = secrets.token_urlsafe(9)
        self._requeued[ref] = notice
        while len(self._requeued) > REQUEUES_KEPT:
            self._requeued.popitem(last=False)
        return Reply(303, "", "/dead-letters?" + urlencode({"requeued": ref}))

    # --- pages -----------------------------------------------------------------------------------

    def _page(self, title: str, content: str, refresh: int | None = None) -> str:
        meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
        return (
            f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{esc(title)} · mailrelay local</title>'
            f"<style>{STYLE}</style></head><body><header><b>mailrelay local</b> &nbsp; "
            '<a href="/">Outbox</a><a href="/status">Status</a><a href="/dead-letters">Dead letters</a>'
            '<a href="/faults">Faults</a>'
            + (f"<span>credential: {esc(self._credential)}</span>" if self._credential else "")
            + "</header>"
            f"<main><h2>{esc(title)}</h2>{content}</main></body></html>"
        )

    def _via_smtp(self, entries: Sequence[Mapping[str, Any]]) -> list[tuple[str, str] | None]:
        """For each outbox entry, (device, app) when the SMTP listener took it, else None. Reads the status records
        changed since the oldest entry not yet known (its record was written before Graph took it), once."""
        marks = [_mark(e) for e in entries]
        if not self._smtp_devices or self._status is None:
            return [None] * len(entries)
        unknown = [e for e, m in zip(entries, marks, strict=True) if m is not None and m not in self._via]
        if unknown:
            from shared.status import StatusKey

            oldest = min(_received_at(e) for e in unknown) - timedelta(minutes=5)  # a margin for clock steps
            found: dict[str, tuple[str, str]] = {}
            try:
                for store in self._status():
                    for record in store.since(oldest):
                        key: StatusKey = record.key
                        user = _smtp_user(key.value) if key.kind == "id" else None
                        device, app = self._smtp_devices.get(user or "", ("", ""))
                        # Only on the login's own app's queue: any app can choose an id like `smtp-printers-1`, but
                        # only the listener (or printers' own principals) writes to printers' queue.
                        if device and app == key.app:
                            found[key.mark] = (device, key.app)
            except Exception:
                # Storage stopped (a test of the relay's own, say): the outbox is the emulator's and still shows;
                # the notes come back on a later read, since nothing was learnt from this one.
                return [None] * len(entries)
            for entry in unknown:
                mark = _mark(entry)
                assert mark is not None
                self._via[mark] = found.get(mark)
        return [self._via.get(m) if m is not None else None for m in marks]

    def _outbox_page(self) -> str:
        outbox = self._outbox()
        via = self._via_smtp(outbox)
        entries = list(enumerate(outbox))
        rows = "".join(
            f'<tr><td><a href="/message/{i}">{esc(_message(e).get("subject") or "(no subject)")}</a></td>'
            f"<td>{esc(e.get('sender'))}{_via_note(via[i])}</td>"
            f"<td>{esc(', '.join(_addresses(_message(e), 'toRecipients')))}</td>"
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

    def _message_page(self, index: int) -> Reply:
        entries = self._outbox()
        if index >= len(entries):
            return Reply(404, self._page("Not found", "<p>No such message.</p>"))
        entry = entries[index]
        message = _message(entry)
        body = message.get("body") or {}
        (via,) = self._via_smtp([entry])
        fields = [
            ("From", entry.get("sender")),
            ("Sent by", f"via SMTP: {via[0]} (app: {via[1]})" if via else None),
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
        shown_inline = inline_images(message)
        attachments = "".join(
            f"<li>{esc(a.get('name'))} ({esc(a.get('contentType'))}, {a.get('size')} bytes"
            f"{_inline_note(a, shown_inline) if a.get('isInline') else ''}; "
            f"SHA-256 <code>{esc(a.get('sha256'))}</code>)</li>"
            for a in entry.get("attachments") or []
        )
        content = f"<table>{table}</table><h3>Body</h3>{shown}" + (
            f"<h3>Attachments</h3><ul>{attachments}</ul>" if attachments else ""
        )
        return Reply(200, self._page(str(message.get("subject") or "(no subject)"), content))

    def _frame(self, index: int) -> Reply:
        """The HTML body alone, its cid: images as data: URIs, always under FRAME_CSP (sandboxed), whether it is
        shown inside the message page's frame or opened on its own."""
        entries = self._outbox()
        if index >= len(entries):
            return Reply(404, "", csp=FRAME_CSP)
        message = _message(entries[index])
        content = str((message.get("body") or {}).get("content", ""))
        return Reply(200, with_inline_images(content, inline_images(message)), csp=FRAME_CSP)

    def _dead_letters_page(self, requeued: str | None = None) -> str:
        letters = self._dead_letters().peek()
        rows = "".join(
            f"<tr><td>{esc(d.key)}</td><td>{esc(d.app)}</td>"
            f"<td><b>{esc(d.code)}</b><div class=hint>{esc(d.hint)}</div></td>"
            f"<td>{esc(d.sender or '-')}</td><td>{esc(d.attempts if d.attempts is not None else '?')}</td>"
            f'<td>{esc(d.failed_at or "-")}</td><td><form method=post action="/dead-letters/{esc(d.id)}/requeue">'
            f'<input type=hidden name=token value="{esc(self.token)}"><button>Requeue</button></form></td></tr>'
            for d in letters
        )
        table = (
            "<table><tr><th>Key</th><th>App</th><th>Code and hint</th><th>Sender</th><th>Attempts</th>"
            "<th>Failed at</th><th></th></tr>"
            f"{rows}</table>"
            if rows
            else "<p>No dead letters.</p>"
        )
        notice = self._requeued.get(requeued or "", "")
        # No refresh under a notice: it would reload the page away from what the operator just did.
        return self._page(f"Dead letters ({len(letters)})", notice + table, refresh=None if notice else 5)

    # --- the Status page -------------------------------------------------------------------------

    def _status_page(self, query: Mapping[str, str]) -> Reply:
        """`mailrelay report`'s figures (shared/report.py, from the same records), the requests waiting for their
        sendAt, and each request's timeline."""
        from shared.apps import is_app_name
        from shared.cli.common import UsageError
        from shared.cli.report import DEFAULT_SPAN
        from shared.cli.status import parse_span
        from shared.report import build, timeline, waiting_scheduled

        if self._status is None:
            return Reply(200, self._page("Status", "<p>This console was started without the status tables.</p>"))
        span_text = query.get("since") or DEFAULT_SPAN
        app = query.get("app") or None
        try:
            span = parse_span(span_text)
        except UsageError as exc:
            return Reply(400, self._page("Status", f"<p>{esc(exc)}</p>" + _status_form(span_text, app)))
        if app is not None and not is_app_name(app):
            problem = f"<p>{esc(app[:40])!s} is not an app's name, nor default (the outbox).</p>"
            return Reply(400, self._page("Status", problem + _status_form(span_text, app)))
        until = datetime.now(UTC)
        since = until - span
        stores = self._status()
        records = [r for store in stores for r in store.since(since)]
        made = build(records, since, until, app)
        held = [r for store in stores for r in store.since(until - SCHEDULED_LOOKBACK, "scheduled")]
        scheduled = waiting_scheduled(r for r in held if app is None or r.key.app == app)
        chosen = sorted((r for r in records if app is None or r.key.app == app), key=lambda r: r.updated_at)
        newest = list(reversed(chosen))[:TIMELINES_SHOWN]
        content = (
            _status_form(span_text, app)
            + f"<p>Requests{' of app ' + esc(app) if app else ''} changed from {_when(made.since)} to "
            f"{_when(made.until)} UTC: the figures of <code>mailrelay report --since {esc(span_text)}"
            f"{' --app ' + esc(app) if app else ''}</code>.</p>"
            + _figures_table(made.rows, made.total)
            + _dead_codes(made.rows)
            + _untimed_note(made.total.latency.from_created_at)
            + f"<h3>Scheduled ({len(scheduled)})</h3>"
            + _scheduled_table(scheduled)
            + f"<h3>Requests ({len(chosen)}{f', the newest {len(newest)}' if len(newest) < len(chosen) else ''})</h3>"
            + _timelines_table(newest, timeline)
        )
        return Reply(200, self._page("Status", content, refresh=10))

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


def status_tables(connection_string: str, queue_name: str) -> Callable[[], list[StatusStore]]:
    """The status tables of a storage account, as `mailrelay report` reads them (shared/cli/status.py
    status_stores: `mailstatus` and each app's), listed again on each read (an app's table appears on its first
    record)."""

    def stores() -> list[StatusStore]:
        from shared.cli.common import Connection
        from shared.cli.status import status_stores

        return status_stores(Connection(queue_name, connection_string=connection_string), None)

    return stores


# --- Inline images ---------------------------------------------------------------------------------------

# A cid: URL (RFC 2392): the scheme, then the Content-ID, URL-encoded, up to what ends an attribute value or a CSS
# url(); the body may quote it with either quote, or none.
_CID = re.compile(r"cid:([^\s\"'<>()]+)", re.IGNORECASE)
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$", re.IGNORECASE)
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def inline_images(message: Mapping[str, Any]) -> dict[str, str]:
    """The data: URI of each inline attachment (isInline, with a contentId) whose bytes the emulator kept, by its
    Content-ID. The outbox keeps the bytes of small attachments only (devstack/emulator/graph.py OUTBOX_KEPT_BYTES):
    a larger image has none, and its cid: stays as it is (the message page says why it is not shown)."""
    found: dict[str, str] = {}
    for attachment in message.get("attachments") or []:
        if not isinstance(attachment, dict) or not attachment.get("isInline"):
            continue
        content_id, data = attachment.get("contentId"), attachment.get("contentBytes")
        if not isinstance(content_id, str) or not isinstance(data, str) or not _BASE64.match(data):
            continue
        media = str(attachment.get("contentType") or "")
        # The type goes into the URI as written: only a plain type/subtype, so an app cannot add parameters or
        # quotes; an image is an <img>'s, whatever its type says, and never runs in one.
        media = media if _MEDIA_TYPE.match(media) else "application/octet-stream"
        found[_content_id(content_id)] = f"data:{media};base64,{data}"
    return found


def with_inline_images(content: str, images: Mapping[str, str]) -> str:
    """`content` with each cid: reference to a known inline image replaced by its data: URI."""
    if not images:
        return content

    def swap(match: re.Match[str]) -> str:
        return images.get(_content_id(unquote(match[1])), match[0])

    return _CID.sub(swap, content)


def _content_id(value: str) -> str:
    # Compared as Graph and mail clients compare them: without the angle brackets of the MIME header, any case.
    return value.strip().strip("<>").lower()


def _inline_note(attachment: Mapping[str, Any], shown: Mapping[str, str]) -> str:
    content_id = str(attachment.get("contentId") or "")
    if _content_id(content_id) in shown:
        return f", inline as cid:{esc(content_id)}, shown in the body"
    return (
        f", inline as cid:{esc(content_id)}, not shown: the emulator keeps the bytes of attachments up to 64 KiB only"
    )


# --- Status page parts -------------------------------------------------------------------------------

_FIGURES = ("requests", "sent", "deadLettered", "retried", "paced", "unknown", "inFlight")


def _when(value: datetime | None) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if value else "-"


def _status_form(span: str, app: str | None) -> str:
    return (
        '<form method=get action="/status">since <input name=since size=5 '
        f'value="{esc(span)}"> app <input name=app size=16 value="{esc(app or "")}" placeholder="all"> '
        "<button>Show</button></form>"
    )


def _figure_values(f: Figures) -> dict[str, int]:
    return {
        "requests": f.requests,
        "sent": f.sent,
        "deadLettered": f.dead_lettered_total,
        "retried": f.retried,
        "paced": f.paced,
        "unknown": f.unknown,
        "inFlight": f.requests - f.sent - f.dead_lettered_total,
    }


def _figures_table(rows: Sequence[Figures], total: Figures) -> str:
    """The report's rows, each cell named (data-figure) so that a test reads it as `mailrelay report --json`."""
    from shared.report import duration

    if not rows:
        return "<p>No requests in this window.</p>"
    heads = "".join(
        f"<th>{h}</th>"
        for h in (
            "App",
            "Sender",
            "Requests",
            "Sent",
            "Dead-lettered",
            "Retried",
            "Paced",
            "Unknown",
            "In flight",
            "p50",
            "p95",
        )
    )
    body = ""
    for f in (*rows, total):
        values = _figure_values(f)
        cells = "".join(f'<td data-figure="{name}">{values[name]}</td>' for name in _FIGURES)
        latency = "".join(
            f'<td data-figure="{name}" data-seconds="{"" if value is None else repr(value)}">{duration(value)}</td>'
            for name, value in (("p50", f.latency.p50), ("p95", f.latency.p95))
        )
        who = (
            f'<tr data-app="{esc(f.app)}" data-sender="{esc(f.sender)}"><td>{esc(f.app)}</td><td>{esc(f.sender)}</td>'
            if f.app is not None
            else '<tr data-total="1"><td><b>all</b></td><td></td>'
        )
        body += f"{who}{cells}{latency}</tr>"
    return f"<table id=figures><tr>{heads}</tr>{body}</table>"


def _dead_codes(rows: Sequence[Figures]) -> str:
    lines = "".join(
        f'<tr data-app="{esc(f.app)}" data-sender="{esc(f.sender)}" data-code="{esc(code)}"><td>{esc(f.app)}</td>'
        f"<td>{esc(f.sender)}</td><td><b>{esc(code)}</b></td><td data-figure=count>{n}</td></tr>"
        for f in rows
        for code, n in f.dead_lettered.items()
    )
    if not lines:
        return ""
    return (
        "<h3>Dead-lettered by code</h3><table id=dead-codes><tr><th>App</th><th>Sender</th><th>Code</th>"
        f"<th>Requests</th></tr>{lines}</table>"
    )


def _untimed_note(count: int) -> str:
    if not count:
        return ""
    return (
        f"<p class=hint>{count} sent request{' has' if count == 1 else 's have'} no enqueuedAt (written before the "
        "relay kept it): timed from when the relay first saw it (createdAt).</p>"
    )


def _scheduled_table(records: Sequence[StatusRecord]) -> str:
    if not records:
        return "<p>No request waits for its sendAt.</p>"
    rows = "".join(
        f'<tr data-key="{esc(r.key.value)}"><td>{esc(r.key.app)}</td><td>{esc(r.key.sender)}</td>'
        f"<td>{esc(r.key.value)}</td><td>{_when(r.not_before)}</td><td>{_when(r.enqueued_at or r.created_at)}</td></tr>"
        for r in records
    )
    return (
        "<table id=scheduled><tr><th>App</th><th>Sender</th><th>Key</th><th>Sends at (UTC)</th><th>Enqueued</th></tr>"
        f"{rows}</table>"
    )


def _timelines_table(
    records: Sequence[StatusRecord], timeline: Callable[[StatusRecord], list[tuple[str, datetime]]]
) -> str:
    if not records:
        return "<p>No requests in this window.</p>"
    rows = []
    for r in records:
        steps = "".join(f"<li>{esc(name)} {_when(when)}</li>" for name, when in timeline(r))
        error = (
            f"<b>{esc(r.last_error_code)}</b><div class=hint>{esc(r.last_error_hint or '')}</div>"
            if r.last_error_code
            else ""
        )
        if r.resolution:
            error += f"<div class=hint>unknown outcome: {esc(r.resolution)}</div>"
        rows.append(
            f'<tr data-key="{esc(r.key.value)}" data-state="{esc(r.state)}"><td>{esc(r.key.app)}</td>'
            f"<td>{esc(r.key.sender)}</td><td>{esc(r.key.value)}</td><td>{esc(r.state)}</td>"
            f"<td>{r.attempts}{f' (paced {r.paced})' if r.paced else ''}</td>"
            f"<td><ul class=timeline>{steps}</ul></td><td>{error}</td></tr>"
        )
    return (
        "<table id=requests><tr><th>App</th><th>Sender</th><th>Key</th><th>State</th><th>Attempts</th>"
        f"<th>Timeline (UTC)</th><th>Last error and hint</th></tr>{''.join(rows)}</table>"
    )


def _mark(entry: Mapping[str, Any]) -> str | None:
    """The relay's mark on a mail (shared/status.py MARK_PROPERTY_ID), as the emulator kept it; None if unmarked."""
    from shared.status import MARK_PROPERTY_ID

    for prop in _message(entry).get("singleValueExtendedProperties") or []:
        if isinstance(prop, dict) and str(prop.get("id", "")).lower() == MARK_PROPERTY_ID.lower():
            value = prop.get("value")
            return value if isinstance(value, str) else None
    return None


def _received_at(entry: Mapping[str, Any]) -> datetime:
    try:
        when = datetime.fromisoformat(str(entry.get("receivedAt")))
    except ValueError:
        return datetime.now(UTC) - SCHEDULED_LOOKBACK
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _smtp_user(request_id: str) -> str | None:
    """The login in a listener's request id, `smtp-<user>-<hex>` (a user may hold dashes; the hex holds none)."""
    if not request_id.startswith("smtp-"):
        return None
    user, sep, _ = request_id[len("smtp-") :].rpartition("-")
    return user if sep and user else None


def _via_note(via: tuple[str, str] | None) -> str:
    if via is None:
        return ""
    device, app = via
    shown = f"via SMTP: {esc(device)} (app: {esc(app)})"
    return f'<div class=hint data-device="{esc(device)}" data-app="{esc(app)}">{shown}</div>'


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
