"""Tests of the sans-IO ServerSession's DATA phase: dot-stuffing, smuggling, size, line and
recipient limits.

``Peer`` (tests/unit/smtp_session_support.py) plays the caller: it feeds bytes, answers every
pending event through ``decide`` (accept by default) and collects the bytes the session asks to
write.
"""

from __future__ import annotations

import pytest

from kumoq.smtp.session import MailFrom, State
from tests.unit.smtp_session_support import Peer, transaction


# --- DATA: dot-stuffing, smuggling, limits -------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b".\r\n", b""),
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"..leading\r\n.\r\n", b".leading\r\n"),
        (b".x\r\n.\r\n", b"x\r\n"),  # RFC 5321 §4.5.2: the first dot always goes
        (b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\r\n..\r\n..\r\n.\r\n", b"a\r\n.\r\n.\r\n"),
        (b"mid.dle\r\nend.\r\n.\r\n", b"mid.dle\r\nend.\r\n"),
        (b"a\r\n.\r\n.\r\n", b"a\r\n"),  # the second "." line is a command (500)
    ],
)
def test_dot_unstuffing(body: bytes, expected: bytes) -> None:
    peer = Peer()
    peer.send(transaction(body))
    assert peer.messages()[0].data == expected


SMUGGLING = [
    # (content sent after DATA, up to and including the real end)
    b"Subject: x\r\n\r\nTesting\n.\nMAIL FROM:<evil@example.com>\r\n.\r\n",
    b"Subject: x\r\n\r\nTesting\r.\nMAIL FROM:<evil@example.com>\r\n.\r\n",
    b"Subject: x\r\n\r\nTesting\n.\r\nMAIL FROM:<evil@example.com>\r\n.\r\n",
    b"Subject: x\r\n\r\nTesting\r\n.\nMAIL FROM:<evil@example.com>\r\n.\r\n",
    b"Subject: x\r\n\r\nTesting\r.\r\nMAIL FROM:<evil@example.com>\r\n.\r\n",
    b"Subject: x\r\n\r\nTesting\r\n.\rMAIL FROM:<evil@example.com>\r\n.\r\n",
]


@pytest.mark.parametrize("body", SMUGGLING)
def test_smuggling_denied(body: bytes) -> None:
    peer = Peer()
    codes = peer.codes(transaction(body) + b"QUIT\r\n")
    assert codes == ["250 2.1.0", "250 2.1.5", "354", "552 5.6.0", "221 2.0.0"]
    assert not any(isinstance(e, MailFrom) and e.sender.local_part == "evil" for e in peer.events)
    assert peer.messages() == []
    assert "552 5.6.0 message data must use CRLF for line endings" in bytes(peer.out).decode()


# Under Allow the content is kept, unstuffed, except that a bare CR or LF before a dot becomes
# CRLF (docs/security.md#line-endings): the dot then begins a CRLF line, which delivery stuffs.
ALLOWED = [b"\r\n.\n", b"\r\n.\n", b"\r\n.\r\n", b"\r\n\n", b"\r\n.\r\n", b"\r\n\r"]


@pytest.mark.parametrize(("body", "middle"), list(zip(SMUGGLING, ALLOWED, strict=True)))
def test_smuggling_allowed_is_just_data(body: bytes, middle: bytes) -> None:
    peer = Peer(invalid_line_endings="Allow")
    codes = peer.codes(transaction(body) + b"QUIT\r\n")
    assert codes == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
    (msg,) = peer.messages()
    assert msg.data == b"Subject: x\r\n\r\nTesting" + middle + b"MAIL FROM:<evil@example.com>\r\n"


@pytest.mark.parametrize("body", SMUGGLING)
def test_smuggling_fixed_is_just_data(body: bytes) -> None:
    peer = Peer(invalid_line_endings="Fix")
    codes = peer.codes(transaction(body) + b"QUIT\r\n")
    assert codes == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
    (msg,) = peer.messages()
    assert b"MAIL FROM:<evil@example.com>\r\n" in msg.data
    assert msg.data.count(b"\r\n") == msg.data.count(b"\n") == msg.data.count(b"\r")


def test_fix_normalizes_line_endings() -> None:
    peer = Peer(invalid_line_endings="Fix")
    peer.send(transaction(b"a\nb\rc\r\n\n\r\n.\r\n"))
    assert peer.messages()[0].data == b"a\r\nb\r\nc\r\n\r\n\r\n"


