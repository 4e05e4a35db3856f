"""The Python side of ``msg:parse_mime()``: KumoMTA's MimePart, HeaderMap and Header objects.

A parsed tree (kumoq.mime.MimePart) stays in Python, in a per-runtime table of roots keyed
by an integer; a Lua MimePart object holds (root, path) in a private table, as KumoMTA's
``PartRef`` holds a shared root and a ``PartPointer``: the objects for a part and for its
children see each other's changes. ``mime.lua`` frees the roots no Lua object refers to any
more before it makes a new one; at most ``MAX_ROOTS`` trees and ``MAX_ROOT_BYTES`` of
messages live at once (``mime.lua`` collects garbage and tries once more before failing).

Paths are KumoMTA's part ids: ``""`` for the root, ``"1.0"`` for the first child of the
second child. Typed header accessors (``headers:to()``, ``headers:set_subject(...)``) go
through ``ACCESSORS``, a table of method name to header name and value kind.

L2: imports kumoq.mime, kumoq.mime_fix, kumoq.mime_headers, kumoq.header_values and
kumoq.message; must not import the runtime or kumoq.lua.message.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Final, Protocol

from kumoq.header_values import (
    Group,
    Mailbox,
    encode_address_list,
    mailbox_from_data,
    parse_address_list,
)
from kumoq.message import Message
from kumoq.mime import MimePart, is_inline
from kumoq.mime_fix import rebuild
from kumoq.mime_headers import (
    Field,
    MimeError,
    MimeParams,
    new_field,
    parse_message_id,
    parse_mime_params,
)

__all__ = ["ACCESSORS", "MAX_ROOTS", "MimeRuntime", "header_value", "python_api"]

MAX_ROOTS: Final = 256
#: At most this many message bytes in live trees (a tree holds about twice its message).
MAX_ROOT_BYTES: Final = 256 * 2**20

#: method name -> (header name, kind); the setter is ``set_<method name>``.
ACCESSORS: Final[dict[str, tuple[str, str]]] = {
    "from": ("From", "mailbox_list"),
    "resent_from": ("Resent-From", "mailbox_list"),
    "to": ("To", "address_list"),
    "reply_to": ("Reply-To", "address_list"),
    "cc": ("Cc", "address_list"),
    "bcc": ("Bcc", "address_list"),
    "resent_to": ("Resent-To", "address_list"),
    "resent_cc": ("Resent-Cc", "address_list"),
    "resent_bcc": ("Resent-Bcc", "address_list"),
    "sender": ("Sender", "mailbox"),
    "resent_sender": ("Resent-Sender", "mailbox"),
    "message_id": ("Message-ID", "message_id"),
    "content_id": ("Content-ID", "message_id"),
    "references": ("References", "message_id_list"),
    "subject": ("Subject", "unstructured"),
    "comments": ("Comments", "unstructured"),
    "mime_version": ("Mime-Version", "unstructured"),
    "content_type": ("Content-Type", "mime_params"),
    "content_transfer_encoding": ("Content-Transfer-Encoding", "mime_params"),
    "content_disposition": ("Content-Disposition", "mime_params"),
}
#: ``header.value``: the kind a header name is read as (unstructured when absent).
KIND_OF: Final = {name.lower(): kind for name, kind in ACCESSORS.values()}
KINDS: Final = frozenset(KIND_OF.values())


class MimeRuntime(Protocol):
    """What these functions need of the policy runtime (``PolicyRuntime`` has it)."""

    def message(self, h: int) -> Message: ...

    def from_lua(self, value: Any) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...


def header_value(kind: str, name: str, raw: str) -> Any:
    """A header value read as ``kind`` (``address_list``, ``mailbox``, ``mime_params``...,
    or ``value`` for the kind its name implies), as KumoMTA's Lua data. Raises MimeError
    when the value does not parse as that kind."""
    if kind == "value":
        kind = KIND_OF.get(name.lower(), "unstructured")
    field = Field(name, b": ", raw.encode("utf-8", "surrogateescape"), b"\r\n")
    if kind == "unstructured":
        return field.unstructured
    text = raw.replace("\r\n", "")
    if kind in ("address_list", "mailbox_list", "mailbox"):
        entries = parse_address_list(text)
        if kind == "address_list":
            return [e.to_data() for e in entries]
        if any(isinstance(e, Group) for e in entries):
            raise MimeError(f"while parsing header '{name}': groups are not mailboxes")
        if kind == "mailbox":
            if len(entries) != 1:
                raise MimeError(f"while parsing header '{name}': expected a single mailbox")
            return entries[0].to_data()
        return [e.to_data() for e in entries]
    if kind == "message_id":
        msg_id = parse_message_id(text)
        if msg_id is None:
            raise MimeError(f"while parsing header '{name}': invalid message id")
        return msg_id
    if kind == "message_id_list":
        ids = [parse_message_id(f"<{w}") for w in text.split("<")[1:]]
        if not ids or any(i is None for i in ids):
            raise MimeError(f"while parsing header '{name}': invalid message id list")
        return ids
    if kind == "mime_params":
        params = parse_mime_params(text)
        return {"value": params.value, "parameters": params.params}
    raise MimeError(f"unknown header value kind {kind!r}")


def encode_value(kind: str, name: str, value: Any) -> Field:
    """A field ``name`` holding ``value``: a string (checked against ``kind``) or KumoMTA's
    Lua data for the kind."""
    if isinstance(value, str):
        if kind != "unstructured":
            header_value(kind, name, value)
        return new_field(name, value, encode=True)
    if kind in ("address_list", "mailbox_list", "mailbox"):
        items = [value] if kind == "mailbox" else value
        if not isinstance(items, list):
            raise MimeError(f"set {name}: expected a list of addresses, got {value!r}")
        entries: list[Mailbox | Group] = []
        for item in items:
            if not isinstance(item, dict):
                raise MimeError(f"set {name}: expected an address table, got {item!r}")
            if "entries" in item and kind == "address_list":
                members = tuple(mailbox_from_data(m) for m in item["entries"] or [])
                entries.append(Group(str(item.get("name", "")), members))
            else:
                entries.append(mailbox_from_data(item))
        return new_field(name, encode_address_list(entries, name))
    if kind == "message_id_list" and isinstance(value, list):
        return new_field(name, " ".join(f"<{v}>" for v in value))
    if kind == "mime_params" and isinstance(value, dict):
        params = value.get("parameters") or {}
        if not isinstance(value.get("value"), str) or not isinstance(params, dict):
            raise MimeError(f"set {name}: expected {{value=..., parameters={{...}}}}")
        return new_field(
            name,
            MimeParams(value["value"], {k.lower(): str(v) for k, v in params.items()}).to_text(),
        )
    raise MimeError(f"set {name}: cannot use a {type(value).__name__} value")


def _path(text: object) -> tuple[int, ...]:
    if not isinstance(text, str):
        raise MimeError("invalid MimePart reference")
    return tuple(int(p) for p in text.split(".")) if text else ()


def _path_text(path: tuple[int, ...]) -> str:
    return ".".join(map(str, path))


def python_api(rt: MimeRuntime) -> dict[str, Callable[..., Any]]:
    """The Python functions behind the MIME objects (unguarded; kumoq.lua.message guards
    them). Each runtime has its own roots."""
    roots: dict[int, MimePart] = {}
    sizes: dict[int, int] = {}
    ids = itertools.count(1)
    to_lua, from_lua = rt.to_lua, rt.from_lua

    def room_for(size: int) -> None:
        """Raise (``mime.lua`` then collects garbage and tries again) when another tree of
        ``size`` bytes would pass MAX_ROOTS or MAX_ROOT_BYTES."""
        total = sum(sizes.values())
        if len(roots) >= MAX_ROOTS or (roots and total + size > MAX_ROOT_BYTES):
            raise MimeError(
                f"too many MimePart trees alive ({len(roots)} trees of {total} bytes; at most "
                f"{MAX_ROOTS} trees, {MAX_ROOT_BYTES} bytes): keep fewer of them"
            )

    def add_root(part: MimePart, size: int) -> int:
        key = next(ids)
        roots[key], sizes[key] = part, size
        return key

    def part_of(root: int, path: object, *, touch: bool = False) -> MimePart:
        tree = roots.get(root)
        if tree is None:
            raise MimeError("this MimePart object is no longer valid")
        return tree.touch(_path(path)) if touch else tree.resolve(_path(path))

    def parse(h: int) -> int:
        msg = rt.message(h)
        room_for(msg.size)
        data = msg.data
        if data is None:
            raise MimeError("the message data is not loaded")
        return add_root(MimePart.parse(data), len(data))

    def replace_body(root: int, path: str, content: str, binary: bool, ctype: object) -> None:
        part = part_of(root, path, touch=True)
        if ctype is not None and not isinstance(ctype, str):
            raise MimeError(f"content type must be a string, got {ctype!r}")
        current = part.params("Content-Type")
        if binary:
            media = ctype or (current.value if current else "application/octet-stream")
            part.replace_binary_body(media, content.encode("latin-1"))
        else:
            part.replace_text_body(ctype or (current.value if current else "text/plain"), content)

    def structure(root: int, path: str) -> Any:
        tree = roots.get(root)
        if tree is None:
            raise MimeError("this MimePart object is no longer valid")
        found = tree.simple_structure(_path(path))
        attachments = []
        for p in found.attachments:
            part = tree.resolve(p)
            ctype, cd = part.params("Content-Type"), part.params("Content-Disposition")
            entry: dict[str, Any] = {
                "path": _path_text(p),
                "inline": is_inline(part),
                "content_type": ctype.value if ctype else "application/octet-stream",
            }
            name = (cd.get("filename") if cd else None) or (ctype.get("name") if ctype else None)
            if name is not None:
                entry["file_name"] = name
            cid = part.first("Content-ID")
            if cid is not None and (content_id := parse_message_id(cid.value)) is not None:
                entry["content_id"] = content_id
            attachments.append(entry)
        out: dict[str, Any] = {"header_part": _path_text(found.header), "attachments": attachments}
        for key in ("text", "html", "amp_html"):
            if (p := getattr(found, key)) is not None:
                out[f"{key}_part"] = _path_text(p)
        return to_lua(out)

    def append_part(root: int, path: str, other: int, other_path: str) -> None:
        child = MimePart.parse(part_of(other, other_path).to_bytes())
        part = part_of(root, path, touch=True)
        part.parts.append(child)

    def fields(root: int, path: str, name: object) -> tuple[Any, ...]:
        out: list[Any] = []
        for f in part_of(root, path).fields:
            if name is None or f.name.lower() == str(name).lower():
                out += (f.name, f.value)
        return tuple(out)

    def add(root: int, path: str, name: object, value: object, prepend: bool) -> None:
        if not isinstance(name, str) or not isinstance(value, str):
            raise MimeError("expected a header name and a string value")
        part = part_of(root, path, touch=True)
        part.fields.insert(0 if prepend else len(part.fields), new_field(name, value))

    def remove_all_named(root: int, path: str, name: object) -> None:
        part = part_of(root, path, touch=True)
        part.fields = [f for f in part.fields if f.name.lower() != str(name).lower()]

    def get(root: int, path: str, method: str) -> Any:
        name, kind = ACCESSORS[method]
        f = part_of(root, path).first(name)
        return None if f is None else to_lua(header_value(kind, f.name, f.raw_value))

    def set_(root: int, path: str, method: str, value: object) -> None:
        name, kind = ACCESSORS[method]
        field = encode_value(kind, name, from_lua(value))
        part = part_of(root, path, touch=True)
        for i, f in enumerate(part.fields):
            if f.name.lower() == name.lower():
                part.fields[i] = field
                return
        part.fields.append(field)

    def free(*dead: int) -> None:
        for root in dead:
            roots.pop(root, None)
            sizes.pop(root, None)

    def rebuilt(root: int, path: str) -> int:
        part = part_of(root, path)
        size = sizes.get(root, 0)
        room_for(size)
        return add_root(rebuild(part), size)

    def header_block(root: int, path: str) -> bytes:
        return b"".join(f.to_bytes() for f in part_of(root, path).fields)

    return {
        "mime_parse": parse,
        "mime_free": free,
        "mime_tostring": lambda root, path: part_of(root, path).to_bytes(),
        "mime_body": lambda root, path: part_of(root, path).body(),
        "mime_replace_body": replace_body,
        "mime_structure": structure,
        "mime_rebuild": rebuilt,
        "mime_append_part": append_part,
        "mime_child_count": lambda root, path: len(part_of(root, path).parts),
        "mime_headers": header_block,
        "mime_fields": fields,
        "mime_add_header": add,
        "mime_remove_all_named": remove_all_named,
        "mime_get": get,
        "mime_set": set_,
        "mime_header_value": lambda kind, name, raw: to_lua(header_value(kind, name, raw)),
    }
