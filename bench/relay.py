"""The relay's benchmark: one command, a table, and docs/benchmarks.md. Ratios measured side by side in one run.

    .venv/bin/python bench/relay.py                 # the full run (several minutes); writes docs/benchmarks.md
    .venv/bin/python bench/relay.py --smoke         # a few requests each, nothing written: what CI runs

What it measures (each repeated, min / median / max):
1. The send path against the naive pattern (a new credential, Key Vault read and token for every message), in
   process against the emulator with the real SDKs: time per message, and external calls per message.
2. End to end on the local stack (Azurite, the emulator, one host process running the functions as the Python
   worker does: one thread pool of PYTHON_THREADPOOL_THREAD_COUNT threads for both queue functions): msg/s for N
   requests from 40 mailboxes (so pacing, 30 a minute per mailbox, does not bind) at Graph latencies of 0 and
   400 ms, with host.json as it was (batchSize 1, newBatchThreshold 0) and as it is; at 400 ms also the worker's
   default pool as Azure runs it with the setting unset on a 1-vCPU instance (min(32, 1 + 4) = 5 threads, set to 5
   here since this machine has more CPUs) against the deployment's setting (2 x (batchSize + newBatchThreshold)
   from host.json, devstack.host.deployment_thread_count); the host's CPU ms per message and peak RSS.
   Storage round trips per message are COUNTED in the host process (devstack/round_trips.py wraps azure-core's
   transport there; DEVSTACK_ROUND_TRIPS_DIR), the function's own apart from the host's receives and deletes.
3. Cold import of function_app against a bare `import azure.functions` (bench/import_cost.py).
5. A large attachment (25 MB) end to end on the local stack: the client's upload and the whole trip to the
   emulator's outbox (draft, upload session, send), the client's peak traced memory, and the host process's
   peak RSS growth over a small message's, each as a share of the file's size (at most one copy: streamed).
4. Against the throttling emulator (time-scaled: a minute lasts 60 / SCALE seconds), 1 mailbox and 4 at once:
   throughput as a share of Exchange's 30 messages a minute, 429s provoked, dead letters, duplicates.
6. Each GRAPH_CREDENTIAL mode end to end on the local stack: the calls N sends make to Key Vault, Entra's token
   endpoint and the managed-identity endpoint (COUNTED by the emulator), and the first send's enqueue-to-sent time
   (a cold host: the credential read and the first token) as a ratio to the secret mode's in the same run.
7. The fair share of a mailbox (issue 20, item 5): Storage round trips per message, COUNTED in the host as in 2,
   for two apps with shares on the same mailboxes (each request's mailbox used by both at once) against one app
   without a share: what counting each app's sends and recipients in the pace row costs.
8. SMTP (issue 22; bench/smtp.py): N mails over one connection and over C at once, the 250s per second as a ratio
   to the client library's send_mime called directly, every mail delivered once and byte-identical; beside the
   peer's figure, measured outside the repository (bench/README.md).

It is not a test: nothing here asserts a speed. CI runs `--smoke` so the script keeps working.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAILBOXES = [f"sender{i:02d}@contoso.com" for i in range(40)]
TODAY_HOST_JSON = {"batchSize": 1, "newBatchThreshold": 0}  # host.json before issue 11
# The Python worker's pool with PYTHON_THREADPOOL_THREAD_COUNT unset is Python's ThreadPoolExecutor default,
# min(32, cpu_count + 4) (azure-functions-python-worker, dispatcher.py): 5 on a 1-vCPU instance.
ONE_VCPU_DEFAULT_THREADS = min(32, 1 + 4)


def spread(values: list[float]) -> str:
    """min / median / max, as the table shows them."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{min(values):.3g} / {statistics.median(values):.3g} / {max(values):.3g}"


