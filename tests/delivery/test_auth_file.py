"""The auth file: which stored passwords it accepts, what it refuses (the whole file, naming the
line), that every check costs the same PBKDF2 work, and that hash checks run a few at a time."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtp_core import Credentials, SessionInfo
from smtp_sync import _auth_file
from smtp_sync._auth_file import AuthFilePolicy, hash_password, load_auth_file, verify_password

# A real old-format hash (200,000 iterations would be slow here; the format is the same).
OLD = hashlib.pbkdf2_hmac("sha256", b"old secret", b"salt-of-16-bytes", 1000)
OLD_LINE = f"pbkdf2-sha256$1000${b'salt-of-16-bytes'.hex()}${OLD.hex()}"

GOOD_FILES = [
    ("plain", "alice:{PLAIN}secret\n", {"alice": "{PLAIN}secret"}),
    ("plain-lowercase-scheme", "alice:{plain}secret\n", {"alice": "{plain}secret"}),
    ("plain-with-colons", "alice:{PLAIN}a:b:c\n", {"alice": "{PLAIN}a:b:c"}),
    ("hashed", f"bob:{OLD_LINE}\n", {"bob": OLD_LINE}),
    (
        "comments-and-blanks",
        f"# users\n\nalice:{{PLAIN}}x\n  # more\nbob:{OLD_LINE}\n",
        {"alice": "{PLAIN}x", "bob": OLD_LINE},
    ),
]

BAD_FILES = [
    # (id, the file, what the error says besides the line)
    ("unmarked", "alice:{PLAIN}ok\nbob:secret\n", ":2: an unmarked password; write {PLAIN}"),
    (
        "dovecot-sha512-crypt",
        "a:{SHA512-CRYPT}$6$salt$hash\n",
        ":1: the password scheme {SHA512-CRYPT}",
    ),
    ("dovecot-crypt", "a:{CRYPT}abcdefghijklm\n", "{CRYPT} cannot be verified here"),
    ("htpasswd-bcrypt", "a:$2y$05$abcdefghijklmnopqrstuv\n", "a bcrypt hash ($2y$…)"),
    ("sha512-crypt", "a:$6$salt$hash\n", "a SHA512-CRYPT hash"),
    ("apache-md5", "a:$apr1$salt$hash\n", "Apache MD5"),
    ("pbkdf2-three-fields", "a:pbkdf2-sha256$1000$00\n", "a malformed pbkdf2-sha256 hash"),
    ("pbkdf2-not-hex", f"a:{OLD_LINE[:-1]}g\n", "a malformed pbkdf2-sha256 hash"),
    ("pbkdf2-short-hash", f"a:{OLD_LINE[:-2]}\n", "a malformed pbkdf2-sha256 hash"),
    ("pbkdf2-zero-iterations", f"a:pbkdf2-sha256$0${OLD_LINE.split('$', 2)[2]}\n", "malformed"),
    ("empty-plain", "a:{PLAIN}\n", "an empty {PLAIN} password"),
    ("no-colon", "alice\n", ":1: expected user:password"),
    ("twice", "a:{PLAIN}x\na:{PLAIN}y\n", ":2: a appears twice"),
]


@pytest.mark.parametrize(
    ("text", "users"), [c[1:] for c in GOOD_FILES], ids=[c[0] for c in GOOD_FILES]
)
def test_accepted_files(tmp_path: Path, text: str, users: dict[str, str]) -> None:
    path = tmp_path / "users"
    path.write_text(text)
    assert load_auth_file(path) == users


@pytest.mark.parametrize(
    ("text", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_refused_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "users"
    path.write_text(text)
    with pytest.raises(ValueError) as refused:
        load_auth_file(path)
    assert str(refused.value).startswith(f"{path}:")
    assert message in str(refused.value)


def test_stored_hash_is_not_a_password() -> None:
    """The defect: a line copied from another system made its hash string the password."""
    stored = "{SHA512-CRYPT}$6$rounds=5000$salt$hash"
    with pytest.raises(ValueError):
        verify_password(stored, stored)
    with pytest.raises(ValueError):
        AuthFilePolicy({"alice": stored})


def test_old_and_new_hashes_verify() -> None:
    assert verify_password(OLD_LINE, "old secret")
    assert not verify_password(OLD_LINE, "old secreT")
    assert verify_password("{PLAIN}pw", "pw") and not verify_password("{PLAIN}pw", "pw ")


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Replace PBKDF2 by a cheap function of the same inputs; list the iterations asked for."""
    iterations: list[int] = []

    def pbkdf2(name: str, password: bytes, salt: bytes, rounds: int) -> bytes:
        iterations.append(rounds)
        return hashlib.sha256(b"%s|%s|%d" % (password, salt, rounds)).digest()

    monkeypatch.setattr(_auth_file, "_pbkdf2", pbkdf2)
    yield iterations


