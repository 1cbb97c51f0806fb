"""The client role engine: commands in, bytes out; server bytes in, replies out (sans-IO).

``ClientConnection`` writes every command as bytes for the caller to send, checks that the
command fits the protocol state and what the server offered, and turns the server's bytes into
``Response`` events that say which command each reply answers. It never touches a socket.

The state moves only as the tables in ``_client_state`` say (Rules 1-4 there), and replies are
framed by the one reply reader (``_reply_reader``). A positive reply that no answer to its
command can be, a malformed line, codes that disagree within one reply, a reply with no command
to answer (a 421 excepted) or a reply over the size limits is a ``RemoteProtocolError``: the
engine stops.

The engine checks that what it is asked to write fits the protocol: the state, the syntax, and
that every parameter was offered (a declared SIZE within the server's limit, RFC 1870). Which
parameters a message needs (SIZE, BODY=8BITMIME, SMTPUTF8) and whether to send it at all are
the session's choices (``ClientSession``), as in h11.

Enhanced status codes (RFC 3463) are parsed whenever the first line's text starts with a valid
``class.subject.detail`` whose class matches the reply code's first digit, whether or not the
server advertised ENHANCEDSTATUSCODES: the greeting and the EHLO reply come before we could know,
and a text that starts so is an enhanced code in practice. The code is removed from every line
that starts with it.
"""

from __future__ import annotations

import base64
import binascii
import re
import types
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from ._client_state import (
    REPLY_TIMEOUTS,
    SASL_RESPONSE,
    ClientState,
    ClientStates,
    Command,
    Outcome,
    outcome_of,
)
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import NEED_DATA, ConnectionClosed, MailParams, RcptParams, Reply, Sentinel
from ._params import xtext_encode
from ._reply_reader import MAX_REPLY_LINE, MAX_REPLY_SIZE, ReplyReader
from ._sasl import ClientMechanism

__all__ = [
    "ClientConnection",
    "ClientEvent",
    "ClientState",
    "Command",
    "Extensions",
    "MessageData",
    "Response",
]

S = ClientState
C = Command
_DONE, _MORE = Outcome.DONE, Outcome.MORE
_HELLOS = frozenset({C.EHLO, C.HELO, C.LHLO})

# --- values and events --------------------------------------------------------------------


