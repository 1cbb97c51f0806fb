"""More RFC tables for ServerConnection: every MAIL/RCPT parameter, the path grammar, the
commands tests/engine/test_server.py's table leaves out, and whole AUTH exchanges.

Each case is (id, config, tls, lines before, command, reply code, enhanced code); the setup
lines must all succeed, and the command is fed whole and byte by byte.
"""

from __future__ import annotations

import base64

import pytest

from smtp_core import (
    AuthChallenge,
    AuthCredentials,
    BdatChunk,
    Credentials,
    DataChunk,
    Event,
    Hello,
    InvalidCommand,
    LoginMechanism,
    MailFrom,
    MailParams,
    PlainMechanism,
    RcptParams,
    RcptTo,
    Reply,
    ServerConfig,
    ServerState,
)
from tests.helpers import Driver, assert_same_in_any_split

AUTH = ServerConfig(auth_mechanisms=(PlainMechanism, LoginMechanism))
AUTH_PLAINTEXT = ServerConfig(auth_mechanisms=(PlainMechanism,), auth_require_tls=False)
LMTP = ServerConfig(lmtp=True)
SMALL = ServerConfig(max_message_size=100)
NO_CHUNKING = ServerConfig(chunking=False)
NO_DSN = ServerConfig(dsn=False)
NO_UTF8 = ServerConfig(smtputf8=False)
NO_REQUIRETLS = ServerConfig(requiretls=False)
EXTRA = ServerConfig(extra_mail_params=frozenset({"X-TAG"}), extra_rcpt_params=frozenset({"X-ID"}))

EHLO = "EHLO client.example"
MAIL = "MAIL FROM:<a@example.org>"
RCPT = "RCPT TO:<b@example.net>"
T = [EHLO, MAIL]  # inside a transaction, ready for RCPT

LOCAL_64 = "l" * 64
# A 189-octet domain: with a 64-octet local part, "<local@domain>" is exactly 256 octets.
DOMAIN_189 = ".".join(["d" * 63, "d" * 63, "d" * 61])
DOMAIN_257 = ".".join(["d" * 50] * 5) + ".dd"

