"""The header side of MIME parsing: header blocks with their conformance issues, MIME
parameters (``Content-Type``), message ids and RFC 5322 dates.

``parse_header_block(data)`` reads a header block the way KumoMTA's ``mailparsing`` does and
notes what does not conform: a line without a colon (``MISSING_COLON_VALUE``), a name
followed by spaces (``NAME_ENDS_WITH_SPACE``), a bare LF (``NON_CANONICAL_LINE_ENDINGS``), a
line over 78 octets (``LINE_TOO_LONG``). Each ``Field`` keeps its bytes as received, so a
block that is not changed is written back byte for byte.

``Conformance`` is KumoMTA's ``MessageConformance`` set; ``parse_conformance("A|B")`` and
``conformance_text(flags)`` convert it from and to the ``|``-separated labels its Lua API
takes and prints.

Pure (L0): the standard library (``email.header``, not the rest of ``email``, which loads
``socket``) and kumoq.headers; no IO, no clock (dates are formatted from a ``now``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.header import Header
from typing import Final
from urllib.parse import quote, unquote_to_bytes

from kumoq.headers import decode_value, unfold

__all__ = [
    "Conformance",
    "Field",
    "MimeError",
    "MimeParams",
    "conformance_text",
    "format_rfc2822_date",
    "new_field",
    "parse_conformance",
    "parse_header_block",
    "parse_message_id",
    "parse_mime_params",
    "parse_rfc2822_date",
]

#: RFC 5322 §2.1.1: a line SHOULD be at most 78 characters, not counting its CRLF.
MAX_LINE: Final = 78
#: A line longer than MAX_LINE (not counting its line ending).
LONG_LINE: Final = re.compile(rb"[^\r\n]{%d}" % (MAX_LINE + 1))
_BARE_LF: Final = re.compile(rb"(?<!\r)\n")
_NAME: Final = re.compile(rb"[!-~]+")


class MimeError(ValueError):
    """The content cannot be parsed as MIME, or a MIME operation cannot be done."""


class Conformance(enum.IntFlag):
    """KumoMTA's ``MessageConformance``: the issues a parse found (see check_fix_conformance)."""

    MISSING_COLON_VALUE = 0x01
    NON_CANONICAL_LINE_ENDINGS = 0x02
    NAME_ENDS_WITH_SPACE = 0x04
    LINE_TOO_LONG = 0x08
    NEEDS_TRANSFER_ENCODING = 0x10
    MISSING_DATE_HEADER = 0x20
    MISSING_MESSAGE_ID_HEADER = 0x40
    MISSING_MIME_VERSION = 0x80
    INVALID_MIME_HEADERS = 0x100


NONE: Final = Conformance(0)
_NAMES: Final = sorted(flag.name for flag in Conformance if flag.name)


def parse_conformance(text: str) -> Conformance:
    """``"LINE_TOO_LONG|MISSING_DATE_HEADER"`` as flags; ``""`` is none. Raises ValueError
    naming the unknown label and the possible ones, as KumoMTA does."""
    flags = NONE
    for label in text.split("|"):
        if not label:
            continue
        if label not in Conformance.__members__:
            possible = ", ".join(f"'{name}'" for name in _NAMES)
            msg = f"invalid MessageConformance flag '{label}', possible values are {possible}"
            raise ValueError(msg)
        flags |= Conformance[label]
    return flags


def conformance_text(flags: Conformance) -> str:
    """The labels of ``flags``, sorted and joined with ``|``."""
    return "|".join(name for name in _NAMES if flags & Conformance[name])


@dataclass(slots=True)
class Field:
    """One header field as received: ``name``, the ``sep`` between name and value (``": "``,
    ``" :"``...), the raw (folded, encoded) ``value`` and the line ending ``eol``."""

    name: str
    sep: bytes
    value: bytes
    eol: bytes

    def to_bytes(self, crlf: bytes = b"\r\n") -> bytes:
        """The field's text, ending with its own line ending (``crlf`` if it had none)."""
        return b"".join((self.name.encode("ascii"), self.sep, self.value, self.eol or crlf))

    @property
    def unstructured(self) -> str:
        """The value unfolded, trimmed and RFC 2047-decoded."""
        return decode_value(self.value)

    @property
    def raw_value(self) -> str:
        """The value as written (folding kept), as text."""
        return self.value.decode("utf-8", "surrogateescape")


def new_field(name: str, value: str | bytes, *, encode: bool = False) -> Field:
    """A new field ``name: value`` (CRLF). A str value that is not ASCII is RFC 2047-encoded
    when ``encode``; otherwise written as UTF-8. Raises MimeError for a bad name or value."""
    if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
        raise MimeError(f"invalid header name {name!r}")
    if isinstance(value, str):
        if encode and not value.isascii():
            value = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
        raw = value.encode("utf-8", "surrogateescape")
    else:
        raw = value
    raw = raw.removesuffix(b"\r\n")
    if re.search(rb"\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n", raw):
        raise MimeError(f"header value for {name!r} must not contain line breaks")
    return Field(name, b": ", raw, b"\r\n")


