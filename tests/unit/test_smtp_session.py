"""Tests of the sans-IO ServerSession, the Reply value and EsmtpListenerConfig.

``Peer`` plays the caller: it feeds bytes, answers every pending event through ``decide``
(accept by default) and collects the bytes the session asks to write.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from kumoq.config.listener import (
    BatchHandling,
    EsmtpListenerConfig,
    InvalidLineEndings,
    TraceHeaders,
)
from kumoq.errors import ConfigError, LocalProtocolError
from kumoq.message import EnvelopeAddress
from kumoq.smtp import replies as R
from kumoq.smtp.replies import Reply
from kumoq.smtp.session import (
    NEED_DATA,
    CommandAnswered,
    ConnectionClosed,
    DataStart,
    Ehlo,
    Event,
    MailFrom,
    MessageData,
    ProtocolError,
    Quit,
    RcptTo,
    Rset,
    ServerSession,
    State,
)

Decide = Callable[[Event], Reply | None]


def config(**kw: Any) -> EsmtpListenerConfig:
    return EsmtpListenerConfig.from_mapping({"hostname": "mx.test", **kw})


class Peer:
    def __init__(self, decide: Decide | None = None, **kw: Any) -> None:
        self.session = ServerSession(config(**kw))
        self.decide = decide or (lambda event: None)
        self.events: list[Event] = []
        self.out = bytearray(self.session.greeting())

    def send(self, data: bytes) -> list[str]:
        """Feed ``data``, answer everything, return the reply lines produced."""
        start = len(self.out)
        self.session.receive_data(data)
        while True:
            event = self.session.next_event()
            if event is NEED_DATA:
                break
            self.events.append(event)
            match event:
                case CommandAnswered() | ProtocolError():
                    self.out += event.reply.to_bytes()
                case ConnectionClosed():
                    break
                case _:
                    reply = self.decide(event)
                    self.out += self.session.accept() if reply is None else self.session.send(reply)
        return bytes(self.out[start:]).decode("utf-8", "replace").splitlines()

    def codes(self, data: bytes) -> list[str]:
        """Each reply's code and enhanced code, as ``"250 2.1.0"`` (or ``"354"``)."""
        out = []
        for line in self.send(data):
            if line[3:4] == "-":
                continue
            words = line.split(" ")
            enhanced = len(words) > 1 and words[1][:1] in "245" and words[1].count(".") == 2
            out.append(" ".join(words[:2]) if enhanced else words[0])
        return out

    def messages(self) -> list[MessageData]:
        return [e for e in self.events if isinstance(e, MessageData)]


def transaction(body: bytes, rcpts: int = 1) -> bytes:
    rcpt = b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(rcpts))
    return b"MAIL FROM:<s@example.com>\r\n" + rcpt + b"DATA\r\n" + body


# --- greeting, EHLO, a whole transaction --------------------------------------------------------
def test_greeting_and_ehlo() -> None:
    peer = Peer()
    assert bytes(peer.out) == b"220 mx.test KumoMTA\r\n"
    lines = peer.send(b"EHLO client.example\r\n")
    assert lines == [
        "250-mx.test Aloha client.example",
        "250-PIPELINING",
        "250-8BITMIME",
        "250-SIZE 20971520",
        "250-ENHANCEDSTATUSCODES",
        "250 SMTPUTF8",
    ]
    assert peer.events == [Ehlo("client.example", extended=True)]
    assert peer.session.helo_domain == "client.example"


def test_helo_and_custom_banner() -> None:
    peer = Peer(banner="ESMTP ready", max_message_size="1 MiB")
    assert bytes(peer.out) == b"220 mx.test ESMTP ready\r\n"
    assert peer.send(b"HELO client\r\n") == ["250 mx.test Hello client"]
    assert peer.events == [Ehlo("client", extended=False)]
    assert "SIZE 1048576" in peer.session.default_extensions


