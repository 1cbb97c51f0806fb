"""smtp_core.adapter: what only an adapter author needs, the I/O side of the sans-IO contract.

An application configures a server and reads envelopes with the names at ``smtp_core``'s top
level; an adapter (smtp_anyio, smtp_sync, or your own) drives the conversations and carries out
what they ask for. That vocabulary lives here, so the top level stays the application's:

- a server ``Session`` hands out Actions: ``Send`` bytes, ``Close``, ``Spool`` message data,
  ``UpgradeToTLS``, and ``Call`` a function (the hooks ``Connect``, ``Authenticate``,
  ``CheckRecipient``; the handlers ``Deliver`` and the step handlers' ``BeginStep``,
  ``StepRecipient``, ``AbortStep``), then takes the outcome back with ``session.resolve``;
- a ``ClientSession`` yields client steps (``Steps``): ``Write`` bytes, ``Read`` a reply,
  ``WrapTLS``; ``ClientBase`` is what the anyio and the blocking client share;
- ``Admission`` (configured at the top level) answers each new connection with ``Admitted``
  (and a ``Ticket`` to hand back when it ends) or ``TurnedAway``;
- the lifecycle: a listener's ``SessionFactory`` builds each Session, ``run_inline`` carries
  out the Actions that need no await, a wait that ended without bytes is a ``WaitEnd``;
- helpers: ``describe_tls_failure`` for the log, ``address_literal`` for a client's EHLO name,
  ``script_steps``/``check_reply``/``TranscriptReplies`` to play a transcript against a live
  server.

Server Actions and client steps never meet: a server loop matches ``Send``/``Close``/...,
a client driver ``Write``/``Read``/``WrapTLS``. The old top-level names
(``from smtp_core import Send``) still work, with a DeprecationWarning naming this module.
"""

from ._admission import Admitted, Ticket, TurnedAway
from ._client_session import (
    ClientBase,
    ClientStep,
    Read,
    Steps,
    WrapTLS,
    Write,
    address_literal,
)
from ._lifecycle import SessionFactory, run_inline
from ._logtext import describe_tls_failure
from ._session import (
    AbortStep,
    Action,
    Authenticate,
    BeginStep,
    Call,
    CheckRecipient,
    Close,
    Connect,
    Deliver,
    HandlerCall,
    Send,
    Spool,
    StepCall,
    StepRecipient,
    UpgradeToTLS,
    WaitEnd,
)
from ._transcript import TranscriptReplies, check_reply, script_steps

__all__ = (
    "AbortStep",
    "Action",
    "Admitted",
    "Authenticate",
    "BeginStep",
    "Call",
    "CheckRecipient",
    "ClientBase",
    "ClientStep",
    "Close",
    "Connect",
    "Deliver",
    "HandlerCall",
    "Read",
    "Send",
    "SessionFactory",
    "Spool",
    "StepCall",
    "StepRecipient",
    "Steps",
    "Ticket",
    "TranscriptReplies",
    "TurnedAway",
    "UpgradeToTLS",
    "WaitEnd",
    "WrapTLS",
    "Write",
    "address_literal",
    "check_reply",
    "describe_tls_failure",
    "run_inline",
    "script_steps",
)

for _name in __all__:  # reprs and tracebacks say smtp_core.adapter.X, where it is imported from
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith("smtp_core._"):
        _value.__module__ = __name__
del _name, _value
