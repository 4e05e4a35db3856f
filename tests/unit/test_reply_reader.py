"""kumoq.delivery.reply_reader: client-side reply parsing, independent of how bytes are chunked."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumoq.delivery.reply_reader import MAX_LINE, MAX_REPLY, ReplyReader, ServerReply
from kumoq.errors import RemoteProtocolError

EHLO = (
    b"250-mx.example.com Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
    b"250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n"
)


def test_single_line_reply() -> None:
    assert ReplyReader().feed(b"220 mx.example.com ESMTP\r\n") == [
        ServerReply(220, ("mx.example.com ESMTP",))
    ]


def test_multi_line_reply_keeps_each_line() -> None:
    (reply,) = ReplyReader().feed(EHLO)
    assert reply.code == 250
    assert reply.lines == (
        "mx.example.com Hello",
        "PIPELINING",
        "SIZE 10240000",
        "STARTTLS",
        "ENHANCEDSTATUSCODES",
    )
    assert reply.text.split("\n")[1] == "PIPELINING"


def test_pipelined_replies_in_one_chunk_all_come_out_in_order() -> None:
    data = b"250 2.0.0 reset\r\n250 2.1.0 sender ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n"
    assert [r.code for r in ReplyReader().feed(data)] == [250, 250, 550, 354]


def test_partial_reply_waits_for_the_rest() -> None:
    reader = ReplyReader()
    assert reader.feed(b"250-first\r\n250 sec") == []
    assert reader.pending
    assert reader.feed(b"ond\r\n") == [ServerReply(250, ("first", "second"))]
    assert not reader.pending


def test_bare_code_and_lf_only_line_endings() -> None:
    assert ReplyReader().feed(b"250\n221 bye\n") == [
        ServerReply(250, ("",)),
        ServerReply(221, ("bye",)),
    ]


@pytest.mark.parametrize(
    "data",
    [b"hello there\r\n", b"25 short\r\n", b"250x bad separator\r\n", b"2a0 letters\r\n"],
)
def test_malformed_line_is_a_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed reply line"):
        ReplyReader().feed(data)


def test_continuation_with_another_code_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="does not continue"):
        ReplyReader().feed(b"250-first\r\n550 second\r\n")


def test_overlong_line_is_refused_even_without_a_line_ending() -> None:
    with pytest.raises(RemoteProtocolError, match="longer than"):
        ReplyReader().feed(b"250 " + b"x" * MAX_LINE)


def test_overlong_reply_is_refused() -> None:
    line = b"250-" + b"x" * 1000 + b"\r\n"
    with pytest.raises(RemoteProtocolError, match="reply longer than"):
        ReplyReader().feed(line * (MAX_REPLY // len(line) + 1))


def test_non_utf8_text_survives() -> None:
    (reply,) = ReplyReader().feed(b"550 caf\xe9\r\n")
    assert reply.lines[0].encode("utf-8", "surrogateescape") == b"caf\xe9"


STREAM = EHLO + b"250 ok\r\n354 go\r\n250-a\r\n250-b\r\n250 c\r\n421 4.3.2 bye\r\n"
EXPECTED = ReplyReader().feed(STREAM)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking_gives_the_same_replies(cuts: list[int]) -> None:
    reader = ReplyReader()
    got: list[ServerReply] = []
    edges = [0, *sorted(cuts), len(STREAM)]
    for a, b in itertools.pairwise(edges):
        got += reader.feed(STREAM[a:b])
    assert got == EXPECTED
    assert [r.code for r in EXPECTED] == [250, 250, 354, 250, 421]
    assert not reader.pending
