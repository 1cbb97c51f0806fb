"""RFC 5321 §4.1.2 paths: ``<local@domain>``, ``<>``, quoted local parts, address literals.

One regular expression per grammar, built once; the common ``<user@example.com>`` is matched by
a single ``re.match`` and nothing else runs for it. RFC 6531 (SMTPUTF8) widens atext, qtext and
domain labels to any non-ASCII character, which is what ``utf8=True`` selects.

A domain is also checked against IDNA 2008 (RFC 5891) with UTS 46 mapping: ``normalize_domain``
is the one place that says which domain a name denotes, for the parser, the Router and the
relay check alike.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import idna

from ._events import Reply

__all__ = ["AddressError", "normalize_domain", "parse_path", "split_address"]

MAX_LOCAL_PART = 64  #: octets, RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  #: octets, §4.5.3.1.2
MAX_PATH = 256  #: octets including the angle brackets, §4.5.3.1.3


class AddressError(Exception):
    """A path that breaks the grammar or a limit; ``reply`` is the RFC's answer."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def _grammar(utf8: bool) -> re.Pattern[str]:
    wide = "\u0080-\U0010ffff" if utf8 else ""
    atom = f"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{wide}-]+"
    quoted = f'"(?:[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e{wide}]|\\\\[\\x20-\\x7e])*"'
    label = f"[A-Za-z0-9{wide}](?:[A-Za-z0-9{wide}-]*[A-Za-z0-9{wide}])?"
    domain = f"{label}(?:\\.{label})*"
    literal = r"\[[\x21-\x5a\x5e-\x7e]+\]"
    route = f"@{domain}(?:,@{domain})*:"
    return re.compile(
        f" *<(?:{route})?(?P<local>{atom}(?:\\.{atom})*|{quoted})"
        f"@(?P<domain>{domain}|{literal})>(?P<rest>.*)",
        re.DOTALL,
    )


_ASCII = _grammar(False)
# The common case, ``<local@domain>`` with a dot-atom local part and a plain domain, optionally
# followed by parameters: a strict subset of the grammar above, matched without its
# alternatives; whatever it does not match takes the full path.
_ATOM = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_SIMPLE = re.compile(f"<{_ATOM}(?:\\.{_ATOM})*@{_LABEL}(?:\\.{_LABEL})*>")
_UTF8 = _grammar(True)
_NULL = re.compile(r" *<>(?P<rest>.*)", re.DOTALL)
_POSTMASTER = re.compile(r" *<(?P<local>postmaster)>(?P<rest>.*)", re.DOTALL | re.IGNORECASE)
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")


@functools.lru_cache(maxsize=4096)
def _a_labels(domain: str) -> str | None:
    """``domain`` in A-labels by IDNA 2008 with UTS 46 mapping, or None if it is not valid.

    Cached, invalid names too: a client that repeats one name pays for the conversion once,
    and the bound keeps a client that sends many from growing the cache.
    """
    try:
        # Non-transitional UTS 46 (``ß`` stays ``ß``, as IDNA 2008 and today's browsers);
        # std3_rules keeps the result to letters, digits and hyphens.
        encoded = idna.encode(domain, uts46=True, std3_rules=True, transitional=False)
    except UnicodeError:  # idna.IDNAError and the punycode codec's errors
        return None
    text = encoded.decode("ascii")
    return text[:-1] if text.endswith(".") else text


@functools.lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """The canonical form of ``domain``: lower case, A-labels, without the root's trailing dot.

    ``Bücher.Example`` and ``xn--bcher-KVA.example`` are both ``xn--bcher-kva.example``;
    ``straße.de`` is ``xn--strae-oqa.de`` (IDNA 2008, not IDNA 2003's ``strasse.de``). An
    address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) comes back unchanged. Raises
    ``ValueError`` for a name that is not valid IDNA 2008: an A-label that does not decode
    (``xn--zz``), a disallowed code point, a bidi or joiner rule broken, an empty label.

    The common case, ASCII without an ``xn--`` label, is only lower-cased: it holds no
    U-label and no A-label to check, so nothing else runs for it. Cached (a pure function; a
    refused name raises again, uncached): each RCPT asks twice, for its route and for the
    relay check, and a server sees the same few domains over and over.
    """
    if domain.startswith("["):
        return domain
    if domain.isascii():
        lowered = domain.lower()
        if not lowered.startswith("xn--") and ".xn--" not in lowered:
            if lowered.endswith("."):
                lowered = lowered[:-1]
            if not lowered:
                raise ValueError("an empty domain")
            return lowered
    canonical = _a_labels(domain)
    if canonical is None:
        raise ValueError(f"{domain!r} is not a valid internationalised domain name (IDNA 2008)")
    return canonical


