"""The pytest plugin, exercised the way its users meet it: in a pytest run of their own."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_smtp_server_fixture_receives_mail(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import smtplib
        from email.message import EmailMessage

        def test_send(smtp_server):
            msg = EmailMessage()
            msg["From"] = "app@example.org"
            msg["To"] = "user@example.com"
            msg["Subject"] = "Welcome"
            msg.set_content("Hello")
            with smtplib.SMTP(smtp_server.host, smtp_server.port) as client:
                client.send_message(msg)
            (envelope,) = smtp_server.wait_for(1)
            assert envelope.rcpt_tos == ("user@example.com",)
            assert smtp_server.messages[0]["Subject"] == "Welcome"
            smtp_server.clear()
            assert smtp_server.messages == []
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_smtp_server_options_tls_auth_limits(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import smtplib
        import pytest

        @pytest.mark.smtp_server(tls=True, auth={"app": "s3cret"}, require_auth=True,
                                 max_recipients=1, max_message_size=1000)
        def test_tls_auth(smtp_server):
            with smtplib.SMTP(smtp_server.host, smtp_server.port) as client:
                client.ehlo()
                assert client.mail("a@example.org")[0] == 530
                client.starttls(context=smtp_server.client_ssl_context)
                client.login("app", "s3cret")
                assert client.mail("a@example.org")[0] == 250
                assert client.rcpt("b@example.com")[0] == 250
                assert client.rcpt("c@example.com")[0] == 452
                assert client.data(b"x" * 2000 + b"\\r\\n")[0] in (500, 552)
            assert smtp_server.envelopes == []

        @pytest.mark.smtp_server(bogus=1)
        def test_unknown_option(smtp_server):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*unknown smtp_server options: ?'bogus'?; the options are: auth, hostname, lmtp, "
            "max_message_size, max_recipients, require_auth, tls"
        ]
    )


def test_fixtures_document_themselves(pytester: pytest.Pytester) -> None:
    """``pytest --fixtures`` says what each fixture is and what it offers, not where to look."""
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    text = result.stdout.str()
    assert "module docstring" not in text
    for fixture, words in [
        ("smtp_server", ["host", "port", "client_ssl_context", "wait_for", "smtp_server(tls=True"]),
        ("smtp_transcript", ["run_transcript", "deliveries", "TranscriptError"]),
    ]:
        section = text[text.index(fixture + " -- ") :].split("\n\n")[0]
        for word in words:
            assert word in section, (fixture, word, section)


def test_smtp_transcript_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_script(smtp_transcript):
            result = smtp_transcript('''
        S: 220 *
        C: EHLO me
        S: 250 *
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 *
        C: RCPT TO:<b@example.com>
        S: 250 2.1.5 *
        C: DATA
        S: 354 *
        C: hi
        C: .
        S: 250 2.0.0 *
        ''')
            assert result.deliveries[0].as_bytes() == b"hi\\r\\n"

        def test_mismatch_fails(smtp_transcript):
            smtp_transcript("S: 220 *\\nC: NOOP\\nS: 550 *\\n")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*TranscriptError*expected '550 *'*"])
