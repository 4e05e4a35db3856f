"""The sans-IO session's abuse limits (issue 10, defects 7 and 8; docs/security.md#limits).

- the error limit: ``421 4.7.0`` after ``max_errors_per_connection`` 4xx/5xx replies since the
  last accepted message, and nothing read after it;
- a command ended by a bare LF is answered at once: ``500 5.5.2`` under ``Deny``, read as a
  line under ``Allow`` and ``Fix``;
- a BDAT chunk is skipped, never read as commands; a BDAT without a size closes;
- RFC 5321's limits: a command line of 512 octets, a path of 256, a domain of 255;
- ``abort_data``: a message failed while it arrives keeps none of its bytes and ends in 452;
- line endings: whatever the mode, accepted content never holds a bare CR or LF before a dot,
  so that no downstream server can read an end of data in it;
- the listener keys of these limits, their defaults and their checks.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.errors import ConfigError
from kumoq.smtp import replies as R
from kumoq.smtp.replies import Reply
from kumoq.smtp.session import Event, MailFrom, MessageData, ProtocolError, RcptTo, State
from tests.unit.smtp_session_support import Peer, transaction

BAD: bytes = b"FOO\r\n"
STORAGE = "452 4.3.1 Insufficient system storage: too much message data in flight"
TOO_MANY_ERRORS = "421 4.7.0 mx.test too many errors"


# --- the error limit ---------------------------------------------------------------------------
def test_error_limit_closes_after_twenty_errors() -> None:
    peer = Peer()
    lines = peer.send(BAD * 100_000)
    assert lines == ["502 5.5.1 Command unimplemented"] * 20 + [TOO_MANY_ERRORS]
    assert peer.session.closed
    assert peer.session.buffered == 0  # what followed is dropped, not kept
    assert peer.send(b"NOOP\r\n") == []


def test_the_421_comes_at_once_not_at_the_next_command() -> None:
    peer = Peer(max_errors_per_connection=3)
    assert peer.codes(BAD * 3) == ["502 5.5.1"] * 3 + ["421 4.7.0"]


def test_every_refusal_counts_the_handlers_too() -> None:
    def decide(event: Event) -> Reply | None:
        return Reply(550, "5.1.1", "no such user") if isinstance(event, RcptTo) else None

    peer = Peer(decide, max_errors_per_connection=4)
    codes = peer.codes(
        b"MAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
        b"DATA\r\nNOOP x\r\nRCPT TO:<c@example.com>\r\n"
    )
    refusals = ["550 5.1.1", "550 5.1.1", "503 5.5.1"]  # then a NOOP, which is no error
    assert codes == ["250 2.1.0", *refusals, "250 2.0.0", "550 5.1.1", "421 4.7.0"]


def test_an_accepted_message_resets_the_count() -> None:
    peer = Peer(max_errors_per_connection=3)
    assert peer.codes(BAD * 2) == ["502 5.5.1"] * 2
    assert peer.session.errors == 2
    peer.send(transaction(b"hi\r\n.\r\n"))
    assert len(peer.messages()) == 1
    assert peer.session.errors == 0
    assert peer.codes(BAD * 2) == ["502 5.5.1"] * 2
    assert not peer.session.closed


def test_recipients_over_the_limit_are_not_errors() -> None:
    """A client that pipelines more recipients than max_recipients_per_message gets 452 for
    the rest and goes on (Postfix's smtpd_recipient_overshoot_limit)."""
    peer = Peer(max_recipients_per_message=2)
    codes = peer.codes(transaction(b"hi\r\n.\r\n", rcpts=40))
    assert codes == ["250 2.1.0", "250 2.1.5", "250 2.1.5"] + ["452 4.5.3"] * 38 + [
        "354",
        "250 2.0.0",
    ]


def test_content_failures_count() -> None:
    peer = Peer(max_errors_per_connection=2, max_message_size=10)
    codes = peer.codes(transaction(b"x" * 50 + b"\r\n.\r\n") * 2)
    assert codes[-2:] == ["552 5.3.4", "421 4.7.0"]


# --- bare LF in commands -----------------------------------------------------------------------
def test_bare_lf_command_is_refused_at_once_under_deny() -> None:
    peer = Peer()
    assert peer.send(b"EHLO client\n") == ["500 5.5.2 bare LF not allowed"]
    assert peer.session.buffered == 0


@pytest.mark.parametrize("mode", ["Allow", "Fix"])
def test_bare_lf_ends_a_command_under_allow_and_fix(mode: str) -> None:
    peer = Peer(invalid_line_endings=mode)
    assert peer.codes(b"EHLO client\nMAIL FROM:<a@b.c>\nQUIT\n") == [
        "250",
        "250 2.1.0",
        "221 2.0.0",
    ]


def test_a_crlf_line_is_still_one_line() -> None:
    peer = Peer()
    assert peer.codes(b"NOOP\r") == []
    assert peer.codes(b"\n") == ["250 2.0.0"]


# --- BDAT --------------------------------------------------------------------------------------
def test_bdat_chunk_is_skipped_not_run_as_commands() -> None:
    chunk = b"RSET\r\nMAIL FROM:<evil@example.com>\r\n"
    peer = Peer()
    peer.send(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.com>\r\n")
    lines = peer.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert lines == [
        "502 5.5.1 BDAT not supported (no CHUNKING); chunk discarded",
        "250 2.0.0 the goggles do nothing",
    ]
    assert not any(isinstance(e, MailFrom) and e.sender.local_part == "evil" for e in peer.events)
    assert peer.session.state is State.RCPT  # the transaction is as it was
    refusal = next(e for e in peer.events if isinstance(e, ProtocolError))
    assert refusal.command == f"BDAT {len(chunk)} LAST"  # for the Rejection record


def test_bdat_chunk_in_pieces() -> None:
    peer = Peer()
    assert peer.send(b"BDAT 12\r\nQUIT\r\n") == []
    assert peer.send(b"QUI") == []
    assert peer.codes(b"T\r\nQUIT\r\n") == ["502 5.5.1", "221 2.0.0"]


def test_bdat_zero() -> None:
    assert Peer().codes(b"BDAT 0 LAST\r\nNOOP\r\n") == ["502 5.5.1", "250 2.0.0"]


@pytest.mark.parametrize("line", [b"BDAT", b"BDAT x", b"BDAT -1", b"BDAT 5 FIRST", b"BDAT \xff"])
def test_bdat_without_a_size_closes(line: bytes) -> None:
    peer = Peer()
    assert peer.send(line + b"\r\nQUIT\r\n") == [
        "421 4.5.0 mx.test BDAT without a valid chunk size; closing"
    ]
    assert peer.session.closed


def test_bdat_eof_while_skipping() -> None:
    peer = Peer()
    peer.send(b"BDAT 100\r\nabc")
    peer.session.receive_data(b"")
    assert peer.send(b"") == []


# --- RFC 5321 sizes ----------------------------------------------------------------------------
def path(length: int) -> bytes:
    """A path ``<local@example.com>`` of ``length`` octets."""
    return b"<" + b"a" * (length - 14) + b"@example.com>"


def test_path_of_256_octets_is_accepted_257_is_not() -> None:
    peer = Peer()
    assert peer.codes(b"MAIL FROM:" + path(256) + b"\r\n") == ["250 2.1.0"]
    lines = peer.send(b"RCPT TO:" + path(257) + b"\r\n")
    assert lines == ["501 5.1.3 Recipient address too long: path over 256 octets"]
    peer = Peer()
    assert peer.codes(b"MAIL FROM:" + path(257) + b"\r\n") == ["501 5.1.7"]


def test_long_local_part_within_the_path_is_accepted() -> None:
    """RFC 5321's 64-octet local part is not enforced: real mail exceeds it."""
    local = b"listname-confirm+" + b"0" * 60
    peer = Peer()
    assert peer.codes(b"MAIL FROM:<" + local + b"@lists.example.org>\r\n") == ["250 2.1.0"]


def test_domain_over_255_octets() -> None:
    label = b"d" * 60 + b"."
    domain = label * 4 + b"ddddddddddddd"  # 257 octets
    peer = Peer()
    assert peer.codes(b"EHLO " + domain + b"\r\n") == ["501 5.5.4"]
    lines = peer.send(b"MAIL FROM:<@" + domain + b":a@b.c>\r\nMAIL FROM:<a@" + domain + b">\r\n")
    assert lines[-1] == "501 5.1.7 Sender address too long: domain over 255 octets"


def test_address_of_900_octets_is_refused() -> None:
    peer = Peer()
    codes = peer.codes(b"MAIL FROM:<s@example.com>\r\nRCPT TO:" + path(900) + b"\r\n")
    assert codes == ["250 2.1.0", "500 5.2.3"]  # the line is over 512 octets
    assert peer.session.recipients == ()


def test_command_line_limit_is_512_octets_with_its_crlf() -> None:
    peer = Peer()  # line_length_hard_limit is 998: it does not raise the command limit
    assert peer.codes(b"NOOP " + b"x" * 505 + b"\r\n") == ["250 2.0.0"]
    assert peer.codes(b"NOOP " + b"x" * 506 + b"\r\n") == ["500 5.2.3"]
    assert peer.codes(b"NOOP " + b"x" * 2000 + b"\r\nNOOP\r\n") == ["500 5.2.3", "250 2.0.0"]
    peer = Peer(line_length_hard_limit=100)  # a lower hard limit applies to commands too
    assert peer.codes(b"NOOP " + b"x" * 96 + b"\r\n") == ["500 5.2.3"]


def test_data_lines_keep_their_own_limit() -> None:
    peer = Peer()
    peer.send(transaction(b"y" * 998 + b"\r\n.\r\n"))
    assert len(peer.messages()[0].data) == 1000


# --- abort_data: the in-flight data budget -----------------------------------------------------
def test_abort_data_drops_the_content_and_answers_at_its_end() -> None:
    peer = Peer()
    peer.send(transaction(b"x" * 100_000))
    session = peer.session
    assert session.buffered >= 100_000
    session.abort_data(R.INSUFFICIENT_STORAGE)
    assert session.buffered <= 4
    assert peer.send(b"y" * 100_000) == []
    assert session.buffered <= 4
    assert peer.send(b"\r\n.\r\n") == [STORAGE]
    assert session.state is State.READY
    assert session.sender is None
    peer.send(transaction(b"fine\r\n.\r\n"))
    assert peer.messages()[0].data == b"fine\r\n"


def test_abort_data_right_after_the_354() -> None:
    peer = Peer()
    peer.send(transaction(b""))
    peer.session.abort_data(R.INSUFFICIENT_STORAGE)
    assert peer.codes(b".\r\n") == ["452 4.3.1"]


def test_abort_data_only_while_content_arrives() -> None:
    peer = Peer()
    with pytest.raises(Exception, match="no message is being received"):
        peer.session.abort_data(R.INSUFFICIENT_STORAGE)


# --- line endings: nothing a downstream server can read as an end of data ---------------------
BARE_BEFORE_DOT = re.compile(rb"(?:\r(?!\n)|(?<!\r)\n)\.")
LENIENT_LINE_END = re.compile(rb"\r\n|\r|\n")


def relayed(data: bytes) -> bytes:
    """The bytes a delivery writes after DATA, stuffing only dots that begin a CRLF line."""
    stuffed = (b"." if data.startswith(b".") else b"") + data.replace(b"\r\n.", b"\r\n..")
    return stuffed + b".\r\n"


def lenient_end(wire: bytes) -> int:
    """Where a server that takes a bare CR or LF as a line end reads the end of data."""
    pos = 0
    for m in LENIENT_LINE_END.finditer(wire):
        if wire[pos : m.start()] == b".":
            return m.end()
        pos = m.end()
    return -1


@pytest.mark.parametrize("mode", ["Deny", "Allow", "Fix"])
@pytest.mark.parametrize(
    "body",
    [b"a\r.\r\nb\r\n", b"a\n.\nb\r\n", b"a\r.\nb\r\n", b"a\n.\r\nb\r\n", b"a\r\r.\r\r\n"],
)
def test_no_end_of_data_inside_what_is_relayed(mode: str, body: bytes) -> None:
    peer = Peer(invalid_line_endings=mode)
    peer.send(transaction(body + b".\r\n"))
    for msg in peer.messages():
        assert BARE_BEFORE_DOT.search(msg.data) is None
        wire = relayed(msg.data)
        assert lenient_end(wire) == len(wire)


def test_allow_keeps_other_bare_line_ends() -> None:
    peer = Peer(invalid_line_endings="Allow")
    peer.send(transaction(b"a\rb\nc\r.d\r\n.\r\n"))
    assert peer.messages()[0].data == b"a\rb\nc\r\n.d\r\n"


FRAGMENTS = [b"\r", b"\n", b"\r\n", b".", b"..", b"x", b"\r\n.", b"\n.", b"\r."]


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(FRAGMENTS), max_size=30),
    mode=st.sampled_from(["Deny", "Allow", "Fix"]),
)
def test_no_end_of_data_in_any_content(pieces: list[bytes], mode: str) -> None:
    content = b"".join(pieces)
    peer = Peer(invalid_line_endings=mode)
    peer.send(transaction(content + b"\r\n.\r\n"))
    for event in peer.events:
        if isinstance(event, MessageData):
            assert BARE_BEFORE_DOT.search(event.data) is None
            wire = relayed(event.data)
            assert lenient_end(wire) == len(wire), wire
        elif isinstance(event, ProtocolError):
            assert event.reply.code >= 500


# --- the keys ----------------------------------------------------------------------------------
def test_limit_keys_defaults_and_values() -> None:
    default = EsmtpListenerConfig.from_mapping({})
    assert default.max_connections_per_ip == 64
    assert default.max_buffered_data == 256 * 1024 * 1024
    assert default.max_buffered_data_per_ip == 64 * 1024 * 1024
    assert default.max_errors_per_connection == 20
    assert default.data_timeout == 600.0
    cfg = EsmtpListenerConfig.from_mapping(
        {"max_connections_per_ip": 3, "max_buffered_data": "1 MiB", "data_timeout": "30s",
         "max_buffered_data_per_ip": 1000, "max_errors_per_connection": 5}
    )  # fmt: skip
    assert (cfg.max_buffered_data, cfg.max_buffered_data_per_ip, cfg.data_timeout) == (
        1024 * 1024,
        1000,
        30.0,
    )
    for key, bad in [("max_connections_per_ip", 0), ("max_buffered_data", 0),
                     ("max_errors_per_connection", -1), ("data_timeout", "0s")]:  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            EsmtpListenerConfig.from_mapping({key: bad})
