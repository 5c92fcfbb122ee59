"""The local web console: routes (escaping, the sandboxed body, CSRF), then a real browser end to end.

The browser is Debian's Chromium (`apt-get install chromium`; .ci/run installs it) driven by Playwright for
Python with `executable_path`: Playwright's own browser download cannot run here and is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from mailrelay_client import MailClient

from devstack.console import Console
from devstack.stack import LocalStack, start_console
from shared.deadletters import DeadLetter, NotRequeueable, Requeued

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ROOT = Path(__file__).resolve().parents[2]
IN_SCOPE = "alerts@contoso.com"
OUT_OF_SCOPE = "hr@contoso.com"
# A 1x1 PNG: an inline image a browser can decode (naturalWidth 1), small enough for the emulator to keep its bytes.
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack([IN_SCOPE, OUT_OF_SCOPE], [IN_SCOPE], [OUT_OF_SCOPE], lease_seconds=5) as running:
        yield running


@pytest.fixture
def console(stack: LocalStack) -> Iterator[object]:
    started = start_console(stack)
    yield started
    started.stop()


def send(stack: LocalStack, sender: str, subject: str, html: str, **fields: Any) -> str:
    client = MailClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
    return client.send(
        {
            "from": sender,
            "to": ["Ada <ada@contoso.com>"],
            "subject": subject,
            "body": {"contentType": "html", "content": html},
            **fields,
        }
    )


def inline_logo(content_id: str = "logo@contoso") -> dict[str, Any]:
    return {
        "name": "logo.png",
        "contentType": "image/png",
        "contentBytes": PIXEL,
        "isInline": True,
        "contentId": content_id,
    }


def alone(outbox: list[dict[str, Any]] | None = None, dead_letters: Any = None, **kwargs: Any) -> Console:
    """The console over fakes, no stack: what a route does with what it is given."""
    return Console(
        outbox=lambda: outbox or [],
        faults=list,
        emulator_post=lambda *_: None,
        dead_letters=lambda: dead_letters,
        **kwargs,
    ).start()


def outbox_entry(html: str, attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An entry as the emulator's outbox holds it: the posted sendMail body, and its attachments' summary."""
    attached = attachments or []
    return {
        "sender": IN_SCOPE,
        "message": {
            "message": {
                "subject": "s",
                "body": {"contentType": "html", "content": html},
                "attachments": [{"@odata.type": "#microsoft.graph.fileAttachment", **a} for a in attached],
            }
        },
        "attachments": [
            {
                "name": a["name"],
                "contentType": a["contentType"],
                "size": 1,
                "sha256": "x",
                "isInline": True,
                "contentId": a["contentId"],
            }
            for a in attached
        ],
    }


def wait(condition: object, what: str, timeout: float = 20) -> None:
    from tests.e2e.conftest import wait_for

    wait_for(condition, timeout, what)  # type: ignore[arg-type]


def test_hostile_content_is_escaped_and_the_body_renders_only_in_the_sandbox(
    stack: LocalStack, console: object
) -> None:
    url = console.url  # type: ignore[attr-defined]
    send(stack, IN_SCOPE, "<script>alert(1)</script> hostile", "<p id=body>hello</p><script>parent.x=1</script>")
    wait(lambda: "hostile" in requests.get(url, timeout=5).text, "the message in the outbox")
    page = requests.get(url, timeout=5)
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    index = len(stack.emulator_get("outbox")) - 1
    message = requests.get(f"{url}message/{index}", timeout=5).text
    assert f'<iframe sandbox="" title="message body" src="/frame/{index}">' in message
    frame = requests.get(f"{url}frame/{index}", timeout=5)
    assert "<p id=body>hello</p>" in frame.text  # raw HTML only here, under the frame's own CSP
    assert frame.headers["Content-Security-Policy"].startswith("default-src 'none'; img-src data: cid:")
    assert "sandbox" in csp_directives(frame.headers["Content-Security-Policy"])


def csp_directives(policy: str) -> dict[str, str]:
    pairs = (part.strip().partition(" ") for part in policy.split(";") if part.strip())
    return {name.lower(): value for name, _, value in pairs}


