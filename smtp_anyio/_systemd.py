"""systemd integration with the standard library only: ``Type=notify`` and socket activation.

``notify`` is sd_notify(3): one datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a
path, or ``@name`` in the abstract namespace); without the variable it does nothing, so the
same code runs under systemd and anywhere else. ``inherited_listeners`` is sd_listen_fds(3):
``$LISTEN_FDS`` sockets from fd 3 on, for this process only (``$LISTEN_PID``), named by the
optional ``$LISTEN_FDNAMES`` (the socket unit's ``FileDescriptorName=``).
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = [
    "IMPLICIT_TLS_NAMES",
    "InheritedListener",
    "inherited_listeners",
    "notify",
    "reloading",
]

log = logging.getLogger("smtpmux.server")

_FIRST_FD = 3  #: SD_LISTEN_FDS_START
#: FileDescriptorName= values served with TLS from the first byte (RFC 8314); others plain
IMPLICIT_TLS_NAMES = frozenset({"smtps", "submissions"})


def notify(state: str) -> bool:
    """Tell the service manager ``state`` (``READY=1``, ``STOPPING=1`` ...); True if sent.

    A failure is logged, never raised: the server keeps serving, and systemd's own timeout
    reports a unit that never became ready.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", path, exc)
        return False
    return True


def reloading() -> str:
    """The message that starts a reload (``Type=notify-reload`` needs the monotonic time)."""
    return f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}"


class InheritedListener:
    """A listening TCP socket systemd opened for us, and the name its socket unit gave it."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock, self.name = sock, name
        self.host, self.port = sock.getsockname()[:2]

    @property
    def implicit_tls(self) -> bool:
        return self.name.lower() in IMPLICIT_TLS_NAMES


def inherited_listeners() -> list[InheritedListener]:
    """The sockets passed by socket activation (empty when there are none for this process).

    The variables are removed, as sd_listen_fds(1) does, so that nothing started from here
    (or forked: --workers get the sockets themselves) takes them for its own. Raises
    ValueError for what cannot be served: a datagram or non-TCP socket, or one not listening.
    """
    fds, pid = os.environ.get("LISTEN_FDS"), os.environ.get("LISTEN_PID")
    names = os.environ.get("LISTEN_FDNAMES")
    for variable in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)
    if not fds or not fds.isdigit() or pid != str(os.getpid()):
        return []
    count = int(fds)
    labels = names.split(":") if names else []
    listeners = []
    for index in range(count):
        fd = _FIRST_FD + index
        name = labels[index] if index < len(labels) else "unknown"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ValueError(f"LISTEN_FDS: fd {fd} ({name}) is not a socket: {exc}") from None
        os.set_inheritable(fd, False)
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(
                f"LISTEN_FDS: fd {fd} ({name}) is not a TCP socket: use ListenStream=PORT or "
                "ListenStream=ADDRESS:PORT in the socket unit"
            )
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            raise ValueError(
                f"LISTEN_FDS: fd {fd} ({name}) is not a listening stream socket "
                "(ListenStream=, not ListenDatagram= or Accept=yes)"
            )
        listeners.append(InheritedListener(sock, name))
    return listeners
