"""Device logins: who may submit mail, as which app, under which device name.

Passwords are stored as scrypt hashes: memory-hard, so a stolen logins file costs an attacker memory per guess, not
only time. The parameters are OWASP's minimum for scrypt (N=2^17, r=8, p=1: 128 MiB per hash; Password Storage
Cheat Sheet, https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html#scrypt), written into
each hash so that they can be raised later without invalidating the old ones. hashlib.scrypt is OpenSSL's: no
dependency to add.

Failed logins are slowed down per source address and per user (FailedLogins), so that neither one address trying
many users nor many addresses trying one user gets more than a few guesses a minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

SCHEME: Final = "scrypt"
LOG2_N: Final = 17
BLOCK_SIZE: Final = 8
PARALLEL: Final = 1
# The lowest cost a stored hash may have: a hash made with less (a file edited by hand) is refused at load.
MIN_LOG2_N: Final = 14
_KEY_BYTES: Final = 32
# A user name: what a device's settings page takes, and safe to show in a log line and a request id.
USER: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
DEVICE_MAX: Final = 80


class LoginsError(ValueError):
    """The logins file is missing or malformed; the message says where."""


def hash_password(password: str, log2_n: int = LOG2_N) -> str:
    """`scrypt$<log2 N>$<r>$<p>$<salt>$<key>` (base64), for the logins file."""
    salt = secrets.token_bytes(16)
    key = _derive(password.encode("utf-8"), salt, log2_n, BLOCK_SIZE, PARALLEL)
    b64 = base64.b64encode
    return f"{SCHEME}${log2_n}${BLOCK_SIZE}${PARALLEL}${b64(salt).decode()}${b64(key).decode()}"


def _derive(password: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    # OpenSSL refuses more memory than maxmem (32 MiB by default): allow what N and r need, with room.
    need = 128 * r * (2**log2_n) * p + 1024 * 1024
    return hashlib.scrypt(password, salt=salt, n=2**log2_n, r=r, p=p, maxmem=2 * need, dklen=_KEY_BYTES)


@dataclass(frozen=True)
class _Hash:
    log2_n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> _Hash:
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != SCHEME:
            raise ValueError(
                "not a scrypt$logN$r$p$salt$key hash (make one with `python -m mailrelay_smtp hash-password`)"
            )
        try:
            log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
        except ValueError:
            raise ValueError("its numbers or base64 cannot be read") from None
        if not (
            MIN_LOG2_N <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 4 and len(salt) >= 16 and len(key) == _KEY_BYTES
        ):
            raise ValueError(
                f"its cost is out of range (log2 N from {MIN_LOG2_N} to 20, r 1 to 32, p 1 to 4, salt 16+)"
            )
        return cls(log2_n, r, p, salt, key)

    def matches(self, password: bytes) -> bool:
        return hmac.compare_digest(_derive(password, self.salt, self.log2_n, self.r, self.p), self.key)


@dataclass(frozen=True)
class Login:
    user: str
    app: str
    device: str
    _hash: _Hash

    def verify(self, password: bytes) -> bool:
        return self._hash.matches(password)


# Verified against when the user is unknown, so that an unknown user costs the same time as a wrong password and
# the answer's timing does not tell which users exist.
_DECOY: Final = _Hash(LOG2_N, BLOCK_SIZE, PARALLEL, b"\0" * 16, b"\0" * _KEY_BYTES)


class Logins:
    """The logins file, by user (case-sensitive, as passwords are)."""

    def __init__(self, logins: Iterable[Login]) -> None:
        self._by_user: dict[str, Login] = {}
        for login in logins:
            if login.user in self._by_user:
                raise LoginsError(f"user {login.user!r} is listed twice")
            self._by_user[login.user] = login
        # The decoy costs what the stored hashes cost, so an unknown user takes as long as a wrong password.
        costs = [login._hash for login in self._by_user.values()]
        cost = max(costs, key=lambda h: (h.log2_n, h.r, h.p)) if costs else _DECOY
        self._decoy = Login("", "", "", _Hash(cost.log2_n, cost.r, cost.p, _DECOY.salt, _DECOY.key))

    @classmethod
    def load(cls, path: Path, apps: Iterable[str]) -> Logins:
        """Read and check the file; every login's app must be one the listener knows (MAILRELAY_APPS or default)."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise LoginsError(f"SMTP_LOGINS_FILE {str(path)!r} cannot be read: {exc.strerror or exc}") from None
        except ValueError:
            raise LoginsError(f"SMTP_LOGINS_FILE {str(path)!r} is not JSON") from None
        entries = document.get("logins") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise LoginsError('SMTP_LOGINS_FILE must hold {"logins": [{"user", "app", "device", "hash"}, ...]}')
        known = set(apps)
        return cls(_login(entry, index, known) for index, entry in enumerate(entries))

    def __len__(self) -> int:
        return len(self._by_user)

    def verify(self, user: bytes, password: bytes) -> Login | None:
        """The login when `password` is `user`'s; None otherwise (in about the same time either way)."""
        try:
            name = user.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        login = self._by_user.get(name)
        if login is None:
            self._decoy.verify(password)
            return None
        return login if login.verify(password) else None


