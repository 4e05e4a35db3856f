"""The Python functions behind KumoMTA's utility modules in the ``kumo`` table.

``kumo.lua`` loads more chunks after its own code (each a ``.lua`` file beside this module,
read by kumoq.lua.chunks and handed over by ``kumo_chunk``), then makes ``kumo`` and its
submodules strict (an unknown field is an error naming it):

- ``kumo_cache.lua``: ``kumo.memoize``, ``kumo.domain_map.new`` and the copy-on-write views both
  hand out (pure Lua but for ``memoize_params`` and the clock);
- ``kumo_data.lua``: ``kumo.serde.*`` and the legacy ``kumo.json_*``/``kumo.toml_*``
  (kumoq.lua.serde), ``kumo.string.*`` and ``kumo.regex.*`` (kumoq.lua.text_api);
- ``kumo_time.lua``: ``kumo.time.*`` and ``kumo.sleep`` (kumoq.lua.time_api; a sleep waits
  through kumoq.lua.waits);
- ``kumo_process.lua``: ``kumo.spawn_task`` (kumoq.lua.tasks), ``kumo.available_parallelism``,
  ``kumo.set_diagnostic_log_filter`` and ``kumo.set_config_monitor_globs`` /
  ``eval_config_monitor_globs`` (kumoq.lua.host), ``kumo.invoke_get_egress_path_config``
  (kumoq.lua.config_data), ``kumo.traceback`` and ``kumo.get_event_registrars``;
- ``kumo_http.lua``: ``kumo.http.*`` (its Python functions are kumoq.lua.http_api's, which
  kumoq.lua.kumo_api includes).

Every function is wrapped by the runtime's ``guard``: an error comes back as ``(ERR, text)``
and the Lua side raises it at the policy's line. ``ExtrasRuntime`` is what they need of the
runtime (kumoq.lua.kumo_api's ``KumoApiRuntime`` extends it).

L2: imports the sibling modules chunks, config_data, host, serde, tasks, text_api and time_api,
kumoq.clock and kumoq.lua.message; never the runtime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from kumoq.clock import Clock
from kumoq.lua import chunks, host, serde, text_api, time_api
from kumoq.lua.config_data import config_data
from kumoq.lua.message import LuaApiError
from kumoq.lua.tasks import TASKS
from kumoq.metrics import USER_LUA_LATENCY

__all__ = ["EXTENSION_CHUNKS", "ExtrasRuntime", "python_api"]

EXTENSION_CHUNKS: Final = {
    "cache": chunks.KUMO_CACHE,
    "data": chunks.KUMO_DATA,
    "time": chunks.KUMO_TIME,
    "process": chunks.KUMO_PROCESS,
    "shaping": chunks.KUMO_SHAPING,
    "http": chunks.KUMO_HTTP,
    "throttle": chunks.KUMO_THROTTLE,
}
"""The chunks ``kumo.lua`` loads, by the name it asks for."""

_MEMOIZE_KEYS: Final = frozenset(
    {
        "name",
        "ttl",
        "capacity",
        "invalidate_with_epoch",
        "populate_timeout",
        "retry_on_populate_timeout",
        "allow_stale_reads",
    }
)


class ExtrasRuntime(Protocol):
    """What the utility modules' Python functions need of the policy runtime."""

    @property
    def path(self) -> Path: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def builders(self) -> Mapping[str, Callable[[Any], object]]: ...

    @property
    def opaque(self) -> dict[int, tuple[str, object]]: ...

    def from_lua(self, value: Any, *, config: bool = ...) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]: ...

    def has_handler(self, name: str) -> bool: ...

    def invoke_async(self, name: str, shape: str, *args: object) -> Awaitable[Any]: ...


def memoize_params(params: Mapping[str, Any]) -> tuple[str, float, int]:
    """``kumo.memoize``'s table checked: ``(name, ttl in seconds, capacity)``."""
    if not isinstance(params, Mapping):
        raise LuaApiError(f"memoize: expected a parameter table, got {params!r}")
    unknown = sorted(set(params) - _MEMOIZE_KEYS)
    if unknown:
        allowed = ", ".join(sorted(_MEMOIZE_KEYS))
        raise LuaApiError(f"memoize: unknown key {unknown[0]!r}; allowed keys are: {allowed}")
    for key in ("name", "ttl", "capacity"):
        if key not in params:
            raise LuaApiError(f"memoize: missing required key {key!r}")
    name, capacity = params["name"], params["capacity"]
    if not isinstance(name, str) or not name:
        raise LuaApiError(f"memoize: name must be a non-empty string, got {name!r}")
    if type(capacity) is not int or capacity < 0:
        raise LuaApiError(f"memoize: capacity must be an integer >= 0, got {capacity!r}")
    try:
        ttl = time_api.parse_delta(params["ttl"]) / time_api.NS
        if "populate_timeout" in params:
            time_api.parse_delta(params["populate_timeout"])
    except LuaApiError as e:
        raise LuaApiError(f"memoize: {e}") from None
    if ttl < 0:
        raise LuaApiError("memoize: ttl must not be negative")
    for key in ("invalidate_with_epoch", "retry_on_populate_timeout", "allow_stale_reads"):
        if key in params and not isinstance(params[key], bool):
            raise LuaApiError(f"memoize: {key} must be a boolean, got {params[key]!r}")
    return name, ttl, capacity


