"""Pure operations on the header block of RFC 5322 message bytes.

The Lua ``Message`` methods (``append_header``, ``get_first_named_header_value``,
``import_x_headers``...) are thin wrappers over these functions. Everything works on ``bytes``
and returns new ``bytes``; nothing is re-encoded that was not asked to change, so a header that
is kept stays byte-for-byte as received (folding included).

Parsing follows KumoMTA's ``mailparsing`` leniently: a header field is ``name: value`` with
folded continuation lines; the header block ends at the first line that is not a header field
(normally the empty line before the body). Both CRLF and bare LF line endings are read; new
header fields are always written with CRLF. Names compare case-insensitively. Values are
returned unfolded, trimmed and RFC 2047-decoded; a value whose encoded words cannot be decoded
is returned raw. Bytes that are not UTF-8 come back as lone surrogates (``surrogateescape``) so
the caller can recover them exactly with ``value.encode("utf-8", "surrogateescape")``.

Pure (L0): imports only the standard library; no IO, no lupa, no asyncio.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from email.header import Header, decode_header, make_header
from typing import Final, NamedTuple

__all__ = [
    "HeaderField",
    "all_headers",
    "all_named",
    "append_header",
    "decode_value",
    "first_named",
    "format_header",
    "is_x_header",
    "meta_name_for_header",
    "parse_headers",
    "prepend_header",
    "remove_all_named",
    "remove_x_headers",
    "retain_headers",
    "unfold",
    "x_header_values",
]

# ftext (RFC 5322 §3.6.8): printable ASCII except ':'. Obsolete "Name : value" is accepted.
_FIELD: Final = re.compile(rb"([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")
_FOLD: Final = re.compile(rb"\r?\n(?=[ \t])")
_NAME: Final = re.compile(r"[!-9;-~]+")
_BAD_BREAK: Final = re.compile(r"\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n")


class HeaderField(NamedTuple):
    """One header field: ``data[start:end]`` is its full text including the line ending."""

    name: str
    raw: bytes
    start: int
    end: int

    @property
    def value(self) -> str:
        """The unfolded, trimmed, RFC 2047-decoded value."""
        return decode_value(self.raw)


def _fields(data: bytes) -> Iterator[re.Match[bytes]]:
    pos = 0
    size = len(data)
    match = _FIELD.match
    while pos < size:
        m = match(data, pos)
        if m is None:
            return
        yield m
        pos = m.end()


def _raw(m: re.Match[bytes]) -> bytes:
    raw = m.group(2)
    return raw[:-1] if raw.endswith(b"\r") else raw


def parse_headers(data: bytes) -> tuple[list[HeaderField], int]:
    """The header fields of ``data`` in order, and the offset where the header block ends.

    ``data[offset:]`` is the separator line (if any) plus the body. O(size of the header block).
    """
    fields = [
        HeaderField(m.group(1).decode("ascii"), _raw(m), m.start(), m.end()) for m in _fields(data)
    ]
    return fields, fields[-1].end if fields else 0


def unfold(raw: bytes) -> bytes:
    """Remove the line breaks of folded continuation lines (RFC 5322 §2.2.3)."""
    return _FOLD.sub(b"", raw) if b"\n" in raw else raw


def decode_value(raw: bytes) -> str:
    """Unfold, trim and decode RFC 2047 encoded words; on a decoding failure, the raw text."""
    text = unfold(raw).strip(b" \t").decode("utf-8", "surrogateescape")
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, ValueError, UnicodeError, AssertionError):
        return text


def _matcher(names: str | Collection[str]) -> Callable[[str], bool]:
    if isinstance(names, str):
        wanted = names.lower()
        return lambda name: name.lower() == wanted
    lowered = {n.lower() for n in names}
    return lambda name: name.lower() in lowered


def first_named(data: bytes, name: str) -> str | None:
    """The decoded value of the first field called ``name`` (any case), or None."""
    wanted = name.lower().encode("utf-8", "surrogateescape")
    # _fields() inlined: the policy asks this of every message received.
    match = _FIELD.match
    pos = 0
    size = len(data)
    while pos < size:
        m = match(data, pos)
        if m is None:
            return None
        if m.group(1).lower() == wanted:
            return decode_value(_raw(m))
        pos = m.end()
    return None


def all_named(data: bytes, name: str) -> list[str]:
    """The decoded values of every field called ``name``, in order."""
    wanted = name.lower().encode("utf-8", "surrogateescape")
    return [decode_value(_raw(m)) for m in _fields(data) if m.group(1).lower() == wanted]


def all_headers(data: bytes) -> list[tuple[str, str]]:
    """``(name, decoded value)`` for every header field, in order."""
    return [(f.name, f.value) for f in parse_headers(data)[0]]


def retain_headers(data: bytes, keep: Callable[[str], bool]) -> bytes:
    """``data`` without the header fields whose name ``keep`` rejects; the rest is untouched."""
    fields, _ = parse_headers(data)
    dropped = [f for f in fields if not keep(f.name)]
    if not dropped:
        return data
    parts: list[bytes] = []
    pos = 0
    for f in dropped:
        parts.append(data[pos : f.start])
        pos = f.end
    parts.append(data[pos:])
    return b"".join(parts)


def remove_all_named(data: bytes, name: str) -> bytes:
    """``data`` without any field called ``name`` (any case)."""
    match = _matcher(name)
    return retain_headers(data, lambda n: not match(n))


def is_x_header(name: str) -> bool:
    return name[:2] in ("X-", "x-")


def meta_name_for_header(name: str) -> str:
    """The meta key ``import_x_headers`` uses: ``X-Foo-Bar`` becomes ``x_foo_bar``."""
    return name.lower().replace("-", "_")


def _x_selector(names: Collection[str] | None) -> Callable[[str], bool]:
    return _matcher(names) if names else is_x_header


def x_header_values(data: bytes, names: Collection[str] | None = None) -> list[tuple[str, str]]:
    """``(meta key, decoded value)`` for each X- header (or each header in ``names``), in order.

    A name that appears twice yields two pairs; applied in order, the last one wins (as in
    KumoMTA's ``import_x_headers``).
    """
    selected = _x_selector(names)
    return [
        (meta_name_for_header(f.name), f.value) for f in parse_headers(data)[0] if selected(f.name)
    ]


def remove_x_headers(data: bytes, names: Collection[str] | None = None) -> bytes:
    """``data`` without its X- headers (or without the headers in ``names``)."""
    selected = _x_selector(names)
    return retain_headers(data, lambda n: not selected(n))


def format_header(name: str, value: str, *, encode: bool = False) -> bytes:
    """One header field line ending in CRLF.

    With ``encode``, a non-ASCII value is RFC 2047-encoded and folded. Otherwise the value is
    written as given; it may be pre-folded (CRLF followed by white space) but must not contain
    any other line break. Raises ValueError for an invalid name or value.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if value.endswith("\r\n"):
        value = value[:-2]
    if encode and not value.isascii():
        value = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    elif _BAD_BREAK.search(value):
        raise ValueError(f"header value for {name!r} must not contain line breaks")
    return f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")


def append_header(data: bytes, name: str, value: str, *, encode: bool = False) -> bytes:
    """``data`` with a new field after the last header field (before the blank line)."""
    line = format_header(name, value, encode=encode)
    end = 0
    for m in _fields(data):
        end = m.end()
    head = data[:end]
    if head and not head.endswith(b"\n"):
        head += b"\r\n"
    return b"".join((head, line, data[end:]))


def prepend_header(data: bytes, name: str, value: str, *, encode: bool = False) -> bytes:
    """``data`` with a new field before the first header field."""
    return format_header(name, value, encode=encode) + data
