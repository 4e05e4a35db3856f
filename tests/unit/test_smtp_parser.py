"""Table-driven tests of kumoq.smtp.parser (RFC 5321 paths, ESMTP parameters, verbs).

The address lists follow aiosmtpd's ``valid_mailfrom_addresses`` / ``invalid_email_addresses``
in spirit, adapted to RFC 5321's stricter path grammar (angle brackets required, no RFC 5322
comments or quoted segments inside a dot-string).
"""

from __future__ import annotations

import pytest

from kumoq.errors import RemoteProtocolError
from kumoq.message import EnvelopeAddress
from kumoq.smtp.parser import Command, EsmtpParams, parse_command

VALID_PATHS = [
    # (path as sent after "FROM:", expected local part, expected domain)
    ("<anne@example.com>", "anne", "example.com"),
    (" <anne@example.com>", "anne", "example.com"),  # lenient: space after the colon
    ("   <anne@example.com>", "anne", "example.com"),
    ("<anne.arthur@example.com>", "anne.arthur", "example.com"),
    ("<anne+promo@example.com>", "anne+promo", "example.com"),
    ("<anne-arthur@example.com>", "anne-arthur", "example.com"),
    ("<anne_arthur@example.com>", "anne_arthur", "example.com"),
    ("<_@example.com>", "_", "example.com"),
    ("<Anne@Example.COM>", "Anne", "Example.COM"),
    # IP address as domain, and address literals (RFC 5321 §4.1.3)
    ("<anne@127.0.0.1>", "anne", "127.0.0.1"),
    ("<anne@[127.0.0.1]>", "anne", "[127.0.0.1]"),
    ("<anne@[IPv6:2001:db8::1]>", "anne", "[IPv6:2001:db8::1]"),
    ("<anne@[IPv6:::1]>", "anne", "[IPv6:::1]"),
    ("<anne@[x-tag:some-content]>", "anne", "[x-tag:some-content]"),
    # source routes: MUST be accepted, SHOULD be ignored (§4.1.2, §C)
    ("<@example.org:anne@example.com>", "anne", "example.com"),
    ("<@example.net,@example.org:anne@example.com>", "anne", "example.com"),
    # strange but valid
    ("<anne@mail>", "anne", "mail"),
    ('<""@example.com>', '""', "example.com"),
    ('<" "@example.com>', '" "', "example.com"),
    ('<"anne..arthur"@example.com>', '"anne..arthur"', "example.com"),
    ('<"Fred\\ Bloggs"@example.com>', '"Fred\\ Bloggs"', "example.com"),
    ('<"Abc@def"@example.com>', '"Abc@def"', "example.com"),
    ('<"Fred Bloggs"@example.com>', '"Fred Bloggs"', "example.com"),
    ('<"<>"@example.com>', '"<>"', "example.com"),
    ('<"very.(),:;<>[]\\".VERY.\\"very@\\\\ \\"very\\".unusual"@strange.example.com>',
     '"very.(),:;<>[]\\".VERY.\\"very@\\\\ \\"very\\".unusual"', "strange.example.com"),
    ("<mailhost!anne@example.com>", "mailhost!anne", "example.com"),
    ("<anne%example.org@example.com>", "anne%example.org", "example.com"),
    ("<customer/department=shipping@example.com>", "customer/department=shipping", "example.com"),
    ("<$A12345@example.com>", "$A12345", "example.com"),
    ("<!def!xyz%abc@example.com>", "!def!xyz%abc", "example.com"),
    ("<" + "a" * 65 + "@example.com>", "a" * 65, "example.com"),  # local > 64: aiosmtpd #257
    ("<" + "b" * 242 + "@example.com>", "b" * 242, "example.com"),  # a path of 256 octets
    ("<anne@xn--bcher-kva.example>", "anne", "xn--bcher-kva.example"),
    ("<anne@a-b.c-d.example>", "anne", "a-b.c-d.example"),
]  # fmt: skip

