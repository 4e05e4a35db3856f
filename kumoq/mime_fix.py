"""``msg:check_fix_conformance`` and ``mimepart:rebuild()``: find a message's conformance
issues, refuse the ones to check, repair the ones to fix.

``check_fix(data, check, fix, settings=..., message_id=..., now=...)`` follows KumoMTA's
``MimePart::check_fix_conformance``: the issues found deep in the tree (a text part whose
bytes do not fit its charset needs a transfer encoding), minus those also asked to be
fixed, that are in ``check`` fail it with ``Message has conformance issues: A|B``. Otherwise,
if any issue is to be fixed, the message is rebuilt from its parsed tree (unless only
headers are missing): each leaf decoded and encoded again (text as quoted-printable or
base64 with a charset, anything else as base64), every header field written again (8-bit
text RFC 2047-encoded, long lines folded, ``Name : value`` made ``Name: value``), CRLF
throughout. Then the missing ``Date``, ``Mime-Version: 1.0`` and ``Message-ID`` are added.

Text in no declared charset is decoded as UTF-8 with replacement characters, or, with
``detect_encoding``, in the first of ``include_encodings`` (default: UTF-8 then
windows-1252), not in ``exclude_encodings``, that decodes it: a simpler detector than
KumoMTA's (docs/deviations.md).

Pure (L0): imports kumoq.mime, kumoq.mime_headers, kumoq.header_values and
``email.header``; time comes in as ``now``.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from dataclasses import dataclass
from email.header import Header
from typing import Any, Final

from kumoq.header_values import encode_address_list, parse_address_list
from kumoq.mime import MimePart
from kumoq.mime_headers import (
    MAX_LINE,
    NONE,
    Conformance,
    Field,
    MimeError,
    MimeParams,
    conformance_text,
    format_rfc2822_date,
    new_field,
)

__all__ = ["FixSettings", "check_fix", "deep_conformance", "rebuild"]

_MISSING_HEADERS: Final = (
    Conformance.MISSING_DATE_HEADER
    | Conformance.MISSING_MIME_VERSION
    | Conformance.MISSING_MESSAGE_ID_HEADER
)
_ADDRESS_HEADERS: Final = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to", "resent-cc",
     "resent-bcc", "resent-sender"}
)  # fmt: skip
_DEFAULT_ENCODINGS: Final = ("utf-8", "windows-1252")


@dataclass(frozen=True, slots=True)
class FixSettings:
    """The optional third argument of ``check_fix_conformance``."""

    detect_encoding: bool = False
    include_encodings: tuple[str, ...] = ()
    exclude_encodings: tuple[str, ...] = ()
    message_id: str | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> FixSettings:
        """Raises ValueError for an unknown key or a value of the wrong type."""
        if not mapping:
            return cls()
        allowed = ("detect_encoding", "include_encodings", "exclude_encodings", "message_id")
        unknown = sorted(set(mapping) - set(allowed))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; expected one of {list(allowed)}")
        detect = mapping.get("detect_encoding", False)
        if not isinstance(detect, bool):
            raise ValueError(f"detect_encoding must be a boolean, got {detect!r}")
        message_id = mapping.get("message_id")
        if message_id is not None and not isinstance(message_id, str):
            raise ValueError(f"message_id must be a string, got {message_id!r}")
        return cls(
            detect, _names(mapping, "include_encodings"), _names(mapping, "exclude_encodings"),
            message_id,
        )  # fmt: skip

    def decode(self, data: bytes) -> str:
        """``data`` as text: by the detector when enabled, else UTF-8 with replacements."""
        if self.detect_encoding:
            excluded = {codecs.lookup(e).name for e in self.exclude_encodings}
            for name in self.include_encodings or _DEFAULT_ENCODINGS:
                if codecs.lookup(name).name in excluded:
                    continue
                try:
                    return data.decode(name)
                except UnicodeDecodeError:
                    continue
        return data.decode("utf-8", "replace")


def _names(mapping: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = mapping.get(key) or []
    if isinstance(value, Mapping):  # an empty Lua table
        value = list(value.values())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of encoding names, got {value!r}")
    for name in value:
        try:
            codecs.lookup(name)
        except LookupError:
            raise ValueError(f"{key}: unknown encoding {name!r}") from None
    return tuple(value)


def deep_conformance(part: MimePart) -> Conformance:
    """The part's issues and its leaves': a text leaf that does not decode in its charset
    needs a transfer encoding. O(size)."""
    if part.parts:
        flags = part.conformance
        for child in part.parts:
            flags |= deep_conformance(child)
        return flags
    try:
        return part.conformance | part.body_and_flags()[1]
    except MimeError:
        return part.conformance | Conformance.NEEDS_TRANSFER_ENCODING


def check_fix(
    data: bytes,
    check: Conformance,
    fix: Conformance,
    *,
    settings: FixSettings,
    message_id: str | None,
    now: float,
) -> tuple[str | None, bytes | None]:
    """``(error, None)`` when an issue in ``check`` (and not in ``fix``) was found or the data
    cannot be parsed; ``(None, new data)`` after a fix; ``(None, None)`` when nothing was to
    be done. ``message_id`` is the id given to a missing Message-ID (without ``<>``)."""
    try:
        msg = MimePart.parse(data)
        found = deep_conformance(msg)
        problems = found & check & ~fix
        if problems:
            return f"Message has conformance issues: {conformance_text(problems)}", None
        to_fix = found & fix
        if not to_fix:
            return None, None
        if to_fix & ~_MISSING_HEADERS:
            if to_fix & Conformance.NEEDS_TRANSFER_ENCODING and settings.detect_encoding:
                msg = MimePart.parse(_recode(data, settings))
            msg = rebuild(msg, settings)
        if to_fix & Conformance.MISSING_DATE_HEADER:
            _set(msg, "Date", format_rfc2822_date(now))
        if to_fix & Conformance.MISSING_MIME_VERSION:
            _set(msg, "Mime-Version", "1.0")
        mid = settings.message_id or message_id
        if to_fix & Conformance.MISSING_MESSAGE_ID_HEADER and mid:
            _set(msg, "Message-ID", f"<{mid}>")
        return None, msg.to_bytes()
    except MimeError as e:
        return str(e), None


def _recode(data: bytes, settings: FixSettings) -> bytes:
    """The message with each line that is not UTF-8 decoded by the detector, as UTF-8."""
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if not line.isascii():
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                lines[i] = settings.decode(line).encode("utf-8")
    return b"\n".join(lines)


def _set(part: MimePart, name: str, value: str) -> None:
    """Replace the first ``name`` field, or append one."""
    new = new_field(name, value)
    part.changed()
    for i, f in enumerate(part.fields):
        if f.name.lower() == name.lower():
            part.fields[i] = new
            return
    part.fields.append(new)


def rebuild(part: MimePart, settings: FixSettings | None = None) -> MimePart:
    """A new part built from what ``part`` means (see the module docstring); ``part`` is
    not changed. Raises MimeError when a multipart has no usable Content-Type."""
    settings = settings or FixSettings()
    ctype = part.params("Content-Type")
    new = MimePart([], conformance=NONE)
    if part.parts:
        if ctype is None or not ctype.get("boundary"):
            raise MimeError("parsing body: multipart message has no content-type information")
        new.fields.append(new_field("Content-Type", ctype.to_text()))
        new.parts = [rebuild(child, settings) for child in part.parts]
    else:
        body, _ = part.body_and_flags()
        if part.is_text() and isinstance(body, bytes):
            body = settings.decode(body)
        if isinstance(body, str):
            new.replace_text_body(ctype.value if ctype else "text/plain", body)
        else:
            media = ctype.value if ctype else "application/octet-stream"
            new.replace_binary_body(media, body)
        if ctype is not None:  # keep the parameters the new Content-Type lacks
            merged = _merge(ctype, new.params("Content-Type"))
            new.fields = [f for f in new.fields if f.name.lower() != "content-type"]
            new.fields.insert(0, new_field("Content-Type", merged.to_text()))
    for f in part.fields:
        lower = f.name.lower()
        if lower in ("content-type", "content-transfer-encoding"):
            continue
        new.fields.append(_rebuild_field(f, settings))
    new.changed()
    return new


def _merge(old: MimeParams, new: MimeParams | None) -> MimeParams:
    params = dict(new.params) if new is not None else {}
    for key, value in old.params.items():
        params.setdefault(key, value)
    return MimeParams(new.value if new is not None else old.value, params)


def _rebuild_field(f: Field, settings: FixSettings) -> Field:
    """The field written again: as it was when it is ASCII and short; else an address list
    re-encoded, or the text RFC 2047-encoded and folded."""
    raw = f.value
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if raw.isascii() and all(len(line) + len(f.name) + 2 <= MAX_LINE for line in lines):
        return Field(f.name, b": ", b"\r\n".join(lines), b"\r\n")
    text = f.unstructured if raw.isascii() else settings.decode(raw)
    if f.name.lower() in _ADDRESS_HEADERS:
        try:
            return new_field(f.name, encode_address_list(parse_address_list(text), f.name))
        except MimeError:
            pass
    charset = "us-ascii" if text.isascii() else "utf-8"
    value = Header(text, charset, maxlinelen=MAX_LINE, header_name=f.name)
    return new_field(f.name, value.encode(linesep="\r\n"))
