"""What the `mailrelay` subcommands share: exit codes, input, the local state file, where the queue is.

Importing this module costs argparse and the standard library only (and shared.settings' constants); the
Azure SDK loads inside the functions that need it.

The queue commands find the storage account the same way (`resolve_connection`), first match wins:
`--connection-string`, `--queue-url` (signs in with DefaultAzureCredential), the environment's
`AzureWebJobsStorage`, then the state file that `mailrelay local` writes (`default_state_file()`).
The queue is `--queue`, else `MAIL_QUEUE_NAME`, else the state file's, else `mail-outbox`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from shared.settings import DEFAULT_QUEUE_NAME

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]

# Exit codes shared by the subcommands.
EXIT_OK = 0
EXIT_INVALID = 1  # the input was read and is wrong
EXIT_USAGE = 2  # the input could not be read, or the command line is wrong (argparse's code too)
EXIT_UNAVAILABLE: Final = 3  # the queue could not be reached, or refused the operation

DEFAULT_QUEUE: Final = DEFAULT_QUEUE_NAME
def default_state_file() -> Path:
    """Where `mailrelay local` writes its state and every command reads it: one per user, whatever the
    current folder (MAILRELAY_STATE_FILE, else $XDG_STATE_HOME/mailrelay/local.json, else
    ~/.local/state/mailrelay/local.json). A path under the current folder made the CLI, run from another
    folder, say "start the local stack" while it was running."""
    explicit = os.environ.get("MAILRELAY_STATE_FILE", "").strip()
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local" / "state")
    return Path(base) / "mailrelay" / "local.json"


DEFAULT_STATE_FILE: Final = "$XDG_STATE_HOME/mailrelay/local.json"  # as shown in help; see default_state_file


class UsageError(Exception):
    """A command line that cannot work; the message says what to pass instead."""


def read_input(source: str) -> bytes | str:
    """The bytes of a file, or of standard input for "-": the contract decides about encodings."""
    if source == "-":
        # A replaced sys.stdin (tests, embedding) may be text-only.
        buffer = getattr(sys.stdin, "buffer", None)
        return buffer.read() if buffer is not None else sys.stdin.read()
    with open(source, "rb") as file:
        return file.read()


# --- Where the queue is --------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    queue_name: str
    connection_string: str | None = None
    queue_url: str | None = None  # the main queue's URL (identity-based access)
    source: str = ""  # where it came from, for messages: never the connection string itself
    state: Mapping[str, Any] | None = None  # the local stack's state file, when it came from there

    @property
    def poison_queue_name(self) -> str:
        return f"{self.queue_name}-poison"


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the queue is (first match wins)")
    group.add_argument(
        "--connection-string",
        metavar="CONN",
        help="storage connection string (default: env AzureWebJobsStorage, then the state file)",
    )
    group.add_argument(
        "--queue-url",
        metavar="URL",
        help="the queue's (or the queue service's) URL; signs in with DefaultAzureCredential (az login, "
        "managed identity, ...)",
    )
    group.add_argument(
        "--queue", metavar="NAME", help="queue name (default: env MAIL_QUEUE_NAME, the state file's, mail-outbox)"
    )
    group.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        default=None,
        help=f"the state file `mailrelay local` writes (default: {DEFAULT_STATE_FILE})",
    )


def resolve_connection(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Connection:
    """The storage account and queue a command uses; UsageError when nothing names one."""
    env = os.environ if env is None else env
    queue = args.queue or env.get("MAIL_QUEUE_NAME", "").strip() or None
    if args.connection_string and args.queue_url:
        raise UsageError("give --connection-string or --queue-url, not both")
    if args.connection_string:
        return Connection(
            queue or DEFAULT_QUEUE, connection_string=args.connection_string, source="--connection-string"
        )
    if args.queue_url:
        return _from_queue_url(args.queue_url, queue)
    if env.get("AzureWebJobsStorage", "").strip():
        return Connection(
            queue or DEFAULT_QUEUE, connection_string=env["AzureWebJobsStorage"].strip(), source="AzureWebJobsStorage"
        )
    state_file: Path = args.state_file or default_state_file()
    state = read_state(state_file)
    if state is None:
        raise UsageError(
            "no storage account given: pass --connection-string or --queue-url, set AzureWebJobsStorage, or "
            f"start the local stack with `mailrelay local` (it writes {state_file})"
        )
    conn = state.get("storageConnectionString")
    if not isinstance(conn, str) or not conn:
        raise UsageError(f"the state file {state_file} has no storageConnectionString; restart `mailrelay local`")
    state_queue = state.get("queueName") if isinstance(state.get("queueName"), str) else None
    return Connection(
        queue or state_queue or DEFAULT_QUEUE, connection_string=conn, source=str(state_file), state=state
    )


def add_app_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--app", metavar="NAME", type=app_name, help=help)


def app_name(value: str) -> str:
    """--app's value: a name an app may have (shared/apps.py), or `default` (the outbox)."""
    from shared.apps import NAME_RULE, RESERVED_NAMES, is_app_name

    if not is_app_name(value):
        reserved = ", ".join(sorted(RESERVED_NAMES - {"default"}))
        raise argparse.ArgumentTypeError(
            f"{value[:40]!r} is not an app's name ({NAME_RULE}; not {reserved}), nor default (the outbox)"
        )
    return value


