"""KumoMTA's ``InjectV1Request``, parsed and validated from decoded JSON (reference §1.3, §6.1).

The shape and its rules are KumoMTA's (``crates/kumod/src/http_server/inject_v1.rs``; serde
with ``deny_unknown_fields``):

- required: ``envelope_sender`` (an address, or ``""`` for the null sender), ``recipients``
  (a list of ``{email, name?, substitutions?, metadata?}``) and ``content``;
- ``content`` is either the RFC 5322 message text, or a builder object
  ``{subject?, text_body?, html_body?, amp_html_body?, headers?, from?, reply_to?,
  attachments?}`` with ``from``/``reply_to`` as ``{email, name?}`` and each attachment
  ``{data, content_type, base64?, file_name?, content_id?}``;
- optional: ``substitutions`` (any JSON values), ``template_dialect`` (``Jinja``, ``Static``,
  ``Handlebars``), ``deferred_spool``, ``deferred_generation``, ``trace_headers``
  (``{received_header?, supplemental_header?, header_name?, include_meta_names?}``);
- an unknown field, a missing one, or a value of the wrong type is an error naming the field's
  path (``recipients[3].email``). ``null`` is accepted where KumoMTA has an ``Option``.

``parse_inject_request`` raises ``SchemaError(field, message)``; the handler answers 400.
A recipient's ``email`` is checked when its message is made (a bad one fails that recipient,
as in KumoMTA), not here.

Pure: imports only kumoq.message and kumoq.errors; no IO. Must not import aiohttp or the other
kumoq.http modules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from kumoq.errors import AddressError
from kumoq.message import EnvelopeAddress

__all__ = [
    "Attachment",
    "BuilderContent",
    "FromHeader",
    "InjectV1Request",
    "Recipient",
    "SchemaError",
    "TemplateDialect",
    "TraceHeaders",
    "parse_inject_request",
]

T = TypeVar("T")


class SchemaError(ValueError):
    """The request does not match InjectV1Request; ``field`` is the path at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class TemplateDialect(StrEnum):
    JINJA = "Jinja"
    STATIC = "Static"
    HANDLEBARS = "Handlebars"


@dataclass(frozen=True, slots=True)
class FromHeader:
    email: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    data: str
    content_type: str
    content_id: str | None = None
    file_name: str | None = None
    base64: bool = False


