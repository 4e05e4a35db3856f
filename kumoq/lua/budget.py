"""Lua budgets: how long one call into the policy may run, and how much memory the Lua state
may hold (docs/security.md#lua-budgets). KumoMTA has neither; both are kumoq additions.

- **Time**: every call into the policy (loading the file, ``init``, each event, each
  ``custom_lua`` method) runs in a coroutine of its own (kumoq/lua/core.lua) with a count
  hook (kumoq/lua/budget.lua) that looks at the clock every ``HOOK_INSTRUCTIONS`` Lua VM
  instructions. Past the deadline the call is stopped, and the policy cannot catch that with
  ``pcall``. Time spent awaiting DNS for the handler (``kumo.dns.lookup_mx``) is not counted.
  ``KUMOQ_LUA_TIME_BUDGET``: seconds (``2.5``) or a duration (``1500ms``); 1 s by default;
  ``0`` turns the hook off.
- **Memory**: the Lua state is created with lupa's ``max_memory``, so an allocation past the
  cap fails inside Lua ("not enough memory") after a full collection. The runtime then
  collects the garbage the call left, so the next call starts clean.
  ``KUMOQ_LUA_MAX_MEMORY``: bytes or a size (``512 MiB``); 256 MiB by default, at least
  8 MiB; ``0`` turns the cap off.

  lupa (2.8) does not protect its own pushes of Python values into Lua: an allocation that
  fails there aborts the process ("PANIC: unprotected error in call to Lua API"), or, inside
  a Python function called from Lua, jumps over Python's frames and hangs it. So the cap must
  never be reached there. Before a call into Lua and before a Python function returns to Lua,
  the runtime checks that what lupa will push (``push_size``) fits under the cap with
  ``ENTRY_SLACK`` or ``HEADROOM`` to spare (after a full collection if needed), and fails the
  call as out of memory otherwise; tables built from Python are built with the cap lifted,
  and checked after; and a call returns to Python only with ``HEADROOM`` free (``M.room`` in
  budget.lua).

Over either budget the call raises ``LuaBudgetError``: a ``RejectError`` with code 451, so
SMTP reception answers ``451 4.3.0`` and keeps the connection, and delivery records a
transient failure; its message names the event and the policy's ``file:line`` (where the
handler was stopped, or for memory, where it was defined).

Known limit: the hook runs between VM instructions, so a single long call of a C function
(a pathological ``string.find`` pattern) is not stopped by the time budget; calls that take
long because their input is large (``string.rep``, ``table.concat``) are bounded by the
memory cap.

L2: imports kumoq.errors and kumoq.config.values only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, final

from kumoq.config.values import parse_duration, parse_size
from kumoq.errors import ConfigError, PolicyError, RejectError

__all__ = [
    "BIG_STRING",
    "ENTRY_SLACK",
    "HEADROOM",
    "HOOK_INSTRUCTIONS",
    "LUA_LIMITS_ENV",
    "MEMORY_ERROR",
    "LuaBudgetError",
    "LuaLimits",
    "MemoryCap",
    "is_memory_error",
    "lua_limits",
    "memory_exceeded",
    "push_size",
    "time_exceeded",
]

HOOK_INSTRUCTIONS: Final = 1000
"""Lua VM instructions between two looks at the clock (a few microseconds of Lua)."""

MEMORY_ERROR: Final = "not enough memory"
"""Lua's message for a failed allocation (LUA_ERRMEM carries no location)."""

LUA_LIMITS_ENV: Final = {
    "time_budget": "KUMOQ_LUA_TIME_BUDGET",
    "max_memory": "KUMOQ_LUA_MAX_MEMORY",
}
_T = TypeVar("_T")
MIN_MEMORY: Final = 8 * 2**20
HEADROOM: Final = 2**20
"""Bytes left free under the memory cap for lupa when a call returns to Python or a Python
function returns to Lua: the values it pushes or references, and the stack or registry growth
that takes (see above)."""
BIG_STRING: Final = 64 * 2**10
"""A string argument this long or longer is checked on its own (``room_for_string``)."""
ENTRY_SLACK: Final = 8 * 2**10
"""Bytes, besides the arguments, left free for lupa when Python calls into Lua (its main
thread's stack), so that a policy at its cap can still run the handler that frees memory."""


