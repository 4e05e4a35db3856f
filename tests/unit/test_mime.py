"""kumoq.mime and kumoq.mime_headers: MIME trees, header blocks, parameters and dates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kumoq.mime import MimePart, encode_text
from kumoq.mime_headers import (
    Conformance,
    MimeError,
    conformance_text,
    format_rfc2822_date,
    parse_conformance,
    parse_header_block,
    parse_message_id,
    parse_mime_params,
    parse_rfc2822_date,
)

C = Conformance
MULTI = (
    b"From: a@example.com\r\n"
    b"Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n"
    b"Message-ID: <one@example.com>\r\n"
    b"Mime-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="OUT"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--OUT\r\n"
    b'Content-Type: multipart/alternative; boundary="IN"\r\n'
    b"\r\n"
    b"--IN\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"caf=C3=A9\r\n"
    b"--IN\r\n"
    b"Content-Type: text/html; charset=iso-8859-1\r\n"
    b"\r\n"
    b"<p>caf\xe9</p></body>\r\n"
    b"--IN--\r\n"
    b"--OUT\r\n"
    b"Content-Type: application/pdf; name=report.pdf\r\n"
    b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-ID: <pdf@example.com>\r\n"
    b"\r\n"
    b"JVBERi0=\r\n"
    b"--OUT--\r\n"
    b"epilogue\r\n"
)


def test_an_unchanged_tree_writes_back_its_input_byte_for_byte() -> None:
    for data in (MULTI, b"Subject: x\n\nbody\n", b"A: 1", b"\r\nno headers\r\n"):
        assert MimePart.parse(data).to_bytes() == data


def test_the_tree_and_its_decoded_bodies() -> None:
    root = MimePart.parse(MULTI)
    assert [len(root.parts), len(root.parts[0].parts)] == [2, 2]
    assert root.resolve((0, 0)).body() == "café\r\n"
    assert root.resolve((0, 1)).body() == "<p>café</p></body>\r\n"  # its charset applied
    assert root.resolve((1,)).body() == b"%PDF-"
    assert root.intro == b"preamble\r\n"
    assert root.outro == b"epilogue\r\n"
    assert root.conformance == C.NEEDS_TRANSFER_ENCODING  # the 8-bit HTML


def test_simple_structure_finds_the_primary_parts_and_attachments() -> None:
    s = MimePart.parse(MULTI).simple_structure()
    assert (s.header, s.text, s.html, s.amp_html, s.attachments) == (
        (),
        (0, 0),
        (0, 1),
        None,
        [(1,)],
    )
    plain = MimePart.parse(b"Subject: x\r\n\r\nhi\r\n").simple_structure()
    assert plain.text == ()


def test_replacing_a_body_rewrites_only_the_changed_branch() -> None:
    root = MimePart.parse(MULTI)
    root.touch((0, 0)).replace_text_body("text/plain", "new text\n")
    out = root.to_bytes()
    assert b"preamble\r\n--OUT\r\n" in out
    assert b"Content-Type: text/plain; charset=us-ascii\r\n\r\nnew text\r\n--IN\r\n" in out
    assert b"JVBERi0=\r\n--OUT--\r\nepilogue\r\n" in out  # the untouched part as it was
    again = MimePart.parse(out)
    assert again.resolve((0, 0)).body() == "new text\r\n"
    assert again.resolve((1,)).body() == b"%PDF-"


def test_replace_binary_body_is_base64() -> None:
    part = MimePart.parse(b"Content-Type: image/png\r\n\r\nold\r\n")
    part.touch(()).replace_binary_body("image/png", b"\x89PNG\r\n")
    assert part.to_bytes() == (
        b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n"
    )
    assert MimePart.parse(part.to_bytes()).body() == b"\x89PNG\r\n"


@pytest.mark.parametrize(
    ("text", "cte", "charset"),
    [
        ("plain ascii\n", None, "us-ascii"),
        ("café au lait, " * 3, "quoted-printable", "utf-8"),
        ("日本語のテキスト" * 4, "base64", "utf-8"),
        ("x" * 100, "quoted-printable", "us-ascii"),
    ],
)
def test_encode_text_picks_the_shorter_encoding(text: str, cte: str | None, charset: str) -> None:
    body, got_cte, got_charset = encode_text(text)
    assert (got_cte, got_charset) == (cte, charset)
    assert body.endswith(b"\r\n")
    part = MimePart.parse(
        b"Content-Type: text/plain; charset=" + charset.encode() + b"\r\n"
        + (b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n" if cte else b"")
        + b"\r\n" + body
    )  # fmt: skip
    # quoted-printable or none: the body ends with a line break; base64 keeps the text as is
    ending = "" if text.endswith("\n") or cte == "base64" else "\r\n"
    assert part.body() == text.replace("\n", "\r\n") + ending


def test_text_in_the_wrong_charset_falls_back_to_utf8_then_bytes() -> None:
    part = MimePart.parse(b"Content-Type: text/plain\r\n\r\ncaf\xc3\xa9")
    assert part.body_and_flags() == ("café", C.NEEDS_TRANSFER_ENCODING)
    part = MimePart.parse(b"Content-Type: text/plain\r\n\r\ncaf\xe9")
    assert part.body_and_flags() == (b"caf\xe9", C.NEEDS_TRANSFER_ENCODING)
    with pytest.raises(MimeError, match="unsupported charset no-such"):
        MimePart.parse(b"Content-Type: text/plain; charset=no-such\r\n\r\nx").body()
    with pytest.raises(MimeError, match="base64 decode"):
        MimePart.parse(b"Content-Transfer-Encoding: base64\r\n\r\nQUJDR").body()


def test_header_block_conformance() -> None:
    fields, offset, flags = parse_header_block(
        b"Subject :hi\nNoColon\r\nX-Long: " + b"y" * 80 + b"\r\n\r\nbody"
    )
    assert [(f.name, f.sep, f.value) for f in fields] == [
        ("Subject", b" :", b"hi"),
        ("NoColon", b"", b""),
        ("X-Long", b": ", b"y" * 80),
    ]
    assert offset == len(fields and b"Subject :hi\nNoColon\r\nX-Long: " + b"y" * 80 + b"\r\n\r\n")
    assert flags == (
        C.NAME_ENDS_WITH_SPACE | C.NON_CANONICAL_LINE_ENDINGS | C.MISSING_COLON_VALUE
        | C.LINE_TOO_LONG
    )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"A: 1\r\n\rB: 2\r\n", "lone CR"),
        (b" A: 1\r\n", "must not start with spaces"),
        (b"A\x01: 1\r\n", "printable US-ASCII"),
    ],
)
def test_what_is_not_a_header_block(data: bytes, match: str) -> None:
    with pytest.raises(MimeError, match=match):
        parse_header_block(data)


def test_top_level_missing_headers() -> None:
    flags = MimePart.parse(b"Subject: x\r\nMime-Version: 1.1\r\n\r\nhi\r\n").conformance
    missing = C.MISSING_DATE_HEADER | C.MISSING_MESSAGE_ID_HEADER | C.MISSING_MIME_VERSION
    assert flags == missing
    assert MimePart.parse(MULTI).conformance & missing == C(0)


def test_conformance_labels_round_trip_and_unknown_labels_are_named() -> None:
    flags = parse_conformance("LINE_TOO_LONG||MISSING_DATE_HEADER")
    assert flags == C.LINE_TOO_LONG | C.MISSING_DATE_HEADER
    assert conformance_text(flags) == "LINE_TOO_LONG|MISSING_DATE_HEADER"
    assert parse_conformance("") == C(0)
    with pytest.raises(
        ValueError, match="invalid MessageConformance flag 'spoon', possible values"
    ):
        parse_conformance("LINE_TOO_LONG|spoon")


def test_mime_params() -> None:
    p = parse_mime_params(b'Text/Plain; Charset="utf-8"; format=flowed (comment)')
    assert (p.value, p.params) == ("text/plain", {"charset": "utf-8", "format": "flowed"})
    p = parse_mime_params(
        "attachment; filename*0*=utf-8''r%C3%A9; filename*1=sum%C3%A9.pdf; size=3"
    )
    assert p.get("filename") == "résum%C3%A9.pdf"  # only the encoded continuation is decoded
    assert p.to_text() == "attachment; size=3; filename*=utf-8''r%C3%A9sum%25C3%25A9.pdf"
    assert parse_mime_params('inline; filename="a \\"b\\".txt"').get("filename") == 'a "b".txt'
    with pytest.raises(MimeError, match="no value"):
        parse_mime_params("; charset=x")


def test_message_ids_and_dates() -> None:
    assert parse_message_id(" <a.b@c.d> (comment)") == "a.b@c.d"
    assert parse_message_id("no-brackets@x") is None
    when = parse_rfc2822_date("Tue, 1 Jul 2003 10:52:37 +0200")
    assert when == datetime(2003, 7, 1, 8, 52, 37, tzinfo=UTC)
    assert parse_rfc2822_date("1 Jul 03 10:52 EDT") == datetime(2003, 7, 1, 14, 52, tzinfo=UTC)
    assert parse_rfc2822_date("not a date") is None
    assert format_rfc2822_date(1_057_049_557) == "Tue, 1 Jul 2003 08:52:37 +0000"