# --- Issue 21, item 5: the console's defects ------------------------------------------------------------------


def test_a_frame_opened_on_its_own_is_sandboxed_whatever_url_reaches_it() -> None:
    """Opened directly, /frame/N is a page of the console's origin, not a sandboxed iframe: its CSP must sandbox it,
    or a mail's meta refresh navigates the tab and its form posts."""
    hostile = '<meta http-equiv="refresh" content="0;url=https://evil.test/"><form action="/faults" method=post>'
    console = alone([outbox_entry(hostile)])
    try:
        for path in ("frame/0", "frame/0/", "/frame/0?x=1"):
            reply = requests.get(console.url + path, timeout=5)
            assert reply.status_code == 200 and hostile in reply.text
            directives = csp_directives(reply.headers["Content-Security-Policy"])
            assert directives.get("sandbox") == "", (path, directives)  # no allow-* keyword: scripts, forms, top off
            assert directives["default-src"] == "'none'"
        missing = requests.get(console.url + "frame/9", timeout=5)
        assert missing.status_code == 404 and "sandbox" in csp_directives(missing.headers["Content-Security-Policy"])
        page = requests.get(console.url + "message/0", timeout=5)  # the console's own page: escaped, no sandbox
        assert hostile not in page.text and "sandbox" not in csp_directives(page.headers["Content-Security-Policy"])
    finally:
        console.stop()


def test_an_inline_image_is_shown_from_its_attachments_bytes() -> None:
    html = '<p>Hi</p><img src="cid:logo@contoso" alt=logo><div style="background:url(CID:%3Clogo@contoso%3E)"></div>'
    kept = outbox_entry(html, [inline_logo()])
    large = outbox_entry('<img src="cid:big">', [{**inline_logo("big"), "contentBytes": None}])  # bytes not kept
    console = alone([kept, large])
    try:
        frame = requests.get(console.url + "frame/0", timeout=5).text
        data_uri = f"data:image/png;base64,{PIXEL}"
        assert f'<img src="{data_uri}" alt=logo>' in frame and f"url({data_uri})" in frame and "cid:" not in frame
        assert requests.get(console.url + "frame/1", timeout=5).text == '<img src="cid:big">'
        assert "shown in the body" in requests.get(console.url + "message/0", timeout=5).text
        assert "not shown: the emulator keeps the bytes" in requests.get(console.url + "message/1", timeout=5).text
    finally:
        console.stop()


def test_an_inline_attachment_cannot_write_into_the_frames_markup() -> None:
    hostile = {**inline_logo(), "contentType": 'image/png" onerror="alert(1)', "contentBytes": 'AAAA" x="'}
    typed = {**inline_logo("typed"), "contentType": 'text/html;charset="x"'}
    console = alone([outbox_entry('<img src="cid:logo@contoso"><img src="cid:typed">', [hostile, typed])])
    try:
        frame = requests.get(console.url + "frame/0", timeout=5).text
        assert 'src="cid:logo@contoso"' in frame  # bytes that are not base64: not inlined
        assert f'src="data:application/octet-stream;base64,{PIXEL}"' in frame  # a type with parameters: not trusted
    finally:
        console.stop()


class FakeDeadLetters:
    def __init__(self) -> None:
        self.letters = [
            DeadLetter(
                "dl-1",
                "envelope",
                "ErrorAccessDenied",
                "denied",
                "fix the scope",
                {"id": "payslip-7", "from": OUT_OF_SCOPE},
                app="billing",
            ),
            DeadLetter("dl-2", "raw", "Unreadable", "", "", "not json"),
        ]

    def peek(self) -> list[DeadLetter]:
        return list(self.letters)

    def requeue(self, letter_id: str) -> Requeued:
        if letter_id == "dl-2":
            raise NotRequeueable("dead letter dl-2 holds no JSON request (Unreadable): there is nothing to send")
        self.letters = [d for d in self.letters if d.id != letter_id]
        return Requeued(letter_id, "new-message-9", "billing")