def _error(sender: bool, text: str) -> AddressError:
    if sender:
        return AddressError(Reply(501, text, "5.1.7"))
    return AddressError(Reply(501, text, "5.1.3"))


def _valid_literal(literal: str) -> bool:
    body = literal[1:-1]
    if body[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(body[5:])
        except ValueError:
            return False
        return True
    if body[:1].isdigit():
        try:
            ipaddress.IPv4Address(body)
        except ValueError:
            return False
        return True
    return _GENERAL_LITERAL.fullmatch(body) is not None  # RFC 5321 General-address-literal


def parse_path(text: str, *, sender: bool, utf8: bool) -> tuple[str, str]:
    """Split ``text`` (what follows ``FROM:`` or ``TO:``) into the address and its parameters.

    The address comes back without brackets and without any source route (RFC 5321 §4.1.1.3
    says to ignore it); a quoted local part is kept as written. ``<>`` is only a sender;
    ``<Postmaster>`` only a recipient. Non-ASCII is allowed only when ``utf8`` is true. A
    domain that is not valid IDNA 2008 (see ``normalize_domain``) gets 553 5.1.3.
    """
    simple = _SIMPLE.match(text)
    if simple is not None:
        end = simple.end()
        rest = text[end:]
        at = text.find("@")
        # A domain with "--" may hold an A-label (``xn--``) to check: the full path does that.
        if (
            end <= MAX_PATH
            and at <= MAX_LOCAL_PART + 1
            and rest[:1] in ("", " ")
            and text.find("--", at, end) < 0
        ):
            return text[1 : end - 1], rest.strip(" ")
    match = (_UTF8 if utf8 else _ASCII).match(text)
    if match is None:
        null = _NULL.match(text) if sender else _POSTMASTER.match(text)
        if null is not None:
            rest = null.group("rest")
            if rest and rest[0] != " ":
                raise _error(sender, "Syntax error in parameters after the address")
            return ("" if sender else null.group("local")), rest.strip(" ")
        if not utf8 and not text.isascii() and _UTF8.match(text) is not None:
            raise AddressError(Reply(553, "Non-ASCII address needs SMTPUTF8", "5.6.7"))
        what = "sender" if sender else "recipient"
        raise _error(sender, f"Syntax error in {what} address")
    local, domain, rest = match.group("local", "domain", "rest")
    if rest and rest[0] != " ":
        raise _error(sender, "Syntax error in parameters after the address")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise _error(sender, "Local part too long")
    if len(domain.encode()) > MAX_DOMAIN:
        raise _error(sender, "Domain too long")
    if len(text[: match.start("rest")].lstrip(" ").encode()) > MAX_PATH:
        raise _error(sender, "Path too long")
    if domain[0] == "[":
        if not _valid_literal(domain):
            raise _error(sender, "Invalid address literal")
    else:
        try:
            normalize_domain(domain)
        except ValueError:
            # RFC 5891 §5.4: a name that is not valid IDNA 2008 is refused, not looked up.
            raise AddressError(
                Reply(553, "Domain is not a valid internationalised domain name", "5.1.3")
            ) from None
    return f"{local}@{domain}", rest.strip(" ")


def split_address(address: str) -> tuple[str, str]:
    """``"bob@example.com"`` -> ``("bob", "example.com")``; the split is at the last ``@``.

    A quoted local part may itself hold ``@``; the domain never does. An address without ``@``
    (``Postmaster``) has an empty domain.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain
