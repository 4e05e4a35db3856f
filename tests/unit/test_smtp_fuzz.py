"""Property tests: random bytes in random chunkings never break ServerSession.

Properties:
- no exception escapes, whatever the input and however it is split;
- the bytes written depend on the input, never on how it was chunked;
- outside DATA, every complete line (ended by CRLF or a bare LF) gets exactly one reply, until
  the session closes (QUIT or a 421);
- every reply is well formed: ``NNN`` with the same code on every line, CRLF-terminated.
"""

from __future__ import annotations

import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kumoq.config.listener import EsmtpListenerConfig
from kumoq.smtp.replies import Reply
from kumoq.smtp.session import (
    NEED_DATA,
    CommandAnswered,
    ConnectionClosed,
    DataStart,
    ProtocolError,
    Quit,
    ServerSession,
)

CONFIG = EsmtpListenerConfig.from_mapping(
    {"hostname": "mx.test", "max_message_size": 300, "line_length_hard_limit": 80,
     "max_recipients_per_message": 3, "max_messages_per_connection": 5,
     "max_errors_per_connection": 10**9}
)  # fmt: skip
FIX_CONFIG = EsmtpListenerConfig.from_mapping(
    {"hostname": "mx.test", "max_message_size": 300, "invalid_line_endings": "Fix"}
)
REJECT = Reply(550, "5.7.1", "no")

FRAGMENTS = [
    b"EHLO x", b"HELO y", b"MAIL FROM:<a@b.c>", b"MAIL FROM:<>", b"MAIL FROM:<a@b.c> SIZE=99999",
    b"RCPT TO:<r@b.c>", b"RCPT TO:<Postmaster>", b"DATA", b"RSET", b"NOOP", b"VRFY x", b"HELP",
    b"QUIT", b".", b"..", b"\r\n", b"\n", b"\r", b"\r\n.\r\n", b"\n.\n", b"\r.\n", b"\n.\r\n",
    b"MAIL FROM:<\xff@b.c>", b"\x00", b"\xc3\x28", b"x" * 100, b" ", b"SMTPUTF8", "ü".encode(),
]  # fmt: skip
inputs = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=20)), max_size=40).map(
    b"".join
)
decisions = st.lists(st.booleans(), min_size=1, max_size=8)
REPLY_LINE = re.compile(rb"([2-5]\d\d)([ -])[^\r\n]*\r\n")


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def run(
    chunks: list[bytes], accept: list[bool], *, config: EsmtpListenerConfig, enter_data: bool
) -> tuple[bytes, int, bool]:
    """Drive a session; returns (bytes written, replies to command lines, ended in DATA)."""
    session = ServerSession(config)
    out = bytearray()
    replies = 0
    k = 0
    for chunk in chunks:
        session.receive_data(chunk)
        while True:
            event = session.next_event()
            if event is NEED_DATA or isinstance(event, ConnectionClosed):
                break
            if isinstance(event, CommandAnswered | ProtocolError):
                out += event.reply.to_bytes()
                replies += 1
                continue
            ok = accept[k % len(accept)]
            k += 1
            if isinstance(event, DataStart) and not enter_data:
                ok = False
            if isinstance(event, Quit) or ok:
                out += session.accept()
            else:
                out += session.send(REJECT)
            replies += 1
    return bytes(out), replies, session.state.name == "DATA"


def closed(out: bytes) -> bool:
    return out.endswith(b"221 2.0.0 So long, and thanks for all the fish!\r\n") or (
        b"\r\n421 " in b"\r\n" + out
    )


def check_well_formed(out: bytes) -> None:
    pos = 0
    code = None
    while pos < len(out):
        m = REPLY_LINE.match(out, pos)
        assert m is not None, out[pos : pos + 80]
        if code is not None:
            assert m.group(1) == code
        code = m.group(1) if m.group(2) == b"-" else None
        pos = m.end()
    assert code is None  # no dangling continuation line


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=inputs, cuts=st.lists(st.integers(min_value=0), max_size=12), accept=decisions)
def test_commands_only(data: bytes, cuts: list[int], accept: list[bool]) -> None:
    """DATA is always refused, so every LF ends a command line, which must be answered."""
    whole, replies, _ = run([data], accept, config=CONFIG, enter_data=False)
    split, _, _ = run(chunked(data, cuts), accept, config=CONFIG, enter_data=False)
    assert split == whole
    check_well_formed(whole)
    if closed(whole):
        assert replies <= data.count(b"\n")
    else:
        assert replies == data.count(b"\n")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=inputs, cuts=st.lists(st.integers(min_value=0), max_size=12), accept=decisions)
def test_with_data(data: bytes, cuts: list[int], accept: list[bool]) -> None:
    whole, _, _ = run([data], accept, config=CONFIG, enter_data=True)
    split, _, _ = run(chunked(data, cuts), accept, config=CONFIG, enter_data=True)
    assert split == whole
    check_well_formed(whole)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(body=inputs, cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_message_content(body: bytes, cuts: list[int]) -> None:
    """Whatever the content, the message ends only at CRLF.CRLF and is read the same in pieces."""
    data = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<r@b.c>\r\nDATA\r\n" + body + b"\r\n.\r\nQUIT\r\n"
    for config in (CONFIG, FIX_CONFIG):
        whole, _, in_data = run([data], [True], config=config, enter_data=True)
        split, _, _ = run(chunked(data, cuts), [True], config=config, enter_data=True)
        assert split == whole
        check_well_formed(whole)
        assert not in_data
        assert whole.startswith(b"250 2.1.0 OK <a@b.c>\r\n250 2.1.5 OK <r@b.c>\r\n354 ")
