"""SMTP replies: the ``Reply`` value and the named replies kumoq's server sends.

Texts follow KumoMTA's ``smtp_server.rs`` where it has one (``Send body; end with CRLF.CRLF``,
``So long, and thanks for all the fish!``, ``<host> idle too long``, ``Hello <domain>!``,
``OK <address>`` for MAIL and RCPT, ``Command unimplemented`` for a verb kumoq does not
know...). Every 2xx/4xx/5xx reply except the greeting and the EHLO/HELO answer carries an
RFC 3463 enhanced status code, since ENHANCEDSTATUSCODES is advertised (RFC 2034), where
KumoMTA sends some without one (docs/deviations.md). Replies that name the host or an address
are built by functions.

Pure: imports nothing from kumoq; no IO.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final, final

__all__ = [
    "AUTH_ALREADY",
    "AUTH_CANCELLED",
    "AUTH_CANNOT_DECODE",
    "AUTH_ENCRYPTION_REQUIRED",
    "AUTH_INVALID",
    "AUTH_IN_TRANSACTION",
    "AUTH_LINE_TOO_LONG",
    "AUTH_MALFORMED",
    "AUTH_MECHANISM_UNKNOWN",
    "AUTH_NEED_EHLO",
    "AUTH_OK",
    "AUTH_SYNTAX",
    "AUTH_THROTTLED",
    "BAD_SEQUENCE_MAIL_NESTED",
    "BAD_SEQUENCE_NEED_MAIL",
    "BAD_SEQUENCE_NEED_RCPT",
    "BARE_LF",
    "BDAT_DISCARDED",
    "CLOSING",
    "COMMAND_UNIMPLEMENTED",
    "DATA_PROCESSING_TIMEOUT",
    "HELP",
    "INSUFFICIENT_STORAGE",
    "INVALID_LINE_ENDINGS",
    "LINE_TOO_LONG",
    "MAIL_OK",
    "MESSAGE_TOO_BIG",
    "NOOP_OK",
    "OK",
    "RCPT_OK",
    "READY_TO_START_TLS",
    "RESET_OK",
    "SIZE_EXCEEDED",
    "STARTTLS_IN_TRANSACTION",
    "STARTTLS_UNAVAILABLE",
    "START_DATA",
    "TLS_ALREADY_ACTIVE",
    "TOO_MANY_RECIPIENTS",
    "TOO_MANY_RECIPIENTS_ON_CONNECTION",
    "VRFY_CANNOT",
    "Reply",
    "address_ok",
    "auth_challenge",
    "bdat_unframed",
    "cached_reply",
    "command_error",
    "command_too_slow",
    "connection_limit_reached",
    "data_too_slow",
    "disconnecting_after_error",
    "ehlo_reply",
    "greeting",
    "host_reply",
    "idle_too_long",
    "policy_failed",
    "relaying_denied",
    "shutting_down",
    "spool_not_ready",
    "technical_difficulties",
    "too_many_connections_from_ip",
    "too_many_errors",
    "too_many_recipients_on_connection_close",
]

# RFC 3463: class "." subject "." detail
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_LEADING_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?: +|$)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


@final
@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: ``code`` (200-599), optional enhanced status code, and text.

    ``text`` may hold several lines (``\\n``-separated); ``to_bytes()`` renders them as a
    multi-line reply with the enhanced code repeated on every line. The wire form is computed
    once at construction, so sending a constant costs nothing.
    """

    code: int
    enhanced: str | None
    text: str
    _wire: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code must be 200-599, got {self.code!r}")
        if self.enhanced is not None:
            m = _ENHANCED.match(self.enhanced)
            if m is None or int(m.group(1)) != self.code // 100:
                raise ValueError(
                    f"enhanced status {self.enhanced!r} does not match reply code {self.code}"
                )
        object.__setattr__(self, "_wire", self._render())

    def _render(self) -> bytes:
        code, enhanced, text = self.code, self.enhanced, self.text
        if "\n" not in text and "\r" not in text:  # the common single-line reply
            head = f"{code} {enhanced}" if enhanced is not None else str(code)
            line = f"{head} {text}" if text or code == 334 else head  # "334 " (RFC 4954)
            return f"{line}\r\n".encode("utf-8", "replace")
        lines = _LINE_BREAK.split(text)
        last = len(lines) - 1
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == last else "-"
            if enhanced is not None:
                out.append(f"{code}{sep}{enhanced} {line}" if line else f"{code}{sep}{enhanced}")
            else:
                out.append(f"{code}{sep}{line}" if line or i != last else str(code))
        out.append("")
        return "\r\n".join(out).encode("utf-8", "replace")

    @classmethod
    def from_text(cls, code: int, text: str) -> Reply:
        """A reply from a code and free text whose first word may be an enhanced code.

        ``Reply.from_text(550, "5.7.1 go away")`` is ``Reply(550, "5.7.1", "go away")``; used for
        ``kumo.reject(code, text)``. A leading enhanced code of the wrong class stays in the text.
        """
        m = _LEADING_ENHANCED.match(text)
        if m is not None and m.group(1)[0] == str(code)[0]:
            return cls(code, m.group(1), text[m.end() :])
        return cls(code, None, text)

    def to_bytes(self) -> bytes:
        """The reply on the wire, CRLF-terminated, ``NNN-`` on all but the last line. O(1)."""
        return self._wire

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx."""
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return self._wire.decode("utf-8", "replace").rstrip("\r\n")


# --- positive replies ------------------------------------------------------------------------
OK: Final = Reply(250, "2.0.0", "OK")
MAIL_OK: Final = Reply(250, "2.1.0", "OK")  # without the address: see address_ok
RCPT_OK: Final = Reply(250, "2.1.5", "OK")
RESET_OK: Final = Reply(250, "2.0.0", "Reset state")
NOOP_OK: Final = Reply(250, "2.0.0", "the goggles do nothing")
VRFY_CANNOT: Final = Reply(
    252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
HELP: Final = Reply(
    214, "2.0.0", "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
)
START_DATA: Final = Reply(354, None, "Send body; end with CRLF.CRLF")
CLOSING: Final = Reply(221, "2.0.0", "So long, and thanks for all the fish!")

# --- sequence and limits ---------------------------------------------------------------------
BAD_SEQUENCE_MAIL_NESTED: Final = Reply(
    503, "5.5.1", "MAIL FROM already issued; you must RSET first"
)
BAD_SEQUENCE_NEED_MAIL: Final = Reply(503, "5.5.1", "MAIL FROM must be issued first")
BAD_SEQUENCE_NEED_RCPT: Final = Reply(503, "5.5.1", "RCPT TO must be issued first")
LINE_TOO_LONG: Final = Reply(500, "5.2.3", "line too long")
MESSAGE_TOO_BIG: Final = Reply(552, "5.3.4", "message too big")
SIZE_EXCEEDED: Final = Reply(552, "5.3.4", "message size exceeds fixed maximum message size")
INVALID_LINE_ENDINGS: Final = Reply(552, "5.6.0", "message data must use CRLF for line endings")
TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3", "too many recipients")
TOO_MANY_RECIPIENTS_ON_CONNECTION: Final = Reply(
    451, "4.5.3", "too many recipients on this connection"
)
DATA_PROCESSING_TIMEOUT: Final = Reply(451, "4.4.5", "data_processing_timeout exceeded")
# kumoq's abuse limits (docs/security.md#limits); KumoMTA has no equivalent.
BARE_LF: Final = Reply(500, "5.5.2", "bare LF not allowed")
BDAT_DISCARDED: Final = Reply(502, "5.5.1", "BDAT not supported (no CHUNKING); chunk discarded")
INSUFFICIENT_STORAGE: Final = Reply(
    452, "4.3.1", "Insufficient system storage: too much message data in flight"
)

# --- STARTTLS (RFC 3207) and AUTH (RFC 4954; texts from its section 6) -----------------------
READY_TO_START_TLS: Final = Reply(220, "2.0.0", "Ready to start TLS")
COMMAND_UNIMPLEMENTED: Final = Reply(502, "5.5.1", "Command unimplemented")
STARTTLS_UNAVAILABLE: Final = COMMAND_UNIMPLEMENTED  # no TLS configured
TLS_ALREADY_ACTIVE: Final = Reply(503, "5.5.1", "TLS already active")
STARTTLS_IN_TRANSACTION: Final = Reply(
    503, "5.5.1", "STARTTLS not permitted during a mail transaction"
)
AUTH_OK: Final = Reply(235, "2.7.0", "Authentication successful")
AUTH_INVALID: Final = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_THROTTLED: Final = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_ENCRYPTION_REQUIRED: Final = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_ALREADY: Final = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION: Final = Reply(503, "5.5.1", "AUTH not permitted during a mail transaction")
AUTH_NEED_EHLO: Final = Reply(503, "5.5.1", "Send EHLO first")
AUTH_MECHANISM_UNKNOWN: Final = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_SYNTAX: Final = Reply(501, "5.5.2", "Syntax: AUTH mechanism [initial-response]")
AUTH_CANNOT_DECODE: Final = Reply(501, "5.5.2", "Cannot Base64-decode client response")
AUTH_MALFORMED: Final = Reply(501, "5.5.2", "Malformed authentication response")
AUTH_CANCELLED: Final = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_LINE_TOO_LONG: Final = Reply(500, "5.5.6", "Authentication Exchange line is too long")


def auth_challenge(challenge: str) -> Reply:
    """``334 <base64 challenge>``; ``334 `` for an empty one."""
    return Reply(334, None, challenge)


# --- built once per distinct value (the session's hot replies) -------------------------------
@lru_cache(maxsize=256)
def cached_reply(code: int, enhanced: str, text: str) -> Reply:
    return Reply(code, enhanced, text)


@lru_cache(maxsize=1024)
def ehlo_reply(hostname: str, domain: str, extended: bool, extensions: tuple[str, ...]) -> Reply:
    """The EHLO answer (``<hostname> Aloha <domain>`` and the keywords) or the HELO one
    (``Hello <domain>!``), as KumoMTA words them."""
    if not extended:
        return Reply(250, None, f"Hello {domain}!")
    return Reply(250, None, "\n".join((f"{hostname} Aloha {domain}", *extensions)))


def address_ok(mail: bool, address: str) -> bytes:
    """KumoMTA's positive MAIL (``250 2.1.0 OK <address>``) or RCPT (``2.1.5``) answer, on
    the wire (built at each command: the address varies). ``<>`` for the null sender."""
    return b"".join(
        (b"250 2.1.0 OK <" if mail else b"250 2.1.5 OK <", address.encode("utf-8"), b">\r\n")
    )


_UNKNOWN_COMMAND: Final = (500, "5.5.2")


def command_error(hint: tuple[int, str], text: str) -> Reply:
    """The reply to a command line the parser refused with ``hint`` and ``text``. A verb it does
    not know gets KumoMTA's ``502 5.5.1 Command unimplemented``."""
    if hint == _UNKNOWN_COMMAND:
        return COMMAND_UNIMPLEMENTED
    return cached_reply(hint[0], hint[1], text)


