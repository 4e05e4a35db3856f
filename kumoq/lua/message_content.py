"""The Message methods that read or rewrite the content: address headers, ``import_headers``,
``check_fix_conformance``, ``append_text_plain``/``append_text_html``,
``add_authentication_results``, ``parse_rfc3464``; and the spool hints ``save``,
``set_force_sync``, ``shrink`` and ``shrink_data``.

``python_api(rt)`` gives the Python functions behind them, each taking the message handle
first, in the style of kumoq.lua.message (which merges them into its own table, and whose
``message.lua`` wraps them as ``msg:`` methods). A method that changes the content assigns
``Message.data``, so a message that shares its body with the other recipients of its
transaction gets bytes of its own and the others are left alone; methods that only read
headers read ``Message.header_data()``, which copies no body.

The spool hints: kumoq stores a message at the end of reception and after every attempt,
and drops the bodies of waiting messages itself; ``save()`` does not store earlier,
``shrink()``/``shrink_data()`` release nothing (return false), and ``set_force_sync(true)``
is what every store already does under the default ``flush = true`` (docs/deviations.md).

L2: imports kumoq.dsn, kumoq.header_values, kumoq.headers, kumoq.mime, kumoq.mime_fix,
kumoq.mime_headers, kumoq.clock and kumoq.message; must not import the runtime or
kumoq.lua.message (which imports this module).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, Protocol

from kumoq import headers
from kumoq.clock import Clock
from kumoq.dsn import parse_report
from kumoq.header_values import (
    Group,
    Mailbox,
    encode_authentication_results,
    parse_address_list,
)
from kumoq.message import Message
from kumoq.mime import MimePart
from kumoq.mime_fix import FixSettings, check_fix
from kumoq.mime_headers import MimeError, parse_conformance

__all__ = ["ContentRuntime", "address_header_data", "python_api"]

_TRANSFORMS: Final = ("snake_case", "kebab_case", "camel_case", "pascal_case")
_MATCHES: Final = ("first", "last", "all")


class ContentRuntime(Protocol):
    """What these functions need of the policy runtime (``PolicyRuntime`` has it)."""

    @property
    def clock(self) -> Clock: ...

    def message(self, h: int) -> Message: ...

    def from_lua(self, value: Any) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _address(box: Mailbox) -> dict[str, Any]:
    out = {"user": box.local_part, "domain": box.domain, "email": box.email}
    if box.name is not None:
        out["name"] = box.name
    out["json"] = _json({"name": box.name, "address": box.email})
    return out


def address_header_data(text: str) -> dict[str, Any]:
    """KumoMTA's AddressHeader as data: ``list`` (every mailbox, groups flattened), ``single``
    (the one simple address) or ``error`` (why there is none), and ``json`` for tostring.
    Raises MimeError when ``text`` is not an address list."""
    entries = parse_address_list(text)
    flat = [m for e in entries for m in ((e,) if isinstance(e, Mailbox) else e.members)]
    out: dict[str, Any] = {"list": [_address(m) for m in flat]}
    if len(entries) == 1 and isinstance(entries[0], Mailbox):
        out["single"] = _address(entries[0])
    else:
        out["error"] = (
            "is not a simple address" if len(entries) == 1 else "is not a simple single address"
        )
    wire: list[dict[str, Any]] = []
    for e in entries:
        if isinstance(e, Group):
            members = [{"name": m.name, "address": m.email} for m in e.members]
            wire.append({"Group": {"name": e.name or None, "addresses": members}})
        else:
            wire.append({"Address": {"name": e.name, "address": e.email}})
    out["json"] = _json(wire)
    return out


def header_key(name: str, transform: str) -> str:
    """``import_headers``' meta key for header ``name`` (``X-Campaign-Id``): ``x_campaign_id``,
    ``x-campaign-id``, ``xCampaignId`` or ``XCampaignId``."""
    words = name.split("-")
    if transform == "snake_case":
        return name.lower().replace("-", "_")
    if transform == "kebab_case":
        return "-".join(w.lower() for w in words)
    titled = [w[:1].upper() + w[1:].lower() for w in words]
    if transform == "camel_case":
        return words[0].lower() + "".join(titled[1:])
    return "".join(titled)


def _compile_spec(spec: object) -> tuple[Callable[[str], bool], str, str, str | None, bool]:
    if not isinstance(spec, dict):
        raise ValueError(f"import_headers: each spec must be a table, got {spec!r}")
    unknown = sorted(set(spec) - {"name", "match", "transform", "target", "remove"})
    if unknown:
        raise ValueError(f"import_headers: unknown spec field(s) {unknown}")
    name, match = spec.get("name"), spec.get("match", "last")
    transform, target, remove = (
        spec.get("transform", "snake_case"),
        spec.get("target"),
        spec.get("remove", False),
    )
    if not isinstance(name, str) or not name:
        raise ValueError("import_headers: header name pattern must not be empty")
    if match not in _MATCHES:
        raise ValueError(f"import_headers: match must be one of {list(_MATCHES)}, got {match!r}")
    if transform not in _TRANSFORMS:
        raise ValueError(
            f"import_headers: transform must be one of {list(_TRANSFORMS)}, got {transform!r}"
        )
    if target is not None and not isinstance(target, str):
        raise ValueError(f"import_headers: target must be a string, got {target!r}")
    if not isinstance(remove, bool):
        raise ValueError(f"import_headers: remove must be a boolean, got {remove!r}")
    stars = name.count("*")
    if stars == 0:
        lowered = name.lower()
        return (lambda n: n.lower() == lowered), match, transform, target, remove
    if stars > 1 or not name.endswith("*"):
        raise ValueError(
            f"import_headers: only a single trailing `*` is supported in pattern {name!r}"
        )
    prefix = name[:-1].lower()
    if not prefix:
        raise ValueError("import_headers: bare `*` patterns are not supported")
    if target is not None:
        raise ValueError(f"import_headers: `target` cannot be used with wildcard pattern {name!r}")
    return (lambda n: n.lower().startswith(prefix)), match, transform, target, remove


def python_api(rt: ContentRuntime) -> dict[str, Callable[..., Any]]:
    """The Python functions behind the content methods (unguarded; kumoq.lua.message guards
    them)."""
    message, to_lua, from_lua = rt.message, rt.to_lua, rt.from_lua

    def data_of(h: int) -> bytes:
        data = message(h).data
        if data is None:
            raise ValueError("the message data is not loaded")
        return data

    def head_of(h: int) -> bytes:
        data = message(h).header_data()
        if data is None:
            raise ValueError("the message data is not loaded")
        return data

    def get_address_header(h: int, name: object) -> Any:
        if not isinstance(name, str):
            raise ValueError(f"header name must be a string, got {name!r}")
        fields, _ = headers.parse_headers(head_of(h))
        for f in fields:
            if f.name.lower() == name.lower():
                raw = headers.unfold(f.raw).decode("utf-8", "surrogateescape")
                return to_lua(address_header_data(raw))
        return None

    def import_headers(h: int, specs: object) -> None:
        plain = from_lua(specs) if specs is not None else None
        if plain == {}:
            plain = []
        if not isinstance(plain, list):
            raise ValueError(f"import_headers: expected an array of spec tables, got {plain!r}")
        compiled = [_compile_spec(s) for s in plain]
        msg = message(h)
        found: list[dict[str, Any]] = [{} for _ in compiled]
        drop: set[int] = set()
        fields, _ = headers.parse_headers(head_of(h))
        for index, f in enumerate(fields):
            for i, (matches, mode, transform, target, remove) in enumerate(compiled):
                if not matches(f.name):
                    continue
                key = target or header_key(f.name, transform)
                value = _clean(f.value)
                if mode == "all":
                    found[i].setdefault(key, []).append(value)
                elif mode == "last" or key not in found[i]:
                    found[i][key] = value
                if remove:
                    drop.add(index)
                break
        for values in found:
            for key in sorted(values):
                msg.meta[key] = values[key]
        if drop:
            msg.data = _without_fields(data_of(h), fields, drop)

    def check_fix_conformance(h: int, check: object, fix: object, settings: object) -> Any:
        if not isinstance(check, str) or not isinstance(fix, str):
            raise ValueError("expected two strings of '|'-separated issue names")
        checks, fixes = parse_conformance(check), parse_conformance(fix)
        mapping = from_lua(settings) if settings is not None else None
        if mapping is not None and not isinstance(mapping, dict):
            raise ValueError(f"settings must be a table, got {mapping!r}")
        options = FixSettings.from_mapping(mapping)
        msg = message(h)
        error, data = check_fix(
            data_of(h), checks, fixes, settings=options,
            message_id=f"{msg.id}@{msg.sender.domain}", now=rt.clock.now(),
        )  # fmt: skip
        if data is not None:
            msg.data = data
        return error

    def append_text(kind: str) -> Callable[[int, object], bool]:
        def append(h: int, content: object) -> bool:
            if not isinstance(content, str):
                raise ValueError(f"expected a string, got {content!r}")
            root = MimePart.parse(data_of(h))
            structure = root.simple_structure()
            path = structure.text if kind == "plain" else structure.html
            if path is None:
                return False
            part = root.touch(path)
            text = part.body()
            if not isinstance(text, str):
                raise MimeError(f"expected text/{kind} part to be text, but it is binary")
            if kind == "plain":
                text += "\r\n" + content
            else:
                at = text.rfind("</body>")
                at = at if at >= 0 else text.rfind("</BODY>")
                at = at if at >= 0 else len(text)
                text = text[:at] + "\r\n" + content + text[at:]
            part.replace_text_body(f"text/{kind}", text)
            message(h).data = root.to_bytes()
            return True

        return append

    def add_authentication_results(h: int, serv_id: object, results: object) -> None:
        if not isinstance(serv_id, str):
            raise ValueError(f"server_id must be a string, got {serv_id!r}")
        plain = from_lua(results) if results is not None else []
        if plain == {}:
            plain = []
        if not isinstance(plain, list):
            raise ValueError(f"results must be an array of authentication results, got {plain!r}")
        value = encode_authentication_results(serv_id, plain)
        message(h).data = headers.prepend_header(data_of(h), "Authentication-Results", value)

    def parse_rfc3464(h: int) -> Any:
        report = parse_report(data_of(h))
        return None if report is None else to_lua(report)

    def set_force_sync(h: int, force: object) -> None:
        message(h)
        if not isinstance(force, bool):
            raise ValueError(f"expected a boolean, got {force!r}")

    def save(h: int) -> None:
        message(h)  # a stale handle fails

    def spool_hint(h: int) -> bool:
        message(h)  # a stale handle fails
        return False

    return {
        "get_address_header": get_address_header,
        "import_headers": import_headers,
        "check_fix_conformance": check_fix_conformance,
        "append_text_plain": append_text("plain"),
        "append_text_html": append_text("html"),
        "add_authentication_results": add_authentication_results,
        "parse_rfc3464": parse_rfc3464,
        "save": save,
        "set_force_sync": set_force_sync,
        "shrink": spool_hint,
        "shrink_data": spool_hint,
    }


def _without_fields(data: bytes, fields: list[headers.HeaderField], drop: set[int]) -> bytes:
    parts: list[bytes] = []
    pos = 0
    for i, f in enumerate(fields):
        if i in drop:
            parts.append(data[pos : f.start])
            pos = f.end
    parts.append(data[pos:])
    return b"".join(parts)


def _clean(value: str) -> str:
    """A decoded header value fit for meta (JSON): undecodable bytes become U+FFFD."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
