"""The ``--auth-file`` format: ``user:password`` lines, the password plain or salted-hashed.

A hashed password reads ``pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>``; make one with
``smtpmux hash-password``. Lines starting with ``#`` and blank lines are ignored.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Awaitable
from pathlib import Path

from smtp_core import Credentials, Policy, SessionInfo

__all__ = ["AuthFilePolicy", "hash_password", "load_auth_file", "verify_password"]

_SCHEME = "pbkdf2-sha256"
_ITERATIONS = 200_000


def hash_password(password: str, *, iterations: int = _ITERATIONS) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{_SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def verify_password(stored: str, password: str) -> bool:
    if stored.startswith(_SCHEME + "$"):
        try:
            _, iterations, salt, digest = stored.split("$")
            expected = bytes.fromhex(digest)
            computed = hashlib.pbkdf2_hmac(
                "sha256", password.encode(), bytes.fromhex(salt), int(iterations)
            )
        except ValueError:
            return False
        return hmac.compare_digest(computed, expected)
    return hmac.compare_digest(stored.encode(), password.encode())


def load_auth_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read the file; raise ValueError naming the first malformed line."""
    users: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError(f"{path}:{number}: expected user:password")
        users[user] = password
    return users


@functools.cache
def _decoy() -> str:
    """A hash to check unknown users against, so they take as long as known ones."""
    return hash_password("")


class AuthFilePolicy(Policy):
    """A Policy whose authenticate() checks an auth file's users."""

    def __init__(self, users: dict[str, str], **limits: object) -> None:
        super().__init__(**limits)  # type: ignore[arg-type]
        self.users = users

    def check(self, credentials: Credentials) -> str | None:
        """The identity these credentials prove, or None. Blocks for the hash (~0.1 s)."""
        stored = self.users.get(credentials.username)
        matches = verify_password(stored or _decoy(), credentials.password)
        if stored is None or not matches:
            return None
        if credentials.authzid not in ("", credentials.username):
            return None  # no user may act as another
        return credentials.username

    def authenticate(
        self, credentials: Credentials, info: SessionInfo
    ) -> str | Awaitable[str | None] | None:
        return self.check(credentials)