def test_ehlo_replacement_extensions_and_rejection() -> None:
    peer = Peer()
    peer.session.receive_data(b"EHLO a\r\nEHLO b\r\n")
    assert isinstance(peer.session.next_event(), Ehlo)
    assert peer.session.accept(["PIPELINING", "X-FOO bar"]) == (
        b"250-mx.test Aloha a\r\n250-PIPELINING\r\n250 X-FOO bar\r\n"
    )
    assert isinstance(peer.session.next_event(), Ehlo)
    assert peer.session.send(Reply(550, "5.7.1", "go away")) == b"550 5.7.1 go away\r\n"
    assert peer.session.helo_domain == "a"


def test_full_transaction() -> None:
    peer = Peer()
    lines = peer.send(b"EHLO c\r\n")
    assert lines[-1] == "250 SMTPUTF8"
    assert peer.send(b"MAIL FROM:<s@example.com> SIZE=100 BODY=8BITMIME\r\n") == ["250 2.1.0 OK"]
    assert peer.send(b"RCPT TO:<r1@example.com>\r\n") == ["250 2.1.5 OK"]
    assert peer.send(b"RCPT TO:<r2@example.com>\r\n") == ["250 2.1.5 OK"]
    assert peer.send(b"DATA\r\n") == ["354 Send body; end with CRLF.CRLF"]
    assert peer.session.state is State.DATA
    assert peer.send(b"Subject: hi\r\n\r\nbody\r\n") == []
    assert peer.send(b".\r\n") == ["250 2.0.0 OK"]
    assert peer.send(b"QUIT\r\n") == ["221 2.0.0 So long, and thanks for all the fish!"]
    assert peer.session.closed
    (msg,) = peer.messages()
    assert msg.sender == EnvelopeAddress("s", "example.com")
    assert msg.recipients == (
        EnvelopeAddress("r1", "example.com"),
        EnvelopeAddress("r2", "example.com"),
    )
    assert msg.data == b"Subject: hi\r\n\r\nbody\r\n"
    mail = peer.events[1]
    assert isinstance(mail, MailFrom)
    assert mail.params.size == 100
    assert mail.params.body == "8BITMIME"
    assert peer.session.messages_received == 1


def test_pipelining_in_one_chunk() -> None:
    peer = Peer()
    codes = peer.codes(
        b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\n"
        b"RCPT TO:<b@example.com>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\nRSET\r\nQUIT\r\n"
    )
    assert codes == ["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354", "250 2.0.0", "250 2.0.0",
                     "250 2.0.0", "221 2.0.0"]  # fmt: skip
    kinds = [type(e) for e in peer.events]
    assert kinds == [Ehlo, MailFrom, RcptTo, RcptTo, DataStart, MessageData, CommandAnswered, Rset,
                     Quit, ConnectionClosed]  # fmt: skip


def test_byte_at_a_time_equals_one_chunk() -> None:
    script = (
        b"EHLO c\r\nMAIL FROM:<s@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
        b"..one\r\n.two\r\n\r\n.\r\nFOO\r\nQUIT\r\n"
    )
    whole, slow = Peer(), Peer()
    whole.send(script)
    for i in range(len(script)):
        slow.send(script[i : i + 1])
    assert slow.out == whole.out
    assert slow.events == whole.events