Case = tuple[str, ServerConfig | None, bool, list[str], str, int, str | None]
TABLE: list[Case] = [
    # RFC 5321 §4.1.1.1: HELO/EHLO, RFC 2033 §4.1: LHLO
    ("ehlo address literal", None, False, [], "EHLO [192.0.2.1]", 250, None),
    ("lhlo without name", LMTP, False, [], "LHLO", 501, "5.5.4"),
    ("helo in lmtp", LMTP, False, [], "HELO client.example", 500, "5.5.1"),
    ("helo after ehlo", None, False, [EHLO], "HELO client.example", 250, None),
    # RFC 5321 §4.1.1.5-10: the commands without a transaction
    ("rset before ehlo", None, False, [], "RSET", 250, "2.0.0"),
    ("rset in transaction", None, False, [*T, RCPT], "RSET", 250, "2.0.0"),
    ("noop in transaction", None, False, T, "NOOP", 250, "2.0.0"),
    ("vrfy before ehlo", None, False, [], "VRFY bob", 252, "2.5.2"),
    ("vrfy in transaction", None, False, T, "VRFY <bob@example.net>", 252, "2.5.2"),
    ("expn without argument", None, False, [EHLO], "EXPN", 501, "5.5.4"),
    ("expn in transaction", None, False, T, "EXPN staff", 502, "5.5.1"),
    ("help with topic", None, False, [EHLO], "HELP MAIL", 214, "2.0.0"),
    ("help in transaction", None, False, T, "HELP", 214, "2.0.0"),
    ("quit before ehlo", None, False, [], "QUIT", 221, "2.0.0"),
    ("quit in transaction", None, False, [*T, RCPT], "QUIT", 221, "2.0.0"),
    ("verb in lower case", None, False, [EHLO], "mail from:<a@example.org>", 250, "2.1.0"),
    ("tab in arguments", None, False, [EHLO], "NOOP\ta", 500, "5.5.1"),
    ("DEL character", None, False, [EHLO], "NOOP a\x7f", 500, "5.5.2"),
    # RFC 5321 §4.1.1.2 MAIL and its syntax
    ("mail without FROM", None, False, [EHLO], "MAIL TO:<a@example.org>", 501, "5.5.4"),
    ("mail alone", None, False, [EHLO], "MAIL", 501, "5.5.4"),
    ("mail empty path", None, False, [EHLO], "MAIL FROM:", 501, "5.1.7"),
    ("mail space before path", None, False, [EHLO], "MAIL FROM: <a@example.org>", 250, "2.1.0"),
    ("mail unclosed path", None, False, [EHLO], "MAIL FROM:<a@example.org", 501, "5.1.7"),
    ("mail param glued", None, False, [EHLO], MAIL + "SIZE=10", 501, "5.1.7"),
    ("mail null path glued", None, False, [EHLO], "MAIL FROM:<>SIZE=10", 501, "5.1.7"),
    ("mail null with param", None, False, [EHLO], "MAIL FROM:<> SIZE=10", 250, "2.1.0"),
    ("mail postmaster", None, False, [EHLO], "MAIL FROM:<Postmaster>", 501, "5.1.7"),
    ("mail after helo", None, False, ["HELO c"], MAIL, 250, "2.1.0"),
    ("mail after rset", None, False, [*T, "RSET"], MAIL, 250, "2.1.0"),
    ("mail after new ehlo", None, False, [*T, EHLO], MAIL, 250, "2.1.0"),
    # ESMTP parameters, RFC 5321 §4.1.2: syntax 501, unknown 555
    ("param lower case", None, False, [EHLO], MAIL + " size=10", 250, "2.1.0"),
    ("params spaced", None, False, [EHLO], MAIL + "  SIZE=10  BODY=7BIT ", 250, "2.1.0"),
    ("param twice", None, False, [EHLO], MAIL + " SIZE=1 SIZE=2", 501, "5.5.4"),
    ("param empty value", None, False, [EHLO], MAIL + " SIZE=", 501, "5.5.4"),
    ("param bad name", None, False, [EHLO], MAIL + " =10", 501, "5.5.4"),
    ("param unknown keyword", None, False, [EHLO], MAIL + " X-FOO", 555, "5.5.4"),
    ("param registered", EXTRA, False, [EHLO], MAIL + " X-TAG=1", 250, "2.1.0"),
    # SIZE (RFC 1870 §6)
    ("size not a number", None, False, [EHLO], MAIL + " SIZE=ten", 501, "5.5.4"),
    ("size without value", None, False, [EHLO], MAIL + " SIZE", 501, "5.5.4"),
    ("size 21 digits", None, False, [EHLO], MAIL + " SIZE=" + "9" * 21, 501, "5.5.4"),
    ("size at the limit", SMALL, False, [EHLO], MAIL + " SIZE=100", 250, "2.1.0"),
    ("size one over", SMALL, False, [EHLO], MAIL + " SIZE=101", 552, "5.3.4"),
    (
        "size no limit",
        ServerConfig(max_message_size=None),
        False,
        [EHLO],
        MAIL + " SIZE=" + "9" * 20,
        250,
        "2.1.0",
    ),
    # BODY (RFC 6152, RFC 3030 §3)
    ("body 7bit", None, False, [EHLO], MAIL + " BODY=7BIT", 250, "2.1.0"),
    ("body lower case", None, False, [EHLO], MAIL + " BODY=8bitmime", 250, "2.1.0"),
    ("body binarymime", None, False, [EHLO], MAIL + " BODY=BINARYMIME", 250, "2.1.0"),
    (
        "binarymime without chunking",
        NO_CHUNKING,
        False,
        [EHLO],
        MAIL + " BODY=BINARYMIME",
        555,
        "5.5.4",
    ),
    ("body unknown", None, False, [EHLO], MAIL + " BODY=9BIT", 501, "5.5.4"),
    ("body without value", None, False, [EHLO], MAIL + " BODY", 501, "5.5.4"),
    # SMTPUTF8 (RFC 6531 §3.4)
    ("smtputf8", None, False, [EHLO], MAIL + " SMTPUTF8", 250, "2.1.0"),
    ("smtputf8 with value", None, False, [EHLO], MAIL + " SMTPUTF8=yes", 501, "5.5.4"),
    ("smtputf8 not offered", NO_UTF8, False, [EHLO], MAIL + " SMTPUTF8", 555, "5.5.4"),
    # DSN (RFC 3461 §4.3, §4.4)
    ("ret full", None, False, [EHLO], MAIL + " RET=FULL", 250, "2.1.0"),
    ("ret hdrs lower", None, False, [EHLO], MAIL + " RET=hdrs", 250, "2.1.0"),
    ("ret unknown", None, False, [EHLO], MAIL + " RET=NEVER", 501, "5.5.4"),
    ("ret without dsn", NO_DSN, False, [EHLO], MAIL + " RET=FULL", 555, "5.5.4"),
    ("envid xtext", None, False, [EHLO], MAIL + " ENVID=QQ+2B1", 250, "2.1.0"),
    ("envid 100 chars", None, False, [EHLO], MAIL + " ENVID=" + "e" * 100, 250, "2.1.0"),
    ("envid 101 chars", None, False, [EHLO], MAIL + " ENVID=" + "e" * 101, 501, "5.5.4"),
    ("envid bad xtext", None, False, [EHLO], MAIL + " ENVID=a+zz", 501, "5.5.4"),
    ("envid without value", None, False, [EHLO], MAIL + " ENVID", 501, "5.5.4"),
    ("envid without dsn", NO_DSN, False, [EHLO], MAIL + " ENVID=x", 555, "5.5.4"),
    # AUTH= (RFC 4954 §5): only where AUTH is offered
    ("auth param null", AUTH, True, [EHLO], MAIL + " AUTH=<>", 250, "2.1.0"),
    ("auth param xtext", AUTH, True, [EHLO], MAIL + " AUTH=joe+40example.org", 250, "2.1.0"),
    ("auth param bad xtext", AUTH, True, [EHLO], MAIL + " AUTH=joe+4", 501, "5.5.4"),
    ("auth param without auth", None, True, [EHLO], MAIL + " AUTH=<>", 555, "5.5.4"),
    ("auth param over plaintext", AUTH, False, [EHLO], MAIL + " AUTH=<>", 555, "5.5.4"),
    (
        "auth param plaintext allowed",
        AUTH_PLAINTEXT,
        False,
        [EHLO],
        MAIL + " AUTH=<>",
        250,
        "2.1.0",
    ),
    # REQUIRETLS (RFC 8689 §4.1): a flag, only inside TLS
    ("requiretls", None, True, [EHLO], MAIL + " REQUIRETLS", 250, "2.1.0"),
    ("requiretls with value", None, True, [EHLO], MAIL + " REQUIRETLS=yes", 501, "5.5.4"),
    ("requiretls over plaintext", None, False, [EHLO], MAIL + " REQUIRETLS", 530, "5.7.10"),
    ("requiretls not offered", NO_REQUIRETLS, True, [EHLO], MAIL + " REQUIRETLS", 555, "5.5.4"),
    # RCPT (RFC 5321 §4.1.1.3) and its DSN parameters (RFC 3461 §4.1, §4.2)
    ("rcpt without TO", None, False, T, "RCPT FROM:<b@example.net>", 501, "5.5.4"),
    ("rcpt without brackets", None, False, T, "RCPT TO:b@example.net", 501, "5.1.3"),
    ("rcpt param glued", None, False, T, RCPT + "NOTIFY=NEVER", 501, "5.1.3"),
    ("rcpt postmaster lower", None, False, T, "RCPT TO:<postmaster>", 250, "2.1.5"),
    ("rcpt postmaster at domain", None, False, T, "RCPT TO:<Postmaster@example.net>", 250, "2.1.5"),
    ("rcpt second", None, False, [*T, RCPT], "RCPT TO:<c@example.net>", 250, "2.1.5"),
    ("notify never", None, False, T, RCPT + " NOTIFY=NEVER", 250, "2.1.5"),
    ("notify lower case", None, False, T, RCPT + " NOTIFY=failure,delay", 250, "2.1.5"),
    ("notify never and more", None, False, T, RCPT + " NOTIFY=NEVER,SUCCESS", 501, "5.5.4"),
    ("notify unknown", None, False, T, RCPT + " NOTIFY=ALWAYS", 501, "5.5.4"),
    ("notify twice", None, False, T, RCPT + " NOTIFY=SUCCESS,SUCCESS", 501, "5.5.4"),
    ("notify without value", None, False, T, RCPT + " NOTIFY", 501, "5.5.4"),
    ("orcpt xtext", None, False, T, RCPT + " ORCPT=rfc822;b+40x.net", 250, "2.1.5"),
    ("orcpt without type", None, False, T, RCPT + " ORCPT=;b@x.net", 501, "5.5.4"),
    ("orcpt without address", None, False, T, RCPT + " ORCPT=rfc822", 501, "5.5.4"),
    ("orcpt bad xtext", None, False, T, RCPT + " ORCPT=rfc822;b+zz", 501, "5.5.4"),
    ("rcpt dsn without dsn", NO_DSN, False, T, RCPT + " ORCPT=rfc822;b@x.net", 555, "5.5.4"),
    ("rcpt unknown param", None, False, T, RCPT + " FOO=1", 555, "5.5.4"),
    ("rcpt takes no SIZE", None, False, T, RCPT + " SIZE=10", 555, "5.5.4"),
    ("rcpt params after helo", None, False, ["HELO c", MAIL], RCPT + " NOTIFY=NEVER", 555, "5.5.4"),
    ("rcpt registered param", EXTRA, False, T, RCPT + " X-ID=7", 250, "2.1.5"),
    # RFC 5321 §4.1.2 path grammar
    ("quoted local part", None, False, [EHLO], 'MAIL FROM:<"john doe"@example.org>', 250, "2.1.0"),
    ("quoted pair", None, False, [EHLO], 'MAIL FROM:<"a\\"b"@example.org>', 250, "2.1.0"),
    ("quoted unbalanced", None, False, [EHLO], 'MAIL FROM:<"a"b"@example.org>', 501, "5.1.7"),
    ("dot string", None, False, [EHLO], "MAIL FROM:<a.b+c@example.org>", 250, "2.1.0"),
    ("double dot", None, False, [EHLO], "MAIL FROM:<a..b@example.org>", 501, "5.1.7"),
    ("leading dot", None, False, [EHLO], "MAIL FROM:<.a@example.org>", 501, "5.1.7"),
    ("no domain", None, False, [EHLO], "MAIL FROM:<a>", 501, "5.1.7"),
    ("domain trailing dot", None, False, [EHLO], "MAIL FROM:<a@example.>", 501, "5.1.7"),
    ("domain leading hyphen", None, False, [EHLO], "MAIL FROM:<a@-x.org>", 501, "5.1.7"),
    ("domain underscore", None, False, [EHLO], "MAIL FROM:<a@x_y.org>", 501, "5.1.7"),
    ("ipv4 literal", None, False, [EHLO], "MAIL FROM:<a@[192.0.2.1]>", 250, "2.1.0"),
    ("ipv6 literal", None, False, [EHLO], "MAIL FROM:<a@[IPv6:2001:db8::1]>", 250, "2.1.0"),
    ("ipv6 literal lower", None, False, T, "RCPT TO:<b@[ipv6:::1]>", 250, "2.1.5"),
    ("general literal", None, False, [EHLO], "MAIL FROM:<a@[x-tag:stuff]>", 250, "2.1.0"),
    ("ipv4 literal out of range", None, False, [EHLO], "MAIL FROM:<a@[256.0.0.1]>", 501, "5.1.7"),
    ("ipv4 literal short", None, False, [EHLO], "MAIL FROM:<a@[192.0.2]>", 501, "5.1.7"),
    ("ipv6 literal bad", None, False, [EHLO], "MAIL FROM:<a@[IPv6:2001:zz::1]>", 501, "5.1.7"),
    ("rcpt bad literal", None, False, T, "RCPT TO:<b@[IPv6:1.2.3.4]>", 501, "5.1.3"),
    ("source route", None, False, [EHLO], "MAIL FROM:<@relay.example:a@example.org>", 250, "2.1.0"),
    (
        "source route two hops",
        None,
        False,
        T,
        "RCPT TO:<@r1.example,@r2.example:b@x.net>",
        250,
        "2.1.5",
    ),
    ("source route bad hop", None, False, T, "RCPT TO:<@r1..example:b@x.net>", 501, "5.1.3"),
    ("local part 64", None, False, [EHLO], f"MAIL FROM:<{LOCAL_64}@example.org>", 250, "2.1.0"),
    ("local part 65", None, False, [EHLO], f"MAIL FROM:<{LOCAL_64}l@example.org>", 501, "5.1.7"),
    ("rcpt local part 65", None, False, T, f"RCPT TO:<{LOCAL_64}l@example.net>", 501, "5.1.3"),
    ("path 256", None, False, [EHLO], f"MAIL FROM:<{LOCAL_64}@{DOMAIN_189}>", 250, "2.1.0"),
    ("path 257", None, False, [EHLO], f"MAIL FROM:<{LOCAL_64}@{DOMAIN_189}d>", 501, "5.1.7"),
    ("rcpt path 257", None, False, T, f"RCPT TO:<{LOCAL_64}@{DOMAIN_189}d>", 501, "5.1.3"),
    ("domain 257", None, False, [EHLO], f"MAIL FROM:<a@{DOMAIN_257}>", 501, "5.1.7"),
    # RFC 6531 §3.3: non-ASCII only with SMTPUTF8, else 553 5.6.7
    ("utf8 domain", None, False, [EHLO], "MAIL FROM:<a@b\u00fccher.example>", 553, "5.6.7"),
    ("utf8 quoted", None, False, [EHLO], 'MAIL FROM:<"j\u00f6"@example.org>', 553, "5.6.7"),
    (
        "utf8 domain with smtputf8",
        None,
        False,
        [EHLO],
        "MAIL FROM:<a@b\u00fccher.example> SMTPUTF8",
        250,
        "2.1.0",
    ),
    ("utf8 after helo", None, False, ["HELO c"], "MAIL FROM:<j\u00f6@example.org>", 553, "5.6.7"),
    (
        "utf8 not offered",
        NO_UTF8,
        False,
        [EHLO],
        "MAIL FROM:<j\u00f6@example.org> SMTPUTF8",
        553,
        "5.6.7",
    ),
    (
        "utf8 rcpt with smtputf8",
        None,
        False,
        [EHLO, MAIL + " SMTPUTF8"],
        "RCPT TO:<\u7528\u6237@\u4f8b\u5b50.\u4e2d\u56fd>",
        250,
        "2.1.5",
    ),
    # RFC 5891 §5.4 (issue 11): a domain that is not valid IDNA 2008 gets 553 5.1.3
    ("idna bad a-label mail", None, False, [EHLO], "MAIL FROM:<a@xn--zz.example>", 553, "5.1.3"),
    ("idna bad a-label rcpt", None, False, T, "RCPT TO:<b@XN--ZZ.example>", 553, "5.1.3"),
    ("idna emoji rcpt", None, False, [EHLO, MAIL + " SMTPUTF8"], "RCPT TO:<b@💩.la>", 553, "5.1.3"),
    ("idna a-label rcpt", None, False, T, "RCPT TO:<b@xn--bcher-kva.example>", 250, "2.1.5"),
    # DATA and BDAT (RFC 5321 §4.1.1.4, RFC 3030)
    ("data after two rcpts", None, False, [*T, RCPT, "RCPT TO:<c@x.net>"], "DATA", 354, None),
    ("bdat lower case last", None, False, [*T, RCPT], "BDAT 0 last", 250, "2.0.0"),
    ("bdat after last", None, False, [*T, RCPT, "BDAT 0 LAST"], "BDAT 0 LAST", 503, "5.5.1"),
    ("data in lmtp", LMTP, False, ["LHLO c", MAIL, RCPT], "DATA", 354, None),
    # STARTTLS (RFC 3207 §4)
    (
        "starttls before ehlo in tls",
        ServerConfig(starttls=True),
        True,
        [],
        "STARTTLS",
        503,
        "5.5.1",
    ),
    # AUTH (RFC 4954 §4)
    ("auth without mechanism", AUTH, True, [EHLO], "AUTH", 504, "5.5.4"),
    ("auth lower case mechanism", AUTH, True, [EHLO], "AUTH plain", 334, None),
    (
        "auth login initial",
        AUTH,
        True,
        [EHLO],
        "AUTH LOGIN " + base64.b64encode(b"u").decode(),
        334,
        None,
    ),
    ("auth over plaintext", AUTH, False, [EHLO], "AUTH LOGIN", 538, "5.7.11"),
    ("auth with rcpt", AUTH, True, [EHLO, MAIL, RCPT], "AUTH PLAIN", 503, "5.5.1"),
]


