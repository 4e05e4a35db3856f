"""What the session reads out of its input: command lines, and the message content of a DATA --
finding its end, and what it becomes: dot-unstuffed, its size and line lengths checked, its
line endings handled by ``invalid_line_endings``.

``CommandReader`` frames command lines: at most 510 octets without the line end (RFC 5321
§4.5.3.1.4), or ``line_length_hard_limit`` if lower; a longer line is dropped as it arrives and
refused once its end comes. It also skips the declared bytes of a ``BDAT`` chunk, so that they
are never read as commands.

``ContentReader`` reads the content out of the session's input buffer. Only ``\\r\\n.\\r\\n``
ends it; a bare ``\\n.\\n`` or ``\\r.\\n`` is content. Content that certainly exceeds the size
limit, or that the caller failed (``abort``: the in-flight data budget), is dropped as it
arrives, keeping only the bytes that may begin the terminator.

The rule this module owns (docs/security.md#line-endings): whatever the mode, no content kumoq
takes in holds a bare CR or a bare LF directly before a ``.``. Such a dot could begin a line for
a downstream server that takes a bare CR or LF as a line end; if what follows it is a line end,
that server would read an end of data there, and the next lines as commands (SMTP smuggling).
``Deny`` refuses any bare CR or LF, ``Fix`` turns each into CRLF, and ``Allow`` keeps them all
except those before a dot, which become CRLF. Every dot that begins a line is then behind a
CRLF, so the delivery side's dot-stuffing doubles it.

Pure: imports config.listener and smtp.replies only; no IO.
"""

from __future__ import annotations

import re
from typing import Final

from kumoq.config.listener import InvalidLineEndings
from kumoq.smtp import replies as R
from kumoq.smtp.replies import Reply

__all__ = ["COMMAND_LINE_LIMIT", "CommandReader", "ContentReader", "finish_content"]

COMMAND_LINE_LIMIT: Final = 510  # RFC 5321 §4.5.3.1.4: 512 octets with the CRLF

_LINE_END: Final = re.compile(rb"\r\n|\r|\n")
# A bare CR (any CR not followed by LF), or a bare LF (not preceded by CR), before a ".".
_BARE_BEFORE_DOT: Final = re.compile(rb"(?:\r|(?<!\r)\n)(?=\.)")
_DATA_END: Final = b"\r\n.\r\n"


class CommandReader:
    """Command lines out of a buffer the reader shares with its session. O(new bytes) per
    ``read``."""

    __slots__ = ("_discarding", "_limit", "skipping")

    def __init__(self, line_limit: int) -> None:
        self._limit = min(line_limit, COMMAND_LINE_LIMIT)
        self._discarding = False  # the line being received is too long: drop it to its end
        self.skipping = -1  # bytes of a BDAT chunk still to drop; -1: none

    def read(self, buf: bytearray) -> tuple[bytes, bool] | Reply | None:
        """Consume the next line: ``(line without its line end, ended by CRLF)``,
        ``LINE_TOO_LONG`` for a line over the limit, or None while no line end has come."""
        i = buf.find(b"\n")
        if i < 0:
            if len(buf) > self._limit + 1:
                # Too long: drop it, and keep dropping until its line end arrives.
                keep_cr = buf.endswith(b"\r")
                buf.clear()
                if keep_cr:
                    buf += b"\r"
                self._discarding = True
            return None
        crlf = i > 0 and buf[i - 1] == 13  # b"\r"
        n = i - 1 if crlf else i
        line = bytes(buf[:n])
        del buf[: i + 1]
        if self._discarding or n > self._limit:
            self._discarding = False
            return R.LINE_TOO_LONG
        return line, crlf

    def skip(self, buf: bytearray) -> bool:
        """Drop what ``buf`` holds of the BDAT chunk; True once all of it is gone."""
        n = min(self.skipping, len(buf))
        del buf[:n]
        self.skipping -= n
        if self.skipping:
            return False
        self.skipping = -1
        return True