def check_declared(conn: Connection, app: str) -> None:
    """Against the local stack (the state file), an app it does not declare is named at once, with those it does,
    instead of a missing queue. Elsewhere the queue's existence decides."""
    from shared.apps import DEFAULT_APP

    if app == DEFAULT_APP or conn.state is None:
        return
    declared = [str(a.get("name")) for a in conn.state.get("apps") or [] if isinstance(a, dict)]
    if app not in declared:
        which = f"declares {', '.join(declared)}" if declared else "declares no app"
        raise UsageError(
            f"the local stack ({conn.source}) {which}, not {app!r}: start it with `mailrelay local --app "
            f"{app}=SENDER[,SENDER]`"
        )


# Azurite's well-known development account (public: github.com/Azure/Azurite, "Default Storage Account").
AZURITE_ACCOUNT: Final = "devstoreaccount1"
AZURITE_KEY: Final = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def _from_queue_url(url: str, queue: str | None) -> Connection:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise UsageError(f"--queue-url must be an https:// URL, got {parts.scheme or 'no scheme'}")
    if parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK:
        # The URL `mailrelay local` prints: Azurite over http. The Azure SDK sends token credentials over
        # https only, and Azurite's account is the well-known development one: sign with its shared key.
        segments = [s for s in parts.path.split("/") if s]
        if not segments or segments[0] != AZURITE_ACCOUNT:
            raise UsageError(f"a local --queue-url is http://127.0.0.1:PORT/{AZURITE_ACCOUNT}/QUEUE (Azurite's)")
        name = segments[1] if len(segments) > 1 else (queue or DEFAULT_QUEUE)
        if queue and queue != name:
            raise UsageError(f"--queue-url names queue {name!r} but --queue says {queue!r}")
        endpoint = f"http://{parts.netloc}/{AZURITE_ACCOUNT}"
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"QueueEndpoint={endpoint};"
        )
        return Connection(name, connection_string=conn, source="--queue-url (Azurite)")
    if parts.scheme != "https":
        raise UsageError("--queue-url must be an https:// URL (http only for the local stack on 127.0.0.1)")
    path = parts.path.strip("/")
    if not path:  # the queue service's URL: the queue name comes from --queue
        name = queue or DEFAULT_QUEUE
        return Connection(
            name, queue_url=urlunsplit((parts.scheme, parts.netloc, "/" + name, "", "")), source="--queue-url"
        )
    # Azurite's URLs carry the account as the first path segment: the queue is the last one.
    name = path.rsplit("/", 1)[-1]
    if queue and queue != name:
        raise UsageError(f"--queue-url names queue {name!r} but --queue says {queue!r}")
    # A SAS query string is a secret: it stays in the URL the SDK gets, and out of every message.
    return Connection(
        name, queue_url=urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, "")), source="--queue-url"
    )


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the state file {path}: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"the state file {path} is not a JSON object; delete it and restart `mailrelay local`")
    return value


def settings_env(state_file: Path | None, environ: MutableMapping[str, str]) -> Mapping[str, str]:
    """The settings `expiry check` and `doctor` use: the environment's, or else the local stack's.

    With no relay settings in the environment (GRAPH_CLIENT_ID unset) and a state file present, the
    local stack's settings apply, and the environment still overrides them (e.g. EXPIRY_ALERT_RECIPIENTS).
    """
    if environ.get("GRAPH_CLIENT_ID", "").strip():
        return environ
    state = read_state(state_file or default_state_file())
    local = state.get("relaySettings") if state else None
    if not isinstance(local, dict):
        return environ
    # azure-identity reads its managed-identity endpoint from os.environ itself, not from our mapping.
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
        if name in local:
            environ.setdefault(name, str(local[name]))
    return {**{k: str(v) for k, v in local.items()}, **environ}


