"""Storage round trips counted in one process (a local host's), by service and operation, for the benchmark.

Opt-in, and installed from devstack only: `python -m devstack.host` counts when DEVSTACK_ROUND_TRIPS_DIR names a
directory, and writes `round-trips-<pid>.json` there when it stops (one file per host, so several instances and a
host started again each leave their own). shared/ never knows: the count wraps azure-core's
`RequestsTransport.send`, the one place every request of the Storage SDKs (queues, tables, blobs; and Key Vault's
and the managed identity's, counted as "other") passes in a synchronous process. A retry by the SDK's retry policy
is a second send, so a second round trip, as it is on the wire.

Each round trip is the host's own (receive, delete, lease renewal, poison move, queue creation: the local host marks
them with `host_calls()`) or the function's (everything else in the process). The file:

    {"pid": 123, "roundTrips": {"host": {"queue": {"receive": 40, "delete": 200}},
                                "function": {"table": {"insert mailstatus": 200, ...}, ...}},
     "functions": {"send_mail": {"completed": 200, "receives": 40, "emptyReceives": 12, ...}}}

Operation names say what the request does. Queue: `receive`, `peek`, `send`, `update` (a lease renewed, or a
message made visible again), `delete`, `create queue`, `properties`. Table: `insert <table>`, `get <table>`,
`query <table>`, `update <table>` / `merge <table>` (PUT / MERGE or PATCH on an existing entity, `if-match` when
conditional on an ETag), `upsert <table>` (without If-Match: inserted if missing), `delete <table>`, `batch`,
`create table`. Blob: `upload`, `download`, `delete`, `properties`, and container operations.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ENV = "DEVSTACK_ROUND_TRIPS_DIR"
SERVICES = ("queue", "table", "blob")
HOST, FUNCTION = "host", "function"

_actor = threading.local()


@contextlib.contextmanager
def host_calls() -> Iterator[None]:
    """Requests made inside this block, on this thread, are the host's own (receive, delete, renew...)."""
    previous = getattr(_actor, "name", FUNCTION)
    _actor.name = HOST
    try:
        yield
    finally:
        _actor.name = previous


def endpoints(connection_string: str) -> dict[str, str]:
    """{"queue": "http://127.0.0.1:10001/devstoreaccount1", ...} from a connection string's *Endpoint parts, or
    the account's public endpoints (https://<account>.<service>.core.windows.net) when it names none."""
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    out = {}
    for service in SERVICES:
        explicit = parts.get(f"{service.capitalize()}Endpoint")
        if explicit:
            out[service] = explicit.rstrip("/")
        elif "AccountName" in parts:
            suffix = parts.get("EndpointSuffix", "core.windows.net")
            protocol = parts.get("DefaultEndpointsProtocol", "https")
            out[service] = f"{protocol}://{parts['AccountName']}.{service}.{suffix}"
    return out


class RoundTripCounter:
    """Counts every request azure-core's RequestsTransport sends in this process while installed."""

    def __init__(self, storage_endpoints: Mapping[str, str]) -> None:
        self._endpoints = dict(storage_endpoints)
        self._lock = threading.Lock()
        self.counts: dict[str, dict[str, Counter[str]]] = {}
        self._original: Any = None

    def install(self) -> RoundTripCounter:
        from azure.core.pipeline.transport import RequestsTransport

        if self._original is not None:
            return self
        original = self._original = RequestsTransport.send
        counter = self

        def send(transport: Any, request: Any, **kwargs: Any) -> Any:
            counter.count(request.method, request.url, request.headers)
            return original(transport, request, **kwargs)

        RequestsTransport.send = send  # type: ignore[method-assign]
        return self

    def uninstall(self) -> None:
        from azure.core.pipeline.transport import RequestsTransport

        if self._original is not None:
            RequestsTransport.send = self._original  # type: ignore[method-assign]
            self._original = None

    def count(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        service, operation = self.classify(method, url, headers)
        actor = getattr(_actor, "name", FUNCTION)
        with self._lock:
            self.counts.setdefault(actor, {}).setdefault(service, Counter())[operation] += 1

    def classify(self, method: str, url: str, headers: Mapping[str, str]) -> tuple[str, str]:
        method = method.upper()
        for service, base in self._endpoints.items():
            if url.startswith(base + "/") or url == base or url.startswith(base + "?"):
                split = urlsplit(url[len(base) :] or "/")
                path = unquote(split.path).strip("/")
                query = parse_qs(split.query)
                if service == "queue":
                    return service, _queue_operation(method, path, query)
                if service == "table":
                    if_match = next((v for k, v in headers.items() if k.lower() == "if-match"), None)
                    return service, _table_operation(method, path, if_match)
                return service, _blob_operation(method, path, query)
        return "other", f"{method} {urlsplit(url).hostname}"

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        with self._lock:
            return {
                actor: {service: dict(sorted(ops.items())) for service, ops in services.items()}
                for actor, services in self.counts.items()
            }

    def write(self, directory: str | Path, extra: Mapping[str, Any]) -> Path:
        path = Path(directory) / f"round-trips-{os.getpid()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": os.getpid(), "roundTrips": self.snapshot(), **extra}, indent=2))
        return path


def _queue_operation(method: str, path: str, query: Mapping[str, list[str]]) -> str:
    # Paths: <queue>, <queue>/messages, <queue>/messages/<id> (Queue service REST API).
    segments = path.split("/")
    if len(segments) >= 2 and segments[1] == "messages":
        if len(segments) == 2:
            if method == "GET":
                return "peek" if query.get("peekonly") == ["true"] else "receive"
            return {"POST": "send", "DELETE": "clear"}.get(method, method)
        return {"DELETE": "delete", "PUT": "update"}.get(method, method)
    if method == "PUT":
        return "create queue" if "comp" not in query else f"set {query['comp'][0]}"
    if method == "GET" and query.get("comp") == ["metadata"]:
        return "properties"
    return {"DELETE": "delete queue", "GET": "list queues"}.get(method, method)


def _table_operation(method: str, path: str, if_match: str | None) -> str:
    # Paths: Tables (the table list), $batch, <table>, <table>(), <table>(PartitionKey='..',RowKey='..').
    if path.startswith("$batch"):
        return "batch"
    if path.startswith("Tables"):
        return {"POST": "create table", "DELETE": "delete table"}.get(method, "list tables")
    table, _, keys = path.partition("(")
    entity = keys.strip(")") != ""
    if method == "GET":
        return f"{'get' if entity else 'query'} {table}"
    if method == "POST":
        return f"insert {table}"
    if method == "DELETE":
        return f"delete {table}"
    verb = {"PUT": "update", "MERGE": "merge", "PATCH": "merge"}.get(method, method)
    if if_match is None:
        return f"upsert {table} ({verb})"  # no If-Match: insert or update (Insert Or Replace / Insert Or Merge)
    if if_match == "*":
        return f"{verb} {table}"  # If-Match: *, the entity must exist, whatever its ETag
    return f"{verb} {table} if-match"  # conditional on the ETag last read


def _blob_operation(method: str, path: str, query: Mapping[str, list[str]]) -> str:
    container_only = "/" not in path
    if query.get("restype") == ["container"] or container_only:
        return {"PUT": "create container", "DELETE": "delete container"}.get(method, "list or container properties")
    return {"PUT": "upload", "GET": "download", "DELETE": "delete", "HEAD": "properties"}.get(method, method)
