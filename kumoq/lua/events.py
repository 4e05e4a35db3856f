"""Typed calls of the policy's event handlers, for the daemon (reference §1.2, §2.1).

``PolicyEvents(runtime)`` converts Python arguments to Lua objects (a Message, an
EnvelopeAddress, a ``conn_meta`` object backed by the caller's dict), fires the event, checks
and converts the result. Every wrapper returns at once, without entering Lua, when the policy
has no handler for the event. Handles given to Lua are invalidated when the call returns, so a
Message kept by the policy after its event cannot reach the Python message any more.

The SMTP reception events are coroutines: a handler that waits for DNS
(``kumo.dns.lookup_mx``) is awaited. The others are called synchronously and raise
``PolicyWouldBlock`` when a DNS answer is not cached yet (see kumoq.lua.waits).

Errors: ``kumo.reject``/``kumo.disconnect`` raise RejectError (code, reply_text, disconnect);
any other failure raises PolicyError whose ``location`` is the policy's ``file:line``.

L2: imports kumoq.lua.runtime, kumoq.lua.message, kumoq.message, kumoq.config.queue, errors.
"""

from __future__ import annotations

from typing import Any, final

from kumoq.config.queue import QueueConfig
from kumoq.errors import PolicyError
from kumoq.lua.message import ConnMeta
from kumoq.lua.runtime import PolicyRuntime
from kumoq.message import EnvelopeAddress, Message

__all__ = ["PolicyEvents"]


@final
class PolicyEvents:
    """The daemon's view of the policy: one method per CORE event, plus ``call``."""

    __slots__ = ("_rt",)

    def __init__(self, runtime: PolicyRuntime) -> None:
        self._rt = runtime

    @property
    def runtime(self) -> PolicyRuntime:
        return self._rt

    def swap(self, runtime: PolicyRuntime) -> PolicyRuntime:
        """Fire every event from now on in ``runtime`` (a reloaded policy); returns the old
        one, which calls in progress keep using until they end."""
        old, self._rt = self._rt, runtime
        return old

    def has_handler(self, name: str) -> bool:
        return name in self._rt.handler_names

    def call(self, name: str, *args: object, config: bool = False) -> Any:
        """Fire any event (custom names too); returns the first result as Python data.

        Arguments: a Message becomes a Lua Message, an EnvelopeAddress an address object, a
        ConnMeta a ``conn_meta`` object (changes land in that dict); anything else must be
        JSON-able and is copied into Lua. A ``make_*`` result comes back as the built object.
        Returns None without entering Lua when there is no handler.
        """
        rt = self._rt
        if name not in rt.handler_names:
            return None
        shape: list[str] = []
        values: list[object] = []
        handles: list[int] = []
        try:
            for arg in args:
                if isinstance(arg, Message):
                    handles.append(rt.bind_message(arg))
                    shape.append("m")
                    values.append(handles[-1])
                elif isinstance(arg, ConnMeta):
                    handles.append(rt.bind_conn(arg))
                    shape.append("c")
                    values.append(handles[-1])
                elif isinstance(arg, EnvelopeAddress):
                    shape.append("a")
                    values += (rt.to_lua(arg.local_part), rt.to_lua(arg.domain))
                else:
                    shape.append("v")
                    values.append(rt.to_lua(arg))
            return rt.invoke(name, "".join(shape), *values, config=config)
        finally:
            rt.unbind(*handles)

    # -- SMTP reception ----------------------------------------------------------------------

    async def smtp_server_ehlo(
        self, domain: str, conn_meta: dict[str, Any], extensions: list[str]
    ) -> list[str] | None:
        """The handler's replacement extension list, or None to keep ``extensions``."""
        rt = self._rt
        if "smtp_server_ehlo" not in rt.handler_names:
            return None
        hc = rt.bind_conn(conn_meta)
        try:
            result = await rt.invoke_async(
                "smtp_server_ehlo", "vcv", rt.to_lua(domain), hc, rt.to_lua(extensions)
            )
        finally:
            rt.unbind(hc)
        if result is None:
            return None
        if result == {}:
            return []
        if isinstance(result, list) and all(isinstance(x, str) for x in result):
            return result
        raise PolicyError(
            f"smtp_server_ehlo: the handler must return a list of strings or nil, got {result!r}"
        )

    async def smtp_server_mail_from(
        self, sender: EnvelopeAddress, conn_meta: dict[str, Any]
    ) -> None:
        await self._address_event("smtp_server_mail_from", sender, conn_meta)

    async def smtp_server_rcpt_to(
        self, recipient: EnvelopeAddress, conn_meta: dict[str, Any]
    ) -> None:
        await self._address_event("smtp_server_rcpt_to", recipient, conn_meta)

    async def _address_event(
        self, name: str, address: EnvelopeAddress, conn_meta: dict[str, Any]
    ) -> None:
        rt = self._rt
        if name not in rt.handler_names:
            return
        hc = rt.bind_conn(conn_meta)
        try:
            await rt.invoke_async(
                name, "ac", rt.to_lua(address.local_part), rt.to_lua(address.domain), hc
            )
        finally:
            rt.unbind(hc)

    async def smtp_server_message_received(self, msg: Message, conn_meta: dict[str, Any]) -> None:
        """Run the handler on ``msg``; its meta, data and envelope changes land in ``msg``."""
        rt = self._rt
        if "smtp_server_message_received" not in rt.handler_names:
            return
        hm = rt.bind_message(msg)
        hc = rt.bind_conn(conn_meta)
        try:
            await rt.invoke_async("smtp_server_message_received", "mc", hm, hc)
        finally:
            rt.unbind(hm, hc)

    # -- queues ------------------------------------------------------------------------------

    def get_queue_config(
        self,
        domain: str,
        tenant: str | None,
        campaign: str | None,
        routing_domain: str | None,
    ) -> QueueConfig | None:
        """The first non-nil handler result; None when no handler or all returned nil.

        A plain table (KumoMTA accepts one too) is built with the ``make_queue_config`` builder.
        """
        rt = self._rt
        if "get_queue_config" not in rt.handler_names:
            return None
        to_lua = rt.to_lua
        kind, result = rt.invoke_made(
            "get_queue_config",
            "vvvv",
            to_lua(domain),
            to_lua(tenant),
            to_lua(campaign),
            to_lua(routing_domain),
        )
        if result is None or (kind == "make_queue_config" and isinstance(result, QueueConfig)):
            return result
        if kind is None and isinstance(result, dict):
            try:
                built = rt.builders["make_queue_config"](result)
            except ValueError as e:
                raise PolicyError(f"get_queue_config: {e}") from None
            if isinstance(built, QueueConfig):
                return built
        raise PolicyError(
            "get_queue_config: the handler must return kumo.make_queue_config{...} or nil, "
            f"got {result!r}"
        )