def parse_header_block(data: bytes) -> tuple[list[Field], int, Conformance]:
    """The fields of the header block at the start of ``data``, the offset of the body (after
    the empty line), and the conformance issues seen. O(len(header block)).

    Raises MimeError for what cannot be a header block: a lone CR, white space before the
    first field, a control character or non-ASCII octet in a name."""
    fields: list[Field] = []
    flags = NONE
    pos, size = 0, len(data)
    while pos < size:
        c = data[pos]
        if c == 0x0A:  # LF: the end of the block, non-canonical
            return fields, pos + 1, flags | Conformance.NON_CANONICAL_LINE_ENDINGS
        if c == 0x0D:
            if data[pos + 1 : pos + 2] == b"\n":
                return fields, pos + 2, flags
            raise MimeError("invalid header: lone CR in header")
        if c in b" \t" and not fields:
            raise MimeError("invalid header: header block must not start with spaces")
        field, pos, found = _parse_field(data, pos)
        fields.append(field)
        flags |= found
    return fields, pos, flags


def _parse_field(data: bytes, start: int) -> tuple[Field, int, Conformance]:
    flags = NONE
    end = _field_end(data, start)
    text = data[start:end]
    eol = b"\r\n" if text.endswith(b"\r\n") else b"\n" if text.endswith(b"\n") else b""
    body = text[: len(text) - len(eol)]
    if len(body) > MAX_LINE and LONG_LINE.search(body):
        flags |= Conformance.LINE_TOO_LONG
    if b"\n" in body and _BARE_LF.search(body):  # a folded line ending in a bare LF
        flags |= Conformance.NON_CANONICAL_LINE_ENDINGS
    if eol == b"\n":
        flags |= Conformance.NON_CANONICAL_LINE_ENDINGS
    colon = body.find(b":")
    name_end = colon if colon >= 0 else len(body)
    space = re.search(rb"[ \t]", body[:name_end])
    if space is not None:
        flags |= Conformance.NAME_ENDS_WITH_SPACE
        name_end = space.start()
    if colon < 0:
        flags |= Conformance.MISSING_COLON_VALUE
        value_start = len(body)
    else:
        value_start = colon + 1
        while value_start < len(body) and body[value_start] == 0x20:
            value_start += 1
    name, sep, value = body[:name_end], body[name_end:value_start], body[value_start:]
    if not _NAME.fullmatch(name):
        raise MimeError(
            "invalid header: header name must be comprised of printable US-ASCII characters"
        )
    return Field(name.decode("ascii"), sep, value, eol), end, flags


def _field_end(data: bytes, pos: int) -> int:
    """Where the field starting at ``pos`` ends: after the line ending of its last line."""
    size = len(data)
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return size
        pos = nl + 1
        if pos >= size or data[pos] not in b" \t":
            return pos


