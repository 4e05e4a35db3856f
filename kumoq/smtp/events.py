"""The vocabulary of the sans-IO ESMTP session: its ``State``, the ``NEED_DATA`` signal, the
events ``ServerSession.next_event()`` returns (frozen dataclasses; ``Event`` is their union),
and the state table: where an accepted or rejected event takes the session.

This module owns these values only; ``smtp/session.py`` produces them and re-exports them for
its importers. Pure: no asyncio, sockets, clock or IO; imports smtp.parser (for
``EsmtpParams``), smtp.replies and message. Must not import smtp.session or anything that
does IO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Literal, TypeAlias, final

from kumoq.message import EnvelopeAddress
from kumoq.smtp import replies as R
from kumoq.smtp.parser import EsmtpParams
from kumoq.smtp.replies import Reply

__all__ = [
    "DEFAULT_ACCEPT",
    "NEED_DATA",
    "ON_ACCEPT",
    "ON_REJECT",
    "SELF_ANSWERED",
    "SEQUENCE_ERRORS",
    "SEQUENCE_ERROR_OF",
    "Auth",
    "CommandAnswered",
    "ConnectionClosed",
    "DataStart",
    "Ehlo",
    "Event",
    "MailFrom",
    "MessageData",
    "NeedData",
    "ProtocolError",
    "Quit",
    "RcptTo",
    "Rset",
    "StartTls",
    "State",
    "accept_reply",
]


class State(Enum):
    READY = "READY"  # no transaction open
    MAIL = "MAIL"  # MAIL FROM accepted, no recipient yet
    RCPT = "RCPT"  # at least one recipient accepted
    DATA = "DATA"  # reading the message content
    CLOSED = "CLOSED"  # QUIT answered or a 421 sent: ignore all further input

    # Members are singletons: hash by identity (C speed) instead of Enum's Python __hash__.
    __hash__ = object.__hash__


class _Signal(Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _Signal.NEED_DATA
NeedData: TypeAlias = Literal[_Signal.NEED_DATA]
"""The type of ``NEED_DATA``: ``ServerSession.next_event()`` returns ``Event | NeedData``."""


# --- events ------------------------------------------------------------------------------------
@final
@dataclass(frozen=True, slots=True)
class Ehlo:
    """EHLO (``extended``) or HELO; answer ``accept(extensions)`` or ``send(reject)``."""

    domain: str
    extended: bool


@final
@dataclass(frozen=True, slots=True)
class MailFrom:
    sender: EnvelopeAddress
    params: EsmtpParams


@final
@dataclass(frozen=True, slots=True)
class RcptTo:
    recipient: EnvelopeAddress
    params: EsmtpParams


@final
@dataclass(frozen=True, slots=True)
class DataStart:
    """DATA with a sender and recipients; ``accept()`` answers 354 and reads the content."""


@final
@dataclass(frozen=True, slots=True)
class MessageData:
    """The complete message: dot-unstuffed, CRLF line endings (unless ``Allow``)."""

    sender: EnvelopeAddress
    recipients: tuple[EnvelopeAddress, ...]
    data: bytes


@final
@dataclass(frozen=True, slots=True)
class Rset:
    pass


@final
@dataclass(frozen=True, slots=True)
class Quit:
    pass


@final
@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS (RFC 3207), offered and outside a transaction. ``accept()`` answers
    ``220 2.0.0 Ready to start TLS`` and drops every byte received after the command (a
    command pipelined behind STARTTLS is never run); the caller then stops reading in the
    clear, does the handshake and calls ``tls_established()``. Until then the session reads
    nothing."""


@final
@dataclass(frozen=True, slots=True)
class Auth:
    """A complete AUTH PLAIN or LOGIN exchange (RFC 4954) over TLS: the credentials to check.
    ``accept()`` answers ``235 2.7.0``; ``send(reply)`` refuses (535, 454). ``authz`` is
    ``authc`` when the client gave none. The password is left out of ``repr``."""

    mechanism: str
    authz: str
    authc: str
    password: str = field(repr=False)


