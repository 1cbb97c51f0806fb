"""ServerConfig: every knob of the server engine in one frozen value, shared by all connections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

if TYPE_CHECKING:
    from ._sasl import ServerMechanism

__all__ = ["ServerConfig"]


def _positive_or_none(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive or None, not {value}")


@attrs.frozen
class ServerConfig:
    """What the server offers and enforces. EHLO's capability list is built from it.

    Limits are in octets; ``None`` switches a limit off. Timeouts are in seconds (RFC 5321
    §4.5.3.2); the engine only reports them, the adapter enforces them.
    """

    hostname: str = "localhost"
    lmtp: bool = False  #: speak LMTP (RFC 2033): LHLO, and one reply per recipient after data
    max_message_size: int | None = attrs.field(
        default=32 * 1024 * 1024, validator=_positive_or_none
    )
    max_command_line_length: int = 512  #: RFC 5321 §4.5.3.1.4, plus room for extension params
    max_text_line_length: int | None = attrs.field(default=1000, validator=_positive_or_none)
    bare_lf: Literal["normalize", "reject"] = attrs.field(
        default="normalize", validator=attrs.validators.in_(("normalize", "reject"))
    )
    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    enhanced_status_codes: bool = True
    chunking: bool = True
    binarymime: bool = True
    dsn: bool = True
    starttls: bool = False  #: offer STARTTLS (the adapter sets it when it holds a TLS context)
    requiretls: bool = True  #: RFC 8689, offered only inside TLS
    #: None: PLAIN and LOGIN when the Session's policy overrides ``authenticate`` (the engine
    #: alone, without a policy, offers none); a tuple is kept as it is, and empty turns AUTH off
    auth_mechanisms: tuple[type[ServerMechanism], ...] | None = None
    auth_require_tls: bool = True  #: AUTH only inside TLS (RFC 4954 §4, RFC 8314)
    extra_mail_params: frozenset[str] = frozenset()  #: MAIL params accepted into MailParams.extra
    extra_rcpt_params: frozenset[str] = frozenset()
    command_timeout: float = 300.0  #: waiting for a command (RFC 5321 §4.5.3.2.7)
    #: waiting for the first EHLO/HELO/LHLO after the greeting (or after STARTTLS): a client
    #: that means to send mail says hello at once, an idle one should not hold a slot for long
    first_command_timeout: float = 60.0
    tls_handshake_timeout: float = 30.0  #: a TLS handshake (implicit TLS or STARTTLS)
    data_timeout: float = 180.0  #: waiting for the next block of DATA or BDAT content
    proxy_timeout: float = 10.0  #: waiting for a PROXY header
