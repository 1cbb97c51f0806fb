"""Delivery targets: one string names a handler (``maildir:DIR``, ``lmtp://…``, ``discard``).

This module is THE table of targets. ``target(text)`` builds the handler one string names,
``targets(texts)`` builds the handler of a route (a fan-out when it names several). The same
strings are used by ``smtpmux serve --route PATTERN=TARGET``, the ``[[route]]`` tables of a
``--config`` file and by Python code; docs/routes.md has the table with the failure rules.

A scheme maps to a factory ``(text) -> Handler``. The factories of targets with a module of their
own (webhooks, pipes, forwarding, reject, fan-out) are named by ``"module:function"`` strings and
imported only when a target of that scheme is built, so the table is importable and checkable
without them. Every factory raises ``ValueError`` with one line that says what is wrong and what
to write instead, and every handler built here has a ``__repr__`` that is its canonical target
string (with no secret in it), so ``smtpmux check-config`` can print the resolved table.

A handler of the user's own refuses with ``temporary`` or ``permanent`` and finds the message's
``message_id`` here: the same functions every target uses (they live in ``_delivery``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from smtp_core import Envelope, Handler

from ._delivery import message_id, permanent, temporary
from ._spool import is_async_callable
from .handlers import Discard, EmlDirectory, Maildir

__all__ = ["SCHEMES", "Scheme", "message_id", "permanent", "target", "targets", "temporary"]

#: The fan-out of a route with several targets: ``fan_out(handlers) -> Handler``.
FAN_OUT = "smtp_sync._step:fan_out"


@attrs.frozen
class Scheme:
    """One row of the table: how a target string starts, and what builds its handler."""

    prefix: str  #: ``maildir:``, ``http://``; a bare word (``discard``) matches itself too
    syntax: str  #: how to write it, for messages and docs
    factory: str | Callable[[str], Handler]  #: a function, or a lazy ``"module:function"``


def _load(reference: str, what: str) -> Any:
    """Import ``module:attribute``; a missing module or attribute is a ValueError that says so."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            raise ValueError(
                f"{what}: module {module_name} is not installed (is it on the Python path?)"
            ) from None
        raise ValueError(
            f"{what}: module {module_name} needs the package {missing}: pip install {missing}"
        ) from None
    except Exception as exc:  # the module's own code failed while importing
        raise ValueError(
            f"{what}: importing {module_name} failed: {type(exc).__name__}: {exc}"
        ) from None
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ValueError(f"{what}: module {module_name} has no {attribute}") from None
    return found


def _lazy(reference: str, scheme: str) -> Callable[[str], Handler]:
    module = reference.partition(":")[0]
    if importlib.util.find_spec(module) is None:
        raise ValueError(
            f"the {scheme} target is not available: module {module} is not installed "
            "(it comes with a newer smtpmux)"
        )
    factory = _load(reference, f"the {scheme} target")
    if not callable(factory):
        raise ValueError(f"the {scheme} target: {reference} is not a function")
    return factory  # type: ignore[no-any-return]


class _MaildirTarget(Maildir):
    def __init__(self, directory: str) -> None:
        super().__init__(os.path.expanduser(directory))  # maildir:~/Maildir
        self.directory = directory  #: as written in the target

    def __repr__(self) -> str:
        return f"maildir:{self.directory}"


class _EmlTarget(EmlDirectory):
    def __init__(self, directory: str) -> None:
        super().__init__(os.path.expanduser(directory))
        self.directory = directory

    def __repr__(self) -> str:
        return f"eml:{self.directory}"


def _in_directory(text: str, prefix: str, kind: type[_MaildirTarget | _EmlTarget]) -> Handler:
    directory = text[len(prefix) :].strip()
    if not directory:
        raise ValueError(
            f"target {text!r} names no directory: write {prefix}DIR, e.g. {prefix}./mail"
        )
    try:
        return kind(directory)
    except OSError as exc:
        raise ValueError(
            f"target {text!r}: cannot use the directory {directory}: {exc.strerror or exc}"
        ) from None


def _maildir_target(text: str) -> Handler:
    """``maildir:DIR``: a Maildir, created if missing (relative to the working directory)."""
    return _in_directory(text, "maildir:", _MaildirTarget)


def _eml_target(text: str) -> Handler:
    """``eml:DIR``: one ``<id>.eml`` file per message in DIR, created if missing."""
    return _in_directory(text, "eml:", _EmlTarget)


class _DiscardTarget(Discard):
    def __repr__(self) -> str:
        return "discard"


