"""Router: the mux that picks a handler for each recipient address from ``local@domain`` patterns.

A pattern is ``bob@example.com``, ``*@example.com``, ``bob@*`` or ``*@*``. For ``local@domain``
the router tries (local, domain), (*, domain), (local, *), (*, *) and returns the first handler
found, or ``None``: the session then refuses the recipient at RCPT time (550 5.1.1).

Patterns and addresses go through the same canonicalisation, once per pattern at ``add()`` and
once per address at ``route()``, so a lookup is a handful of dict lookups:

- Domain: ``normalize_domain``: lower case and A-labels by IDNA 2008 with UTS 46 mapping, so
  ``Bücher.example`` and ``xn--bcher-kva.example`` are one domain, and ``straße.de`` is
  ``xn--strae-oqa.de``, not IDNA 2003's ``strasse.de``. One trailing dot is ignored. A pattern
  whose domain is not valid IDNA is refused; an address whose domain is not (the engine
  refuses those at MAIL and RCPT) is compared lower-cased as written. An address literal
  (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) is compared lower-cased as written.
- Local part: a quoted string is unquoted (quotes removed, quoted pairs resolved), so
  ``"bob"@x`` is ``bob@x``. Compared exactly, unless the router was built with
  ``subaddress_separator`` (cut at the first separator: ``bob+tag`` is ``bob``; a local part that
  starts with the separator, like ``+tag``, is kept whole), ``ignore_dots`` (every ``.`` removed,
  Gmail style) or ``fold_case`` (``str.casefold``), applied in that order.

``*`` is a wildcard only as the whole, unquoted local part or the whole domain; the quoted
pattern ``"*"@example.com`` names the mailbox ``*``. An address without a domain (the RFC 5321
``Postmaster`` recipient) is tried against (local, *) and (*, *) only; the null path ``""``
routes nowhere. A pattern whose local part canonicalises to nothing (``""@x``, or ``...@x``
with ``ignore_dots``) is refused. The module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

from ._address import normalize_domain

__all__ = ["Router", "default_router", "handle"]

H = TypeVar("H")
F = TypeVar("F")

#: The key of a pattern or an address: (local part, domain), canonical; ``None`` is ``*``.
_Key = tuple[str | None, str | None]

_WILDCARD = "*"
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
# RFC 5321 Quoted-string (with RFC 6531 UTF-8): printable qtext or a quoted pair, no controls.
_QUOTED_STRING = re.compile(r'"(?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*"')
# A Dot-string, loosely: no space, control or special character (dots are not checked).
_DOT_STRING = re.compile(r'[^\s\x00-\x1f\x7f"(),:;<>@\[\]\\]+')
_DOMAIN_LITERAL = re.compile(r"\[[^\s\x00-\x1f\x7f\[\]\\]+\]")
_DOMAIN_LABEL = re.compile(r'[^\s\x00-\x1f\x7f"(),:;<>@\[\]\\*]+')


def _canonical_domain(domain: str) -> str:
    """The form domains are compared in: lower case, A-labels, no trailing dot."""
    if domain.startswith("["):
        return domain.lower()
    try:
        return normalize_domain(domain)
    except ValueError:
        domain = domain.lower()
        return domain[:-1] if domain.endswith(".") else domain


def _unquote(local: str) -> str:
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        inner = local[1:-1]
        return _QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner
    return local


@attrs.define(eq=False)
class Router(Generic[H]):
    """Maps ``local@domain`` patterns to handlers; ``route()`` picks one for a recipient.

    ``H`` is whatever the caller dispatches to (a function, an object, a queue). Register all
    patterns before serving: routing only reads the table, registration is not synchronised.
    """

    fold_case: bool = attrs.field(default=False, kw_only=True)
    subaddress_separator: str | None = attrs.field(default=None, kw_only=True)
    ignore_dots: bool = attrs.field(default=False, kw_only=True)
    _handlers: dict[_Key, H] = attrs.field(init=False, factory=dict, repr=False)
    _patterns: dict[_Key, str] = attrs.field(init=False, factory=dict, repr=False)

    @subaddress_separator.validator
    def _check_separator(self, _attribute: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None and (not value or "@" in value or '"' in value):
            raise ValueError(f'subaddress_separator must be text without @ or ", not {value!r}')

    def add(self, pattern: str, handler: H) -> None:
        """Register ``handler`` for ``pattern``.

        Raises ``ValueError`` if the pattern is malformed, or if an equal pattern (after
        canonicalisation: ``Bob@EXAMPLE.com`` equals ``Bob@example.com``) is registered already.
        """
        key = self._pattern_key(pattern)
        if key in self._handlers:
            raise ValueError(
                f"pattern {pattern!r} duplicates the registered pattern {self._patterns[key]!r}"
            )
        self._handlers[key] = handler
        self._patterns[key] = pattern

    def handler(self, pattern: str) -> Callable[[H], H]:
        """Decorator form of ``add()``: registers the decorated object and returns it unchanged."""

        def register(handler: H) -> H:
            self.add(pattern, handler)
            return handler

        return register

    def route(self, address: str) -> H | None:
        """The handler for a recipient address as the engine parsed it, or ``None``.

        ``address`` is ``local@domain`` without angle brackets; the local part may be quoted
        and the domain a U-label, an A-label or an address literal. Never raises for odd
        input: what cannot be canonicalised is compared as written.
        """
        if not address:
            return None
        local, at, domain = address.rpartition("@")
        if not at or address.endswith('"'):
            # "Postmaster", or a quoted local part that holds an "@" and no domain follows.
            local, domain = address, ""
        canonical_local = self._canonical_local(local)
        handlers = self._handlers
        if domain:
            canonical_domain = _canonical_domain(domain)
            found = handlers.get((canonical_local, canonical_domain))
            if found is not None:
                return found
            found = handlers.get((None, canonical_domain))
            if found is not None:
                return found
        found = handlers.get((canonical_local, None))
        if found is not None:
            return found
        return handlers.get((None, None))

    def patterns(self) -> tuple[str, ...]:
        """The registered patterns as written, in registration order."""
        return tuple(self._patterns.values())

    def items(self) -> tuple[tuple[str, H], ...]:
        """The registered ``(pattern, handler)`` pairs, in registration order (an adapter
        checks the handlers it can call before it serves)."""
        return tuple((self._patterns[key], handler) for key, handler in self._handlers.items())

    def __len__(self) -> int:
        return len(self._handlers)

    def __contains__(self, pattern: object) -> bool:
        """Whether ``pattern`` (or one equal to it after canonicalisation) is registered."""
        if not isinstance(pattern, str):
            return False
        try:
            return self._pattern_key(pattern) in self._handlers
        except ValueError:
            return False

    def _canonical_local(self, local: str) -> str:
        local = _unquote(local)
        separator = self.subaddress_separator
        if separator is not None:
            cut = local.find(separator)
            if cut > 0:
                local = local[:cut]
        if self.ignore_dots:
            local = local.replace(".", "")
        if self.fold_case:
            local = local.casefold()
        return local

    def _pattern_key(self, pattern: str) -> _Key:
        local, at, domain = pattern.rpartition("@")
        if not at or pattern.endswith('"'):
            raise ValueError(
                f"pattern {pattern!r} has no domain: write local@domain, *@domain or local@*"
            )
        return self._pattern_local(pattern, local), _pattern_domain(pattern, domain)

    def _pattern_local(self, pattern: str, local: str) -> str | None:
        if local == _WILDCARD:
            return None
        if not local:
            raise ValueError(f"pattern {pattern!r} has an empty local part (use * for any)")
        if local.startswith('"'):
            if not _QUOTED_STRING.fullmatch(local):
                raise ValueError(f"pattern {pattern!r} has a malformed quoted local part")
        elif _WILDCARD in local:
            raise ValueError(
                f"pattern {pattern!r}: * is only valid as the whole local part "
                f'(quote it, "{local}", for a literal *)'
            )
        elif not _DOT_STRING.fullmatch(local):
            raise ValueError(f"pattern {pattern!r} has a local part that needs quoting")
        canonical = self._canonical_local(local)
        if not canonical:
            raise ValueError(f"pattern {pattern!r} has a local part that canonicalises to nothing")
        return canonical


def _pattern_domain(pattern: str, domain: str) -> str | None:
    if domain == _WILDCARD:
        return None
    if domain.startswith("["):
        if not _DOMAIN_LITERAL.fullmatch(domain):
            raise ValueError(f"pattern {pattern!r} has a malformed address literal")
        return _canonical_domain(domain)
    if _WILDCARD in domain:
        raise ValueError(f"pattern {pattern!r}: * is only valid as the whole domain")
    labels = (domain[:-1] if domain.endswith(".") else domain).split(".")
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"pattern {pattern!r} has a malformed domain")
    try:
        return normalize_domain(domain)
    except ValueError:
        raise ValueError(
            f"pattern {pattern!r} has a domain that is not valid IDNA 2008 (RFC 5891)"
        ) from None


#: The router ``handle()`` registers on, for a one-file server (like net/http's DefaultServeMux).
default_router: Router[Any] = Router()


def handle(pattern: str) -> Callable[[F], F]:
    """Decorator: register the decorated object on ``default_router`` and return it unchanged.

    ::

        @smtp_core.handle("*@example.com")
        def deliver(envelope): ...
    """

    def register(handler: F) -> F:
        default_router.add(pattern, handler)
        return handler

    return register
