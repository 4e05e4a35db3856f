"""kumoq.mime_fix: KumoMTA's check_fix_conformance and MimePart rebuild, in pure Python."""

from __future__ import annotations

import pytest

from kumoq.mime import MimePart
from kumoq.mime_fix import FixSettings, check_fix, deep_conformance, rebuild
from kumoq.mime_headers import Conformance, parse_conformance

C = Conformance
NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
GOOD = (
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <1@example.com>\r\n"
    b"Mime-Version: 1.0\r\n\r\nhello\r\n"
)
ALL_FIXES = parse_conformance(
    "LINE_TOO_LONG|NAME_ENDS_WITH_SPACE|NEEDS_TRANSFER_ENCODING|NON_CANONICAL_LINE_ENDINGS"
    "|MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER|MISSING_MIME_VERSION"
)


def run(data: bytes, check: str = "", fix: str = "", **settings: object):
    return check_fix(
        data,
        parse_conformance(check),
        parse_conformance(fix),
        settings=FixSettings.from_mapping(settings),
        message_id="id@example.com",
        now=NOW,
    )


def test_a_conforming_message_is_left_alone() -> None:
    assert run(GOOD, "MISSING_COLON_VALUE|LINE_TOO_LONG", "MISSING_DATE_HEADER") == (None, None)


def test_a_checked_issue_is_reported_with_its_label() -> None:
    data = b"Subject\r\nFrom: a@b.c\r\n\r\n" + b"x" * 100 + b"\r\n"
    error, out = run(data, "MISSING_COLON_VALUE|LINE_TOO_LONG|MISSING_DATE_HEADER")
    assert error == (
        "Message has conformance issues: LINE_TOO_LONG|MISSING_COLON_VALUE|MISSING_DATE_HEADER"
    )
    assert out is None


def test_an_issue_to_fix_is_not_reported() -> None:
    error, out = run(b"Subject: x\r\n\r\nhi\r\n", "MISSING_DATE_HEADER", "MISSING_DATE_HEADER")
    assert error is None
    assert out == b"Subject: x\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nhi\r\n"


def test_missing_headers_alone_are_added_without_rebuilding() -> None:
    data = b"Subject :x\r\n\r\nbody with a line that is long enough? " + b"y" * 60 + b"\r\n"
    _, out = run(data, "", "MISSING_MESSAGE_ID_HEADER|MISSING_MIME_VERSION")
    assert out == (
        b"Subject :x\r\nMime-Version: 1.0\r\nMessage-ID: <id@example.com>\r\n" + data[12:]
    )
    _, out = run(data, "", "MISSING_MESSAGE_ID_HEADER", message_id="mine@example.org")
    assert b"Message-ID: <mine@example.org>\r\n" in (out or b"")


def test_fixing_rebuilds_the_message() -> None:
    data = (
        b"Subject :hello\nFrom: J\xc3\xb6rg <j@example.de>\nTo: a@example.com\n"
        b"X-Long: " + b"word " * 20 + b"\n\n" + b"x" * 100 + b"\ncaf\xc3\xa9\n"
    )
    error, out = run(data, "MISSING_COLON_VALUE", ALL_FIXES_TEXT)
    assert error is None
    assert out is not None
    fixed = MimePart.parse(out)
    assert deep_conformance(fixed) == C(0)
    assert out.startswith(
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"Subject: hello\r\n"
        b"From: =?utf-8?b?SsO2cmc=?= <j@example.de>\r\n"
        b"To: a@example.com\r\n"
        b"X-Long: word word"
    )
    assert b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n" in out
    assert fixed.body() == "x" * 100 + "\r\ncafé\r\n"


ALL_FIXES_TEXT = (
    "LINE_TOO_LONG|NAME_ENDS_WITH_SPACE|NEEDS_TRANSFER_ENCODING|NON_CANONICAL_LINE_ENDINGS"
    "|MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER|MISSING_MIME_VERSION"
)


def test_8bit_text_is_replaced_or_detected() -> None:
    data = b"Subject: x\r\nContent-Type: text/plain\r\n\r\ncaf\xe9\r\n"
    _, out = run(data, "", "NEEDS_TRANSFER_ENCODING")
    assert MimePart.parse(out or b"").body() == "caf\ufffd\r\n"
    _, out = run(data, "", "NEEDS_TRANSFER_ENCODING", detect_encoding=True)
    assert MimePart.parse(out or b"").body() == "café\r\n"
    _, out = run(
        data, "", "NEEDS_TRANSFER_ENCODING", detect_encoding=True,
        include_encodings=["iso-8859-7"],
    )  # fmt: skip
    assert MimePart.parse(out or b"").body() == "cafι\r\n"


def test_a_multipart_message_is_rebuilt_part_by_part() -> None:
    data = (
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n'
        b"Content-Type: text/plain\r\n\r\nh\xc3\xa9\r\n--B\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=a.bin\r\n\r\n\x00\x01\r\n--B--\r\n"
    )
    rebuilt = rebuild(MimePart.parse(data))
    out = rebuilt.to_bytes()
    again = MimePart.parse(out)
    assert again.resolve((0,)).body() == "hé\r\n"
    assert again.resolve((1,)).body() == b"\x00\x01\r\n"
    assert again.resolve((1,)).first("Content-Disposition") is not None
    assert out.isascii()
    assert b'boundary="B"' in out or b"boundary=B" in out


def test_an_unparsable_message_is_an_error_text() -> None:
    assert run(b" starts with a space\r\n\r\n", "LINE_TOO_LONG") == (
        "invalid header: header block must not start with spaces",
        None,
    )


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"detect": True}, "unknown field"),
        ({"detect_encoding": "yes"}, "must be a boolean"),
        ({"include_encodings": ["no-such-codec"]}, "unknown encoding"),
        ({"message_id": 3}, "must be a string"),
    ],
)
def test_bad_settings(settings: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FixSettings.from_mapping(settings)
