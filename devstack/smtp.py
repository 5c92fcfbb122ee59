"""The SMTP listener (smtp/, `python -m mailrelay_smtp`) beside the local stack: `mailrelay local --smtp PORT`.

What the stack needs to run it, apart from the process itself (LocalStack starts and stops that, as its other parts):
- one login per app (each declared app, and `default`, the outbox), user = the app's name, a random password, hashed
  with the listener's own hash_password into a logins file in the stack's working folder (readable by this user);
- a TLS certificate for localhost and 127.0.0.1, issued by a throwaway CA made here, and a CA bundle holding that CA
  and the emulator's, so that one file (the state file's `smtp.ca`) verifies both the listener and the emulator.
  The emulator makes its own CA inside its process and keeps the key there, so the listener's cannot be issued by it;
- the listener's settings: the relay's own (MAILRELAY_APPS, ALLOWED_SENDERS, MAIL_QUEUE_NAME, Azurite's connection
  string) and its SMTP_* ones, STARTTLS on the port asked for, implicit TLS only with `--smtps`, on 127.0.0.1.
Never deployed: devstack/ is in .funcignore.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

SMTP_PART: Final = "smtp"  # the part's name in the stack (its log: log_tail("smtp"))
HOST: Final = "127.0.0.1"
DEFAULT_APP: Final = "default"  # the outbox's app (shared/apps.py DEFAULT_APP), whose senders are ALLOWED_SENDERS
# The listener prints one JSON line per bound port on stdout: {"listening": "starttls"|"tls", "port": N, ...}.
LISTENING: Final = '"listening"'


class SmtpError(RuntimeError):
    """The listener cannot be set up as asked (its module missing, a port out of range); the message says why."""


@dataclass(frozen=True)
class SmtpLogin:
    """A device's login: `user` logs in with `password` and sends as `app`; `device` is the name the console shows."""

    user: str
    app: str
    device: str
    password: str = field(repr=False)

    def state(self) -> dict[str, str]:
        return {"user": self.user, "password": self.password, "app": self.app, "device": self.device}


def make_logins(apps: Sequence[Mapping[str, Any]]) -> list[SmtpLogin]:
    """One login per app: `default` (the outbox, sending as ALLOWED_SENDERS) and each declared app, by its name
    (app names are valid user names: lower-case letters, digits and dashes). The passwords are random and
    throwaway: they live in the state file, for tools and tests, and hashed in the listener's logins file."""
    names = [DEFAULT_APP, *(str(app["name"]) for app in apps)]
    # 32 characters of token_urlsafe: well past the listener's 12-character minimum, and nothing to escape in a shell.
    return [SmtpLogin(name, name, f"local {name}", secrets.token_urlsafe(24)) for name in names]


