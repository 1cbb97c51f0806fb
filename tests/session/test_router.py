"""The Router: precedence, IDN and case rules, canonicalisation options, quoting, bad patterns."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from smtp_core import _router
from smtp_core._router import Router, default_router, handle

EXACT, DOMAIN, LOCAL, ANY = "bob@example.com", "*@example.com", "bob@*", "*@*"
LEVELS = (EXACT, DOMAIN, LOCAL, ANY)  # the lookup order


def make(*patterns: str, **options: Any) -> Router[str]:
    """A router whose handler for each pattern is the pattern itself."""
    router: Router[str] = Router(**options)
    for pattern in patterns:
        router.add(pattern, pattern)
    return router


# Every subset of the four levels, routing bob@example.com: the most specific present wins.
SUBSETS = [
    pytest.param(
        subset,
        subset[0] if subset else None,
        id="+".join(("exact", "domain", "local", "any")[LEVELS.index(p)] for p in subset) or "none",
    )
    for size in range(5)
    for subset in itertools.combinations(LEVELS, size)
]


@pytest.mark.parametrize(("patterns", "expected"), SUBSETS)
def test_precedence_every_subset(patterns: tuple[str, ...], expected: str | None) -> None:
    # Registration order must not matter either.
    assert make(*patterns).route("bob@example.com") == expected
    assert make(*reversed(patterns)).route("bob@example.com") == expected


PRECEDENCE = [
    pytest.param(LEVELS, "alice@example.com", DOMAIN, id="other-local-takes-domain"),
    pytest.param(LEVELS, "bob@other.org", LOCAL, id="other-domain-takes-local"),
    pytest.param(LEVELS, "alice@other.org", ANY, id="other-both-takes-any"),
    pytest.param((EXACT, ANY), "alice@example.com", ANY, id="known-domain-falls-back-to-any"),
    pytest.param(
        ("alice@example.com", LOCAL),
        "bob@example.com",
        LOCAL,
        id="known-domain-falls-back-to-local",
    ),
    pytest.param((EXACT, DOMAIN), "bob@other.org", None, id="no-match-other-domain"),
    pytest.param((EXACT, LOCAL), "alice@example.com", None, id="no-match-other-local"),
    pytest.param((), "bob@example.com", None, id="empty-router"),
    pytest.param(("bob@sub.example.com",), "bob@example.com", None, id="no-subdomain-match"),
    pytest.param(("bob@example.com",), "bob@sub.example.com", None, id="no-parent-domain-match"),
]


@pytest.mark.parametrize(("patterns", "address", "expected"), PRECEDENCE)
def test_precedence(patterns: tuple[str, ...], address: str, expected: str | None) -> None:
    assert make(*patterns).route(address) == expected


DOMAINS = [
    pytest.param("*@bücher.example", "bob@xn--bcher-kva.example", id="u-pattern-a-addr"),
    pytest.param("*@xn--bcher-kva.example", "bob@bücher.example", id="a-pattern-u-addr"),
    pytest.param("*@bücher.example", "bob@BÜCHER.example", id="u-label-upper-case"),
    pytest.param("*@BÜCHER.EXAMPLE", "bob@bücher.example", id="u-label-upper-case-pattern"),
    pytest.param("*@bücher.example", "bob@XN--BCHER-KVA.EXAMPLE", id="a-label-upper-case"),
    pytest.param("*@bücher.example", "bob@bücher。example", id="ideographic-full-stop"),
    # IDNA 2008 (RFC 5892) keeps ß, ς and the joiners; IDNA 2003 mapped ß to ss (issue 11).
    pytest.param("*@straße.de", "bob@xn--strae-oqa.de", id="idna-2008-keeps-sharp-s"),
    pytest.param("*@xn--strae-oqa.de", "bob@STRAßE.de", id="sharp-s-a-label-pattern"),
    pytest.param("*@faß.de", "bob@xn--fa-hia.de", id="rfc5892-fass"),
    pytest.param("*@βόλος.com", "bob@xn--nxasmm1c.com", id="rfc5892-final-sigma"),
    # UTS 46 mapping: upper case, full-width forms, compatibility characters (§4 Processing).
    pytest.param(
        "*@example.com", "bob@\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", id="uts46-full-width"
    ),
    pytest.param("*@\uff41\uff42\uff43.example", "bob@abc.example", id="uts46-full-width-pattern"),
    pytest.param("*@bücher.example", "bob@BU\u0308CHER.example", id="uts46-nfc"),
    pytest.param("*@xn--bcher-kva.example", "bob@xn--bcher-kva.example.", id="a-label-root-dot"),
    pytest.param("*@example.com", "bob@Example.COM", id="domain-case-addr"),
    pytest.param("*@EXAMPLE.com", "bob@example.com", id="domain-case-pattern"),
    pytest.param("bob@Example.com", "bob@eXample.com", id="domain-case-exact"),
    pytest.param("*@example.com", "bob@example.com.", id="trailing-dot-addr"),
    pytest.param("*@example.com.", "bob@example.com", id="trailing-dot-pattern"),
    pytest.param("*@bücher.example.", "bob@xn--bcher-kva.example", id="trailing-dot-u-label"),
    pytest.param("*@[192.0.2.1]", "bob@[192.0.2.1]", id="ipv4-literal"),
    pytest.param("*@[ipv6:2001:db8::1]", "bob@[IPv6:2001:DB8::1]", id="ipv6-literal-case"),
    pytest.param("*@" + "a" * 70 + ".de", "bob@" + "A" * 70 + ".de", id="ascii-is-only-lowered"),
    pytest.param("*@ab--cd.example", "bob@AB--CD.example", id="ascii-double-hyphen"),
]


@pytest.mark.parametrize(("pattern", "address"), DOMAINS)
def test_domains_match(pattern: str, address: str) -> None:
    assert make(pattern).route(address) == pattern


NO_DOMAIN_MATCH = [
    pytest.param("*@bücher.example", "bob@bucher.example", id="umlaut-is-not-ascii"),
    pytest.param("*@[192.0.2.1]", "bob@192.0.2.1", id="literal-is-not-a-name"),
    pytest.param("*@example.com", "bob@example.com..", id="one-trailing-dot-only"),
    pytest.param("*@example.com", "bob@example.co", id="different-domain"),
    # Issue 11: the IDNA 2003 codec made these one domain.
    pytest.param("*@straße.de", "bob@strasse.de", id="sharp-s-is-not-ss"),
    pytest.param("*@strasse.de", "bob@straße.de", id="ss-is-not-sharp-s"),
    pytest.param("*@straße.de", "bob@STRASSE.DE", id="sharp-s-is-not-upper-ss"),
    pytest.param("*@example.com", "bob@xn--zz.example", id="invalid-a-label"),
]


@pytest.mark.parametrize(("pattern", "address"), NO_DOMAIN_MATCH)
def test_domains_do_not_match(pattern: str, address: str) -> None:
    assert make(pattern).route(address) is None


OPTIONS: list[Any] = [
    # (router options, pattern, address, matches)
    pytest.param({}, "bob@example.com", "Bob@example.com", False, id="local-case-sensitive"),
    pytest.param({}, "Bob@example.com", "bob@example.com", False, id="local-case-pattern"),
    pytest.param({}, "Bob@example.com", "Bob@example.com", True, id="local-same-case"),
    pytest.param({"fold_case": True}, "bob@example.com", "BoB@example.com", True, id="fold-addr"),
    pytest.param(
        {"fold_case": True}, "BOB@example.com", "bob@example.com", True, id="fold-pattern"
    ),
    pytest.param(
        {"fold_case": True},
        "strasse@example.com",
        "Straße@example.com",
        True,
        id="fold-casefold-sharp-s",
    ),
    pytest.param({}, "bob@example.com", "bob+tag@example.com", False, id="plus-kept-by-default"),
    pytest.param(
        {"subaddress_separator": "+"},
        "bob@example.com",
        "bob+tag@example.com",
        True,
        id="plus-stripped",
    ),
    pytest.param(
        {"subaddress_separator": "+"},
        "bob@example.com",
        "bob+a+b@example.com",
        True,
        id="plus-from-first",
    ),
    pytest.param(
        {"subaddress_separator": "+"},
        "bob@example.com",
        "bob+@example.com",
        True,
        id="plus-empty-tag",
    ),
    pytest.param(
        {"subaddress_separator": "+"},
        "bob+x@example.com",
        "bob+y@example.com",
        True,
        id="plus-stripped-in-pattern",
    ),
    pytest.param(
        {"subaddress_separator": "+"},
        "+tag@example.com",
        "+tag@example.com",
        True,
        id="leading-plus-kept",
    ),
    pytest.param(
        {"subaddress_separator": "+"},
        "+tag@example.com",
        "+other@example.com",
        False,
        id="leading-plus-kept-whole",
    ),
    pytest.param(
        {"subaddress_separator": "-"},
        "bob@example.com",
        "bob+tag@example.com",
        False,
        id="other-separator",
    ),
    pytest.param(
        {"subaddress_separator": "--"},
        "bob@example.com",
        "bob--x-y@example.com",
        True,
        id="two-char-separator",
    ),
    pytest.param({}, "bob@example.com", "b.o.b@example.com", False, id="dots-kept-by-default"),
    pytest.param(
        {"ignore_dots": True}, "bob@example.com", "b.o.b@example.com", True, id="dots-ignored"
    ),
    pytest.param(
        {"ignore_dots": True},
        "b.ob@example.com",
        "bo.b@example.com",
        True,
        id="dots-ignored-in-pattern",
    ),
    pytest.param(
        {"ignore_dots": True}, "*@example.com", "bob@exam.ple.com", False, id="dots-kept-in-domain"
    ),
    pytest.param(
        {"fold_case": True, "subaddress_separator": "+", "ignore_dots": True},
        "bob@example.com",
        "B.O.B+Tag.X@Example.COM",
        True,
        id="all-options",
    ),
    pytest.param(
        {"fold_case": True, "subaddress_separator": "+"},
        "bob@example.com",
        '"B\\ob+x"@example.com',
        True,
        id="options-on-quoted",
    ),
]


@pytest.mark.parametrize(("options", "pattern", "address", "matches"), OPTIONS)
def test_canonicalisation(
    options: dict[str, Any], pattern: str, address: str, matches: bool
) -> None:
    assert make(pattern, **options).route(address) == (pattern if matches else None)


QUOTED = [
    pytest.param("bob@example.com", '"bob"@example.com', id="quoted-addr-plain-pattern"),
    pytest.param('"bob"@example.com', "bob@example.com", id="quoted-pattern-plain-addr"),
    pytest.param('"john doe"@example.com', '"john doe"@example.com', id="space"),
    pytest.param('"john doe"@example.com', '"john\\ doe"@example.com', id="quoted-pair-space"),
    pytest.param('"a\\"b"@example.com', '"a\\"b"@example.com', id="escaped-quote"),
    pytest.param('"a\\\\b"@example.com', '"a\\\\b"@example.com', id="escaped-backslash"),
    pytest.param('"a@b"@example.com', '"a@b"@example.com', id="at-sign-inside"),
    pytest.param('"a@b"@*', '"a@b"@other.org', id="at-sign-inside-any-domain"),
    pytest.param('"*"@example.com', "*@example.com", id="literal-star"),
    pytest.param('"jöhn"@example.com', "jöhn@example.com", id="utf8"),
]


@pytest.mark.parametrize(("pattern", "address"), QUOTED)
def test_quoted_local_parts(pattern: str, address: str) -> None:
    assert make(pattern).route(address) == pattern


def test_quoted_star_is_not_a_wildcard() -> None:
    router = make('"*"@example.com')
    assert router.route("bob@example.com") is None
    assert router.route('"*"@example.com') == '"*"@example.com'


def test_quoted_local_part_is_case_sensitive() -> None:
    assert make('"Bob"@example.com').route("bob@example.com") is None


ODD_ADDRESSES = [
    pytest.param("", None, id="null-path"),
    pytest.param("Postmaster", LOCAL.replace("bob", "Postmaster"), id="postmaster-no-domain"),
    pytest.param("postmaster", ANY, id="postmaster-case-sensitive"),
    pytest.param("alice", ANY, id="no-domain-any"),
    pytest.param('"a@b"', ANY, id="quoted-with-at-no-domain"),
    pytest.param("bob@", LOCAL, id="empty-domain"),
    pytest.param("@example.com", DOMAIN, id="empty-local"),
    pytest.param("@", ANY, id="lone-at"),
    pytest.param("@@", ANY, id="two-ats"),
    pytest.param('"', ANY, id="lone-quote"),
    pytest.param('"bob@example.com', DOMAIN, id="unterminated-quote"),
    pytest.param("bob@[", LOCAL, id="open-literal"),
    pytest.param("bob@.", LOCAL, id="root-dot"),
    pytest.param("bob@a..b", LOCAL, id="empty-label"),
    pytest.param("bob@\udcff.de", LOCAL, id="lone-surrogate"),
    pytest.param("bob@" + "x" * 300, LOCAL, id="long-domain"),
    pytest.param("bob@xn--zz.example", LOCAL, id="invalid-a-label"),
    pytest.param("bob@" + "ü" * 70 + ".de", LOCAL, id="u-label-too-long"),
    pytest.param("bob@💩.la", LOCAL, id="emoji-not-idna-2008"),
]


@pytest.mark.parametrize(("address", "expected"), ODD_ADDRESSES)
def test_odd_addresses_do_not_crash(address: str, expected: str | None) -> None:
    router = make(EXACT, DOMAIN, LOCAL, "Postmaster@*", ANY)
    assert router.route(address) == expected
    without_wildcards = make(EXACT, "Postmaster@*")
    assert without_wildcards.route(address) == (
        "Postmaster@*" if expected == "Postmaster@*" else None
    )


def test_null_path_routes_nowhere_even_with_any() -> None:
    assert make(ANY).route("") is None


def test_domainless_address_skips_domain_patterns() -> None:
    assert make("*@localhost", "postmaster@localhost").route("postmaster") is None


DUPLICATES: list[Any] = [
    pytest.param({}, "bob@example.com", "bob@example.com", id="same"),
    pytest.param({}, "*@*", "*@*", id="any-twice"),
    pytest.param({}, "*@example.com", "*@EXAMPLE.COM", id="domain-case"),
    pytest.param({}, "bob@example.com", "bob@example.com.", id="trailing-dot"),
    pytest.param({}, "*@bücher.example", "*@xn--bcher-kva.example", id="u-label-a-label"),
    pytest.param({}, "*@straße.de", "*@XN--STRAE-OQA.DE", id="idna-2008-sharp-s"),
    pytest.param(
        {},
        "*@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com",
        "*@example.com",
        id="uts46-full-width",
    ),
    pytest.param({}, "*@[IPv6:::1]", "*@[ipv6:::1]", id="literal-case"),
    pytest.param({}, '"bob"@example.com', "bob@example.com", id="quoted-unquoted"),
    pytest.param({"fold_case": True}, "Bob@example.com", "bOB@example.com", id="fold-case"),
    pytest.param({"subaddress_separator": "+"}, "bob+a@x.org", "bob@x.org", id="subaddress"),
    pytest.param({"ignore_dots": True}, "b.ob@x.org", "bo.b@x.org", id="dots"),
]


@pytest.mark.parametrize(("options", "first", "second"), DUPLICATES)
def test_duplicate_raises(options: dict[str, Any], first: str, second: str) -> None:
    router = make(first, **options)
    with pytest.raises(ValueError, match="duplicates") as info:
        router.add(second, second)
    assert repr(first) in str(info.value)
    assert router.route(first) == first  # the first registration stands
    assert router.patterns() == (first,)


NOT_DUPLICATES = [
    pytest.param("Bob@example.com", "bob@example.com", id="local-case"),
    pytest.param("bob+a@x.org", "bob@x.org", id="subaddress-off"),
    pytest.param("b.ob@x.org", "bob@x.org", id="dots-off"),
    pytest.param('"*"@x.org', "*@x.org", id="literal-star-vs-wildcard"),
    pytest.param("bob@*", "bob@x.org", id="wildcard-vs-domain"),
    pytest.param("*@straße.de", "*@strasse.de", id="sharp-s-is-not-ss"),
]


@pytest.mark.parametrize(("first", "second"), NOT_DUPLICATES)
def test_distinct_patterns(first: str, second: str) -> None:
    router = make(first, second)
    assert len(router) == 2


MALFORMED: list[Any] = [
    pytest.param({}, "", id="empty"),
    pytest.param({}, "bob", id="no-at"),
    pytest.param({}, "*", id="star-no-at"),
    pytest.param({}, "@example.com", id="empty-local"),
    pytest.param({}, "bob@", id="empty-domain"),
    pytest.param({}, "@", id="lone-at"),
    pytest.param({}, "b*b@example.com", id="star-in-local"),
    pytest.param({}, "bob*@example.com", id="star-suffix-local"),
    pytest.param({}, "**@example.com", id="double-star-local"),
    pytest.param({}, "bob@*.example.com", id="star-label"),
    pytest.param({}, "bob@exa*mple.com", id="star-in-domain"),
    pytest.param({}, "bob@**", id="double-star-domain"),
    pytest.param({}, '"bob@example.com', id="unterminated-quote"),
    pytest.param({}, '"bob"x@example.com', id="text-after-quote"),
    pytest.param({}, '"a"b"@example.com', id="bare-quote-inside"),
    pytest.param({}, '"a\\"@example.com', id="escaped-closing-quote"),
    pytest.param({}, '"a\tb"@example.com', id="control-in-quotes"),
    pytest.param({}, '"a@b"', id="quoted-no-domain"),
    pytest.param({}, '""@example.com', id="empty-quoted"),
    pytest.param({}, "bo b@example.com", id="space-in-local"),
    pytest.param({}, "a@b@example.com", id="unquoted-at-in-local"),
    pytest.param({}, "a\\b@example.com", id="backslash-in-local"),
    pytest.param({}, "<bob@example.com>", id="angle-brackets"),
    pytest.param({}, "bob@exa mple.com", id="space-in-domain"),
    pytest.param({}, "bob@a..b", id="empty-label"),
    pytest.param({}, "bob@.example.com", id="leading-dot"),
    pytest.param({}, "bob@.", id="root-only"),
    pytest.param({}, "bob@[192.0.2.1", id="open-literal"),
    pytest.param({}, "bob@[]", id="empty-literal"),
    pytest.param({}, "bob@[a]b", id="text-after-literal"),
    pytest.param({"ignore_dots": True}, "...@example.com", id="dots-only-ignored"),
    # Not IDNA 2008 (RFC 5891 §4, RFC 5892, RFC 5893): refused at registration.
    pytest.param({}, "*@xn--zz.example", id="a-label-does-not-decode"),
    pytest.param({}, "*@xn--a.example", id="a-label-decodes-to-control"),
    pytest.param({}, "*@💩.la", id="emoji-u-label"),
    pytest.param({}, "*@xn--ls8h.la", id="emoji-a-label"),
    pytest.param({}, "*@" + "ü" * 70 + ".de", id="u-label-too-long"),
    pytest.param({}, "*@-bücher.example", id="u-label-leading-hyphen"),
    pytest.param({}, "*@bü--cher.example", id="u-label-hyphens-3-4"),
    pytest.param({}, "*@a\u200db.example", id="zwj-without-context"),
    pytest.param({}, "*@\u0661\u0032.example", id="bidi-rule"),
    pytest.param({}, "*@\u0301a.example", id="leading-combining-mark"),
]


@pytest.mark.parametrize(("options", "pattern"), MALFORMED)
def test_malformed_pattern_raises(options: dict[str, Any], pattern: str) -> None:
    router: Router[str] = Router(**options)
    with pytest.raises(ValueError, match="pattern"):
        router.add(pattern, "handler")
    assert len(router) == 0
    assert pattern not in router


@pytest.mark.parametrize("separator", ["", "@", '"'])
def test_bad_separator(separator: str) -> None:
    with pytest.raises(ValueError, match="subaddress_separator"):
        Router(subaddress_separator=separator)


def test_patterns_len_contains() -> None:
    router = make("b@x.org", "*@*", "a@X.ORG.")
    assert router.patterns() == ("b@x.org", "*@*", "a@X.ORG.")  # as written, in order
    assert router.items() == tuple((p, p) for p in router.patterns())  # (pattern, handler)
    assert len(router) == 3
    assert "a@x.org" in router  # equal after canonicalisation
    assert "A@x.org" not in router
    assert "c@x.org" not in router
    assert "not a pattern" not in router
    assert 42 not in router
    assert "handler" not in repr(router)


def test_handlers_are_returned_as_registered() -> None:
    sentinel = object()
    router: Router[object] = Router()
    router.add("*@example.com", sentinel)
    assert router.route("bob@example.com") is sentinel


def test_falsy_handler_still_routes() -> None:
    router: Router[int] = Router()
    router.add("*@example.com", 0)
    router.add("*@*", 1)
    assert router.route("bob@example.com") == 0


def test_handler_decorator() -> None:
    router: Router[Callable[[str], str]] = Router()

    @router.handler("*@example.com")
    def deliver(address: str) -> str:
        return "delivered " + address

    assert router.route("bob@example.com") is deliver
    assert deliver("x") == "delivered x"  # returned unchanged
    with pytest.raises(ValueError, match="duplicates"):
        router.handler("*@EXAMPLE.com")(deliver)


@pytest.fixture
def restore_default_router() -> Iterator[Router[Any]]:
    """Give the module-level router back as it was, whatever the test registered."""
    handlers = dict(default_router._handlers)
    patterns = dict(default_router._patterns)
    try:
        yield default_router
    finally:
        default_router._handlers.clear()
        default_router._handlers.update(handlers)
        default_router._patterns.clear()
        default_router._patterns.update(patterns)


def test_default_router_handle(restore_default_router: Router[Any]) -> None:
    assert _router.default_router is restore_default_router
    before = len(default_router)

    @handle("*@one-file.example")
    def deliver(address: str) -> str:
        return address

    assert deliver("x") == "x"
    assert default_router.route("bob@ONE-FILE.example") is deliver
    assert len(default_router) == before + 1
    with pytest.raises(ValueError, match="duplicates"):
        handle("*@one-file.example")(deliver)


def test_default_router_restored() -> None:
    # Runs after test_default_router_handle: the fixture has removed its pattern.
    assert "*@one-file.example" not in default_router


def test_default_router_options() -> None:
    assert isinstance(default_router, Router)
    assert not default_router.fold_case
    assert default_router.subaddress_separator is None
    assert not default_router.ignore_dots


def test_all() -> None:
    assert set(_router.__all__) == {"Router", "default_router", "handle"}
    for name in _router.__all__:
        assert hasattr(_router, name)
