"""Reading SMTP replies on the client side: bytes in, complete replies out (RFC 5321 §4.2).

``ReplyReader.feed(data)`` returns every reply that ``data`` completed, in order, and keeps a
partial one for the next call. Several replies may arrive in one chunk (PIPELINING, RFC 2920),
and one reply may arrive split over many chunks, so the reader makes no assumption about
chunking; this is why kumoq reads replies itself rather than through aiosmtplib's protocol,
whose ``read_response()`` must be awaited once per command and drops replies that arrive while
no command waits.

A reply is one or more lines ``<code>-<text>`` ending with ``<code> <text>`` (or a bare
``<code>``). The reader accepts LF as well as CRLF, as real servers do. A line that is not a
reply line, a continuation whose code differs from the first line's, a line longer than
``MAX_LINE`` or a reply longer than ``MAX_REPLY`` raises ``RemoteProtocolError``; the
connection is unusable after that.

Pure: imports only kumoq.errors; no IO, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kumoq.errors import RemoteProtocolError

__all__ = ["MAX_LINE", "MAX_REPLY", "ReplyReader", "ServerReply"]

#: Longest reply line accepted, in bytes with its line ending (RFC 5321 §4.5.3.1.5 says 512;
#: real servers send longer EHLO and error lines, so allow what aiosmtplib allows).
MAX_LINE: Final = 8192
#: Longest whole reply accepted (a multi-line EHLO or a verbose rejection).
MAX_REPLY: Final = 65536
_SEPARATORS: Final = frozenset({b"", b" ", b"-"})


@dataclass(frozen=True, slots=True)
class ServerReply:
    """One complete reply: its code and the text of each line (without code or separator)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The lines joined with LF, as aiosmtplib and smtplib present a multi-line reply."""
        return "\n".join(self.lines)


class ReplyReader:
    """Incremental reply parser for one connection. Not thread-safe; one per connection."""

    __slots__ = ("_buffer", "_code", "_lines", "_size")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._code = -1  # code of the reply being assembled, -1 when none
        self._lines: list[str] = []
        self._size = 0

    @property
    def pending(self) -> bool:
        """True when a reply has been started but not completed."""
        return bool(self._buffer) or self._code != -1

    def feed(self, data: bytes) -> list[ServerReply]:
        """Add ``data``; return the replies it completed (possibly none)."""
        buffer = self._buffer
        if buffer:
            buffer += data
            data = bytes(buffer)
            buffer.clear()
        lines = data.split(b"\n")
        rest = lines.pop()  # what follows the last LF: a partial line, or nothing
        replies: list[ServerReply] = []
        for line in lines:  # each without its LF
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)
        if rest:
            if len(rest) > MAX_LINE:
                raise RemoteProtocolError(f"reply line longer than {MAX_LINE} bytes")
            buffer += rest
        return replies

    def _line(self, raw: bytes) -> ServerReply | None:
        """One line, without its LF."""
        size = len(raw) + 1
        if size > MAX_LINE:
            raise RemoteProtocolError(f"reply line longer than {MAX_LINE} bytes")
        self._size += size
        if self._size > MAX_REPLY:
            raise RemoteProtocolError(f"reply longer than {MAX_REPLY} bytes")
        line = raw.rstrip(b"\r\n")
        head = line[:3]
        sep = line[3:4]
        if len(head) != 3 or not head.isdigit() or sep not in _SEPARATORS:
            shown = line[:80].decode("utf-8", "replace")
            raise RemoteProtocolError(f"malformed reply line: {shown!r}")
        code = int(head)
        if self._code == -1:
            self._code = code
        elif code != self._code:
            raise RemoteProtocolError(
                f"reply line code {code} does not continue a {self._code} reply"
            )
        self._lines.append(line[4:].decode("utf-8", "surrogateescape").strip(" \t"))
        if sep == b"-":
            return None
        reply = ServerReply(code, tuple(self._lines))
        self._code = -1
        self._lines = []
        self._size = 0
        return reply