class ContentReader:
    """Reads one message's content at a time out of a buffer it shares with its session.
    O(new bytes) per ``read``: the search for the terminator resumes where it stopped."""

    __slots__ = ("_at_start", "_failure", "_line_endings", "_line_limit", "_max_size", "_search")

    def __init__(self, max_size: int, line_limit: int, line_endings: InvalidLineEndings) -> None:
        self._max_size = max_size
        self._line_limit = line_limit
        self._line_endings = line_endings
        self._at_start = False
        self._search = 0
        self._failure: Reply | None = None  # the reply that ends a message that failed

    def start(self) -> None:
        """The 354 was sent: the next bytes are a new message's content."""
        self._at_start = True
        self._search = 0
        self._failure = None

    def read(self, buf: bytearray) -> bytes | Reply | None:
        """Consume the content and its terminator from ``buf`` once the terminator is there:
        the message (``finish_content``), or the reply that fails it. None: not yet."""
        if self._at_start:
            if buf.startswith(b".\r\n"):
                del buf[:3]
                return self._finish(b"")
            if len(buf) < 3 and b".\r\n".startswith(buf):
                return None
            self._at_start = False
        i = buf.find(_DATA_END, self._search)
        if i < 0:
            n = len(buf)
            if n > 4 and (self._failure is not None or n - 2 > self._max_size):
                # Failed, or certainly too big: keep only what may start the terminator.
                if self._failure is None:
                    self._failure = R.MESSAGE_TOO_BIG
                del buf[: n - 4]
                n = 4
            self._search = n - 4 if n > 4 else 0
            return None
        end = i + 2  # the content keeps the CRLF of its last line
        body = None if self._failure is not None or end > self._max_size else bytes(buf[:end])
        del buf[: i + 5]
        return self._finish(body)

    def abort(self, buf: bytearray, reply: Reply) -> None:
        """Fail the message being read with ``reply``, and drop what ``buf`` holds of it."""
        self._failure = reply
        n = len(buf)
        if n > 4 and not self._at_start:
            del buf[: n - 4]
            self._search = 0

    def _finish(self, body: bytes | None) -> bytes | Reply:
        failure = self._failure
        self._search = 0
        self._failure = None
        self._at_start = False
        if failure is not None:
            return failure
        if body is None:
            return R.MESSAGE_TOO_BIG
        return finish_content(body, self._line_limit, self._line_endings)


def finish_content(body: bytes, line_limit: int, line_endings: InvalidLineEndings) -> bytes | Reply:
    """The message from ``body`` (the content up to and including the CRLF before the final
    dot, still dot-stuffed), or the reply that refuses it: ``500 5.2.3`` for a line longer than
    ``line_limit`` (without its CRLF), ``552 5.6.0`` for a bare CR or LF under ``Deny``.

    O(len(body)), in a few passes of bytes methods."""
    # RFC 5321 §4.5.2: drop the first "." of every line that starts with one.
    if body.startswith(b"."):
        body = body[1:]
    if b"\r\n." in body:
        body = body.replace(b"\r\n.", b"\r\n")
    pieces = body.split(b"\n")
    if max(map(len, pieces)) > line_limit and _has_long_line(pieces, line_limit):
        return R.LINE_TOO_LONG
    crlf = body.count(b"\r\n")
    if len(pieces) - 1 != crlf or body.count(b"\r") != crlf:
        if line_endings is InvalidLineEndings.DENY:
            return R.INVALID_LINE_ENDINGS
        if line_endings is InvalidLineEndings.FIX:
            return _LINE_END.sub(b"\r\n", body)
        if b"\r." in body or b"\n." in body:
            return _BARE_BEFORE_DOT.sub(b"\r\n", body)
    return body


def _has_long_line(pieces: list[bytes], limit: int) -> bool:
    """True when a line (``pieces`` split at LF; without its CRLF) is longer than ``limit``."""
    for piece in pieces:
        n = len(piece)
        if n > limit and (n > limit + 1 or not piece.endswith(b"\r")):
            return True
    return False