@lru_cache(maxsize=256)
def host_reply(make: Callable[[str], Reply], hostname: str) -> Reply:
    """``make(hostname)``, built once (the replies that name the host)."""
    return make(hostname)


# --- replies that name the host or peer ------------------------------------------------------
@lru_cache(maxsize=64)
def greeting(hostname: str, banner: str) -> Reply:
    """``220 <hostname> <banner>``."""
    return Reply(220, None, f"{hostname} {banner}".rstrip())


def spool_not_ready(hostname: str) -> Reply:
    return Reply(421, "4.3.2", f"{hostname} waiting for spool startup. Try again soon!")


def shutting_down(hostname: str) -> Reply:
    return Reply(421, "4.3.2", f"{hostname} shutting down")


def idle_too_long(hostname: str) -> Reply:
    return Reply(421, "4.3.2", f"{hostname} idle too long")


def connection_limit_reached(hostname: str) -> Reply:
    return Reply(421, "4.3.2", f"{hostname} too many connections. Try again later")


def too_many_connections_from_ip(hostname: str) -> Reply:
    """Over ``max_connections_per_ip``."""
    return Reply(421, "4.7.0", f"{hostname} too many connections from your address")


def too_many_errors(hostname: str) -> Reply:
    """Over ``max_errors_per_connection`` (Postfix: ``421 4.7.0 <host> Error: too many errors``)."""
    return Reply(421, "4.7.0", f"{hostname} too many errors")


