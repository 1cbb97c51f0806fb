"""ServerConnection: the server side of SMTP, ESMTP and LMTP as a pure state machine.

Bytes go in with ``receive_data``, events come out of ``next_event``, replies go in with
``send`` and come back as bytes to write. No I/O, no clock: see docs/engine.md.
"""

from __future__ import annotations

import binascii
import functools
import re
from collections.abc import Callable

from ._address import AddressError, parse_path
from ._config import ServerConfig
from ._data import REPLY_TOO_BIG, DotReader
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    NEED_DATA,
    PAUSED,
    AuthChallenge,
    AuthCredentials,
    BdatChunk,
    ConnectionClosed,
    Credentials,
    DataChunk,
    EndOfData,
    Event,
    Expand,
    Hello,
    Help,
    InvalidCommand,
    MailFrom,
    MailParams,
    Noop,
    Quit,
    RcptTo,
    Reply,
    Reset,
    Sentinel,
    StartData,
    StartTLS,
    Verify,
)
from ._params import ParamError, parse_mail_params, parse_rcpt_params
from ._proxy import ProxyError, parse_proxy_header
from ._sasl import SaslError, ServerMechanism
from ._state import (
    ACCEPTS,
    REFUSALS,
    TRANSACTION_STATES,
    P,
    Pending,
    S,
    ServerMachine,
    ServerState,
    Signal,
    is_positive,
)

__all__ = ["ServerConnection"]

SASL_LINE_LIMIT = 12288  # RFC 4954 §4: AUTH lines and responses may be this long
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is tolerated between words
_BDAT = re.compile(r"([0-9]{1,20})(?: +(LAST))? *", re.IGNORECASE)

# Room each extension adds to the 512-octet command line (RFC 1870 §4, 3461 §4.1, 4954 §5,
# 6531 §3.4, 6152, 8689), so a full MAIL or RCPT line always fits.
_ROOM_SIZE = 26
_ROOM_BODY = 16
_ROOM_SMTPUTF8 = 10
_ROOM_DSN = 100 + 500 + 40
_ROOM_AUTH = 500
_ROOM_REQUIRETLS = 11


def _r(code: int, text: str, enhanced: str | None) -> Reply:
    return Reply(code, text, enhanced)


R_UNRECOGNIZED = _r(500, "Command unrecognized", "5.5.1")
R_USE_LHLO = _r(500, "This is an LMTP server: use LHLO", "5.5.1")
R_USE_EHLO = _r(500, "This is an SMTP server, not LMTP: use EHLO or HELO", "5.5.1")
R_LINE_TOO_LONG = _r(500, "Line too long", "5.5.2")
R_AUTH_LINE_TOO_LONG = _r(500, "Authentication exchange line is too long", "5.5.6")
R_SYNTAX = _r(500, "Syntax error: control characters or invalid UTF-8", "5.5.2")
R_BARE_LF = _r(500, "Bare <LF> received: commands must end with <CR><LF>", "5.5.2")
R_NO_ARGS = _r(501, "Syntax error: no arguments allowed", "5.5.4")
R_NOT_OFFERED = _r(502, "Command not implemented", "5.5.1")
R_EHLO_FIRST = _r(503, "Send EHLO first", "5.5.1")
R_BINARY_NEEDS_BDAT = _r(503, "BODY=BINARYMIME needs BDAT, not DATA", "5.5.1")
R_TLS_ACTIVE = _r(503, "TLS already active", "5.5.1")
R_AUTH_TWICE = _r(503, "Already authenticated", "5.5.1")
R_AUTH_MECHANISM = _r(504, "Unrecognized authentication mechanism", "5.5.4")
R_AUTH_NEEDS_TLS = _r(538, "Encryption required for requested authentication mechanism", "5.7.11")
R_AUTH_CANCELLED = _r(501, "Authentication cancelled", "5.0.0")
R_AUTH_BASE64 = _r(501, "Invalid base64 data", "5.5.2")
R_AUTH_MALFORMED = _r(501, "Malformed authentication response", "5.5.2")
R_BDAT_SYNTAX = _r(501, "Syntax: BDAT size [LAST]; closing connection", "5.5.4")
R_PROXY_EXPECTED = _r(500, "PROXY header expected", "5.5.1")