INVALID_PATHS = [
    "<@example.com>",  # null local part
    "<johnathon@>",  # null domain part
    "anne@example.com",  # missing brackets
    "<anne@example.com",  # missing closing bracket
    "anne@example.com>",
    "<anne>",  # no domain
    "<anne@exam ple.com>",
    "< anne@example.com>",
    "<anne @example.com>",
    "<anne..arthur@example.com>",
    "<.anne@example.com>",
    "<anne.@example.com>",
    "<anne@-example.com>",
    "<anne@example-.com>",
    "<anne@example..com>",
    "<anne@example.com.>",
    "<anne@[300.0.0.1]>",
    "<anne@[IPv6:zz::1]>",
    "<anne@[IPv6::1]>",  # "IPv6:" + ":1" is not an IPv6 address
    "<anne@[127.0.0.1>",
    "Anne <anne@example.com>",
    "<anne(comment)@example.com>",  # RFC 5322 comments are not RFC 5321 paths
    "(comment)<anne@example.com>",
    '<much."more\\ unusual"@example.com>',  # quoted segment inside a dot-string
    "<Fred\\ Bloggs@example.com>",  # quoted-pair outside a quoted string
    '<"unterminated@example.com>',
    "<anne\x00@example.com>",
    "<anne@exa\tmple.com>",
    "<anne@example.com>x",  # junk glued to the path
    "<@example.org anne@example.com>",  # broken source route
    "<@example.org:>",
    "",
]


def mail(path: str, params: str = "") -> Command:
    return parse_command(f"MAIL FROM:{path}{params}".encode())


def rcpt(path: str, *, smtputf8: bool = False) -> Command:
    return parse_command(f"RCPT TO:{path}".encode(), smtputf8=smtputf8)


def hint(line: bytes, **kw: bool) -> tuple[int, str]:
    with pytest.raises(RemoteProtocolError) as info:
        parse_command(line, **kw)
    return info.value.reply_hint


@pytest.mark.parametrize(("path", "local", "domain"), VALID_PATHS)
def test_valid_mail_from(path: str, local: str, domain: str) -> None:
    cmd = mail(path)
    assert cmd.verb == "MAIL"
    assert cmd.address == EnvelopeAddress(local, domain)
    assert cmd.params == EsmtpParams()


@pytest.mark.parametrize(("path", "local", "domain"), VALID_PATHS)
def test_valid_rcpt_to(path: str, local: str, domain: str) -> None:
    assert rcpt(path).address == EnvelopeAddress(local, domain)


@pytest.mark.parametrize(("path", "local", "domain"), VALID_PATHS)
def test_valid_with_size_param(path: str, local: str, domain: str) -> None:
    cmd = mail(path, " SIZE=28113")
    assert cmd.address == EnvelopeAddress(local, domain)
    assert cmd.params.size == 28113


@pytest.mark.parametrize("path", INVALID_PATHS)
def test_invalid_sender(path: str) -> None:
    assert hint(f"MAIL FROM:{path}".encode()) == (501, "5.1.7")


@pytest.mark.parametrize("path", INVALID_PATHS)
def test_invalid_sender_with_params(path: str) -> None:
    assert hint(f"MAIL FROM:{path} SIZE=28113".encode()) == (501, "5.1.7")


@pytest.mark.parametrize("path", [*INVALID_PATHS, "<>"])
def test_invalid_recipient(path: str) -> None:
    assert hint(f"RCPT TO:{path}".encode()) == (501, "5.1.3")


def test_null_sender() -> None:
    cmd = mail("<>")
    assert cmd.address is not None
    assert cmd.address.is_null
    assert mail("<>", " SIZE=10").params.size == 10
    assert hint(b"MAIL FROM:<>junk") == (501, "5.1.7")


