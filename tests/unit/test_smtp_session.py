"""Tests of the sans-IO ServerSession: greeting, EHLO, whole transactions, the caller's
decisions and the commands the session answers itself. DATA content and limits are in
test_smtp_session_data.py; the Reply value in test_smtp_replies.py; EsmtpListenerConfig in
test_smtp_listener_config.py.

``Peer`` (tests/unit/smtp_session_support.py) plays the caller: it feeds bytes, answers every
pending event through ``decide`` (accept by default) and collects the bytes the session asks to
write.
"""

from __future__ import annotations

import pytest

from kumoq.errors import LocalProtocolError
from kumoq.message import EnvelopeAddress
from kumoq.smtp import replies as R
from kumoq.smtp.replies import Reply
from kumoq.smtp.session import (
    CommandAnswered,
    ConnectionClosed,
    DataStart,
    Ehlo,
    MailFrom,
    MessageData,
    ProtocolError,
    Quit,
    RcptTo,
    Rset,
    ServerSession,
    State,
)
from tests.unit.smtp_session_support import Peer, config, transaction


# --- greeting, EHLO, a whole transaction --------------------------------------------------------
def test_greeting_and_ehlo() -> None:
    peer = Peer()
    assert bytes(peer.out) == b"220 mx.test KumoMTA\r\n"
    lines = peer.send(b"EHLO client.example\r\n")
    assert lines == [
        "250-mx.test Aloha client.example",
        "250-PIPELINING",
        "250-ENHANCEDSTATUSCODES",
        "250-8BITMIME",
        "250 SMTPUTF8",
    ]  # KumoMTA's keywords, in its order: no SIZE
    assert peer.events == [Ehlo("client.example", extended=True)]
    assert peer.session.helo_domain == "client.example"


def test_helo_and_custom_banner() -> None:
    peer = Peer(banner="ESMTP ready", max_message_size="1 MiB")
    assert bytes(peer.out) == b"220 mx.test ESMTP ready\r\n"
    assert peer.send(b"HELO client\r\n") == ["250 Hello client!"]  # KumoMTA's text
    assert peer.events == [Ehlo("client", extended=False)]
    assert not any(k.startswith("SIZE") for k in peer.session.default_extensions)


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
    mail_line = b"MAIL FROM:<s@example.com> SIZE=100 BODY=8BITMIME\r\n"
    assert peer.send(mail_line) == ["250 2.1.0 OK <s@example.com>"]  # KumoMTA's "OK <address>"
    assert peer.send(b"RCPT TO:<r1@example.com>\r\n") == ["250 2.1.5 OK <r1@example.com>"]
    assert peer.send(b"RCPT TO:<r2@example.com>\r\n") == ["250 2.1.5 OK <r2@example.com>"]
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
    assert codes[3] == "502 5.5.1"  # the message content is now read as commands (RFC 2920)
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
        (b"FOO\r\n", "502 5.5.1 Command unimplemented"),  # KumoMTA's reply to an unknown verb
        (b"EXPN list\r\n", "502 5.5.1 Command unimplemented"),
        (b"\xff\xfe\x80\r\n", "502 5.5.1 Command unimplemented"),
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
    assert codes == ["502 5.5.1", "502 5.5.1", "502 5.5.1", "502 5.5.1", "501 5.5.4", "221 2.0.0"]


def test_bare_lf_ends_a_command_refused_under_deny() -> None:
    peer = Peer()
    assert peer.codes(b"NOOP\nNOOP\r\n") == ["500 5.5.2", "250 2.0.0"]


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