def relay_env(emu: Any, tenant: str, client: str, senders: list[str], storage: str) -> dict[str, str]:
    """The relay's settings against an in-process emulator (and its managed-identity endpoint in os.environ)."""
    os.environ.update({"IDENTITY_ENDPOINT": emu.msi_endpoint, "IDENTITY_HEADER": emu.identity_header})
    return {
        "GRAPH_TENANT_ID": tenant,
        "GRAPH_CLIENT_ID": client,
        "KEY_VAULT_URI": emu.url,
        "GRAPH_CLIENT_SECRET_NAME": "graph-client-secret",
        "ALLOWED_SENDERS": ",".join(senders),
        "AzureWebJobsStorage": storage,
        "GRAPH_BASE_URL": emu.url,
        "GRAPH_AUTHORITY_HOST": emu.url,
        "MAILRELAY_CA_BUNDLE": emu.ca_cert_path,
    }


# --- 1. The send path against the naive pattern -----------------------------------------------------------


def send_path(n: int, repeat: int) -> list[tuple[str, str]]:
    from devstack.emulator import Emulator
    from shared.bootstrap import build_clients
    from shared.settings import load_settings

    tenant, client, secret = str(uuid.uuid4()), str(uuid.uuid4()), "bench~" + uuid.uuid4().hex
    rows: list[tuple[str, str]] = []
    with Emulator() as emu:
        emu.add_app(tenant, client, secret)
        emu.add_mailbox(MAILBOXES[0], in_exchange_scope=True)
        emu.set_secret("graph-client-secret", secret, expires_on=datetime.now(UTC) + timedelta(days=300))
        env = relay_env(emu, tenant, client, MAILBOXES[:1], "UseDevelopmentStorage=true")
        settings = load_settings(env)
        request = {
            "from": MAILBOXES[0],
            "to": ["ada@contoso.com"],
            "subject": "bench",
            "body": {"contentType": "text", "content": "bench"},
            "saveToSentItems": False,
        }
        per_message: dict[str, list[float]] = {"relay": [], "naive": []}
        calls: dict[str, dict[str, float]] = {}
        for _ in range(repeat):
            for kind in ("relay", "naive"):
                before = emu.stats
                started = time.perf_counter()
                clients = build_clients(settings)
                for _ in range(n):
                    if kind == "naive":
                        clients = build_clients(settings)  # a new credential, vault read and token each time
                    clients.relay.send(json.dumps(request))
                per_message[kind].append((time.perf_counter() - started) / n * 1000)
                after = emu.stats
                calls[kind] = {k: (after[k] - before.get(k, 0)) / n for k in after}
        ratio = [n_ / r for n_, r in zip(per_message["naive"], per_message["relay"], strict=True)]
        rows.append(("send path: relay, ms per message", spread(per_message["relay"])))
        rows.append(("send path: naive, ms per message", spread(per_message["naive"])))
        rows.append(("send path: naive / relay", spread(ratio)))
        for kind in ("relay", "naive"):
            c = calls[kind]
            rows.append(
                (
                    f"calls per message ({kind}): Graph, token, Key Vault, identity",
                    f"{c['graph.sendMail']:.3f}, {c['entra.token']:.3f}, {c['keyvault.getSecret']:.3f}, "
                    f"{c['msi.token']:.3f}",
                )
            )
    return rows


# --- 2 and 4. The local stack -------------------------------------------------------------------------------


def _proc(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and peak RSS in KiB of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1])
    return cpu, peak


def stack_run(
    n: int,
    latency: float,
    host_json: dict[str, int],
    senders: list[str],
    settings: dict[str, str] | None = None,
    time_scale: float | None = None,
    timeout: float = 900,
    threads: int | None = None,
) -> dict[str, Any]:
    """N requests through a fresh local stack with one host; what came out, and the Storage round trips the host
    process counted. `threads`: PYTHON_THREADPOOL_THREAD_COUNT (default: the deployment's, as LocalStack sets it)."""
    from devstack.round_trips import ENV as ROUND_TRIPS_DIR

    base = json.loads((ROOT / "host.json").read_text())
    base["extensions"]["queues"].update(host_json)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "host.json"
        path.write_text(json.dumps(base))
        counted = Path(tmp) / "round-trips"
        relay_settings = {"SEND_RETRY_BASE_SECONDS": "1", ROUND_TRIPS_DIR: str(counted), **(settings or {})}
        if threads is not None:
            relay_settings["PYTHON_THREADPOOL_THREAD_COUNT"] = str(threads)
        result = _stack_run(n, latency, path, senders, relay_settings, time_scale, timeout)
        # The host writes its counts as it stops, which the stack's stop has waited for.
        result.update(round_trips_per_message(counted, n))
        return result


