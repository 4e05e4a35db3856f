"""The message text of each injected recipient: template expansion and MIME building.

``CompiledContent(request)`` compiles the request's templates once; a syntax error, a builder
with neither ``text_body`` nor ``html_body``, a bad ``from``/``reply_to`` address, a header
name that is not a field name, an attachment that does not decode or an unsupported
``template_dialect`` raises ``ContentError`` (the handler answers 422, as KumoMTA does).
``render(recipient, now)`` then gives ``(prefix, body)`` for one recipient, or raises
``RenderError`` (that recipient fails; the others go on).

Templates (reference §6.1; KumoMTA renders them with MiniJinja): a sandboxed jinja2
environment, as ``maildir_path`` uses, with MiniJinja's printing of ``none``, ``true`` and
``false``; an undefined variable prints as nothing. The variables are the request's
``substitutions``, then ``email``, ``name`` (when given) and ``to_header``, then the
recipient's own ``substitutions``, which win. A raw ``content`` string is one template; in the
builder form ``text_body``, ``html_body``, ``amp_html_body`` and every header value (``subject``
and ``from``/``reply_to`` included) are templates, and the HTML ones escape what they print.
``Static`` expands nothing; ``Handlebars`` is not supported.

The builder form is built with the stdlib ``email`` package as KumoMTA's builder builds it:
``multipart/alternative`` (text, AMP, HTML), inside ``multipart/related`` when an attachment
has a ``content_id`` (an inline image), inside ``multipart/mixed`` for the other attachments;
headers RFC 2047-encoded, ``MIME-Version`` and ``Date`` added, and a ``To:`` made from the
recipient unless ``headers`` has one. A raw message gets ``MIME-Version: 1.0`` when its
header block lacks one. Line endings become CRLF.

Sharing: the per-recipient ``To:`` is the ``prefix``; everything else is the ``body``. When a
recipient's values of the variables the templates use are those of the previous recipient,
``render`` returns the very same ``body`` bytes object, so the messages of a bulk injection
share one body (``Message(shared_body=...)``) instead of each holding a copy.

Imports kumoq.http.inject_schema, jinja2 and the stdlib email package; no sockets, no files.
Must not import aiohttp or the other kumoq.http modules.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import io
import json
import re
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime
from typing import Any, Final, Protocol, cast

from jinja2 import TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

from kumoq.http.inject_schema import (
    Attachment,
    BuilderContent,
    InjectV1Request,
    Recipient,
    TemplateDialect,
)

__all__ = ["CompiledContent", "ContentError", "RenderError"]

#: Headers RFC 2047-encoded and folded; bodies 7-bit clean (quoted-printable or base64).
POLICY: Final = email.policy.SMTP.clone(cte_type="7bit", refold_source="all")
_FIELD_NAME: Final = re.compile(r"[!-9;-~]+")
_HEADER_LINE: Final = re.compile(rb"[!-9;-~]+:")
_LINE_END: Final = re.compile(rb"\r\n|\r|\n")


class ContentError(ValueError):
    """The content cannot be compiled: the whole request is refused (422)."""


class RenderError(ValueError):
    """One recipient's message cannot be made: that recipient fails."""


def _finalize(value: Any) -> Any:
    """Print values as MiniJinja does: ``none``, ``true``, ``false``."""
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value


_TEXT_ENV: Final = SandboxedEnvironment(
    autoescape=False, finalize=_finalize, keep_trailing_newline=True
)
_HTML_ENV: Final = SandboxedEnvironment(
    autoescape=True, finalize=_finalize, keep_trailing_newline=True
)


class _Template(Protocol):
    def render(self, context: dict[str, Any]) -> str: ...


class _Literal:
    """``Static``: the source as it is."""

    def __init__(self, source: str) -> None:
        self._source = source

    def render(self, context: dict[str, Any]) -> str:
        return self._source


