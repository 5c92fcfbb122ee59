"""The local stack: Azurite, the emulator of Entra ID / Graph / Key Vault, and the local Functions host.

    with LocalStack(allowed_senders=["alerts@contoso.com"], mailboxes=["hr@contoso.com"]) as stack:
        stack.storage_connection_string, stack.queue_name, stack.emulator_url, stack.ca_cert_path

Three parts, started in dependency order and stopped in reverse (hosts first, so none works against a
storage or emulator that is going away):
- Azurite (devstack.azurite), on free loopback ports, in memory, with the relay's queues and tables;
- the emulator, `python -m devstack.emulator --port 0 --seed … --ready-file …`, seeded with a throwaway
  app registration (random tenant, client id and secret), the secret in its Key Vault, and mailboxes;
- `instances` local hosts, `python -m devstack.host`, with the relay's settings pointing at both, all on
  the one queue as Azure's scaled-out instances are. Their parts are named host-1, host-2, ...;
  `kill_host(i)` SIGKILLs one (a crash, not a failure of the stack) and `start_host(i)` starts it again.

    with LocalStack(instances=2, read_access=False, settings={"GRAPH_TIMEOUT_SECONDS": "2"}) as stack:
        stack.kill_host(1); stack.start_host(1); stack.set_read_access(True)

The emulator and the host run in their own sessions, so a Ctrl-C in the terminal reaches only the
parent, which then stops them in order. On Linux they also get SIGTERM if the parent dies without
cleaning up (PR_SET_PDEATHSIG), so a killed test run leaves nothing behind.

Each GRAPH_CREDENTIAL mode runs here as in Azure (docs/credentials.md; `credential=`, `mailrelay local
--credential MODE`): the emulator is seeded with what the mode needs, and nothing else, and the hosts get the
settings infra/ gives the Function.

    with LocalStack(credential="federated") as stack:
        stack.set_federated_credential(subject="wrong"); stack.delete_federated_credential(); stack.delete_identity()
    with LocalStack(credential="certificate") as stack:
        stack.renew_certificate(register=True); stack.remove_old_certificate_keys()

Apps (docs/apps.md; MAILRELAY_APPS) are declared as the relay's setting declares them, each on its own queue
(<queue>-<name>, created here with its poison queue), its senders joining the allow-list and the Exchange scope:

    with LocalStack(apps=[{"name": "billing", "senders": ["billing@contoso.com"]}]) as stack:
        stack.app_queue("billing")  # "mail-outbox-billing"

With `smtp_port`, the SMTP listener (smtp/, docs/smtp.md) runs beside them as its own process, STARTTLS on that
port (and implicit TLS on `smtps_port`), with a login per app (devstack/smtp.py):

    with LocalStack(apps=[...], smtp_port=2587) as stack:
        stack.smtp_state()  # {"host", "port", "starttls", "ca", "logins": [{"user", "password", "app", "device"}]}

`run_foreground` is `mailrelay local`: it writes the state file the other `mailrelay` commands read.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from devstack.azurite import Azurite, die_with_parent, owned_workdir, pid_alive, sweep_stale_workdirs
from devstack.smtp import SMTP_PART, SmtpLogin
from shared.apps import SETTING as APPS_SETTING
from shared.apps import app_queue
from shared.settings import (
    CREDENTIAL_MODES,
    DEFAULT_QUEUE_NAME,
    RETRY_QUEUE_SUFFIX,
    SettingsError,
    load_settings,
    parse_apps,
)

ROOT = Path(__file__).resolve().parents[1]
SECRET_NAME = "graph-client-secret"
CERTIFICATE_NAME = "graph-client-certificate"  # the Key Vault certificate of GRAPH_CREDENTIAL=certificate
FEDERATED_CREDENTIAL_NAME = "mailrelay-function-identity"  # the app registration's federated identity credential
# What a federated identity credential that trusts a managed identity names ("Configure an application to trust a
# managed identity", https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-
# managed-identity): the issuer is Entra's v2.0 issuer of the identity's tenant, the subject the identity's object
# (principal) id, the audience api://AzureADTokenExchange (public cloud).
FEDERATED_ISSUER = "https://login.microsoftonline.com/{tenant}/v2.0"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
DEFAULT_QUEUE = DEFAULT_QUEUE_NAME
HOST_READY = "local host ready"  # devstack.host logs this once its listeners poll
HOST_PART = "host"  # the hosts' parts are host-1, host-2, ...; log_tail("host") reads them all
# The timers' schedules (function_app.py binds them to these settings; the host refuses to start while one
# is missing, as Azure's does). The local host does not run timers: `python -m devstack.timers NAME` does.
TIMER_SCHEDULES = {
    "EXPIRY_CHECK_SCHEDULE": "0 0 7 * * *",
    "STATUS_CLEANUP_SCHEDULE": "0 */10 * * * *",
    "QUEUE_DEPTH_SCHEDULE": "0 */5 * * * *",
}
# Exchange's roles for the app (RBAC for Applications, as infra/ assigns them over the sending scope).
# Mail.Send to send; Mail.ReadBasic so `mailrelay doctor --allowed/--denied` can probe a mailbox without
# sending; Mail.Read, optional, so the relay can find its mark (an extended property, which Mail.ReadBasic
# does not return) in Sent Items after a send whose outcome it could not know:
# https://learn.microsoft.com/en-us/graph/permissions-reference (Mail.ReadBasic.All excludes extended
# properties) and https://learn.microsoft.com/en-us/graph/api/singlevaluelegacyextendedproperty-get.
EXCHANGE_ROLES = ("Application Mail.Send", "Application Mail.ReadBasic")
READ_ROLE = "Application Mail.Read"
# The large-message flow (draft, upload sessions, send) needs Mail.ReadWrite (shared/sending.py); granted with
# read access, as docs/permissions.md advises.
WRITE_ROLE = "Application Mail.ReadWrite"

# Environment the host must not inherit: it would point the relay's identity or settings elsewhere.
_INHERITED_BUT_DROPPED = (
    "AZURE_CLIENT_ID",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
)


class StackError(RuntimeError):
    """A part of the stack did not start or died; the message names it and ends with its output."""


@dataclass(frozen=True)
class LocalCertificate:
    """A throwaway self-signed certificate of GRAPH_CREDENTIAL=certificate, as Key Vault would make one.

    `pem` (the private key and the certificate) goes to the emulator's Key Vault only; `certificate_pem` (public)
    to the app registration's keyCredentials. `version` is the Key Vault version once stored, `key_id` the app
    registration's keyCredential id once registered."""

    pem: str = field(repr=False)
    certificate_pem: str
    thumbprint_sha1: str  # hex, upper case: the portal's thumbprint, keyCredentials' customKeyIdentifier
    not_before: datetime
    not_after: datetime
    version: str | None = None
    key_id: str | None = None