HOST_PER_MESSAGE = ("queue receive", "queue delete")


def round_trips_per_message(directory: Path, n: int) -> dict[str, Any]:
    """The hosts' counts (one file per host process) per request sent: the function's own Storage round trips
    by operation, and the host's receives (those that brought messages), deletes and the rest."""
    function: dict[str, float] = {}
    host: dict[str, float] = {}
    empty_receives = 0
    threads = set()
    files = sorted(directory.glob("round-trips-*.json"))
    if not files:
        raise RuntimeError(f"no round-trip counts in {directory}: did the host stop cleanly?")
    for file in files:
        data = json.loads(file.read_text())
        threads.add(data.get("threadCount"))
        empty_receives += sum(f.get("emptyReceives", 0) for f in data["functions"].values())
        for actor, into in (("function", function), ("host", host)):
            for service, operations in data["roundTrips"].get(actor, {}).items():
                if service == "other":
                    continue  # Key Vault and the managed identity: not Storage
                for operation, count in operations.items():
                    into[f"{service} {operation}"] = into.get(f"{service} {operation}", 0) + count
    host["queue receive"] = host.get("queue receive", 0) - empty_receives  # idle polling: by the second, not message
    return {
        "function_rt": sum(function.values()) / n,
        "function_ops": {op: count / n for op, count in sorted(function.items())},
        "host_receive_rt": host.get("queue receive", 0) / n,
        "host_delete_rt": host.get("queue delete", 0) / n,
        # Lease renewals, visibility updates after a failure, poison moves; the queues' creation at start is not
        # a cost of the messages.
        "host_other_rt": sum(c for op, c in host.items() if op not in (*HOST_PER_MESSAGE, "queue create queue")) / n,
        "empty_receives": empty_receives,
        "threads": threads.pop() if len(threads) == 1 else sorted(threads, key=str),
    }


def _stack_run(
    n: int,
    latency: float,
    host_json: Path,
    senders: list[str],
    relay_settings: dict[str, str],
    time_scale: float | None,
    timeout: float,
) -> dict[str, Any]:
    from azure.storage.queue import QueueClient

    from devstack.stack import LocalStack
    from shared.queues import encode

    with LocalStack(allowed_senders=tuple(senders), settings=relay_settings, host_json=host_json) as stack:
        config: dict[str, Any] = {"graphLatencySeconds": latency}
        if time_scale:
            config["timeScale"] = time_scale
        stack.emulator_post("throttling", config)
        queue = QueueClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
        host_pid = stack.pids["host-1"]
        cpu0, _ = _proc(host_pid)
        started = time.monotonic()
        for i in range(n):
            request = {
                "id": f"bench-{i}",
                "from": senders[i % len(senders)],
                "to": ["ada@contoso.com"],
                "subject": f"bench {i}",
                "body": {"contentType": "text", "content": "bench"},
                "saveToSentItems": False,
            }
            queue.send_message(encode(request), time_to_live=-1)
        deadline = started + timeout
        while len(stack.emulator_get("outbox")) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(stack.emulator_get('outbox'))} of {n} sent in {timeout:g} s")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        cpu1, peak = _proc(host_pid)
        outbox = stack.emulator_get("outbox")
        copies = stack.emulator_get("copies")
        poison = QueueClient.from_connection_string(stack.storage_connection_string, f"{stack.queue_name}-poison")
        throttling = stack.emulator_get("throttling")
        times = sorted(datetime.fromisoformat(e["receivedAt"]).timestamp() for e in outbox)
        return {
            "elapsed": elapsed,
            "rate": n / elapsed,
            "cpu_ms_per_message": (cpu1 - cpu0) * 1000 / n,
            "peak_rss_mb": peak / 1024,
            "throttled": throttling["concurrency429"] + throttling["requests429"],
            "bounced": throttling["bounced"],
            "delayed": throttling["delayed"],
            "dead_letters": int(poison.get_queue_properties().approximate_message_count),
            "duplicates": sum(c - 1 for c in copies.values() if c > 1),
            "sent_times": times,
        }