def test_next_event_refuses_to_run_ahead() -> None:
    session = ServerSession(config())
    session.receive_data(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.com>\r\n")
    assert isinstance(session.next_event(), MailFrom)
    assert isinstance(session.pending, MailFrom)
    with pytest.raises(LocalProtocolError):
        session.next_event()
    session.accept()
    assert isinstance(session.next_event(), RcptTo)


# --- the caller decides --------------------------------------------------------------------------
def test_rejected_mail_leaves_no_transaction() -> None:
    peer = Peer(lambda e: Reply(550, "5.7.1", "no") if isinstance(e, MailFrom) else None)
    codes = peer.codes(b"MAIL FROM:<s@example.com>\r\nRCPT TO:<r@example.com>\r\nDATA\r\n")
    assert codes == ["550 5.7.1", "503 5.5.1", "503 5.5.1"]
    assert peer.session.state is State.READY


def test_rejected_recipients_then_data_is_bad_sequence() -> None:
    peer = Peer(lambda e: Reply(450, "4.2.0", "later") if isinstance(e, RcptTo) else None)
    codes = peer.codes(transaction(b"x\r\n.\r\n"))
    assert codes[:3] == ["250 2.1.0", "450 4.2.0", "503 5.5.1"]
    assert codes[3] == "500 5.5.2"  # the message content is now read as commands (RFC 2920)
    assert peer.session.recipients == ()


def test_data_reply_is_the_callers() -> None:
    reply = Reply(250, None, "OK ids=abc def")
    peer = Peer(lambda e: reply if isinstance(e, MessageData) else None)
    assert peer.send(transaction(b"x\r\n.\r\n"))[-1] == "250 OK ids=abc def"
    rejecting = Peer(lambda e: Reply(554, "5.7.1", "spam") if isinstance(e, MessageData) else None)
    assert rejecting.codes(transaction(b"x\r\n.\r\n") + b"MAIL FROM:<s@example.com>\r\n")[-2:] == [
        "554 5.7.1",
        "250 2.1.0",
    ]
    assert rejecting.session.messages_received == 0


def test_data_start_can_be_refused() -> None:
    peer = Peer(lambda e: Reply(451, "4.3.0", "not now") if isinstance(e, DataStart) else None)
    assert peer.codes(transaction(b""))[-1] == "451 4.3.0"
    assert peer.session.state is State.RCPT


def test_421_from_the_caller_closes() -> None:
    peer = Peer(lambda e: Reply(421, "4.3.0", "bye") if isinstance(e, MailFrom) else None)
    assert peer.codes(b"MAIL FROM:<s@example.com>\r\nNOOP\r\n") == ["421 4.3.0"]
    assert peer.session.closed


def test_answer_misuse_is_a_local_error() -> None:
    session = ServerSession(config())
    with pytest.raises(LocalProtocolError):
        session.accept()
    with pytest.raises(LocalProtocolError):
        session.send(R.OK)  # unsolicited positive reply
    session.receive_data(transaction(b""))
    session.next_event()
    with pytest.raises(LocalProtocolError):
        session.send(R.START_DATA)  # 354 answers DATA only
    session.accept()
    session.next_event()
    session.accept()
    assert isinstance(session.next_event(), DataStart)
    with pytest.raises(LocalProtocolError):
        session.send(R.OK)  # DATA is accepted with 354


def test_unsolicited_421() -> None:
    session = ServerSession(config())
    assert session.send(R.idle_too_long("mx.test")) == b"421 4.3.2 mx.test idle too long\r\n"
    assert session.closed
    session.receive_data(b"NOOP\r\n")
    assert isinstance(session.next_event(), ConnectionClosed)


# --- commands the session answers itself ---------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"NOOP\r\n", "250 2.0.0 the goggles do nothing"),
        (b"NOOP hello\r\n", "250 2.0.0 the goggles do nothing"),
        (
            b"VRFY anne\r\n",
            "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
        ),
        (
            b"HELP\r\n",
            "214 2.0.0 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
        ),
        (b"FOO\r\n", "500 5.5.2 Syntax error: command unrecognized"),
        (b"EXPN list\r\n", "502 5.5.1 Command unimplemented"),
        (b"\xff\xfe\x80\r\n", "500 5.5.2 Syntax error: command unrecognized"),
        (b"MAIL FROM:<nope>\r\n", "501 5.1.7 Syntax error in sender address"),
        (
            b"MAIL FROM:<a@b.c> FOO=1\r\n",
            "555 5.5.4 MAIL FROM parameters not recognized or not implemented",
        ),
        (b"RCPT TO:<a@b.c>\r\n", "503 5.5.1 MAIL FROM must be issued first"),
        (b"DATA\r\n", "503 5.5.1 MAIL FROM must be issued first"),
    ],
)
def test_self_answered(line: bytes, expected: str) -> None:
    peer = Peer()
    assert peer.send(line) == [expected]
    assert not peer.session.closed
    assert peer.codes(b"NOOP\r\n") == ["250 2.0.0"]  # the session carries on


