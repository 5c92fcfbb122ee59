"""The SMTP listener: aiosmtpd's protocol, with the relay's rules at each command.

Why aiosmtpd: it is the asyncio SMTP server the Python community keeps (the successor of the standard library's
smtpd, removed in Python 3.12), with STARTTLS, AUTH PLAIN/LOGIN, SIZE, 8BITMIME and fixes for SMTP smuggling
(1.4.5) and STARTTLS command injection (1.4.6). Twisted's mail server would do as well, at the size of Twisted.

What a device sees:
- 587: STARTTLS, and nothing but EHLO, STARTTLS, NOOP and QUIT before it (530); 465: TLS from the first byte. AUTH
  (PLAIN, LOGIN) only over TLS, and nothing is accepted before it (530).
- The plain-text port, when an admin turns it on, answers only the addresses of SMTP_PLAIN_SOURCES (554 at connect
  to any other), and takes AUTH in clear: for old devices on a network the admin trusts.
- MAIL FROM: the login's app must have that sender (550 5.7.1 before any data). SIZE is the relay's MIME maximum
  (552 at MAIL FROM when the device declares more, or at the end of DATA). At most SMTP_MAX_RECIPIENTS RCPT (452).
- End of DATA: 250 only once the MIME is stored and the request is on the app's queue (Intake); 451 when storage
  fails or is slow, so the device tries again; 5xx when the relay could never send it as it is.
- Each mail on a connection is its own request: the envelope is new after every DATA, RSET or a failure.
- Failed logins wait longer each time (FailedLogins), per source and per user. Connections per source, the time
  between commands and a connection's whole life are capped.
Log lines carry the app, the device, counts and the request id: never a password, an address list or the content.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import re
import ssl
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Final

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from mailrelay_smtp.intake import STORES_AT_ONCE, Intake, Refused, Unavailable
from mailrelay_smtp.logins import USER, FailedLogins, Login, Logins
from mailrelay_smtp.settings import Settings

log = logging.getLogger("mailrelay.smtp")

# aiosmtpd logs each command line at INFO ("MAIL FROM:<...>", "RCPT TO:<...>") and AUTH lines masked only for the
# forms it knows: our own log lines say what happened, so its logger speaks only of its own faults.
logging.getLogger("mail.log").setLevel(logging.ERROR)
# aiosmtpd warns when AUTH is taken without STARTTLS: on 465 the socket is TLS already, and the plain port is the
# admin's documented choice (the listener logs its own warning when it opens one). Its Session.login_data warning is
# about its own attribute, which it sets itself after each AUTH.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS", module="aiosmtpd")
warnings.filterwarnings("ignore", message="Session.login_data is deprecated", module="aiosmtpd")

AUTH_CHALLENGE_USER: Final = b"User Name\x00"
AUTH_CHALLENGE_PASSWORD: Final = b"Password\x00"


@dataclass(frozen=True)
class Port:
    """One listening port and how it protects the session."""

    kind: str  # "starttls", "tls" or "plain"
    port: int


class Listener:
    """The ports, the shared state of their sessions (connections per source, failed logins) and the intake."""

    def __init__(self, settings: Settings, logins: Logins, intake: Intake, failed: FailedLogins | None = None) -> None:
        self.settings = settings
        self.logins = logins
        self.intake = intake
        self.failed = failed or FailedLogins()
        self.connections: Counter[str] = Counter()
        # scrypt takes 128 MiB and a third of a second per check: two at a time bounds the memory, and keeps the
        # event loop (every other session) free while one runs.
        self.auth_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="smtp-auth")
        # The Storage SDK is synchronous: uploads and enqueues run beside the loop.
        self.store_pool = ThreadPoolExecutor(max_workers=STORES_AT_ONCE, thread_name_prefix="smtp-store")
        self.servers: list[asyncio.AbstractServer] = []
        self.sessions: set[_Session] = set()
        self.closing = False
        self.tls_context = _tls_context(settings) if settings.tls_cert_file else None

    def ports(self) -> list[Port]:
        s = self.settings
        return [
            Port(kind, number)
            for kind, number in (("starttls", s.starttls_port), ("tls", s.tls_port), ("plain", s.plain_port))
            if number
        ]

    async def start(self) -> list[tuple[Port, int]]:
        """Open every port; returns each with the port number bound (0 in the settings: one the system chose)."""
        loop = asyncio.get_running_loop()
        bound = []
        for port in self.ports():
            server = await loop.create_server(
                lambda kind=port.kind: self.protocol(kind),  # type: ignore[misc]
                host=self.settings.host or None,
                port=port.port,
                ssl=self.tls_context if port.kind == "tls" else None,
            )
            self.servers.append(server)
            if port.kind == "plain":
                sources = len(self.settings.plain_sources)
                log.warning("smtp.plain_port_open", extra={"port": port.port, "sources": sources})
            number = server.sockets[0].getsockname()[1]
            bound.append((port, number))
            log.info("smtp.listening", extra={"port": number, "kind": port.kind})
        return bound

    def protocol(self, kind: str) -> SMTP:
        s = self.settings
        return _Session(
            self,
            kind,
            Handler(self),
            data_size_limit=s.max_message_bytes,
            hostname=s.hostname,
            ident="Graph Mail Relay",
            tls_context=self.tls_context if kind == "starttls" else None,
            require_starttls=kind == "starttls",
            # On 465 the socket is TLS from the start (aiosmtpd only knows of STARTTLS); on the plain port the admin
            # chose clear text for the listed sources.
            auth_require_tls=kind == "starttls",
            auth_required=True,
            timeout=s.idle_timeout,
            # Commands beyond these counts end the session: a client guessing passwords or looping. NOOP keeps a long
            # connection alive between mails (some devices send one each time), so it gets room; the session's
            # lifetime bounds the rest.
            command_call_limit={"AUTH": 10, "EHLO": 10, "HELO": 10, "STARTTLS": 2, "NOOP": 10_000, "*": 100_000},
        )

    async def close(self, grace: float | None = None) -> None:
        """Stop without losing a 250: no new connection or mail is taken (a mail's DATA ending now is answered 421,
        a temporary failure), each store under way finishes and its device gets its answer, then every session is
        told 421 and closed. `grace`: how long to wait for the stores (default: their budget and a little)."""
        self.closing = True
        for server in self.servers:
            server.close()
        deadline = asyncio.get_running_loop().time() + (grace if grace is not None else self.settings.store_timeout + 5)
        while any(session.storing for session in self.sessions) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # the loop keeps running: each finished store's answer is written
        for session in list(self.sessions):
            session.shut("421 4.3.2 The relay's SMTP service is restarting; please try again")
        for server in self.servers:
            await server.wait_closed()
        self.auth_pool.shutdown(wait=False, cancel_futures=True)
        self.store_pool.shutdown(wait=False)


def _tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # Exchange Online's own floor for SMTP since 2022
    assert settings.tls_cert_file is not None
    context.load_cert_chain(str(settings.tls_cert_file))  # one PEM: the chain, then its key
    return context


class _Session(SMTP):
    """aiosmtpd's session, with the listener's per-source cap, source allow-list and lifetime."""

    def __init__(self, listener: Listener, kind: str, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.listener = listener
        self.kind = kind
        self.source = ""
        self._refusal: str | None = None
        self._counted = False
        self._lifetime: asyncio.TimerHandle | None = None
        self.storing = False  # a mail's store is under way: its device waits for the answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # STARTTLS calls this again with the TLS transport
        super().connection_made(transport)
        if not first:
            return
        peer = transport.get_extra_info("peername") or ("", 0)
        self.source = str(peer[0])
        self.listener.sessions.add(self)
        settings = self.listener.settings
        if self.kind == "plain" and not _listed(self.source, settings):
            self._refusal = "554 5.7.1 This port is only for the devices its admin listed; use 587 with STARTTLS"
        elif self.listener.connections.total() >= settings.max_connections:
            # Every session may hold a message of SIZE in memory: the cap bounds the listener's memory whatever the
            # number of sources (behind a proxy there is only one).
            self._refusal = "421 4.7.0 Too many connections; try again later"
        elif settings.per_source and self.listener.connections[self.source] >= settings.max_connections_per_source:
            self._refusal = "421 4.7.0 Too many connections from your address; try again later"
        else:
            self.listener.connections[self.source] += 1
            self._counted = True
        self._lifetime = self.loop.call_later(settings.session_timeout, self._expire)

    def connection_lost(self, error: Exception | None) -> None:
        self.listener.sessions.discard(self)
        if self._counted:
            self._counted = False
            self.listener.connections[self.source] -= 1
            if self.listener.connections[self.source] <= 0:
                del self.listener.connections[self.source]
        if self._lifetime is not None:
            self._lifetime.cancel()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self._refusal is not None:
            log.warning("smtp.refused", extra={"source": self.source, "reason": self._refusal[:3], "kind": self.kind})
            await self.push(self._refusal)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    def _expire(self) -> None:
        """The session's whole life is over: tell the client (a 421 is a temporary failure) and close."""
        if self.transport is not None and not self.storing:
            log.info("smtp.session_expired", extra={"source": self.source})
        self.shut("421 4.4.2 Session too long; please reconnect")

    def shut(self, reply: str) -> None:
        """Tell the client `reply` and close; a session waiting for its store is left to get its answer first (its
        lifetime or the listener's close comes back to it)."""
        if self.transport is None:
            return
        if self.storing:
            self._lifetime = self.loop.call_later(1.0, self.shut, reply)
            return
        try:
            if not self.transport.is_closing():  # type: ignore[attr-defined]
                self._writer.write(reply.encode("ascii") + b"\r\n")
        except (OSError, RuntimeError, AttributeError):
            pass  # the client is gone already (a TLS transport being torn down has no protocol left to write with)
        finally:
            self.transport.close()

    def reset_timeout(self, seconds: float) -> None:
        self._reset_timeout(seconds)


