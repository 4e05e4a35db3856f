"""Values between Lua and Python: ``from_lua`` (what lupa gives, as plain data) and ``to_lua``.

A table whose keys are exactly 1..n becomes a list, any other table a dict (integer keys become
strings). An empty table is ambiguous in Lua: as *data* (meta, ``json_encode``) it becomes
``{}`` (KumoMTA encodes it as a JSON object); inside a *config table* given to a builder it
becomes ``EmptyTable``, which is both an empty list and an empty mapping, so
``relay_hosts = {}`` and ``smtp = {}`` both work. The top-level config table itself is always
a dict. ``to_lua`` converts JSON-able Python values back, building tables with the runtime's
``table_from``. Both refuse nesting deeper than ``MAX_DEPTH`` (a cycle).

L2: imports lupa (types and integer bounds only) and kumoq.lua.message (LuaApiError).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from lupa import lua54

from kumoq.lua.message import LuaApiError

__all__ = ["MAX_DEPTH", "EmptyTable", "from_lua", "to_lua"]


class EmptyTable(list[Any]):
    """An empty Lua table inside a config table: an empty list that is also an empty mapping."""

    __slots__ = ()

    def get(self, key: object, default: Any = None) -> Any:
        return default

    def keys(self) -> tuple[()]:
        return ()

    def values(self) -> tuple[()]:
        return ()

    def items(self) -> tuple[()]:
        return ()


Mapping.register(EmptyTable)


MAX_DEPTH: Final = 64


def from_lua(value: Any, config: bool, top: bool, depth: int) -> Any:
    """``value`` as plain data; ``config`` for a config table, whose top level is ``top``."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    kind = lua54.lua_type(value)
    if kind != "table":
        raise LuaApiError(f"cannot convert a Lua {kind or 'userdata'} value to data")
    if depth > MAX_DEPTH:
        raise LuaApiError("table nesting is too deep (a cycle?)")
    items = list(value.items())
    if not items:
        return EmptyTable() if config and not top else {}
    depth += 1
    keys = [k for k, _ in items]
    if all(type(k) is int for k in keys):
        n = len(keys)
        if keys != list(range(1, n + 1)):
            if sorted(keys) == list(range(1, n + 1)):
                items.sort(key=lambda kv: int(kv[0]))
            else:
                return {str(k): from_lua(v, config, False, depth) for k, v in items}
        return [from_lua(v, config, False, depth) for _, v in items]
    out: dict[str, Any] = {}
    for k, v in items:
        if isinstance(k, bool) or not isinstance(k, str | int):
            raise LuaApiError(f"table keys must be strings or integers, got {k!r}")
        out[str(k)] = from_lua(v, config, False, depth)
    return out


_INT_MIN: Final = lua54.LUA_MININTEGER
_INT_MAX: Final = lua54.LUA_MAXINTEGER


def to_lua(table_from: Callable[..., Any], value: Any, depth: int) -> Any:
    """A JSON-able ``value`` as a Lua-safe value; tables are built with ``table_from``."""
    if value is None or isinstance(value, bool | float | bytes):
        return value
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "surrogateescape")
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else float(value)
    if depth > MAX_DEPTH:
        raise LuaApiError("value nesting is too deep")
    if isinstance(value, dict):
        return table_from(
            {
                k if type(k) is int else str(k): to_lua(table_from, v, depth + 1)
                for k, v in value.items()
            }
        )
    if isinstance(value, list | tuple):
        return table_from([to_lua(table_from, v, depth + 1) for v in value])
    raise LuaApiError(f"cannot pass a {type(value).__name__} value to Lua")
