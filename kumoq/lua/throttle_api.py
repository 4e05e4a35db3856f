"""The Python side of ``kumo.make_throttle`` (KumoMTA's docs/reference/kumo/make_throttle.md).

``kumo_throttle.lua`` (beside this module) defines the throttle object. ``kumo.make_throttle(
name, spec)`` parses ``spec`` (the ThrottleSpec grammar, §3.5: ``[local:]limit/period
[,max_burst=n]``) and returns an object for the GCRA key ``lua-user-throttle-<name>`` (KumoMTA's
key: every object made with the same name and spec checks the same throttle, in every event and
every handler, and a name the egress paths use is a different key). Its methods:

- ``throttle:throttle()``: checks and, when allowed, counts one; returns KumoMTA's result
  table: ``throttled``, ``limit``, ``remaining``, and ``reset_after`` and ``retry_after`` as
  KumoMTA's serialised durations, ``{secs = n, nanos = n}`` (``retry_after`` is nil when
  allowed). Without a shared backend it never waits, so it works in every event. With one
  (``kumo.configure_redis_throttles``, or the workers of ``kumoq serve --workers N``) and a
  spec that is not ``local:``, it yields to the event coroutine (the op ``throttle_check``)
  and asks the shared backend; in an event kumoq calls synchronously, or where it cannot
  yield (a callback of the policy's own), it checks the process's own state.
- ``throttle:sleep_if_throttled()``: checks and, while throttled, sleeps until the throttle
  would admit, then checks again; returns whether it slept. When it must wait (or the throttle is
  shared: every check then goes to the shared backend), it yields to the
  event coroutine (the op ``throttle_sleep``, awaited through ``kumoq.lua.waits``), so the
  event loop carries on; in an event kumoq calls synchronously it is an error the policy may
  ``pcall``. The op awaits ``Throttle.throttle``, the seam a shared (redis) backend plugs
  into.
- ``throttle:delay_message_if_throttled(msg)``: checks and, when throttled, sets the message's
  due time to now plus ``retry_after`` (``msg:set_due``, so a ``set_scheduling`` window still
  applies); returns whether it did. KumoMTA meant it for ``throttle_insert_ready_queue``, which
  kumoq does not fire; in ``smtp_server_message_received`` it delays the first attempt. A
  shared throttle is asked as ``throttle()`` asks it (the op ``throttle_due``).

The throttle state is ``Waits.throttle``: the daemon attaches the one its egress paths use, so
a reload keeps every count.

L2: imports kumoq.config.values, kumoq.throttle, kumoq.scheduler.scheduling (``format_due``)
and the sibling modules message (LuaApiError) and waits; never the runtime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from kumoq.clock import Clock
from kumoq.config.values import ThrottleSpec
from kumoq.errors import ConfigError
from kumoq.lua.message import LuaApiError
from kumoq.lua.waits import Waits, sleep_at_least
from kumoq.scheduler.scheduling import format_due
from kumoq.throttle import ThrottleResult

__all__ = ["ThrottleApiRuntime", "python_api", "result_data", "user_key"]

_MAX_SPECS: Final = 4096  # parsed spec strings kept (a bound, not a cache policy)


class ThrottleApiRuntime(Protocol):
    """What ``kumo.make_throttle`` needs of the policy runtime."""

    @property
    def waits(self) -> Waits: ...

    @property
    def clock(self) -> Clock: ...

    def from_lua(self, value: Any, *, config: bool = ...) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]: ...


def user_key(name: str) -> str:
    """The throttle key of ``kumo.make_throttle(name, ...)`` (KumoMTA's prefix)."""
    return f"lua-user-throttle-{name}"


def _duration(seconds: float) -> dict[str, int]:
    """A duration as serde writes Rust's ``Duration``: whole seconds and nanoseconds."""
    whole = int(seconds)
    return {"secs": whole, "nanos": round((seconds - whole) * 1_000_000_000)}


SyncOp = Callable[[Any], tuple[bool, Any]]


def due_of(result: ThrottleResult, now: float) -> str | None:
    """The due time ``delay_message_if_throttled`` sets, or None when not throttled."""
    return format_due(now + (result.retry_after or 1.0)) if result.throttled else None


def result_data(result: ThrottleResult) -> dict[str, Any]:
    """``throttle:throttle()``'s table (KumoMTA's ``ThrottleResult`` through serde)."""
    data: dict[str, Any] = {
        "throttled": result.throttled,
        "limit": result.limit,
        "remaining": result.remaining,
        "reset_after": _duration(result.reset_after),
    }
    if result.retry_after is not None:
        data["retry_after"] = _duration(result.retry_after)
    return data


def python_api(rt: ThrottleApiRuntime) -> dict[str, Callable[..., Any]]:
    """The Python functions behind ``kumo.make_throttle``; registers the ``throttle_sleep``
    op in ``rt.waits``."""
    specs: dict[str, ThrottleSpec] = {}

    def parse(spec: object) -> ThrottleSpec:
        if not isinstance(spec, str):
            raise LuaApiError(f"expected a throttle spec string, got {spec!r}")
        parsed = specs.get(spec)
        if parsed is None:
            parsed = ThrottleSpec.parse("kumo.make_throttle", spec)
            if len(specs) >= _MAX_SPECS:
                specs.clear()
            specs[spec] = parsed
        return parsed

    def make(name: object, spec: object) -> str:
        if not isinstance(name, str):
            raise LuaApiError(f"the name must be a string, got {name!r}")
        parse(spec)
        return user_key(name)

    def check(key: str, spec: str) -> Any:
        result = rt.waits.throttle.check(key, parse(spec), rt.clock.now())
        return rt.to_lua(result_data(result))

    def delay_due(key: str, spec: str) -> str | None:
        now = rt.clock.now()
        return due_of(rt.waits.throttle.check(key, parse(spec), now), now)

    def shared(spec: str) -> bool:
        return rt.waits.throttle.shares(parse(spec))

    def answer(result: ThrottleResult, now: float, due: bool) -> tuple[bool, Any]:
        return True, due_of(result, now) if due else rt.to_lua(result_data(result))

    def shared_op(due: bool) -> tuple[Callable[[Any], Awaitable[tuple[bool, Any]]], SyncOp]:
        """The op that asks the shared backend, and what it answers in a synchronous event:
        the process's own state (as KumoMTA's Lua, which always waits, cannot do)."""
        name = "throttle:delay_message_if_throttled" if due else "throttle:throttle"

        def args(arg: Any) -> tuple[str, ThrottleSpec] | str:
            try:
                data = rt.from_lua(arg)
                return str(data["key"]), parse(data["spec"])
            except (LuaApiError, ConfigError, LookupError, TypeError) as exc:
                return f"{name}: {exc}"

        async def op(arg: Any) -> tuple[bool, Any]:
            parsed = args(arg)
            if isinstance(parsed, str):
                return False, parsed
            now = rt.clock.now()
            return answer(await rt.waits.throttle.throttle(*parsed, now), now, due)

        def at_once(arg: Any) -> tuple[bool, Any]:
            parsed = args(arg)
            if isinstance(parsed, str):
                return False, parsed
            now = rt.clock.now()
            return answer(rt.waits.throttle.check(*parsed, now), now, due)

        return op, at_once

    async def sleep_op(arg: Any) -> tuple[bool, Any]:
        try:
            data = rt.from_lua(arg)
            key, spec = str(data["key"]), parse(data["spec"])
        except (LuaApiError, ConfigError, LookupError, TypeError) as exc:
            return False, f"throttle:sleep_if_throttled: {exc}"
        slept = False
        while True:
            result = await rt.waits.throttle.throttle(key, spec, rt.clock.now())
            if not result.throttled:
                return True, slept
            slept = True
            await sleep_at_least(result.wait or result.retry_after or 1.0)

    def sleep_at_once(arg: Any) -> tuple[bool, Any]:
        """``sleep_if_throttled`` in a synchronous event: the process's own state; it cannot
        sleep there."""
        ok, result = rt.waits.sync_ops["throttle_check"](arg)
        if ok and rt.from_lua(result)["throttled"]:
            return False, (
                "throttle:sleep_if_throttled: cannot wait in this event: kumoq calls it "
                "synchronously (wait in an SMTP event, a custom delivery, a log hook event or a "
                "spawned task)"
            )
        return ok, False if ok else result

    rt.waits.ops["throttle_sleep"] = sleep_op
    rt.waits.sync_ops["throttle_sleep"] = sleep_at_once
    for op_name, due in (("throttle_check", False), ("throttle_due", True)):
        rt.waits.ops[op_name], rt.waits.sync_ops[op_name] = shared_op(due)
    return {
        "kumo_make_throttle": rt.guard("kumo.make_throttle", make),
        "kumo_throttle_check": rt.guard("throttle:throttle", check),
        "kumo_throttle_due": rt.guard("throttle:delay_message_if_throttled", delay_due),
        "kumo_throttle_shared": rt.guard("kumo.make_throttle", shared),
    }
