"""Azurite, the Azure Storage emulator, as one child process on free loopback ports.

Azurite comes from package.json / package-lock.json (pinned; `scripts/bootstrap` runs `npm ci`). It is
started directly from `node_modules/.bin/azurite`, not through npx, so there is one process to stop.
Its state lives in memory (`--inMemoryPersistence`); it runs in a throwaway directory, removed by stop().

    with Azurite() as azurite:          # start() waits until the queue service answers
        azurite.connection_string       # the well-known devstoreaccount1 account, 127.0.0.1 endpoints
        azurite.pid

`python -m devstack.azurite` runs one until SIGTERM or SIGINT and prints its connection string.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"

# Azurite's (and the Storage emulator's) published development account: not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
HOST = "127.0.0.1"


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to this child when the parent exits, however it exits."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


OWNER_FILE = "owner.pid"
WORKDIR_PREFIXES = ("azurite-", "mailrelay-local-")


def owned_workdir(prefix: str) -> str:
    """A new temporary folder that names its owner process, so a later start can tell it is stale."""
    path = tempfile.mkdtemp(prefix=prefix)
    (Path(path) / OWNER_FILE).write_text(str(os.getpid()), encoding="ascii")
    return path


def sweep_stale_workdirs(root: Path | None = None) -> list[Path]:
    """Remove the work folders of local stacks whose owner died without cleaning up (a `kill -9`, a closed
    terminal): its children die with it (die_with_parent), but only the next start can remove its folders,
    the seed with the throwaway secret among them. Folders without an owner file, or of a live owner, stay."""
    removed = []
    base = root or Path(tempfile.gettempdir())
    for path in base.iterdir():
        if not path.name.startswith(WORKDIR_PREFIXES) or not path.is_dir():
            continue
        try:
            owner = int((path / OWNER_FILE).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AzuriteError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


class Azurite:
    def __init__(self, binary: Path = AZURITE_BIN, startup_timeout: float = 30.0) -> None:
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.blob_port = self.queue_port = self.table_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._location: str | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        """True while the Azurite process is alive (False before start() and after it exited)."""
        return self._process is not None and self._process.poll() is None

    @property
    def connection_string(self) -> str:
        if not self._process:
            raise AzuriteError("Azurite is not running: call start() first")
        base = f"http://{HOST}"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{ACCOUNT_NAME};"
            f"QueueEndpoint={base}:{self.queue_port}/{ACCOUNT_NAME};"
            f"TableEndpoint={base}:{self.table_port}/{ACCOUNT_NAME};"
        )

    def start(self) -> Azurite:
        if self._process:
            return self
        if not self.binary.exists():
            raise AzuriteError(f"{self.binary} is missing: run scripts/bootstrap (it runs `npm ci`)")
        # Free ports are picked here and handed over; another process could grab one in between, so a
        # start that fails that way is tried again on new ports.
        for _ in range(3):
            self.blob_port, self.queue_port, self.table_port = free_port(), free_port(), free_port()
            if len({self.blob_port, self.queue_port, self.table_port}) < 3:
                continue
            sweep_stale_workdirs()
            self._location = owned_workdir("azurite-")
            self._log = open(Path(self._location) / "azurite.out", "w+b")  # noqa: SIM115 (closed in stop())
            # Azurite 3.35 refuses `--location` together with `--inMemoryPersistence` ("not supported when
            # the --location option is set"), so the throwaway directory is its working directory instead:
            # whatever it writes there goes with stop().
            self._process = subprocess.Popen(
                self.arguments(),
                cwd=self._location,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                # node is exec'd directly (the .bin entry is a script with a node shebang), so the death
                # signal reaches Azurite itself: a `kill -9` of `mailrelay local` no longer orphans it.
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
            if self._wait_ready():
                return self
            output = self._output()
            self.stop()
            if "EADDRINUSE" not in output:
                raise AzuriteError(f"Azurite did not start: {output.strip()[-2000:] or 'no output'}")
        raise AzuriteError("Azurite did not start: its ports were taken three times in a row")

    def arguments(self, location: str | None = None) -> list[str]:
        """Azurite's command line on this instance's ports: its data in memory, or kept in `location` (a folder)."""
        persistence = ["--location", location] if location else ["--inMemoryPersistence"]
        # fmt: off
        return [
            str(self.binary), "--silent", "--loose", *persistence, "--skipApiVersionCheck", "--disableTelemetry",
            "--blobPort", str(self.blob_port), "--queuePort", str(self.queue_port),
            "--tablePort", str(self.table_port),
        ]
        # fmt: on

    def _wait_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            # The three services start together; the queue is the one the relay cannot do without.
            if all(_answers(p) for p in (self.queue_port, self.table_port, self.blob_port)):
                return True
            time.sleep(0.05)
        return False

    def _output(self) -> str:
        if not self._log:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._log:
            self._log.close()
            self._log = None
        if self._location:
            shutil.rmtree(self._location, ignore_errors=True)
            self._location = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main() -> int:
    azurite = Azurite().start()
    print(azurite.connection_string, flush=True)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while azurite.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        azurite.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