def _listed(source: str, settings: Settings) -> bool:
    try:
        address = ip_address(source)
    except ValueError:
        return False
    return any(address in network for network in settings.plain_sources)


class Handler:
    """aiosmtpd's hooks: AUTH (auth_PLAIN, auth_LOGIN), EHLO, MAIL, RCPT and DATA."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    # --- AUTH -----------------------------------------------------------------------------------------------

    async def auth_PLAIN(self, server: _Session, args: list[str]) -> AuthResult:
        blob: Any
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            blob = _b64(args[1])
            if blob is None:
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:  # RFC 4616: [authzid] NUL authcid NUL passwd
            await server.push("501 5.5.2 Cannot split the AUTH PLAIN value")
            return AuthResult(success=False, handled=True)
        return await self._verify(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: _Session, args: list[str]) -> AuthResult:
        user: Any
        if len(args) == 1:
            user = await server.challenge_auth(AUTH_CHALLENGE_USER)
        else:
            user = _b64(args[1])
            if user is None:
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        if not isinstance(user, bytes):
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(AUTH_CHALLENGE_PASSWORD)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._verify(server, user, password)

    async def _verify(self, server: _Session, user: bytes, password: bytes) -> AuthResult:
        listener = self.listener
        name = user.decode("utf-8", "replace")
        shown = name if USER.match(name) else "(not a user name)"  # a log line never carries what an attacker typed
        source = server.source if listener.settings.per_source else None  # behind a proxy: every device's address
        delay = listener.failed.delay(source, name)
        if delay:
            server.reset_timeout(delay + listener.settings.idle_timeout)
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        login = await loop.run_in_executor(listener.auth_pool, listener.logins.verify, user, password)
        if login is None:
            listener.failed.failed(source, name)
            log.warning("smtp.auth_failed", extra={"source": server.source, "user": shown, "waited": delay})
            return AuthResult(success=False, handled=False)
        listener.failed.succeeded(name)
        log.info("smtp.auth", extra={"source": server.source, "app": login.app, "device": login.device})
        return AuthResult(success=True, auth_data=login)

    # --- The transaction ----------------------------------------------------------------------------------

    async def handle_EHLO(
        self, server: _Session, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads one command at a time from a buffered stream, so pipelined commands (RFC 2920) are answered
        # in order; it does not say so itself. After STARTTLS it throws away what was sent before the handshake.
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self, server: _Session, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        login = session.auth_data
        assert isinstance(login, Login)  # auth_required: aiosmtpd answers 530 before MAIL without a login
        senders = self.listener.settings.senders.get(login.app, frozenset())
        if address.lower() not in senders:
            log.warning("smtp.sender_refused", extra={"app": login.app, "device": login.device})
            return (
                f"550 5.7.1 App {login.app} may not send as this address: use one of its senders (MAILRELAY_APPS; "
                "ALLOWED_SENDERS for the default app) in the device's From"
            )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: _Session, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        limit = self.listener.settings.max_recipients
        if not _address_rule().match(address):
            # The relay's contract takes ASCII addresses (an internationalized domain in its xn-- form): refused
            # here, by recipient, rather than the whole mail at the end of DATA.
            return "553 5.1.3 Not an address the relay can send to (ASCII, an internationalized domain as xn--)"
        if len(envelope.rcpt_tos) >= limit:
            # RFC 5321 4.5.3.1.10: 452 for too many recipients; the client sends the rest in another transaction.
            return f"452 4.5.3 Too many recipients: at most {limit} per message"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _Session, session: Session, envelope: Envelope) -> str:
        listener = self.listener
        login = session.auth_data
        assert isinstance(login, Login)
        data = envelope.original_content
        assert isinstance(data, bytes) and envelope.mail_from is not None
        if listener.closing:
            return "421 4.3.2 The relay's SMTP service is restarting; please send this mail again"
        budget = listener.settings.store_timeout
        server.reset_timeout(budget + listener.settings.idle_timeout)  # the store's time is not the client's idling
        loop = asyncio.get_running_loop()
        facts = {"app": login.app, "device": login.device, "bytes": len(data), "recipients": len(envelope.rcpt_tos)}
        store = loop.run_in_executor(
            listener.store_pool, listener.intake.submit, login, envelope.mail_from, list(envelope.rcpt_tos), data
        )
        server.storing = True
        try:
            accepted = await asyncio.wait_for(store, budget)
        except Refused as exc:
            log.warning("smtp.refused_mail", extra={**facts, "reply": exc.reply[:9]})
            return exc.reply
        except (Unavailable, TimeoutError) as exc:
            # Nothing acknowledged: the device keeps the mail and tries again. A store that finishes after the
            # timeout put the request on the queue anyway; the retry carries the same id and is sent once.
            log.error("smtp.store_failed", extra={**facts, "error": str(exc) or type(exc).__name__})
            return "451 4.3.0 The relay could not store the mail now; please try again later"
        finally:
            # aiosmtpd writes the reply this returns before it next yields: cleared here, the answer is on its way.
            server.storing = False
        log.info("smtp.queued", extra={**facts, "id": accepted.id})
        return f"250 2.0.0 Queued as {accepted.id}"


@functools.cache
def _address_rule() -> re.Pattern[str]:
    """The contract's pattern of an address, from the client library's copy of the relay's JSON Schema."""
    from mailrelay_client.validation import schema

    stack: list[Any] = [schema()]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            address = node.get("address")
            if isinstance(address, dict) and isinstance(address.get("pattern"), str):
                return re.compile(address["pattern"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise RuntimeError("the client library's schema has no address pattern")  # a test holds it there


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
