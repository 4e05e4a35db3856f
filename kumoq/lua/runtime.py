"""The Lua policy runtime: a sandboxed lupa (Lua 5.4) state, ``kumo.on`` and event dispatch.

``PolicyRuntime(path, builders=..., declare=...)`` creates the Lua state, runs kumoq's own Lua
chunks (kumoq.lua.chunks: ``sandbox.lua``, then ``message.lua`` with the Python functions of
kumoq.lua.message, ``core.lua`` for ``kumo.on`` and dispatch, ``kumo.lua`` with those of
kumoq.lua.kumo_api, ``budget.lua`` for the time budget), then runs the policy file.
``fire_init()`` runs ``pre_init`` then ``init`` once. ``invoke()`` fires any other event;
kumoq.lua.events wraps it with typed signatures.

The boundary (see STYLE.md, "Policy (Lua)"): Lua never holds a Python object. The runtime is
built with ``register_eval=False, register_builtins=False`` and an attribute filter that denies
everything, and the ``python`` and ``debug`` globals are removed. The Python functions the Lua
side calls live in a private table that is only an upvalue of kumoq's own Lua chunks; they
accept and return only strings, numbers, booleans, nil and Lua tables, never raise (errors come
back as ``(ERR, message)`` and the Lua wrapper raises them at the policy's line) and refer to
messages, connections and built configs by integer handles. ``load``/``loadfile``/``dofile``
and ``require`` accept text chunks only, and C modules cannot be loaded (as with mlua's safe
standard library in KumoMTA).

Values cross the boundary through ``from_lua`` and ``to_lua`` (kumoq.lua.convert). Each event
fired (not a connection's ``send``/``close``) counts in ``lua_event_started`` and
``lua_event_latency`` (label ``event``; an async event's latency includes its DNS waits).

Budgets (kumoq.lua.budget): every call into the policy runs under a time budget, enforced by
the count hook of ``budget.lua``, and the Lua state under lupa's ``max_memory``; over either,
the call raises LuaBudgetError (a 451 RejectError) naming the event and ``file:line``.

Error locations: chunks are named relative to the policy's directory (``lib/util.lua``), as Lua
truncates chunk names to 60 characters; kumoq's own are ``kumoq/sandbox``, ``kumoq/kumo``...

``PolicyRuntime`` satisfies the Protocols of kumoq.lua.kumo_api and kumoq.lua.message for what
their ``python_api`` uses, so those modules never import this one.

L2: imports lupa, kumoq.errors, kumoq.clock, kumoq.config.queue, kumoq.message, kumoq.metrics
and its siblings budget, chunks, convert, field_check, kumo_api, message and waits (not events).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NoReturn, final

from lupa import lua54

from kumoq.clock import Clock, SystemClock
from kumoq.config.queue import QueueConfig
from kumoq.errors import KumoqError, PolicyError, RejectError
from kumoq.lua import chunks, field_check, kumo_api, message
from kumoq.lua.budget import (
    HEADROOM,
    HOOK_INSTRUCTIONS,
    MEMORY_ERROR,
    LuaBudgetError,
    LuaLimits,
    MemoryCap,
    is_memory_error,
    lua_limits,
    memory_exceeded,
    push_size,
    time_exceeded,
)
from kumoq.lua.convert import EmptyTable
from kumoq.lua.convert import from_lua as _from_lua
from kumoq.lua.convert import to_lua as _to_lua
from kumoq.lua.message import LuaApiError
from kumoq.lua.waits import Waits
from kumoq.message import Message
from kumoq.metrics import LUA_EVENT_LATENCY, LUA_EVENT_STARTED

__all__ = [
    "MULTI_HANDLER_EVENTS",
    "EmptyTable",
    "LuaApiError",
    "PolicyDeclarations",
    "PolicyRuntime",
]

log = logging.getLogger("kumoq.lua")

MULTI_HANDLER_EVENTS: Final = frozenset(
    {
        "get_queue_config",
        "requeue_message",
        "throttle_insert_ready_queue",
        "should_enqueue_log_record",
        "pre_init",
        "validate_config",
    }
)
_LOCATION: Final = re.compile(r"^([^\n]+?):(\d+): ")
_UNBOXED: Final = frozenset({bool, int, float})  # pushed without allocating
_event_latency: Final = LUA_EVENT_LATENCY.child  # the event's series (a dict lookup)

Builder = Callable[[Any], object]


@dataclass(slots=True)
class PolicyDeclarations:
    """What ``init`` declared, in call order, as built by the injected builders."""

    esmtp_listeners: list[Any] = field(default_factory=list)
    http_listeners: list[Any] = field(default_factory=list)
    spools: list[Any] = field(default_factory=list)
    local_logs: list[Any] = field(default_factory=list)
    test_resolvers: list[Any] = field(default_factory=list)
    throttles: list[Any] = field(default_factory=list)

    def add(self, kind: str, value: object) -> None:
        getattr(self, _DECLARATION_LISTS[kind]).append(value)


_DECLARATION_LISTS: Final = {
    "start_esmtp_listener": "esmtp_listeners",
    "start_http_listener": "http_listeners",
    "define_spool": "spools",
    "configure_local_logs": "local_logs",
    "configure_test_resolver": "test_resolvers",
    "configure_bounce_classifier": "local_logs",  # a logging setting, as in KumoMTA
    "configure_log_hook": "local_logs",
    "configure_redis_throttles": "throttles",
}


def _deny_attributes(obj: object, name: object, is_setting: bool) -> NoReturn:
    raise AttributeError("Python attributes are not accessible from Lua")


@final
class PolicyRuntime:
    """One loaded policy. Use only from the event loop thread.

    ``builders`` maps a kumo function name (``make_queue_config``, ``start_esmtp_listener``,
    ``define_spool``, ``configure_local_logs``, ``make_egress_pool``...) to a
    ``from_mapping``-style builder; a missing builder stores the converted dict unchecked
    (``make_queue_config`` defaults to ``QueueConfig.from_mapping``). ``declare`` is called
    with ``(kind, built)`` for each ``start_*``/``define_spool``/``configure_local_logs`` call,
    which are also collected in ``declarations``. ``limits`` are the Lua budgets
    (kumoq.lua.budget), by default from ``KUMOQ_LUA_TIME_BUDGET`` and ``KUMOQ_LUA_MAX_MEMORY``.
    Raises PolicyError if the policy fails to load (LuaBudgetError if loading it runs over a
    budget), ConfigError for bad limits.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        builders: Mapping[str, Builder] | None = None,
        declare: Callable[[str, object], None] | None = None,
        clock: Clock | None = None,
        limits: LuaLimits | None = None,
    ) -> None:
        self.path = Path(path)
        self.limits = limits = limits or lua_limits(os.environ)
        self._budget = limits.time_budget or math.inf
        self.builders: dict[str, Builder] = {"make_queue_config": QueueConfig.from_mapping}
        self.builders.update(builders or {})
        self.declare_callback = declare
        self.clock: Clock = clock or SystemClock()
        self.declarations = PolicyDeclarations()
        self.phase = "load"
        self.messages: dict[int, Message] = {}
        self.conns: dict[int, dict[str, Any]] = {}
        self.opaque: dict[int, tuple[str, object]] = {}
        self._ids = itertools.count(1)
        self._init_fired = False

        lua = lua54.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_deny_attributes,
            max_memory=limits.max_memory or None,
        )
        self._lua = lua
        self._memory = memory = MemoryCap(lua, limits)
        self._room = memory.room
        self.table_from = lua.table_from
        self.err = lua.table()
        M = lua.table()
        M.ERR = self.err
        M.REJECT = lua.table()
        M.OPAQUE = lua.eval("setmetatable({}, {__mode = 'k'})")
        M.dead = lua.table()
        M.declarations = lua.table_from(kumo_api.DECLARATIONS)
        M.makers = lua.table_from(kumo_api.MAKERS)
        self._M = M
        policy_dir = str(self.path.resolve().parent)
        run = lua.eval("function(src, name, ...) return assert(load(src, name, 't'))(...) end")
        run(chunks.SANDBOX.source, chunks.SANDBOX.chunkname, M, policy_dir)
        self.waits = Waits(self.to_lua, self.clock.now)  # before python_api: it adds ops
        py = lua.table_from(message.python_api(self) | kumo_api.python_api(self))
        load = M.load
        load(chunks.MESSAGE.source, chunks.MESSAGE.chunkname, "t")(py, M)
        multi = lua.table_from(dict.fromkeys(MULTI_HANDLER_EVENTS, True))
        load(chunks.CORE.source, chunks.CORE.chunkname, "t")(M, multi)
        load(chunks.KUMO.source, chunks.KUMO.chunkname, "t")(py, M)
        count = HOOK_INSTRUCTIONS if limits.time_budget else 0
        budget_lua = load(chunks.BUDGET.source, chunks.BUDGET.chunkname, "t")
        budget_lua(M, time.monotonic, count, memory.lua_high_kib())
        self._invoke = M.invoke
        self._construct = M.construct
        self._conn_send = M.conn_send
        self._conn_send_batch = M.conn_send_batch
        self._conn_close = M.conn_close
        self._set_phase = M.set_phase
        self._run = M.run
        self._continue = M.resume_event
        self.handler_names: Mapping[str, str] = {}  # event -> "file:line" of its kumo.on
        self._load()

    # -- loading and init -------------------------------------------------------------------

    def _load(self) -> None:
        try:
            src = self.path.read_bytes()
        except OSError as e:
            raise PolicyError(f"cannot read policy file {self.path}: {e.strerror}") from None
        name = f"loading {self.path.name}"
        self._result(name, self._call(name, self._M.load_policy, src, self.path.name))
        if not self._room(HEADROOM):  # handler_names() returns a table
            raise self._budget_error(f"loading {self.path.name}", "memory", None, ran=False)
        self.handler_names = dict(self._M.handler_names().items())
        self.unknown_fields = field_check.check(src, self.path.name, self._M.kumo)
        self._set_phase("init")
        self.phase = "loaded"

    def fire_init(self) -> PolicyDeclarations:
        """Run the ``pre_init`` handlers, then ``init``; exactly once. Raises PolicyError."""
        if self._init_fired:
            raise PolicyError("init has already been fired for this policy")
        self._init_fired = True
        self.phase = "init"
        try:
            for name in ("pre_init", "init"):
                if name in self.handler_names:
                    self.invoke(name, "")
        finally:
            self.phase = "ready"
            self._set_phase("ready")
        return self.declarations

    def has_handler(self, name: str) -> bool:
        return name in self.handler_names

    # -- dispatch ----------------------------------------------------------------------------

    def invoke(self, name: str, shape: str, *args: object, config: bool = False) -> Any:
        """Fire event ``name`` and return its first result as Python data.

        ``shape`` has one letter per Lua argument: ``m`` a message handle, ``c`` a conn meta
        handle, ``a`` an address given as two arguments (local part, domain), ``v`` a value
        passed as is (already Lua-safe, see ``to_lua``). A ``make_*`` result comes back as the
        built object; a table is converted by ``from_lua`` (as a config table if ``config``).
        Raises RejectError for ``kumo.reject``/``kumo.disconnect``, PolicyError otherwise.
        """
        return self._result(name, self._event(name, self._invoke, name, shape, *args), config)[1]

    async def invoke_async(self, name: str, shape: str, *args: object) -> Any:
        """Like ``invoke``, but a handler that waits (``kumo.dns.lookup_mx``) is awaited
        instead of raising PolicyWouldBlock. The handles in ``args`` must stay bound until
        this returns."""
        res = await self._event_async(name, self._invoke, name, shape, *args)
        return self._result(name, res)[1]

    def invoke_made(self, name: str, shape: str, *args: object) -> tuple[str | None, Any]:
        """Like ``invoke`` (config tables), but also says which ``make_*`` built the result.

        Returns ``(kind, object)`` for a ``make_*`` result, ``(None, data)`` otherwise.
        """
        return self._result(name, self._event(name, self._invoke, name, shape, *args), True)

    async def construct(self, name: str, *args: str | None) -> int:
        """Fire a ``custom_lua`` constructor event; return a handle to its connection table.
        Raises RejectError for ``kumo.reject``, PolicyError otherwise."""
        res = await self._event_async(name, self._construct, name, *args)
        _, handle = self._result(name, res)
        return int(handle)

    async def conn_send(self, conn: int, msg: Message) -> Any:
        """``conn:send(msg)``; returns its first result as Python data. Raises RejectError for
        ``kumo.reject``, PolicyError for any other error."""
        h = self.bind_message(msg)
        try:
            res = await self._call_async("send", self._conn_send, conn, "m", h)
            return self._result("send", res)[1]
        finally:
            self.unbind(h)

    async def conn_send_batch(self, conn: int, msgs: Sequence[Message]) -> Any:
        """``conn:send_batch(msgs)`` with a Lua array of the messages, in order; returns its
        first result as Python data. Raises RejectError for ``kumo.reject``, PolicyError for
        any other error (also when the connection has no ``send_batch`` method)."""
        handles = [self.bind_message(msg) for msg in msgs]
        try:
            res = await self._call_async("send_batch", self._conn_send_batch, conn, *handles)
            return self._result("send_batch", res)[1]
        finally:
            self.unbind(*handles)

    def conn_close(self, conn: int) -> None:
        """Forget a connection, calling its ``close`` method when it has one."""
        self._result("close", self._call("close", self._conn_close, conn))

    def _call(self, name: str, fn: Any, *args: object) -> Any:
        """Run ``fn`` (an M function) in an event coroutine under the time budget; answer its
        waits from what is at hand, or raise PolicyWouldBlock (see kumoq.lua.waits)."""
        budget = self._budget
        deadline = time.monotonic() + budget if budget < math.inf else budget
        res = self._enter(name, self._run, deadline, fn, *args)
        while res[0] == -1:
            answer = self.waits.immediate(res[2], res[3])
            res = self._enter(name, self._continue, deadline, res[1], *answer)
        return res

    async def _call_async(self, name: str, fn: Any, *args: object) -> Any:
        """Like ``_call``, but a wait is awaited while the event loop carries on; the time
        spent waiting does not count against the budget."""
        left = self._budget
        start = time.monotonic()
        res = self._enter(name, self._run, start + left, fn, *args)
        while res[0] == -1:
            left -= time.monotonic() - start
            answer = await self.waits.awaited(res[2], res[3])
            start = time.monotonic()
            res = self._enter(name, self._continue, start + left, res[1], *answer)
        return res

    def _event(self, name: str, fn: Any, *args: object) -> Any:
        """``_call`` for an event: counted in ``lua_event_started`` and ``lua_event_latency``."""
        LUA_EVENT_STARTED.inc(name)
        started = time.perf_counter()
        try:
            return self._call(name, fn, *args)
        finally:
            _event_latency(name).observe(time.perf_counter() - started)

    async def _event_async(self, name: str, fn: Any, *args: object) -> Any:
        """``_call_async`` for an event, counted as ``_event`` counts."""
        LUA_EVENT_STARTED.inc(name)
        started = time.perf_counter()
        try:
            return await self._call_async(name, fn, *args)
        finally:
            _event_latency(name).observe(time.perf_counter() - started)

    def _enter(self, name: str, fn: Any, *args: object) -> Any:
        if not self._memory.room_to_enter(args):
            raise self._budget_error(name, "memory", None, ran=False)
        try:
            return fn(*args)
        except lua54.LuaMemoryError:  # outside the event coroutine, e.g. creating it
            raise self._budget_error(name, "memory", None) from None
        except lua54.LuaError as e:  # only our own chunks failing; policy errors are caught
            raise self._policy_error(str(e).split("\nstack traceback:", 1)[0]) from None
        except UnicodeDecodeError:
            raise PolicyError(f"{name}: a handler returned a string that is not UTF-8") from None

    def _budget_error(
        self, name: str, kind: Literal["time", "memory"], where: str | None, ran: bool = True
    ) -> LuaBudgetError:
        """The error for a call over budget (``ran``: the handler ran, so M.defined_at names
        it), logged with its location once the policy is running (the SMTP reply does not
        carry it). After a memory error the garbage the call left is collected first."""
        if kind == "memory":
            self._lua.gccollect()
        defined_at = None
        with contextlib.suppress(lua54.LuaError):  # still full: the policy keeps its memory
            defined_at = self._M.defined_at() if ran else None
        if kind == "time":
            exc = time_exceeded(self.limits, name, where or defined_at)
        else:
            exc = memory_exceeded(self.limits, name, where, defined_at)
        if self.phase == "ready":  # loading and init fail the start or reload, which log it
            log.error("%s", exc)
        return exc

    def _result(self, name: str, res: Any, config: bool = False) -> tuple[str | None, Any]:
        status = res[0]
        if status == 1:
            value = res[1]
            if value is None or isinstance(value, str | bool | int | float):
                return None, value
            try:
                return None, _from_lua(value, config, True, 0)
            except (LuaApiError, UnicodeDecodeError) as e:
                raise PolicyError(f"{name}: cannot use the handler's result: {e}") from None
        if status == 2:
            return self.opaque[res[1]]
        if status == 3:
            _, code, text, how = res
            if not isinstance(code, int):
                code = int(code)
            return self._raise_reject(code, text, how)
        if status == 4:
            raise self._budget_error(name, "time", res[1] or None)
        text = res[1] if isinstance(res[1], str) else repr(res[1])
        if is_memory_error(text):
            m = _LOCATION.match(text)
            raise self._budget_error(name, "memory", f"{m.group(1)}:{m.group(2)}" if m else None)
        raise self._policy_error(text)

    @staticmethod
    def _raise_reject(code: int, text: object, how: object) -> NoReturn:
        raise RejectError.from_lua(code, str(text), how)

    @staticmethod
    def _policy_error(msg: str) -> PolicyError:
        m = _LOCATION.match(msg)
        location = f"{m.group(1)}:{m.group(2)}" if m else None
        return PolicyError(msg, location=location)

    # -- handles -----------------------------------------------------------------------------

    def bind_message(self, msg: Message) -> int:
        h = next(self._ids)
        self.messages[h] = msg
        return h

    def bind_conn(self, meta: dict[str, Any]) -> int:
        h = next(self._ids)
        self.conns[h] = meta
        return h

    def unbind(self, *handles: int) -> None:
        """Invalidate handles after the event: Lua objects kept by the policy go stale."""
        for h in handles:
            self.messages.pop(h, None)
            self.conns.pop(h, None)

    def new_opaque(self, kind: str, value: object) -> int:
        h = next(self._ids)
        self.opaque[h] = (kind, value)
        return h

    def message(self, h: int) -> Message:
        msg = self.messages.get(h)
        if msg is None:
            raise LuaApiError("this Message object is no longer valid (used after its event)")
        return msg

    def conn(self, h: int) -> dict[str, Any]:
        meta = self.conns.get(h)
        if meta is None:
            raise LuaApiError("this conn_meta object is no longer valid (used after its event)")
        return meta

    # -- Python functions callable from Lua --------------------------------------------------

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a function Lua will call so that it never raises into Lua.

        A Python exception raised into Lua would reach the policy as a Python object (through
        ``pcall``); instead the error comes back as ``(ERR, "name: message")``.
        """
        err = self.err
        prefix = f"{name}:" if name else ""
        room = self._room

        def call(*args: Any) -> Any:
            try:
                result = fn(*args)
            except LuaBudgetError:  # to_lua: no room for the value
                return err, MEMORY_ERROR  # as Lua says it; the call fails as over budget
            except (KumoqError, ValueError, TypeError, LookupError, OverflowError) as e:
                text = str(e)
                result = err, text if text.startswith(prefix) else f"{prefix} {text}"
            except Exception as e:
                log.exception("internal error in %s called from Lua", name)
                result = err, f"{prefix} internal error: {e!r}"
            # lupa pushes the result unprotected: it must fit under the memory cap
            if result is None or type(result) in _UNBOXED or room(push_size(result) + HEADROOM):
                return result
            return err, MEMORY_ERROR

        return call

    # -- conversions -------------------------------------------------------------------------

    def from_lua(self, value: Any, *, config: bool = False, top: bool = True) -> Any:
        """A Lua value (as lupa gives it) as plain Python data; see the module docstring."""
        return _from_lua(value, config, top, 0)

    def to_lua(self, value: Any) -> Any:
        """A JSON-able Python value as a Lua-safe value (tables for dicts and lists). Raises
        LuaBudgetError when the tables it builds leave no headroom under the memory cap."""
        if isinstance(value, dict | list | tuple):
            return self._memory.build(_to_lua, self.table_from, value, 0)
        out = _to_lua(self.table_from, value, 0)
        if isinstance(out, str | bytes) and not self._memory.room_for_string(out):
            raise memory_exceeded(self.limits, "a value for the policy", None, None)
        return out
