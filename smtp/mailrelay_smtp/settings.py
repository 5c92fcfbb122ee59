"""The listener's settings, from the environment (docs/smtp.md lists them). Read once at start: a missing or bad one
stops the listener with one line naming it, before any port is opened."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

# The relay's maximum MIME message: Graph takes MIME in a request body of at most 4 MB, base64-encoded (the client
# library's MAX_MIME_BYTES, docs/mime.md). SIZE advertises it, so a device knows before it sends.
from mailrelay_client.validation import MAX_MIME_BYTES, MAX_RECIPIENTS

DEFAULT_APP: Final = "default"
DEFAULT_QUEUE: Final = "mail-outbox"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    logins_file: Path
    senders: Mapping[str, frozenset[str]]  # app name -> the senders it may use, lower case
    queue_name: str = DEFAULT_QUEUE
    connection_string: str | None = None  # locally (Azurite)
    queue_service_uri: str | None = None  # in Azure, with the managed identity
    client_id: str | None = None
    tls_cert_file: Path | None = None
    starttls_port: int = 587
    tls_port: int = 465
    plain_port: int = 0
    plain_sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hostname: str = field(default_factory=socket.getfqdn)
    host: str = ""  # every interface
    max_message_bytes: int = MAX_MIME_BYTES
    max_recipients: int = MAX_RECIPIENTS
    max_connections_per_source: int = 20
    max_connections: int = 400  # in all: each may hold a 3 MB message in memory (1.2 GB at most)
    # Whether the peer address is the device's. Azure Container Apps' TCP ingress does not pass the client's address
    # on (microsoft/azure-container-apps#899, open): every device arrives from the ingress's own addresses, and per
    # source limits would make one device's wrong password slow every device. Off, the source is not used: logins
    # are slowed per user only, there is no per-source connection cap, and the plain port cannot be opened (it
    # trusts sources); the ingress's IP restrictions keep the sources out instead.
    per_source: bool = True
    idle_timeout: float = 120.0
    session_timeout: float = 1800.0
    store_timeout: float = 30.0


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env

    def text(name: str) -> str:
        return env.get(name, "").strip()

    def number(name: str, default: float, low: float, high: float) -> float:
        raw = text(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"Setting {name} must be a number, got {raw[:40]!r}.") from None
        if not low <= value <= high:
            raise SettingsError(f"Setting {name} must be between {low:g} and {high:g}, got {raw[:40]!r}.")
        return value

    def port(name: str, default: int) -> int:
        return int(number(name, default, 0, 65535))

    logins = text("SMTP_LOGINS_FILE")
    if not logins:
        raise SettingsError(
            "Setting SMTP_LOGINS_FILE is missing: the JSON file of the devices' logins "
            '({"logins": [{"user", "app", "device", "hash"}]}; `python -m mailrelay_smtp hash-password` makes a hash).'
        )
    connection_string = text("AzureWebJobsStorage") or None
    service_uri = text("SMTP_QUEUE_SERVICE_URI") or None
    if not connection_string and not service_uri:
        raise SettingsError(
            "Setting SMTP_QUEUE_SERVICE_URI (https://<account>.queue.core.windows.net, with AZURE_CLIENT_ID) or "
            "AzureWebJobsStorage (a connection string) is missing: where the apps' queues are."
        )
    queue_name = text("MAIL_QUEUE_NAME") or DEFAULT_QUEUE
    starttls, implicit, plain = port("SMTP_STARTTLS_PORT", 587), port("SMTP_TLS_PORT", 465), port("SMTP_PLAIN_PORT", 0)
    sources = _networks(text("SMTP_PLAIN_SOURCES"))
    per_source = text("SMTP_PEER_IS_DEVICE").lower() or "true"
    if per_source not in ("true", "false"):
        raise SettingsError(f"Setting SMTP_PEER_IS_DEVICE must be true or false, got {per_source[:20]!r}.")
    if plain and per_source == "false":
        raise SettingsError(
            "Setting SMTP_PLAIN_PORT cannot be used with SMTP_PEER_IS_DEVICE=false: the plain port trusts the "
            "devices' addresses (SMTP_PLAIN_SOURCES), which the listener cannot see behind a proxy."
        )
    if plain and not sources:
        raise SettingsError(
            "Setting SMTP_PLAIN_SOURCES is missing: SMTP_PLAIN_PORT opens a port without TLS, so it needs the "
            "addresses (CIDRs) of the devices that may use it; every other source is refused."
        )
    if not (starttls or implicit or plain):
        raise SettingsError(
            "Settings SMTP_STARTTLS_PORT, SMTP_TLS_PORT and SMTP_PLAIN_PORT are all 0: no port to open."
        )
    cert = text("SMTP_TLS_CERT_FILE")
    if (starttls or implicit) and not cert:
        raise SettingsError(
            "Setting SMTP_TLS_CERT_FILE is missing: a PEM file with the certificate chain and its private key, for "
            "STARTTLS and implicit TLS (in Azure: the Key Vault certificate, mounted as a secret volume)."
        )
    if cert and not Path(cert).is_file():
        raise SettingsError(f"Setting SMTP_TLS_CERT_FILE names {cert!r}, which is not a file.")
    return Settings(
        logins_file=Path(logins),
        senders=app_senders(text("MAILRELAY_APPS"), text("ALLOWED_SENDERS")),
        queue_name=queue_name,
        connection_string=connection_string,
        queue_service_uri=service_uri,
        client_id=text("AZURE_CLIENT_ID") or None,
        tls_cert_file=Path(cert) if cert else None,
        starttls_port=starttls,
        tls_port=implicit,
        plain_port=plain,
        plain_sources=sources,
        hostname=text("SMTP_HOSTNAME") or socket.getfqdn(),
        host=text("SMTP_HOST"),
        max_recipients=int(number("SMTP_MAX_RECIPIENTS", MAX_RECIPIENTS, 1, MAX_RECIPIENTS)),
        per_source=per_source == "true",
        max_connections=int(number("SMTP_MAX_CONNECTIONS", 400, 1, 10_000)),
        max_connections_per_source=int(number("SMTP_MAX_CONNECTIONS_PER_SOURCE", 20, 1, 1000)),
        # RFC 5321 4.5.3.2.7 asks a server to wait 5 minutes for a command; devices on a LAN need far less, and a
        # shorter wait frees a slot held by a silent client sooner. The session's whole life is capped too, so a
        # client that trickles a byte a minute (slow-loris) cannot hold a slot for ever.
        idle_timeout=number("SMTP_IDLE_TIMEOUT_SECONDS", 120, 5, 600),
        session_timeout=number("SMTP_SESSION_TIMEOUT_SECONDS", 1800, 30, 86400),
    )


_APP_NAME: Final = re.compile(r"^[a-z](?:[a-z0-9]|-(?=[a-z0-9])){1,23}$")


def app_senders(apps_json: str, allowed_senders: str) -> dict[str, frozenset[str]]:
    """Each app's senders, from the relay's own settings: MAILRELAY_APPS (each app's `name` and `senders`; the relay
    checks the rest) and ALLOWED_SENDERS (the default app, the outbox). The listener refuses at MAIL FROM what the
    relay would dead-letter; the relay checks again."""
    allowed = frozenset(a.strip().lower() for a in allowed_senders.split(",") if a.strip())
    senders: dict[str, frozenset[str]] = {DEFAULT_APP: allowed}
    if not apps_json:
        return senders
    try:
        declared = json.loads(apps_json)
    except ValueError:
        raise SettingsError("Setting MAILRELAY_APPS must be a JSON array of apps (the relay's own setting).") from None
    if not isinstance(declared, list):
        raise SettingsError("Setting MAILRELAY_APPS must be a JSON array of apps (the relay's own setting).")
    for index, app in enumerate(declared):
        name = app.get("name") if isinstance(app, dict) else None
        listed = app.get("senders") if isinstance(app, dict) else None
        if not isinstance(name, str) or not _APP_NAME.match(name) or not isinstance(listed, list):
            raise SettingsError(
                f"Setting MAILRELAY_APPS: the app at position {index + 1} has no valid name and senders."
            )
        # As declared: the relay refuses at start an app whose senders are off ALLOWED_SENDERS.
        senders[name] = frozenset(str(s).strip().lower() for s in listed)
    return senders


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise SettingsError(
                f"Setting SMTP_PLAIN_SOURCES holds {part[:60]!r}, which is not an address or CIDR."
            ) from None
    return tuple(networks)
