"""The ``--auth-file`` format: ``user:password`` lines, each password marked with its scheme.

A password is stored either as ``{PLAIN}secret`` (Dovecot's scheme prefix, so a plain password
is always a choice, never an accident) or hashed, as
``pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`` (make one with ``smtpmux hash-password``).
Anything else refuses the whole file, naming the line: an unmarked password, a scheme this
module cannot verify (``{SHA512-CRYPT}``, htpasswd's bcrypt ``$2y$``, ``{CRYPT}``…), a
malformed hash. Otherwise such a line would make the hash string itself the password. Lines
starting with ``#`` and blank lines are ignored.

Every check costs the same PBKDF2 work, whoever asks: an unknown user, a ``{PLAIN}`` user, an
old 200,000-iteration hash and a new 600,000-iteration one are all padded to the most
expensive hash in the file, so the time of a 535 tells nothing about the user name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from collections.abc import Awaitable
from pathlib import Path

import attrs

from smtp_core import AuthLockout, Credentials, Policy, SessionInfo

__all__ = ["AuthFilePolicy", "hash_password", "load_auth_file", "verify_password"]

_SCHEME = "pbkdf2-sha256"
_PLAIN = "{PLAIN}"
#: OWASP's figure for PBKDF2-HMAC-SHA256 (2023); older files with fewer still verify.
_ITERATIONS = 600_000
_PBKDF2 = re.compile(r"pbkdf2-sha256\$([1-9][0-9]{0,9})\$((?:[0-9a-f]{2})+)\$([0-9a-f]{64})")
#: hashes this module recognises but will not verify (stdlib ``crypt`` is deprecated)
_CRYPT_SCHEMES = {
    "$1$": "MD5-CRYPT",
    "$2a$": "bcrypt",
    "$2b$": "bcrypt",
    "$2y$": "bcrypt",
    "$5$": "SHA256-CRYPT",
    "$6$": "SHA512-CRYPT",
    "$y$": "yescrypt",
    "$apr1$": "Apache MD5",
}
_FIX = "write {PLAIN}<password> for a plain one, or a hash made by `smtpmux hash-password`"

#: PBKDF2-HMAC-SHA256; a module attribute so a test can count the iterations each check runs
_pbkdf2 = hashlib.pbkdf2_hmac


@attrs.frozen
class _Stored:
    """One parsed password: plain (``iterations`` 0) or a PBKDF2 hash."""

    iterations: int
    salt: bytes
    digest: bytes  # the plain password's SHA-256, or the PBKDF2 hash

    def matches(self, password: str) -> bool:
        """Runs exactly ``iterations`` PBKDF2 iterations (none for a plain password)."""
        if self.iterations == 0:
            computed = hashlib.sha256(password.encode()).digest()  # equal lengths to compare
        else:
            computed = _pbkdf2("sha256", password.encode(), self.salt, self.iterations)
        return hmac.compare_digest(computed, self.digest)


def _parse(stored: str) -> _Stored:
    """The stored password, or ValueError saying what is wrong with it and what to do."""
    if stored[: len(_PLAIN)].upper() == _PLAIN:
        secret = stored[len(_PLAIN) :]
        if not secret:
            raise ValueError("an empty {PLAIN} password")
        return _Stored(0, b"", hashlib.sha256(secret.encode()).digest())
    if stored.startswith(_SCHEME + "$"):
        match = _PBKDF2.fullmatch(stored)
        if match is None:
            raise ValueError(
                f"a malformed {_SCHEME} hash (want {_SCHEME}$<iterations>$<salt hex>$"
                "<64 hex digits>); make a new one with `smtpmux hash-password`"
            )
        iterations, salt, digest = match.groups()
        return _Stored(int(iterations), bytes.fromhex(salt), bytes.fromhex(digest))
    if stored.startswith("{") and "}" in stored:
        scheme = stored[: stored.index("}") + 1]
        raise ValueError(f"the password scheme {scheme} cannot be verified here; {_FIX}")
    for prefix, name in _CRYPT_SCHEMES.items():
        if stored.startswith(prefix):
            raise ValueError(f"a {name} hash ({prefix}…) cannot be verified here; {_FIX}")
    raise ValueError(f"an unmarked password; {_FIX}")


def hash_password(password: str, *, iterations: int = _ITERATIONS) -> str:
    """A new salted ``pbkdf2-sha256$…`` line for the auth file."""
    salt = os.urandom(16)
    digest = _pbkdf2("sha256", password.encode(), salt, iterations)
    return f"{_SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def verify_password(stored: str, password: str) -> bool:
    """Does ``password`` match ``stored`` (a line's password field)? ValueError if ``stored``
    is in no format this module verifies."""
    return _parse(stored).matches(password)


def load_auth_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read and check the whole file; raise ValueError naming the first line that is wrong."""
    users: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{path}:{number}: expected user:password")
        if user in users:
            raise ValueError(f"{path}:{number}: {user} appears twice")
        try:
            _parse(password)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
        users[user] = password
    return users


@attrs.frozen
class _Table:
    """The users and the cost every check pays, swapped as one on reload."""

    users: dict[str, _Stored]
    cost: int  # PBKDF2 iterations per check: the most expensive hash, at least _ITERATIONS

    @classmethod
    def of(cls, users: dict[str, str]) -> _Table:
        parsed = {user: _parse(stored) for user, stored in users.items()}
        return cls(parsed, max([_ITERATIONS, *(s.iterations for s in parsed.values())]))


_PAD_SALT = b"smtpmux: padding"


class AuthFilePolicy(Policy):
    """A Policy whose authenticate() checks an auth file's users.

    At most ``concurrent_checks`` hashes run at once (default: one per CPU), so a burst of
    logins queues instead of taking every core; failed logins are counted per client address
    (``auth_lockout``, on by default here) besides the Session's per-connection limit.
    """

    def __init__(
        self, users: dict[str, str], *, concurrent_checks: int | None = None, **limits: object
    ) -> None:
        limits.setdefault("auth_lockout", AuthLockout(lock=threading.Lock()))
        super().__init__(**limits)  # type: ignore[arg-type]
        self._table = _Table.of(users)
        self._raw = dict(users)
        self.concurrent_checks = concurrent_checks or os.cpu_count() or 1
        self.hash_slots = threading.BoundedSemaphore(self.concurrent_checks)

    @property
    def users(self) -> dict[str, str]:
        """The stored passwords by user; assigning a new table (a reload) checks it whole."""
        return self._raw

    @users.setter
    def users(self, users: dict[str, str]) -> None:
        table = _Table.of(users)  # raises before anything changes
        self._table, self._raw = table, dict(users)

    def check(self, credentials: Credentials) -> str | None:
        """The identity these credentials prove, or None. Blocks for the hash (~0.3 s), and
        always for the same work: an unknown or plain-text user is padded to the table's cost."""
        table = self._table
        stored = table.users.get(credentials.username)
        with self.hash_slots:
            matches = stored is not None and stored.matches(credentials.password)
            work = stored.iterations if stored is not None else 0
            if table.cost > work:
                _pbkdf2("sha256", credentials.password.encode(), _PAD_SALT, table.cost - work)
        if not matches:
            return None
        if credentials.authzid not in ("", credentials.username):
            return None  # no user may act as another
        return credentials.username

    def authenticate(
        self, credentials: Credentials, info: SessionInfo
    ) -> str | Awaitable[str | None] | None:
        return self.check(credentials)
