"""The local web console: routes (escaping, the sandboxed body, CSRF), then a real browser end to end.

The browser is Debian's Chromium (`apt-get install chromium`; .ci/run installs it) driven by Playwright for
Python with `executable_path`: Playwright's own browser download cannot run here and is never used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mailrelay_client import MailClient

from devstack.stack import LocalStack, start_console

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
IN_SCOPE = "alerts@contoso.com"
OUT_OF_SCOPE = "hr@contoso.com"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack([IN_SCOPE, OUT_OF_SCOPE], [IN_SCOPE], [OUT_OF_SCOPE], lease_seconds=5) as running:
        yield running


@pytest.fixture
def console(stack: LocalStack) -> Iterator[object]:
    started = start_console(stack)
    yield started
    started.stop()


def send(stack: LocalStack, sender: str, subject: str, html: str) -> str:
    client = MailClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
    return client.send(
        {
            "from": sender,
            "to": ["Ada <ada@contoso.com>"],
            "subject": subject,
            "body": {"contentType": "html", "content": html},
        }
    )


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
            assert page.url.endswith("/dead-letters"), (page.url, page.content()[:2000])
            page.goto(url)
            page.get_by_text("Payslip").first.wait_for(timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "console-outbox.png"))
        finally:
            browser.close()
    print(f"screenshots in {ARTIFACTS}")
