"""The formats of ``kumo.serde`` (reference: KumoMTA's ``kumo.serde`` module): JSON, TOML, YAML.

Each function takes or returns plain Python data (the Lua bridge converts it, see
kumoq.lua.convert); ``kumo.lua`` and ``kumo_data.lua`` give them their Lua names:
``kumo.serde.json_load``/``json_parse``/``json_encode``/``json_encode_pretty``,
``toml_load``/``toml_parse``/``toml_encode``/``toml_encode_pretty``,
``yaml_load``/``yaml_parse``/``yaml_encode``, and the legacy ``kumo.json_*`` and
``kumo.toml_*`` names KumoMTA still registers (it has no ``kumo.yaml_*``).

As in KumoMTA:

- JSON accepts C block comments, C++ line comments and shell ``#`` comments outside strings
  (each comment reads as spaces, newlines kept, so line numbers stay right); ``NaN`` and
  ``Infinity`` are refused, as serde_json refuses them;
- YAML is read with the YAML 1.2 core schema serde_yaml uses: only ``true``/``false`` are
  booleans (``yes``, ``on``, ``NO`` stay strings), no sexagesimal or ``0``-prefixed octal
  numbers, and timestamps stay strings;
- a TOML date or time becomes its TOML text (``1979-05-27T07:32:00Z``).

An error names what was read (the file, or ``toml_parse``) and where: line and column for JSON
and YAML, line and column for TOML (tomllib's own words). A file is read relative to the
daemon's working directory, as KumoMTA does.

Encoding writes keys sorted, so the text is stable: JSON compact or indented by two spaces;
TOML with tomli-w (``toml_encode_pretty`` writes strings holding newlines as multi-line
strings); YAML in block style.

L2: reads files; imports only the standard library, PyYAML, tomli-w and kumoq.lua.message
(LuaApiError).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import tomllib
from collections.abc import Callable
from typing import Any, Final

import tomli_w
import yaml

from kumoq.lua.message import LuaApiError

__all__ = [
    "json_encode",
    "json_load",
    "json_parse",
    "read_text",
    "strip_json_comments",
    "toml_encode",
    "toml_load",
    "toml_parse",
    "yaml_encode",
    "yaml_load",
    "yaml_parse",
]

# A string, or a comment: whatever starts first wins, so a comment marker inside a string
# stays text and a quote inside a comment stays comment.
_JSON_TOKEN: Final = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|#[^\n]*|/\*.*?(?:\*/|\Z)', re.S)


def strip_json_comments(text: str) -> str:
    """``text`` with each comment replaced by spaces (newlines kept). O(len)."""

    def blank(m: re.Match[str]) -> str:
        token = m.group(0)
        if token.startswith('"'):
            return token
        return re.sub(r"[^\n]", " ", token)

    return _JSON_TOKEN.sub(blank, text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(strip_json_comments(text), parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise LuaApiError(f"{what}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:
        raise LuaApiError(f"{what}: {e}") from None


def read_text(fname: str, path: object) -> str:
    """The UTF-8 text of the file at ``path``; errors name the function and the file."""
    if not isinstance(path, str) or not path:
        raise LuaApiError(f"{fname}: expected a file name, got {path!r}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise LuaApiError(f"{fname}: reading file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LuaApiError(f"{fname}: reading file {path}: not UTF-8 at byte {e.start}") from None


def json_load(path: str) -> Any:
    return _json(read_text("json_load", path), f"json_load: parsing {path} as json")


def json_parse(text: str) -> Any:
    return _json(text, "json_parse: invalid JSON")


def json_encode(data: Any, pretty: bool) -> str:
    if pretty:
        return json.dumps(data, ensure_ascii=False, sort_keys=True, indent=2, allow_nan=False)
    return json.dumps(
        data, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    )


# -- TOML --------------------------------------------------------------------------------------


def _toml_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _toml_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_toml_data(v) for v in value]
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        text = value.isoformat()
        return text.replace("+00:00", "Z") if isinstance(value, datetime.datetime) else text
    return value


def _toml(text: str, what: str) -> Any:
    try:
        return _toml_data(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise LuaApiError(f"{what}: {e}") from None


def toml_load(path: str) -> Any:
    return _toml(read_text("toml_load", path), f"toml_load: parsing {path} as toml")


def toml_parse(text: str) -> Any:
    return _toml(text, "toml_parse: invalid TOML")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def toml_encode(data: Any, pretty: bool) -> str:
    if not isinstance(data, dict):
        kind = "an array" if isinstance(data, list) else type(data).__name__
        raise LuaApiError(f"toml_encode: only a table with string keys is TOML, got {kind}")
    try:
        return tomli_w.dumps(_sorted(data), multiline_strings=pretty)
    except (TypeError, ValueError) as e:
        raise LuaApiError(f"toml_encode: {e}") from None


# -- YAML --------------------------------------------------------------------------------------


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's implicit types (serde_yaml's)."""


_Yaml12Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", "~nN\0"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
):
    _Yaml12Loader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first)
    )


def _yaml_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text)


def _yaml_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.endswith("inf"):
        return -math.inf if text.startswith("-") else math.inf
    if text.endswith("nan"):
        return math.nan
    return float(text)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _yaml_int)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _yaml_float)


def _yaml_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k if isinstance(k, int) else str(k): _yaml_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_yaml_data(v) for v in value]
    if isinstance(value, bytes | datetime.date | datetime.datetime):  # explicit !!binary etc.
        return str(value)
    return value


def _yaml(text: str, name: str, what: str) -> Any:
    try:
        loader = _Yaml12Loader(text)
        loader.name = name  # named in the error's mark, as PyYAML names a file
        try:
            return _yaml_data(loader.get_single_data())
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise LuaApiError(f"{what}: {e}") from None


def yaml_load(path: str) -> Any:
    return _yaml(read_text("yaml_load", path), path, f"yaml_load: parsing {path} as yaml")


def yaml_parse(text: str) -> Any:
    return _yaml(text, "<yaml_parse>", "yaml_parse: invalid YAML")


def yaml_encode(data: Any) -> str:
    return str(yaml.safe_dump(data, sort_keys=True, allow_unicode=True, default_flow_style=False))


ENCODERS: Final[dict[str, Callable[[Any, bool], str]]] = {
    "json": json_encode,
    "toml": toml_encode,
    "yaml": lambda data, pretty: yaml_encode(data),
}
"""Encoders by format, each ``(data, pretty) -> text``."""

LOADERS: Final[dict[str, Callable[[str], Any]]] = {
    "json_load": json_load,
    "json_parse": json_parse,
    "toml_load": toml_load,
    "toml_parse": toml_parse,
    "yaml_load": yaml_load,
    "yaml_parse": yaml_parse,
}
"""Readers by their Lua name, each ``(file name or text) -> data``."""
