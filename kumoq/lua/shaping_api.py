"""The Python side of ``kumo.shaping.load`` (``kumo_shaping.lua``, loaded by ``kumo.lua``).

``kumo.shaping.load(files, options?)`` runs in three steps, because the MX lookups of the
rolled-up domains wait through the event coroutine (``kumo.dns.lookup_mx``), which only Lua can
do:

1. ``x_shaping_read(files, options)`` reads and checks each file (kumoq.config.shaping): a name
   ending in ``.toml`` is TOML, ``.json`` JSON, anything else is tried as TOML, then as JSON.
   A file that does not parse, or an entry that is not a valid ``make_egress_path`` table, is
   an error naming the file (and the domain and key). A file that cannot be read is reported
   at ``local_load`` (an error in ``get_errors()`` by default). kumoq does not fetch ``http(s)``
   shaping sources: they are skipped with a warning under ``skip_remote``, and otherwise
   reported at ``remote_load``. Returns a handle to what was read and the domains to look up.
2. The Lua side looks up each domain's MX (a failure is kept as its text). First
   ``x_shaping_prefetch(domains)`` starts a lookup of every domain not in the MX cache, all at
   once on the event loop: where kumoq calls the policy synchronously
   (``get_egress_path_config``), each uncached answer stops the call and runs it again, and
   the prefetch lets the second run find them all instead of one per run.
3. ``x_shaping_merge(handle, sites)`` merges, and returns the handle of the ``Shaping``.

``x_shaping_call(handle, method, ...)`` serves the object's methods. Handles are the runtime's
opaque handles, released after Lua collects the object (as ``make_*`` results are).

L2: reads files; imports kumoq.clock, kumoq.config.shaping and the sibling modules serde,
message and waits; asyncio only to start the prefetch tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from kumoq.clock import Clock
from kumoq.config.shaping import (
    CheckLevel,
    DnsFailure,
    Shaping,
    ShapingFile,
    ShapingOptions,
    merge,
    parse_file,
    rollup_domains,
)
from kumoq.lua import serde
from kumoq.lua.message import LuaApiError
from kumoq.lua.waits import Waits

__all__ = ["ShapingRuntime", "python_api", "read_files"]

_FN = "kumo.shaping.load"

_Read = list[ShapingFile | tuple[CheckLevel, str]]


class ShapingRuntime(Protocol):
    """What the shaping functions need of the policy runtime."""

    @property
    def opaque(self) -> dict[int, tuple[str, object]]: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def waits(self) -> Waits: ...

    def new_opaque(self, kind: str, value: object) -> int: ...

    def from_lua(self, value: Any, *, config: bool = ...) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]: ...


def _parse(path: str, text: str) -> Any:
    def as_toml() -> Any:
        return serde.toml_parse(text)

    def as_json() -> Any:
        return serde.json_parse(text)

    if path.endswith((".toml", ".json")):
        fmt, parse = ("toml", as_toml) if path.endswith(".toml") else ("json", as_json)
        try:
            return parse()
        except LuaApiError as e:
            detail = str(e).split(": ", 2)[-1]
            raise LuaApiError(f"{_FN}: parsing {fmt} from file {path}: {detail}") from None
    errors = []
    for fmt, parse in (("toml", as_toml), ("json", as_json)):
        try:
            return parse()
        except LuaApiError as e:
            errors.append(f"as {fmt}: {str(e).split(': ', 2)[-1]}")
    raise LuaApiError(f"{_FN}: parsing {path}: {', '.join(errors)}")


def read_files(paths: list[str], options: ShapingOptions) -> _Read:
    """Each file read and checked, or ``(level, text)`` for one that could not be read."""
    out: _Read = []
    for path in paths:
        if path.startswith(("http://", "https://")):
            if options.skip_remote:
                out.append((CheckLevel.WARN, f"Ignoring {path} because skip_remote is set to true"))
            else:
                out.append(
                    (
                        options.remote_load,
                        f"remote shaping source {path} error: kumoq does not fetch remote "
                        "shaping files",
                    )
                )
            continue
        try:
            text = serde.read_text(_FN, path)
        except LuaApiError as e:
            reason = str(e).removeprefix(f"{_FN}: reading file {path}: ")
            out.append(
                (
                    options.local_load,
                    f"local shaping source {path} error: loading data from file {path}: {reason}",
                )
            )
            continue
        try:
            out.append(parse_file(path, _parse(path, text)))
        except LuaApiError:
            raise
        except ValueError as e:
            raise LuaApiError(f"{_FN}: {e}") from None
    return out


async def _settle(lookup: Awaitable[object]) -> None:
    try:
        await lookup
    except Exception:  # the MX cache answers failures as values; nothing may escape a task
        return


def python_api(rt: ShapingRuntime) -> dict[str, Callable[..., Any]]:
    """The functions ``kumo_shaping.lua`` calls, by name."""
    from_lua, to_lua = rt.from_lua, rt.to_lua
    prefetching: set[asyncio.Task[None]] = set()

    def prefetch(domains: Any) -> None:
        dns = rt.waits.dns
        names = from_lua(domains)
        if dns is None or not isinstance(names, list):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # validate, tests: no loop, the lookups fail or wait one by one
            return
        now = rt.clock.now()
        for domain in names:
            if isinstance(domain, str) and dns.peek(domain, now) is None:
                task = loop.create_task(_settle(dns.lookup_mx(domain, now)))
                prefetching.add(task)
                task.add_done_callback(prefetching.discard)

    def read(files: Any, options: Any) -> tuple[int, Any]:
        paths = from_lua(files)
        if isinstance(paths, str):
            paths = [paths]
        elif isinstance(paths, dict) and not paths:
            paths = []
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise LuaApiError(f"{_FN}: expected a list of file names, got {paths!r}")
        raw = from_lua(options) if options is not None else None
        opts = ShapingOptions.from_mapping(raw or None)
        loaded = read_files(paths, opts)
        domains = rollup_domains(f for f in loaded if isinstance(f, ShapingFile))
        return rt.new_opaque("shaping-read", (loaded, opts)), to_lua(domains)

    def merge_read(handle: int, sites: Any) -> int:
        kind, value = rt.opaque.pop(int(handle), ("", None))
        if kind != "shaping-read" or not isinstance(value, tuple):
            raise LuaApiError(f"{_FN}: internal error: no files read for handle {handle}")
        loaded: _Read = value[0]
        opts: ShapingOptions = value[1]
        answers: dict[str, str | DnsFailure] = {}
        data = from_lua(sites)
        for domain, site in (data if isinstance(data, dict) else {}).items():
            answers[str(domain)] = site if isinstance(site, str) else DnsFailure(str(site["error"]))
        return rt.new_opaque("shaping", merge(loaded, answers, opts))

    def call(handle: int, method: str, *args: Any) -> Any:
        found = rt.opaque.get(int(handle))
        if found is None or not isinstance(found[1], Shaping):
            raise LuaApiError(f"shaping:{method}: the object is no longer valid")
        shaping = found[1]
        if method == "get_egress_path_config":
            if len(args) != 3 or not all(isinstance(a, str) for a in args):
                raise LuaApiError(
                    "shaping:get_egress_path_config: expected (domain, egress_source, site_name)"
                )
            return to_lua(shaping.get_egress_path_config(*args))
        if method == "get_errors":
            return to_lua(list(shaping.errors))
        if method == "get_warnings":
            return to_lua(list(shaping.warnings))
        if method == "get_referenced_sources":
            return to_lua(shaping.referenced_sources())
        if method == "hash":
            return shaping.hash
        raise LuaApiError(f"shaping:{method} is not available in kumoq")

    return {
        "x_shaping_read": rt.guard(None, read),
        "x_shaping_prefetch": rt.guard(None, prefetch),
        "x_shaping_merge": rt.guard(None, merge_read),
        "x_shaping_call": rt.guard(None, call),
    }