@final
@dataclass(frozen=True, slots=True)
class CommandAnswered:
    """The session answered ``command`` itself (NOOP, VRFY, HELP, an AUTH challenge ``334``):
    write ``reply``."""

    command: str
    reply: Reply


@final
@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The session refused ``command`` (4xx/5xx): write ``reply``; close if it is a 421."""

    command: str
    reply: Reply


@final
@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side (``receive_data(b"")``), or the session is closed."""


Event: TypeAlias = (
    Ehlo
    | MailFrom
    | RcptTo
    | DataStart
    | MessageData
    | Rset
    | Quit
    | StartTls
    | Auth
    | CommandAnswered
    | ProtocolError
    | ConnectionClosed
)


# --- the state table ---------------------------------------------------------------------------
# Commands that are out of sequence in a state, and the reply they get.
_IN_TRANSACTION: Final = {"STARTTLS": R.STARTTLS_IN_TRANSACTION, "AUTH": R.AUTH_IN_TRANSACTION}
SEQUENCE_ERRORS: Final[dict[State, dict[str, Reply]]] = {
    State.READY: {"RCPT": R.BAD_SEQUENCE_NEED_MAIL, "DATA": R.BAD_SEQUENCE_NEED_MAIL},
    State.MAIL: {
        "MAIL": R.BAD_SEQUENCE_MAIL_NESTED, "DATA": R.BAD_SEQUENCE_NEED_RCPT, **_IN_TRANSACTION,
    },
    State.RCPT: {"MAIL": R.BAD_SEQUENCE_MAIL_NESTED, **_IN_TRANSACTION},
}  # fmt: skip
# The same, flattened for one lookup per command: (state, verb) -> reply.
SEQUENCE_ERROR_OF: Final = {
    (state, verb): reply
    for state, table in SEQUENCE_ERRORS.items()
    for verb, reply in table.items()
}
# The commands the session answers itself, and how.
SELF_ANSWERED: Final[dict[str, Reply]] = {"NOOP": R.NOOP_OK, "VRFY": R.VRFY_CANNOT, "HELP": R.HELP}
# Where a positive answer to a pending event takes the session.
ON_ACCEPT: Final[dict[type, State]] = {
    Ehlo: State.READY,
    MailFrom: State.MAIL,
    RcptTo: State.RCPT,
    DataStart: State.DATA,
    MessageData: State.READY,
    Rset: State.READY,
    Quit: State.CLOSED,
    StartTls: State.READY,
    Auth: State.READY,
}
# Where a negative answer takes it (absent: the state does not change).
ON_REJECT: Final[dict[type, State]] = {MessageData: State.READY, Quit: State.CLOSED}
# The positive reply ``accept()`` sends (Ehlo builds its own).
DEFAULT_ACCEPT: Final[dict[type, Reply]] = {
    MailFrom: R.MAIL_OK,
    RcptTo: R.RCPT_OK,
    DataStart: R.START_DATA,
    MessageData: R.OK,
    Rset: R.RESET_OK,
    Quit: R.CLOSING,
    StartTls: R.READY_TO_START_TLS,
    Auth: R.AUTH_OK,
}


def accept_reply(event: Event) -> bytes:
    """The positive answer to a pending event other than ``Ehlo``, on the wire: MAIL and RCPT
    name the address (``250 2.1.0 OK <a@example.com>``, as KumoMTA), the rest are constant."""
    cls = type(event)
    if cls is MailFrom:
        assert isinstance(event, MailFrom)
        return R.address_ok(True, event.sender.email)
    if cls is RcptTo:
        assert isinstance(event, RcptTo)
        return R.address_ok(False, event.recipient.email)
    return DEFAULT_ACCEPT[cls].to_bytes()
