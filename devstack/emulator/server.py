"""The HTTPS server on loopback and the request plumbing: `Emulator` combines the service modules."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import socket
import ssl
import tempfile
import threading
import uuid
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trustme

from devstack.emulator.admin import AdminAPI
from devstack.emulator.common import EmulatorError, _json_response, _Request, _Response
from devstack.emulator.entra import EntraID
from devstack.emulator.exchange import ExchangeScope
from devstack.emulator.faults import Faults
from devstack.emulator.graph import GraphMail, _GraphIds
from devstack.emulator.identity import ManagedIdentity
from devstack.emulator.keyvault import KeyVault

# A fixed name: under `python -m` __name__ would be "__main__".
logger = logging.getLogger("devstack.emulator")

_APPLICATION_BY_APP_ID = re.compile(r"^applications\(appId='([^']+)'\)$", re.IGNORECASE)

# Bodies beyond this are not even read: the connection is answered 413 and closed.
_MAX_READ_BYTES = 64 * 1024 * 1024


class _BodyTooLarge(Exception):
    pass


class Emulator(AdminAPI, EntraID, ManagedIdentity, KeyVault, GraphMail, ExchangeScope, Faults):
    """Entra ID, Microsoft Graph and Key Vault on one loopback HTTPS server.

    All state methods are thread-safe, and may be called before or after :meth:`start`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()  # TenantState: the lock, the signing key, the tenant's state
        self.host = host
        self._requested_port = port
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

        # A throwaway CA for this instance only; clients trust it through ca_cert_path.
        self._workdir = Path(tempfile.mkdtemp(prefix="mailrelay-emulator-"))
        # Removed by stop(), or when the emulator is garbage-collected or the interpreter exits.
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._workdir, ignore_errors=True)
        self._ca = trustme.CA(organization_name="Graph Mail Relay local emulator")
        identities = {"127.0.0.1", "localhost", "::1", host}
        self._server_cert = self._ca.issue_cert(*sorted(identities))
        self.ca_cert_path = str(self._workdir / "emulator-ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_cert_path)

        # The header value App Service puts in IDENTITY_HEADER: a per-instance random string.
        self.identity_header = uuid.uuid4().hex

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Emulator:
        """Bind and serve in a background thread. Returns self."""
        with self._lock:
            if self._server is not None:
                return self
            if self._stopped:
                # stop() removed the CA file that clients were told to trust.
                raise EmulatorError("a stopped emulator cannot be started again; create a new one")
            server = _Server((self.host, self._requested_port), self)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server_cert.configure_cert(context)
            # The TLS handshake happens on the handler thread's first read, so one stalled client
            # cannot block the accept loop.
            server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, name="mailrelay-emulator", daemon=True)
            self._thread.start()
        logger.info("emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and remove the CA file. Safe to call more than once."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server, self._thread = None, None
            self._stopped = True
        self._stopping.set()  # wakes handlers sleeping on a delay fault
        if server is not None:
            server.shutdown()
            server.server_close()
            # Clients' pooled keep-alive connections would otherwise still be served after stop().
            server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._cleanup()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        server = self._server
        if server is None:
            raise EmulatorError("the emulator is not started")
        return int(server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def msi_endpoint(self) -> str:
        return f"{self.url}/msi/token"

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, request: _Request) -> _Response:
        parts = [unquote(segment) for segment in request.path.split("/") if segment]
        lowered = [part.lower() for part in parts]
        if lowered[:1] == ["_emulator"]:
            return self._admin(request, parts[1:])
        if lowered == ["msi", "token"]:
            self._count("msi.token")
            return self._msi_token(request)
        if lowered[:1] == ["secrets"]:
            return self._keyvault(request, parts[1:])
        if lowered[:1] == ["certificates"]:
            return self._keyvault(request, parts[1:], "certificates")
        if len(parts) == 4 and lowered[:2] == ["v1.0", "users"] and lowered[3] == "sendmail":
            self._count("graph.sendMail")
            return self._graph_send_mail(request, parts[2])
        if len(parts) >= 4 and lowered[:2] == ["v1.0", "users"] and lowered[3] == "messages":
            self._count("graph.drafts")
            return self._graph_messages(request, parts[2], parts[4:])
        if len(parts) == 4 and lowered[:3] == ["api", "v2.0", "attachmentsessions"]:
            self._count("graph.upload")
            return self.upload_put(request, parts[3])
        if len(parts) == 5 and lowered[:2] == ["v1.0", "users"] and lowered[3:] == ["mailfolders", "inbox"]:
            self._count("graph.mailFolders")
            return self._graph_inbox(request, parts[2])
        if (
            len(parts) == 6
            and lowered[:2] == ["v1.0", "users"]
            and lowered[3] == "mailfolders"
            and lowered[5] == "messages"
        ):
            self._count("graph.messages")
            return self._graph_folder_messages(request, parts[2], parts[4])
        application = _APPLICATION_BY_APP_ID.match(parts[1]) if len(parts) in (2, 3) and lowered[0] == "v1.0" else None
        if application is not None:
            self._count("graph.applications")
            return self._graph_application(request, application.group(1), parts[2:])
        if lowered[:1] == ["v1.0"]:
            message = f"Resource not found for the segment '{parts[-1]}'."
            return self._graph_error(_GraphIds.of(request), 400, "BadRequest", message)
        # Entra paths: /{tenant}/...
        if len(parts) == 4 and lowered[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            self._count("entra.openid")
            return self._openid_configuration(request, parts[0])
        if len(parts) == 4 and lowered[1:] == ["discovery", "v2.0", "keys"]:
            self._count("entra.openid")
            return self._jwks(request, parts[0])
        if len(parts) == 4 and lowered[1:] == ["oauth2", "v2.0", "token"]:
            self._count("entra.token")
            return self._token(request, parts[0])
        return _json_response(404, {"error": {"code": "NotFound", "message": "No emulated endpoint here."}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS handshake failures and dropped connections: noise for a local emulator.
        logger.debug("connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    server_version = "GraphMailRelayEmulator/1.0"
    timeout = 60  # idle keep-alive connections are closed, so handler threads do not pile up
    # Headers and body leave in separate writes; with Nagle on, the body waits for the client's delayed
    # ACK (~40 ms a response on Linux).
    disable_nagle_algorithm = True
    server: _Server

    # http.server dispatches on do_<METHOD>; every method goes through the same router.
    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except _BodyTooLarge:
            self._send(
                _json_response(
                    413,
                    {"error": {"code": "RequestEntityTooLarge", "message": "The request body is too large."}},
                ),
                close=True,
            )
            return
        request = _Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.emulator._dispatch(request)
        except Exception:
            logger.exception("emulator failure on %s %s", self.command, split.path)
            response = _json_response(
                500, {"error": {"code": "EmulatorError", "message": "The emulator failed; see its log."}}
            )
        self._send(response)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > _MAX_READ_BYTES:
                    raise _BodyTooLarge
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_READ_BYTES:
            raise _BodyTooLarge
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, response: _Response, close: bool = False) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if close or response.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if response.body and self.command != "HEAD":
            self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Path only: query strings and bodies can carry identifiers and secrets.
        logger.info("%s %s -> %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        # http.server's own notes (malformed request lines, timeouts); debug only.
        logger.debug("http: %s", format % args)
