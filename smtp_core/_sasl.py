"""SASL mechanisms as small state machines, for both roles (RFC 4954, RFC 4616 PLAIN, LOGIN).

The engine owns the base64 framing, ``*`` cancellation and line limits; a mechanism only sees
decoded bytes and says what to send next. Add a mechanism by subclassing ``ServerMechanism``
(or ``ClientMechanism``) and listing the class in ``ServerConfig.auth_mechanisms``.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import attrs

from ._events import Credentials

__all__ = [
    "ClientMechanism",
    "LoginClient",
    "LoginMechanism",
    "PlainClient",
    "PlainMechanism",
    "SaslError",
    "ServerMechanism",
    "XOAuth2Client",
]


class SaslError(Exception):
    """The client's response does not fit the mechanism (the engine answers 501 5.5.2)."""


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{what} is not UTF-8") from None


class ServerMechanism(abc.ABC):
    """One exchange, server side. ``start`` and ``step`` return a challenge (bytes, sent as 334)
    or the final ``Credentials``. A new instance is made for every AUTH command."""

    name: ClassVar[str]

    @abc.abstractmethod
    def start(self, initial: bytes | None) -> bytes | Credentials:
        """Begin, with the initial response of the AUTH line when the client sent one."""

    @abc.abstractmethod
    def step(self, response: bytes) -> bytes | Credentials:
        """Take the client's answer to the last challenge."""


class PlainMechanism(ServerMechanism):
    """RFC 4616: one message ``authzid NUL authcid NUL passwd``."""

    name = "PLAIN"

    def start(self, initial: bytes | None) -> bytes | Credentials:
        return b"" if initial is None else self.step(initial)

    def step(self, response: bytes) -> bytes | Credentials:
        parts = response.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise SaslError("PLAIN wants authzid NUL username NUL password")
        authzid, username, password = (_text(p, "PLAIN message") for p in parts)
        return Credentials(username=username, password=password, authzid=authzid)


class LoginMechanism(ServerMechanism):
    """LOGIN, which Outlook and Exchange still use: the username, then the password, each asked."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None

    def start(self, initial: bytes | None) -> bytes | Credentials:
        return b"Username:" if initial is None else self.step(initial)

    def step(self, response: bytes) -> bytes | Credentials:
        if self._username is None:
            self._username = _text(response, "username")
            return b"Password:"
        return Credentials(username=self._username, password=_text(response, "password"))


class ClientMechanism(abc.ABC):
    """One exchange, client side."""

    name: ClassVar[str]

    @abc.abstractmethod
    def initial_response(self) -> bytes | None:
        """What to send on the AUTH line (None: wait for the first challenge)."""

    @abc.abstractmethod
    def respond(self, challenge: bytes) -> bytes:
        """Answer a 334 challenge (already base64-decoded)."""


@attrs.define
class PlainClient(ClientMechanism):
    name = "PLAIN"
    username: str
    password: str = attrs.field(repr=False)
    authzid: str = ""

    def initial_response(self) -> bytes | None:
        return f"{self.authzid}\0{self.username}\0{self.password}".encode()

    def respond(self, challenge: bytes) -> bytes:
        response = self.initial_response()
        assert response is not None
        return response


@attrs.define
class LoginClient(ClientMechanism):
    name = "LOGIN"
    username: str
    password: str = attrs.field(repr=False)
    _round: int = 0

    def initial_response(self) -> bytes | None:
        return None

    def respond(self, challenge: bytes) -> bytes:
        self._round += 1
        return (self.username if self._round == 1 else self.password).encode()


@attrs.define
class XOAuth2Client(ClientMechanism):
    """Google's and Microsoft's XOAUTH2: the user and a bearer token in one message."""

    name = "XOAUTH2"
    username: str
    token: str = attrs.field(repr=False)

    def initial_response(self) -> bytes | None:
        return f"user={self.username}\x01auth=Bearer {self.token}\x01\x01".encode()

    def respond(self, challenge: bytes) -> bytes:
        return b""  # the server sent an error description; an empty answer ends the exchange