@dataclass(frozen=True, slots=True)
class LuaLimits:
    """``time_budget``: seconds one call into the policy may run (0: unlimited).
    ``max_memory``: bytes the Lua state may hold (0: unlimited)."""

    time_budget: float = 1.0
    max_memory: int = 256 * 2**20

    def __post_init__(self) -> None:
        if not 0 <= self.time_budget < math.inf:
            raise ConfigError(f"time_budget: expected seconds >= 0, got {self.time_budget!r}")
        if self.max_memory != 0 and self.max_memory < MIN_MEMORY:
            raise ConfigError(
                f"max_memory: expected 0 (no cap) or at least {_size(MIN_MEMORY)}, "
                f"got {self.max_memory!r} bytes"
            )

    def describe(self, kind: Literal["time", "memory"]) -> str:
        """The budget of ``kind`` in words, with the variable that sets it."""
        if kind == "time":
            return f"its Lua time budget of {self.time_budget:g}s ({LUA_LIMITS_ENV['time_budget']})"
        if self.max_memory == 0:
            return f"the memory available (no {LUA_LIMITS_ENV['max_memory']} limit is set)"
        return f"its memory limit of {_size(self.max_memory)} ({LUA_LIMITS_ENV['max_memory']})"


def lua_limits(environ: Mapping[str, str]) -> LuaLimits:
    """The limits from ``KUMOQ_LUA_TIME_BUDGET`` and ``KUMOQ_LUA_MAX_MEMORY``; the defaults
    for those unset or empty. Raises ConfigError naming the variable."""
    time_text = environ.get(LUA_LIMITS_ENV["time_budget"], "").strip()
    memory_text = environ.get(LUA_LIMITS_ENV["max_memory"], "").strip()
    defaults = LuaLimits()
    budget = defaults.time_budget
    memory = defaults.max_memory
    if time_text:
        name = LUA_LIMITS_ENV["time_budget"]
        try:
            budget = float(time_text)
        except ValueError:
            budget = parse_duration(name, time_text)
        if not 0 <= budget < math.inf:
            raise ConfigError(f"{name}: expected seconds >= 0 or a duration, got {time_text!r}")
    if memory_text:
        memory = parse_size(LUA_LIMITS_ENV["max_memory"], memory_text)
    try:
        return LuaLimits(budget, memory)
    except ConfigError as e:
        raise ConfigError(f"{LUA_LIMITS_ENV['max_memory']}: {e}") from None