def command_too_slow(hostname: str) -> Reply:
    """A command line not complete within ``client_timeout`` of its first byte."""
    return Reply(421, "4.4.2", f"{hostname} command line not completed in time")


def data_too_slow(hostname: str) -> Reply:
    """The message content (or a BDAT chunk) not complete within ``data_timeout``."""
    return Reply(421, "4.4.2", f"{hostname} message data not completed in time")


def bdat_unframed(hostname: str) -> Reply:
    """A BDAT without a valid chunk size: where its chunk ends cannot be known."""
    return Reply(421, "4.5.0", f"{hostname} BDAT without a valid chunk size; closing")


def technical_difficulties(hostname: str) -> Reply:
    """The 421 for a failure of the connection itself (not of one command): it closes."""
    return Reply(421, "4.3.0", f"{hostname} technical difficulties")


def policy_failed(hostname: str) -> Reply:
    """The 451 for a command whose policy event (or handler) failed: generic, so no internal
    error text reaches the client; the command is refused and the session goes on."""
    return Reply(451, "4.3.0", f"{hostname} technical difficulties")


def disconnecting_after_error(hostname: str) -> Reply:
    """The 421 that follows a ``kumo.disconnect(code, text, 'FollowWith421')`` reply (KumoMTA
    sends it without an enhanced code; kumoq adds 4.3.0, as ENHANCEDSTATUSCODES asks)."""
    return Reply(421, "4.3.0", f"{hostname} disconnecting due to previous error")


def too_many_recipients_on_connection_close(hostname: str) -> Reply:
    """The 421 sent (and the connection closed) when a new transaction would exceed
    ``max_messages_per_connection``."""
    return Reply(421, "4.5.3", f"{hostname} too many recipients on this connection")


def relaying_denied(peer: str) -> Reply:
    """``550 5.7.1 relaying not permitted for <peer>`` (``peer`` as ``ip:port``)."""
    return Reply(550, "5.7.1", f"relaying not permitted for {peer}")