def replies_to(
    config: ServerConfig | None, tls: bool, before: list[str], command: str, bytewise: bool
) -> tuple[Driver, list[tuple[int, str | None]]]:
    driver = Driver(config, tls=tls)
    driver.pump()
    if before:
        driver.feed("".join(line + "\r\n" for line in before).encode())
    setup = driver.replies()
    assert len(setup) == len(before) and all(200 <= c < 400 for c, _ in setup), driver.output
    data = command.encode() + b"\r\n"
    for piece in [data[i : i + 1] for i in range(len(data))] if bytewise else [data]:
        driver.feed(piece)
    return driver, driver.replies()[len(before) :]


@pytest.mark.parametrize(
    ("config", "tls", "before", "command", "code", "enhanced"),
    [case[1:] for case in TABLE],
    ids=[case[0] for case in TABLE],
)
def test_reply_table(
    config: ServerConfig | None,
    tls: bool,
    before: list[str],
    command: str,
    code: int,
    enhanced: str | None,
) -> None:
    for bytewise in (False, True):
        _, replies = replies_to(config, tls, before, command, bytewise)
        assert replies == [(code, enhanced)]


def test_table_ids_are_unique() -> None:
    ids = [case[0] for case in TABLE]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("command", "text"),
    [
        (f"MAIL FROM:<{LOCAL_64}l@example.org>", "Local part too long"),
        (f"MAIL FROM:<a@{DOMAIN_257}>", "Domain too long"),
        (f"MAIL FROM:<{LOCAL_64}@{DOMAIN_189}d>", "Path too long"),
    ],
    ids=["local part", "domain", "path"],
)
def test_length_limits_say_which(command: str, text: str) -> None:
    """RFC 5321 §4.5.3.1: 64 octets of local part, 255 of domain, 256 of path."""
    driver, replies = replies_to(None, False, [EHLO], command, False)
    assert replies == [(501, "5.1.7")]
    assert text.encode() in bytes(driver.output)