def end_to_end(n_new: int, n_today: int, repeat: int) -> list[tuple[str, str]]:
    """msg/s end to end. At 0 and 400 ms: host.json as it was (batchSize 1) and as it is, with the deployment's
    thread count; at 400 ms also the worker's default pool on a 1-vCPU instance against the deployment's setting."""
    from devstack.host import deployment_thread_count

    rows: list[tuple[str, str]] = []
    new_json = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    current = {"batchSize": new_json["batchSize"], "newBatchThreshold": new_json["newBatchThreshold"]}
    deployed = deployment_thread_count()
    rates: dict[tuple[float, str], list[float]] = {}
    for latency in (0.0, 0.4):
        runs: list[tuple[str, dict[str, int], int, int | None]] = [
            ("today", TODAY_HOST_JSON, n_today, None),  # None: the stack's default, the deployment's rule
            ("new", current, n_new, deployed),
        ]
        if latency:
            runs.insert(1, ("worker default", current, n_new, ONE_VCPU_DEFAULT_THREADS))
        for label, host_json, n, threads in runs:
            results = [stack_run(n, latency, host_json, MAILBOXES, threads=threads) for _ in range(repeat)]
            rates[(latency, label)] = [r["rate"] for r in results]
            pool = results[0]["threads"]
            if label == "worker default":
                pool_text = f"pool {pool} (PYTHON_THREADPOOL_THREAD_COUNT unset on 1 vCPU: min(32, 1 + 4))"
            elif label == "new":
                pool_text = f"pool {pool} (the deployment's PYTHON_THREADPOOL_THREAD_COUNT)"
            else:
                pool_text = f"pool {pool}"
            name = (
                f"{int(latency * 1000)} ms, batchSize {host_json['batchSize']} + {host_json['newBatchThreshold']}, "
                f"{pool_text}"
            )
            rows.append((f"end to end {name}, {n} requests: msg/s", spread([r["rate"] for r in results])))
            rows.append(
                (
                    "  host CPU ms per message; peak RSS MB",
                    f"{spread([r['cpu_ms_per_message'] for r in results])}; "
                    f"{spread([r['peak_rss_mb'] for r in results])}",
                )
            )
            rows.append(
                (
                    "  Storage round trips per message, counted: the function's; the host's receive + delete",
                    f"{spread([r['function_rt'] for r in results])}; "
                    f"{spread([r['host_receive_rt'] + r['host_delete_rt'] for r in results])}",
                )
            )
            rows.append(
                (
                    "  duplicates, dead letters",
                    f"{sum(r['duplicates'] for r in results)}, {sum(r['dead_letters'] for r in results)}",
                )
            )
        ratio = [b / a for a, b in zip(rates[(latency, "today")], rates[(latency, "new")], strict=True)]
        rows.append((f"end to end {int(latency * 1000)} ms: new / today", spread(ratio)))
        if latency:
            ratio = [b / a for a, b in zip(rates[(latency, "worker default")], rates[(latency, "new")], strict=True)]
            rows.append(
                (
                    f"end to end {int(latency * 1000)} ms: the deployment's pool ({deployed}) / the worker's "
                    f"default on 1 vCPU ({ONE_VCPU_DEFAULT_THREADS})",
                    spread(ratio),
                )
            )
    return rows


