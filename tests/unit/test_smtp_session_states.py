"""A hypothesis state machine drives ServerSession through its states with every command.

The machine keeps its own model of the session (state, sender, recipients, recipients accepted on
the connection) and, in every state -- connected, after EHLO/HELO, after MAIL, after RCPT, in
DATA, after RSET, closed -- sends every kind of line: each SMTP verb, the ones kumoq does not
implement (BDAT with its chunk, EXPN, STARTTLS, AUTH), unknown verbs, empty and over-long lines,
bare CR, NUL and 8-bit bytes, whole or in random pieces. The handler's decisions are random too.
After each step it checks that:

- a complete command line got exactly one reply (none while the line is incomplete, none once
  closed), and no exception escaped;
- the reply is coded (``NNN-`` ... ``NNN``, the same code on every line) and, when the session
  wrote it, carries an enhanced status code unless it is the greeting, the EHLO/HELO answer or
  the 354;
- a reply the handler chose is written as it is;
- the event fits the state (MAIL only with no transaction, RCPT only after MAIL, DATA only after
  RCPT), and a well-formed command gets its event or the sequence or limit error it deserves;
- the state the session reports after the reply follows from the reply: a positive answer to
  MAIL opens a transaction with that sender, a negative one leaves everything as it was, a 421
  closes, and so on.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Final

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kumoq.config.listener import EsmtpListenerConfig
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

MAX_RCPTS: Final = 3
MAX_MESSAGES: Final = 8
LINE_LIMIT: Final = 80
CONFIG: Final = EsmtpListenerConfig.from_mapping(
    {"hostname": "mx.test", "max_message_size": 300, "line_length_hard_limit": LINE_LIMIT,
     "max_recipients_per_message": MAX_RCPTS, "max_messages_per_connection": MAX_MESSAGES,
     "max_errors_per_connection": 10**9}  # the error limit has its own tests (test_smtp_limits)
)  # fmt: skip

# Well-formed commands, by the verb they are.
WELL_FORMED: Final[list[tuple[str, bytes]]] = [
    ("EHLO", b"EHLO client.test"), ("EHLO", b"EHLO [192.0.2.1]"), ("HELO", b"HELO client.test"),
    ("MAIL", b"MAIL FROM:<a@b.c>"), ("MAIL", b"MAIL FROM:<>"),
    ("MAIL", b"mail from:<a@b.c> SIZE=100 BODY=8BITMIME"),
    ("MAIL", "MAIL FROM:<ü@b.c> SMTPUTF8".encode()),
    ("RCPT", b"RCPT TO:<r@b.c>"), ("RCPT", b"RCPT TO:<Postmaster>"), ("RCPT", b"rcpt to:<x@y.z>"),
    ("DATA", b"DATA"), ("RSET", b"RSET"), ("QUIT", b"QUIT"), ("NOOP", b"NOOP"),
    ("NOOP", b"NOOP anything"), ("VRFY", b"VRFY someone"), ("HELP", b"HELP"),
]  # fmt: skip
# Lines that are refused in every state (unimplemented, unknown, malformed, too long).
REFUSED: Final[list[bytes]] = [
    b"EXPN list", b"BDAT 4 LAST\r\nQU", b"BDAT 0", b"STARTTLS", b"AUTH PLAIN AHVzZXIAcGFzcw==",
    b"AUTH LOGIN", b"XCLIENT ADDR=192.0.2.1", b"FOO bar", b"", b" ", b"x" * (LINE_LIMIT + 1),
    b"y" * 5000, b"MAIL FROM:<a@b.c>\rRCPT TO:<r@b.c>", b"NOOP\rDATA", b"HELP\r", b"NOOP\x00",
    b"\x00", b"\xff\xfe\xfd", b"EHLO \xff", b"EHLO", b"HELO", b"MAIL FROM:<\xff@b.c>",
    b"MAIL FROM:<a@b.c> FOO=bar", b"QUIT now", b"RSET x", b"DATA x", b"RCPT TO:<>",
]  # fmt: skip
VERBS: Final = [
    b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"DATA", b"RSET", b"NOOP", b"QUIT",
    b"VRFY", b"EXPN", b"HELP", b"STARTTLS", b"AUTH", b"XYZZY",
]  # fmt: skip

EOF: Final = "<the peer closes>"
SHUTDOWN: Final = "<the listener drains>"
REFUSED_VERB: Final = ""  # a line refused in every state

Action = tuple[str | None, bytes]  # (the verb of a well-formed line, EOF, SHUTDOWN, "", or None)


def weighted(*options: tuple[int, list[Action]]) -> st.SearchStrategy[Action]:
    """Each list's actions, drawn ``weight`` times as often as one of weight 1; with random
    lines beside them."""
    pool = [action for weight, group in options for _ in range(weight) for action in group]
    return st.one_of(st.sampled_from(pool), st.tuples(st.none(), random_lines))


def _verbs(*verbs: str) -> list[Action]:
    return [(v, line) for v, line in WELL_FORMED if v in verbs]


# 8-bit, NUL and bare CR, but never an LF (a bare LF ends a command line): one line each.
line_bytes = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"\r").rstrip(b"\r"))
random_lines = st.builds(lambda verb, arg: verb + b" " + arg, st.sampled_from(VERBS), line_bytes)
REFUSED_ACTIONS: Final[list[Action]] = [(REFUSED_VERB, line) for line in REFUSED]
# Mostly well-formed commands, so that every state is reached and stays reachable; closing the
# session (QUIT, the peer, a drain) is rare, since nothing happens after it. Lines of unknown
# validity (verb None) get only the generic checks.
actions = weighted(
    (6, _verbs("MAIL", "RCPT", "DATA")),
    (4, _verbs("EHLO", "HELO", "RSET", "NOOP", "VRFY", "HELP")),
    (1, _verbs("QUIT")),
    (1, REFUSED_ACTIONS),
    (1, [(EOF, b""), (SHUTDOWN, b"")]),
)
body_lines = weighted(
    (6, [(None, line) for _, line in WELL_FORMED]),
    (2, [(None, line) for line in REFUSED]),
    (1, [(EOF, b""), (SHUTDOWN, b"")]),
)
cuts = st.lists(st.integers(min_value=0, max_value=6000), max_size=3)
ADVANCE: Final = {State.READY: ["MAIL"], State.MAIL: ["RCPT"], State.RCPT: ["DATA", "RCPT"]}

ACCEPT: Final = "accept"
ACCEPT_OWN: Final = "accept, with the policy's own EHLO extensions"
decisions = st.sampled_from(
    [ACCEPT] * 6
    + [
        ACCEPT_OWN,
        Reply(250, "2.0.0", "fine by the policy"),
        Reply(451, "4.3.0", "try later"),
        Reply(550, "5.7.1", "go away"),
        Reply(554, None, "a kumo.reject without an enhanced code"),
        Reply(421, "4.3.2", "mx.test shutting down"),
    ]
)

REPLY_LINE: Final = re.compile(rb"([2-5]\d\d)([ -])([^\r\n]*)\r\n")
ENHANCED: Final = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?: |$)")
POSITIVE_STATE: Final[dict[type, State]] = {
    Ehlo: State.READY, MailFrom: State.MAIL, RcptTo: State.RCPT, DataStart: State.DATA,
    MessageData: State.READY, Rset: State.READY, Quit: State.CLOSED,
}  # fmt: skip
EVENT_OF: Final[dict[str, type]] = {
    "EHLO": Ehlo, "HELO": Ehlo, "MAIL": MailFrom, "RCPT": RcptTo, "DATA": DataStart,
    "RSET": Rset, "QUIT": Quit, "NOOP": CommandAnswered, "VRFY": CommandAnswered,
    "HELP": CommandAnswered,
}  # fmt: skip


@dataclass
class Answer:
    """One reply the session asked to write, with what it answered."""

    event: Event
    wire: bytes
    chosen: Reply | None  # the handler's own reply; None when the session wrote it


@dataclass
class Model:
    state: State = State.READY
    sender: EnvelopeAddress | None = None
    recipients: list[EnvelopeAddress] = field(default_factory=list)
    accepted_rcpts: int = 0
    messages: int = 0


def pieces(data: bytes, cut_points: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cut_points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def parse_reply(wire: bytes) -> tuple[int, list[str]]:
    """The code and line texts of exactly one complete reply."""
    pos, code, texts = 0, None, []
    while True:
        m = REPLY_LINE.match(wire, pos)
        assert m is not None, wire[pos : pos + 80]
        assert code is None or int(m.group(1)) == code, wire
        code = int(m.group(1))
        texts.append(m.group(3).decode("utf-8", "replace"))
        pos = m.end()
        if m.group(2) == b" ":
            break
    assert pos == len(wire), f"more than one reply: {wire!r}"
    return code, texts


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.session = ServerSession(CONFIG)
        self.model = Model()
        code, texts = parse_reply(self.session.greeting())
        assert code == 220
        assert not ENHANCED.match(texts[0])

    # --- driving -------------------------------------------------------------------------------
    def answer(self, event: Event, decision: str | Reply) -> Answer:
        session = self.session
        if isinstance(event, CommandAnswered | ProtocolError):
            return Answer(event, event.reply.to_bytes(), None)
        if isinstance(decision, Reply) and isinstance(event, DataStart) and decision.code < 300:
            decision = Reply(354, None, "go ahead, says the policy")
        if isinstance(decision, Reply):
            return Answer(event, session.send(decision), decision)
        if isinstance(event, Ehlo) and decision == ACCEPT_OWN:
            return Answer(event, session.accept(["PIPELINING", "SIZE 300"]), None)
        return Answer(event, session.accept(), None)

    def feed(self, data: bytes, cut_points: list[int], decision: str | Reply) -> list[Answer]:
        """Feed ``data`` in pieces; after each piece, answer every event. An incomplete line
        gets no reply."""
        answers: list[Answer] = []
        chunks = pieces(data, cut_points)
        for i, chunk in enumerate(chunks):
            self.session.receive_data(chunk)
            while True:
                event = self.session.next_event()
                if event is NEED_DATA or isinstance(event, ConnectionClosed):
                    break
                answers.append(self.answer(event, decision))
            if i < len(chunks) - 1:
                assert answers == [], "a reply before the line was complete"
        return answers

    def check_reply(self, answer: Answer) -> int:
        code, texts = parse_reply(answer.wire)
        if answer.chosen is not None:
            assert answer.wire == answer.chosen.to_bytes()
        elif code // 100 != 3 and not (isinstance(answer.event, Ehlo) and code == 250):
            for text in texts:
                m = ENHANCED.match(text)
                assert m is not None, f"no enhanced status code: {answer.wire!r}"
                assert int(m.group(1)) == code // 100
        return code

    # --- the model -----------------------------------------------------------------------------
    def expect(self, verb: str | None, answer: Answer) -> None:
        """What a command line must produce in the model's state."""
        event, state, model = answer.event, self.model.state, self.model
        if isinstance(event, MailFrom):
            assert state is State.READY
        elif isinstance(event, RcptTo):
            assert state in (State.MAIL, State.RCPT)
            assert len(model.recipients) < MAX_RCPTS
            assert model.accepted_rcpts < MAX_MESSAGES
        elif isinstance(event, DataStart):
            assert state is State.RCPT
        elif isinstance(event, MessageData):
            raise AssertionError("message data from a command line")
        if verb is None:
            return
        if verb == REFUSED_VERB:
            assert isinstance(event, ProtocolError)
            assert event.reply.code >= 500
            return
        wanted = EVENT_OF[verb]
        if verb == "MAIL" and state is not State.READY:
            assert event == ProtocolError(self.session.command, R.BAD_SEQUENCE_MAIL_NESTED)
        elif verb == "RCPT" and state is State.READY:
            assert event == ProtocolError(self.session.command, R.BAD_SEQUENCE_NEED_MAIL)
        elif verb == "RCPT" and len(model.recipients) >= MAX_RCPTS:
            assert isinstance(event, ProtocolError)
            assert event.reply == R.TOO_MANY_RECIPIENTS
        elif verb == "RCPT" and model.accepted_rcpts >= MAX_MESSAGES:
            assert isinstance(event, ProtocolError)
            assert event.reply.enhanced == "4.5.3"
            assert event.reply.code == (451 if model.recipients else 421)
        elif verb == "DATA" and state is not State.RCPT:
            assert isinstance(event, ProtocolError)
            assert (event.reply.code, event.reply.enhanced) == (503, "5.5.1")
        else:
            assert type(event) is wanted, (verb, state, event)

    def apply(self, answer: Answer, code: int) -> None:
        """Move the model as the reply says, then compare with what the session reports."""
        model, session, event = self.model, self.session, answer.event
        before = (model.sender, list(model.recipients))
        positive = code < 400 and not isinstance(answer.event, CommandAnswered | ProtocolError)
        if positive:
            model.state = POSITIVE_STATE[type(event)]
            if isinstance(event, MailFrom):
                model.sender, model.recipients = event.sender, []
            elif isinstance(event, RcptTo):
                model.recipients.append(event.recipient)
                model.accepted_rcpts += 1
            elif isinstance(event, MessageData):
                assert (event.sender, list(event.recipients)) == before
                model.messages += 1
            if isinstance(event, Ehlo | Rset | MessageData):
                model.sender, model.recipients = None, []
            if isinstance(event, Ehlo):
                assert session.helo_domain == event.domain
        elif isinstance(event, MessageData) or (
            isinstance(event, ProtocolError) and model.state is State.DATA
        ):
            model.state, model.sender, model.recipients = State.READY, None, []
        elif isinstance(event, Quit):
            model.state = State.CLOSED
        if code == 421:
            model.state = State.CLOSED
        assert session.state is model.state, (answer, model.state)
        assert session.messages_received == model.messages
        if model.state is not State.CLOSED:
            assert session.sender == model.sender
            assert list(session.recipients) == model.recipients

    # --- rules ---------------------------------------------------------------------------------
    def interrupt(self, kind: str | None) -> bool:
        """The peer closing, or the listener draining; True when ``kind`` was one of them."""
        if kind == EOF:
            self.session.receive_data(b"")
            assert isinstance(self.session.next_event(), ConnectionClosed)
            self.session.close()  # as the connection adapter does
        elif kind == SHUTDOWN:
            if not self.session.closed:  # an unsolicited 421 between commands
                wire = self.session.send(R.shutting_down("mx.test"))
                assert wire == b"421 4.3.2 mx.test shutting down\r\n"
        else:
            return False
        self.model.state = State.CLOSED
        return True

    @precondition(lambda self: self.model.state is not State.DATA)
    @rule(action=actions, cut_points=cuts, decision=decisions)
    def command(self, action: Action, cut_points: list[int], decision: str | Reply) -> None:
        self.send_command(action, cut_points, decision)

    @precondition(lambda self: self.model.state in ADVANCE)
    @rule(pick=st.integers(0, 11), cut_points=cuts, decision=decisions)
    def advance(self, pick: int, cut_points: list[int], decision: str | Reply) -> None:
        """The command that takes the transaction a step further, so that DATA is reached."""
        verbs = ADVANCE[self.model.state]
        verb = verbs[pick % len(verbs)]
        choices = [line for v, line in WELL_FORMED if v == verb]
        self.send_command((verb, choices[pick % len(choices)]), cut_points, decision)

    def send_command(self, action: Action, cut_points: list[int], decision: str | Reply) -> None:
        verb, text = action
        if self.interrupt(verb):
            return
        answers = self.feed(text + b"\r\n", cut_points, decision)
        if self.model.state is State.CLOSED:
            assert answers == []
            assert self.session.closed
            return
        assert len(answers) == 1, answers
        code = self.check_reply(answers[0])
        self.expect(verb, answers[0])
        self.apply(answers[0], code)

    @precondition(lambda self: self.model.state is State.DATA)
    @rule(action=body_lines, cut_points=cuts)
    def body_line(self, action: Action, cut_points: list[int]) -> None:
        """Any line is content in DATA, except the lone dot that ends it."""
        if self.interrupt(action[0]):
            return
        text = b".." if action[1] == b"." else action[1]
        assert self.feed(text + b"\r\n", cut_points, ACCEPT) == []
        assert self.session.state is State.DATA

    @precondition(lambda self: self.model.state is State.DATA)
    @rule(cut_points=cuts, decision=decisions)
    def end_of_data(self, cut_points: list[int], decision: str | Reply) -> None:
        answers = self.feed(b".\r\n", cut_points, decision)
        assert len(answers) == 1, answers
        event = answers[0].event
        assert isinstance(event, MessageData | ProtocolError)
        if isinstance(event, ProtocolError):
            assert event.reply.code >= 500  # too big, a line too long, bare LF under Deny
        code = self.check_reply(answers[0])
        self.apply(answers[0], code)

    @invariant()
    def consistent(self) -> None:
        session, model = self.session, self.model
        assert session.pending is None
        assert session.state is model.state
        if model.state is State.READY:
            assert session.sender is None
            assert session.recipients == ()
        elif model.state is State.MAIL:
            assert session.sender is not None
            assert session.recipients == ()
        elif model.state in (State.RCPT, State.DATA):
            assert session.sender is not None
            assert 1 <= len(session.recipients) <= MAX_RCPTS


TestSessionStates = SessionMachine.TestCase