# --- what the events carry ------------------------------------------------------------------


def event_for(config: ServerConfig | None, tls: bool, before: list[str], command: str) -> Event:
    driver = Driver(config, tls=tls)
    driver.pump()
    events = driver.feed("".join(line + "\r\n" for line in [*before, command]).encode())
    return events[-1]


@pytest.mark.parametrize(
    ("command", "address", "params"),
    [
        (MAIL, "a@example.org", MailParams()),
        ("MAIL FROM:<>", "", MailParams()),
        ("MAIL FROM:<@r1.example,@r2.example:a@example.org>", "a@example.org", MailParams()),
        ('MAIL FROM:<"john doe"@example.org>', '"john doe"@example.org', MailParams()),
        ("MAIL FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", MailParams()),
        (MAIL + " SIZE=1234 BODY=8bitmime", "a@example.org", MailParams(1234, "8BITMIME")),
        (MAIL + " BODY=BINARYMIME", "a@example.org", MailParams(body="BINARYMIME")),
        (
            "MAIL FROM:<j\u00f6@example.org> SMTPUTF8",
            "j\u00f6@example.org",
            MailParams(smtputf8=True),
        ),
        (MAIL + " RET=hdrs ENVID=QQ+2B1", "a@example.org", MailParams(ret="HDRS", envid="QQ+1")),
        (MAIL + " AUTH=joe+2Bx@example.org", "a@example.org", MailParams(auth="joe+x@example.org")),
        (MAIL + " AUTH=<>", "a@example.org", MailParams(auth="<>")),
        (MAIL + " REQUIRETLS", "a@example.org", MailParams(requiretls=True)),
    ],
    ids=[
        "plain",
        "null",
        "source route dropped",
        "quoted kept",
        "literal kept",
        "size and body",
        "binarymime",
        "smtputf8",
        "dsn",
        "auth xtext",
        "auth null",
        "requiretls",
    ],
)
def test_mail_from_event(command: str, address: str, params: MailParams) -> None:
    event = event_for(AUTH, True, [EHLO], command)
    assert event == MailFrom(address, params)