def write_private(path: Path, text: str) -> Path:
    """Write a file only this user can read (it holds a key or password hashes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    return path


def write_logins_file(path: Path, logins: Sequence[SmtpLogin], log2_n: int | None = None) -> Path:
    """The listener's SMTP_LOGINS_FILE: each login with its scrypt hash (the listener's own hash_password, at its
    default cost unless `log2_n` says otherwise: the listener checks a login at the cost its hash names)."""
    from mailrelay_smtp.logins import hash_password

    def hashed(password: str) -> str:
        return hash_password(password) if log2_n is None else hash_password(password, log2_n)

    entries = [{"user": x.user, "app": x.app, "device": x.device, "hash": hashed(x.password)} for x in logins]
    return write_private(path, json.dumps({"logins": entries}, indent=2) + "\n")


def write_certificate(workdir: Path, emulator_ca: Path) -> tuple[Path, Path]:
    """(the listener's SMTP_TLS_CERT_FILE, the CA bundle): a certificate for localhost and 127.0.0.1 with its key in
    one PEM (the chain, then the key, as the listener reads it), issued by a throwaway CA made for this stack; the
    bundle holds that CA and the emulator's, so a client given it verifies both."""
    import trustme

    ca = trustme.CA(organization_name="Graph Mail Relay local SMTP")
    issued = ca.issue_cert("localhost", HOST)
    chain = b"".join(blob.bytes() for blob in issued.cert_chain_pems)
    cert = write_private(workdir / "smtp-cert.pem", (chain + issued.private_key_pem.bytes()).decode("ascii"))
    bundle = workdir / "ca-bundle.pem"
    bundle.write_text(emulator_ca.read_text(encoding="ascii") + ca.cert_pem.bytes().decode("ascii"), encoding="ascii")
    return cert, bundle


def check_ports(port: int, tls_port: int | None) -> None:
    """PORT 0 would turn STARTTLS off (the listener's setting), so a port is always a real one."""
    for flag, value in (("--smtp", port), ("--smtps", tls_port)):
        if value is not None and not 1 <= value <= 65535:
            raise SmtpError(f"{flag} takes a port from 1 to 65535, got {value}")
    if tls_port is not None and tls_port == port:
        raise SmtpError(f"--smtp and --smtps need two ports, got {port} for both")


def check_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("mailrelay_smtp") is None:
        raise SmtpError(
            "the SMTP listener (smtp/, import mailrelay_smtp) is not installed in this environment: run "
            "scripts/bootstrap, which installs it from the checkout"
        )


def listener_environment(
    base: Mapping[str, str],
    relay_settings: Mapping[str, str],
    *,
    logins_file: Path,
    cert_file: Path,
    port: int,
    tls_port: int | None,
) -> dict[str, str]:
    """The listener's environment: `base` (PATH and the like) without any SMTP_* setting of the caller's shell, the
    relay's own settings the listener shares, and its SMTP_* ones for this stack."""
    env = {k: v for k, v in base.items() if not k.startswith("SMTP_")}
    for name in ("MAILRELAY_APPS", "ALLOWED_SENDERS", "MAIL_QUEUE_NAME", "AzureWebJobsStorage"):
        env.pop(name, None)
        if name in relay_settings:
            env[name] = relay_settings[name]
    env.update(
        {
            "SMTP_LOGINS_FILE": str(logins_file),
            "SMTP_TLS_CERT_FILE": str(cert_file),
            "SMTP_STARTTLS_PORT": str(port),
            "SMTP_TLS_PORT": str(tls_port or 0),
            "SMTP_PLAIN_PORT": "0",
            "SMTP_HOST": HOST,
            "SMTP_HOSTNAME": "localhost",  # the certificate's name; no FQDN lookup at start
            "PYTHONUNBUFFERED": "1",  # its listening lines must reach the pipe at once
        }
    )
    return env


def state(port: int, tls_port: int | None, ca: Path, logins: Sequence[SmtpLogin]) -> dict[str, Any]:
    """The state file's `smtp`: where the listener is and each login, so that tools and tests can drive it."""
    return {
        "host": HOST,
        "port": port,
        "starttls": True,
        **({"tlsPort": tls_port} if tls_port else {}),
        "ca": str(ca),
        "logins": [login.state() for login in logins],
    }


def banner_lines(smtp: Mapping[str, Any], senders: Mapping[str, Sequence[str]], read_access: bool) -> str:
    """The startup banner's lines: the ports, each login, and a swaks one-liner that sends through the first
    declared app's login (or default's). `senders`: each app's senders, by name."""
    implicit = f", implicit TLS on {smtp['tlsPort']}" if smtp.get("tlsPort") else ""
    lines = [f"  smtp             {smtp['host']}:{smtp['port']} (STARTTLS, then AUTH PLAIN or LOGIN{implicit})\n"]
    for login in smtp["logins"]:
        lines.append(
            f"  smtp login       user {login['user']} password {login['password']} (app {login['app']}, "
            f"device {login['device']!r})\n"
        )
    login = smtp["logins"][-1]
    sender = (list(senders.get(login["app"]) or []) or ["alerts@contoso.com"])[0]
    swaks = " ".join(
        [
            "swaks --server",
            f"{smtp['host']}:{smtp['port']}",
            "--tls --tls-verify --tls-ca-path",
            shlex.quote(str(smtp["ca"])),
            "--auth-user",
            shlex.quote(login["user"]),
            "--auth-password",
            shlex.quote(login["password"]),
            "--from",
            shlex.quote(sender),
            "--to you@contoso.com",
        ]
    )
    lines.append(f"  smtp try         {swaks}\n")
    if not read_access:
        # A mail over SMTP is a MIME request, sent through a draft: Exchange's Mail.ReadWrite over the scope.
        lines.append(
            "  smtp warning     --no-read-access withholds Application Mail.ReadWrite, which a MIME request's draft "
            "needs: mails sent over SMTP will be dead-lettered\n"
        )
    return "".join(lines)