class _Compiler:
    """Compiles one request's templates and collects the variables they use."""

    def __init__(self, dialect: TemplateDialect) -> None:
        if dialect is TemplateDialect.HANDLEBARS:
            raise ContentError(
                "template_dialect 'Handlebars' is not supported by kumoq; use 'Jinja' or 'Static'"
            )
        self.static = dialect is TemplateDialect.STATIC
        self.used: set[str] = set()

    def compile(self, field: str, source: str, *, html: bool = False) -> _Template:
        if self.static:
            return _Literal(source)
        env = _HTML_ENV if html else _TEXT_ENV
        try:
            self.used |= meta.find_undeclared_variables(env.parse(source))
            return env.from_string(source)
        except TemplateSyntaxError as exc:
            raise ContentError(
                f"failed parsing field {field!r} as template: {exc.message} (line {exc.lineno})"
            ) from None


class CompiledContent:
    """One request's content, compiled; ``render`` makes each recipient's message."""

    def __init__(self, request: InjectV1Request) -> None:
        self._globals = dict(request.substitutions)
        compiler = _Compiler(request.template_dialect)
        content = request.content
        self._raw: _Template | None = None
        self._parts: list[tuple[str, _Template]] = []  # (subtype, template), in MIME order
        self._headers: list[tuple[str, _Template]] = []
        self._attachments: list[tuple[Attachment, bytes]] = []
        self._own_to = False
        if isinstance(content, str):
            self._raw = compiler.compile("content", content)
        else:
            self._compile_builder(compiler, content)
        self._used = tuple(sorted(compiler.used))
        self._last: tuple[str, bytes] | None = None  # (key, body) of the previous render

    def _compile_builder(self, compiler: _Compiler, content: BuilderContent) -> None:
        if content.text_body is None and content.html_body is None:
            raise ContentError("at least one of text_body and/or html_body must be given")
        for subtype, field, source in (
            ("plain", "content.text_body", content.text_body),
            ("x-amp-html", "content.amp_html_body", content.amp_html_body),
            ("html", "content.html_body", content.html_body),
        ):
            if source is not None:
                template = compiler.compile(field, source, html=subtype != "plain")
                self._parts.append((subtype, template))
        fixed: list[tuple[str, str]] = []
        for name, field, mailbox in (
            ("From", "content.from", content.from_),
            ("Reply-To", "content.reply_to", content.reply_to),
        ):
            if mailbox is not None:
                fixed.append((name, _mailbox(field, mailbox.email, mailbox.name)))
        if content.subject is not None:
            fixed.append(("Subject", content.subject))
        overridden = {name.lower() for name, _ in fixed}
        headers = fixed + [(n, v) for n, v in content.headers if n.lower() not in overridden]
        for name, value in headers:
            if not _FIELD_NAME.fullmatch(name):
                raise ContentError(f"content.headers: {name!r} is not a valid header field name")
            self._headers.append((name, compiler.compile(f"headers[{name}]", value)))
        self._own_to = any(name.lower() == "to" for name, _ in headers)
        for i, attachment in enumerate(content.attachments):
            self._attachments.append((attachment, _attachment_data(i, attachment)))

    def render(self, recipient: Recipient, now: float) -> tuple[bytes, bytes]:
        """``(prefix, body)`` of ``recipient``'s message; raises RenderError."""
        to_header = _mailbox("recipient email", recipient.email, recipient.name, RenderError)
        context = self._context(recipient, to_header)
        key = json.dumps(
            [[name, context[name]] if name in context else [name] for name in self._used],
            default=repr,
        )
        if self._last is not None and self._last[0] == key:
            body = self._last[1]
        else:
            try:
                body = self._render_raw(context) if self._raw else self._render_built(context, now)
            except RenderError:
                raise
            except Exception as exc:  # jinja2's UndefinedError, SecurityError, TypeError...
                raise RenderError(f"template expansion failed: {exc}") from None
            self._last = (key, body)
        if self._raw is not None or self._own_to:
            return b"", body
        return _fold("To", to_header), body

    def _context(self, recipient: Recipient, to_header: str) -> dict[str, Any]:
        context = dict(self._globals)
        context["email"] = recipient.email
        if recipient.name is not None:
            context["name"] = recipient.name
        context["to_header"] = to_header
        context.update(recipient.substitutions)
        return context

    def _render_raw(self, context: dict[str, Any]) -> bytes:
        assert self._raw is not None
        return _with_mime_version(_crlf(self._raw.render(context).encode("utf-8")))

    def _render_built(self, context: dict[str, Any], now: float) -> bytes:
        parts: list[MIMEPart] = []
        for subtype, template in self._parts:
            part = MIMEPart(policy=POLICY)
            part.set_content(template.render(context), subtype=subtype, charset="utf-8")
            parts.append(part)
        root = parts[0] if len(parts) == 1 else _multipart("alternative", parts)
        inline = [_binary(a, data) for a, data in self._attachments if a.content_id]
        attached = [_binary(a, data) for a, data in self._attachments if not a.content_id]
        if inline:
            root = _multipart("related", [root, *inline])
        if attached:
            root = _multipart("mixed", [root, *attached])
        head = [_fold(name, template.render(context)) for name, template in self._headers]
        head.append(b"MIME-Version: 1.0\r\n")
        head.append(_fold("Date", format_datetime(datetime.fromtimestamp(now, UTC))))
        out = io.BytesIO()
        BytesGenerator(out, policy=POLICY).flatten(cast(EmailMessage, root))
        return b"".join(head) + out.getvalue()