def test_bad_sequence() -> None:
    peer = Peer()
    assert peer.codes(b"MAIL FROM:<a@b.c>\r\nDATA\r\nMAIL FROM:<a@b.c>\r\n") == [
        "250 2.1.0",
        "503 5.5.1",
        "503 5.5.1",
    ]
    assert peer.send(b"DATA\r\n") == ["503 5.5.1 RCPT TO must be issued first"]
    peer.send(b"RCPT TO:<r@b.c>\r\n")
    assert peer.send(b"MAIL FROM:<a@b.c>\r\n") == [
        "503 5.5.1 MAIL FROM already issued; you must RSET first"
    ]


def test_protocol_errors_carry_the_command() -> None:
    peer = Peer()
    peer.send(b"RCPT TO:<a@b.c>\r\nfoo bar\r\n")
    errors = [e for e in peer.events if isinstance(e, ProtocolError)]
    assert [e.command for e in errors] == ["RCPT TO:<a@b.c>", "foo bar"]
    assert all(e.reply.code >= 500 for e in errors)


def test_garbage_and_non_utf8_do_not_kill_the_session() -> None:
    peer = Peer()
    codes = peer.codes(b"\x00\x01\x02\r\n\xc3\x28\r\n\r\n   \r\nEHLO \xff\r\nQUIT\r\n")
    assert codes == ["500 5.5.2", "500 5.5.2", "500 5.5.2", "500 5.5.2", "501 5.5.4", "221 2.0.0"]


def test_bare_lf_does_not_end_a_command() -> None:
    peer = Peer()
    assert peer.codes(b"NOOP\nNOOP\r\n") == ["500 5.5.2"]


def test_rset_and_ehlo_reset_the_transaction() -> None:
    peer = Peer()
    peer.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<r@b.c>\r\n")
    assert peer.session.recipients == (EnvelopeAddress("r", "b.c"),)
    assert peer.send(b"RSET\r\n") == ["250 2.0.0 Reset state"]
    assert peer.session.sender is None
    assert peer.session.state is State.READY
    peer.send(b"MAIL FROM:<a@b.c>\r\nEHLO again\r\n")
    assert peer.session.state is State.READY
    assert peer.codes(b"MAIL FROM:<a@b.c>\r\n") == ["250 2.1.0"]


def test_quit_closes_and_ignores_the_rest() -> None:
    peer = Peer()
    assert peer.codes(b"QUIT\r\nNOOP\r\nNOOP\r\n") == ["221 2.0.0"]
    assert peer.session.closed
    assert isinstance(peer.events[-1], ConnectionClosed)


def test_eof() -> None:
    peer = Peer()
    peer.session.receive_data(b"NOOP\r\nNOO")
    peer.session.receive_data(b"")
    assert isinstance(peer.session.next_event(), CommandAnswered)
    assert isinstance(peer.session.next_event(), ConnectionClosed)
    mid_data = Peer()
    mid_data.send(transaction(b"partial"))
    mid_data.session.receive_data(b"")
    assert isinstance(mid_data.session.next_event(), ConnectionClosed)
    assert mid_data.messages() == []


def test_postmaster_gets_the_hostname() -> None:
    peer = Peer()
    peer.send(b"MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n")
    rcpt = peer.events[-1]
    assert isinstance(rcpt, RcptTo)
    assert rcpt.recipient == EnvelopeAddress("Postmaster", "mx.test")