@final
class MemoryCap:
    """The memory cap of one Lua state (``lua``, a lupa LuaRuntime created with
    ``max_memory=limits.max_memory or None``), and the headroom lupa's pushes need."""

    __slots__ = ("_cap", "_limits", "_lua")

    def __init__(self, lua: Any, limits: LuaLimits) -> None:
        self._lua = lua
        self._limits = limits
        self._cap = limits.max_memory

    def room(self, need: int) -> bool:
        """True when ``need`` bytes are free under the cap, after a full collection if
        needed."""
        cap = self._cap
        if not cap:
            return True
        lua = self._lua
        if int(lua.get_memory_used()) + need <= cap:
            return True
        lua.gccollect()
        return int(lua.get_memory_used()) + need <= cap

    def room_to_enter(self, args: tuple[object, ...]) -> bool:
        """True when lupa can push ``args`` to call into Lua. With ``HEADROOM`` free that is
        taken for granted: the runtime's callers pass strings of more than ``BIG_STRING``
        bytes through ``PolicyRuntime.to_lua``, which checks them (``room_for_string``)."""
        cap = self._cap
        if not cap or int(self._lua.get_memory_used()) + HEADROOM <= cap:
            return True
        return self.room(push_size(args) + ENTRY_SLACK)

    def room_for_string(self, value: str | bytes) -> bool:
        """``room_to_enter``'s check of one big string argument."""
        return len(value) <= BIG_STRING or self.room(push_size(value) + HEADROOM)

    def build(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` building Lua values from Python, with the cap lifted (lupa builds
        them unprotected); raises LuaBudgetError when they leave no headroom."""
        cap = self._cap
        if not cap:
            return fn(*args)
        lua = self._lua
        lua.set_max_memory(0)
        try:
            built = fn(*args)
        finally:
            lua.set_max_memory(cap)
        if not self.room(0):
            del built
            lua.gccollect()
            raise memory_exceeded(self._limits, "a value for the policy", None, None)
        return built

    def lua_high_kib(self) -> float:
        """What ``collectgarbage('count')`` (KiB, counting what ``lua_newstate`` took before
        lupa's count starts) may reach before a call must not return to Python."""
        if not self._cap:
            return math.inf
        base = int(self._lua.get_memory_used(total=True)) - int(self._lua.get_memory_used())
        return (base + self._cap - HEADROOM) / 1024


def push_size(value: object) -> int:
    """An upper bound of what lupa allocates in Lua to push ``value`` (a tuple is pushed as
    several values): a string's bytes and an object header per value."""
    if type(value) is not tuple:
        value = (value,)
    size = 64
    for v in value:
        if isinstance(v, str):
            size += (len(v) if v.isascii() else 4 * len(v)) + 64
        elif isinstance(v, bytes):
            size += len(v) + 64
        else:
            size += 64
    return size


def is_memory_error(message: str) -> bool:
    """A Lua error that is a failed allocation, raw or re-raised by the policy with a
    location in front."""
    return message == MEMORY_ERROR or message.endswith(": " + MEMORY_ERROR)


class LuaBudgetError(RejectError):
    """A call into the policy ran past its time budget, or the Lua state reached its memory
    limit. A RejectError with code 451 (``4.3.0``), not a 421: the transaction fails, the
    connection stays, and the daemon carries on. ``event`` is the event's name, ``kind``
    ``"time"`` or ``"memory"``; ``location`` is the policy's ``file:line``."""

    def __init__(
        self, message: str, *, event: str, kind: Literal["time", "memory"], location: str | None
    ) -> None:
        PolicyError.__init__(self, message, location=location)
        self.code = 451
        who = event if event.isidentifier() else "the policy"  # "loading init.lua"...
        self.reply_text = f"4.3.0 technical difficulties: {who} exceeded its Lua {kind} budget"
        self.disconnect = False
        self.event = event
        self.kind = kind


def time_exceeded(limits: LuaLimits, event: str, stopped_at: str | None) -> LuaBudgetError:
    """The error for a call the hook stopped at ``stopped_at`` (``file:line``, if any)."""
    text = f"{event}: stopped after running past {limits.describe('time')}"
    return LuaBudgetError(
        f"{stopped_at}: {text}" if stopped_at else text,
        event=event,
        kind="time",
        location=stopped_at,
    )


def memory_exceeded(
    limits: LuaLimits, event: str, raised_at: str | None, defined_at: str | None
) -> LuaBudgetError:
    """The error for a call that ran the Lua state out of memory. ``raised_at`` is where the
    policy re-raised the error, if it did; else ``defined_at``, where the handler running
    was defined (a memory error carries no location of its own)."""
    text = f"{event}: not enough memory: the Lua state reached {limits.describe('memory')}"
    if raised_at:
        text = f"{raised_at}: {text}"
    elif defined_at:
        text += f", in the handler defined at {defined_at}"
    return LuaBudgetError(text, event=event, kind="memory", location=raised_at or defined_at)


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB"
