"""smtp_core/_address.py: ``normalize_domain`` (IDNA 2008 with UTS 46 mapping) and the 553
5.1.3 that ``parse_path`` gives a domain that is not valid IDNA (issue 11)."""

from __future__ import annotations

import idna
import pytest

from smtp_core import AddressError, _address, normalize_domain, parse_path

CANONICAL = [
    # ASCII: lower case, one root dot dropped, nothing else looked at.
    pytest.param("example.com", "example.com", id="ascii"),
    pytest.param("Example.COM", "example.com", id="ascii-upper-case"),
    pytest.param("www.example.com.", "www.example.com", id="root-dot"),
    pytest.param("ab--cd.example", "ab--cd.example", id="ascii-double-hyphen-not-checked"),
    # RFC 5890 §2.3.2: a U-label and its A-label are one name.
    pytest.param("bücher.example", "xn--bcher-kva.example", id="u-label"),
    pytest.param("Bücher.Example", "xn--bcher-kva.example", id="u-label-upper-case"),
    pytest.param("xn--bcher-kva.example", "xn--bcher-kva.example", id="a-label"),
    pytest.param("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example", id="a-label-upper-case"),
    pytest.param("xn--bcher-kva.example.", "xn--bcher-kva.example", id="a-label-root-dot"),
    pytest.param("日本語.jp", "xn--wgv71a119e.jp", id="cjk"),
    pytest.param("\u05d0.example", "xn--4db.example", id="rtl-label"),
    # RFC 5892 / UTS 46 §4 deviations: IDNA 2008 keeps ß, ς and ZWJ (IDNA 2003 mapped them).
    pytest.param("straße.de", "xn--strae-oqa.de", id="sharp-s-not-ss"),
    pytest.param("faß.de", "xn--fa-hia.de", id="uts46-fass"),
    pytest.param("βόλος.com", "xn--nxasmm1c.com", id="uts46-final-sigma"),
    pytest.param("\u0dc1\u0dca\u200d\u0dbb\u0dd3.lk", "xn--10cl1a0b660p.lk", id="zwj-after-virama"),
    # UTS 46 mapping: case, width, compatibility forms, dots, NFC.
    pytest.param("ÖBB.at", "xn--bb-eka.at", id="uts46-obb"),
    pytest.param(
        "\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\uff0e\uff23\uff2f\uff2d",
        "example.com",
        id="full-width",
    ),
    pytest.param("例え。テスト", "xn--r8jz45g.xn--zckzah", id="ideographic-full-stop"),
    pytest.param("ﬁ.example", "fi.example", id="ligature"),
    pytest.param("bu\u0308cher.example", "xn--bcher-kva.example", id="nfc"),
    # Address literals are not names.
    pytest.param("[192.0.2.1]", "[192.0.2.1]", id="ipv4-literal"),
    pytest.param("[IPv6:2001:DB8::1]", "[IPv6:2001:DB8::1]", id="ipv6-literal-unchanged"),
]


@pytest.mark.parametrize(("domain", "expected"), CANONICAL)
def test_normalize_domain(domain: str, expected: str) -> None:
    assert normalize_domain(domain) == expected


INVALID = [
    pytest.param("xn--zz.example", id="a-label-does-not-decode"),
    pytest.param("XN--ZZ.example", id="a-label-upper-case-does-not-decode"),
    pytest.param("xn--a.example", id="a-label-decodes-to-control"),
    pytest.param("xn--.example", id="empty-a-label"),
    pytest.param("xn--ls8h.la", id="emoji-a-label"),
    pytest.param("💩.la", id="emoji"),
    pytest.param("-bücher.example", id="leading-hyphen"),
    pytest.param("bücher-.example", id="trailing-hyphen"),
    pytest.param("bü--cher.example", id="hyphens-3-4"),
    pytest.param("bücher..example", id="empty-label"),
    pytest.param("ü" * 63 + ".de", id="label-over-63-octets"),
    pytest.param("a\u200db.example", id="zwj-without-context"),
    pytest.param("\u0301a.example", id="leading-combining-mark"),
    pytest.param("\u0661\u0032.example", id="bidi-rule"),
    pytest.param("\u05d0a.example", id="bidi-rtl-then-ltr"),
    pytest.param("", id="empty"),
    pytest.param(".", id="root-only"),
]


@pytest.mark.parametrize("domain", INVALID)
def test_normalize_domain_refuses(domain: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        normalize_domain(domain)


def test_plain_ascii_never_reaches_idna(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path: an ASCII name without an A-label is lower-cased, nothing more."""

    def fail(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("idna.encode called")

    monkeypatch.setattr(idna, "encode", fail)
    assert normalize_domain("Mail.Example.COM") == "mail.example.com"


def test_idna_results_are_cached_and_bounded() -> None:
    """A valid name is normalised once (normalize_domain's own cache answers the repeats); an
    invalid one raises every time, its IDNA verdict cached below that."""
    normalize_domain.cache_clear()
    _address._a_labels.cache_clear()
    for _ in range(3):
        assert normalize_domain("bücher.example") == "xn--bcher-kva.example"
        with pytest.raises(ValueError):
            normalize_domain("xn--zz.example")
    outer, info = normalize_domain.cache_info(), _address._a_labels.cache_info()
    assert (outer.misses, outer.hits) == (4, 2)  # the refusals are not cached: 1 + 3 misses
    assert (info.misses, info.hits) == (2, 2)
    assert info.maxsize is not None and info.maxsize <= 10_000
    assert outer.maxsize is not None and outer.maxsize <= 10_000


PATHS = [
    pytest.param("<a@xn--zz.example>", id="bad-a-label"),
    pytest.param("<a@XN--ZZ.example> SIZE=10", id="bad-a-label-upper-with-params"),
    pytest.param("<a@b.xn--ls8h.la>", id="emoji-a-label"),
    pytest.param("<a@💩.la>", id="emoji-u-label"),
    pytest.param("<a@bü--cher.example>", id="u-label-hyphens-3-4"),
    pytest.param("<@relay.example:a@xn--zz.example>", id="after-source-route"),
    pytest.param('<"a b"@xn--zz.example>', id="quoted-local-part"),
]


@pytest.mark.parametrize("text", PATHS)
@pytest.mark.parametrize("sender", [True, False], ids=["mail", "rcpt"])
def test_parse_path_refuses_invalid_idna(text: str, sender: bool) -> None:
    with pytest.raises(AddressError) as info:
        parse_path(text, sender=sender, utf8=True)
    assert (info.value.reply.code, info.value.reply.enhanced) == (553, "5.1.3")


ACCEPTED = [
    pytest.param("<a@xn--bcher-kva.example>", "a@xn--bcher-kva.example", id="a-label"),
    pytest.param("<a@bücher.example>", "a@bücher.example", id="u-label-kept-as-written"),
    pytest.param("<a@ab--cd.example>", "a@ab--cd.example", id="ascii-double-hyphen"),
    pytest.param("<a--b@example.com>", "a--b@example.com", id="hyphens-in-local-part"),
    pytest.param("<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", id="literal"),
]


@pytest.mark.parametrize(("text", "address"), ACCEPTED)
def test_parse_path_accepts_valid_idna(text: str, address: str) -> None:
    assert parse_path(text, sender=False, utf8=True) == (address, "")
