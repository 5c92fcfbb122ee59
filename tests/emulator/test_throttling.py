"""Graph's and Exchange's limits as the emulator enforces them (devstack/emulator/throttling.py cites each)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import requests

from devstack.emulator import Emulator
from devstack.emulator.throttling import UPLOADS_MESSAGE
from tests.emulator.test_emulator import CLIENT, SECRET, TENANT, graph_error, http, mail, running, send, token_for

__all__ = ["http", "running"]

BOX = "alerts@contoso.com"
MB = 1024 * 1024


@pytest.fixture
def emu(running: Emulator) -> Emulator:
    running.reset()
    running.add_mailbox(BOX, in_exchange_scope=True)
    running.add_mailbox("other@contoso.com", in_exchange_scope=True)
    running.add_app(TENANT, CLIENT, SECRET)
    return running


def test_a_fifth_concurrent_send_to_one_mailbox_is_throttled_as_graph_throttles_it(
    emu: Emulator, http: requests.Session
) -> None:
    emu.configure_throttling({"graphLatencySeconds": 0.5})
    token = token_for(emu, http)
    replies: list[requests.Response] = []
    start = threading.Barrier(6)

    def one(mailbox: str) -> None:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the emulator's CA
        session.verify = emu.ca_cert_path
        start.wait()
        replies.append(send(emu, session, mail(), token, mailbox=mailbox))

    threads = [threading.Thread(target=one, args=(BOX,)) for _ in range(5)]
    threads.append(threading.Thread(target=one, args=("other@contoso.com",)))  # its own limit
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [202] * 5 + [429]
    [throttled] = [r for r in replies if r.status_code == 429]
    assert graph_error(throttled)[1:] == ("ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
    assert throttled.headers["Retry-After"] == "1"
    assert emu.throttling()["concurrency429"] == 1


def test_past_thirty_a_minute_exchange_delays_delivery_it_does_not_refuse(
    emu: Emulator, http: requests.Session
) -> None:
    emu.configure_throttling({"timeScale": 60})  # a minute lasts a second
    token = token_for(emu, http)
    for _ in range(32):
        assert send(emu, http, mail(), token, mailbox=BOX).status_code == 202
    delayed = [e for e in emu.outbox if e.get("deliveryDelaySeconds")]
    assert len(delayed) == 2 and emu.throttling()["delayed"] == 2


def test_past_the_daily_recipients_the_mailbox_bounces_what_graph_accepted(
    emu: Emulator, http: requests.Session
) -> None:
    token = token_for(emu, http)
    many: list[dict[str, Any]] = [{"emailAddress": {"address": f"r{i}@contoso.com"}} for i in range(500)]
    for _ in range(20):  # 20 x 500 = 10,000: the whole day's budget
        assert send(emu, http, mail(toRecipients=many), token, mailbox=BOX).status_code == 202
    reply = send(emu, http, mail(), token, mailbox=BOX)
    assert reply.status_code == 202  # Graph accepts; Exchange then refuses to deliver it (a 5.1.90 NDR)
    assert "5.1.90" in emu.outbox[-1]["bounced"] and emu.throttling()["bounced"] == 1
    assert send(emu, http, mail(), token, mailbox="other@contoso.com").status_code == 202
    assert "bounced" not in emu.outbox[-1]  # the limit is the mailbox's, not the app's


def test_past_150_mb_of_uploads_in_5_minutes_graph_answers_429_per_app_and_mailbox(
    emu: Emulator, http: requests.Session
) -> None:
    # "150 megabytes (MB) upload (PATCH, POST, PUT) in a 5-minute period" (throttling-limits, Outlook service limits):
    # upload-session ranges, and every POSTed body, count against it; the emulator reads MB as 10^6 bytes.
    from tests.emulator.test_drafts import call, draft, put, session

    emu.add_app(TENANT, CLIENT, SECRET, exchange_roles=("Application Mail.Send", "Application Mail.ReadWrite"))
    emu.configure_drafts({"maxMessageSizeBytes": 400 * MB})
    emu.configure_throttling({"timeScale": 60})  # 5 minutes last 5 seconds
    token = token_for(emu, http)
    draft_id = draft(emu, http, token)
    total = 140 * MB  # 146,800,640 bytes, under 150,000,000 with the draft's and the session's bodies
    url = session(emu, http, token, draft_id, total)["uploadUrl"]
    chunk = b"x" * (4 * MB)
    for start in range(0, total, 4 * MB):
        assert put(http, url, chunk, start, total).status_code in (200, 201)
    second = session(emu, http, token, draft_id, 4 * MB)["uploadUrl"]
    refused = put(http, second, chunk, 0, 4 * MB)  # 146.8 MB + 4.2 MB > 150 MB
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "ApplicationThrottled"
    assert int(refused.headers["Retry-After"]) >= 1 and emu.throttling()["uploads429"] == 1
    small = {"@odata.type": "#microsoft.graph.fileAttachment", "name": "a.bin", "contentBytes": "eA==" * 800_000}
    posted = call(emu, http, token, "POST", f"messages/{draft_id}/attachments", small)  # a POST's body counts too
    assert graph_error(posted)[:2] == (429, "ApplicationThrottled")
    assert send(emu, http, mail(), token, mailbox="other@contoso.com").status_code == 202  # another mailbox: its own
    assert send(emu, http, mail(), token, mailbox=BOX).status_code == 202  # a small body still fits
    time.sleep(int(refused.headers["Retry-After"]) + 0.1)
    again = put(http, second, chunk, 0, 4 * MB)  # nothing of the refused range was kept or counted
    assert again.status_code == 201, again.text


def test_a_throttled_upload_counts_nothing_and_the_window_moves(emu: Emulator) -> None:
    emu.configure_throttling({"timeScale": 300})  # 5 minutes last a second
    assert emu._throttle_upload(CLIENT, BOX, 100_000_000) is None
    refused = emu._throttle_upload(CLIENT, BOX, 60_000_000)
    assert refused is not None and refused[:3] == (429, "ApplicationThrottled", UPLOADS_MESSAGE)
    assert emu._throttle_upload(CLIENT, BOX, 50_000_000) is None  # exactly 150,000,000: within the limit
    assert emu._throttle_upload(CLIENT, BOX, 1) is not None
    assert emu._throttle_upload("another-app", BOX, 150_000_000) is None  # per app and mailbox
    time.sleep(1.05)
    assert emu._throttle_upload(CLIENT, BOX, 150_000_000) is None
