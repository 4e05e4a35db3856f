"""Structured header values: RFC 5322 address lists, and RFC 8601 Authentication-Results.

``parse_address_list(text)`` reads a ``From``/``To``-style value into ``Mailbox`` and
``Group`` entries, leniently as mail is written: display names made of atoms, quoted
strings and RFC 2047 encoded words, comments ignored, obsolete routes and empty list
elements skipped. A mailbox's ``local_part`` is decoded (``"a b"@x`` gives ``a b``);
``email`` quotes it again when it needs quoting, as KumoMTA's ``AddrSpec`` does.
``encode_address_list`` writes entries back as a header value.

``encode_authentication_results(serv_id, results)`` writes KumoMTA's ``Authentication-Results``
value for ``msg:add_authentication_results``: one ``method=result`` per line, properties
sorted by name, values quoted unless they are MIME tokens.

Pure (L0): imports kumoq.headers, kumoq.mime_headers and ``email.header``; no IO.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.header import Header
from typing import Any, Final

from kumoq.headers import decode_value
from kumoq.mime_headers import MimeError

__all__ = [
    "Group",
    "Mailbox",
    "encode_address_list",
    "encode_authentication_results",
    "mailbox_from_data",
    "parse_address_list",
]

_ATEXT: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                          "!#$%&'*+-/=?^_`{|}~")  # fmt: skip
_TOKENS: Final = re.compile(
    r'(?P<ws>[ \t\r\n]+)|(?P<quoted>"(?:[^"\\]|\\.)*")|(?P<literal>\[[^\]]*\])'
    r"|(?P<special>[<>@,;:.])|(?P<atom>[^ \t\r\n\"\[\]<>@,;:.()]+)|(?P<comment>\()",
    re.S,
)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """``name <local_part@domain>``; ``name`` is None when there is none."""

    name: str | None
    local_part: str
    domain: str

    @property
    def email(self) -> str:
        """The address, its local part quoted again if it needs it."""
        local = self.local_part
        if not local or not all(c in _ATEXT or c == "." or ord(c) > 127 for c in local):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}"

    def to_data(self) -> dict[str, Any]:
        """KumoMTA's Lua shape: ``{name=..., address={local_part=..., domain=...}}``."""
        out: dict[str, Any] = {"address": {"local_part": self.local_part, "domain": self.domain}}
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class Group:
    """``name: member, member;``."""

    name: str
    members: tuple[Mailbox, ...] = field(default=())

    def to_data(self) -> dict[str, Any]:
        return {"name": self.name, "entries": [m.to_data() for m in self.members]}


def parse_address_list(text: str) -> list[Mailbox | Group]:
    """The entries of an address-list header value. Raises MimeError when it is not one
    (including when it is empty)."""
    tokens = _tokenize(text)
    entries: list[Mailbox | Group] = []
    pos = 0
    while pos < len(tokens):
        if tokens[pos] == ("special", ",") or tokens[pos][0] == "ws":
            pos += 1
            continue
        entry, pos = _address(tokens, pos, text)
        entries.append(entry)
        while pos < len(tokens) and tokens[pos][0] == "ws":
            pos += 1
        if pos < len(tokens) and tokens[pos] != ("special", ","):
            raise MimeError(f"invalid address list {text!r}: unexpected {tokens[pos][1]!r}")
    if not entries:
        raise MimeError(f"invalid address list {text!r}: no address")
    return entries


def _tokenize(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKENS.match(text, pos)
        if m is None:
            raise MimeError(f"invalid address list {text!r}")
        kind = m.lastgroup or ""
        if kind == "comment":
            pos = _skip_comment(text, pos)
            out.append(("ws", " "))
            continue
        out.append((kind, m.group()))
        pos = m.end()
    return out


def _skip_comment(text: str, pos: int) -> int:
    depth = 0
    while pos < len(text):
        c = text[pos]
        if c == "\\":
            pos += 2
            continue
        depth += (c == "(") - (c == ")")
        pos += 1
        if depth == 0:
            return pos
    raise MimeError(f"invalid address list {text!r}: unclosed comment")


def _address(tokens: list[tuple[str, str]], pos: int, text: str) -> tuple[Mailbox | Group, int]:
    start = pos
    while pos < len(tokens) and tokens[pos] not in _STOPS:
        pos += 1
    stop = tokens[pos][1] if pos < len(tokens) else ""
    words = tokens[start:pos]
    if stop == "<":
        return _angle(tokens, pos + 1, _phrase(words), text)
    if stop == ":":
        members: list[Mailbox] = []
        pos += 1
        while pos < len(tokens) and tokens[pos] != ("special", ";"):
            if tokens[pos] == ("special", ",") or tokens[pos][0] == "ws":
                pos += 1
                continue
            member, pos = _address(tokens, pos, text)
            if not isinstance(member, Mailbox):
                raise MimeError(f"invalid address list {text!r}: nested group")
            members.append(member)
        return Group(_phrase(words) or "", tuple(members)), pos + 1
    return _addr_spec(words, None, text), pos


_STOPS: Final = frozenset({("special", "<"), ("special", ":"), ("special", ","), ("special", ";")})


def _angle(
    tokens: list[tuple[str, str]], pos: int, name: str | None, text: str
) -> tuple[Mailbox, int]:
    start = pos
    while pos < len(tokens) and tokens[pos] != ("special", ">"):
        pos += 1
    if pos >= len(tokens):
        raise MimeError(f"invalid address list {text!r}: missing '>'")
    inner = tokens[start:pos]
    colons = [i for i, t in enumerate(inner) if t == ("special", ":")]
    if colons and any(t == ("special", "@") for t in inner[: colons[-1]]):
        inner = inner[colons[-1] + 1 :]  # obs-route: <@relay:user@domain>
    return _addr_spec(inner, name, text), pos + 1


def _addr_spec(words: list[tuple[str, str]], name: str | None, text: str) -> Mailbox:
    words = [w for w in words if w[0] != "ws"]
    ats = [i for i, w in enumerate(words) if w == ("special", "@")]
    if len(ats) != 1 or ats[-1] == 0 or ats[-1] == len(words) - 1:
        raise MimeError(f"invalid address list {text!r}: expected local@domain")
    at = ats[-1]
    local = "".join(_unquote(v) if k == "quoted" else v for k, v in words[:at])
    domain = "".join(v for _, v in words[at + 1 :])
    if any(k not in ("atom", "special", "literal") for k, _ in words[at + 1 :]):
        raise MimeError(f"invalid address list {text!r}: invalid domain")
    return Mailbox(name, local, domain)


def _phrase(words: list[tuple[str, str]]) -> str | None:
    out: list[str] = []
    for kind, value in words:
        if kind == "ws":
            if out and out[-1] != " ":
                out.append(" ")
        else:
            out.append(_unquote(value) if kind == "quoted" else value)
    text = "".join(out).strip()
    if not text:
        return None
    return decode_value(text.encode("utf-8", "surrogateescape")) if "=?" in text else text


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted[1:-1], flags=re.S)


