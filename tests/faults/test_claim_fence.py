"""The fault suite's Storage stall: Azurite frozen (SIGSTOP) for 10 s while requests flow through two hosts.

A worker that took a request's claim and then waited on Storage (its pace slot, a record write) past its lease
used to call Graph anyway, after another worker had taken the claim over, looked in Sent Items, found nothing and
sent: the same id went out twice (2 and 4 of 20 in two runs, issue 18). The fence (shared/delivery.py, `_Fence`)
proves the claim right before each Graph call, so a stall of any length before the call no longer sends twice.

Its own stack: two hosts, as the finding had, with read access. Graph's timeout 2 s and the claim lease 5 s (the
settings' minimum is twice the timeout), so a 10 s stall outlasts every lease taken before it. Storage freezes once
sends have begun and copies wait on the retry queue: claimants then wait on Storage for a pace slot, and the waiting
copies, due during the freeze, come back at the thaw with a fresh clock and take the expired claims over. Measured
on this machine: without the fence, 1 to 4 of 20 ids sent twice in each of 5 runs (2, 4, 1, 4, 1); with the fence
alone, 1 id twice in 2 of 11 runs (a claimant paced after the thaw wrote `queued` over the new owner's claim); with
the fence and the claim-held writes, none in 6 runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from azure.storage.queue import QueueClient

from devstack.stack import LocalStack
from shared.settings import RETRY_QUEUE_SUFFIX
from tests.faults.test_delivery_faults import SENDER, SETTINGS, Run

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

HOSTS = 2
FROZEN_SECONDS = 10.0


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    assert float(SETTINGS["SEND_CLAIM_LEASE_SECONDS"]) < FROZEN_SECONDS  # every claim taken before it runs out
    with LocalStack(
        allowed_senders=(SENDER,), settings=SETTINGS, instances=HOSTS, lease_seconds=3, read_access=True
    ) as running:
        yield running


def test_storage_frozen_while_requests_flow(stack: LocalStack) -> None:
    run = Run(stack, "storage-frozen", True)
    run.fault(status=None, delay=1.5, count=200)  # 1.5 s of Graph latency: claims and calls overlap
    run.enqueue(20, copies=2)
    # Freeze once sends have begun and the first copies wait on the retry queue for the claims others hold: then
    # some claimants wait on Storage before their call (a pace slot), and waiting copies come back after the thaw.
    retry = QueueClient.from_connection_string(stack.storage_connection_string, stack.queue_name + RETRY_QUEUE_SUFFIX)
    deadline = time.monotonic() + 30
    while run.graph_calls() - run.graph_calls_before < 1 or retry.get_queue_properties().approximate_message_count < 5:
        assert time.monotonic() < deadline, "no Graph call and no waiting copy within 30 s"
        time.sleep(0.02)
    stack.freeze_storage()
    try:
        time.sleep(FROZEN_SECONDS)
    finally:
        stack.thaw_storage()
    result = run.count(run.wait_final(timeout=120))
    assert result.delivered == 20 and result.duplicates == 0 and result.dead_lettered == 0
