"""The sans-IO ESMTP server state machine (h11 style): bytes in, events out, replies as bytes.

Use::

    session = ServerSession(config)
    write(session.greeting())
    session.receive_data(chunk)          # b"" means the peer closed
    while (event := session.next_event()) is not NEED_DATA:
        match event:
            case CommandAnswered() | ProtocolError(): write(event.reply.to_bytes())
            case MailFrom(): write(session.accept())          # or session.send(reject_reply)
            ...

Events that need a decision (``Ehlo``, ``MailFrom``, ``RcptTo``, ``DataStart``, ``MessageData``,
``Rset``, ``Quit``) stay *pending* until the caller answers with ``accept()`` or ``send(reply)``;
``next_event()`` refuses to run ahead of an unanswered event, so pipelined commands are decided
in order. Everything else (NOOP, VRFY, HELP, syntax and sequence errors, limits, DATA body
problems) the session answers itself with a ``CommandAnswered`` or ``ProtocolError`` event
carrying the reply to write. A reply with code 421 closes the session.

Only ``\\r\\n.\\r\\n`` ends DATA; reading the content is ``smtp/content.py``'s business.

Abuse limits (docs/security.md#limits): a command line is at most 512 octets with its CRLF (or
``line_length_hard_limit``, if lower); a command ended by a bare LF is refused with
``500 5.5.2`` under ``Deny`` and read as a line otherwise; a ``BDAT`` chunk is skipped, never
read as commands; after ``max_errors_per_connection`` 4xx/5xx replies since the last accepted
message the session answers ``421 4.7.0`` and closes. ``abort_data(reply)`` lets the caller fail
a message while it arrives (the in-flight data budget): its bytes are dropped as they come.

STARTTLS and AUTH (``ServerSession(config, tls=True)``; the rules are ``smtp/auth.py``'s):
accepting ``StartTls`` drops what was received after the command (a pipelined command is never
run) and forgets EHLO and the transaction (RFC 3207); nothing is read until
``tls_established()``. ``command`` never shows credentials.

The events, ``State``, ``NEED_DATA`` and the state table live in ``smtp/events.py`` and are
re-exported here.

Pure: no asyncio, sockets, clock or IO; imports config.listener, smtp.auth, smtp.events,
smtp.parser, smtp.replies, errors and message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kumoq.config.listener import EsmtpListenerConfig, InvalidLineEndings
from kumoq.errors import LocalProtocolError, RemoteProtocolError
from kumoq.message import EnvelopeAddress
from kumoq.smtp import replies as R
from kumoq.smtp.auth import Security, redact
from kumoq.smtp.content import CommandReader, ContentReader
from kumoq.smtp.events import (
    NEED_DATA,
    ON_ACCEPT,
    ON_REJECT,
    SELF_ANSWERED,
    SEQUENCE_ERROR_OF,
    Auth,
    CommandAnswered,
    ConnectionClosed,
    DataStart,
    Ehlo,
    Event,
    MailFrom,
    MessageData,
    NeedData,
    ProtocolError,
    Quit,
    RcptTo,
    Rset,
    StartTls,
    State,
    accept_reply,
)
from kumoq.smtp.parser import parse_command
from kumoq.smtp.replies import Reply, ehlo_reply, host_reply

__all__ = [
    "NEED_DATA",
    "Auth",
    "CommandAnswered",
    "ConnectionClosed",
    "DataStart",
    "Ehlo",
    "Event",
    "MailFrom",
    "MessageData",
    "ProtocolError",
    "Quit",
    "RcptTo",
    "Rset",
    "ServerSession",
    "StartTls",
    "State",
]


_CLOSED_EVENT: Final = ConnectionClosed()
_DATA_START: Final = DataStart()
_RSET: Final = Rset()
_QUIT: Final = Quit()
# Replies that refuse a recipient only for a recipient limit: a client that pipelines more
# recipients than the limit is not cut off for it (Postfix's smtpd_recipient_overshoot_limit).
_OVERSHOOT: Final = 1000


class ServerSession:
    """One inbound SMTP connection's protocol state. Not thread-safe; O(1) per event plus
    O(len(data)) scanning of received bytes."""

    __slots__ = (
        "_buf",
        "_content",
        "_eof",
        "_errors",
        "_extended",
        "_helo",
        "_hostname",
        "_line",
        "_line_endings",
        "_lines",
        "_max_errors",
        "_max_msgs",
        "_max_rcpts",
        "_max_size",
        "_messages",
        "_overshoot",
        "_pending",
        "_rcpt_count",
        "_recipients",
        "_sec",
        "_sender",
        "_smtputf8",
        "_state",
        "config",
    )

    def __init__(self, config: EsmtpListenerConfig, *, tls: bool = False) -> None:
        """``tls``: the caller can do a TLS handshake (STARTTLS is offered)."""
        self.config = config
        self._hostname = config.hostname
        self._max_size = config.max_message_size
        self._max_rcpts = config.max_recipients_per_message
        self._max_msgs = config.max_messages_per_connection
        self._lines = CommandReader(config.line_length_hard_limit)
        self._max_errors = config.max_errors_per_connection
        self._line_endings = config.invalid_line_endings
        self._content = ContentReader(
            self._max_size, config.line_length_hard_limit, self._line_endings
        )
        # KumoMTA's keywords and order; no SIZE (a SIZE= parameter is still checked)
        base = ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8")
        self._sec = Security(tls, base)
        self._buf = bytearray()
        self._eof = False
        self._state = State.READY
        self._pending: Event | None = None
        self._line = b""
        self._helo: str | None = None
        self._extended = False
        self._sender: EnvelopeAddress | None = None
        self._recipients: list[EnvelopeAddress] = []
        self._smtputf8 = False
        self._rcpt_count = 0
        self._messages = 0
        self._errors = 0  # 4xx/5xx replies since the last accepted message
        self._overshoot = 0  # recipient-limit replies in this transaction

    # --- inspection ----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def pending(self) -> Event | None:
        """The event waiting for ``accept()``/``send()``, if any."""
        return self._pending

    @property
    def command(self) -> str:
        """The last command line read (for rejection records); ``AUTH <mechanism>`` for an AUTH
        command or response, never its credentials."""
        return self._line.decode("utf-8", "replace")

    @property
    def helo_domain(self) -> str | None:
        return self._helo

    @property
    def sender(self) -> EnvelopeAddress | None:
        return self._sender

    @property
    def recipients(self) -> tuple[EnvelopeAddress, ...]:
        return tuple(self._recipients)

    @property
    def messages_received(self) -> int:
        return self._messages

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (the caller's backpressure signal)."""
        return len(self._buf)

    @property
    def reading_content(self) -> bool:
        """True while message content or a BDAT chunk is being read (``data_timeout``)."""
        return self._state is State.DATA or self._lines.skipping >= 0

    @property
    def errors(self) -> int:
        """4xx/5xx replies since the last accepted message (``max_errors_per_connection``)."""
        return self._errors

    @property
    def default_extensions(self) -> list[str]:
        """The EHLO keywords advertised unless the caller passes its own list."""
        return list(self._sec.extensions)

    @property
    def tls_active(self) -> bool:
        return self._sec.active

    @property
    def authenticated(self) -> bool:
        """An AUTH exchange succeeded on this connection."""
        return self._sec.authenticated

    def greeting(self) -> bytes:
        """``220 <hostname> <banner>``."""
        return R.greeting(self._hostname, self.config.banner).to_bytes()

    def tls_established(self) -> None:
        """The TLS handshake that followed an accepted ``StartTls`` succeeded: read commands
        again, starting with what was received since (the client must start over with EHLO)."""
        if not self._sec.pending:
            raise LocalProtocolError("tls_established: no STARTTLS was accepted")
        self._sec.established()

    # --- input ---------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side. After accepting
        ``StartTls`` feed only what the TLS layer decrypted: the session reads it once
        ``tls_established()`` is called."""
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> Event | NeedData:
        """The next event, or ``NEED_DATA``. Raises LocalProtocolError while one is pending.

        O(1) per command plus a scan of the newly received bytes."""
        if self._pending is not None:
            raise LocalProtocolError(f"answer the pending {self._pending!r} first")
        state = self._state
        if state is State.DATA:
            return self._next_body_event()
        if state is State.CLOSED:
            self._buf.clear()
            return _CLOSED_EVENT
        if self._sec.pending:
            return _CLOSED_EVENT if self._eof else NEED_DATA
        if self._errors >= self._max_errors:
            self._buf.clear()
            return self._refuse(host_reply(R.too_many_errors, self._hostname), "")
        if self._lines.skipping >= 0:
            return self._skip_chunk()
        got = self._lines.read(self._buf)
        if got is None:
            return _CLOSED_EVENT if self._eof else NEED_DATA
        sec = self._sec
        exchange = sec.exchange is not None  # an AUTH response: ``command`` stays AUTH <mech>
        if isinstance(got, Reply):
            sec.exchange = None
            self._line = b""
            return self._refuse(R.AUTH_LINE_TOO_LONG if exchange else got, "")
        line, crlf = got
        if not exchange:
            self._line = redact(line) if line[:5].upper() == b"AUTH " else line
        if not crlf and self._line_endings is InvalidLineEndings.DENY:
            sec.exchange = None
            return self._refuse(R.BARE_LF)
        if exchange:
            return self._secure(sec.response(line))
        try:
            cmd = parse_command(line, smtputf8=self._smtputf8)
        except RemoteProtocolError as exc:
            return self._refuse(R.command_error(exc.reply_hint, str(exc)))
        verb = cmd.verb
        bad = SEQUENCE_ERROR_OF.get((state, verb))
        if bad is not None:
            return self._refuse(bad)
        event: Event
        if verb == "MAIL":
            size = cmd.params.size
            if size is not None and size > self._max_size:
                return self._refuse(R.SIZE_EXCEEDED)
            assert cmd.address is not None
            event = MailFrom(cmd.address, cmd.params)
        elif verb == "RCPT":
            if len(self._recipients) >= self._max_rcpts:
                return self._refuse(R.TOO_MANY_RECIPIENTS)
            if self._rcpt_count >= self._max_msgs:
                if self._recipients:
                    return self._refuse(R.TOO_MANY_RECIPIENTS_ON_CONNECTION)
                return self._refuse(
                    host_reply(R.too_many_recipients_on_connection_close, self._hostname)
                )
            address = cmd.address
            assert address is not None
            if not address.domain:  # <Postmaster>: this host's postmaster
                address = EnvelopeAddress(address.local_part, self._hostname)
            event = RcptTo(address, cmd.params)
        elif verb == "DATA":
            event = _DATA_START
        elif verb == "EHLO" or verb == "HELO":
            event = Ehlo(cmd.argument, verb == "EHLO")
        elif verb == "RSET":
            event = _RSET
        elif verb == "QUIT":
            event = _QUIT
        elif verb == "STARTTLS" or verb == "AUTH":
            return self._secure(self._sec.command(verb, cmd.argument, self._helo))
        elif verb == "BDAT":
            if not cmd.argument:
                return self._refuse(host_reply(R.bdat_unframed, self._hostname))
            self._lines.skipping = int(cmd.argument)
            return self._skip_chunk()
        else:
            return CommandAnswered(self.command, SELF_ANSWERED[verb])
        self._pending = event
        return event

    def _secure(self, outcome: StartTls | Auth | Reply) -> Event:
        """STARTTLS and AUTH (``smtp/auth.py``): pending, a 334 challenge, or refused."""
        if isinstance(outcome, Reply):
            if outcome.code == 334:
                return CommandAnswered(self.command, outcome)
            return self._refuse(outcome)
        self._pending = outcome
        return outcome

    def _refuse(self, reply: Reply, command: str | None = None) -> ProtocolError:
        self._count(reply)
        return ProtocolError(self.command if command is None else command, reply)

    def _count(self, reply: Reply) -> None:
        """Count a reply against ``max_errors_per_connection``; a 421 closes."""
        code = reply.code
        if code == 421:
            self._state = State.CLOSED
        elif code >= 400:
            if reply is R.TOO_MANY_RECIPIENTS or reply is R.TOO_MANY_RECIPIENTS_ON_CONNECTION:
                self._overshoot += 1
                if self._overshoot <= _OVERSHOOT:
                    return
            self._errors += 1

    def _skip_chunk(self) -> Event | NeedData:
        """Drop the rest of a BDAT chunk; once it is all gone, answer 502."""
        if not self._lines.skip(self._buf):
            return _CLOSED_EVENT if self._eof else NEED_DATA
        return self._refuse(R.BDAT_DISCARDED)

    def _next_body_event(self) -> Event | NeedData:
        content = self._content.read(self._buf)
        if content is None:
            return _CLOSED_EVENT if self._eof else NEED_DATA
        if isinstance(content, Reply):
            return self._end_transaction_with(content)
        assert self._sender is not None
        event = MessageData(self._sender, tuple(self._recipients), content)
        self._pending = event
        return event

    def abort_data(self, reply: Reply) -> None:
        """Fail the message being received with ``reply`` (4xx/5xx), answered at its end.

        What was received of it is dropped now, and the rest as it arrives. Only while the
        session reads content with nothing pending (the in-flight data budget calls it)."""
        if self._state is not State.DATA or self._pending is not None or reply.code < 400:
            raise LocalProtocolError("abort_data: no message is being received")
        self._content.abort(self._buf, reply)

    def _end_transaction_with(self, reply: Reply) -> ProtocolError:
        self._reset_transaction()
        self._state = State.READY
        return self._refuse(reply, "DATA")

    def _reset_transaction(self) -> None:
        self._sender = None
        self._recipients = []
        self._smtputf8 = False
        self._overshoot = 0

    # --- answers -------------------------------------------------------------------------------
    def accept(self, extensions: Sequence[str] | None = None) -> bytes:
        """Answer the pending event positively with its default reply; returns the bytes.

        For ``Ehlo`` the reply lists ``extensions`` (default: ``default_extensions``).
        """
        event = self._pending
        if event is None:
            raise LocalProtocolError("there is no pending event to accept")
        cls = type(event)
        if cls is Ehlo:
            assert isinstance(event, Ehlo)
            keywords = self._sec.extensions if extensions is None else tuple(extensions)
            wire = ehlo_reply(self._hostname, event.domain, event.extended, keywords).to_bytes()
        else:
            wire = accept_reply(event)  # the texts are events.py's
        self._pending = None
        self._apply(event)
        self._state = ON_ACCEPT[cls]
        return wire

    def send(self, reply: Reply) -> bytes:
        """Answer the pending event with ``reply`` (2xx, or 354 for DataStart, accepts it) and
        return the bytes to write. With nothing pending, ``reply`` is unsolicited (a 421
        before closing, such as an idle timeout or shutdown). A 421 always closes."""
        event = self._pending
        code = reply.code
        if event is None:
            if code < 400:
                raise LocalProtocolError(f"unsolicited positive reply {reply}")
        else:
            cls = type(event)
            if cls is DataStart:
                positive = code == 354
                if 200 <= code < 300:
                    raise LocalProtocolError("DATA is accepted with 354, not 2xx")
            else:
                if code == 354:
                    raise LocalProtocolError(f"354 answers DATA, not {event!r}")
                positive = code < 300
            self._pending = None
            if positive:
                self._apply(event)
                self._state = ON_ACCEPT[cls]
            else:
                self._count(reply)
                if cls is MessageData:
                    self._reset_transaction()
                new_state = ON_REJECT.get(cls)
                if new_state is not None:
                    self._state = new_state
        if code == 421:
            self._state = State.CLOSED
        return reply.to_bytes()

    def _apply(self, event: Event) -> None:
        cls = type(event)
        if cls is RcptTo:
            assert isinstance(event, RcptTo)
            self._recipients.append(event.recipient)
            self._rcpt_count += 1
        elif cls is MailFrom:
            assert isinstance(event, MailFrom)
            self._sender = event.sender
            self._recipients = []
            self._smtputf8 = event.params.smtputf8
        elif cls is DataStart:
            self._content.start()
        elif cls is MessageData:
            self._messages += 1
            self._errors = 0  # as Postfix counts errors "without delivering mail"
            self._reset_transaction()
        elif cls is Ehlo:
            assert isinstance(event, Ehlo)
            self._helo = event.domain
            self._extended = event.extended
            self._reset_transaction()
        elif cls is Rset:
            self._reset_transaction()
        elif cls is StartTls:  # RFC 3207 §4.2: forget what the client said; read nothing more
            self._buf.clear()
            self._helo = None
            self._extended = False
            self._reset_transaction()
            self._sec.starttls_accepted()
        elif cls is Auth:
            self._sec.authenticated = True

    def close(self) -> None:
        """Mark the session closed (the caller is dropping the connection)."""
        self._pending = None
        self._state = State.CLOSED
        self._buf.clear()