def _discard_target(text: str) -> Handler:
    """``discard``: accept and forget."""
    if text.strip() != "discard":
        raise ValueError(f"target {text!r}: discard takes nothing after it: write discard")
    return _DiscardTarget()


class _Python:
    """A handler of the user's own, named ``python:module:callable``: called as it is, with
    every other attribute (a step handler's ``begin``) passed through."""

    def __init__(self, name: str, handler: Callable[[Envelope], Any]) -> None:
        self._name, self._handler = name, handler

    def __call__(self, envelope: Envelope) -> Any:
        return self._handler(envelope)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):  # ours (not set yet while copying), or private
            raise AttributeError(attribute)
        return getattr(self._handler, attribute)

    def __repr__(self) -> str:
        return self._name


class _AsyncPython(_Python):
    """The same for an ``async def`` handler, so that an adapter still sees a coroutine."""

    async def __call__(self, envelope: Envelope) -> Any:
        return await self._handler(envelope)


def _python_target(text: str) -> Handler:
    """``python:module:callable``: a handler of the user's own, imported now, at start.

    The module is found on the Python path, or in the working directory (as ``python -m``
    would). ``callable`` may be dotted (``python:mail.handlers:Inbox.deliver``).
    """
    reference = text[len("python:") :].strip()
    module, colon, attribute = reference.partition(":")
    if not module or not colon or not attribute:
        raise ValueError(
            f"target {text!r}: write python:MODULE:CALLABLE, e.g. python:myhandlers:deliver"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    handler = _load(reference, f"target {text!r}")
    if not callable(handler):
        raise ValueError(
            f"target {text!r}: {attribute} is a {type(handler).__name__}, not a callable "
            "that takes an Envelope"
        )
    name = f"python:{module}:{attribute}"
    return (_AsyncPython if is_async_callable(handler) else _Python)(name, handler)


#: Every scheme, in the order the docs list them. Longer prefixes are tried first.
SCHEMES: tuple[Scheme, ...] = (
    Scheme("maildir:", "maildir:DIR", _maildir_target),
    Scheme("eml:", "eml:DIR", _eml_target),
    Scheme("discard", "discard", _discard_target),
    Scheme("reject", "reject[:CODE X.Y.Z TEXT]", "smtp_sync._step:reject_target"),
    Scheme("http://", "http://HOST/PATH", "smtp_sync._webhook:webhook_target"),
    Scheme("https://", "https://HOST/PATH", "smtp_sync._webhook:webhook_target"),
    Scheme("pipe:", "pipe:COMMAND ARGS", "smtp_sync._pipe:pipe_target"),
    Scheme("smtp://", "smtp://HOST:PORT", "smtp_sync._forward:forward_target"),
    Scheme("smtps://", "smtps://HOST:PORT", "smtp_sync._forward:forward_target"),
    Scheme("lmtp://", "lmtp://HOST:PORT", "smtp_sync._forward:forward_target"),
    Scheme("lmtp+unix://", "lmtp+unix:///PATH", "smtp_sync._forward:forward_target"),
    Scheme("python:", "python:MODULE:CALLABLE", _python_target),
)


def _scheme(text: str) -> Scheme:
    folded = text.lower()
    for scheme in sorted(SCHEMES, key=lambda scheme: -len(scheme.prefix)):
        prefix = scheme.prefix
        if prefix.endswith((":", "/")):
            if folded.startswith(prefix):
                return scheme
        elif folded == prefix or folded.startswith(prefix + ":"):
            return scheme
    syntaxes = ", ".join(scheme.syntax for scheme in SCHEMES)
    raise ValueError(f"unknown target {text!r}: write one of {syntaxes}")


def target(text: str) -> Handler:
    """The handler that the target string ``text`` names; ``ValueError`` if it names none."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty target {text!r}: write a target such as maildir:./mail")
    text = text.strip()
    scheme = _scheme(text)
    prefix = scheme.prefix
    text = prefix + text[len(prefix) :]  # the scheme in lower case: MAILDIR:x is maildir:x
    factory = scheme.factory
    if isinstance(factory, str):
        factory = _lazy(factory, prefix.rstrip(":/"))
    return factory(text)


def targets(texts: Sequence[str]) -> Handler:
    """The handler of one route: its target, or a fan-out to all of them, in order."""
    if isinstance(texts, str):
        return target(texts)
    if not texts:
        raise ValueError("a route names no target: give at least one, e.g. maildir:./mail")
    handlers = [target(text) for text in texts]
    if len(handlers) == 1:
        return handlers[0]
    fan_out = _lazy(FAN_OUT, "fan-out (several targets)")
    return fan_out(handlers)  # type: ignore[arg-type]
