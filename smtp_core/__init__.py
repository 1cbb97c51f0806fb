"""smtp_core: a sans-IO SMTP engine (server and client roles) and the shared routing layer.

Pure Python on the standard library, attrs and idna: no sockets, TLS, event loops, threads or
clocks. The top level is what an application uses: the engines and their events, the Router,
Policy, Envelope, the configuration, the client session and its errors, transcripts. What only an
adapter author needs (the Session's Actions, the client's steps, admission tickets) is in
``smtp_core.adapter``.
"""

import sys as _sys
import warnings as _warnings
from typing import Any as _Any

from . import adapter
from ._address import AddressError, normalize_domain, parse_path, split_address
from ._admission import (
    Admission,
    ConnectionLimits,
    ConnectionRate,
)
from ._client import (
    ClientConnection,
    ClientEvent,
    ClientState,
    Command,
    Extensions,
    MessageData,
    Response,
)
from ._client_session import (
    TLS_MODES,
    AuthenticationFailed,
    ClientAuth,
    ClientSession,
    MessageRefused,
    RecipientResult,
    RecipientsRefused,
    SenderRefused,
    SendResult,
    SMTPConnectionError,
    SMTPError,
    SMTPNotSupported,
    SMTPRefused,
    SMTPTimeout,
    TLSMode,
    format_reply,
)
from ._config import ServerConfig
from ._envelope import Envelope, SessionInfo, TLSInfo
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
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
    ProxyHeader,
    Quit,
    RcptParams,
    RcptTo,
    Reply,
    Reset,
    Sentinel,
    StartData,
    StartTLS,
    Verify,
)
from ._lockout import AuthLockout
from ._logtext import format_host_port
from ._message import OutgoingMessage, prepare_message
from ._metrics import Metrics
from ._params import ParamError, xtext_decode, xtext_encode
from ._proxy import ProxyError, encode_proxy_header, parse_proxy_header
from ._router import Router, default_router, handle
from ._sasl import (
    ClientMechanism,
    LoginClient,
    LoginMechanism,
    PlainClient,
    PlainMechanism,
    SaslError,
    ServerMechanism,
    XOAuth2Client,
)
from ._server import ServerConnection
from ._session import (
    Handler,
    Policy,
    Reject,
    Session,
    StepHandler,
    StepStart,
    StepTransaction,
    combined_refusal,
)
from ._state import ServerState
from ._transcript import TranscriptError, TranscriptResult, run_transcript

__all__ = (
    "NEED_DATA",
    "PAUSED",
    "TLS_MODES",
    "AddressError",
    "Admission",
    "AuthChallenge",
    "AuthCredentials",
    "AuthLockout",
    "AuthenticationFailed",
    "BdatChunk",
    "ClientAuth",
    "ClientConnection",
    "ClientEvent",
    "ClientMechanism",
    "ClientSession",
    "ClientState",
    "Command",
    "ConnectionClosed",
    "ConnectionLimits",
    "ConnectionRate",
    "Credentials",
    "DataChunk",
    "EndOfData",
    "Envelope",
    "Event",
    "Expand",
    "Extensions",
    "Handler",
    "Hello",
    "Help",
    "InvalidCommand",
    "LocalProtocolError",
    "LoginClient",
    "LoginMechanism",
    "MailFrom",
    "MailParams",
    "MessageData",
    "MessageRefused",
    "Metrics",
    "Noop",
    "OutgoingMessage",
    "ParamError",
    "PlainClient",
    "PlainMechanism",
    "Policy",
    "ProtocolError",
    "ProxyError",
    "ProxyHeader",
    "Quit",
    "RcptParams",
    "RcptTo",
    "RecipientResult",
    "RecipientsRefused",
    "Reject",
    "RemoteProtocolError",
    "Reply",
    "Reset",
    "Response",
    "Router",
    "SMTPConnectionError",
    "SMTPError",
    "SMTPNotSupported",
    "SMTPRefused",
    "SMTPTimeout",
    "SaslError",
    "SendResult",
    "SenderRefused",
    "Sentinel",
    "ServerConfig",
    "ServerConnection",
    "ServerMechanism",
    "ServerState",
    "Session",
    "SessionInfo",
    "StartData",
    "StartTLS",
    "StepHandler",
    "StepStart",
    "StepTransaction",
    "TLSInfo",
    "TLSMode",
    "TranscriptError",
    "TranscriptResult",
    "Verify",
    "XOAuth2Client",
    "combined_refusal",
    "default_router",
    "encode_proxy_header",
    "format_host_port",
    "format_reply",
    "handle",
    "normalize_domain",
    "parse_path",
    "parse_proxy_header",
    "prepare_message",
    "run_transcript",
    "split_address",
    "xtext_decode",
    "xtext_encode",
)

for _name in __all__:  # tracebacks and reprs say smtp_core.X, not the private module it lives in
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith(__name__ + "._"):
        _value.__module__ = __name__
del _name, _value


#: moved to smtp_core.adapter: importable from here for one more release
_MOVED = frozenset(adapter.__all__) - {"check_reply", "script_steps"}  # never here


def __getattr__(name: str) -> _Any:
    """The names that moved to smtp_core.adapter still import from here, with a warning
    (docs/architecture.md, "Moved names"); they go in a later release."""
    if name in _MOVED:
        if _sys._getframe(1).f_code.co_filename.startswith("<frozen importlib"):
            return getattr(adapter, name)  # `from smtp_core import X` asks twice: warn once
        _warnings.warn(
            f"smtp_core.{name} moved to smtp_core.adapter.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