def test_smtputf8_carries_to_rcpt() -> None:
    peer = Peer()
    assert peer.codes("MAIL FROM:<jörg@b.c>\r\n".encode()) == ["553 5.6.7"]
    assert peer.codes("MAIL FROM:<a@b.c> SMTPUTF8\r\nRCPT TO:<jörg@b.c>\r\n".encode()) == [
        "250 2.1.0",
        "250 2.1.5",
    ]
    peer.send(b"RSET\r\nMAIL FROM:<a@b.c>\r\n")
    assert peer.codes("RCPT TO:<jörg@b.c>\r\n".encode()) == ["553 5.6.7"]


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


@pytest.mark.parametrize("body", SMUGGLING)
def test_smuggling_allowed_is_just_data(body: bytes) -> None:
    peer = Peer(invalid_line_endings="Allow")
    codes = peer.codes(transaction(body) + b"QUIT\r\n")
    assert codes == ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
    (msg,) = peer.messages()
    assert b"MAIL FROM:<evil@example.com>" in msg.data
    assert msg.data == body[: -len(b".\r\n")].replace(b"\r\n.", b"\r\n")  # only unstuffed


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


# --- Reply ---------------------------------------------------------------------------------------
def test_reply_rendering() -> None:
    assert Reply(250, "2.0.0", "OK").to_bytes() == b"250 2.0.0 OK\r\n"
    assert Reply(354, None, "go").to_bytes() == b"354 go\r\n"
    assert Reply(250, None, "").to_bytes() == b"250\r\n"
    assert Reply(550, "5.7.1", "one\ntwo\r\nthree").to_bytes() == (
        b"550-5.7.1 one\r\n550-5.7.1 two\r\n550 5.7.1 three\r\n"
    )
    assert Reply(250, None, "a\nb").to_bytes() == b"250-a\r\n250 b\r\n"
    assert Reply(250, None, "ünïcode").to_bytes() == "250 ünïcode\r\n".encode()
    assert str(Reply(451, "4.4.5", "x")) == "451 4.4.5 x"
    assert Reply(250, "2.0.0", "x") == Reply(250, "2.0.0", "x")


@pytest.mark.parametrize(
    ("code", "enhanced"), [(199, None), (600, None), (550, "4.0.0"), (250, "2.0")]
)
def test_reply_validation(code: int, enhanced: str | None) -> None:
    with pytest.raises(ValueError, match=r"reply code|enhanced"):
        Reply(code, enhanced, "x")


def test_reply_from_text() -> None:
    assert Reply.from_text(550, "5.7.1 go away") == Reply(550, "5.7.1", "go away")
    assert Reply.from_text(550, "go away") == Reply(550, None, "go away")
    assert Reply.from_text(450, "5.7.1 wrong class") == Reply(450, None, "5.7.1 wrong class")
    assert Reply.from_text(421, "4.3.2") == Reply(421, "4.3.2", "")
    reply = Reply(451, "4.3.0", "x")
    assert reply.is_transient
    assert not reply.is_positive
    assert not reply.is_permanent


def test_named_replies() -> None:
    assert R.spool_not_ready("h").to_bytes() == (
        b"421 4.3.2 h waiting for spool startup. Try again soon!\r\n"
    )
    assert R.technical_difficulties("h").to_bytes() == b"421 4.3.0 h technical difficulties\r\n"
    assert R.relaying_denied("10.0.0.1:1234").to_bytes() == (
        b"550 5.7.1 relaying not permitted for 10.0.0.1:1234\r\n"
    )
    assert R.TOO_MANY_RECIPIENTS.to_bytes() == b"452 4.5.3 too many recipients\r\n"


# --- EsmtpListenerConfig -------------------------------------------------------------------------
def test_config_defaults() -> None:
    cfg = EsmtpListenerConfig.from_mapping({})
    assert cfg.listen == "127.0.0.1:2025"
    assert cfg.address == ("127.0.0.1", 2025)
    assert cfg.hostname
    assert cfg.banner == "KumoMTA"
    assert cfg.relay_hosts == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert cfg.max_message_size == 20 * 1024 * 1024
    assert cfg.max_recipients_per_message == 1024
    assert cfg.max_messages_per_connection == 10_000
    assert cfg.client_timeout == 60.0
    assert cfg.data_processing_timeout == 300.0
    assert cfg.trace_headers == TraceHeaders()
    assert cfg.trace_headers.header_name == "X-KumoRef"
    assert cfg.deferred_spool is False
    assert cfg.invalid_line_endings is InvalidLineEndings.DENY
    assert cfg.line_length_hard_limit == 998
    assert cfg.max_connections == 32768
    assert cfg.batch_handling is BatchHandling.BIFURCATE_ALWAYS
    assert cfg.meta == {}


