"""kumoq.headers: pure header-block operations on RFC 5322 bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumoq import headers

MSG = (
    b"Received: from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice <a@example.com>\r\n"
    b"X-Campaign-Id: 42\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus =?utf-8?b?S8O2bG4=?=\r\n"
    b"x-tenant: blue\r\n"
    b"X-Campaign-Id: 43\r\n"
    b"\r\n"
    b"Subject: not a header, this is the body\r\n"
)


def test_parse_headers_fields_offsets_and_body_offset():
    fields, end = headers.parse_headers(MSG)
    assert [f.name for f in fields] == [
        "Received",
        "From",
        "X-Campaign-Id",
        "Subject",
        "x-tenant",
        "X-Campaign-Id",
    ]
    assert MSG[end:].startswith(b"\r\nSubject: not a header")
    assert fields[0].raw == b" from a\r\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000"
    assert MSG[fields[1].start : fields[1].end] == b"From: Alice <a@example.com>\r\n"


def test_parse_headers_accepts_bare_lf_and_obsolete_space_before_colon():
    fields, end = headers.parse_headers(b"From :x\nTo: y\n\nbody")
    assert [(f.name, f.value) for f in fields] == [("From", "x"), ("To", "y")]
    assert end == len(b"From :x\nTo: y\n")


def test_parse_headers_stops_at_a_line_that_is_not_a_header():
    fields, end = headers.parse_headers(b"A: 1\r\nnot a header\r\nB: 2\r\n")
    assert [f.name for f in fields] == ["A"]
    assert end == 6


def test_parse_headers_without_body_or_final_newline():
    fields, end = headers.parse_headers(b"A: 1\r\nB: 2")
    assert [f.value for f in fields] == ["1", "2"]
    assert end == len(b"A: 1\r\nB: 2")
    assert headers.parse_headers(b"") == ([], 0)


def test_first_named_is_case_insensitive_and_none_when_absent():
    assert headers.first_named(MSG, "x-campaign-id") == "42"
    assert headers.first_named(MSG, "X-TENANT") == "blue"
    assert headers.first_named(MSG, "To") is None


def test_all_named_and_all_headers():
    assert headers.all_named(MSG, "X-Campaign-ID") == ["42", "43"]
    assert headers.all_named(MSG, "missing") == []
    pairs = headers.all_headers(MSG)
    assert pairs[0] == ("Received", "from a\tby b; Mon, 1 Jan 2024 00:00:00 +0000")
    assert ("Subject", "Grüße aus Köln") in pairs


def test_folded_value_is_unfolded():
    data = b"Subject: a long\r\n  subject\r\n\tline\r\n\r\n"
    assert headers.first_named(data, "subject") == "a long  subject\tline"
    assert headers.unfold(b"a\r\n b\n\tc") == b"a b\tc"
    assert headers.unfold(b"plain") == b"plain"


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (b" =?utf-8?q?Gr=C3=BC=C3=9Fe?=", "Grüße"),
        (b" =?UTF-8?B?S8O2bG4=?=", "Köln"),
        (b" =?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # whitespace between encoded words is dropped
        (b" Hello =?iso-8859-1?q?W=F6rld?= !", "Hello Wörld !"),
        (b" =?x-unknown-charset?q?abc?=", "=?x-unknown-charset?q?abc?="),  # raw on failure
        (b"  plain text  ", "plain text"),
    ],
)
def test_decode_value(raw, decoded):
    assert headers.decode_value(raw) == decoded


def test_non_utf8_bytes_round_trip_through_surrogateescape():
    value = headers.first_named(b"X-Raw: caf\xe9\r\n\r\n", "x-raw")
    assert value is not None
    assert value.encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_append_header_goes_before_the_blank_line():
    out = headers.append_header(b"A: 1\r\n\r\nbody\r\n", "B", "2")
    assert out == b"A: 1\r\nB: 2\r\n\r\nbody\r\n"


def test_append_header_after_a_last_line_without_newline():
    assert headers.append_header(b"A: 1", "B", "2") == b"A: 1\r\nB: 2\r\n"


def test_prepend_header():
    assert headers.prepend_header(b"A: 1\r\n\r\nx", "B", "2") == b"B: 2\r\nA: 1\r\n\r\nx"


def test_format_header_validation():
    assert headers.format_header("X-A", "v\r\n") == b"X-A: v\r\n"  # trailing CRLF not doubled
    assert headers.format_header("X-A", "one\r\n two") == b"X-A: one\r\n two\r\n"  # pre-folded
    with pytest.raises(ValueError, match="invalid header name"):
        headers.format_header("Bad Name", "v")
    with pytest.raises(ValueError, match="line breaks"):
        headers.format_header("X-A", "v\r\nInjected: yes")
    with pytest.raises(ValueError, match="line breaks"):
        headers.format_header("X-A", "v\nw")


def test_format_header_encode_only_touches_non_ascii():
    assert headers.format_header("Subject", "plain", encode=True) == b"Subject: plain\r\n"
    line = headers.format_header("Subject", "Grüße", encode=True)
    assert line.isascii()
    assert b"=?utf-8?" in line
    assert headers.first_named(line + b"\r\n", "subject") == "Grüße"


def test_remove_all_named_keeps_the_rest_byte_for_byte():
    out = headers.remove_all_named(MSG, "x-campaign-id")
    assert b"X-Campaign-Id" not in out
    assert out == MSG.replace(b"X-Campaign-Id: 42\r\n", b"").replace(b"X-Campaign-Id: 43\r\n", b"")
    assert headers.remove_all_named(MSG, "absent") is MSG


def test_x_header_values_and_meta_names():
    assert headers.x_header_values(MSG) == [
        ("x_campaign_id", "42"),
        ("x_tenant", "blue"),
        ("x_campaign_id", "43"),
    ]
    assert headers.x_header_values(MSG, ["X-Tenant", "from"]) == [
        ("from", "Alice <a@example.com>"),
        ("x_tenant", "blue"),
    ]
    assert headers.meta_name_for_header("X-Foo-Bar") == "x_foo_bar"


def test_remove_x_headers():
    out = headers.remove_x_headers(MSG)
    assert [f.name for f in headers.parse_headers(out)[0]] == ["Received", "From", "Subject"]
    out = headers.remove_x_headers(MSG, ["x-tenant"])
    assert headers.all_named(out, "x-tenant") == []
    assert headers.all_named(out, "x-campaign-id") == ["42", "43"]


_text = (
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")),
        min_size=1,
        max_size=200,
    )
    .map(str.strip)
    .filter(bool)
)


@given(_text)
def test_encoded_header_round_trips(value):
    data = headers.append_header(b"From: a@b\r\n\r\nbody", "Subject", value, encode=True)
    assert data.endswith(b"\r\n\r\nbody")
    got = headers.first_named(data, "subject")
    assert got is not None
    # RFC 2047 decoding may not keep runs of white space exactly; compare word sequences.
    assert got.split() == value.split()
