"""The relay end to end on the local stack: five requests, five outcomes, one table.

    python -m devstack.demo        (scripts/demo installs everything first, then runs this)
    python -m devstack.demo --credential federated    (any GRAPH_CREDENTIAL mode: the same five outcomes)

Starts Azurite, the emulator and the local host (devstack.stack), sends five requests the way apps do,
waits for each outcome, prints a table (case, expected, actual, detail) and exits 1 if any case is not
as expected. Everything is stopped at the end, on Ctrl-C and on SIGTERM too.

The cases:
1. an allowed sender inside the Exchange scope: delivered (seen in the emulator's outbox);
2. an allowed sender outside the Exchange scope: Graph answers 403 ErrorAccessDenied, dead-lettered with
   the hint that names the fix;
3. a sender off the relay's allow-list: dead-lettered as SenderNotAllowed, Graph never called;
4. a malformed request (a recipient that is no address): dead-lettered as InvalidRequest, naming the field;
5. a raw message that is not base64 (the Storage SDK's default): moved to the dead-letter queue by the
   host, read back as InvalidEncoding with the hint about messageEncoding.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devstack.stack import LocalStack, StackError, credential_line, sigterm_as_keyboard_interrupt

ALLOWED_IN_SCOPE = "alerts@contoso.com"
ALLOWED_OUT_OF_SCOPE = "hr@contoso.com"
NOT_ALLOWED = "ceo@contoso.com"  # in the Exchange scope: only the relay's allow-list stops it
RECIPIENT = "Ada Lovelace <ada@contoso.com>"
TIMEOUT_SECONDS = 30.0


@dataclass
class Case:
    name: str
    expected: str
    actual: str = "no outcome (timed out)"
    detail: str = ""
    ok: bool = False


def _request(sender: str, case_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "from": sender,
        "to": [RECIPIENT],
        "subject": f"Relay demo: {case_id}",
        "body": {"contentType": "text", "content": "Sent through the local stack by devstack.demo."},
        "id": case_id,
        **overrides,
    }


def run(stack: LocalStack, out: Callable[[str], None] = print) -> list[Case]:
    """Send the five requests on a running stack and collect their outcomes."""
    from azure.storage.queue import QueueClient
    from mailrelay_client import MailClient

    from shared.deadletters import open_queues
    from shared.queues import encode

    run_id = uuid.uuid4().hex[:8]
    ids = {key: f"demo-{key}-{run_id}" for key in ("delivered", "scope", "allow", "malformed")}
    raw_text = f"Hello relay, plain text from demo run {run_id} (not base64)"

    client = MailClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
    out("sending 5 requests...")
    client.send(_request(ALLOWED_IN_SCOPE, ids["delivered"]))
    client.send(_request(ALLOWED_OUT_OF_SCOPE, ids["scope"]))
    client.send(_request(NOT_ALLOWED, ids["allow"]))
    # The client refuses a malformed request, as it should; an app that skips it uses the SDK directly.
    raw_queue = QueueClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
    raw_queue.send_message(encode(_request(ALLOWED_IN_SCOPE, ids["malformed"], to=["ada at contoso"])))
    # The classic pitfall: the Python SDK sends text as given, and host.json expects base64.
    raw_queue.send_message(raw_text)

    cases = {
        "delivered": Case("allowed sender, inside the Exchange scope", "delivered"),
        "scope": Case("allowed sender, outside the Exchange scope", "dead letter: ErrorAccessDenied"),
        "allow": Case("sender off the allow-list", "dead letter: SenderNotAllowed, Graph not called"),
        "malformed": Case("malformed request (recipient)", "dead letter: InvalidRequest naming to[0]"),
        "raw": Case("raw message, not base64", "dead letter: InvalidEncoding"),
    }
    dead_letters = open_queues(stack.queue_name, connection_string=stack.storage_connection_string)
    by_id = {value: key for key, value in ids.items()}
    deadline = time.monotonic() + TIMEOUT_SECONDS
    pending = set(cases)
    while pending and time.monotonic() < deadline:
        for item in stack.emulator_get("outbox"):
            message = item["message"]["message"]
            key = by_id.get(message.get("subject", "").removeprefix("Relay demo: "))
            if key in pending:
                to = ", ".join(r["emailAddress"]["address"] for r in message.get("toRecipients", []))
                _settle(cases[key], "delivered", f"in the emulator's outbox: from {item['sender']} to {to}")
                pending.discard(key)
        for letter in dead_letters.peek():
            request = letter.request
            if isinstance(request, dict):
                key = by_id.get(str(request.get("id")))
            else:
                key = "raw" if isinstance(request, str) and run_id in request else None
            if key in pending:
                assert key is not None
                detail = letter.message if key == "malformed" else letter.hint
                _settle(cases[key], f"dead letter: {letter.code}", f"{letter.code}: {detail}")
                pending.discard(key)
        if pending:
            time.sleep(0.2)

    # Graph's call count tells whether the allow-list stopped case 3 before Graph: only cases 1 and 2 call.
    graph_calls = int(stack.emulator_get("stats").get("graph.sendMail", 0))
    allow = cases["allow"]
    if allow.actual == "dead letter: SenderNotAllowed":
        allow.detail = f"Graph's sendMail was called {graph_calls} times in all (cases 1 and 2 only); {allow.detail}"
    cases["delivered"].ok = cases["delivered"].actual == "delivered"
    cases["scope"].ok = cases["scope"].actual == "dead letter: ErrorAccessDenied" and "Exchange scope" in (
        cases["scope"].detail
    )
    allow.ok = allow.actual == "dead letter: SenderNotAllowed" and graph_calls == 2
    cases["malformed"].ok = cases["malformed"].actual == "dead letter: InvalidRequest" and "to[0]" in (
        cases["malformed"].detail
    )
    raw = cases["raw"]
    raw.ok = raw.actual == "dead letter: InvalidEncoding" and "messageEncoding" in raw.detail
    return list(cases.values())


def _settle(case: Case, actual: str, detail: str) -> None:
    case.actual, case.detail = actual, detail  # run() checks each case against its expectation at the end


def table(cases: list[Case], width: int = 100) -> str:
    """One block per case, each line within `width` columns (a terminal's 100, not 200): the case and its
    verdict, then what was expected, what happened, and the detail wrapped in full (hints are the point)."""
    import textwrap

    blocks = []
    for c in cases:
        verdict = "ok" if c.ok else "FAIL"
        lines = [f"{verdict:<4}  {c.name}", f"      expected  {c.expected}", f"      actual    {c.actual}"]
        lines += textwrap.wrap(
            " ".join(c.detail.split()), width, initial_indent="      detail    ", subsequent_indent=" " * 16
        )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from shared.settings import CREDENTIAL_MODES

    parser = argparse.ArgumentParser(prog="scripts/demo", description="The relay end to end on the local stack.")
    parser.add_argument(
        "--credential",
        choices=CREDENTIAL_MODES,
        default="secret",
        help="GRAPH_CREDENTIAL the relay runs with (default secret); the five outcomes are the same in every mode",
    )
    args = parser.parse_args(argv or [])  # None: a caller's own sys.argv (pytest's) is not the demo's
    started = time.monotonic()
    with sigterm_as_keyboard_interrupt():
        try:
            print("starting the local stack (Azurite, the Entra/Graph/Key Vault emulator, the local host)...")
            with LocalStack(
                allowed_senders=[ALLOWED_IN_SCOPE, ALLOWED_OUT_OF_SCOPE],
                exchange_scope=[ALLOWED_IN_SCOPE, NOT_ALLOWED],
                mailboxes=[ALLOWED_OUT_OF_SCOPE],
                credential=args.credential,
            ) as stack:
                print(f"  storage queue {stack.queue_endpoint}/{stack.queue_name}, emulator {stack.emulator_url}")
                print(f"  credential: {credential_line(stack.credential, stack.credential_state())}")
                print(f"  allow-list: {ALLOWED_IN_SCOPE}, {ALLOWED_OUT_OF_SCOPE}")
                print(f"  Exchange scope: {ALLOWED_IN_SCOPE}, {NOT_ALLOWED} ({ALLOWED_OUT_OF_SCOPE} is outside)")
                cases = run(stack)
                failed_host = stack.log_tail("host") if not all(c.ok for c in cases) else ""
        except KeyboardInterrupt:
            print("demo: interrupted; everything is stopped", file=sys.stderr)
            return 130
        except StackError as exc:
            print(f"demo: the local stack did not start: {exc}", file=sys.stderr)
            return 1
    print()
    print(table(cases))
    good = sum(c.ok for c in cases)
    elapsed = time.monotonic() - started
    print(f"\n{good} of {len(cases)} cases as expected, in {elapsed:.1f} s; everything is stopped.")
    if failed_host:
        print(f"\nThe local host's last lines:\n{failed_host}", file=sys.stderr)
    return 0 if good == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