def test_dead_letters_are_listed_by_the_key_send_printed() -> None:
    """mailrelay send prints a request's key (its id) and dead-letters list shows it: the console's page too, not
    the poison message's own id."""
    console = alone(dead_letters=FakeDeadLetters(), queue_name="mail-outbox")
    try:
        page = requests.get(console.url + "dead-letters", timeout=5).text
        assert "<th>Key</th>" in page and "<td>payslip-7</td>" in page and "<td>dl-1</td>" not in page
    finally:
        console.stop()


def test_requeue_says_what_it_requeued_and_where() -> None:
    console = alone(dead_letters=FakeDeadLetters(), queue_name="mail-outbox")
    try:
        post = requests.post(
            console.url + "dead-letters/dl-1/requeue", data={"token": console.token}, timeout=5, allow_redirects=False
        )
        assert post.status_code == 303 and post.headers["Location"].startswith("/dead-letters?requeued=")
        page = requests.get(console.url + post.headers["Location"].lstrip("/"), timeout=5).text
        assert "<b>Requeued</b> dead letter <code>dl-1</code> (ErrorAccessDenied from hr@contoso.com) of app " in page
        assert "onto queue <b>mail-outbox-billing</b> as message <code>new-message-9</code>" in page
        assert "<code>mailrelay status payslip-7</code>" in page
        refused = requests.post(console.url + "dead-letters/dl-2/requeue", data={"token": console.token}, timeout=5)
        assert "<b>Not requeued:</b> dead letter dl-2 holds no JSON request" in refused.text  # followed the redirect
        forged = requests.get(console.url + "dead-letters?requeued=anything", timeout=5).text
        assert "Requeued</b>" not in forged and "Not requeued" not in forged  # only what this console did
    finally:
        console.stop()


def test_a_request_for_another_host_name_is_refused(console: object) -> None:
    url = console.url  # type: ignore[attr-defined]
    assert requests.get(url, headers={"Host": "rebound.example:80"}, timeout=5).status_code == 403  # DNS rebinding
    assert requests.get(url, timeout=5).status_code == 200


def test_a_post_without_the_token_or_from_another_origin_is_refused(stack: LocalStack, console: object) -> None:
    url = console.url  # type: ignore[attr-defined]
    token = console.token  # type: ignore[attr-defined]
    before = len(stack.emulator_get("faults"))
    assert requests.post(f"{url}faults", data={"status": "503"}, timeout=5).status_code == 403
    evil = requests.post(
        f"{url}faults",
        data={"status": "503", "token": token},
        headers={"Origin": "http://evil.test"},
        timeout=5,
        allow_redirects=False,
    )
    assert evil.status_code == 403 and len(stack.emulator_get("faults")) == before
    ok = requests.post(
        f"{url}faults", data={"status": "503", "count": "1", "token": token}, timeout=5, allow_redirects=False
    )
    assert ok.status_code == 303 and len(stack.emulator_get("faults")) == before + 1
    requests.post(f"{url}faults/clear", data={"token": token}, timeout=5)
    assert stack.emulator_get("faults") == []


# --- Issue 21, item 4: the Status page and `mailrelay report` -------------------------------------------------


class Figures(HTMLParser):
    """The Status page's figures table, as `mailrelay report --json` names them: (app, sender) or "total" to each
    figure's text, and the percentiles' seconds (data-seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[Any, dict[str, str]] = {}
        self._in_table = False
        self._row: dict[str, str] | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._in_table = a.get("id") == "figures"
        elif self._in_table and tag == "tr" and ("data-app" in a or "data-total" in a):
            self._row = self.rows.setdefault("total" if "data-total" in a else (a["data-app"], a["data-sender"]), {})
        elif self._row is not None and tag == "td" and a.get("data-figure"):
            self._cell = str(a["data-figure"])
            self._row[self._cell] = ""
            if "data-seconds" in a:
                self._row[self._cell + "Seconds"] = a["data-seconds"] or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._in_table = False

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._cell is not None:
            self._row[self._cell] += data


def as_page_shows(figures: dict[str, Any]) -> dict[str, str]:
    """A row of `mailrelay report --json` as the page's cells hold it."""
    counted = {name: str(figures[name]) for name in ("requests", "sent", "deadLettered", "retried", "paced", "unknown")}
    counted["inFlight"] = str(figures["requests"] - figures["sent"] - figures["deadLettered"])
    for name in ("p50", "p95"):
        seconds = figures["enqueueToSent"][f"{name}Seconds"]
        counted[f"{name}Seconds"] = "" if seconds is None else repr(float(seconds))
    return counted


