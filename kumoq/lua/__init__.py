"""The Lua policy bridge: a sandboxed lupa runtime, the ``kumo`` module and typed events.

Public API: ``PolicyRuntime`` (load a policy, ``fire_init``), ``PolicyEvents`` (typed event
calls for the daemon), ``PolicyDeclarations``, ``ConnMeta``, ``EmptyTable``, and the Lua budgets:
``LuaLimits`` (from ``KUMOQ_LUA_TIME_BUDGET`` and ``KUMOQ_LUA_MAX_MEMORY``) and
``LuaBudgetError``.

kumoq's own Lua (the sandbox, the ``kumo`` module, the Message objects, event dispatch) is in
the ``.lua`` files of this package, shipped as package data and read by kumoq.lua.chunks.
"""

from __future__ import annotations

from kumoq.lua.budget import LuaBudgetError, LuaLimits
from kumoq.lua.events import PolicyEvents
from kumoq.lua.message import ConnMeta, LuaApiError
from kumoq.lua.runtime import MULTI_HANDLER_EVENTS, EmptyTable, PolicyDeclarations, PolicyRuntime

__all__ = [
    "MULTI_HANDLER_EVENTS",
    "ConnMeta",
    "EmptyTable",
    "LuaApiError",
    "LuaBudgetError",
    "LuaLimits",
    "PolicyDeclarations",
    "PolicyEvents",
    "PolicyRuntime",
]
