"""Targets that act at RCPT time, and routes with several targets: ``reject`` and ``fan_out``.

Both are step handlers (smtp_core.StepHandler): the Session asks them about each recipient as
it arrives, so a refused recipient is refused at our RCPT, not after the data.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, cast

from smtp_core import (
    Envelope,
    Handler,
    RcptParams,
    Reject,
    Reply,
    StepHandler,
    StepStart,
    StepTransaction,
    combined_refusal,
)

from ._delivery import permanent, temporary
from ._spool import is_async_callable

__all__ = ["FanOut", "RejectTarget", "StepFanOut", "fan_out", "reject_target"]

log = logging.getLogger("smtpmux.delivery")

R_REJECTED = permanent("No such user here", "5.1.1").reply
R_TARGET_FAILED = temporary("Local error in processing, try again later", "4.3.0").reply
_ACCEPTED = Reply(250, "OK: message accepted", "2.0.0")

_REJECT = re.compile(
    r"(?P<code>[0-9]{3})(?:\s+(?P<enhanced>[0-9]+\.[0-9]{1,3}\.[0-9]{1,3}))?(?:\s+(?P<text>.*))?"
)
_SYNTAX = "write reject, or reject:CODE X.Y.Z text (e.g. reject:550 5.7.1 Not accepted here)"


def reject_target(text: str) -> RejectTarget:
    """``reject`` (550 5.1.1) or ``reject:CODE [X.Y.Z] [text]``: refuse every recipient routed
    here at RCPT time. Only 4xx (the sender retries) and 5xx codes; 421 would close the
    client's connection, so it is refused too; the enhanced code's class must be the code's."""
    if text == "reject":
        return RejectTarget(R_REJECTED)
    scheme, colon, rest = text.partition(":")
    if scheme != "reject" or not colon:
        raise ValueError(f"not a reject target: {text!r}; {_SYNTAX}")
    match = _REJECT.fullmatch(rest.strip())
    if match is None:
        raise ValueError(f"{text!r}: the reply must start with a 3-digit code; {_SYNTAX}")
    code = int(match["code"])
    if not (400 <= code < 600) or code == 421:
        raise ValueError(
            f"{text!r}: {code} is not a refusal; use a 4xx code (450, 451, 452: the sender "
            "retries) or a 5xx code (550, 553, 554: the sender gives up)"
        )
    enhanced = match["enhanced"]
    if enhanced is None:
        enhanced = f"{code // 100}.0.0"
    elif enhanced[0] != str(code // 100) or int(enhanced.split(".")[1]) > 7:
        raise ValueError(
            f"{text!r}: the enhanced code {enhanced} does not fit {code}; it starts with "
            f"{code // 100}. (RFC 3463: {code // 100}.SUBJECT.DETAIL, subject 0-7)"
        )
    reason = (match["text"] or "").strip() or "Refused"
    if not reason.isprintable() or not reason.isascii():
        raise ValueError(f"{text!r}: the text must be printable ASCII on one line")
    return RejectTarget(Reply(code, reason, enhanced))


class RejectTarget:
    """Refuses each recipient routed here with one reply, at RCPT time (``begin`` refuses, so
    the Session answers every such recipient without asking again)."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply

    def __repr__(self) -> str:
        if self.reply == R_REJECTED:
            return "reject"
        return f"reject:{self.reply.code} {self.reply.enhanced} {self.reply.text}"

    def begin(self, start: StepStart) -> StepTransaction:
        raise Reject(self.reply)

    def __call__(self, envelope: Envelope) -> None:
        """Used as a plain handler (a caller that does not know steps): refuse the message."""
        raise Reject(self.reply)


# --- fan-out ---------------------------------------------------------------------------------


def fan_out(handlers: Sequence[Handler]) -> Handler:
    """One route, several targets: the message is accepted only when every target accepted it.

    With a step handler among them the fan-out is a step handler too (each recipient must be
    accepted by every step target, at RCPT time); with plain handlers only, it is a plain one.
    See ``FanOut.deliver`` for what happens when the targets disagree after the data."""
    members = list(handlers)
    if not members:
        raise ValueError("a route needs at least one target")
    if len(members) == 1:
        return members[0]
    for member in members:
        if is_async_callable(getattr(member, "begin", None) or member):
            raise ValueError(
                f"{member!r} is async: targets of a route with several targets are called one "
                "after the other in a worker thread; make it a plain function, or give it a "
                "route of its own"
            )
    if any(getattr(h, "begin", None) is not None for h in members):
        return StepFanOut(members)
    return FanOut(members)


class FanOut:
    """Several plain targets behind one route (see ``deliver`` for the rule)."""

    def __init__(self, members: list[Handler]) -> None:
        self.members = members

    def __repr__(self) -> str:
        return "[" + ", ".join(repr(m) for m in self.members) + "]"

    def __call__(self, envelope: Envelope) -> None:
        replies = _deliver_all(envelope, [(m, None) for m in self.members])
        refusal = combined_refusal(replies)
        if refusal is not None:  # a plain handler has one answer for all its recipients
            raise Reject(refusal)


class StepFanOut(FanOut):
    """A fan-out with step targets: begun, asked and aborted along with the transaction."""

    def begin(self, start: StepStart) -> _FanOutTransaction:
        begun: list[tuple[Handler, Any]] = []
        try:
            for member in self.members:
                if getattr(member, "begin", None) is None:
                    begun.append((member, None))
                else:
                    begun.append((member, cast(StepHandler, member).begin(start)))
        except BaseException:
            _abort_all(begun)  # those begun before the one that refused
            raise
        return _FanOutTransaction(begun)


class _FanOutTransaction:
    def __init__(self, members: list[tuple[Handler, Any]]) -> None:
        self.members = members
        self.ended = False

    def recipient(self, address: str, params: RcptParams) -> Reply | None:
        """Accepted only if every step target accepts; the first refusal is the answer (the
        targets after it are not asked). A target that accepted a recipient refused by a later
        one is given only the recipients we accepted at ``deliver``."""
        for _, transaction in self.members:
            if transaction is None:
                continue
            answer = cast(StepTransaction, transaction).recipient(address, params)
            if not isinstance(answer, Reply | None):  # blocking targets only
                raise TypeError(f"{transaction!r}.recipient answered {answer!r}")
            if answer is not None and not (200 <= answer.code < 300):
                return answer
        return None

    def deliver(self, envelope: Envelope) -> list[Reply]:
        self.ended = True
        return _deliver_all(envelope, self.members)

    def abort(self) -> None:
        if not self.ended:
            self.ended = True
            _abort_all(self.members)


def _abort_all(members: list[tuple[Handler, Any]]) -> None:
    for member, transaction in members:
        if transaction is None:
            continue
        try:
            cast(StepTransaction, transaction).abort()
        except Exception:  # one target's trouble must not keep the others open
            log.exception("aborting %r failed", member)


def _deliver_all(envelope: Envelope, members: list[tuple[Handler, Any]]) -> list[Reply]:
    """The rule when targets disagree after the data (there is no queue to hold the message).

    Targets are delivered one after the other, in the order written. The first target that does
    not accept the message for every recipient ends the fan-out: the targets after it are not
    given the message (step targets are aborted), and no recipient is told 250, since not every
    target has it: each recipient gets that target's refusal for it, or, for a recipient it did
    accept, its first temporary refusal (else its first permanent one). A 4xx makes the
    sender retry: targets before the failing one then see the message again, with the same
    Message-ID (and a new transaction id), so they can drop the repeat; targets after it never
    saw the first attempt. Nothing is lost: every target either took the message or the
    sender holds it (4xx) or was told it failed (5xx)."""
    count = len(envelope.rcpt_tos)
    for index, (member, transaction) in enumerate(members):
        try:
            if transaction is None:
                outcome: object = member(envelope)
            else:
                outcome = cast(StepTransaction, transaction).deliver(envelope)
        except Reject as exc:
            outcome = exc.reply
        except Exception:
            log.exception("target %r failed", member)
            outcome = R_TARGET_FAILED
        replies = _per_recipient(outcome, count, member)
        refusal = combined_refusal(replies)
        if refusal is not None:
            _abort_all(members[index + 1 :])
            return [r if r.code >= 400 else refusal for r in replies]
    return [_ACCEPTED] * count


def _per_recipient(outcome: object, count: int, member: object) -> list[Reply]:
    if outcome is None:
        return [_ACCEPTED] * count
    if isinstance(outcome, Reply):
        return [outcome] * count
    if (
        isinstance(outcome, list)
        and len(outcome) == count
        and all(isinstance(r, Reply) for r in outcome)
    ):
        return outcome
    log.error("target %r answered %r for %d recipients", member, outcome, count)
    return [R_TARGET_FAILED] * count