def _frozen_map(value: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return types.MappingProxyType(dict(value))


_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


@attrs.frozen
class Extensions:
    """What the server offered in its EHLO (or LHLO) reply, typed; HELO gives an empty one.

    ``size`` is None when SIZE was not offered and 0 when it was offered without a fixed limit
    (RFC 1870 writes that ``SIZE 0``). ``keywords`` holds every advertised keyword, upper-cased,
    with its parameters (``AUTH=LOGIN`` lines, as old Outlook wants them, count as AUTH).
    """

    domain: str = ""  #: the first word of the reply: the server's name for itself
    size: int | None = None
    auth: tuple[str, ...] = ()  #: SASL mechanisms, upper-cased
    pipelining: bool = False
    chunking: bool = False
    binarymime: bool = False
    eightbitmime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    starttls: bool = False
    requiretls: bool = False
    enhanced_status_codes: bool = False
    keywords: Mapping[str, tuple[str, ...]] = attrs.field(
        factory=dict, converter=_frozen_map, hash=False
    )

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Extensions:
        """Read the capability lines; lines that are no ehlo-keyword are skipped, not fatal."""
        first, *rest = reply.lines
        words = first.split()
        found: dict[str, list[str]] = {}
        for line in rest:
            parts = line.split()
            if not parts:
                continue
            keyword, _, inline = parts[0].partition("=")
            if not _KEYWORD.fullmatch(keyword):
                continue
            params = found.setdefault(keyword.upper(), [])
            for param in ([inline] if inline else []) + parts[1:]:
                if param not in params:
                    params.append(param)
        size_params = found.get("SIZE")
        size = None
        if size_params is not None:
            size = int(size_params[0]) if size_params and size_params[0].isdigit() else 0
        auth = tuple(dict.fromkeys(m.upper() for m in found.get("AUTH", ())))
        return cls(
            domain=words[0] if words else "",
            size=size,
            auth=auth,
            pipelining="PIPELINING" in found,
            chunking="CHUNKING" in found,
            binarymime="BINARYMIME" in found,
            eightbitmime="8BITMIME" in found,
            smtputf8="SMTPUTF8" in found,
            dsn="DSN" in found,
            starttls="STARTTLS" in found,
            requiretls="REQUIRETLS" in found,
            enhanced_status_codes="ENHANCEDSTATUSCODES" in found,
            keywords={k: tuple(v) for k, v in found.items()},
        )


_NONE_OFFERED = Extensions()


@attrs.frozen
class Response:
    """One reply and the command it answers.

    ``argument`` names what the command was about: the address for MAIL and RCPT, the name for
    EHLO, the mechanism for AUTH, ``"<size>"`` or ``"<size> LAST"`` for BDAT, the VRFY argument;
    in LMTP the replies after the data (END_OF_DATA, BDAT_LAST) come one per accepted recipient,
    and ``argument`` is that recipient. ``extensions`` is set on a 250 to EHLO, HELO or LHLO.
    """

    command: Command
    argument: str | None
    reply: Reply
    extensions: Extensions | None = None


ClientEvent = Response | ConnectionClosed


# --- reply parsing ------------------------------------------------------------------------

_ENHANCED = re.compile(r"([245])\.(?:0|[1-9][0-9]{0,2})\.(?:0|[1-9][0-9]{0,2})(?= |$)")


def _make_reply(code: int, lines: list[str]) -> Reply:
    """The reply from its lines as the reader gives them: the text after each code, and the
    enhanced code taken off when the first text starts with it (see above)."""
    texts = [lines[0][4:]] if len(lines) == 1 else [line[4:] for line in lines]
    found = _ENHANCED.match(texts[0])
    if found is None or int(found.group(1)) != code // 100:
        return Reply(code, texts)
    enhanced = found.group(0)
    lines = []
    for text in texts:
        if text == enhanced:
            text = ""
        elif text.startswith(enhanced + " "):
            text = text[len(enhanced) + 1 :]
        lines.append(text)
    return Reply(code, lines, enhanced)


# --- the connection -----------------------------------------------------------------------


@attrs.define(eq=False)
class _Outstanding:
    """A command written whose reply has not arrived. ``recipients`` is filled, in LMTP, when
    the first reply to the end of data arrives: by then every RCPT reply is known."""

    command: Command
    argument: str | None = None
    recipients: deque[str | None] | None = None


def _check_line_text(value: str, what: str, *, utf8: bool) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise LocalProtocolError(f"{what} contains CR, LF or NUL: {value!r}")
    if not utf8 and not value.isascii():
        raise LocalProtocolError(f"{what} is not ASCII and the server does not offer SMTPUTF8")


def _check_address(address: str, what: str) -> None:
    _check_line_text(address, what, utf8=True)
    if address.startswith("<") or address.endswith(">"):
        raise LocalProtocolError(f"give the {what} without angle brackets: {address!r}")


def _check_word(value: str, what: str) -> None:
    if not value or any(c in value for c in " \t=") or not value.isprintable():
        raise LocalProtocolError(f"{what} must be a non-empty word: {value!r}")
    _check_line_text(value, what, utf8=False)


def _stuff(content: bytes) -> bytes:
    """CRLF line ends (bare CR and bare LF become CRLF), dots doubled at line starts, a final
    CRLF when missing, and the terminator: whole-buffer replaces, no loop per line."""
    data = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class MessageData:
    """The content after a 354, streamed: ``feed(chunk)`` returns what to write for it (CRLF
    line ends, a dot doubled at every line start, across chunk boundaries: the same bytes
    ``send_message_data`` writes for the whole content), ``end()`` the rest and the
    terminator. Memory stays bounded by the chunk size."""

    def __init__(self, check: Callable[[bytes], None] | None) -> None:
        self._check = check  #: None: no recipient was accepted, only the terminator is sent
        self._line_start = True
        self._cr = False  #: the last chunk ended in CR: its LF may come with the next one

    def feed(self, chunk: bytes) -> bytes:
        if self._check is None or not chunk:
            return b""
        self._check(chunk)
        if self._cr:
            chunk = b"\r" + chunk
        self._cr = chunk.endswith(b"\r")
        if self._cr:
            chunk = chunk[:-1]
        data = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if not data:
            return b""
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(b"\r\n")
        return data.replace(b"\r\n.", b"\r\n..")

    def end(self) -> bytes:
        if self._check is None:
            return b".\r\n"
        tail = b"\r\n" if self._cr or not self._line_start else b""
        self._cr, self._line_start = False, True
        return tail + b".\r\n"


class ClientConnection:
    """One SMTP (or LMTP) client session, without I/O.

    Write what the command methods return; feed what the server sends to ``receive_data`` and
    call ``next_event`` until it says ``NEED_DATA``. Each command method raises
    ``LocalProtocolError`` (and changes nothing) when the command does not fit the state, a reply
    it depends on is still outstanding, or the server did not offer what it needs.
    """

    def __init__(
        self,
        *,
        lmtp: bool = False,
        max_reply_line: int = MAX_REPLY_LINE,
        max_reply_size: int = MAX_REPLY_SIZE,
    ) -> None:
        self._lmtp = lmtp
        self._states = ClientStates()
        self._outstanding: deque[_Outstanding] = deque([_Outstanding(C.CONNECT)])
        self._extensions: Extensions | None = None
        self._authenticated = False
        self._tls = False
        self._accepted: list[str] = []
        self._txn = MailParams()  # the params of the last MAIL written
        self._mechanism: ClientMechanism | None = None
        self._challenge: bytes | None = None
        # receive side
        self._reader = ReplyReader(max_line=max_reply_line, max_reply=max_reply_size)
        self._eof = False

    # --- what the application may look at ---

    @property
    def state(self) -> ClientState:
        return self._states.state

    @property
    def lmtp(self) -> bool:
        return self._lmtp

    @property
    def extensions(self) -> Extensions | None:
        """The capabilities of the last successful EHLO/LHLO (empty after HELO); None before
        one, and again after STARTTLS (RFC 3207: everything learnt before TLS is forgotten)."""
        return self._extensions

    @property
    def outstanding(self) -> tuple[Command, ...]:
        """The commands written whose replies have not arrived yet, oldest first."""
        return tuple(o.command for o in self._outstanding)

    @property
    def accepted_recipients(self) -> tuple[str, ...]:
        """The recipients the server accepted in the current (or last) transaction."""
        return tuple(self._accepted)

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def reply_timeout(self) -> float | None:
        """Seconds to wait for the oldest outstanding reply (RFC 5321 §4.5.3.2); None when no
        reply is due. The adapter enforces it; the engine never reads a clock."""
        if not self._outstanding or self.state in (S.CLOSED, S.ERROR):
            return None
        return REPLY_TIMEOUTS[self._outstanding[0].command]

    # --- receiving ---

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the server; ``b""`` means the server closed the connection."""
        if self._eof:
            if data:
                raise LocalProtocolError("data received after the end of the stream")
            return
        if not data:
            self._eof = True
        elif self.state not in (S.CLOSED, S.ERROR):
            self._reader.feed(data)

    def next_event(self) -> ClientEvent | Sentinel:
        """The next reply as a ``Response``, ``ConnectionClosed``, or ``NEED_DATA``."""
        state = self.state
        if state is S.ERROR:
            raise RemoteProtocolError("the connection already failed", None)
        if state is S.CLOSED:
            return ConnectionClosed() if self._eof else NEED_DATA
        try:
            framed = self._reader.next_reply()
        except RemoteProtocolError:
            self._stop(S.ERROR)
            raise
        if framed is not None:
            return self._answer(_make_reply(*framed))
        if not self._eof:
            return NEED_DATA
        if self._reader.pending:
            raise self._fail("the server closed the connection in the middle of a reply")
        self._close()
        return ConnectionClosed()

    def _fail(self, message: str) -> RemoteProtocolError:
        self._stop(S.ERROR)
        return RemoteProtocolError(message, None)

    def _close(self) -> None:
        self._stop(S.CLOSED)

    def _stop(self, state: ClientState) -> None:
        """The session is over (CLOSED) or broken (ERROR): nothing more is read or written."""
        if state is S.ERROR:
            self._states.fail()
        else:
            self._states.close()
        self._outstanding.clear()
        self._reader.clear()

    def _answer(self, reply: Reply) -> Response:
        """Match the reply to the oldest outstanding command and move the state (the tables'
        Rules 2-4)."""
        if not self._outstanding:
            if reply.code == 421:
                self._close()
                return Response(C.UNSOLICITED, None, reply)
            raise self._fail(f"a {reply.code} reply arrived while no command was outstanding")
        head = self._outstanding[0]
        command = head.command
        outcome = outcome_of(command, reply.code)
        if outcome is None:
            raise self._fail(f"a {reply.code} reply cannot answer {command}")
        argument = head.argument
        if self._lmtp and command in (C.END_OF_DATA, C.BDAT_LAST):
            if head.recipients is None:
                recipients: list[str | None] = [*self._accepted] or [None]
                head.recipients = deque(recipients)
            argument = head.recipients.popleft()
            if not head.recipients:
                self._outstanding.popleft()
        else:
            self._outstanding.popleft()

        if reply.code == 421 or command is C.QUIT:
            self._close()
            return Response(command, argument, reply)

        if self._states.answered(command, outcome):
            self._states.reproject(later.command for later in self._outstanding)

        extensions = None
        if command is C.MAIL:  # a new transaction, even a refused one: the last one's are gone
            self._accepted = []
        if outcome is _DONE:
            if command in (C.EHLO, C.LHLO):
                extensions = self._extensions = Extensions.from_ehlo(reply)
            elif command is C.HELO:
                extensions = self._extensions = _NONE_OFFERED
            if command in _HELLOS or command is C.RSET:
                self._accepted = []
            elif command is C.RCPT and argument is not None:
                self._accepted.append(argument)
            elif command is C.AUTH:
                self._authenticated = True
            elif command is C.STARTTLS:
                # RFC 3207 §4.2 (CVE-2011-0411): bytes that came with the 220 were sent before
                # TLS and may be injected; drop them, and forget what the server said before.
                self._reader.clear()
                self._tls = True
                self._extensions = None
                self._authenticated = False
        if command is C.AUTH:
            self._challenge = None
            if outcome is _MORE:
                try:
                    self._challenge = base64.b64decode(reply.lines[0], validate=True)
                except (binascii.Error, ValueError):
                    self._challenge = None
            else:
                self._mechanism = None
        return Response(command, argument, reply, extensions)

    # --- writing: the guards ---

    def _offered(self) -> Extensions:
        return self._extensions or _NONE_OFFERED

    def _begin(self, verb: str) -> None:
        """Rule 1: refuse a command that does not fit (the caller then writes it)."""
        if self._outstanding:
            last = self._outstanding[-1].command
            self._states.check_write(verb, last, self._offered().pipelining)
        else:
            self._states.check_write(verb, None, True)

    def _write(self, command: Command, argument: str | None, line: str) -> bytes:
        self._outstanding.append(_Outstanding(command, argument))
        self._states.written(command)
        return line.encode("utf-8") + b"\r\n"

    def _need(self, offered: bool, what: str) -> None:
        if not offered:
            raise LocalProtocolError(f"the server does not offer {what}")

    # --- writing: the commands ---

    def ehlo(self, name: str) -> bytes:
        """EHLO (LHLO in LMTP mode): greet, and learn the server's extensions from the reply."""
        command = C.LHLO if self._lmtp else C.EHLO
        self._begin(command)
        _check_word(name, "EHLO name")
        return self._write(command, name, f"{command} {name}")

    def helo(self, name: str) -> bytes:
        """HELO, for servers that refuse EHLO: no extensions at all (not in LMTP)."""
        if self._lmtp:
            raise LocalProtocolError("LMTP has no HELO: use ehlo(), which sends LHLO")
        self._begin(C.HELO)
        _check_word(name, "HELO name")
        return self._write(C.HELO, name, f"HELO {name}")

    def mail(self, address: str, params: MailParams | None = None) -> bytes:
        """MAIL FROM (``""`` is the null reverse-path ``<>``). Every parameter is checked against
        what was offered; a non-ASCII address needs SMTPUTF8 declared (RFC 6531 §3.4)."""
        self._begin(C.MAIL)
        _check_address(address, "reverse-path")
        params = params or MailParams()
        if not address.isascii() and not params.smtputf8:
            self._need(self._offered().smtputf8, "SMTPUTF8 (the reverse-path is not ASCII)")
            warnings.warn(
                "ClientConnection.mail() adds SMTPUTF8 for a non-ASCII reverse-path for one more"
                " release, then refuses it: declare MailParams(smtputf8=True) (ClientSession and"
                " ClientSession.mail_params_for do)",
                DeprecationWarning,
                stacklevel=2,
            )
            params = attrs.evolve(params, smtputf8=True)
        line = f"MAIL FROM:<{address}>{self._mail_params(params)}"
        out = self._write(C.MAIL, address, line)
        self._txn = params
        return out

    def _mail_params(self, params: MailParams) -> str:
        ext = self._offered()
        words = []
        if params.size is not None:
            self._need(ext.size is not None, "SIZE")
            assert ext.size is not None
            if ext.size and params.size > ext.size:
                raise LocalProtocolError(
                    f"the message ({params.size} octets) exceeds the server's SIZE {ext.size}"
                )
            words.append(f"SIZE={params.size}")
        if params.body is not None:
            if params.body == "BINARYMIME":
                self._need(ext.binarymime and ext.chunking, "BINARYMIME with CHUNKING")
            else:
                self._need(ext.eightbitmime, "8BITMIME (BODY=)")
            words.append(f"BODY={params.body}")
        if params.smtputf8:
            self._need(ext.smtputf8, "SMTPUTF8")
            words.append("SMTPUTF8")
        if params.ret is not None:
            self._need(ext.dsn, "DSN (RET=)")
            words.append(f"RET={params.ret}")
        if params.envid is not None:
            self._need(ext.dsn, "DSN (ENVID=)")
            words.append(f"ENVID={xtext_encode(params.envid)}")
        if params.auth is not None:
            self._need(bool(ext.auth) or "AUTH" in ext.keywords, "AUTH (AUTH= submitter)")
            words.append(f"AUTH={xtext_encode(params.auth)}")
        if params.requiretls:
            self._need(ext.requiretls, "REQUIRETLS")
            words.append("REQUIRETLS")
        words += _extra_params(params.extra)
        return "".join(" " + word for word in words)

    def rcpt(self, address: str, params: RcptParams | None = None) -> bytes:
        """RCPT TO. With PIPELINING it may follow MAIL (and other RCPTs) before their replies."""
        self._begin(C.RCPT)
        _check_address(address, "forward-path")
        if not address:
            raise LocalProtocolError("RCPT needs an address")
        if not address.isascii() and not self._txn.smtputf8:
            raise LocalProtocolError(
                "non-ASCII recipient, but MAIL did not declare SMTPUTF8 (ClientSession.send does)"
            )
        words = []
        if params is not None:
            if params.notify is not None:
                self._need(self._offered().dsn, "DSN (NOTIFY=)")
                if not params.notify or ("NEVER" in params.notify and len(params.notify) > 1):
                    raise LocalProtocolError("NOTIFY is NEVER alone, or SUCCESS/FAILURE/DELAY")
                words.append("NOTIFY=" + ",".join(params.notify))
            if params.orcpt is not None:
                self._need(self._offered().dsn, "DSN (ORCPT=)")
                addr_type, original = params.orcpt
                _check_word(addr_type, "ORCPT address type")
                words.append(f"ORCPT={addr_type};{xtext_encode(original)}")
            words += _extra_params(params.extra)
        line = f"RCPT TO:<{address}>" + "".join(" " + word for word in words)
        return self._write(C.RCPT, address, line)

    def data(self) -> bytes:
        """DATA; after its 354 send the content with ``send_message_data``."""
        self._begin(C.DATA)
        if self._txn.body == "BINARYMIME":
            raise LocalProtocolError("BODY=BINARYMIME content must be sent with BDAT")
        return self._write(C.DATA, None, "DATA")

    def send_message_data(self, content: bytes) -> bytes:
        """The content after the 354, dot-stuffed with CRLF line ends, and the terminator.

        If the server answered DATA with 354 although it accepted no recipient (pipelining,
        every RCPT refused), only ``.\\r\\n`` is written, whatever ``content`` is: the empty data
        ends the DATA phase and the transaction fails (RFC 2920 §3.1).
        """
        self._begin(C.END_OF_DATA)
        if not self._accepted:
            line = b".\r\n"
        else:
            self._check_8bit(content)
            line = _stuff(content)
        self._outstanding.append(_Outstanding(C.END_OF_DATA))
        self._states.written(C.END_OF_DATA)
        return line

    def message_data(self) -> MessageData:
        """``send_message_data`` for content that arrives in chunks (a spooled message): the
        reply to the end of data is outstanding from now on; write what the MessageData
        returns, ``end()`` last."""
        self._begin(C.END_OF_DATA)
        self._outstanding.append(_Outstanding(C.END_OF_DATA))
        self._states.written(C.END_OF_DATA)
        return MessageData(self._check_8bit if self._accepted else None)

    def bdat(self, chunk: bytes, last: bool = False) -> bytes:
        """``BDAT <size> [LAST]`` and the chunk as it is (RFC 3030: no dot-stuffing)."""
        command = C.BDAT_LAST if last else C.BDAT
        self._begin(command)
        self._need(self._offered().chunking, "CHUNKING (BDAT)")
        if self._txn.body != "BINARYMIME":
            self._check_8bit(chunk)
        argument = f"{len(chunk)} LAST" if last else str(len(chunk))
        return self._write(command, argument, f"BDAT {argument}") + chunk

    def _check_8bit(self, content: bytes) -> None:
        if content.isascii() or self._txn.smtputf8 or self._txn.body in ("8BITMIME", "BINARYMIME"):
            return
        raise LocalProtocolError(
            "the message has 8-bit octets but MAIL did not declare BODY=8BITMIME "
            "(ClientSession declares it when the server offers 8BITMIME; otherwise encode the "
            "message as 7-bit, with quoted-printable or base64)"
        )

    def rset(self) -> bytes:
        """RSET: abandon the transaction."""
        self._begin(C.RSET)
        return self._write(C.RSET, None, "RSET")

    def noop(self) -> bytes:
        self._begin(C.NOOP)
        return self._write(C.NOOP, None, "NOOP")

    def vrfy(self, argument: str) -> bytes:
        self._begin(C.VRFY)
        if not argument:
            raise LocalProtocolError("VRFY needs an argument")
        _check_line_text(argument, "VRFY argument", utf8=self._offered().smtputf8)
        return self._write(C.VRFY, argument, f"VRFY {argument}")

    def starttls(self) -> bytes:
        """STARTTLS. After its 220 the adapter wraps the socket; bytes already received after the
        220 are dropped, and EHLO is needed again."""
        self._begin(C.STARTTLS)
        if self._tls:
            raise LocalProtocolError("TLS is already active")
        self._need(self._offered().starttls, "STARTTLS")
        return self._write(C.STARTTLS, None, "STARTTLS")

    def auth(self, mechanism: ClientMechanism) -> bytes:
        """AUTH with the mechanism's initial response (RFC 4954 §4). Each 334 challenge arrives
        as a Response with command AUTH; answer it with ``auth_respond()`` or ``auth_cancel()``."""
        self._begin(C.AUTH)
        if self._authenticated:
            raise LocalProtocolError("already authenticated (RFC 4954: AUTH once per session)")
        name = mechanism.name.upper()
        offered = self._offered().auth
        if name not in offered:
            raise LocalProtocolError(
                f"the server does not offer AUTH {name} (it offers: {' '.join(offered) or 'none'})"
            )
        initial = mechanism.initial_response()
        line = f"AUTH {name}"
        if initial is not None:
            line += " " + (base64.b64encode(initial).decode("ascii") or "=")
        self._mechanism = mechanism
        return self._write(C.AUTH, name, line)

    def auth_respond(self) -> bytes:
        """The mechanism's answer to the last 334 challenge, base64-encoded. A challenge that is
        not valid base64 is answered with ``*`` (cancel), as RFC 4954 §4 allows."""
        self._begin(SASL_RESPONSE)
        assert self._mechanism is not None
        if self._challenge is None:
            return self._write(C.AUTH, self._mechanism.name.upper(), "*")
        answer = self._mechanism.respond(self._challenge)
        line = base64.b64encode(answer).decode("ascii")
        return self._write(C.AUTH, self._mechanism.name.upper(), line)

    def auth_cancel(self) -> bytes:
        """``*``: end the SASL exchange; the server answers 501."""
        self._begin(SASL_RESPONSE)
        assert self._mechanism is not None
        return self._write(C.AUTH, self._mechanism.name.upper(), "*")

    def quit(self) -> bytes:
        self._begin(C.QUIT)
        return self._write(C.QUIT, None, "QUIT")

    # --- writing: several commands at once ---

    def all_or_nothing(self) -> _AllOrNothing:
        """Build several commands for one write (a pipelined envelope) in a ``with`` block:
        when one of them raises LocalProtocolError, those built before it in the block are
        forgotten as well, as if never written (their bytes must not be sent), and the error
        goes on."""
        return _AllOrNothing(self)

    def _forget_since(self, count: int, txn: MailParams) -> None:
        """``all_or_nothing``: drop the commands written after the first ``count``."""
        while len(self._outstanding) > count:
            self._outstanding.pop()
        self._txn = txn
        self._states.reproject(o.command for o in self._outstanding)

    # --- deprecated: the session layer's choices, kept for one release ---

    def mail_params_for(
        self,
        content: bytes,
        mail_from: str,
        rcpt_tos: Iterable[str] = (),
        params: MailParams | None = None,
    ) -> MailParams:
        """Deprecated: which parameters a message needs is the session's choice; use
        ``ClientSession.mail_params_for(conn.extensions, ...)`` (same arguments after it)."""
        _deprecated("mail_params_for", "ClientSession.mail_params_for(conn.extensions, ...)")
        from ._client_session import ClientSession  # the layer above: it imports this module

        return ClientSession.mail_params_for(self._extensions, content, mail_from, rcpt_tos, params)

    def send_envelope(
        self,
        mail_from: str,
        rcpt_tos: Sequence[str],
        mail_params: MailParams | None = None,
        rcpt_params: RcptParams | Sequence[RcptParams | None] | None = None,
        *,
        content: bytes | None = None,
        data: bool = True,
    ) -> bytes:
        """Deprecated: use ``ClientSession.write_envelope(conn, ...)`` (same arguments after
        it): MAIL, every RCPT and DATA in one write, all or nothing."""
        _deprecated("send_envelope", "ClientSession.write_envelope(conn, ...)")
        from ._client_session import ClientSession  # the layer above: it imports this module

        return ClientSession.write_envelope(
            self, mail_from, rcpt_tos, mail_params, rcpt_params, content=content, data=data
        )


class _AllOrNothing:
    """The ``with`` block of ``ClientConnection.all_or_nothing`` (a class, not a generator
    context manager: it is entered once per pipelined message)."""

    __slots__ = ("_conn", "_count", "_txn")

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn
        self._count = len(conn._outstanding)
        self._txn = conn._txn

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        if kind is not None and issubclass(kind, LocalProtocolError):
            self._conn._forget_since(self._count, self._txn)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"ClientConnection.{old}() is deprecated (a session-level choice): use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


def _extra_params(extra: tuple[tuple[str, str | None], ...]) -> list[str]:
    words = []
    for key, value in extra:
        _check_word(key, "parameter name")
        if value is None:
            words.append(key.upper())
        else:
            _check_word(value, f"{key} value")
            words.append(f"{key.upper()}={value}")
    return words