@dataclass(frozen=True, slots=True)
class BuilderContent:
    """The builder form of ``content``; ``headers`` keep the request's order."""

    text_body: str | None = None
    html_body: str | None = None
    amp_html_body: str | None = None
    attachments: tuple[Attachment, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    from_: FromHeader | None = None
    subject: str | None = None
    reply_to: FromHeader | None = None


@dataclass(frozen=True, slots=True)
class Recipient:
    email: str
    name: str | None = None
    substitutions: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TraceHeaders:
    """``trace_headers``; HTTP injection adds no ``Received:`` header unless asked."""

    received_header: bool = False
    supplemental_header: bool = True
    header_name: str = "X-KumoRef"
    include_meta_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InjectV1Request:
    envelope_sender: EnvelopeAddress
    recipients: tuple[Recipient, ...]
    content: str | BuilderContent
    substitutions: Mapping[str, Any] = field(default_factory=dict)
    template_dialect: TemplateDialect = TemplateDialect.JINJA
    deferred_spool: bool = False
    deferred_generation: bool = False
    trace_headers: TraceHeaders = field(default_factory=TraceHeaders)


# -- value parsers: (path, value) -> parsed --------------------------------------------------


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _str(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SchemaError(path, f"expected a string, got {_kind(value)}")
    return value


def _opt_str(path: str, value: Any) -> str | None:
    return None if value is None else _str(path, value)


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SchemaError(path, f"expected true or false, got {_kind(value)}")
    return value


def _map(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected an object, got {_kind(value)}")
    return value


def _list(path: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise SchemaError(path, f"expected an array, got {_kind(value)}")
    return value


def _object(
    path: str,
    value: Any,
    parsers: Mapping[str, Callable[[str, Any], Any]],
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The fields of a JSON object, each parsed; unknown and missing fields are errors."""
    obj = _map(path, value)
    prefix = f"{path}." if path else ""
    for key in obj:
        if key not in parsers:
            raise SchemaError(
                f"{prefix}{key}",
                f"unknown field {key!r}; expected one of: {', '.join(sorted(parsers))}",
            )
    for key in required:
        if key not in obj:
            raise SchemaError(f"{prefix}{key}", f"missing field {key!r}")
    return {key: parsers[key](f"{prefix}{key}", v) for key, v in obj.items()}


def _from_header(path: str, value: Any) -> FromHeader | None:
    if value is None:
        return None
    fields = _object(path, value, {"email": _str, "name": _opt_str}, ("email",))
    return FromHeader(**fields)


def _attachment(path: str, value: Any) -> Attachment:
    fields = _object(
        path,
        value,
        {
            "data": _str,
            "content_type": _str,
            "content_id": _opt_str,
            "file_name": _opt_str,
            "base64": _bool,
        },
        ("data", "content_type"),
    )
    return Attachment(**fields)


def _headers(path: str, value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((name, _str(f"{path}.{name}", v)) for name, v in _map(path, value).items())


def _items(parse: Callable[[str, Any], T]) -> Callable[[str, Any], tuple[T, ...]]:
    def parse_all(path: str, value: Any) -> tuple[T, ...]:
        return tuple(parse(f"{path}[{i}]", item) for i, item in enumerate(_list(path, value)))

    return parse_all


def _content(path: str, value: Any) -> str | BuilderContent:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise SchemaError(
            path, f"expected a message string or a builder object, got {_kind(value)}"
        )
    fields = _object(
        path,
        value,
        {
            "text_body": _opt_str,
            "html_body": _opt_str,
            "amp_html_body": _opt_str,
            "attachments": _items(_attachment),
            "headers": _headers,
            "from": _from_header,
            "subject": _opt_str,
            "reply_to": _from_header,
        },
    )
    if "from" in fields:
        fields["from_"] = fields.pop("from")
    return BuilderContent(**fields)


def _recipient(path: str, value: Any) -> Recipient:
    fields = _object(
        path,
        value,
        {"email": _str, "name": _opt_str, "substitutions": _map, "metadata": _map},
        ("email",),
    )
    return Recipient(**fields)


def _dialect(path: str, value: Any) -> TemplateDialect:
    try:
        return TemplateDialect(_str(path, value))
    except ValueError:
        allowed = ", ".join(repr(d.value) for d in TemplateDialect)
        raise SchemaError(path, f"unknown dialect {value!r}; expected one of {allowed}") from None


def _meta_names(path: str, value: Any) -> tuple[str, ...]:
    if value == {}:
        return ()
    return tuple(_str(f"{path}[{i}]", v) for i, v in enumerate(_list(path, value)))


def _trace_headers(path: str, value: Any) -> TraceHeaders:
    fields = _object(
        path,
        value,
        {
            "received_header": _bool,
            "supplemental_header": _bool,
            "header_name": _str,
            "include_meta_names": _meta_names,
        },
    )
    return TraceHeaders(**fields)


def _sender(path: str, value: Any) -> EnvelopeAddress:
    try:
        return EnvelopeAddress.parse(_str(path, value))
    except AddressError as exc:
        raise SchemaError(path, str(exc)) from None


def parse_inject_request(document: Any) -> InjectV1Request:
    """An InjectV1Request from decoded JSON; raises SchemaError naming the field at fault."""
    if not isinstance(document, dict):
        raise SchemaError("", f"expected a JSON object (InjectV1Request), got {_kind(document)}")
    fields = _object(
        "",
        document,
        {
            "envelope_sender": _sender,
            "recipients": _items(_recipient),
            "content": _content,
            "substitutions": _map,
            "template_dialect": _dialect,
            "deferred_spool": _bool,
            "deferred_generation": _bool,
            "trace_headers": _trace_headers,
        },
        ("envelope_sender", "recipients", "content"),
    )
    return InjectV1Request(**fields)