@pytest.mark.parametrize(
    ("command", "address", "params"),
    [
        (RCPT, "b@example.net", RcptParams()),
        ("RCPT TO:<Postmaster>", "Postmaster", RcptParams()),
        ("RCPT TO:<@r.example:b@example.net>", "b@example.net", RcptParams()),
        (RCPT + " NOTIFY=NEVER", "b@example.net", RcptParams(notify=("NEVER",))),
        (
            RCPT + " NOTIFY=failure,DELAY ORCPT=rfc822;b+2Bx@example.net",
            "b@example.net",
            RcptParams(notify=("FAILURE", "DELAY"), orcpt=("rfc822", "b+x@example.net")),
        ),
    ],
    ids=["plain", "postmaster", "source route dropped", "notify never", "dsn"],
)
def test_rcpt_to_event(command: str, address: str, params: RcptParams) -> None:
    assert event_for(None, False, T, command) == RcptTo(address, params)


def test_registered_params_reach_the_application() -> None:
    mail = event_for(EXTRA, False, [EHLO], MAIL + " x-tag=blue")
    assert isinstance(mail, MailFrom) and mail.params.extra == (("X-TAG", "blue"),)
    rcpt = event_for(EXTRA, False, T, RCPT + " X-ID")
    assert isinstance(rcpt, RcptTo) and rcpt.params.extra == (("X-ID", None),)