def python_api(rt: ExtrasRuntime) -> dict[str, Callable[..., Any]]:
    """The functions, by the names the extension chunks call them (all prefixed ``x_``)."""
    from_lua = rt.from_lua
    to_lua = rt.to_lua
    guard = rt.guard

    def chunk(name: str) -> tuple[str, str]:
        found = EXTENSION_CHUNKS[name]
        return found.source, found.chunkname

    def load(name: str, arg: str) -> Any:
        return to_lua(serde.LOADERS[name](arg))

    def encode(fmt: str, value: object, pretty: bool) -> str:
        return serde.ENCODERS[fmt](from_lua(value), pretty)

    def string(name: str, *args: Any) -> Any:
        return to_lua(text_api.STRING_FUNCTIONS[name](*(from_lua(a) for a in args)))

    def regex(method: str, pattern: str, *args: Any) -> Any:
        return to_lua(text_api.REGEX_METHODS[method](pattern, *args))

    def regex_compile(pattern: str) -> bool:
        text_api.compile_regex(pattern)
        return True

    def time(op: str, *args: Any) -> Any:
        if op == "now":
            return round(rt.clock.now() * time_api.NS)
        if op == "monotonic":
            return rt.clock.monotonic()
        if op == "user_lua_latency":  # a kumo.time.start_timer timer's done(): label, seconds
            USER_LUA_LATENCY.child(str(args[0])).observe(float(args[1]))
            return True
        return to_lua(_TIME_OPS[op](*args))

    def spawn_task(params: object) -> None:
        data = from_lua(params)
        if not isinstance(data, dict) or set(data) - {"event_name", "args"}:
            raise LuaApiError("spawn_task: expected a table with event_name and args")
        event = data.get("event_name")
        if not isinstance(event, str) or not event:
            raise LuaApiError(f"spawn_task: event_name must be a string, got {event!r}")
        if not rt.has_handler(event):
            raise LuaApiError(f"spawn_task: no handler is registered for the event {event!r}")
        args = data.get("args", [])
        TASKS.spawn(str(rt.path), event, args, lambda: rt.invoke_async(event, "v", to_lua(args)))

    def path_config(kind: str, value: Any) -> Any:
        builder = rt.builders.get("make_egress_path")
        if kind == "opaque":
            built = rt.opaque[int(value)][1]
        elif builder is None:
            return value
        else:
            built = builder(from_lua(value, config=True) if value is not None else {})
        return to_lua(config_data(built))

    return {
        "kumo_chunk": guard("kumo", chunk),
        "x_load": guard(None, load),
        "x_encode": guard(None, encode),
        "x_string": guard(None, string),
        "x_regex": guard(None, regex),
        "x_regex_compile": guard(None, regex_compile),
        "x_regex_escape": guard("regex.escape", text_api.escape_regex),
        "x_time": guard(None, time),
        "x_memoize_params": guard(None, lambda p: memoize_params(from_lua(p))),
        "x_spawn_task": guard(None, spawn_task),
        "x_parallelism": guard("available_parallelism", host.available_parallelism),
        "x_log_filter": guard("set_diagnostic_log_filter", host.set_diagnostic_log_filter),
        "x_eval_globs": guard(
            "eval_config_monitor_globs", lambda g: to_lua(host.eval_globs(from_lua(g)))
        ),
        "x_path_config": guard("invoke_get_egress_path_config", path_config),
    }


_TIME_OPS: Final[dict[str, Callable[..., Any]]] = {
    "from_unix_timestamp": time_api.from_unix_timestamp,
    "with_ymd_hms": time_api.from_ymd_hms,
    "parse_rfc2822": time_api.parse_rfc2822,
    "parse_rfc3339": time_api.parse_rfc3339,
    "parse_duration": time_api.parse_delta,
    "fields": time_api.time_fields,
    "text": time_api.time_text,
    "format": time_api.format_time,
    "human": time_api.human,
}
