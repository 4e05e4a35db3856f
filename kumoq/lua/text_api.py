"""The work behind ``kumo.string`` and ``kumo.regex`` (KumoMTA's Rust string and regex modules).

``kumo.string``: ``replace``, ``replacen``, ``split``, ``splitn``, ``rsplit``, ``rsplitn``,
``split_whitespace``, ``split_ascii_whitespace``, ``trim``, ``trim_start``, ``trim_end``,
``starts_with``, ``ends_with``, ``wrap`` and ``eval_template``, with Rust's semantics: splitting
by ``''`` splits around every character, ``splitn(s, 0, p)`` is empty, "whitespace" is the
Unicode ``White_Space`` property (not Python's ``str.isspace``, which adds four control
characters), and ``wrap`` breaks as kumo-wrap does (``\\r\\n\\t`` between lines).

``kumo.regex``: patterns run on the ``regex`` package, a backtracking engine with the syntax of
fancy-regex as KumoMTA documents it (Perl classes, look-around, back references, atomic groups,
named groups written ``(?<name>...)`` or ``(?P<name>...)``, ``\\p{...}``, ``[[:alpha:]]``).
Compiled patterns are cached by their text. Replacement strings use Rust's syntax: ``$1``,
``$name``, ``${name}``, ``$$``; the longest name wins (``$1a`` is the group named ``1a``), and a
group that does not exist or did not take part expands to nothing.

``eval_template`` renders MiniJinja-style templates with jinja2's sandbox: values print as
MiniJinja prints them (``none``, ``true``, ``false``), an undefined name prints nothing, and
the nominal file name chooses the auto-escaping (``.html``, ``.htm``, ``.xml``: HTML; ``.json``,
``.json5``, ``.js``, ``.yaml``, ``.yml``: each value printed as JSON). The ``Static`` dialect
returns the source as is; ``Handlebars`` is not available.

Pure: no IO; imports the standard library, ``regex``, jinja2 and kumoq.lua.message.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, Final

import regex
from jinja2 import TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from kumoq.lua.message import LuaApiError

__all__ = [
    "REGEX_METHODS",
    "STRING_FUNCTIONS",
    "compile_regex",
    "escape_regex",
    "eval_template",
    "expand_replacement",
]

WHITE_SPACE: Final = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""The Unicode ``White_Space`` property: Rust's ``char::is_whitespace``."""
_ASCII_WS: Final = "\t\n\x0c\r "  # Rust's u8::is_ascii_whitespace (no vertical tab)
_WS_RUN: Final = regex.compile(f"[{regex.escape(WHITE_SPACE)}]+")
_ASCII_WS_RUN: Final = regex.compile(f"[{regex.escape(_ASCII_WS)}]+")


def _count(name: str, value: object) -> int:
    if type(value) is not int or value < 0:
        raise LuaApiError(f"{name}: expected a count (an integer >= 0), got {value!r}")
    return value


def _split(s: str, pattern: str, limit: int | None = None, reverse: bool = False) -> list[str]:
    """Rust's ``split``/``splitn``/``rsplit``/``rsplitn``, pieces in the order Rust yields."""
    if limit == 0:
        return []
    if pattern == "":  # an empty match before every character and at the end
        pieces = ["", *s, ""]
        if limit is not None and limit < len(pieces):
            if reverse:
                return [*pieces[:-limit:-1], "".join(pieces[: len(pieces) - limit + 1])]
            return [*pieces[: limit - 1], "".join(pieces[limit - 1 :])]
        return pieces[::-1] if reverse else pieces
    maxsplit = -1 if limit is None else limit - 1
    if reverse:
        return s.rsplit(pattern, maxsplit)[::-1]
    return s.split(pattern, maxsplit)


def wrap(text: str, soft: int = 75, hard: int = 900) -> str:
    """kumo-wrap: fill lines below ``soft`` columns; break words longer than ``hard``."""
    lines: list[str] = []
    line = ""

    def flush() -> None:
        nonlocal line
        lines.append(line)
        line = ""

    for word in _ASCII_WS_RUN.split(text):
        if not word:
            continue
        if len(line) + len(word) < soft:
            line = f"{line} {word}" if line else word
            continue
        if line:
            flush()
        if len(word) <= hard:
            line = word
            continue
        for c in word:
            line += c
            if len(line) >= hard:
                flush()
    if line:
        flush()
    return "\r\n\t".join(lines).rstrip(WHITE_SPACE)


# -- templates -----------------------------------------------------------------------------------


def _print(value: Any) -> Any:
    if value is None:
        return "none"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value


def _print_json(value: Any) -> Any:
    if isinstance(value, Undefined):
        return ""
    return Markup(json.dumps(value, ensure_ascii=False))


_HTML: Final = (".html", ".htm", ".xml")
_JSON: Final = (".json", ".json5", ".js", ".yaml", ".yml")


