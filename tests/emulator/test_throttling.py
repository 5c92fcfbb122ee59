"""Graph's and Exchange's limits as the emulator enforces them (devstack/emulator/throttling.py cites each)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from devstack.emulator import Emulator
from tests.emulator.test_emulator import CLIENT, SECRET, TENANT, graph_error, http, mail, running, send, token_for

__all__ = ["http", "running"]

BOX = "alerts@contoso.com"


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
