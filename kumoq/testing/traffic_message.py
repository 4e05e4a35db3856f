"""The mail ``kumoq traffic-gen`` sends: recipients spread over weighted domains, and message
text of a given size with the caller's headers.

``MessageFactory(spec)`` is built once per run; ``message(i)`` gives the i-th message (its
recipient, its SMTP envelope and its body on the wire, dot-stuffed and ended by ``.``) in a few
microseconds: the body filler is made once, and only the header block differs between
messages. Recipients are ``<local_part><i>@<domain>``, the domains taken in the exact
proportions of their weights by LVS weighted round robin (kumoq.egress.round_robin), so 1,000
messages over ``gmail.com:67`` and ``yahoo.com:6`` are never a matter of luck. The text for the
HTTP injection API is the same message with ``To: <{{ email }}>`` (a template KumoMTA and
kumoq expand per recipient).

Pure: no IO, no clock (the caller passes the ``Date:`` value); imports kumoq.egress.round_robin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, final

from kumoq.egress.round_robin import WeightedRoundRobin

__all__ = ["MessageFactory", "MessageSpec", "OutgoingMessage", "parse_header", "parse_weighted"]

_LINE: Final = 76  # body line length, without its CRLF
_FILLER_TEXT: Final = (
    "The quick brown fox jumps over the lazy dog while kumoq counts every message "
)
_HEADER_NAME: Final = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext
_MAX_CYCLE: Final = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageSpec:
    """What every message of a run looks like. ``size`` is the approximate size of each
    message in bytes, headers included; ``domains`` are ``(domain, weight)`` pairs."""

    sender: str = "traffic-gen@example.com"
    domains: tuple[tuple[str, int], ...] = (("example.com", 1),)
    local_part: str = "user"
    size: int = 2000
    headers: tuple[tuple[str, str], ...] = ()
    campaign: str | None = None
    run_id: str = "run"


@final
@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message: ``envelope`` is ``MAIL``, ``RCPT`` and ``DATA`` as pipelined commands;
    ``body`` the content on the wire, ending with ``CRLF.CRLF``."""

    index: int
    recipient: str
    envelope: bytes
    body: bytes


def parse_weighted(text: str) -> tuple[str, int]:
    """``gmail.com:67`` -> ``("gmail.com", 67)``; a bare domain weighs 1."""
    name, sep, weight = text.rpartition(":")
    if not sep:
        name, weight = text, "1"
    name = name.strip()
    if not name or "@" in name or " " in name:
        raise ValueError(f"invalid domain {text!r}: expected DOMAIN or DOMAIN:WEIGHT")
    if not weight.strip().isdigit():
        raise ValueError(f"invalid weight in {text!r}: expected DOMAIN:WEIGHT, WEIGHT >= 0")
    return name, int(weight)


def parse_header(text: str) -> tuple[str, str]:
    """``X-Tenant:acme`` -> ``("X-Tenant", "acme")``."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _HEADER_NAME.match(name):
        raise ValueError(f"invalid header {text!r}: expected NAME:VALUE")
    if "\r" in value or "\n" in value:
        raise ValueError(f"invalid header {text!r}: the value may not hold a line break")
    return name, value


def _domain_cycle(domains: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    """One period of the weighted round robin: each domain ``weight / gcd`` times."""
    wrr = WeightedRoundRobin(domains)
    if not wrr.candidates():
        raise ValueError("every domain has weight 0")
    total = sum(w for _, w in domains)
    picks = []
    for _ in range(min(total, _MAX_CYCLE)):
        name = wrr.next()
        assert name is not None
        picks.append(name)
    return tuple(picks)


def _filler(size: int) -> bytes:
    """About ``size`` bytes of body: CRLF-ended lines, none starting with a dot."""
    if size <= 2:
        return b"\r\n"
    line = (_FILLER_TEXT * (_LINE // len(_FILLER_TEXT) + 2))[:_LINE].encode() + b"\r\n"
    whole, rest = divmod(size, len(line))
    tail = line[: max(rest - 2, 0)].rstrip() + b"\r\n" if rest > 2 else b""
    return line * whole + tail


@final
class MessageFactory:
    """Makes the messages of one run (see the module docstring)."""

    def __init__(self, spec: MessageSpec) -> None:
        self.spec = spec
        self._domains = _domain_cycle(spec.domains)
        extra = list(spec.headers)
        if spec.campaign is not None:
            extra.append(("X-Campaign", spec.campaign))
        self._extra = "".join(f"{name}: {value}\r\n" for name, value in extra)
        self._mail = f"MAIL FROM:<{spec.sender}>\r\n".encode()
        # Size the filler once, for a typical header block.
        head = self._head(f"<{self.recipient(0)}>", "Thu, 1 Jan 2026 00:00:00 +0000", 0)
        self._body = _filler(spec.size - len(head) - 2)

    def recipient(self, index: int) -> str:
        domains = self._domains
        return f"{self.spec.local_part}{index}@{domains[index % len(domains)]}"

    def _head(self, to: str, date: str, index: int | None) -> str:
        """The header block; ``index`` None leaves out the message number and Message-ID."""
        spec = self.spec
        numbered = (
            f"Subject: kumoq traffic-gen message {index}\r\n"
            f"Message-ID: <{spec.run_id}.{index}@traffic-gen.kumoq>\r\n"
            if index is not None
            else "Subject: kumoq traffic-gen message\r\n"
        )
        return (
            f"From: <{spec.sender}>\r\n"
            f"To: {to}\r\n"
            f"{numbered}"
            f"Date: {date}\r\n"
            f"{self._extra}"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
        )

    def message(self, index: int, date: str) -> OutgoingMessage:
        """The ``index``-th message; ``date`` is its ``Date:`` header value (RFC 5322)."""
        rcpt = self.recipient(index)
        head = self._head(f"<{rcpt}>", date, index).replace("\r\n.", "\r\n..")  # dot-stuff
        envelope = self._mail + f"RCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        return OutgoingMessage(
            index, rcpt, envelope, head.encode() + b"\r\n" + self._body + b".\r\n"
        )

    def inject_content(self, date: str) -> str:
        """The message text for ``POST /api/inject/v1``: ``To:`` is a template per recipient."""
        head = self._head("<{{ email }}>", date, None)
        return head + "\r\n" + self._body.decode()