def make_certificate(tenant_id: str, lifetime: timedelta, now: datetime | None = None) -> LocalCertificate:
    """A self-signed RSA 2048 certificate valid from a few minutes ago for `lifetime` (Key Vault's self-signed
    policy: issuerParameters.name Self, keyType RSA, keySize 2048, as infra/ asks for;
    https://learn.microsoft.com/azure/key-vault/certificates/about-certificates). Throwaway: nothing real."""
    from devstack.certificates import certificate_pem, key_pem, self_signed, sha1_thumbprint

    now = now or datetime.now(UTC)
    key, certificate = self_signed(
        f"mailrelay-local-{tenant_id[:8]}", not_before=now - timedelta(minutes=5), not_after=now + lifetime
    )
    public = certificate_pem(certificate)
    return LocalCertificate(
        pem=key_pem(key) + public,
        certificate_pem=public,
        thumbprint_sha1=sha1_thumbprint(certificate),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


class LocalStack:
    """Start and stop the three parts; expose their endpoints. Not reusable once stopped."""

    def __init__(
        self,
        allowed_senders: Sequence[str] = ("alerts@contoso.com",),
        exchange_scope: Sequence[str] | None = None,
        mailboxes: Sequence[str] = (),
        queue_name: str = DEFAULT_QUEUE,
        settings: Mapping[str, str] | None = None,
        inherit_output: bool = False,
        startup_timeout: float = 30.0,
        lease_seconds: float = 5.0,
        host_json: Path | None = None,
        secret_expires_in_days: float | None = None,
        instances: int = 1,
        read_access: bool = True,
        credential: str = "secret",
        expires_in_days: float | None = None,
        apps: Sequence[Mapping[str, Any]] = (),
        smtp_port: int | None = None,
        smtps_port: int | None = None,
    ) -> None:
        """`exchange_scope`: mailboxes inside the app's Exchange scope (default: the allowed senders not
        named in `mailboxes`); `mailboxes`: mailboxes that exist but are outside it. `lease_seconds`: the
        host's lease on a running message; short, because the host renews it on that rhythm and
        finishes its renewals before it exits. `settings` add to or override the hosts' settings
        (host_settings()), e.g. {"GRAPH_TIMEOUT_SECONDS": "2"}. The emulator's and hosts' output is kept in
        files (see `log_tail`), and with `inherit_output` the hosts' is also echoed to this process's standard
        error. `instances`: how many local hosts run against the one queue, as Azure scales out (each is handed
        up to batchSize + newBatchThreshold messages per queue function, and runs PYTHON_THREADPOOL_THREAD_COUNT
        of them at once in its worker's one thread pool). `read_access`: whether the app may read its
        mailboxes' Sent Items (Exchange role "Application Mail.Read" over the scope), which lets the relay
        resolve an unknown send instead of following SEND_UNKNOWN_OUTCOME; `set_read_access` changes it.

        `credential`: GRAPH_CREDENTIAL, how the relay proves itself to Entra ID, and what the emulator is seeded
        with for it (docs/credentials.md; contract of issue 19):
        - "secret": an app registration with a client secret, the secret in Key Vault (as before);
        - "certificate": an app registration with a self-signed certificate's public key (keyCredentials) and no
          secret; the certificate, key included, in Key Vault as CERTIFICATE_NAME (`renew_certificate`);
        - "federated": an app registration with no secret and a federated identity credential that trusts a
          user-assigned managed identity (`identity_client_id`, `identity_principal_id`); Key Vault holds nothing;
        - "managed-identity": no app registration: the user-assigned identity itself holds Exchange's roles.
        `expires_in_days` (`secret_expires_in_days` is its older name): the secret's or the certificate's lifetime
        from now (default 365); nothing expires in the other two modes.

        `apps`: the declaration's objects (MAILRELAY_APPS; docs/apps.md), e.g. [{"name": "billing", "senders":
        ["billing@contoso.com"], "messagesPerMinute": 10}]. Each app gets its queue (<queue_name>-<name>) and its
        poison queue in Azurite, and the hosts a trigger on it; its senders join `allowed_senders`, and the Exchange
        scope unless `exchange_scope` is given or `mailboxes` names them. A declaration the relay would refuse is
        refused here, with the relay's words, before anything starts. None: the outbox alone, as before.

        `smtp_port`: run the SMTP listener too, STARTTLS on this port (implicit TLS on `smtps_port` if given), one
        login per app (devstack/smtp.py); it starts last and stops first, as it enqueues into Azurite."""
        if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
            raise StackError(f"instances must be a whole number, at least 1, got {instances!r}")
        if credential not in CREDENTIAL_MODES:
            raise StackError(f"credential must be one of {', '.join(CREDENTIAL_MODES)}, got {credential!r}")
        if None not in (expires_in_days, secret_expires_in_days) and expires_in_days != secret_expires_in_days:
            raise StackError("expires_in_days and secret_expires_in_days name one lifetime: give one of them")
        lifetime = expires_in_days if expires_in_days is not None else secret_expires_in_days
        self.credential = credential
        self.instances = instances
        self.read_access = read_access
        self.apps = [dict(app) for app in apps]
        # An app's senders must be on ALLOWED_SENDERS (the relay refuses the declaration otherwise): they join it.
        app_senders = [s for app in self.apps for s in app.get("senders") or [] if isinstance(s, str)]
        self.allowed_senders = _unique([*allowed_senders, *app_senders])
        outside = {m.lower() for m in mailboxes}
        if exchange_scope is None:
            exchange_scope = [s for s in self.allowed_senders if s.lower() not in outside]
        self.exchange_scope = _unique(exchange_scope)  # an address two apps share is one mailbox
        inside = {s.lower() for s in self.exchange_scope}
        self.mailboxes = [m for m in mailboxes if m.lower() not in inside]
        self._lease_seconds = lease_seconds
        self._host_json = host_json  # another host.json for the hosts (the benchmark compares two)
        self._expires_in = timedelta(days=365.0 if lifetime is None else lifetime)
        self.queue_name = queue_name
        if self.apps:
            try:  # the relay's own check, so the stack refuses what the relay would, in its words
                parse_apps(json.dumps(self.apps), frozenset(a.lower() for a in self.allowed_senders), queue_name)
            except SettingsError as e:
                raise StackError(str(e)) from None
        self._settings = dict(settings or {})
        self._inherit_output = inherit_output
        self._startup_timeout = startup_timeout
        self._workdir: Path | None = None
        self._azurite: Azurite | None = None
        self._emulator: subprocess.Popen[bytes] | None = None
        self._smtp: subprocess.Popen[bytes] | None = None  # the SMTP listener, with smtp_port
        self._hosts: dict[str, subprocess.Popen[bytes]] = {}  # "host-1", "host-2", ...: one per instance
        self._killed: set[str] = set()  # instances stopped on purpose (kill_host): not a failure of the stack
        self._frozen = False  # Azurite stopped by freeze_storage (SIGSTOP)
        self._logs: list[IO[bytes]] = []
        self._readers: list[threading.Thread] = []
        self._host_ready: dict[str, threading.Event] = {}
        self._ready: dict[str, Any] = {}
        self._stopped = False
        self._smtp_ports = (smtp_port, smtps_port)
        self._smtp_logins: list[SmtpLogin] = []  # once started
        self._smtp_ca: Path | None = None
        if smtp_port is not None:
            from devstack.smtp import SmtpError, check_installed, check_ports

            try:
                check_ports(smtp_port, smtps_port)
                check_installed()
            except SmtpError as e:
                raise StackError(str(e)) from None
        elif smtps_port is not None:
            raise StackError("--smtps needs --smtp: STARTTLS is the listener's first port, implicit TLS its second")
        # A throwaway app registration, new for every stack: nothing here is a real credential.
        self.tenant_id = str(uuid.uuid4())
        self.client_id = str(uuid.uuid4())
        # Only the secret mode has a client secret: the others have none anywhere, in Entra or in Key Vault.
        self._client_secret: str | None = secrets.token_urlsafe(24) if credential == "secret" else None
        # The user-assigned managed identity of the secretless modes (random ids, as Azure gives them).
        self.identity_client_id: str | None = None
        self.identity_principal_id: str | None = None
        if credential in ("federated", "managed-identity"):
            self.identity_client_id = str(uuid.uuid4())
            self.identity_principal_id = str(uuid.uuid4())
        if credential == "managed-identity":
            # The identity is the Graph caller: the ids others read as the app's are the identity's.
            assert self.identity_client_id is not None
            self.client_id = self.identity_client_id
        self._identity_exists = credential in ("federated", "managed-identity")
        # The federated identity credential on the app registration (None: deleted, or not this mode).
        self._federated: dict[str, Any] | None = None
        if credential == "federated":
            self._federated = self.expected_federated_credential()
        # The certificate mode's certificates: the newest is Key Vault's current version; `_registered` are those
        # whose public keys the app registration holds (keyCredentials), oldest first.
        self.certificates: list[LocalCertificate] = []
        self._registered: list[LocalCertificate] = []

    # --- endpoints -------------------------------------------------------------------------------

    @property
    def storage_connection_string(self) -> str:
        return self._running_azurite().connection_string

    @property
    def emulator_url(self) -> str:
        return str(self._ready_value("url"))

    @property
    def ca_cert_path(self) -> str:
        return str(self._ready_value("caCertPath"))

    @property
    def queue_endpoint(self) -> str:
        azurite = self._running_azurite()
        return f"http://127.0.0.1:{azurite.queue_port}/devstoreaccount1"

    @property
    def pids(self) -> dict[str, int]:
        """The process id of each part running now: azurite, emulator, host-1, host-2, ... (a host killed by
        kill_host and not started again is left out)."""
        found = {
            "azurite": self._azurite.pid if self._azurite else None,
            "emulator": self._emulator.pid if self._emulator else None,
            "smtp": self._smtp.pid if self._smtp and self._smtp.poll() is None else None,
            **{name: process.pid for name, process in self._hosts.items() if process.poll() is None},
        }
        return {name: pid for name, pid in found.items() if pid is not None}

    def state(self) -> dict[str, Any]:
        """The state file's content (what `mailrelay` commands need to reach the stack).

        `relaySettings` are the settings the local host runs with, so that `mailrelay expiry check`
        checks this stack's secret. They hold no secret value: the client secret stays in the
        emulator's Key Vault, read through its managed-identity endpoint as in Azure.
        """
        return {
            "pid": os.getpid(),  # whose stack: a second `mailrelay local` refuses to overwrite a live one's
            "storageConnectionString": self.storage_connection_string,
            "queueName": self.queue_name,
            "emulatorUrl": self.emulator_url,
            "caCertPath": self.ca_cert_path,
            "relaySettings": self.host_settings(),
            "instances": self.instances,
            "readAccess": self.read_access,
            "pids": self.pids,
            **self.credential_state(),
            # Only with apps declared: `mailrelay send --app NAME` checks the name and finds the queue here.
            **({"apps": self.app_state()} if self.apps else {}),
            # Only with the SMTP listener: its port, CA and logins (passwords included: this file is the user's own).
            **({"smtp": self.smtp_state()} if self._smtp_ports[0] is not None else {}),
        }

    def smtp_state(self) -> dict[str, Any]:
        """The SMTP listener's address, CA bundle and logins (devstack/smtp.py state)."""
        from devstack.smtp import state

        port, tls_port = self._smtp_ports
        if port is None or self._smtp_ca is None:
            raise StackError("the stack runs no SMTP listener (smtp_port), or it is not started")
        return state(port, tls_port, self._smtp_ca, self._smtp_logins)

    def smtp_devices(self) -> dict[str, tuple[str, str]]:
        """Each SMTP login's device name and app, by user: what the console shows beside a mail the listener took."""
        return {login.user: (login.device, login.app) for login in self._smtp_logins}

    def app_queue(self, name: str) -> str:
        """The queue app `name` enqueues on (shared.apps.app_queue): <queue_name>-<name>; the outbox for default."""
        return app_queue(self.queue_name, name)

    def app_state(self) -> list[dict[str, Any]]:
        """Each declared app's name, queue and senders, for the state file and the banner (no principals)."""
        return [
            {"name": str(app["name"]), "queue": self.app_queue(str(app["name"])), "senders": list(app["senders"])}
            for app in self.apps
        ]

    def credential_state(self) -> dict[str, Any]:
        """The credential's public facts, for the state file and the banner: the mode, the identity's ids, the
        certificate's thumbprint and dates. Never a key or a secret."""
        state: dict[str, Any] = {"credential": self.credential}
        if self.identity_client_id is not None:
            state["identity"] = {"clientId": self.identity_client_id, "principalId": self.identity_principal_id}
        if self.certificates:
            current = self.certificates[-1]
            state["certificate"] = {
                "name": CERTIFICATE_NAME,
                "thumbprint": current.thumbprint_sha1,
                "notAfter": current.not_after.isoformat(),
                # Known for a renewal (the admin call answers it); the seeded first version is Key Vault's to name.
                **({"version": current.version} if current.version else {}),
            }
        return state

    def host_settings(self) -> dict[str, str]:
        """The relay's settings for this stack, as the local host gets them."""
        return {
            **self._credential_settings(),
            "ALLOWED_SENDERS": ",".join(self.allowed_senders),
            "MAIL_QUEUE_NAME": self.queue_name,
            "AzureWebJobsStorage": self.storage_connection_string,
            "GRAPH_BASE_URL": self.emulator_url,
            "GRAPH_AUTHORITY_HOST": self.emulator_url,
            "MAILRELAY_CA_BUNDLE": self.ca_cert_path,
            # azure-identity's ManagedIdentityCredential finds App Service's endpoint through these two.
            "IDENTITY_ENDPOINT": str(self._ready_value("msiEndpoint")),
            "IDENTITY_HEADER": str(self._ready_value("identityHeader")),
            # As the deployment sets it: the worker's one thread pool fits all the host hands over at once
            # (devstack.host.deployment_thread_count, from this stack's host.json).
            "PYTHON_THREADPOOL_THREAD_COUNT": str(self._deployment_thread_count()),
            **TIMER_SCHEDULES,
            **({APPS_SETTING: json.dumps(self.apps, separators=(",", ":"))} if self.apps else {}),
            **self._settings,
        }

    def _credential_settings(self) -> dict[str, str]:
        """GRAPH_CREDENTIAL and its companions, as infra/ sets them for each mode (contract of issue 19): only what
        the mode needs, so a relay that reached for more (Key Vault in a secretless mode) would fail here too."""
        if self.credential == "secret":
            return {  # as before the modes: GRAPH_CREDENTIAL unset is the secret
                "GRAPH_TENANT_ID": self.tenant_id,
                "GRAPH_CLIENT_ID": self.client_id,
                "KEY_VAULT_URI": self.emulator_url,
                "GRAPH_CLIENT_SECRET_NAME": SECRET_NAME,
            }
        if self.credential == "certificate":
            return {
                "GRAPH_CREDENTIAL": "certificate",
                "GRAPH_TENANT_ID": self.tenant_id,
                "GRAPH_CLIENT_ID": self.client_id,
                "KEY_VAULT_URI": self.emulator_url,
                "GRAPH_CERTIFICATE_NAME": CERTIFICATE_NAME,
            }
        assert self.identity_client_id is not None
        if self.credential == "federated":
            return {
                "GRAPH_CREDENTIAL": "federated",
                "GRAPH_TENANT_ID": self.tenant_id,
                "GRAPH_CLIENT_ID": self.client_id,
                "AZURE_CLIENT_ID": self.identity_client_id,
            }
        # managed-identity: no app registration, so no GRAPH_CLIENT_ID (optional; it would have to equal this).
        return {
            "GRAPH_CREDENTIAL": "managed-identity",
            "GRAPH_TENANT_ID": self.tenant_id,
            "AZURE_CLIENT_ID": self.identity_client_id,
        }

    def _deployment_thread_count(self) -> int:
        from devstack.host import HOST_JSON, deployment_thread_count

        return deployment_thread_count(self._host_json or HOST_JSON)

    def emulator_get(self, path: str) -> Any:
        """GET one of the emulator's admin endpoints (`outbox`, `stats`) and return its JSON."""
        return self._emulator_call("GET", path)

    def emulator_post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST to one of the emulator's admin endpoints (`scope`, `mailboxes`, `faults`, ...)."""
        answer = self._emulator_call("POST", path, body)
        if path == "app-secret" and str(body.get("clientId", "")).lower() == self.client_id.lower():
            # The app's secret was rotated in Entra: set_read_access re-registers the app with this one.
            self._client_secret = str(body["secret"])
        return answer

    def set_exchange_scope(self, address: str, in_scope: bool) -> None:
        self.emulator_post("scope", {"address": address, "inScope": in_scope})

    # --- the credential, changed while the stack runs ------------------------------------------------

    def renew_certificate(self, *, register: bool = True) -> LocalCertificate:
        """A new version of the Key Vault certificate (a new key, the same lifetime from now), as Key Vault's
        AutoRenew lifetime action makes one; with `register`, its public key is also added to the app registration's
        keyCredentials, as infra/scripts' sync does in Azure (Key Vault's renewal does not tell Entra). The old key
        stays registered until `remove_old_certificate_keys`. The relay is not told: it must find the new one."""
        self._need_mode("certificate", "renew_certificate")
        fresh = make_certificate(self.tenant_id, self._expires_in)
        version = self.emulator_post("certificate", {"name": CERTIFICATE_NAME, "pem": fresh.pem})
        fresh = replace(fresh, version=_answer_field(version, "version"))
        self.certificates.append(fresh)
        return self.register_certificate() if register else fresh

    def register_certificate(self) -> LocalCertificate:
        """Add the public key of Key Vault's current certificate version to the app registration's keyCredentials
        (infra/scripts/sync-app-certificate.sh in Azure: `az ad app credential reset --cert --append`); returns it
        with its keyId."""
        self._need_mode("certificate", "register_certificate")
        current = self.certificates[-1]
        answer = self.emulator_post(
            "app-key-credential",
            {"clientId": self.client_id, "certificate": current.certificate_pem, "displayName": _cn(current)},
        )
        current = self.certificates[-1] = replace(current, key_id=_answer_field(answer, "keyId"))
        self._registered.append(current)
        return current

    def remove_old_certificate_keys(self) -> None:
        """Leave on the app registration only the key of Key Vault's current certificate version (the sync's clean-up
        in Azure): Entra then refuses an assertion signed with an older one (AADSTS700027). The emulator's admin API
        replaces an app whole (`POST apps`), so the app is registered again with its one key."""
        self._need_mode("certificate", "remove_old_certificate_keys")
        current = self.certificates[-1]
        self._registered = [c for c in self._registered if c.thumbprint_sha1 == current.thumbprint_sha1]
        self.emulator_post("apps", self._app_entry(read_access=self.read_access))

    def expected_federated_credential(self) -> dict[str, Any]:
        """The federated identity credential that trusts this stack's identity, as Microsoft documents it."""
        self._need_mode("federated", "expected_federated_credential")
        return {
            "name": FEDERATED_CREDENTIAL_NAME,
            "issuer": FEDERATED_ISSUER.format(tenant=self.tenant_id),
            "subject": self.identity_principal_id,
            "audiences": [TOKEN_EXCHANGE_AUDIENCE],
        }

    @property
    def federated_credential(self) -> dict[str, Any] | None:
        """The app registration's federated identity credential now (None once deleted)."""
        return dict(self._federated) if self._federated is not None else None

    def set_federated_credential(
        self, *, issuer: str | None = None, subject: str | None = None, audiences: Sequence[str] | None = None
    ) -> None:
        """Replace the federated identity credential (by its name) with the fields given, the others as documented:
        `set_federated_credential(subject=stack.identity_client_id)` is the classic mistake (the client id where the
        principal id belongs). Entra accepts any of them when saved; the relay's token request fails. With no
        argument, the credential as Microsoft documents it is put back (after a delete too)."""
        expected = self.expected_federated_credential()
        changed = {
            **expected,
            **{k: v for k, v in (("issuer", issuer), ("subject", subject)) if v is not None},
            **({"audiences": list(audiences)} if audiences is not None else {}),
        }
        self.emulator_post("app-federated-credential", {"clientId": self.client_id, **changed})
        self._federated = changed

    def delete_federated_credential(self) -> None:
        """Remove the app registration's federated identity credential: the app has no credential left at all."""
        self._need_mode("federated", "delete_federated_credential")
        self.emulator_post(
            "app-federated-credential", {"clientId": self.client_id, "name": FEDERATED_CREDENTIAL_NAME, "delete": True}
        )
        self._federated = None

    def delete_identity(self) -> None:
        """Remove the user-assigned managed identity (as deleting it, or unassigning it from the Function, does):
        the identity endpoint refuses its client id from now on. `restore_identity` puts it back with the same ids."""
        if self.identity_client_id is None:
            raise StackError(f"the {self.credential} mode has no user-assigned identity to delete")
        self.emulator_post("identity", {"clientId": self.identity_client_id, "delete": True})
        self._identity_exists = False

    def restore_identity(self) -> None:
        """Register the user-assigned identity again, with its ids, and its roles as set_read_access left them."""
        if self.identity_client_id is None:
            raise StackError(f"the {self.credential} mode has no user-assigned identity")
        self.emulator_post("identity", self._identity_entry(read_access=self.read_access))
        self._identity_exists = True

    def _need_mode(self, mode: str, what: str) -> None:
        if self.credential != mode:
            raise StackError(f"{what} needs credential={mode!r}; this stack runs {self.credential!r}")

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LocalStack:
        if self._stopped:
            raise StackError("a stopped stack cannot be started again; create a new one")
        try:
            sweep_stale_workdirs()
            self._workdir = Path(owned_workdir("mailrelay-local-"))
            self._azurite = Azurite().start()
            self._create_queues()
            self._start_emulator()
            self._check_settings()
            for index in range(1, self.instances + 1):
                self.start_host(index)
            if self._smtp_ports[0] is not None:
                self._start_smtp()
        except BaseException:
            # Ctrl-C or a failure half-way: stop what did start, then report.
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the SMTP listener, the hosts, the emulator, then Azurite; remove the working directory. Safe to
        repeat."""
        self._stopped = True
        self.thaw_storage()  # a stopped Azurite would not act on the SIGTERM below until continued
        # The listener first: it enqueues into Azurite, and a mail it answered 250 is already on the queue.
        for process in [self._smtp, *self._hosts.values(), self._emulator]:
            if process is not None:
                _terminate(process)
        if self._azurite is not None:
            self._azurite.stop()
        for reader in self._readers:
            reader.join(timeout=5)  # the parts have exited: their pipes are at EOF
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def dead_part(self) -> str | None:
        """The name of a part that has exited while the stack runs, or None. A host stopped by kill_host is
        not one: it was meant to die."""
        if self._azurite is not None and not self._azurite.running:
            return "azurite"
        hosts = [(n, p) for n, p in self._hosts.items() if n not in self._killed]
        parts = [("emulator", self._emulator), ("SMTP listener", self._smtp), *hosts]
        for name, process in parts:
            if process is not None and process.poll() is not None:
                return name
        return None

    def host_name(self, index: int) -> str:
        """The part name of host instance `index`, 1 to `instances`: "host-1", "host-2", ..."""
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= self.instances:
            raise StackError(f"host instances are numbered 1 to {self.instances}, got {index!r}")
        return f"{HOST_PART}-{index}"

    def kill_host(self, index: int) -> None:
        """SIGKILL host instance `index`: no goodbye and no clean-up, as when an instance crashes mid-send.
        The messages it leased come back once their lease (`lease_seconds`) runs out."""
        name = self.host_name(index)
        process = self._hosts.get(name)
        if process is None or process.poll() is not None:
            raise StackError(f"{name} is not running")
        self._killed.add(name)
        process.kill()
        process.wait(10)

    def freeze_storage(self) -> None:
        """SIGSTOP Azurite: every Storage request (queues, tables, blobs) hangs from now on, connections included
        (the kernel still accepts them), until thaw_storage; then each is answered, late. A Storage stall of any
        length, as the hosts' clients meet it: nothing fails, everything waits."""
        azurite = self._running_azurite()
        assert azurite.pid is not None
        os.kill(azurite.pid, signal.SIGSTOP)
        self._frozen = True

    def thaw_storage(self) -> None:
        """SIGCONT Azurite after freeze_storage (nothing to do if it is not frozen)."""
        if self._frozen and self._azurite is not None and self._azurite.pid is not None:
            os.kill(self._azurite.pid, signal.SIGCONT)
        self._frozen = False

    def start_host(self, index: int) -> None:
        """Start host instance `index` (1 to `instances`), or start it again after kill_host; returns once
        it polls. Its log goes on in the same part (`log_tail("host-1")`)."""
        name = self.host_name(index)
        running = self._hosts.get(name)
        if running is not None and running.poll() is None:
            raise StackError(f"{name} is already running")
        command = [sys.executable, "-m", "devstack.host", "--lease-seconds", str(self._lease_seconds)]
        if self._host_json is not None:
            command += ["--host-json", str(self._host_json)]
        ready = self._host_ready[name] = threading.Event()
        process = self._hosts[name] = self._spawn(name, command, self._host_environment(), ready_marker=HOST_READY)
        self._killed.discard(name)
        deadline = time.monotonic() + self._startup_timeout
        while not ready.wait(0.05):
            if process.poll() is not None:
                raise StackError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not start within {self._startup_timeout:.0f} s")

    def _start_smtp(self) -> None:
        """The SMTP listener (`python -m mailrelay_smtp`): its logins and certificate in the working folder, then the
        process; returns once it printed a listening line for each port, fails with its own words otherwise (a port
        already taken, a setting it refuses)."""
        from devstack.smtp import LISTENING, listener_environment, make_logins, write_certificate, write_logins_file

        assert self._workdir is not None
        port, tls_port = self._smtp_ports
        assert port is not None
        self._smtp_logins = make_logins(self.apps)
        logins_file = write_logins_file(self._workdir / "smtp-logins.json", self._smtp_logins)
        cert, self._smtp_ca = write_certificate(self._workdir, Path(self.ca_cert_path))
        base = {k: v for k, v in os.environ.items() if k not in _INHERITED_BUT_DROPPED}
        env = listener_environment(
            base, self.host_settings(), logins_file=logins_file, cert_file=cert, port=port, tls_port=tls_port
        )
        ready = self._host_ready[SMTP_PART] = threading.Event()
        expected = 2 if tls_port else 1
        command = [sys.executable, "-m", "mailrelay_smtp", "serve"]
        self._smtp = self._spawn(SMTP_PART, command, env, ready_marker=LISTENING, ready_count=expected)
        deadline = time.monotonic() + self._startup_timeout
        while not ready.wait(0.05):
            if self._smtp.poll() is not None:
                ports = f"{port}" + (f" and {tls_port}" if tls_port else "")
                raise StackError(
                    f"the SMTP listener (port {ports}) exited with {self._smtp.returncode}:\n{self.log_tail(SMTP_PART)}"
                )
            if time.monotonic() > deadline:
                raise StackError(f"the SMTP listener did not start within {self._startup_timeout:.0f} s")

    def set_read_access(self, granted: bool) -> None:
        """Grant or withdraw the app's Exchange role "Application Mail.Read" over its scope, at once.

        The emulator's admin API has no call for one role, so the app is registered again (`POST apps`) with
        the same ids, its current secret (rotations through emulator_post are followed) and the new roles;
        Exchange reads the roles at each request, so tokens already issued see the change. In managed-identity mode
        the roles are the identity's: it is registered again instead (unless delete_identity removed it)."""
        if self.credential == "managed-identity":
            if self._identity_exists:
                self.emulator_post("identity", self._identity_entry(read_access=granted))
        else:
            self.emulator_post("apps", self._app_entry(read_access=granted))
        self.read_access = granted

    def unknown_outcome(self) -> str:
        """SEND_UNKNOWN_OUTCOME as the hosts read it (resend or deadletter): what an unknown send becomes
        when the app may not read Sent Items."""
        return load_settings(self._host_environment()).unknown_outcome

    def log_tail(self, part: str, lines: int = 30) -> str:
        """The last lines a part wrote: "azurite"'s, "emulator", "host-1", ...; "host" gives every host's,
        each line prefixed with its part."""
        if self._workdir is None:
            return ""
        if part == HOST_PART:
            parts = sorted(self._hosts, key=lambda name: int(name.rpartition("-")[2]))
            return "\n".join(f"[{name}] {line}" for name in parts for line in self.log_tail(name, lines).splitlines())
        path = self._workdir / f"{part}.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- the parts -------------------------------------------------------------------------------

    def _create_queues(self) -> None:
        # The host creates its queues too, but an app (or the demo) may send before the host's first
        # poll: create them here so the first send never meets QueueNotFound.
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.queue import QueueServiceClient

        service = QueueServiceClient.from_connection_string(self.storage_connection_string)
        # Each app's queue and the host's poison queue for it, as infra/main.bicep creates them per app.
        apps = [self.app_queue(str(app["name"])) for app in self.apps]
        for name in [*relay_queue_names(self.queue_name), *apps, *(f"{queue}-poison" for queue in apps)]:
            with contextlib.suppress(ResourceExistsError):
                service.create_queue(name)
        # And the tables, as infra/main.bicep creates them in Azure: `mailrelay doctor` is green at once.
        from azure.data.tables import TableServiceClient

        from shared.apps import status_table
        from shared.expiry import TABLE_NAME as EXPIRY_TABLE
        from shared.status import TABLE_NAME as STATUS_TABLE  # the pace rows live in it too (shared/pacing.py)

        tables = TableServiceClient.from_connection_string(self.storage_connection_string)
        # Each app's status table too, where its records live (shared/apps.py status_table).
        for table in (STATUS_TABLE, *(status_table(str(app["name"])) for app in self.apps), EXPIRY_TABLE):
            tables.create_table_if_not_exists(table)

    def _seed(self) -> dict[str, Any]:
        # A minute's margin: "expires in 10 days", checked a moment after start, must still read 10 days
        # (whole days left, rounded down), not 9.
        lifetime = self._expires_in + timedelta(minutes=1)
        mailboxes = [{"address": a, "inExchangeScope": True} for a in _unique(self.exchange_scope)]
        mailboxes += [{"address": a, "inExchangeScope": False} for a in _unique(self.mailboxes)]
        seed: dict[str, Any] = {"mailboxes": mailboxes}
        if self.credential != "managed-identity":  # that mode has no app registration at all
            if self.credential == "certificate" and not self.certificates:
                first = make_certificate(self.tenant_id, lifetime)
                self.certificates.append(first)
                self._registered.append(first)
            seed["apps"] = [self._app_entry(read_access=self.read_access)]
        if self.identity_client_id is not None:
            seed["identities"] = [self._identity_entry(read_access=self.read_access)]
        if self.credential == "secret":
            expires = (datetime.now(UTC) + lifetime).isoformat()
            seed["secrets"] = [{"name": SECRET_NAME, "value": self._client_secret, "expiresOn": expires}]
        if self.credential == "certificate":
            # A Key Vault certificate: the emulator keeps it as the secret of the same name (PEM, managed, exp/nbf
            # the certificate's), which is what the relay reads.
            seed["certificates"] = [{"name": CERTIFICATE_NAME, "pem": self.certificates[-1].pem}]
        return seed

    def _exchange_roles(self, read_access: bool) -> list[str]:
        # RBAC for Applications, as infra/ sets it up: no Entra consent; Exchange's roles over the scope.
        return [*EXCHANGE_ROLES, READ_ROLE, WRITE_ROLE] if read_access else list(EXCHANGE_ROLES)

    def _app_entry(self, *, read_access: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "tenantId": self.tenant_id,
            "clientId": self.client_id,
            "roles": [],
            "scopeModel": "rbac",
            "exchangeRoles": self._exchange_roles(read_access),
        }
        if self._client_secret is not None:  # certificate and federated apps have no client secret
            entry["secret"] = self._client_secret
        if self.credential == "certificate":
            entry["keyCredentials"] = [
                {"certificate": c.certificate_pem, "displayName": _cn(c)} for c in self._registered
            ]
        if self._federated is not None:
            entry["federatedCredentials"] = [self._federated]
        return entry

    def _identity_entry(self, *, read_access: bool) -> dict[str, Any]:
        # The user-assigned identity. In federated mode it only vouches for the app (its token is the assertion):
        # no roles of its own. In managed-identity mode it is the Graph caller, with the app's usual Exchange roles
        # (RBAC for Applications pointing at its service principal) and no Entra consent.
        caller = self.credential == "managed-identity"
        return {
            "clientId": self.identity_client_id,
            "principalId": self.identity_principal_id,
            "tenantId": self.tenant_id,
            "roles": [],
            "exchangeRoles": self._exchange_roles(read_access) if caller else [],
            "scopeModel": "rbac",
        }

    def _start_emulator(self) -> None:
        assert self._workdir is not None
        seed = self._workdir / "seed.json"
        # The seed holds the throwaway secret or certificate key: readable by this user only, removed once read.
        fd = os.open(seed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(self._seed(), file)
        ready = self._workdir / "emulator-ready.json"
        command = [
            sys.executable, "-m", "devstack.emulator", "--port", "0",
            "--seed", str(seed), "--ready-file", str(ready), "--log-level", "WARNING",
        ]
        self._emulator = self._spawn("emulator", command, dict(os.environ))
        deadline = time.monotonic() + self._startup_timeout
        while not ready.exists():
            if self._emulator.poll() is not None:
                raise StackError(f"the emulator exited with {self._emulator.returncode}:\n{self.log_tail('emulator')}")
            if time.monotonic() > deadline:
                raise StackError(f"the emulator did not start within {self._startup_timeout:.0f} s")
            time.sleep(0.05)
        self._ready = json.loads(ready.read_text(encoding="utf-8"))
        # The emulator has read its seed: the throwaway secret need not wait on disk for stop().
        seed.unlink(missing_ok=True)

    def _host_environment(self) -> dict[str, str]:
        # The caller's environment (PATH, proxies, ...) without what would point the relay elsewhere.
        env = {k: v for k, v in os.environ.items() if k not in _INHERITED_BUT_DROPPED}
        env.update(self.host_settings())
        env["PYTHONUNBUFFERED"] = "1"  # its ready line must reach the pipe at once
        return env

    def _check_settings(self) -> None:
        # The relay reads its settings at the first message: a bad override would fail every message, so it
        # fails the start instead, with the relay's own explanation.
        try:
            load_settings(self._host_environment())
        except SettingsError as e:
            raise StackError(f"the hosts' settings: {e}") from None

    def _spawn(
        self,
        part: str,
        command: list[str],
        env: dict[str, str],
        ready_marker: str | None = None,
        ready_count: int = 1,
    ) -> subprocess.Popen[bytes]:
        assert self._workdir is not None
        # Appended to: a host started again after kill_host goes on in its own log.
        log = open(self._workdir / f"{part}.log", "ab")  # noqa: SIM115 - closed by stop()
        self._logs.append(log)
        process = subprocess.Popen(
            command,
            cwd=ROOT,  # `-m devstack.…` and function_app.py are found from the checkout's root
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the parent only; it stops the parts in order
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        # One reader per part: keeps its log file, echoes it to this terminal if asked, spots the ready line.
        reader = threading.Thread(
            target=self._pump, args=(process, log, part, ready_marker, ready_count), name=f"log-{part}", daemon=True
        )
        reader.start()
        self._readers.append(reader)
        return process

    def _pump(
        self,
        process: subprocess.Popen[bytes],
        log: IO[bytes],
        part: str,
        ready_marker: str | None,
        ready_count: int = 1,
    ) -> None:
        """Keep a part's output in its log; set its ready event once `ready_marker` was seen `ready_count` times
        (the SMTP listener prints one listening line per port)."""
        assert process.stdout is not None
        seen = 0
        for line in process.stdout:
            with contextlib.suppress(ValueError):  # the log was closed by stop()
                log.write(line)
                log.flush()
            # Only the hosts' and the listener's lines (neither logs a secret): the emulator's ready line holds the
            # managed-identity header value.
            if self._inherit_output and part.startswith((HOST_PART, SMTP_PART)):
                sys.stderr.write(f"[{part}] {line.decode('utf-8', errors='replace')}")
                sys.stderr.flush()
            if ready_marker is not None and ready_marker.encode() in line:
                seen += 1
                if seen >= ready_count:
                    self._host_ready[part].set()
        process.stdout.close()

    def _running_azurite(self) -> Azurite:
        if self._azurite is None or self._azurite.pid is None:
            raise StackError("the stack is not running: call start() first")
        return self._azurite

    def _ready_value(self, key: str) -> Any:
        if key not in self._ready:
            raise StackError("the stack is not running: call start() first")
        return self._ready[key]

    def _emulator_call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        import requests

        response = requests.request(
            method, f"{self.emulator_url}/_emulator/{path}", json=body, verify=self.ca_cert_path, timeout=10
        )
        response.raise_for_status()
        return response.json() if response.content else None


def _answer_field(answer: Any, name: str) -> str | None:
    """A field of an admin POST's JSON answer (the new version, the keyId), if it has one."""
    return str(answer[name]) if isinstance(answer, dict) and answer.get(name) is not None else None


def _cn(certificate: LocalCertificate) -> str:
    # The keyCredential's displayName, as the portal shows an uploaded certificate: its subject, "CN=...".
    from cryptography import x509

    return x509.load_pem_x509_certificate(certificate.certificate_pem.encode()).subject.rfc4514_string()


def relay_queue_names(queue_name: str) -> tuple[str, ...]:
    """The outbox, its poison queue, the relay's retry queue and its poison queue (shared/settings.py's names)."""
    retry = f"{queue_name}{RETRY_QUEUE_SUFFIX}"
    return (queue_name, f"{queue_name}-poison", retry, f"{retry}-poison")


def _unique(addresses: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    for address in addresses:
        seen.setdefault(address.lower(), address)
    return list(seen.values())


def _terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


# --- mailrelay local -----------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (a closed terminal) stop the stack the way Ctrl-C does (a `with` block's exit
    runs, in order: the parts stop, the state file goes)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def start_console(stack: LocalStack) -> Any:
    """The web console (devstack/console.py) over this stack's emulator and queues, started."""
    from devstack.console import Console, status_tables
    from shared.deadletters import open_queues

    return Console(
        outbox=lambda: stack.emulator_get("outbox"),
        faults=lambda: stack.emulator_get("faults"),
        emulator_post=stack.emulator_post,
        dead_letters=lambda: open_queues(stack.queue_name, connection_string=stack.storage_connection_string),
        status=status_tables(stack.storage_connection_string, stack.queue_name),
        queue_name=stack.queue_name,
        credential=stack.credential,
        smtp_devices=stack.smtp_devices(),
    ).start()


def sent_items_line(read_access: bool, unknown_outcome: str) -> str:
    """The banner's word on a send whose outcome is unknown (Graph timed out or answered 5xx, or a host died
    during the call): what the relay does next depends on whether the app may read Sent Items."""
    if read_access:
        return (
            f"readable ({READ_ROLE}): an unknown send is looked up there by its mark before any second send, "
            "so it is sent once"
        )
    if unknown_outcome == "deadletter":
        return (
            "not readable (--no-read-access): an unknown send follows SEND_UNKNOWN_OUTCOME=deadletter: "
            "dead-lettered with the reason, never sent twice, but perhaps not at all"
        )
    return (
        f"not readable (--no-read-access): an unknown send follows SEND_UNKNOWN_OUTCOME={unknown_outcome}: "
        "sent again, so it may arrive twice (deadletter: at most once instead)"
    )


def apps_lines(apps: Sequence[Mapping[str, Any]]) -> str:
    """The banner's lines on the declared apps: each one's queue and senders (none: the outbox is the one app)."""
    if not apps:
        return "  apps             none declared: the outbox is the one app, sending as any allowed sender\n"
    lines = [
        f"  app {app['name']!s:<12} queue {app['queue']} as {', '.join(app['senders'])} (`mailrelay send "
        f"--app {app['name']}`)\n"
        for app in apps
    ]
    return "".join(lines)


def credential_line(mode: str, facts: Mapping[str, Any]) -> str:
    """The banner's word on GRAPH_CREDENTIAL: the mode and what the emulator holds for it (public facts only)."""
    identity = facts.get("identity") or {}
    certificate = facts.get("certificate") or {}
    if mode == "certificate":
        return (
            f"certificate: Key Vault certificate {CERTIFICATE_NAME} (thumbprint {certificate.get('thumbprint')}, "
            f"until {certificate.get('notAfter')}), its public key on the app registration; no client secret"
        )
    if mode == "federated":
        return (
            f"federated: user-assigned identity {identity.get('clientId')} (principal {identity.get('principalId')}) "
            "trusted by the app registration's federated credential; no secret, nothing in Key Vault"
        )
    if mode == "managed-identity":
        return (
            f"managed-identity: user-assigned identity {identity.get('clientId')} (principal "
            f"{identity.get('principalId')}) calls Graph itself; no app registration, nothing in Key Vault"
        )
    return f"secret: the app registration's client secret, in Key Vault as {SECRET_NAME}"


def smtp_lines(stack: LocalStack) -> str:
    """The banner's lines on the SMTP listener (a stack started with smtp_port)."""
    from devstack.smtp import DEFAULT_APP, banner_lines

    smtp = stack.smtp_state()
    senders = {DEFAULT_APP: stack.allowed_senders, **{app["name"]: app["senders"] for app in stack.app_state()}}
    return banner_lines(smtp, senders, stack.read_access)


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Atomically, readable by this user only (it holds a connection string)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(state, file, indent=2)
        file.write("\n")
    os.replace(tmp, path)


def live_stack(path: Path) -> dict[str, Any] | None:
    """The state file's content if the `mailrelay local` that wrote it still runs, else None."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        pid = int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if pid != os.getpid() and pid_alive(pid) else None


def _remove_state(path: Path, state: Mapping[str, Any]) -> None:
    # Only if it is still ours: another `mailrelay local` may have written its own since.
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")) == dict(state):
            path.unlink()


def run_foreground(
    *,
    allowed_senders: Sequence[str],
    exchange_scope: Sequence[str],
    mailboxes: Sequence[str],
    queue_name: str = DEFAULT_QUEUE,
    state_file: Path,
    expires_in_days: float = 365.0,
    instances: int = 1,
    read_access: bool = True,
    credential: str = "secret",
    apps: Sequence[Mapping[str, Any]] = (),
    smtp_port: int | None = None,
    smtps_port: int | None = None,
) -> int:
    """`mailrelay local`: start the stack, write the state file, serve until Ctrl-C or SIGTERM."""
    out = sys.stdout
    running = live_stack(state_file)
    if running is not None:
        print(
            f"mailrelay local: another `mailrelay local` (pid {running.get('pid')}) already runs with the state "
            f"file {state_file} (emulator {running.get('emulatorUrl')}); stop it first, or give this one its own "
            "--state-file PATH (and pass that to the other commands)",
            file=sys.stderr,
        )
        return 2
    with sigterm_as_keyboard_interrupt():
        try:
            stack = LocalStack(
                allowed_senders,
                exchange_scope,
                mailboxes,
                queue_name,
                inherit_output=True,
                expires_in_days=expires_in_days,
                instances=instances,
                read_access=read_access,
                credential=credential,
                apps=apps,
                smtp_port=smtp_port,
                smtps_port=smtps_port,
            )
        except StackError as exc:  # a declaration the relay would refuse: nothing started
            print(f"mailrelay local: {exc}", file=sys.stderr, flush=True)
            return 2
        state: dict[str, Any] = {}
        console = None
        try:
            hosts = "the local host" if instances == 1 else f"{instances} local hosts"
            parts = ["Azurite", "the emulator", hosts, *(["the SMTP listener"] if smtp_port is not None else [])]
            print(
                f"mailrelay local: starting {', '.join(parts[:-1])} and {parts[-1]}...", file=out, flush=True
            )
            stack.start()
            console = start_console(stack)
            state = {**stack.state(), "consoleUrl": console.url}
            write_state(state_file, state)
            pids = ", ".join(f"{name} {pid}" for name, pid in stack.pids.items())
            outbox, poison, retry, retry_poison = relay_queue_names(queue_name)
            print(
                f"mailrelay local: ready\n"
                f"  console          {console.url}  (the outbox, dead letters and faults, in a browser)\n"
                f"  queue            {stack.queue_endpoint}/{outbox} (dead letters: {poison})\n"
                f"  retry queue      {retry} (the relay's own; dead letters: {retry_poison})\n"
                f"{apps_lines(stack.app_state())}"
                f"  emulator         {stack.emulator_url} (outbox: {stack.emulator_url}/_emulator/outbox)\n"
                f"  emulator CA      {stack.ca_cert_path}\n"
                f"  credential       {credential_line(credential, state)}\n"
                f"  allowed senders  {', '.join(stack.allowed_senders)}\n"
                f"  Exchange scope   {', '.join(stack.exchange_scope)}\n"
                f"  outside scope    {', '.join(stack.mailboxes) or '-'}\n"
                f"  host instances   {instances} on these queues (each is handed up to batchSize + "
                "newBatchThreshold messages per queue function and runs PYTHON_THREADPOOL_THREAD_COUNT of them at "
                "once in one worker thread pool, as in Azure)\n"
                f"  Sent Items       {sent_items_line(stack.read_access, stack.unknown_outcome())}\n"
                f"{smtp_lines(stack) if smtp_port is not None else ''}"
                f"  state file       {state_file} (read by `mailrelay send`, `dead-letters` and `expiry check`)\n"
                f"  processes        {pids}\n"
                "Ctrl-C stops everything.",
                file=out,
                flush=True,
            )
            while True:
                dead = stack.dead_part()
                if dead is not None:
                    print(f"mailrelay local: the {dead} exited; stopping the stack", file=sys.stderr, flush=True)
                    return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("mailrelay local: stopping", file=out, flush=True)
            return 0
        except StackError as exc:
            print(f"mailrelay local: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            if console is not None:
                console.stop()
            stack.stop()
            if state:
                _remove_state(state_file, state)