def test_the_status_page_and_mailrelay_report_agree_on_one_run(stack: LocalStack, console: object) -> None:
    from azure.storage.queue import QueueClient

    from devstack.console import status_tables
    from shared.queues import encode
    from shared.report import build
    from shared.status import DEAD_LETTERED, SCHEDULED, SENT, StatusKey

    url = console.url  # type: ignore[attr-defined]
    stack.set_exchange_scope(OUT_OF_SCOPE, False)  # another test of this module may have put it in scope
    tag = uuid.uuid4().hex[:8]
    sent_id, dead_id, later_id = f"sent-{tag}", f"dead-{tag}", f"later-{tag}"
    send(stack, IN_SCOPE, "Report: sent", '<img src="cid:logo@contoso">', id=sent_id, attachments=[inline_logo()])
    send(stack, OUT_OF_SCOPE, "Report: dead", "<p>x</p>", id=dead_id)
    # Enqueued visible, as any client that does not hide a scheduled request does: the relay records it scheduled.
    send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="seconds").replace("+00:00", "Z")
    scheduled = {
        "id": later_id,
        "from": IN_SCOPE,
        "to": ["ada@contoso.com"],
        "subject": "Report: later",
        "body": {"contentType": "text", "content": "later"},
        "sendAt": send_at,
    }
    QueueClient.from_connection_string(stack.storage_connection_string, stack.queue_name).send_message(
        encode(scheduled)
    )
    stores = status_tables(stack.storage_connection_string, stack.queue_name)

    def state(key: str, sender: str) -> str | None:
        found = [s.get(StatusKey(sender, "id", key)) for s in stores()]
        return next((r.state for r in found if r is not None), None)

    wait(lambda: state(sent_id, IN_SCOPE) == SENT, "the sent request's record", 40)
    wait(lambda: state(dead_id, OUT_OF_SCOPE) == DEAD_LETTERED, "the dead-lettered request's record", 40)
    wait(lambda: state(later_id, IN_SCOPE) == SCHEDULED, "the scheduled request's record", 40)

    def settled() -> bool:  # nothing of this module's other tests still moving: both reads see the same records
        now = datetime.now(UTC)
        total = build([r for s in stores() for r in s.since(now - timedelta(hours=1))], now, now).total
        return total.requests == total.sent + total.dead_lettered_total + total.states[SCHEDULED]

    wait(settled, "every request sent, dead-lettered or scheduled", 60)

    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "report",
            "--json",
            "--connection-string",
            stack.storage_connection_string,
            "--queue",
            stack.queue_name,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    page = requests.get(f"{url}status", timeout=30)
    assert page.status_code == 200
    shown = Figures()
    shown.feed(page.text)

    expected = {(r["app"], r["sender"]): as_page_shows(r) for r in data["rows"]}
    expected["total"] = as_page_shows(data["total"])
    assert set(shown.rows) == set(expected)
    for row, figures in expected.items():
        assert {k: shown.rows[row][k] for k in figures} == figures, row
    mine = {(r["app"], r["sender"]): r for r in data["rows"]}
    assert mine[("default", IN_SCOPE)]["states"][SCHEDULED] >= 1 and mine[("default", IN_SCOPE)]["sent"] >= 1
    assert mine[("default", OUT_OF_SCOPE)]["deadLetteredByCode"].get("ErrorAccessDenied", 0) >= 1
    # Beside the figures: the scheduled request waiting for its time, and each request's timeline.
    assert f'<tr data-key="{later_id}"><td>default</td><td>{IN_SCOPE}</td><td>{later_id}</td>' in page.text
    assert f'<tr data-key="{sent_id}" data-state="sent">' in page.text
    assert f'<tr data-key="{dead_id}" data-state="dead-lettered">' in page.text
    assert "<li>enqueued " in page.text and "<li>sent " in page.text and "<b>ErrorAccessDenied</b>" in page.text
    # The inline image of the sent one arrived intact and renders from its bytes.
    index = next(
        i for i, e in enumerate(stack.emulator_get("outbox")) if (e["message"]["message"]["subject"] == "Report: sent")
    )
    assert f'<img src="data:image/png;base64,{PIXEL}">' in requests.get(f"{url}frame/{index}", timeout=5).text

    # The admin fixes the scope and requeues through the console: it says where the letter went, the relay sends it,
    # and no dead letter of this test is left for the next one to find.
    from shared.deadletters import open_queues

    letter = open_queues(stack.queue_name, connection_string=stack.storage_connection_string).get(dead_id)
    stack.set_exchange_scope(OUT_OF_SCOPE, True)
    try:
        token = console.token  # type: ignore[attr-defined]
        done = requests.post(f"{url}dead-letters/{letter.id}/requeue", data={"token": token}, timeout=30)
        assert f"onto queue <b>{stack.queue_name}</b> as message" in done.text
        assert f"<code>mailrelay status {dead_id}</code>" in done.text
        wait(lambda: state(dead_id, OUT_OF_SCOPE) == SENT, "the requeued request sent", 40)
    finally:
        stack.set_exchange_scope(OUT_OF_SCOPE, False)


