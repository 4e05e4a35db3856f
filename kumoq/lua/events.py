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

The events kumoq fires are named in ``FIRED_EVENTS``; ``NOT_FIRED_YET`` names KumoMTA's other
events. ``unfired_handlers`` tells, at load, which of a policy's handlers kumoq never calls.

L2: imports kumoq.lua.runtime, kumoq.lua.message, kumoq.message, kumoq.config (queue,
listener_domain), errors.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, final

from kumoq.config.listener_domain import ListenerDomain
from kumoq.config.queue import QueueConfig
from kumoq.errors import PolicyError, RejectError
from kumoq.lua.budget import LuaBudgetError
from kumoq.lua.message import ConnMeta
from kumoq.lua.runtime import PolicyRuntime
from kumoq.message import EnvelopeAddress, Message

__all__ = ["FIRED_EVENTS", "NOT_FIRED_YET", "PolicyEvents", "unfired_handlers"]

#: The events kumoq fires (docs/reference/events/index.md). A custom_lua constructor, named by
#: its queue config, is fired too.
FIRED_EVENTS: Final = frozenset(
    {
        "pre_init",
        "init",
        "validate_config",
        "smtp_server_ehlo",
        "smtp_server_auth_plain",
        "smtp_server_mail_from",
        "smtp_server_rcpt_to",
        "get_listener_domain",
        "smtp_server_data",
        "smtp_server_message_received",
        "http_message_generated",
        "http_server_validate_auth_basic",
        "get_queue_config",
        "get_egress_pool",
        "get_egress_source",
        "get_egress_path_config",
        "requeue_message",
        "rebind_message",
        "should_enqueue_log_record",
    }
)

_KUMOD: Final = "KumoMTA fires it, kumoq does not yet"
#: KumoMTA's other events (its docs/reference/events/ and kumod's sources), and why kumoq
#: never calls a handler for them.
NOT_FIRED_YET: Final = {
    "smtp_server_connection_accepted": _KUMOD,
    "smtp_server_split_transaction": _KUMOD,
    "smtp_server_rewrite_response": _KUMOD,
    "smtp_server_get_dynamic_parameters": _KUMOD,
    "smtp_server_message_deferred_inject": _KUMOD,
    "smtp_client_rewrite_delivery_status": _KUMOD,
    "spool_message_enumerated": _KUMOD,
    "throttle_insert_ready_queue": _KUMOD,
    "shutdown_logging": _KUMOD,
    "get_acl_definition": _KUMOD,
    "http_server_validate_auth_bearer": _KUMOD,
    "xfer_message_received": _KUMOD,
    "main": "KumoMTA fires it for `kumod --script`, which kumoq does not have",
    "tsa_init": "it belongs to KumoMTA's tsa-daemon, which kumoq does not include",
    "tsa_load_shaping_data": "it belongs to KumoMTA's tsa-daemon, which kumoq does not include",
    "proxy_init": "it belongs to KumoMTA's kumo-proxy, which kumoq does not include",
    "proxy_server_auth_rfc1929": "it belongs to KumoMTA's kumo-proxy, which kumoq does not include",
}


def unfired_handlers(
    handlers: Mapping[str, str], constructors: Collection[str] = ()
) -> list[tuple[str, str]]:
    """``(file:line, text)`` for each handler in ``handlers`` (event name -> where its
    ``kumo.on`` is) that kumoq never calls, in file order.

    A name in ``constructors`` (custom_lua constructors the caller knows of), or with a dot
    (KumoMTA's convention for them, ``make.webhook``), is taken for a constructor and not
    reported: a queue may name it at any time."""
    found = []
    known = sorted(FIRED_EVENTS | NOT_FIRED_YET.keys())
    for name, site in handlers.items():
        if name in FIRED_EVENTS or name in constructors or "." in name:
            continue
        why = NOT_FIRED_YET.get(name)
        if why is not None:
            text = f"kumo.on('{name}'): not yet supported: {why}; the handler is never called"
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            text = (
                f"kumo.on('{name}'): unknown event{hint}: neither KumoMTA nor kumoq fires it; "
                "the handler is called only if a queue names it as its custom_lua constructor"
            )
        found.append((site, text))
    return sorted(found, key=lambda item: _site_key(item[0]))