def test_message_too_big() -> None:
    peer = Peer(max_message_size=100)
    body = b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\n"
    assert peer.codes(transaction(body))[-1] == "552 5.3.4"
    assert peer.messages() == []
    assert peer.session.state is State.READY
    assert peer.codes(transaction(b"small\r\n.\r\n"))[-1] == "250 2.0.0"


def test_message_at_the_limit_is_accepted() -> None:
    body = b"x" * 98 + b"\r\n"  # 100 bytes with its CRLF
    peer = Peer(max_message_size=100)
    assert peer.codes(transaction(body + b".\r\n"))[-1] == "250 2.0.0"
    over = Peer(max_message_size=99)
    assert over.codes(transaction(body + b".\r\n"))[-1] == "552 5.3.4"


def test_message_too_big_streamed_keeps_memory_bounded() -> None:
    peer = Peer(max_message_size=1000)
    peer.send(transaction(b""))
    line = b"z" * 78 + b"\r\n"
    for _ in range(200):
        assert peer.send(line * 10) == []
        assert peer.session.buffered <= 1000 + 800 + 4
    # the terminator split across chunks is still found after the drop
    assert peer.send(b"\r\n.") == []
    assert [line[:9] for line in peer.send(b"\r\n")] == ["552 5.3.4"]
    assert peer.session.state is State.READY


def test_size_param_over_the_limit() -> None:
    peer = Peer(max_message_size=1000)
    assert peer.send(b"MAIL FROM:<a@b.c> SIZE=1001\r\n") == [
        "552 5.3.4 message size exceeds fixed maximum message size"
    ]
    assert peer.codes(b"MAIL FROM:<a@b.c> SIZE=1000\r\n") == ["250 2.1.0"]


def test_data_line_too_long() -> None:
    peer = Peer(line_length_hard_limit=30)
    ok, long = b"x" * 30, b"x" * 31
    assert peer.codes(transaction(ok + b"\r\n.\r\n"))[-1] == "250 2.0.0"
    assert peer.send(transaction(long + b"\r\n.\r\n"))[-1] == "500 5.2.3 line too long"
    assert peer.send(transaction(b"a\r\n" + long + b"\r\nb\r\n.\r\n"))[-1] == (
        "500 5.2.3 line too long"
    )
    # a stuffed dot does not count against the limit
    assert peer.codes(transaction(b"." + ok + b"\r\n.\r\n"))[-1] == "250 2.0.0"
    assert [m.data for m in peer.messages()] == [ok + b"\r\n", ok + b"\r\n"]
    assert peer.session.state is State.READY


def test_command_line_too_long() -> None:
    peer = Peer(line_length_hard_limit=20)
    assert peer.send(b"NOOP " + b"x" * 15 + b"\r\n") == ["250 2.0.0 the goggles do nothing"]
    assert peer.send(b"NOOP " + b"x" * 16 + b"\r\n") == ["500 5.2.3 line too long"]
    # streamed: dropped while it arrives, answered once when its CRLF comes
    assert peer.send(b"NOOP " + b"x" * 100) == []
    assert peer.session.buffered <= 22
    assert peer.send(b"x" * 100 + b"\r") == []
    assert peer.send(b"\nNOOP\r\n") == [
        "500 5.2.3 line too long",
        "250 2.0.0 the goggles do nothing",
    ]


def test_max_recipients_per_message() -> None:
    peer = Peer(max_recipients_per_message=2)
    codes = peer.codes(transaction(b"x\r\n.\r\n", rcpts=3))
    assert codes == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3", "354", "250 2.0.0"]
    assert len(peer.messages()[0].recipients) == 2


def test_max_messages_per_connection() -> None:
    peer = Peer(max_messages_per_connection=3)
    assert peer.codes(transaction(b"x\r\n.\r\n", rcpts=2))[-1] == "250 2.0.0"
    codes = peer.codes(transaction(b"x\r\n.\r\n", rcpts=2))
    assert codes[:3] == ["250 2.1.0", "250 2.1.5", "451 4.5.3"]
    assert peer.session.state is State.READY
    # the next transaction cannot take a single recipient: 421 and close
    codes = peer.codes(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.com>\r\nNOOP\r\n")
    assert codes == ["250 2.1.0", "421 4.5.3"]
    assert peer.session.closed
    assert "421 4.5.3 mx.test too many recipients on this connection" in bytes(peer.out).decode()
