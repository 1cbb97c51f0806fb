"""Dovecot's LMTP server as a real test peer: a private instance, started and stopped by a test.

``with running_dovecot() as dovecot:`` writes a configuration of its own into a fresh temporary
directory (nothing under /etc/dovecot is read, and a system-wide Dovecot, when one runs, is not
touched: other base_dir, other ports), starts ``dovecot -F -c CONF`` as a child process, waits
until its LMTP port answers, and in the end stops that process (and only that one).

The instance speaks LMTP only (no auth, IMAP or POP3 listener), on 127.0.0.1 with a free port
and on a unix socket, and knows these users (a passwd-file userdb; ``bob@example.com`` and
``bob`` are the same user, any domain):

- alice, bob: mail goes into ``maildir(user)`` (``DIR/mail/USER/Maildir``), read back by
  ``messages(user)``;
- carol: a quota of 1 byte: RCPT is accepted, the message is refused after the data for her
  alone with ``552 5.2.2`` (a permanent per-recipient failure);
- dave: a home Dovecot cannot create: RCPT is accepted, the message fails after the data for
  him alone with ``451 4.2.0`` (a temporary per-recipient failure).

Any other user is refused at RCPT with ``550 5.1.1 <...> User doesn't exist``.

Why a directory of its own and not pytest's ``tmp_path``: Dovecot refuses to deliver mail as root
("Mail access not allowed for root"), so the mail belongs to an unprivileged user (``nobody`` when
the tests run as root, as in CI), who cannot pass through pytest's private (0700) directories;
and unix socket paths must stay short (108 bytes). The directory is removed at the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.tools import require

#: the users the instance knows (see the module's docstring for what each one is for)
USERS = ("alice", "bob", "carol", "dave")

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0

_CONFIG = """\
# A private Dovecot for smtpmux's tests: LMTP only, written by tests/dovecot.py.
base_dir = {root}/run
state_dir = {root}/state
instance_name = smtpmux-test-{port}
protocols = lmtp
listen = 127.0.0.1
ssl = no
# no statistics: nothing waits for the stats process while the instance stops
stats_writer_socket_path =
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
{privileges}
# bob@example.com is the user bob; the domain of a recipient is ours to route, not Dovecot's
auth_username_format = %Ln
mail_location = maildir:~/Maildir
mail_plugins = quota
plugin {{
  quota = maildir:User quota
}}
passdb {{
  driver = passwd-file
  args = {root}/users
}}
userdb {{
  driver = passwd-file
  args = {root}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    # relative to base_dir
    path = lmtp
    mode = 0666
  }}
}}
"""


class Dovecot:
    """One private Dovecot: its LMTP port and socket, its users' Maildirs, its log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._binary = require("dovecot")

    @property
    def socket_path(self) -> Path:
        """The LMTP unix socket."""
        return self.root / "run" / "lmtp"

    @property
    def config_path(self) -> Path:
        return self.root / "dovecot.conf"

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def messages(self, user: str) -> list[bytes]:
        """Every message in the user's inbox (new/ and cur/), oldest first."""
        folders = [self.maildir(user) / sub for sub in ("new", "cur")]
        files = [path for folder in folders if folder.is_dir() for path in folder.iterdir()]
        files.sort(key=lambda path: (path.stat().st_mtime_ns, path.name))
        return [path.read_bytes() for path in files]

    def log(self) -> str:
        try:
            return (self.root / "dovecot.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logged(self, text: str, timeout: float = 15.0) -> bool:
        """Whether ``text`` shows up in the log within ``timeout`` seconds (Dovecot's log
        process writes a moment after the event)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def write_config(self) -> None:
        """The configuration, the users file and the mail directory, for ``self.port``."""
        uid, gid, privileges = _privileges()
        mail = self.root / "mail"
        mail.mkdir(exist_ok=True)
        for user in ("alice", "bob", "carol"):
            (mail / user).mkdir(exist_ok=True)
        # dave's home is under a directory the mail user cannot write: delivery fails after data
        (self.root / "locked").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            for path in [mail, *(mail / user for user in ("alice", "bob", "carol"))]:
                os.chown(path, uid, gid)
        else:  # pragma: no cover - CI runs as root; a non-root user cannot give dave's home away
            (self.root / "locked").chmod(0o555)
        users = [
            f"alice:{{PLAIN}}alice::::{mail}/alice",
            f"bob:{{PLAIN}}bob::::{mail}/bob",
            f"carol:{{PLAIN}}carol::::{mail}/carol::userdb_quota_rule=*:storage=1B",
            f"dave:{{PLAIN}}dave::::{self.root}/locked/dave",
        ]
        (self.root / "users").write_text("\n".join(users) + "\n")
        self.config_path.write_text(
            _CONFIG.format(root=self.root, port=self.port, privileges=privileges)
        )

    def start(self) -> None:
        """Start Dovecot (again, after ``stop``) and wait until its LMTP port answers."""
        if self.process is not None:
            raise RuntimeError("this Dovecot is already running")
        for attempt in range(3):  # a free port can be taken between our probe and Dovecot's bind
            if self.port == 0 or attempt:
                self.port = _free_port()
            self.write_config()
            # its own output goes to a file, not a pipe: reading a pipe to its end would wait
            # for every child that inherited it, not for the master
            with (self.root / "dovecot.log").open("ab") as output:
                self.process = subprocess.Popen(
                    [self._binary, "-F", "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                )
            if self._wait_until_ready():
                return
            self.stop()
            if "in use" not in self.log():
                break
        raise RuntimeError(f"Dovecot did not start; its log:\n{self.log()}")

    def _wait_until_ready(self) -> bool:
        """True once the LMTP port greets; False when the process exited before that."""
        assert self.process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=5) as probe:
                    greeting = probe.recv(512)
                    probe.sendall(b"QUIT\r\n")
                if greeting.startswith(b"220") and self.socket_path.exists():
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the Dovecot this object started (its master stops the processes it forked)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck master
                process.kill()
                process.wait()


@contextmanager
def running_dovecot() -> Iterator[Dovecot]:
    """A private Dovecot with an LMTP listener, stopped and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="smtpmux-dovecot-"))
    root.chmod(0o711)  # the mail user must pass through to its Maildir
    dovecot = Dovecot(root)
    try:
        dovecot.start()
        yield dovecot
    finally:
        dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)


def _privileges() -> tuple[int, int, str]:
    """The mail user (uid, gid) and the settings that let Dovecot run as the current user.

    As root, Dovecot runs its own helpers as the ``dovecot``/``dovenull`` users the package
    created, and mail is written as ``nobody`` (Dovecot never writes mail as root). As another
    user, everything runs as that user."""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        settings = f"mail_uid = {nobody.pw_uid}\nmail_gid = {nobody.pw_gid}"
        return nobody.pw_uid, nobody.pw_gid, settings
    me = pwd.getpwuid(os.geteuid())  # pragma: no cover - CI runs as root
    settings = (  # pragma: no cover
        f"mail_uid = {me.pw_uid}\nmail_gid = {me.pw_gid}\n"
        f"default_internal_user = {me.pw_name}\ndefault_login_user = {me.pw_name}\n"
        f"first_valid_uid = {min(me.pw_uid, 500)}\nfirst_valid_gid = {min(me.pw_gid, 500)}"
    )
    return me.pw_uid, me.pw_gid, settings  # pragma: no cover


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