def _mailbox(
    field: str, addr: str, name: str | None, error: type[ValueError] = ContentError
) -> str:
    """``"Name" <addr>`` as a header value; raises ``error`` for an address that does not
    parse."""
    try:
        return str(Address(display_name=name or "", addr_spec=addr))
    except Exception as exc:  # HeaderParseError, InvalidHeaderDefect, ValueError
        raise error(f"{field}: invalid address {addr!r}: {exc}") from None


def _fold(name: str, value: str) -> bytes:
    if "\r" in value or "\n" in value:
        raise RenderError(f"header {name}: the value has a line break: {value[:80]!r}")
    folded: str = POLICY.fold(name, value)
    return folded.encode("ascii", "surrogateescape")


def _attachment_data(index: int, attachment: Attachment) -> bytes:
    field = f"content.attachments[{index}]"
    if attachment.content_type.count("/") != 1 or not all(
        _FIELD_NAME.fullmatch(p.strip()) for p in attachment.content_type.split(";")[0].split("/")
    ):
        raise ContentError(f"{field}.content_type: not a MIME type: {attachment.content_type!r}")
    if not attachment.base64:
        return attachment.data.encode("utf-8")
    try:
        return base64.b64decode(attachment.data, validate=True)
    except binascii.Error as exc:
        raise ContentError(f"{field}.data: invalid base64: {exc}") from None


def _binary(attachment: Attachment, data: bytes) -> MIMEPart:
    """An attachment part: base64, ``inline`` with a Content-ID, else ``attachment``."""
    mime = attachment.content_type.split(";")[0].strip()
    maintype, subtype = (p.strip() for p in mime.split("/"))
    cid = attachment.content_id
    part = MIMEPart(policy=POLICY)
    part.set_content(
        data,
        maintype,
        subtype,
        disposition="inline" if cid else "attachment",
        filename=attachment.file_name,
        cid=(cid if cid.startswith("<") else f"<{cid}>") if cid else None,
    )
    return part


def _multipart(subtype: str, parts: list[MIMEPart]) -> MIMEPart:
    container = MIMEPart(policy=POLICY)
    container["Content-Type"] = f"multipart/{subtype}"
    for part in parts:
        container.attach(part)
    return container


def _crlf(data: bytes) -> bytes:
    """Every line ending as CRLF, and a final one."""
    data = _LINE_END.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _with_mime_version(data: bytes) -> bytes:
    """``data`` (CRLF) after checking its header block, with ``MIME-Version: 1.0`` added at
    the end of that block when it has none; raises RenderError when it is not a message."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    lines = head.split(b"\r\n")[:-1]
    for number, line in enumerate(lines, 1):
        continuation = line[:1] in (b" ", b"\t") and number > 1
        if not continuation and not _HEADER_LINE.match(line):
            raise RenderError(
                f"content: line {number} of the header block is not a header field: "
                f"{line[:60].decode('utf-8', 'replace')!r}"
            )
    if any(line[:13].lower() == b"mime-version:" for line in lines):
        return data
    cut = len(head)
    return data[:cut] + b"MIME-Version: 1.0\r\n" + data[cut:]