# --- AUTH exchanges (RFC 4954, RFC 4616) ----------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Verifier:
    """An application that accepts user/secret and records the credentials it was shown."""

    def __init__(self) -> None:
        self.seen: list[Credentials] = []

    def __call__(self, event: Event) -> Reply:
        if isinstance(event, AuthCredentials):
            self.seen.append(event.credentials)
            creds = event.credentials
            if (creds.username, creds.password) == ("user", "secret"):
                return Reply(235, "Authentication succeeded", "2.7.0")
        return event.default_reply  # type: ignore[union-attr]


AUTH_FLOWS: list[tuple[str, bytes, list[tuple[int, str | None]], list[Credentials], bool]] = [
    (
        "plain with authzid",
        b"AUTH PLAIN " + b64(b"admin\0user\0secret") + b"\r\n",
        [(235, "2.7.0")],
        [Credentials("user", "secret", "admin")],
        True,
    ),
    (
        "plain with utf8 password",
        b"AUTH PLAIN " + b64("\0user\0s\u00e9cret".encode()) + b"\r\n",
        [(535, "5.7.8")],
        [Credentials("user", "s\u00e9cret")],
        False,
    ),
    (
        "login two steps",
        b"AUTH LOGIN\r\n" + b64(b"user") + b"\r\n" + b64(b"secret") + b"\r\n",
        [(334, None), (334, None), (235, "2.7.0")],
        [Credentials("user", "secret")],
        True,
    ),
    (
        "login cancelled after username",
        b"AUTH LOGIN\r\n" + b64(b"user") + b"\r\n*\r\n",
        [(334, None), (334, None), (501, "5.0.0")],
        [],
        False,
    ),
    (
        "plain cancelled",
        b"AUTH PLAIN\r\n*\r\n",
        [(334, None), (501, "5.0.0")],
        [],
        False,
    ),
    (
        "bad base64 in a response",
        b"AUTH LOGIN\r\n" + b64(b"user") + b"\r\nnot base64!\r\n",
        [(334, None), (334, None), (501, "5.5.2")],
        [],
        False,
    ),
    (
        "bad base64 padding",
        b"AUTH LOGIN\r\ndXNlcg\r\n",
        [(334, None), (501, "5.5.2")],
        [],
        False,
    ),
    (
        "bad base64 initial response",
        b"AUTH PLAIN AGFkbWlu*\r\n",
        [(501, "5.5.2")],
        [],
        False,
    ),
    (
        "plain response not utf8",
        b"AUTH PLAIN " + b64(b"\0user\0\xff") + b"\r\n",
        [(501, "5.5.2")],
        [],
        False,
    ),
    (
        "retry after cancel",
        b"AUTH LOGIN\r\n*\r\nAUTH PLAIN " + b64(b"\0user\0secret") + b"\r\n",
        [(334, None), (501, "5.0.0"), (235, "2.7.0")],
        [Credentials("user", "secret")],
        True,
    ),
    (
        "retry after failure",
        b"AUTH PLAIN "
        + b64(b"\0user\0wrong")
        + b"\r\nAUTH PLAIN "
        + b64(b"\0user\0secret")
        + b"\r\n",
        [(535, "5.7.8"), (235, "2.7.0")],
        [Credentials("user", "wrong"), Credentials("user", "secret")],
        True,
    ),
    (
        "auth twice",
        b"AUTH PLAIN " + b64(b"\0user\0secret") + b"\r\nAUTH LOGIN\r\n",
        [(235, "2.7.0"), (503, "5.5.1")],
        [Credentials("user", "secret")],
        True,
    ),
    (
        "auth inside a transaction",
        b"MAIL FROM:<a@example.org>\r\nAUTH PLAIN " + b64(b"\0user\0secret") + b"\r\n",
        [(250, "2.1.0"), (503, "5.5.1")],
        [],
        False,
    ),
    (
        "commands after auth",
        b"AUTH PLAIN " + b64(b"\0user\0secret") + b"\r\nMAIL FROM:<a@example.org> AUTH=<>\r\n",
        [(235, "2.7.0"), (250, "2.1.0")],
        [Credentials("user", "secret")],
        True,
    ),
]