def _login(entry: Any, index: int, apps: set[str]) -> Login:
    where = f"SMTP_LOGINS_FILE: login {index + 1}"
    if not isinstance(entry, dict):
        raise LoginsError(f"{where} is not an object")
    unknown = sorted(set(entry) - {"user", "app", "device", "hash"})
    if unknown:
        raise LoginsError(f"{where} has unknown fields: {', '.join(unknown)}")
    user, app, device, hashed = (entry.get(k) for k in ("user", "app", "device", "hash"))
    if not isinstance(user, str) or not USER.match(user):
        raise LoginsError(
            f"{where}: user must be 1 to 64 letters, digits and . _ @ + -, starting with a letter or digit"
        )
    where = f"SMTP_LOGINS_FILE: user {user!r}"
    if not isinstance(app, str) or app not in apps:
        raise LoginsError(f"{where}: app {app!r} is not declared (MAILRELAY_APPS; or 'default', the outbox)")
    device = user if device is None else device
    if not isinstance(device, str) or not device.strip() or len(device) > DEVICE_MAX or not device.isprintable():
        raise LoginsError(f"{where}: device must be a printable name of at most {DEVICE_MAX} characters")
    if not isinstance(hashed, str):
        raise LoginsError(f"{where}: hash is missing (`python -m mailrelay_smtp hash-password` makes one)")
    try:
        parsed = _Hash.parse(hashed)
    except ValueError as exc:
        raise LoginsError(f"{where}: hash is {exc}") from None
    return Login(user, app, device.strip(), parsed)


class FailedLogins:
    """Slows down failed logins per source address and per user.

    The first FREE failures of a key cost nothing (a typo); each one after doubles the wait before the next answer,
    up to MAX_DELAY seconds. A key's count is forgotten WINDOW seconds after its last failure. A success clears the
    user's count, never the source's (a guesser who knows one password must not reset its address's count with it)."""

    FREE: Final = 3
    MAX_DELAY: Final = 30.0
    WINDOW: Final = 900.0
    MAX_KEYS: Final = 100_000  # an attacker cycling through users or addresses cannot grow the table without bound

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}

    def delay(self, source: str | None, user: str) -> float:
        """Seconds to wait before answering a login attempt from `source` (None: unknown) as `user`."""
        return max(self._delay(f"source:{source}") if source is not None else 0.0, self._delay(f"user:{user}"))

    def _delay(self, key: str) -> float:
        count, last = self._failures.get(key, (0, 0.0))
        if count and self._clock() - last > self.WINDOW:
            del self._failures[key]
            return 0.0
        if count < self.FREE:
            return 0.0
        return float(min(self.MAX_DELAY, 2.0 ** (count - self.FREE)))

    def failed(self, source: str | None, user: str) -> None:
        now = self._clock()
        if len(self._failures) >= self.MAX_KEYS:
            stale = [k for k, (_, last) in self._failures.items() if now - last > self.WINDOW]
            for key in stale or list(self._failures)[: self.MAX_KEYS // 10]:
                del self._failures[key]
        for key in (f"source:{source}", f"user:{user}") if source is not None else (f"user:{user}",):
            count, _ = self._failures.get(key, (0, 0.0))
            self._failures[key] = (count + 1, now)

    def succeeded(self, user: str) -> None:
        self._failures.pop(f"user:{user}", None)