def mailbox_from_data(data: Mapping[str, Any]) -> Mailbox:
    """A Mailbox from KumoMTA's Lua shape (see ``Mailbox.to_data``)."""
    address = data.get("address")
    if not isinstance(address, Mapping):
        raise MimeError("a mailbox needs an address table {local_part=..., domain=...}")
    local, domain, name = address.get("local_part"), address.get("domain"), data.get("name")
    if not isinstance(local, str) or not isinstance(domain, str):
        raise MimeError("a mailbox address needs string local_part and domain")
    if name is not None and not isinstance(name, str):
        raise MimeError("a mailbox name must be a string")
    return Mailbox(name, local, domain)


def _encode_name(name: str, header_name: str) -> str:
    if not name.isascii():
        return Header(name, "utf-8", header_name=header_name).encode(linesep="\r\n")
    if all(c in _ATEXT or c == " " for c in name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _encode_mailbox(box: Mailbox, header_name: str) -> str:
    if box.name is None:
        return box.email
    return f"{_encode_name(box.name, header_name)} <{box.email}>"


def encode_address_list(entries: Iterable[Mailbox | Group], header_name: str = "To") -> str:
    """The header value for ``entries``, folded after each comma."""
    out: list[str] = []
    for entry in entries:
        if isinstance(entry, Mailbox):
            out.append(_encode_mailbox(entry, header_name))
        else:
            members = ", ".join(_encode_mailbox(m, header_name) for m in entry.members)
            out.append(
                f"{_encode_name(entry.name, header_name)}:{' ' if members else ''}{members};"
            )
    return ",\r\n\t".join(out)


# --- Authentication-Results (RFC 8601) --------------------------------------------------------
_TOKEN: Final = re.compile(r'[^\x00-\x20\x7f-\uffff()<>,;:\\"/\[\]?=]+')


def _value_token(value: str) -> str:
    if _TOKEN.fullmatch(value.replace("@", "a")):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode_authentication_results(serv_id: str, results: Sequence[Mapping[str, Any]]) -> str:
    """``serv_id;\\r\\n\\tmethod=result reason=...\\r\\n\\tprop=value...``, or
    ``serv_id; none``. Each result needs string ``method`` and ``result``; optional
    ``method_version`` (integer), ``reason`` (string) and ``props`` (string to string).
    Raises MimeError naming a bad field."""
    out = [_value_token(serv_id)]
    if not results:
        out.append("; none")
    for res in results:
        if not isinstance(res, Mapping):
            raise MimeError(f"an authentication result must be a table, got {res!r}")
        unknown = set(res) - {"method", "method_version", "result", "reason", "props"}
        if unknown:
            raise MimeError(f"unknown authentication result field(s): {sorted(unknown)}")
        method, result = res.get("method"), res.get("result")
        if not isinstance(method, str) or not isinstance(result, str):
            raise MimeError("an authentication result needs string method and result")
        version, reason, props = res.get("method_version"), res.get("reason"), res.get("props")
        out.append(";\r\n\t" + _value_token(method))
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, int):
                raise MimeError(f"method_version must be an integer, got {version!r}")
            out.append(f"/{version}")
        out.append("=" + _value_token(result))
        if reason is not None:
            out.append(" reason=" + _value_token(str(reason)))
        if props:
            if not isinstance(props, Mapping):
                raise MimeError(f"props must be a table of strings, got {props!r}")
            out.extend(f"\r\n\t{key}=" + _value_token(str(props[key])) for key in sorted(props))
    return "".join(out)