def test_the_status_page_refuses_a_span_or_an_app_it_cannot_read(console: object) -> None:
    url = console.url  # type: ignore[attr-defined]
    bad_span = requests.get(f"{url}status?since=yesterday", timeout=10)
    assert bad_span.status_code == 400 and "--since takes a span such as 30m, 1h or 2d" in bad_span.text
    bad_app = requests.get(f"{url}status?app=%3Cb%3E", timeout=10)
    assert bad_app.status_code == 400 and "&lt;b&gt;" in bad_app.text and "<b>" not in bad_app.text.split("<main>")[1]


def test_in_a_browser_send_see_open_dead_letter_fix_and_requeue(stack: LocalStack, console: object) -> None:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is missing at {CHROMIUM}: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    url = console.url  # type: ignore[attr-defined]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            send(stack, IN_SCOPE, "Quarterly numbers", "<h1>Numbers</h1><p>All good.</p>")
            page.goto(url)
            page.get_by_text("Quarterly numbers").first.wait_for(timeout=20_000)
            page.get_by_text("Quarterly numbers").first.click()
            frame = page.frame_locator("iframe[title='message body']")
            assert frame.locator("h1").inner_text(timeout=10_000) == "Numbers"
            page.screenshot(path=str(ARTIFACTS / "console-message.png"))

            send(stack, OUT_OF_SCOPE, "Payslip", "<p>for HR</p>")  # outside the Exchange scope: dead letter
            page.goto(f"{url}dead-letters")
            page.get_by_text("ErrorAccessDenied").first.wait_for(timeout=20_000)
            assert "Exchange scope" in page.content()
            page.screenshot(path=str(ARTIFACTS / "console-dead-letters.png"))

            stack.set_exchange_scope(OUT_OF_SCOPE, True)  # the admin fixes the scope, then requeues
            with page.expect_navigation():
                page.get_by_role("button", name="Requeue").first.click()
            assert "/dead-letters?requeued=" in page.url, (page.url, page.content()[:2000])
            notice = page.locator(".notice").inner_text()  # issue 21: the requeue says what it did, and where
            assert notice.startswith("Requeued dead letter") and f"onto queue {stack.queue_name} as message" in notice
            page.screenshot(path=str(ARTIFACTS / "console-requeued.png"))
            page.goto(url)
            page.get_by_text("Payslip").first.wait_for(timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "console-outbox.png"))
        finally:
            browser.close()
    print(f"screenshots in {ARTIFACTS}")