def test_new_hashes_use_600000_iterations(counted: list[int]) -> None:
    assert hash_password("x").split("$")[1] == "600000"


CHECKS = [
    ("unknown-user", "nobody", "secret", None),
    ("plain-right", "plain", "plain secret", "plain"),
    ("plain-wrong", "plain", "wrong", None),
    ("old-right", "old", "old secret", "old"),
    ("old-wrong", "old", "wrong", None),
    ("new-right", "new", "new secret", "new"),
    ("new-wrong", "new", "wrong", None),
    ("big-right", "big", "big secret", "big"),
]


@pytest.mark.parametrize(
    ("user", "password", "identity"), [c[1:] for c in CHECKS], ids=[c[0] for c in CHECKS]
)
def test_every_check_costs_the_same(
    counted: list[int], user: str, password: str, identity: str | None
) -> None:
    """Whoever asks, the check runs as many PBKDF2 iterations as the costliest hash in the
    file: the time of a refusal tells nothing about the user name or how it is stored."""
    users = {
        "plain": "{PLAIN}plain secret",
        "old": hash_password("old secret", iterations=200_000),
        "new": hash_password("new secret"),
        "big": hash_password("big secret", iterations=900_000),
    }
    policy = AuthFilePolicy(users)
    counted.clear()
    assert policy.check(Credentials(user, password)) == identity
    assert sum(counted) == 900_000


def test_cost_is_at_least_the_new_default(counted: list[int]) -> None:
    policy = AuthFilePolicy({"plain": "{PLAIN}x", "old": hash_password("y", iterations=1000)})
    for user in ("plain", "old", "nobody"):
        counted.clear()
        assert policy.check(Credentials(user, "z")) is None
        assert sum(counted) == 600_000


def test_reload_checks_the_new_table_whole(counted: list[int]) -> None:
    policy = AuthFilePolicy({"alice": "{PLAIN}one"})
    with pytest.raises(ValueError):
        policy.users = {"alice": "{PLAIN}two", "bob": "unmarked"}
    assert policy.users == {"alice": "{PLAIN}one"}
    assert policy.check(Credentials("alice", "one")) == "alice"
    policy.users = {"alice": "{PLAIN}two"}
    assert policy.check(Credentials("alice", "two")) == "alice"


def test_hash_checks_run_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    running, most = 0, 0
    lock, release = threading.Lock(), threading.Event()

    def pbkdf2(name: str, password: bytes, salt: bytes, rounds: int) -> bytes:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(30)
        with lock:
            running -= 1
        return b"\0" * 32

    monkeypatch.setattr(_auth_file, "_pbkdf2", pbkdf2)
    policy = AuthFilePolicy({}, concurrent_checks=2)

    def check() -> None:
        policy.check(Credentials("nobody", "x"))

    threads = [threading.Thread(target=check) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while most < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # room for a third check to slip in, were the slots not bounded
    release.set()
    for thread in threads:
        thread.join(30)
    assert most == 2


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_on_an_event_loop_waiting_checks_hold_no_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI's policy for asyncio and trio: beyond the hash slots, logins wait on the loop,
    not in worker threads (which handlers need as well)."""
    import anyio

    from smtp_anyio._cli_config import _ThreadedAuthFilePolicy

    running, release, lock = [0], threading.Event(), threading.Lock()

    def pbkdf2(name: str, password: bytes, salt: bytes, rounds: int) -> bytes:
        with lock:
            running[0] += 1
        release.wait(30)
        return b"\0" * 32

    monkeypatch.setattr(_auth_file, "_pbkdf2", pbkdf2)
    policy = _ThreadedAuthFilePolicy({}, concurrent_checks=2)
    info = SessionInfo("s", "localhost")
    async with anyio.create_task_group() as tasks:
        for _ in range(5):
            tasks.start_soon(policy.authenticate, Credentials("nobody", "x"), info)
        with anyio.fail_after(30):
            while running[0] < 2:
                await anyio.sleep(0.01)
        await anyio.sleep(0.3)  # room for more threads to start, were they not limited
        assert policy._limiter is not None
        statistics = policy._limiter.statistics()
        assert (statistics.borrowed_tokens, statistics.tasks_waiting) == (2, 3)
        assert running[0] == 2
        release.set()
    assert running[0] == 5
