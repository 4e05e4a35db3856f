"""The ``kumo.*`` fields a policy file names that kumoq does not have, found at load.

The ``kumo`` table is strict (``kumo.lua``): reading a field kumoq lacks is an error at the
line that reads it. Inside a handler that line runs only when its event fires, perhaps days
after the start, perhaps for the first message of a rare kind; so at load kumoq also reads the
policy file's text for ``kumo.NAME`` and ``kumo.MODULE.NAME`` and reports each one the table
does not have, with its line and, for a near miss, the name it probably meant. These are
warnings (``kumoq validate`` lists them, ``kumoq serve`` logs them): a reference in a branch
that never runs is harmless, and the strict table still stops the one that does.

Only the text of the policy file itself is read, not the modules it requires (KumoMTA's
helpers name functions in branches a policy may never take). Comments and strings are skipped;
a field the policy assigns itself (``kumo.my_helper = ...``, ``function kumo.util.f()``) is
its own, not a miss.

L2: imports lupa only (to tell a Lua table from a value).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Final

from lupa import lua54

__all__ = ["KumoFields", "check", "kumo_fields", "strip_comments_and_strings", "unknown_references"]

KumoFields = Mapping[str, frozenset[str] | None]
"""The ``kumo`` table's fields: a submodule's name -> its fields; a function's -> None."""

_REFERENCE: Final = re.compile(r"(?<![\w.:])kumo\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")
_ASSIGNED: Final = re.compile(
    r"(?<![\w.:])kumo\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?\s*=(?!=)"
    r"|\bfunction\s+kumo\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?"
)
_LONG_OPEN: Final = re.compile(r"\[(=*)\[")


def check(source: bytes, chunkname: str, kumo: Any) -> list[tuple[str, str]]:
    """``unknown_references`` of the policy file's bytes against the Lua ``kumo`` table:
    ``PolicyRuntime.unknown_fields``, the warnings its loader keeps for the caller to show."""
    return unknown_references(source.decode(errors="replace"), chunkname, kumo_fields(kumo))


def kumo_fields(kumo: Any) -> dict[str, frozenset[str] | None]:
    """The fields of the Lua ``kumo`` table (read raw: its strict ``__index`` is not called)."""
    fields: dict[str, frozenset[str] | None] = {}
    for name, value in kumo.items():
        if isinstance(name, str):
            fields[name] = (
                frozenset(k for k in value if isinstance(k, str))
                if lua54.lua_type(value) == "table"
                else None
            )
    return fields


def strip_comments_and_strings(source: str) -> str:
    """``source`` with every comment and string literal blanked, newlines kept, so that a
    match's offset still gives its line."""
    out: list[str] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if source.startswith("--", i):
            long = _LONG_OPEN.match(source, i + 2)
            if long:
                end = source.find(f"]{long.group(1)}]", long.end())
                end = n if end < 0 else end + len(long.group(1)) + 2
            else:
                end = source.find("\n", i)
                end = n if end < 0 else end
            out.append(_blank(source[i:end]))
            i = end
        elif c == "[" and (long := _LONG_OPEN.match(source, i)):
            end = source.find(f"]{long.group(1)}]", long.end())
            end = n if end < 0 else end + len(long.group(1)) + 2
            out.append(_blank(source[i:end]))
            i = end
        elif c in "'\"":
            j = i + 1
            while j < n and source[j] != c and source[j] != "\n":
                j += 2 if source[j] == "\\" else 1
            out.append(_blank(source[i : j + 1]))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _blank(text: str) -> str:
    return re.sub(r"[^\n]", " ", text)


def unknown_references(source: str, chunkname: str, fields: KumoFields) -> list[tuple[str, str]]:
    """``(file:line, text)`` for each reference in ``source`` (the policy file, named
    ``chunkname``) to a ``kumo`` field that ``fields`` lacks; one per name, at its first line."""
    code = strip_comments_and_strings(source)
    own: set[tuple[str, str | None]] = set()
    for m in _ASSIGNED.finditer(code):
        name, sub = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        own.add((name, sub))
    found: dict[str, tuple[str, str]] = {}
    for m in _REFERENCE.finditer(code):
        name, sub = m.group(1), m.group(2)
        if (name, None) in own or (name, sub) in own:
            continue
        if name not in fields:
            missing, choices = f"kumo.{name}", list(fields)
            wanted = name
        else:
            members = fields[name]
            if members is None or sub is None or sub in members:
                continue
            missing, choices, wanted = f"kumo.{name}.{sub}", list(members), sub
        if missing in found:
            continue
        close = difflib.get_close_matches(wanted, choices, n=1, cutoff=0.8)
        hint = f" (did you mean '{missing.rpartition('.')[0]}.{close[0]}'?)" if close else ""
        line = code.count("\n", 0, m.start()) + 1
        found[missing] = (
            f"{chunkname}:{line}",
            f"{missing} is not available in kumoq{hint}: this line fails when it runs",
        )
    return list(found.values())