# --- MIME parameters (RFC 2045 §5.1, RFC 2231) ----------------------------------------------
_TSPECIALS: Final = frozenset(b'()<>@,;:\\"/[]?=')
_PARAM: Final = re.compile(r'\s*;\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.S)


@dataclass(frozen=True, slots=True)
class MimeParams:
    """A parsed ``Content-Type``-like value: ``value`` (lower case) and decoded ``params``
    (lower-case names, RFC 2231 continuations joined and charsets applied)."""

    value: str
    params: dict[str, str]

    def get(self, name: str) -> str | None:
        return self.params.get(name.lower())

    def to_text(self) -> str:
        """The header value: ``value; name=param`` (quoted, or RFC 2231-encoded if not
        ASCII)."""
        out = [self.value]
        for name, param in self.params.items():
            if not param.isascii():
                out.append(f"{name}*=utf-8''{quote(param, safe='')}")
            elif param and all(33 <= ord(c) <= 126 and ord(c) not in _TSPECIALS for c in param):
                out.append(f"{name}={param}")
            else:
                escaped = param.replace("\\", "\\\\").replace('"', '\\"')
                out.append(f'{name}="{escaped}"')
        return "; ".join(out)


def parse_mime_params(raw: bytes | str) -> MimeParams:
    """Parse ``text/plain; charset="utf-8"``. Raises MimeError when there is no value or a
    parameter is malformed."""
    text = unfold(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape"))
    text_s = _strip_comments(text.decode("utf-8", "surrogateescape")).strip()
    head, _, rest = text_s.partition(";")
    value = head.strip().lower()
    if not value or " " in value:
        raise MimeError(f"invalid MIME parameters {text_s!r}: no value")
    rest = ";" + rest if rest else ""
    pieces: dict[str, dict[int, tuple[bool, str]]] = {}
    plain: dict[str, str] = {}
    pos = 0
    for m in _PARAM.finditer(rest):
        if m.start() != pos:
            raise MimeError(f"invalid MIME parameters {text_s!r}")
        pos = m.end()
        name, param = m.group(1).lower(), m.group(2).strip()
        if param.startswith('"'):
            param = re.sub(r"\\(.)", r"\1", param[1:-1])
            if "=?" in param:
                param = decode_value(param.encode("utf-8", "surrogateescape"))
        cont = re.fullmatch(r"([^*]+)\*(?:(\d+)\*?|)", name)
        if cont is None:
            plain[name] = param
        else:
            pieces.setdefault(cont.group(1), {})[int(cont.group(2) or 0)] = (
                name.endswith("*"),
                param,
            )
    if rest[pos:].strip(" \t;"):
        raise MimeError(f"invalid MIME parameters {text_s!r}")
    for name, parts in pieces.items():
        plain[name] = _join_2231([parts[i] for i in sorted(parts)])
    return MimeParams(value, plain)


def _join_2231(parts: list[tuple[bool, str]]) -> str:
    """RFC 2231 §3-4: continuations in order; encoded ones are %-escaped in the charset named
    by the first (``utf-8'en'caf%C3%A9``)."""
    charset = "us-ascii"
    data = b""
    for i, (encoded, text) in enumerate(parts):
        if encoded:
            if i == 0 and text.count("'") >= 2:
                charset, _, text = text.split("'", 2)
            data += unquote_to_bytes(text)
        else:
            data += text.encode("utf-8", "surrogateescape")
    try:
        return data.decode(charset or "us-ascii")
    except (LookupError, UnicodeDecodeError):
        return data.decode("utf-8", "replace")


def _strip_comments(text: str) -> str:
    """Remove RFC 5322 comments ``(...)`` outside quoted strings."""
    if "(" not in text:
        return text
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for c in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(c)
            continue
        if c == "\\":
            escaped = True
            if depth == 0:
                out.append(c)
        elif quoted:
            quoted = c != '"'
            out.append(c)
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif depth == 0:
            quoted = c == '"'
            out.append(c)
    return "".join(out)


def parse_message_id(raw: bytes | str) -> str | None:
    """The id inside ``<left@right>`` (comments and white space around allowed), or None."""
    text = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw
    m = re.fullmatch(r"\s*<([^<>\s@]+@[^<>\s@]+)>\s*", _strip_comments(unfold_text(text)))
    return m.group(1) if m else None


def unfold_text(text: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", text)


# --- RFC 5322 §3.3 dates ---------------------------------------------------------------------
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip
_OBS_ZONES: Final = {"UT": 0, "GMT": 0, "Z": 0, "EST": -5, "EDT": -4, "CST": -6, "CDT": -5,
                     "MST": -7, "MDT": -6, "PST": -8, "PDT": -7}  # fmt: skip
_DATE: Final = re.compile(
    r"\s*(?:[A-Za-z]{3}\s*,\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{2,4})\s+"
    r"(\d{1,2}):(\d{2})(?::(\d{2}))?\s*([+-]\d{4}|[A-Za-z]{1,3})?\s*"
)


def parse_rfc2822_date(text: str) -> datetime | None:
    """``Tue, 1 Jul 2003 10:52:37 +0200`` as an aware datetime, or None when it is not a date
    (obsolete zone names and two-digit years are read as RFC 5322 §4.3 says)."""
    m = _DATE.fullmatch(_strip_comments(unfold_text(text)))
    if m is None:
        return None
    day, month, year, hour, minute, second, zone = m.groups()
    if month.title() not in _MONTHS:
        return None
    y = int(year)
    if len(year) < 4:
        y += 2000 if y < 50 else 1900
    if zone is None or zone[0] in "+-":
        sign = -1 if zone and zone[0] == "-" else 1
        digits = zone[1:] if zone else "0000"
        offset = sign * (int(digits[:2]) * 60 + int(digits[2:]))
    elif zone.upper() in _OBS_ZONES:
        offset = _OBS_ZONES[zone.upper()] * 60
    else:
        offset = 0  # RFC 5322 §4.3: other military zones are read as +0000
    try:
        tz = timezone(timedelta(minutes=offset))
        month_no = _MONTHS.index(month.title()) + 1
        return datetime(y, month_no, int(day), int(hour), int(minute), int(second or 0), 0, tz)
    except ValueError:
        return None


def format_rfc2822_date(now: float) -> str:
    """``now`` (unix seconds) as ``Tue, 1 Jul 2003 10:52:37 +0000``, as KumoMTA writes it."""
    d = datetime.fromtimestamp(now, UTC)
    return (
        f"{_DAYS[d.weekday()]}, {d.day} {_MONTHS[d.month - 1]} {d.year} "
        f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} +0000"
    )
