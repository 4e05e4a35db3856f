"""Custom Lua delivery: ``protocol = {custom_lua = {constructor = 'make.x'}}`` (reference §1.9).

The constructor event ``make.x(domain, tenant, campaign)`` returns a connection table; kumoq keeps
one connection per ready queue ``<source>-><routing_domain>@lua:<constructor>`` and calls
``conn:send(msg)`` for each message:

- a string result is a ``Delivery`` (code 200, content = the string);
- ``kumo.reject(4xx, text)`` is a ``TransientFailure`` (a 421 also closes the connection);
- ``kumo.reject(5xx, text)`` is a ``Bounce``;
- any other Lua error closes the connection and is a ``TransientFailure``
  ``400 KumoMTA internal: error in deliver_message: <error>``.

Records carry ``delivery_protocol="Lua"`` and ``peer_address={name="Lua via <ctor>",
addr="0.0.0.0"}``. ``batch_size > 1`` (``send_batch``) is not supported yet: messages are sent
one at a time (docs/deviations.md).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from kumoq.config.queue import CustomLuaProtocol, QueueConfig
from kumoq.errors import PolicyError, RejectError
from kumoq.logs.records import RecordType, Response
from kumoq.message import Message, new_session_id, parse_queue_name
from kumoq.queue.manager import Attempt

__all__ = ["LuaConnections", "LuaDispatch"]

log = logging.getLogger("kumoq.egress")


class LuaConnections(Protocol):
    """What custom Lua delivery needs of the policy runtime (kumoq.lua.runtime has it)."""

    def construct(self, name: str, *args: str | None) -> int: ...

    def conn_send(self, conn: int, msg: Message) -> Any: ...

    def conn_close(self, conn: int) -> None: ...


class LuaDispatch:
    """``Deliverer`` for ``protocol = {custom_lua = ...}``."""

    def __init__(self, runtime: LuaConnections) -> None:
        self._runtime = runtime
        self._conns: dict[str, tuple[int, str]] = {}  # ready queue -> (handle, session id)

    async def deliver(self, msg: Message, config: QueueConfig) -> Attempt:
        protocol = config.protocol
        assert isinstance(protocol, CustomLuaProtocol)
        ctor = protocol.constructor
        parts = parse_queue_name(msg.queue_name())
        site = f"unspecified->{parts.routing_domain or parts.domain}@lua:{ctor}"
        peer = {"name": f"Lua via {ctor}", "addr": "0.0.0.0"}

        def attempt(disposition: RecordType, response: Response, session_id: str) -> Attempt:
            return Attempt(
                disposition,
                response,
                site=site,
                delivery_protocol="Lua",
                peer_address=peer,
                session_id=session_id,
                extra={"egress_pool": "unspecified", "egress_source": "unspecified"},
            )

        conn = self._conns.get(site)
        session_id = conn[1] if conn is not None else new_session_id()
        try:
            if conn is None:
                handle = self._runtime.construct(ctor, parts.domain, parts.tenant, parts.campaign)
                conn = self._conns[site] = (handle, session_id)
            result = self._runtime.conn_send(conn[0], msg)
        except RejectError as exc:
            enhanced, _, text = exc.reply_text.partition(" ")
            code_parts = enhanced.split(".")
            if len(code_parts) == 3 and all(p.isdigit() for p in code_parts):
                response = Response(exc.code, tuple(map(int, code_parts)), text, None)  # type: ignore[arg-type]
            else:
                response = Response(exc.code, None, exc.reply_text, None)
            if exc.code == 421:
                self._close(site)
            kind = RecordType.TransientFailure if 400 <= exc.code < 500 else RecordType.Bounce
            return attempt(kind, response, session_id)
        except PolicyError as exc:
            self._close(site)
            return attempt(
                RecordType.TransientFailure,
                Response(400, None, f"KumoMTA internal: error in deliver_message: {exc}", None),
                session_id,
            )
        return attempt(RecordType.Delivery, Response(200, None, str(result), None), session_id)

    def _close(self, site: str) -> None:
        conn = self._conns.pop(site, None)
        if conn is not None:
            try:
                self._runtime.conn_close(conn[0])
            except PolicyError as exc:
                log.warning("custom_lua connection %s: close failed: %s", site, exc)

    async def close(self) -> None:
        for site in list(self._conns):
            self._close(site)
