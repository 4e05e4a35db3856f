"""MIME trees: parse RFC 5322/MIME bytes into parts, read and replace their bodies, write them.

``MimePart.parse(data)`` builds the tree (KumoMTA's ``MimePart``): each part has its header
fields (``kumoq.mime_headers.Field``), its raw (transfer-encoded) body or its child parts,
and the conformance issues found while parsing it and its children. A part that is not
changed keeps the bytes it was parsed from, so ``to_bytes()`` of an unchanged tree is the
input, byte for byte; a changed part is written again from its fields and children (CRLF,
``--boundary`` lines), its unchanged children still as they were.

``body()`` undoes the transfer encoding and, for text, the charset: text comes back as
``str``, anything else as ``bytes``. ``replace_text_body`` and ``replace_binary_body`` encode
new content as KumoMTA does: quoted-printable or base64, whichever is shorter (none for
short ASCII lines), with ``charset=us-ascii`` or ``utf-8``.

Parts are addressed by a path of child indexes from the root (``()`` is the root,
``(1, 0)`` the first child of the second child); ``simple_structure()`` finds the primary
text, HTML and AMP parts and the attachments as such paths.

Pure (L0): imports kumoq.mime_headers, kumoq.headers and the standard library's codecs;
no IO.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from dataclasses import dataclass, field
from typing import Final

from kumoq.mime_headers import (
    LONG_LINE,
    NONE,
    Conformance,
    Field,
    MimeError,
    MimeParams,
    new_field,
    parse_header_block,
    parse_message_id,
    parse_mime_params,
    parse_rfc2822_date,
)

__all__ = ["MimePart", "Path", "SimpleStructure", "encode_text", "is_inline"]

Path = tuple[int, ...]
MAX_DEPTH: Final = 32
MAX_PARTS: Final = 255  # KumoMTA addresses a child with a u8
_LONE_EOL: Final = re.compile(rb"\r(?!\n)|(?<!\r)\n")


@dataclass(slots=True)
class MimePart:
    """One part: header ``fields``, the ``raw_body`` (a leaf's transfer-encoded content),
    ``parts`` (a multipart's children), the multipart's ``intro``/``outro`` around its
    boundaries, and ``raw``, the bytes it was parsed from (None once it changed)."""

    fields: list[Field]
    raw_body: bytes = b""
    parts: list[MimePart] = field(default_factory=list)
    intro: bytes = b""
    outro: bytes = b""
    sep: bytes = b"\r\n"
    conformance: Conformance = NONE
    raw: bytes | None = None
    _params: dict[str, MimeParams | None] = field(default_factory=dict, repr=False, compare=False)

    # --- parsing --------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes) -> MimePart:
        """Parse a whole message. Raises MimeError when it is not a message at all."""
        part = cls._parse(data, 0)
        top = Conformance(0)
        date = part.first("Date")
        if date is None or parse_rfc2822_date(date.unstructured) is None:
            top |= Conformance.MISSING_DATE_HEADER
        msg_id = part.first("Message-ID")
        if msg_id is None or parse_message_id(msg_id.value) is None:
            top |= Conformance.MISSING_MESSAGE_ID_HEADER
        version = part.first("Mime-Version")
        if version is None or version.unstructured != "1.0":
            top |= Conformance.MISSING_MIME_VERSION
        part.conformance |= top
        return part

    @classmethod
    def _parse(cls, data: bytes, depth: int) -> MimePart:
        if depth > MAX_DEPTH:
            raise MimeError("Mime Tree is nested too deeply")
        fields, offset, flags = parse_header_block(data)
        sep = _separator(data, offset)
        part = cls(fields, data[offset:], sep=sep, raw=data)
        if not data.isascii():
            flags |= Conformance.NEEDS_TRANSFER_ENCODING
        if LONG_LINE.search(data):
            flags |= Conformance.LINE_TOO_LONG
        flags &= ~Conformance.NON_CANONICAL_LINE_ENDINGS
        if _LONE_EOL.search(data):
            flags |= Conformance.NON_CANONICAL_LINE_ENDINGS
        ctype, invalid = part.content_type_checked()
        if invalid:
            flags |= Conformance.INVALID_MIME_HEADERS
        boundary = ctype.get("boundary") if ctype and ctype.value.startswith("multipart/") else None
        if boundary:
            part._split(boundary, depth)
            for child in part.parts:
                flags |= child.conformance
        part.conformance = flags
        return part

    def _split(self, boundary: str, depth: int) -> None:
        """Cut a multipart body at its ``--boundary`` lines (RFC 2046 §5.1.1). As in KumoMTA,
        a child keeps the line ending before the next boundary line."""
        body = self.raw_body
        delim = b"--" + boundary.encode("utf-8", "surrogateescape")
        starts = [m.start() for m in re.finditer(rb"(?m)^" + re.escape(delim), body)]
        if not starts:
            return
        self.intro = body[: starts[0]]
        for i, start in enumerate(starts):
            line_end = body.find(b"\n", start)
            line_end = len(body) if line_end < 0 else line_end + 1
            if body[start + len(delim) : start + len(delim) + 2] == b"--":
                self.outro = body[line_end:]
                return
            end = starts[i + 1] if i + 1 < len(starts) else len(body)
            chunk = body[line_end:end]
            if len(self.parts) >= MAX_PARTS:
                raise MimeError("Mime Tree has too many child parts")
            self.parts.append(MimePart._parse(chunk, depth + 1))
        self.outro = b""

    # --- headers --------------------------------------------------------------------------
    def first(self, name: str) -> Field | None:
        wanted = name.lower()
        for f in self.fields:
            if f.name.lower() == wanted:
                return f
        return None

    def params(self, name: str) -> MimeParams | None:
        """``name``'s value as MIME parameters; None when absent or malformed. Cached until
        ``changed()``."""
        key = name.lower()
        if key in self._params:
            return self._params[key]
        f = self.first(name)
        found = None
        if f is not None:
            try:
                found = parse_mime_params(f.value)
            except MimeError:
                found = None
        self._params[key] = found
        return found

    def content_type_checked(self) -> tuple[MimeParams | None, bool]:
        """The Content-Type (None when absent or malformed) and whether the MIME headers
        (Content-Type, -Transfer-Encoding, -Disposition) are malformed."""
        invalid = False
        for name in ("Content-Transfer-Encoding", "Content-Disposition", "Content-Type"):
            f = self.first(name)
            if f is not None and self.params(name) is None:
                invalid = True
        if self.transfer_encoding() not in _ENCODINGS:
            invalid = True
        return self.params("Content-Type"), invalid

    def content_type(self) -> str:
        """The media type, lower case; ``text/plain`` when absent or malformed."""
        ctype = self.params("Content-Type")
        return ctype.value if ctype is not None else "text/plain"

    def transfer_encoding(self) -> str:
        cte = self.params("Content-Transfer-Encoding")
        return cte.value if cte is not None else "7bit"

    def changed(self) -> None:
        """Forget the parsed bytes (the part is written again from its fields) and what was
        read from the fields. Call it before changing ``fields``."""
        self.raw = None
        self._params.clear()

    # --- bodies ---------------------------------------------------------------------------
    def decoded_bytes(self) -> bytes:
        """The body without its transfer encoding. Raises MimeError for bad base64."""
        cte = self.transfer_encoding()
        if cte == "base64":
            try:
                return binascii.a2b_base64(_pad(re.sub(rb"[^A-Za-z0-9+/=]", b"", self.raw_body)))
            except binascii.Error as e:
                raise MimeError(f"parsing body: base64 decode: {e}") from None
        if cte == "quoted-printable":
            return binascii.a2b_qp(self.raw_body)
        return self.raw_body

    def body(self) -> str | bytes:
        """The decoded body: ``str`` for text (its charset applied, else UTF-8 tried),
        ``bytes`` otherwise, or for text in no charset that fits. Raises MimeError for an
        unknown charset."""
        return self.body_and_flags()[0]

    def body_and_flags(self) -> tuple[str | bytes, Conformance]:
        data = self.decoded_bytes()
        if not self.is_text():
            return data, NONE
        charset = self.charset()
        try:
            codecs.lookup(charset)
        except LookupError:
            raise MimeError(f"parsing body: unsupported charset {charset}") from None
        try:
            return data.decode(charset), NONE
        except UnicodeDecodeError:
            pass
        try:
            return data.decode("utf-8"), Conformance.NEEDS_TRANSFER_ENCODING
        except UnicodeDecodeError:
            return data, Conformance.NEEDS_TRANSFER_ENCODING

    def is_text(self) -> bool:
        ctype = self.params("Content-Type")
        return ctype is None or ctype.value.startswith("text/")

    def charset(self) -> str:
        ctype = self.params("Content-Type")
        return (ctype.get("charset") if ctype else None) or "us-ascii"

    def replace_text_body(self, content_type: str, text: str) -> None:
        """Make this part ``content_type`` (charset set by the content) holding ``text``."""
        encoded, cte, charset = encode_text(text)
        ctype = MimeParams(content_type.lower(), {"charset": charset})
        self._replace(encoded, ctype, cte)

    def replace_binary_body(self, content_type: str, data: bytes) -> None:
        ctype = parse_mime_params(content_type) if ";" in content_type else None
        self._replace(_b64(data), ctype or MimeParams(content_type.lower(), {}), "base64")

    def _replace(self, body: bytes, ctype: MimeParams, cte: str | None) -> None:
        drop = ("content-type", "content-transfer-encoding")
        self.fields = [f for f in self.fields if f.name.lower() not in drop]
        self.fields.append(new_field("Content-Type", ctype.to_text()))
        if cte is not None:
            self.fields.append(new_field("Content-Transfer-Encoding", cte))
        self.raw_body, self.parts, self.intro, self.outro = body, [], b"", b""
        self.changed()

    # --- writing --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The part as RFC 5322 bytes: as parsed when unchanged. O(size)."""
        if self.raw is not None:
            return self.raw
        crlf = b"\n" if self.conformance & Conformance.NON_CANONICAL_LINE_ENDINGS else b"\r\n"
        out = [f.to_bytes(crlf) for f in self.fields]
        out.append(self.sep or crlf)
        if not self.parts:
            out.append(self.raw_body)
            return b"".join(out)
        boundary = self._boundary()
        out.append(self.intro)
        for child in self.parts:
            text = child.to_bytes()
            out += (b"--", boundary, crlf, text, b"" if text.endswith(b"\n") else crlf)
        out += (b"--", boundary, b"--", crlf, self.outro)
        return b"".join(out)

    def _boundary(self) -> bytes:
        ctype = self.params("Content-Type")
        boundary = ctype.get("boundary") if ctype else None
        if not boundary:
            raise MimeError("expected Content-Type to have a boundary")
        return boundary.encode("utf-8", "surrogateescape")

    # --- the tree -------------------------------------------------------------------------
    def resolve(self, path: Path) -> MimePart:
        part = self
        for index in path:
            if not 0 <= index < len(part.parts):
                raise MimeError("failed to resolve the part reference to a MimePart")
            part = part.parts[index]
        return part

    def touch(self, path: Path) -> MimePart:
        """``resolve(path)``, marking it and its ancestors changed (before a change)."""
        part = self
        part.changed()
        for index in path:
            part = part.resolve((index,))
            part.changed()
        return part

    def simple_structure(self, path: Path = ()) -> SimpleStructure:
        """KumoMTA's simplified structure: the first inline text/plain, text/html and
        text/x-amp-html parts found depth first, the header part, and every other leaf as an
        attachment."""
        part = self.resolve(path)
        ctype = part.params("Content-Type")
        media = ctype.value if ctype is not None else "text/plain"
        if is_inline(part) and media in _PRIMARY:
            found = SimpleStructure(header=path)
            setattr(found, _PRIMARY[media], path)
            return found
        if media.startswith("multipart/"):
            found = SimpleStructure(header=path)
            for i in range(len(part.parts)):
                child = self.simple_structure((*path, i))
                for key in _PRIMARY.values():
                    mine, theirs = getattr(found, key), getattr(child, key)
                    if theirs is not None:
                        if mine is None:
                            setattr(found, key, theirs)
                        else:
                            found.attachments.append(theirs)
                found.attachments += child.attachments
            return found
        if ctype is None:
            return SimpleStructure(header=path, text=path)
        return SimpleStructure(header=path, attachments=[path])


_ENCODINGS: Final = frozenset({"7bit", "8bit", "binary", "base64", "quoted-printable"})
_PRIMARY: Final = {"text/plain": "text", "text/html": "html", "text/x-amp-html": "amp_html"}


@dataclass(slots=True)
class SimpleStructure:
    """Paths of the primary parts (None: not found) and of the attachments."""

    header: Path
    text: Path | None = None
    html: Path | None = None
    amp_html: Path | None = None
    attachments: list[Path] = field(default_factory=list)


def is_inline(part: MimePart) -> bool:
    """No Content-Disposition, or ``inline``."""
    cd = part.params("Content-Disposition")
    return cd is None or cd.value == "inline"


def encode_text(text: str) -> tuple[bytes, str | None, str]:
    """``(body, transfer encoding or None, charset)`` for ``text``, as KumoMTA's builder picks
    them: as is when quoted-printable would change nothing, else quoted-printable or base64,
    whichever is shorter. Line endings become CRLF; the body ends with CRLF."""
    data = re.sub(rb"\r?\n", b"\r\n", text.encode("utf-8", "surrogateescape"))
    charset = "us-ascii" if data.isascii() else "utf-8"
    qp = binascii.b2a_qp(data, istext=True)
    b64 = _b64(data)
    if qp == data:
        body, cte = data, None
    elif len(qp) <= len(b64):
        body, cte = qp, "quoted-printable"
    else:
        body, cte = b64, "base64"
    return (body if body.endswith(b"\r\n") else body + b"\r\n"), cte, charset


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _pad(data: bytes) -> bytes:
    data = data.split(b"=", 1)[0]
    return data + b"=" * (-len(data) % 4)


def _separator(data: bytes, offset: int) -> bytes:
    """The empty line that ended the header block at ``offset`` (b"" if the data ended)."""
    if offset >= 2 and data[offset - 2 : offset] == b"\r\n" and _blank_before(data, offset - 2):
        return b"\r\n"
    if offset >= 1 and data[offset - 1 : offset] == b"\n" and _blank_before(data, offset - 1):
        return b"\n"
    return b""


def _blank_before(data: bytes, eol: int) -> bool:
    return eol == 0 or data[eol - 1 : eol] == b"\n"