def test_config_values() -> None:
    cfg = EsmtpListenerConfig.from_mapping(
        {
            "listen": "[::1]:0",
            "hostname": "mx.example.com",
            "relay_hosts": ["10.0.0.0/8", "192.168.1.1"],
            "max_message_size": "1 MiB",
            "client_timeout": "10 seconds",
            "data_processing_timeout": 30,
            "trace_headers": {"received_header": False, "include_meta_names": {}},
            "invalid_line_endings": "Fix",
            "batch_handling": "BatchByDomain",
            "tls_certificate": "/etc/cert.pem",
            "tls_private_key": {"key_data": "..."},
            "meta": {"tenant": "t1"},
            "peer": {"10.0.0.0/8": {"banner": "x"}},
            "via": {},
            "max_connections": 10.0,
        }
    )
    assert cfg.address == ("::1", 0)
    assert cfg.max_message_size == 1024 * 1024
    assert cfg.client_timeout == 10.0
    assert cfg.trace_headers == TraceHeaders(received_header=False)
    assert cfg.invalid_line_endings is InvalidLineEndings.FIX
    assert cfg.batch_handling is BatchHandling.BATCH_BY_DOMAIN
    assert cfg.tls_private_key == {"key_data": "..."}
    assert cfg.meta == {"tenant": "t1"}
    assert cfg.peer == {"10.0.0.0/8": {"banner": "x"}}
    assert cfg.max_connections == 10
    assert cfg.relay_allowed("10.1.2.3")
    assert cfg.relay_allowed("192.168.1.1")
    assert not cfg.relay_allowed("127.0.0.1")
    assert cfg.relay_allowed("::ffff:10.0.0.1")
    assert not cfg.relay_allowed("not an ip")
    assert EsmtpListenerConfig.from_mapping({"listen": "localhost:25"}).address == ("localhost", 25)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"lisen": "x"}, "unknown key 'lisen'; allowed keys are: .*listen"),
        ({"listen": "127.0.0.1"}, "'127.0.0.1'"),
        ({"listen": "::1:25"}, "'::1:25'"),
        ({"listen": "[::1:25"}, "'\\[::1:25'"),
        ({"listen": "[nothost]:25"}, "nothost"),
        ({"listen": "127.0.0.1:99999"}, "99999"),
        ({"listen": 25}, "25"),
        ({"relay_hosts": ["10.0.0.1/8"]}, "10.0.0.1/8"),
        ({"max_message_size": "lots"}, "'lots'"),
        ({"max_message_size": 0}, "0"),
        ({"max_recipients_per_message": 0}, "at least 1"),
        ({"client_timeout": "soon"}, "'soon'"),
        ({"client_timeout": 0}, "positive"),
        ({"invalid_line_endings": "Maybe"}, "'Maybe'.*'Deny', 'Allow', 'Fix'"),
        ({"batch_handling": "Never"}, "'Never'"),
        (
            {"trace_headers": {"recieved_header": True}},
            "trace_headers: unknown key 'recieved_header'",
        ),
        ({"trace_headers": {"include_meta_names": [1]}}, "\\[1\\]"),
        ({"deferred_spool": "yes"}, "'yes'"),
        ({"hostname": "two words"}, "'two words'"),
        ({"meta": ["x"]}, "\\['x'\\]"),
        ({"tls_certificate": 5}, "5"),
    ],
)
def test_config_errors(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EsmtpListenerConfig.from_mapping(mapping)