# Each reply's bytes by the reply's identity, one table per enhanced_codes setting: most
# replies are the same few objects (event defaults, module constants), and a hit here costs
# no call into Reply's Python-level __hash__ (attrs), which the value-keyed cache below does.
# An entry holds its reply, so no other object can take that id while the entry lives.
_WIRE_MAX = 1024
_WIRE: tuple[dict[int, tuple[Reply, bytes]], dict[int, tuple[Reply, bytes]]] = ({}, {})


# Events without fields are frozen values: one instance serves every command and connection.
_START_DATA = StartData()
_RESET = Reset()
_NOOP = Noop()
_QUIT = Quit()
_START_TLS = StartTLS()


def _format(reply: Reply, enhanced_codes: bool) -> bytes:
    wire = _WIRE[1 if enhanced_codes else 0]
    entry = wire.get(id(reply))
    if entry is not None and entry[0] is reply:
        return entry[1]
    data = _render(reply, bool(enhanced_codes))
    if len(wire) >= _WIRE_MAX:  # replies made per command (EHLO's): keep the table bounded
        wire.clear()
    wire[id(reply)] = (reply, data)
    return data


@functools.lru_cache(maxsize=1024)
def _render(reply: Reply, enhanced_codes: bool) -> bytes:
    """A reply's bytes, checked; cached by value (an equal reply made anew, such as EHLO's)."""
    code = reply.code
    if not (isinstance(code, int) and 200 <= code <= 599):
        raise LocalProtocolError(f"reply code must be 200-599, not {code!r}")
    prefix = f"{reply.enhanced} " if enhanced_codes and reply.enhanced else ""
    out = []
    last = len(reply.lines) - 1
    for i, line in enumerate(reply.lines):
        if "\r" in line or "\n" in line:
            raise LocalProtocolError("reply text must not contain CR or LF")
        sep = " " if i == last else "-"
        out.append(f"{code}{sep}{prefix}{line}\r\n")  # "334 " keeps its space (RFC 4954)
    return "".join(out).encode("utf-8")


@functools.lru_cache(maxsize=64)
def _capabilities(config: ServerConfig, tls: bool) -> tuple[str, ...]:
    caps: list[str] = []
    if config.pipelining:
        caps.append("PIPELINING")
    caps.append(f"SIZE {config.max_message_size}" if config.max_message_size else "SIZE")
    if config.eightbitmime:
        caps.append("8BITMIME")
    if config.smtputf8:
        caps.append("SMTPUTF8")
    if config.enhanced_status_codes:
        caps.append("ENHANCEDSTATUSCODES")
    if config.chunking:
        caps.append("CHUNKING")
        if config.binarymime:
            caps.append("BINARYMIME")
    if config.dsn:
        caps.append("DSN")
    if config.starttls and not tls:
        caps.append("STARTTLS")
    if config.auth_mechanisms and (tls or not config.auth_require_tls):
        caps.append("AUTH " + " ".join(m.name for m in config.auth_mechanisms))
    if config.requiretls and tls:
        caps.append("REQUIRETLS")
    return tuple(caps)


def _command_limit(config: ServerConfig) -> int:
    room = _ROOM_SIZE + _ROOM_BODY
    room += _ROOM_SMTPUTF8 if config.smtputf8 else 0
    room += _ROOM_DSN if config.dsn else 0
    room += _ROOM_AUTH if config.auth_mechanisms else 0
    room += _ROOM_REQUIRETLS if config.requiretls else 0
    return config.max_command_line_length + room