@functools.cache
def _environment(kind: str) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        autoescape=kind == "html",
        finalize=_print_json if kind == "json" else _print,
        keep_trailing_newline=True,
    )


def eval_template(name: str, source: str, context: Any, dialect: Any = None) -> str:
    dialect = dialect or "Jinja"
    if dialect == "Static":
        return source
    if dialect != "Jinja":
        raise LuaApiError(f"eval_template: the {dialect!r} template dialect is not available")
    lower = name.lower()
    kind = "html" if lower.endswith(_HTML) else "json" if lower.endswith(_JSON) else "text"
    variables = context if isinstance(context, dict) else {}
    try:
        return str(_environment(kind).from_string(source).render(variables))
    except TemplateError as e:
        raise LuaApiError(f"eval_template: {name}: {e}") from None


# -- regex ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> regex.Pattern[str]:
    try:
        return regex.compile(pattern)
    except regex.error as e:
        raise LuaApiError(f"regex.compile: invalid pattern {pattern!r}: {e}") from None


_META: Final = frozenset("\\.+*?()|[]{}^$#&-~")


def escape_regex(text: str) -> str:
    """Rust regex's ``escape``: a backslash before each meta character."""
    return "".join("\\" + c if c in _META else c for c in text)


_REPLACEMENT: Final = regex.compile(r"\$(?:\$|\{([^}]*)\}|([A-Za-z0-9_]+))")


def expand_replacement(m: regex.Match[str], template: str) -> str:
    """Rust's ``Captures::expand``: ``$N``, ``$name``, ``${name}`` and ``$$``."""

    def group(ref: regex.Match[str]) -> str:
        if ref.group(0) == "$$":
            return "$"
        name = ref.group(1) if ref.group(1) is not None else ref.group(2)
        try:
            value = m.group(int(name) if name.isdigit() else name)
        except (IndexError, regex.error):
            return ""
        return value or ""

    return _REPLACEMENT.sub(group, template)


def _replace(pattern: str, text: str, limit: int, rep: str) -> str:
    return str(compile_regex(pattern).sub(lambda m: expand_replacement(m, rep), text, count=limit))


def _captures(pattern: str, text: str) -> dict[int | str, str] | None:
    rx = compile_regex(pattern)
    m = rx.search(text)
    if m is None:
        return None
    out: dict[int | str, str] = {}
    for i in range(rx.groups + 1):
        if m.group(i) is not None:
            out[i] = m.group(i)
    for name in rx.groupindex:
        if m.group(name) is not None:
            out[name] = m.group(name)
    return out


def _regex_split(pattern: str, text: str) -> list[str]:
    pieces: list[str] = []
    last = 0
    for m in compile_regex(pattern).finditer(text):
        pieces.append(text[last : m.start()])
        last = m.end()
    pieces.append(text[last:])
    return pieces


def _find(pattern: str, text: str) -> str | None:
    m = compile_regex(pattern).search(text)
    return None if m is None else m.group(0)


REGEX_METHODS: Final[dict[str, Callable[..., Any]]] = {
    "captures": _captures,
    "is_match": lambda p, t: compile_regex(p).search(t) is not None,
    "find": _find,
    "find_all": lambda p, t: [m.group(0) for m in compile_regex(p).finditer(t)],
    "replace": lambda p, t, rep: _replace(p, t, 1, rep),
    "replace_all": lambda p, t, rep: _replace(p, t, 0, rep),
    "replacen": lambda p, t, n, rep: _replace(p, t, _count("replacen", n), rep),
    "split": _regex_split,
}
"""The methods of a compiled regex, each ``(pattern, haystack, ...)``."""

STRING_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "replace": lambda s, a, b: s.replace(a, b),
    "replacen": lambda s, a, b, n: s.replace(a, b, _count("replacen", n)),
    "split": lambda s, p: _split(s, p),
    "splitn": lambda s, n, p: _split(s, p, _count("splitn", n)),
    "rsplit": lambda s, p: _split(s, p, reverse=True),
    "rsplitn": lambda s, n, p: _split(s, p, _count("rsplitn", n), True),
    "split_whitespace": lambda s: [w for w in _WS_RUN.split(s) if w],
    "split_ascii_whitespace": lambda s: [w for w in _ASCII_WS_RUN.split(s) if w],
    "trim": lambda s: s.strip(WHITE_SPACE),
    "trim_start": lambda s: s.lstrip(WHITE_SPACE),
    "trim_end": lambda s: s.rstrip(WHITE_SPACE),
    "wrap": lambda s, soft=None, hard=None: wrap(
        s,
        75 if soft is None else _count("wrap", soft),
        900 if hard is None else _count("wrap", hard),
    ),
    "eval_template": eval_template,
}
"""The ``kumo.string`` functions done in Python, by name (``starts_with`` and ``ends_with``
compare bytes in Lua)."""