def _site_key(site: str) -> tuple[str, int]:
    file, _, line = site.rpartition(":")
    return (file, int(line)) if line.isdigit() else (site, 0)


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
        await self._message_event("smtp_server_message_received", msg, conn_meta)

    async def smtp_server_data(self, msg: Message, conn_meta: dict[str, Any]) -> None:
        """Run the handler on the transaction's one message (every recipient); its changes
        land in ``msg``."""
        await self._message_event("smtp_server_data", msg, conn_meta)

    async def _message_event(self, name: str, msg: Message, conn_meta: dict[str, Any]) -> None:
        rt = self._rt
        if name not in rt.handler_names:
            return
        hm = rt.bind_message(msg)
        hc = rt.bind_conn(conn_meta)
        try:
            await rt.invoke_async(name, "mc", hm, hc)
        finally:
            rt.unbind(hm, hc)

    async def get_listener_domain(
        self, domain: str, listener: str, conn_meta: dict[str, Any]
    ) -> ListenerDomain | None:
        """The handler's ``kumo.make_listener_domain{...}``, or None (no handler, or nil).

        As in KumoMTA, ``kumo.reject`` is no reply here: it fails the event like any other
        error (PolicyError)."""
        rt = self._rt
        if "get_listener_domain" not in rt.handler_names:
            return None
        hc = rt.bind_conn(conn_meta)
        try:
            result = await rt.invoke_async(
                "get_listener_domain", "vvc", rt.to_lua(domain), rt.to_lua(listener), hc
            )
        except LuaBudgetError:
            raise  # a 451, as over-budget calls in the other SMTP events
        except RejectError as exc:
            raise PolicyError(
                f"get_listener_domain: kumo.reject({exc.code}, {exc.reply_text!r}) is an error "
                "in this event, not a reply",
                location=exc.location,
            ) from None
        finally:
            rt.unbind(hc)
        if result is None or isinstance(result, ListenerDomain):
            return result
        raise PolicyError(
            "get_listener_domain: the handler must return kumo.make_listener_domain{...} or "
            f"nil, got {result!r}"
        )

    def requeue_message(
        self,
        msg: Message,
        response: str,
        context: Sequence[str],
        increment_attempts: bool,
        delay: float | None,
    ) -> None:
        """``requeue_message(msg, smtp_response, insert_context, increment_attempts, delay)``;
        ``delay`` in seconds or nil. Changes land in ``msg``. RejectError for ``kumo.reject``
        (a bounce), PolicyError for any other failure (a Lua budget overrun included)."""
        rt = self._rt
        if "requeue_message" not in rt.handler_names:
            return
        hm = rt.bind_message(msg)
        to_lua = rt.to_lua
        try:
            rt.invoke(
                "requeue_message", "mvvvv",
                hm, to_lua(response), to_lua(list(context)), increment_attempts, delay,
            )  # fmt: skip
        except LuaBudgetError as exc:  # a RejectError, but no kumo.reject: not a bounce
            raise PolicyError(str(exc), location=exc.location) from None
        finally:
            rt.unbind(hm)

    async def should_enqueue_log_record(self, msg: Message, hook_name: str) -> bool:
        """``should_enqueue_log_record(msg, hook_name)`` (kumoq.logs.hooks): true queues the
        hook's message. Handlers run in order until one returns a boolean; none (or no
        handler) is false. Awaited: a handler may wait (``kumo.dns.lookup_mx``, HTTP)."""
        rt = self._rt
        if "should_enqueue_log_record" not in rt.handler_names:
            return False
        hm = rt.bind_message(msg)
        try:
            result = await rt.invoke_async(
                "should_enqueue_log_record", "mv", hm, rt.to_lua(hook_name)
            )
        finally:
            rt.unbind(hm)
        if result is None or isinstance(result, bool):
            return bool(result)
        raise PolicyError(
            f"should_enqueue_log_record: the handler must return a boolean or nil, got {result!r}"
        )

    def validate_config(self) -> None:
        """Run every ``validate_config`` handler (they call ``kumo.validation_failed()``)."""
        if "validate_config" in self._rt.handler_names:
            self._rt.invoke("validate_config", "")

    # -- queues ------------------------------------------------------------------------------

    def get_queue_config(
        self,
        domain: str,
        tenant: str | None,
        campaign: str | None,
        routing_domain: str | None,
    ) -> QueueConfig | None:
        """The first handler result (a handler that returns nothing passes to the next);
        None when there is no handler, none returned anything, or the result was nil.

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