class ServerConnection:
    """One SMTP (or LMTP) server session, from the greeting to QUIT.

    ``tls=True`` says the transport is already encrypted (implicit TLS, RFC 8314);
    ``proxy_protocol=True`` expects a PROXY v1/v2 header before anything else (only for
    connections from a trusted proxy). Read ``next_event()`` until NEED_DATA, answer each
    event that has a ``default_reply`` with ``send()``, write what ``send()`` returns.
    """

    #: one per connection: slots instead of a __dict__ (the W5 idle-connection memory)
    __slots__ = (
        "_authenticated",
        "_bdat_last",
        "_bdat_left",
        "_bdat_line",
        "_bdat_refusal",
        "_buffer",
        "_command_limit",
        "_eof",
        "_hello",
        "_line_limit",
        "_machine",
        "_mail",
        "_mechanism",
        "_message_size",
        "_offered_hello",
        "_offered_mail",
        "_pending_count",
        "_reader",
        "_recipients",
        "_reject",
        "_scanned",
        "_skipped_head",
        "_skipping",
        "_tls",
        "config",
        "plaintext_discarded",
    )

    def __init__(
        self, config: ServerConfig | None = None, *, tls: bool = False, proxy_protocol: bool = False
    ) -> None:
        self.config = config or ServerConfig()
        self._buffer = bytearray()
        self._scanned = 0  # the buffer holds no LF before this offset
        self._skipping = False  # inside an over-long line, dropping bytes up to its LF
        self._skipped_head = b""  # the start of that line, for the InvalidCommand event
        self._eof = False
        self._machine = ServerMachine(proxy_protocol=proxy_protocol)  # state: only through it
        self._pending_count = 0  # LMTP: replies still due after the end of data
        self._reject: Reply | None = None  # the pending reply must not be positive
        self._command_limit = _command_limit(self.config)
        self._line_limit = max(
            self._command_limit, SASL_LINE_LIMIT if self.config.auth_mechanisms else 0
        )
        self._tls = tls
        self._authenticated = False
        self._hello: Hello | None = None
        self._offered_hello: Hello | None = None
        self._mechanism: ServerMechanism | None = None
        self._mail: MailParams | None = None  # the transaction's MAIL params, once accepted
        self._offered_mail: MailParams | None = None
        self._recipients = 0
        self._message_size = 0  # across BDAT chunks
        self._reader: DotReader | None = None
        self._bdat_left: int | None = None  # octets of the current BDAT chunk still to read
        self._bdat_last = False
        self._bdat_refusal: Reply | None = None  # the BDAT chunk is read only to be refused
        self._bdat_line = b""
        self.plaintext_discarded = 0  #: octets dropped at STARTTLS (command injection)

    # --- what the application may ask -----------------------------------------------------

    @property
    def state(self) -> ServerState:
        return self._machine.state

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def hello(self) -> Hello | None:
        """The accepted HELO/EHLO/LHLO (None before it, and again after STARTTLS)."""
        return self._hello

    @property
    def recipients(self) -> int:
        """Recipients accepted in the current transaction."""
        return self._recipients

    @property
    def in_transaction(self) -> bool:
        """A mail transaction is open: MAIL was accepted and its end has not come yet."""
        return self._machine.state in TRANSACTION_STATES

    @property
    def transactions_ended(self) -> int:
        """How many mail transactions have ended with the connection still open (end of data,
        RSET, HELO/EHLO, a refused BDAT chunk): the signal to forget an envelope."""
        return self._machine.transactions_ended

    @property
    def pending_replies(self) -> int:
        """How many replies the engine waits for now (LMTP: one per recipient after data)."""
        if self._machine.pending is None:
            return 0
        return max(self._pending_count, 1)

    @property
    def timeout(self) -> float:
        """Seconds to wait for the peer in this state (RFC 5321 §4.5.3.2); the adapter enforces."""
        state = self._machine.state
        if state is S.PROXY:
            return self.config.proxy_timeout
        if state is S.DATA or self._bdat_left is not None:
            return self.config.data_timeout
        if state is S.INITIAL or state is S.REFUSED:  # no hello yet
            return min(self.config.first_command_timeout, self.config.command_timeout)
        return self.config.command_timeout

    # --- bytes in, events out ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if data:
            if self._eof:
                raise LocalProtocolError("received data after EOF")
            if self._machine.state is not S.CLOSED:
                self._buffer += data
        else:
            self._eof = True

    def next_event(self) -> Event | Sentinel:
        """The next event, NEED_DATA, or PAUSED while a reply is due."""
        machine = self._machine
        state = machine.state
        if state is S.CLOSED:
            return ConnectionClosed()
        if machine.pending is not None:
            return PAUSED
        if self._bdat_left is not None:
            return self._read_bdat()
        if state is S.DATA:
            return self._read_data()
        if state is S.PROXY:
            return self._read_proxy()
        if not self._buffer:  # every round ends here: _next_line would find no line either
            self._scanned = 0
            return self._closed() if self._eof else NEED_DATA
        line = self._next_line()
        if line is None:
            return self._closed() if self._eof else NEED_DATA
        if isinstance(line, InvalidCommand):
            return self._refuse(line.line, line.default_reply)
        if state is S.AUTH:
            return self._sasl_response(line)
        return self._command(line)

    def _closed(self) -> ConnectionClosed:
        self._machine.signal(Signal.CLOSED)
        self._buffer.clear()
        return ConnectionClosed()

    def _next_line(self) -> bytes | InvalidCommand | None:
        """Cut the next line off the buffer, never holding more than the line limit."""
        buf = self._buffer
        in_auth = self._machine.state is S.AUTH
        limit = SASL_LINE_LIMIT if in_auth else self._line_limit
        lf = buf.find(b"\n", self._scanned)
        if lf < 0:
            if self._skipping:
                buf.clear()
                self._scanned = 0
            elif len(buf) > limit:
                self._skipping = True
                self._skipped_head = bytes(buf[:64])
                buf.clear()
                self._scanned = 0
            else:
                self._scanned = len(buf)
            return None
        self._scanned = 0
        if self._skipping or lf + 1 > limit:
            head = self._skipped_head if self._skipping else bytes(buf[:64])
            self._skipping = False
            del buf[: lf + 1]
            reply = R_AUTH_LINE_TOO_LONG if in_auth else R_LINE_TOO_LONG
            return InvalidCommand(head, reply)
        if lf and buf[lf - 1] == 13:
            line = bytes(buf[: lf - 1])
        elif self.config.bare_lf == "reject":
            line = bytes(buf[:lf])
            del buf[: lf + 1]
            return InvalidCommand(line, R_BARE_LF)
        else:
            line = bytes(buf[:lf])
        del buf[: lf + 1]
        return line

    def _refuse(self, line: bytes, reply: Reply) -> InvalidCommand:
        self._machine.expect(P.INVALID)
        return InvalidCommand(line, reply)

    def _expect(self, pending: Pending, event: Event) -> Event:
        self._machine.expect(pending)
        return event

    # --- commands ---------------------------------------------------------------------------

    def _command(self, line: bytes) -> Event | Sentinel:
        try:
            text = line.decode("ascii") if line.isascii() else line.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse(line, R_SYNTAX)
        if _CONTROL.search(text):
            return self._refuse(line, R_SYNTAX)
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        handler = _COMMANDS.get(verb)
        if handler is None:
            return self._refuse(line, R_UNRECOGNIZED)
        if verb in _HELLOS and (verb == "LHLO") != self.config.lmtp:  # the wrong protocol
            return self._refuse(line, R_USE_LHLO if self.config.lmtp else R_USE_EHLO)
        if verb != "AUTH" and len(line) + 2 > self._command_limit:
            return self._refuse(line[:64], R_LINE_TOO_LONG)
        if verb == "BDAT":  # its chunk follows, so it is read even when it will be refused
            return self._bdat_cmd(arg.strip(" "), line)
        state = self._machine.state
        if verb not in ACCEPTS[state]:
            return self._refuse(line, REFUSALS[state][verb])  # Rule 4
        return handler(self, arg.strip(" "), line)

    def _hello_cmd(self, arg: str, line: bytes) -> Event:
        if not arg:
            verb = line[:4].decode("ascii").upper()
            return self._refuse(line, _r(501, f"Syntax: {verb} hostname", "5.5.4"))
        verb_bytes = line[:4].upper()
        extended = verb_bytes != b"HELO"
        hostname = self.config.hostname
        if extended:
            lines: tuple[str, ...] = (
                f"{hostname} Hello {arg}",
                *_capabilities(self.config, self._tls),
            )
        else:
            lines = (f"{hostname} Hello {arg}",)
        event = Hello(arg, extended, verb_bytes == b"LHLO", Reply(250, lines))
        self._offered_hello = event
        return self._expect(P.HELLO, event)

    def _mail_cmd(self, arg: str, line: bytes) -> Event:
        if arg[:5].upper() != "FROM:":
            return self._refuse(line, _r(501, "Syntax: MAIL FROM:<address>", "5.5.4"))
        assert self._hello is not None
        extended = self._hello.extended
        try:
            address, rest = parse_path(arg[5:], sender=True, utf8=self.config.smtputf8 and extended)
            params = parse_mail_params(rest, self.config, extended=extended, tls_active=self._tls)
        except (AddressError, ParamError) as exc:
            return self._refuse(line, exc.reply)
        if not params.smtputf8 and not address.isascii():
            return self._refuse(line, _r(553, "Non-ASCII address needs SMTPUTF8", "5.6.7"))
        self._offered_mail = params
        return self._expect(P.MAIL, MailFrom(address, params))

    def _rcpt_cmd(self, arg: str, line: bytes) -> Event:
        if arg[:3].upper() != "TO:":
            return self._refuse(line, _r(501, "Syntax: RCPT TO:<address>", "5.5.4"))
        assert self._hello is not None and self._mail is not None
        extended = self._hello.extended
        try:
            address, rest = parse_path(arg[3:], sender=False, utf8=self._mail.smtputf8)
            params = parse_rcpt_params(rest, self.config, extended=extended)
        except (AddressError, ParamError) as exc:
            return self._refuse(line, exc.reply)
        return self._expect(P.RCPT, RcptTo(address, params))

    def _data_cmd(self, arg: str, line: bytes) -> Event:
        if arg:
            return self._refuse(line, R_NO_ARGS)
        assert self._mail is not None
        if self._mail.body == "BINARYMIME":
            return self._refuse(line, R_BINARY_NEEDS_BDAT)
        return self._expect(P.DATA, _START_DATA)

    def _bdat_cmd(self, arg: str, line: bytes) -> Event | Sentinel:
        match = _BDAT.fullmatch(arg)
        if match is None:
            # Without a size the chunk's end is unknown: the rest of the stream cannot be parsed.
            self._machine.signal(Signal.CLOSED)
            raise RemoteProtocolError("BDAT without a valid size", R_BDAT_SYNTAX)
        size = int(match[1])
        self._bdat_left = size
        self._bdat_last = match[2] is not None
        self._bdat_line = line
        if not self.config.chunking:
            self._bdat_refusal = R_NOT_OFFERED
        elif "BDAT" not in ACCEPTS[self._machine.state]:  # Rule 4, once its chunk is read
            self._bdat_refusal = REFUSALS[self._machine.state]["BDAT"]
        else:
            # The size is declared up front, so an oversize chunk is refused before it is read.
            self._message_size += size
            limit = self.config.max_message_size
            if limit is not None and self._message_size > limit and self._reject is None:
                self._reject = REPLY_TOO_BIG
        return self._read_bdat()

    def _rset_cmd(self, arg: str, line: bytes) -> Event:
        if arg:
            return self._refuse(line, R_NO_ARGS)
        return self._expect(P.RESET, _RESET)

    def _noop_cmd(self, arg: str, line: bytes) -> Event:
        return self._expect(P.OTHER, _NOOP)

    def _vrfy_cmd(self, arg: str, line: bytes) -> Event:
        if not arg:
            return self._refuse(line, _r(501, "Syntax: VRFY address", "5.5.4"))
        return self._expect(P.OTHER, Verify(arg))

    def _expn_cmd(self, arg: str, line: bytes) -> Event:
        if not arg:
            return self._refuse(line, _r(501, "Syntax: EXPN list", "5.5.4"))
        return self._expect(P.OTHER, Expand(arg))

    def _help_cmd(self, arg: str, line: bytes) -> Event:
        return self._expect(P.OTHER, Help(arg))

    def _quit_cmd(self, arg: str, line: bytes) -> Event:
        if arg:
            return self._refuse(line, R_NO_ARGS)
        return self._expect(P.QUIT, _QUIT)

    def _starttls_cmd(self, arg: str, line: bytes) -> Event:
        if not self.config.starttls:
            return self._refuse(line, R_NOT_OFFERED)
        if self._tls:
            return self._refuse(line, R_TLS_ACTIVE)
        if arg:
            return self._refuse(line, R_NO_ARGS)
        return self._expect(P.STARTTLS, _START_TLS)

    def _auth_cmd(self, arg: str, line: bytes) -> Event:
        config = self.config
        redacted = line[:5] + arg.partition(" ")[0].encode("ascii", "replace")
        if not config.auth_mechanisms:
            return self._refuse(redacted, R_NOT_OFFERED)
        if self._hello is None or not self._hello.extended:
            return self._refuse(redacted, R_EHLO_FIRST)
        if self._authenticated:
            return self._refuse(redacted, R_AUTH_TWICE)
        if config.auth_require_tls and not self._tls:
            return self._refuse(redacted, R_AUTH_NEEDS_TLS)
        name, _, initial_text = arg.partition(" ")
        name = name.upper()
        mechanism = next((m for m in config.auth_mechanisms if m.name == name), None)
        if mechanism is None:
            return self._refuse(redacted, R_AUTH_MECHANISM)
        initial: bytes | None = None
        if initial_text:
            if initial_text == "=":  # RFC 4954 §4: an empty initial response
                initial = b""
            else:
                decoded = _decode_base64(initial_text)
                if decoded is None:
                    return self._refuse(redacted, R_AUTH_BASE64)
                initial = decoded
        self._mechanism = mechanism()
        return self._sasl_step(lambda m: m.start(initial), redacted)

    def _sasl_response(self, line: bytes) -> Event:
        if line == b"*":
            return self._refuse(line, R_AUTH_CANCELLED)
        decoded = _decode_base64(line.decode("latin-1"))
        if decoded is None:
            return self._refuse(b"<redacted>", R_AUTH_BASE64)
        return self._sasl_step(lambda m: m.step(decoded), b"<redacted>")

    def _sasl_step(
        self, step: Callable[[ServerMechanism], bytes | Credentials], redacted: bytes
    ) -> Event:
        mechanism = self._mechanism
        assert mechanism is not None
        try:
            result = step(mechanism)
        except SaslError:
            return self._refuse(redacted, R_AUTH_MALFORMED)
        if isinstance(result, Credentials):
            return self._expect(P.AUTH_CREDENTIALS, AuthCredentials(mechanism.name, result))
        challenge = binascii.b2a_base64(result, newline=False).decode("ascii")
        event = AuthChallenge(mechanism.name, result, Reply(334, challenge))
        return self._expect(P.AUTH_CHALLENGE, event)

    # --- message content --------------------------------------------------------------------

    def _read_data(self) -> Event | Sentinel:
        reader = self._reader
        assert reader is not None
        event = reader.read(self._buffer)
        if event is None:
            return self._closed() if self._eof else NEED_DATA
        if isinstance(event, EndOfData):
            self._reader = None
            self._reject = event.reject
            self._pending_count = self._recipients if self._hello and self._hello.lmtp else 1
            return self._expect(P.END_OF_DATA, event)
        return event

    def _read_bdat(self) -> Event | Sentinel:
        left = self._bdat_left
        assert left is not None
        buf = self._buffer
        if left:
            if not buf:
                return self._closed() if self._eof else NEED_DATA
            take = min(left, len(buf))
            self._bdat_left = left - take
            if self._bdat_refusal is not None or self._reject is not None:
                del buf[:take]
                return self._read_bdat()
            with memoryview(buf) as view:
                chunk = bytes(view[:take])
            del buf[:take]
            return DataChunk(chunk)
        return self._end_bdat_chunk()

    def _end_bdat_chunk(self) -> Event:
        self._bdat_left = None
        refusal = self._bdat_refusal
        self._bdat_refusal = None
        if refusal is not None:
            return self._refuse(self._bdat_line, refusal)
        last = self._bdat_last
        reject = self._reject
        size = self._message_size
        if last and self._hello and self._hello.lmtp:
            self._pending_count = self._recipients
        reply = reject or Reply(
            250,
            f"{size} octets received, message accepted" if last else f"{size} octets received",
            "2.0.0",
        )
        return self._expect(P.BDAT_LAST if last else P.BDAT, BdatChunk(size, last, reject, reply))

    def _read_proxy(self) -> Event | Sentinel:
        try:
            parsed = parse_proxy_header(self._buffer)
        except ProxyError as exc:
            self._machine.signal(Signal.CLOSED)
            raise RemoteProtocolError(f"malformed PROXY header: {exc}", None) from None
        if parsed is None:
            return self._closed() if self._eof else NEED_DATA
        header, consumed = parsed
        del self._buffer[:consumed]
        self._machine.signal(Signal.PROXY_HEADER)
        return header

    # --- replies in, bytes out --------------------------------------------------------------

    def send(self, reply: Reply) -> bytes:
        """Turn ``reply`` into bytes, after checking it answers what is pending; move the state.

        A 421 may be sent at any time (timeout, shutdown) and closes the session.
        """
        data = _format(reply, self.config.enhanced_status_codes)
        machine = self._machine
        pending = machine.pending
        if reply.code == 421:
            machine.signal(Signal.CLOSED)  # Rule 3
            return data
        if pending is None:
            if machine.state is S.CLOSED and reply.code >= 400:
                return data  # the reply_hint of a RemoteProtocolError, before closing
            raise LocalProtocolError(
                f"no command is waiting for a reply (state {machine.state.name})"
            )
        positive = is_positive(pending, reply.code)
        if (
            positive
            and self._reject is not None
            and pending in (P.END_OF_DATA, P.BDAT, P.BDAT_LAST)
        ):
            raise LocalProtocolError("this message was refused by the engine; send event.reject")
        if self._pending_count > 1:  # LMTP: more per-recipient replies to come
            self._pending_count -= 1
            return data
        self._pending_count = 0
        ended = machine.answer(positive)
        if positive:
            self._accepted(pending)
        if ended:  # Rule 6
            self._end_transaction()
        if self._mechanism is not None and machine.state is not S.AUTH:
            self._mechanism = None  # the SASL exchange is over (it may hold a user name)
        if pending is P.STARTTLS and positive:
            self.plaintext_discarded = len(self._buffer)
            self._buffer.clear()  # RFC 3207 §4.2 / CVE-2011-0411: nothing sent before TLS counts
            self._scanned = 0
            self._skipping = False
        return data

    def _accepted(self, pending: Pending) -> None:
        """Side effects of a positive reply, beyond the state itself (the most frequent
        first: a message has one MAIL and DATA, and up to max_recipients RCPTs)."""
        if pending is P.RCPT:
            self._recipients += 1
        elif pending is P.MAIL:
            self._mail = self._offered_mail
        elif pending is P.DATA:
            config = self.config
            self._reader = DotReader(
                config.max_message_size, config.max_text_line_length, config.bare_lf == "reject"
            )
        elif pending is P.HELLO:
            self._hello = self._offered_hello
        elif pending is P.AUTH_CREDENTIALS:
            self._authenticated = True
        elif pending is P.STARTTLS:
            self._tls = True
            self._hello = None
            self._authenticated = False

    def _end_transaction(self) -> None:
        self._mail = None
        self._recipients = 0
        self._message_size = 0
        self._reader = None
        self._reject = None


def _decode_base64(text: str) -> bytes | None:
    try:
        return binascii.a2b_base64(text.strip(), strict_mode=True)
    except (binascii.Error, ValueError):
        return None


_HELLOS = frozenset({"HELO", "EHLO", "LHLO"})
_Handler = Callable[[ServerConnection, str, bytes], "Event | Sentinel"]
_COMMANDS: dict[str, _Handler] = {
    "HELO": ServerConnection._hello_cmd,
    "EHLO": ServerConnection._hello_cmd,
    "LHLO": ServerConnection._hello_cmd,
    "MAIL": ServerConnection._mail_cmd,
    "RCPT": ServerConnection._rcpt_cmd,
    "DATA": ServerConnection._data_cmd,
    "BDAT": ServerConnection._bdat_cmd,
    "RSET": ServerConnection._rset_cmd,
    "NOOP": ServerConnection._noop_cmd,
    "VRFY": ServerConnection._vrfy_cmd,
    "EXPN": ServerConnection._expn_cmd,
    "HELP": ServerConnection._help_cmd,
    "QUIT": ServerConnection._quit_cmd,
    "STARTTLS": ServerConnection._starttls_cmd,
    "AUTH": ServerConnection._auth_cmd,
}