def throttled(per_mailbox: int, scale: float, repeat: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    window = 60 / scale
    settings = {
        "MAILBOX_RATE_WINDOW_SECONDS": f"{window:g}",
        "MAILBOX_RECIPIENT_WINDOW_SECONDS": f"{86_400 / scale:g}",
    }
    for mailboxes in (1, 4):
        senders = MAILBOXES[:mailboxes]
        shares, throttles, dead, dups, over = [], 0, 0, 0, 0
        for _ in range(repeat):
            r = stack_run(per_mailbox * mailboxes, 0.05, {}, senders, settings, time_scale=scale)
            times = r["sent_times"]
            # At 30 per sliding window, N messages from one mailbox need at least (ceil(N/30) - 1) windows
            # between the first and the last send: the share is that shortest span over the one measured.
            shortest = (-(-per_mailbox // 30) - 1) * window
            span = times[-1] - times[0]
            if shortest > 0 and span > 0:
                shares.append(shortest / span * 100)
            throttles += r["throttled"]
            dead += r["dead_letters"]
            dups += r["duplicates"]
            over += r["delayed"]
        share = spread(shares) if shares else "n/a (fewer than one window's worth of messages)"
        rows.append((f"throttling emulator, {mailboxes} mailbox(es), {per_mailbox} each: % of 30/min", share))
        rows.append(
            (
                "  429s provoked, over 30/min (delayed by Exchange), dead letters, duplicates",
                f"{throttles}, {over}, {dead}, {dups}",
            )
        )
    return rows


def storage_round_trips(n: int, repeat: int) -> list[tuple[str, str]]:
    """Storage round trips per message, COUNTED in the host process on the local stack at 0 ms Graph latency (the
    function's own, by operation, and the host's receive and delete), not computed."""
    new_json = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    current = {"batchSize": new_json["batchSize"], "newBatchThreshold": new_json["newBatchThreshold"]}
    results = [stack_run(n, 0.0, current, MAILBOXES) for _ in range(repeat)]
    operations = sorted({op for r in results for op in r["function_ops"]})
    by_operation = ", ".join(
        f"{op} {statistics.median(r['function_ops'].get(op, 0.0) for r in results):.2f}" for op in operations
    )
    total = [r["function_rt"] + r["host_receive_rt"] + r["host_delete_rt"] + r["host_other_rt"] for r in results]
    return [
        (
            f"Storage round trips per message, counted in the host, {n} requests: the function's own",
            spread([r["function_rt"] for r in results]),
        ),
        ("  the function's, by operation (median)", by_operation),
        (
            "  the host's: receive (batches that brought messages); delete; other (lease renewals, poison moves)",
            f"{spread([r['host_receive_rt'] for r in results])}; {spread([r['host_delete_rt'] for r in results])}; "
            f"{spread([r['host_other_rt'] for r in results])}",
        ),
        ("  function + host, per message", spread(total)),
        ("  idle polls (receives that found a queue empty), per run", spread([r["empty_receives"] for r in results])),
    ]


# --- 6. Credential modes -----------------------------------------------------------------------------------------

CREDENTIAL_MODES = ("secret", "certificate", "federated", "managed-identity")


def _credential_run(mode: str, n: int) -> dict[str, Any]:
    from azure.storage.queue import QueueClient

    from devstack.stack import LocalStack
    from shared.queues import encode

    with LocalStack(allowed_senders=(MAILBOXES[0],), credential=mode) as stack:
        queue = QueueClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
        before = stack.emulator_get("stats")

        def send(i: int) -> None:
            request = {
                "id": f"cred-{mode}-{i}",
                "from": MAILBOXES[0],
                "to": ["ada@contoso.com"],
                "subject": f"credential {i}",
                "body": {"contentType": "text", "content": "bench"},
                "saveToSentItems": False,
            }
            queue.send_message(encode(request), time_to_live=-1)

        def wait_for(count: int) -> None:
            deadline = time.monotonic() + 300
            while len(stack.emulator_get("outbox")) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{mode}: only {len(stack.emulator_get('outbox'))} of {count} sent")
                time.sleep(0.05)

        started = time.monotonic()
        send(0)
        wait_for(1)
        first = time.monotonic() - started
        for i in range(1, n):
            send(i)
        wait_for(n)
        after = stack.emulator_get("stats")
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {
        "first": first,
        "keyvault": calls.get("keyvault.getSecret", 0) + calls.get("keyvault.getCertificate", 0),
        "entra": calls.get("entra.token", 0),
        "msi": calls.get("msi.token", 0),
    }


def credential_modes(n: int, repeat: int) -> list[tuple[str, str]]:
    """Per mode: what N sends cost in calls to Key Vault, Entra's token endpoint and the managed-identity endpoint
    (the host's Key Vault reader and storage use a connection string locally: these are the Graph credential's), and
    the cold first send against the secret mode's. Modes interleaved per repeat, so drift hits all alike."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in CREDENTIAL_MODES}
    for _ in range(repeat):
        for mode in CREDENTIAL_MODES:
            runs[mode].append(_credential_run(mode, n))
    base = statistics.median(r["first"] for r in runs["secret"])
    rows = [(f"Credential modes, {n} sends each on one mailbox: calls made (median of {repeat})", "")]
    for mode in CREDENTIAL_MODES:
        got = runs[mode]
        rows.append(
            (
                f"  {mode}: Key Vault, Entra token endpoint, managed-identity endpoint; first send vs secret's",
                f"{statistics.median(r['keyvault'] for r in got):g}, {statistics.median(r['entra'] for r in got):g}, "
                f"{statistics.median(r['msi'] for r in got):g}; "
                f"{statistics.median(r['first'] for r in got) / base:.2f}x",
            )
        )
    return rows


# --- 7. Fair share ------------------------------------------------------------------------------------------------

# Two apps sharing every mailbox, with shares that fit its 30 a minute and 10,000 recipients a day; against the same
# two apps without shares (the same queues and the same concurrency on each pace row: only the shares differ), and
# one app (both halves of the traffic on one queue).
FAIR_SHARE_APPS = [
    {"name": "billing", "senders": MAILBOXES, "messagesPerMinute": 10, "recipientsPerDay": 3_000},
    {"name": "bulk", "senders": MAILBOXES, "messagesPerMinute": 20, "recipientsPerDay": 5_000},
]
TWO_APPS = [{"name": "billing", "senders": MAILBOXES}, {"name": "bulk", "senders": MAILBOXES}]
ONE_APP = [{"name": "solo", "senders": MAILBOXES}]


def _fair_share_run(apps: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """N requests through a fresh local stack, alternating between `apps`' queues, each pair of requests from one
    mailbox (with two apps, both on its pace row at once; with one, the same pairs, so the rows see the same
    traffic); 40 mailboxes, so no share or limit binds and what is counted is the bookkeeping. The host's counts
    per message (round_trips_per_message), and the dead letters."""
    from azure.storage.queue import QueueClient

    from devstack.round_trips import ENV as ROUND_TRIPS_DIR
    from devstack.stack import LocalStack
    from shared.queues import encode

    with tempfile.TemporaryDirectory() as tmp:
        counted = Path(tmp) / "round-trips"
        settings = {"SEND_RETRY_BASE_SECONDS": "1", ROUND_TRIPS_DIR: str(counted)}
        with LocalStack(allowed_senders=tuple(MAILBOXES), apps=apps, settings=settings) as stack:
            connection = stack.storage_connection_string
            names = [stack.app_queue(a["name"]) for a in apps] or [stack.queue_name]  # no apps: the outbox alone
            queues = [QueueClient.from_connection_string(connection, name) for name in names]
            for i in range(n):
                request = {
                    "id": f"fair-{i}",
                    "from": MAILBOXES[(i // 2) % len(MAILBOXES)],
                    "to": ["ada@contoso.com"],
                    "subject": f"fair {i}",
                    "body": {"contentType": "text", "content": "bench"},
                    "saveToSentItems": False,
                }
                queues[i % len(queues)].send_message(encode(request), time_to_live=-1)
            deadline = time.monotonic() + 600
            while len(stack.emulator_get("outbox")) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fair share: only {len(stack.emulator_get('outbox'))} of {n} sent")
                time.sleep(0.2)
            poison = QueueClient.from_connection_string(connection, f"{stack.queue_name}-poison")
            dead = int(poison.get_queue_properties().approximate_message_count)
        result = round_trips_per_message(counted, n)  # written as the host stopped, which the stack waited for
    result["dead_letters"] = dead
    return result


def fair_share(n: int, repeat: int) -> list[tuple[str, str]]:
    """Storage round trips per message with two apps keeping shares of their mailboxes, against the same two apps
    without shares, one app, and the outbox with no app declared: the function's own, by operation, and the ratios.
    Runs interleaved per repeat, so drift hits all alike."""
    configurations: tuple[tuple[str, list[dict[str, Any]]], ...] = (
        ("the outbox, no apps", []),
        ("one app", ONE_APP),
        ("two apps", TWO_APPS),
        ("two apps with shares", FAIR_SHARE_APPS),
    )
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in configurations}
    for _ in range(repeat):
        for label, apps in configurations:
            runs[label].append(_fair_share_run(apps, n))

    def by_operation(results: list[dict[str, Any]]) -> str:
        operations = sorted({op for r in results for op in r["function_ops"]})
        return ", ".join(
            f"{op} {statistics.median(r['function_ops'].get(op, 0.0) for r in results):.2f}" for op in operations
        )

    def ratio(over: str, under: str) -> str:
        pairs = zip(runs[under], runs[over], strict=True)
        return spread([b["function_rt"] / a["function_rt"] for a, b in pairs])

    rows = [(f"fair share, {n} requests on 40 mailboxes, two per mailbox at once: Storage round trips per message", "")]
    for label, results in runs.items():
        rows.append((f"  {label}: the function's", spread([r["function_rt"] for r in results])))
        rows.append(("    by operation (median)", by_operation(results)))
    rows += [
        ("  two apps with shares / two apps without", ratio("two apps with shares", "two apps")),
        ("  two apps with shares / one app", ratio("two apps with shares", "one app")),
        # A declared app's records are in its own table, so its outcome and the slot it frees are two writes, not
        # one transaction (shared/status.py AppStatusStore): the price of status an app alone can read.
        ("  one app / the outbox", ratio("one app", "the outbox, no apps")),
        ("  dead letters", ", ".join(str(sum(r["dead_letters"] for r in results)) for results in runs.values())),
    ]
    return rows


# --- 3. Cold import ------------------------------------------------------------------------------------------


def import_cost(runs: int) -> list[tuple[str, str]]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "import_cost.py"), "--runs", str(runs), "--max-ratio", "100"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    start = out.index("{")
    result = json.loads(out[start : out.rindex("}") + 1])
    return [
        ("cold import function_app / azure.functions (time)", f"{result['time_ratio']:.2f}"),
        ("cold import function_app / azure.functions (RSS)", f"{result['rss_ratio']:.2f}"),
    ]


# --- The run ---------------------------------------------------------------------------------------------------


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}"


def large_message(size_mb: int, repeat: int) -> list[tuple[str, str]]:
    """A `size_mb` attachment through the local stack, by the client library as `mailrelay send --attach` does."""
    import hashlib
    import tracemalloc

    from mailrelay_client import MailClient

    from devstack.stack import LocalStack

    sender = MAILBOXES[0]
    size = size_mb * 1024 * 1024
    uploads, trips, client_peaks, growths = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, LocalStack(allowed_senders=(sender,)) as stack:
        mail = MailClient.from_connection_string(stack.storage_connection_string, stack.queue_name)
        host_pid = stack.pids["host-1"]

        def request(subject: str) -> dict[str, Any]:
            return {
                "from": sender,
                "to": ["ada@contoso.com"],
                "subject": subject,
                "body": {"contentType": "text", "content": "x"},
            }

        def wait(count: int) -> None:
            deadline = time.monotonic() + 600
            while len(stack.emulator_get("outbox")) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the large message did not arrive: {stack.emulator_get('outbox')[-1:]}")
                time.sleep(0.1)

        mail.send(request("baseline"))  # the host's imports, clients and caches: what any message costs
        wait(1)
        _, baseline_kib = _proc(host_pid)
        path = Path(tmp) / "large.pdf"
        with path.open("wb") as f:
            for i in range(size_mb):
                f.write(hashlib.sha256(str(i).encode()).digest() * (1024 * 1024 // 32))
        expected = hashlib.sha256(path.read_bytes()).hexdigest()
        for r in range(repeat):
            tracemalloc.start()
            started = time.monotonic()
            mail.send(request(f"large {r}"), files=[path])
            uploads.append(time.monotonic() - started)
            client_peaks.append(tracemalloc.get_traced_memory()[1] / size)
            tracemalloc.stop()
            wait(2 + r)
            trips.append(time.monotonic() - started)
            entry = stack.emulator_get("outbox")[-1]
            assert entry["attachments"][0]["sha256"] == expected, "the attachment arrived altered"
            _, peak_kib = _proc(host_pid)
            growths.append((peak_kib - baseline_kib) * 1024 / size)
    return [
        (
            f"{size_mb} MB attachment: client upload s; end to end s (draft, upload session, send)",
            f"{spread(uploads)}; {spread(trips)}",
        ),
        ("  client peak traced memory / file size", spread(client_peaks)),
        ("  host peak RSS growth over a small message / file size", spread(growths)),
    ]


def smtp(n: int, connections: int, repeat: int) -> list[tuple[str, str]]:
    """Issue 22: mails over SMTP (bench/smtp.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from smtp import smtp_section  # bench/smtp.py, beside this script

    return smtp_section(n, connections, repeat, spread)


def write_markdown(path: Path, rows: list[tuple[str, str]], command: str, took: float) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}; {took:.0f} s.",
        "Figures are min / median / max over the repeats, measured side by side in one run (bench/relay.py",
        "says what each one is). The local stack is Azurite, the emulator and one host process on this machine:",
        "the ratios carry over to Azure, the absolute figures do not.",
        "",
        "| measure | value |",
        "| --- | --- |",
        *[f"| {name.strip()} | {value} |" for name, value in rows],
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few requests each, one repeat, nothing written")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="end to end with the new host.json")
    parser.add_argument("--requests-today", type=int, default=200, help="end to end with batchSize 1 (slow)")
    parser.add_argument("--write", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--only",
        help="run one section (send path, storage round trips, end to end, import, throttling, large, credentials, "
        "fair share, smtp); writes nothing",
    )
    args = parser.parse_args()
    if args.smoke:
        args.repeat, args.requests, args.requests_today = 1, 20, 10
    started = time.monotonic()
    sections: list[tuple[str, Callable[[], list[tuple[str, str]]]]] = [
        ("send path", lambda: send_path(20 if args.smoke else 100, args.repeat)),
        ("storage round trips", lambda: storage_round_trips(10 if args.smoke else 200, args.repeat)),
        ("end to end", lambda: end_to_end(args.requests, args.requests_today, args.repeat)),
        ("import", lambda: import_cost(5 if args.smoke else 20)),
        # A minute lasts 20 s: long enough that the queue's whole-second delays and polling are small beside it,
        # as they are beside a real minute; 90 per mailbox is three windows' worth.
        ("throttling", lambda: throttled(10 if args.smoke else 90, 10.0 if args.smoke else 3.0, args.repeat)),
        ("large", lambda: large_message(4 if args.smoke else 25, args.repeat)),
        ("credentials", lambda: credential_modes(3 if args.smoke else 20, args.repeat)),
        ("fair share", lambda: fair_share(10 if args.smoke else 200, args.repeat)),
        ("smtp", lambda: smtp(10 if args.smoke else 1000, 2 if args.smoke else 20, args.repeat)),
    ]
    if args.only:
        sections = [(name, run) for name, run in sections if name == args.only]
    rows: list[tuple[str, str]] = []
    for name, run in sections:
        print(f"bench: {name}...", file=sys.stderr, flush=True)
        got = run()
        rows.extend(got)
        for measure, value in got:
            print(f"{measure:<80} {value}", flush=True)
    took = time.monotonic() - started
    if not args.smoke and not args.only:
        args.write.parent.mkdir(exist_ok=True)
        write_markdown(args.write, rows, "python bench/relay.py", took)
        print(f"bench: wrote {args.write}", file=sys.stderr)
    print(f"bench: done in {took:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