def test_postmaster_recipient() -> None:
    for path in ("<Postmaster>", "<postmaster>", "<POSTMASTER>"):
        cmd = rcpt(path)
        assert cmd.address is not None
        assert cmd.address.local_part.lower() == "postmaster"
        assert cmd.address.domain == ""
    assert hint(b"MAIL FROM:<Postmaster>") == (501, "5.1.7")
    assert hint(b"RCPT TO:<Postmaster>x") == (501, "5.1.3")


UTF8_PATHS = [
    "<jörg@example.com>",
    "<anne@bücher.example>",
    '<"jö rg"@example.com>',
    "<δοκιμή@παράδειγμα.δοκιμή>",
]


@pytest.mark.parametrize("path", UTF8_PATHS)
def test_utf8_paths_need_smtputf8(path: str) -> None:
    assert hint(f"MAIL FROM:{path}".encode()) == (553, "5.6.7")
    assert hint(f"RCPT TO:{path}".encode()) == (553, "5.6.7")
    cmd = mail(path, " SMTPUTF8")
    assert cmd.params.smtputf8
    assert cmd.address is not None
    assert not cmd.address.email.isascii()
    assert rcpt(path, smtputf8=True).address == cmd.address


def test_utf8_does_not_relax_the_grammar() -> None:
    assert hint("MAIL FROM:<jö rg@example.com> SMTPUTF8".encode()) == (501, "5.1.7")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:<a@b.c> SIZE=10000", EsmtpParams(size=10000)),
        (b"MAIL FROM:<a@b.c>  SIZE=10000", EsmtpParams(size=10000)),
        (b"MAIL FROM:<a@b.c> SIZE=10000 ", EsmtpParams(size=10000)),
        (b"MAIL FROM:<a@b.c> size=0", EsmtpParams(size=0)),
        (b"MAIL FROM:<a@b.c> BODY=8BITMIME", EsmtpParams(body="8BITMIME")),
        (b"MAIL FROM:<a@b.c> body=7bit", EsmtpParams(body="7BIT")),
        (b"MAIL FROM:<a@b.c> SMTPUTF8", EsmtpParams(smtputf8=True)),
        (
            b"MAIL FROM:<a@b.c> BODY=8BITMIME SIZE=5 SMTPUTF8",
            EsmtpParams(size=5, body="8BITMIME", smtputf8=True),
        ),
    ],
)
def test_mail_params(line: bytes, expected: EsmtpParams) -> None:
    assert parse_command(line).params == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:<a@b.c> FOO=BAR", (555, "5.5.4")),
        (b"MAIL FROM:<a@b.c> AUTH=<>", (555, "5.5.4")),
        (b"MAIL FROM:<a@b.c> SIZE 10000", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.c> SIZE", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.c> SIZE=", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.c> SIZE=abc", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.c> SIZE=-1", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.c> SIZE = 10000", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.c> #$%=!@#", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.c> SIZE=1 SIZE=2", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.c> BODY=BINARYMIME", (501, "5.5.4")),
        (b"MAIL FROM:<a@b.c> SMTPUTF8=yes", (501, "5.5.4")),
        (b"RCPT TO:<a@b.c> NOTIFY=NEVER", (555, "5.5.4")),
        (b"RCPT TO:<a@b.c> FOOBAR", (555, "5.5.4")),
        (b"RCPT TO:<a@b.c> SIZE=1000", (555, "5.5.4")),
        (b"RCPT TO:<a@b.c> #$%=!@#", (501, "5.5.4")),
    ],
)
def test_bad_params(line: bytes, expected: tuple[int, str]) -> None:
    assert hint(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"EHLO client.example.com", Command("EHLO", "client.example.com")),
        (b"ehlo [127.0.0.1]", Command("EHLO", "[127.0.0.1]")),
        (b"HELO client", Command("HELO", "client")),
        (b"Helo  client ", Command("HELO", "client")),
        (b"DATA", Command("DATA")),
        (b"data", Command("DATA")),
        (b"RSET", Command("RSET")),
        (b"QUIT", Command("QUIT")),
        (b"QuIt", Command("QUIT")),
        (b"NOOP", Command("NOOP")),
        (b"NOOP anything at all", Command("NOOP", "anything at all")),
        (b"VRFY anne", Command("VRFY", "anne")),
        (b"HELP", Command("HELP")),
        (b"HELP MAIL", Command("HELP", "MAIL")),
        (b"starttls", Command("STARTTLS")),
        (b"AUTH PLAIN AHUAcA==", Command("AUTH", "PLAIN AHUAcA==")),
        (b"auth login", Command("AUTH", "login")),
        (b"mail from:<a@b.c>", Command("MAIL", address=EnvelopeAddress("a", "b.c"))),
        (b"Rcpt To:<a@b.c>", Command("RCPT", address=EnvelopeAddress("a", "b.c"))),
    ],
)
def test_verbs(line: bytes, expected: Command) -> None:
    assert parse_command(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"FOO", (500, "5.5.2")),
        (b"", (500, "5.5.2")),
        (b" MAIL FROM:<a@b.c>", (500, "5.5.2")),
        (b"MAILFROM:<a@b.c>", (500, "5.5.2")),
        (b"\x80FAIL", (500, "5.5.2")),
        (b"\x80 FAIL", (500, "5.5.2")),
        (b"\xff\xfe\x00garbage", (500, "5.5.2")),
        (b"MAIL FROM:<\xff@b.c>", (501, "5.5.4")),
        (b"EXPN list", (502, "5.5.1")),
        (b"STARTTLS now", (501, "5.5.4")),
        (b"AUTH \xff", (501, "5.5.4")),
        (b"MAIL", (501, "5.5.4")),
        (b"MAIL <anne@example.com>", (501, "5.5.4")),
        (b"MAIL TO:<anne@example.com>", (501, "5.5.4")),
        (b"MAIL FROM:", (501, "5.1.7")),
        (b"MAIL FROM: Anne <anne@example.com>", (501, "5.1.7")),
        (b"RCPT", (501, "5.5.4")),
        (b"RCPT <anne@example.com>", (501, "5.5.4")),
        (b"RCPT FROM:<anne@example.com>", (501, "5.5.4")),
        (b"RCPT TO:", (501, "5.1.3")),
        (b"RCPT TO: bart <bart@example.com>", (501, "5.1.3")),
        (b"EHLO", (501, "5.5.4")),
        (b"EHLO ", (501, "5.5.4")),
        (b"EHLO two words", (501, "5.5.4")),
        (b"EHLO bad\x01ctl", (501, "5.5.4")),
        (b"HELO", (501, "5.5.4")),
        (b"DATA now", (501, "5.5.4")),
        (b"RSET please", (501, "5.5.4")),
        (b"QUIT now", (501, "5.5.4")),
    ],
)
def test_command_errors(line: bytes, expected: tuple[int, str]) -> None:
    assert hint(line) == expected


def test_error_text_is_client_friendly() -> None:
    with pytest.raises(RemoteProtocolError, match="sender address"):
        parse_command(b"MAIL FROM:<nope>")
    with pytest.raises(RemoteProtocolError, match="recipient address"):
        parse_command(b"RCPT TO:<nope>")
    with pytest.raises(RemoteProtocolError, match="not recognized"):
        parse_command(b"MAIL FROM:<a@b.c> FOO")


def test_pathological_input_is_linear() -> None:
    # Long runs that make a backtracking grammar explode must fail fast.
    for line in (
        b"MAIL FROM:<" + b"a-" * 400 + b"@" + b"a-" * 400,
        b"MAIL FROM:<" + b"a." * 400 + b"@x>",
        b'MAIL FROM:<"' + b"\\ " * 400 + b">",
        b"RCPT TO:<a@" + b"a" * 900 + b"-",
    ):
        with pytest.raises(RemoteProtocolError):
            parse_command(line)
