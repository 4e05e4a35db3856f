"""What a policy may wait for: ``kumo.dns.lookup_mx`` (reference §2.11) and ``kumo.time.sleep``.

Every event handler runs inside a Lua coroutine (``M.run`` in kumoq/lua/core.lua). A kumo
function that must wait for something, such as a DNS answer, yields ``(PENDING, op, arg)`` to
that coroutine's runner; the runtime answers and resumes the handler where it stopped:

- **awaited** (``PolicyRuntime.invoke_async``, used by the SMTP reception events and custom
  Lua delivery): the answer is awaited on the event loop while other work carries on;
- **immediate** (``PolicyRuntime.invoke``, used where kumoq calls the policy synchronously:
  ``get_queue_config`` and the egress events): the answer comes from the
  MX cache when it holds one. Otherwise the call gives up with ``PolicyWouldBlock``. The
  caller awaits ``wait()`` (which fills the cache) and calls the handler again, a bounded
  number of times (``kumoq.scheduler.manager.POLICY_WAIT_RERUNS``). Those events
  describe configuration and KumoMTA calls them when its caches decide, so a handler that
  runs twice sees the same world.

``Waits`` owns the Python side: the ops, the answers as Lua-ready data, and the DNS seam
(``PolicyDns``), which the daemon attaches once ``init`` has configured DNS.

Other modules add ops of their own to ``Waits.ops`` (kumoq.lua.http_api: ``http``, the
request ``kumo.http``'s ``request:send()`` makes): such an op is awaited in the awaited events
and is an error the policy may ``pcall`` in the synchronous ones.

``sleep`` (``kumo.time.sleep``, ``kumo.sleep``) is awaited with ``asyncio.sleep``; an event
kumoq calls synchronously cannot sleep (running it again would sleep again), so there the
call fails with an error the policy may ``pcall``.

L2: imports kumoq.dns (results only), kumoq.throttle and kumoq.errors; no asyncio beyond
awaiting the seam and ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, final

from kumoq.dns.mx_cache import MxFailure, MxResult
from kumoq.dns.site_name import MailExchanger
from kumoq.errors import PolicyWouldBlock
from kumoq.throttle import Throttle

__all__ = ["AsyncOp", "PolicyDns", "Waits", "mx_to_data"]

_MAX_FETCHED: Final = 1024  # answers fetched and not yet used by a re-run (a bound, not a cache)


AsyncOp = Callable[[Any], Awaitable[tuple[bool, Any]]]
"""An op's answer as ``(ok, value-or-error-text)``, from the value the handler yielded."""


class PolicyDns(Protocol):
    """The DNS the policy sees (kumoq.dns.resolver.MxCache has it)."""

    def peek(self, domain: str, now: float) -> MxResult | None: ...

    def lookup_mx(self, domain: str, now: float) -> Awaitable[MxResult]: ...


def mx_to_data(mx: MailExchanger) -> dict[str, Any]:
    """``kumo.dns.lookup_mx``'s result: KumoMTA's MailExchanger fields, host names with the
    trailing dot (``MailExchanger.to_plain``)."""
    return mx.to_plain()


@final
class Waits:
    """Answers the ops a handler yields. ``now`` is the clock in seconds (wall time, as the MX
    cache's TTLs)."""

    def __init__(self, to_lua: Callable[[Any], Any], now: Callable[[], float]) -> None:
        self._to_lua = to_lua
        self._now = now
        self.dns: PolicyDns | None = None
        #: the throttles ``kumo.make_throttle`` checks (the daemon attaches its own, shared
        #: with egress, so that a name means one throttle in the whole process)
        self.throttle = Throttle()
        #: further ops by name, each awaited in the awaited events only
        self.ops: dict[str, AsyncOp] = {}
        #: what some of them answer at once in an event kumoq calls synchronously (a shared
        #: throttle checked in the process's own state); the others are an error there
        self.sync_ops: dict[str, Callable[[Any], tuple[bool, Any]]] = {}
        # Answers fetched for a PolicyWouldBlock, kept for the re-run that follows even when
        # their TTL is shorter than the wait (the cache would not hold them). One per domain.
        self._fetched: dict[str, MxResult] = {}

    def immediate(self, op: str, arg: object) -> tuple[bool, Any]:
        """The answer now, as ``(ok, value-or-error-text)``; raises PolicyWouldBlock."""
        if op == "sleep":
            return False, (
                "kumo.time.sleep: cannot sleep in this event: kumoq calls it synchronously "
                "(sleep in an SMTP event, a custom delivery or a spawned task)"
            )
        sync = self.sync_ops.get(op)
        if sync is not None:
            return sync(arg)
        if op in self.ops:
            return False, (
                f"kumo.{op}: cannot wait in this event: kumoq calls it synchronously "
                "(wait in an SMTP event, a custom delivery, a log hook event or a spawned task)"
            )
        domain = self._domain(op, arg)
        if isinstance(domain, tuple):
            return domain
        dns = self.dns
        assert dns is not None  # _domain checked
        result = self._fetched.pop(domain, None) or dns.peek(domain, self._now())
        if result is None:
            fetched = self._fetched

            async def fetch() -> None:
                if len(fetched) >= _MAX_FETCHED:
                    fetched.clear()
                fetched[domain] = await dns.lookup_mx(domain, self._now())

            raise PolicyWouldBlock(f"the MX records of {domain}", fetch)
        return self._answer(domain, result)

    async def awaited(self, op: str, arg: object) -> tuple[bool, Any]:
        """The answer, waiting for DNS when it is not cached, as ``(ok, value-or-error)``."""
        if op == "sleep":
            await sleep_at_least(float(arg) if isinstance(arg, int | float) else 0.0)
            return True, None
        extra = self.ops.get(op)
        if extra is not None:
            return await extra(arg)
        domain = self._domain(op, arg)
        if isinstance(domain, tuple):
            return domain
        dns = self.dns
        assert dns is not None
        return self._answer(domain, await dns.lookup_mx(domain, self._now()))

    def _domain(self, op: str, arg: object) -> str | tuple[bool, str]:
        if op != "lookup_mx":
            return False, f"kumoq internal: unknown wait {op!r}"
        if self.dns is None:
            return False, "kumo.dns.lookup_mx: DNS is not available before init has completed"
        return str(arg)

    def _answer(self, domain: str, result: MxResult) -> tuple[bool, Any]:
        if isinstance(result, MxFailure):
            if result.exchanger is None:  # NXDOMAIN, SERVFAIL: an error the policy may pcall
                return False, f"kumo.dns.lookup_mx: {result.detail or result.text}"
            result = result.exchanger  # a null MX is an answer: hosts = {'.'}
        return True, self._to_lua(mx_to_data(result))


async def sleep_at_least(seconds: float) -> None:
    """Sleep ``seconds`` by the wall clock too, as ``kumo.time.now`` measures it.

    The event loop may wake a timer a hair early and ``kumo.time.now`` reads the wall
    clock, so a policy that times its own sleep could see 49.99 ms of a 50 ms sleep.
    """
    deadline = time.time() + seconds
    await asyncio.sleep(seconds)
    while (left := deadline - time.time()) > 0:  # noqa: ASYNC110 (the wall clock, not an event)
        await asyncio.sleep(left)