def credential() -> Any:
    """An operator's credential: the environment's service principal, then `az login`, then a managed
    identity only where one is configured (App Service / Functions set IDENTITY_ENDPOINT). Not
    DefaultAzureCredential: on a workstation its managed-identity probe of the IMDS address times out,
    and each tool in its chain prints a paragraph, so a missing `az login` took 88 s and 50 lines to say."""
    from azure.identity import AzureCliCredential, ChainedTokenCredential, EnvironmentCredential

    chain: list[Any] = [EnvironmentCredential(), AzureCliCredential(process_timeout=10)]
    if os.environ.get("IDENTITY_ENDPOINT") or os.environ.get("MSI_ENDPOINT"):
        from azure.identity import ManagedIdentityCredential

        chain.append(ManagedIdentityCredential(client_id=os.environ.get("AZURE_CLIENT_ID") or None))
    return ChainedTokenCredential(*chain)


def has_credential() -> bool:
    """Whether any credential of the chain can sign in, asked once up front: the Storage SDK would retry a
    failed sign-in with its backoff (about 90 s) before saying anything."""
    from azure.core.exceptions import ClientAuthenticationError

    try:
        credential().get_token("https://storage.azure.com/.default")
    except ClientAuthenticationError:
        return False
    return True


NO_CREDENTIAL: Final = (
    "no Azure credential found to reach the queue: run `az login` (with a user that holds Storage Queue Data "
    "Message Sender on the queue), or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for a "
    "service principal; against the local stack, use the URL or connection string `mailrelay local` prints"
)


def unreachable_local_endpoint(connection_string: str | None = None, url: str | None = None) -> str | None:
    """ "host:port" of a loopback endpoint that nothing listens on, else None.

    A stopped local stack otherwise looks like a hang: the Azure SDK retries a refused connection for
    about 80 s before it gives up. A loopback port answers or refuses at once.
    """
    import socket

    targets: list[tuple[str, int]] = []
    if connection_string:
        fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
        if fields.get("UseDevelopmentStorage", "").lower() == "true":
            targets.append(("127.0.0.1", 10001))
        for key in ("QueueEndpoint", "TableEndpoint", "BlobEndpoint"):
            if key in fields:
                targets.append(_host_port(fields[key]))
    if url:
        targets.append(_host_port(url))
    for host, port in targets:
        if host not in _LOOPBACK or not port:
            continue
        try:
            with socket.create_connection((host, port), timeout=1.0):
                pass
        except OSError:
            return f"{host}:{port}"
    return None


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def not_listening(where: str) -> str:
    return f"nothing is listening on {where}; is `mailrelay local` running? (start it, or pass --state-file)"


def _storage_error(exc: BaseException, conn: Connection) -> str | None:
    """A one-line description of an Azure SDK error, or None if `exc` is not one.

    Built from the error's type, status and code and the first line of the service's message: never
    the connection string, a SAS token, or the request.
    """
    from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
    from azure.identity import CredentialUnavailableError

    if not isinstance(exc, AzureError):
        return None
    if isinstance(exc, CredentialUnavailableError) or (
        isinstance(exc, ClientAuthenticationError) and "failed to retrieve a token" in (exc.message or "")
    ):
        return NO_CREDENTIAL
    where = f"queue {conn.queue_name!r} (storage from {conn.source})"
    if isinstance(exc, ClientAuthenticationError):
        return f"the storage account refused the credential for {where}: {_first_line(exc.message)}"
    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "error_code", None) or f"HTTP {exc.status_code}"
        return f"{code} on {where}: {_first_line(exc.message)}"
    return f"cannot reach {where}: {type(exc).__name__}"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def fail(command: str, message: str, code: int) -> int:
    print(f"mailrelay {command}: {message}", file=sys.stderr)
    return code


def run_with_queue(command: str, args: argparse.Namespace, body: Any) -> int:
    """Resolve the connection, run `body(conn)`, and turn the common failures into exit codes."""
    try:
        conn = resolve_connection(args)
    except UsageError as exc:
        return fail(command, str(exc), EXIT_USAGE)
    down = unreachable_local_endpoint(conn.connection_string, conn.queue_url)
    if down:
        return fail(command, not_listening(down), EXIT_UNAVAILABLE)
    if conn.queue_url and not has_credential():
        return fail(command, NO_CREDENTIAL, EXIT_UNAVAILABLE)
    try:
        result: int = body(conn)
        return result
    except UsageError as exc:
        return fail(command, str(exc), EXIT_USAGE)
    except ValueError as exc:
        if type(exc) is ValueError and "connection string" in str(exc).lower():
            # The SDK's parse error; say so without echoing the string (it holds the account key).
            return fail(command, f"the connection string from {conn.source} is malformed", EXIT_USAGE)
        raise
    except Exception as exc:
        described = _storage_error(exc, conn)
        if described is None:
            raise
        return fail(command, described, EXIT_UNAVAILABLE)