@pytest.mark.parametrize(
    ("exchange", "replies", "seen", "authenticated"),
    [flow[1:] for flow in AUTH_FLOWS],
    ids=[flow[0] for flow in AUTH_FLOWS],
)
def test_auth_flow(
    exchange: bytes,
    replies: list[tuple[int, str | None]],
    seen: list[Credentials],
    authenticated: bool,
) -> None:
    verifier = Verifier()
    script = b"EHLO c\r\n" + exchange + b"NOOP\r\n"
    driver = assert_same_in_any_split(script, config=AUTH, tls=True, answer=verifier)
    assert driver.replies() == [(250, None), *replies, (250, "2.0.0")]
    assert driver.conn.authenticated is authenticated
    assert driver.conn.state is not ServerState.AUTH  # every exchange ended
    # assert_same_in_any_split runs the script several times: the last run's credentials
    assert verifier.seen[len(verifier.seen) - len(seen) :] == seen
    for event in driver.events:  # a refused exchange never echoes what the client sent
        if isinstance(event, InvalidCommand):
            assert b64(b"user") not in event.line and b"AGFkbWlu" not in event.line


def test_login_challenges_are_the_prompts() -> None:
    driver = Driver(AUTH, tls=True)
    driver.pump()
    events = driver.feed(b"EHLO c\r\nAUTH LOGIN\r\n" + b64(b"user") + b"\r\n")
    challenges = [e for e in events if isinstance(e, AuthChallenge)]
    assert [c.challenge for c in challenges] == [b"Username:", b"Password:"]
    assert bytes(driver.output).endswith(b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n")


def test_plain_without_initial_response_gets_an_empty_challenge() -> None:
    """RFC 4954 §4: "334 " with an empty challenge, the space kept."""
    driver = Driver(AUTH, tls=True)
    driver.pump()
    driver.feed(b"EHLO c\r\nAUTH PLAIN\r\n")
    assert bytes(driver.output).endswith(b"\r\n334 \r\n")


@pytest.mark.parametrize(
    ("config", "tls", "offered"),
    [
        (AUTH, False, None),
        (AUTH, True, "AUTH PLAIN LOGIN"),
        (AUTH_PLAINTEXT, False, "AUTH PLAIN"),
        (ServerConfig(), True, None),
    ],
    ids=["tls required, plaintext", "tls required, tls", "plaintext allowed", "no mechanisms"],
)
def test_auth_advertised(config: ServerConfig, tls: bool, offered: str | None) -> None:
    hello = event_for(config, tls, [], EHLO)
    assert isinstance(hello, Hello)
    auth_lines = [line for line in hello.default_reply.lines if line.startswith("AUTH")]
    assert auth_lines == ([offered] if offered else [])


# --- BDAT sizes (RFC 3030, RFC 1870): the limit counts across chunks ---------------------

BDAT_SIZES: list[tuple[str, list[bytes], list[tuple[int, str | None]]]] = [
    ("empty message", [b"BDAT 0 LAST"], [(250, "2.0.0")]),
    ("at the limit", [b"BDAT 100 LAST"], [(250, "2.0.0")]),
    ("one over", [b"BDAT 101 LAST"], [(552, "5.3.4")]),
    ("chunks at the limit", [b"BDAT 60", b"BDAT 40 LAST"], [(250, "2.0.0"), (250, "2.0.0")]),
    ("chunks one over", [b"BDAT 60", b"BDAT 41 LAST"], [(250, "2.0.0"), (552, "5.3.4")]),
    ("empty chunks", [b"BDAT 0", b"BDAT 0", b"BDAT 0 LAST"], [(250, "2.0.0")] * 3),
    (
        "refused chunk ends the transaction",
        [b"BDAT 101", b"BDAT 1 LAST", b"RSET", b"BDAT 1 LAST"],
        [(552, "5.3.4"), (503, "5.5.1"), (250, "2.0.0"), (503, "5.5.1")],
    ),
    ("size with leading zeros", [b"BDAT 0000100 LAST"], [(250, "2.0.0")]),
]


@pytest.mark.parametrize(
    ("commands", "replies"), [c[1:] for c in BDAT_SIZES], ids=[c[0] for c in BDAT_SIZES]
)
def test_bdat_sizes(commands: list[bytes], replies: list[tuple[int, str | None]]) -> None:
    script = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
    for command in commands:
        size = int(command.split()[1]) if command.startswith(b"BDAT") else 0
        script += command + b"\r\n" + b"z" * size
    driver = assert_same_in_any_split(script + b"NOOP\r\n", config=SMALL)
    assert driver.replies()[3:-1] == replies
    assert driver.replies()[-1] == (250, "2.0.0")  # every chunk was consumed, whatever its fate
    delivered = b"".join(e.data for e in driver.events if isinstance(e, DataChunk))
    accepted = [e for e in driver.events if isinstance(e, BdatChunk) and e.reject is None]
    assert len(delivered) == (accepted[-1].size if accepted else 0)
