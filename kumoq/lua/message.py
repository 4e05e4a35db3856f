"""The Lua ``Message``, ``EnvelopeAddress`` and ``conn_meta`` objects (reference §2.10).

The objects are plain Lua tables with a metatable defined in ``message.lua`` beside this module
(loaded by the runtime as the chunk ``=kumoq/message``); a message or a connection's meta is
found through an integer handle kept in a private weak table, and each method calls one Python
function from ``python_api`` with that handle. Creating the objects for an event costs no
Python call: ``wrap`` (used by the runtime's ``invoke``) builds them in Lua. Addresses are
built in Lua from ``(local part, domain)`` strings.

Strings from Lua are checked for valid UTF-8 before they are passed to Python (lupa would raise
while converting them); only ``set_data`` accepts arbitrary bytes, which it transfers in a
Latin-1 form when they are not UTF-8.

The scheduling helpers (``parse_scheduling``, ``adjust_for_schedule``, ``format_due``) live in
kumoq.scheduler.scheduling and are re-exported here.

``MessageApiRuntime`` is what ``python_api`` uses of the runtime; the runtime's ``PolicyRuntime``
has it (structurally, checked by mypy where the runtime calls ``python_api``).

The content methods (``from_header``, ``check_fix_conformance``, ``append_text_plain``...) are
kumoq.lua.message_content's, and ``parse_mime``'s objects kumoq.lua.message_mime's; their
functions are merged into ``python_api``'s table. ``message.lua`` loads ``mime.lua`` (the
chunk ``=kumoq/mime``, handed over by ``mime_chunk``) for the Lua side of both.

L2: imports kumoq.headers, kumoq.message, kumoq.clock, kumoq.scheduler.scheduling and the
sibling modules chunks, message_content and message_mime; must not import the runtime module
(``runtime.py`` here), not even under TYPE_CHECKING: it imports this one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from kumoq import headers
from kumoq.clock import Clock
from kumoq.lua import chunks, message_content, message_mime
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.scheduler.scheduling import (
    adjust_for_schedule,
    format_due,
    parse_rfc3339,
    parse_scheduling,
)

__all__ = [
    "ConnMeta",
    "LuaApiError",
    "MessageApiRuntime",
    "adjust_for_schedule",
    "format_due",
    "parse_scheduling",
    "python_api",
]


class LuaApiError(ValueError):
    """A policy called a kumo function or an object method wrongly; becomes a Lua error."""


class ConnMeta(dict[str, Any]):
    """Marks a dict passed to ``PolicyEvents.call`` as connection meta (a ``conn_meta`` object
    with ``get_meta``/``set_meta``) rather than as a plain data table."""


class MessageApiRuntime(Protocol):
    """What the Lua objects' Python functions need of the policy runtime."""

    @property
    def clock(self) -> Clock: ...

    def message(self, h: int) -> Message: ...

    def bind_message(self, msg: Message) -> int: ...

    def unbind(self, *handles: int) -> None: ...

    def conn(self, h: int) -> dict[str, Any]: ...

    def from_lua(self, value: Any) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]: ...


def python_api(rt: MessageApiRuntime) -> dict[str, Callable[..., Any]]:
    """The Python functions behind the Lua objects, each taking a handle first."""
    message = rt.message
    to_lua = rt.to_lua
    from_lua = rt.from_lua

    def key_of(key: object) -> str:
        if not isinstance(key, str):
            raise LuaApiError(f"meta key must be a string, got {key!r}")
        return key

    def text_of(what: str, value: object) -> str:
        if not isinstance(value, str):
            raise LuaApiError(f"{what} must be a string, got {value!r}")
        return value

    def data_of(h: int) -> bytes:
        data = message(h).data
        if data is None:
            raise LuaApiError("the message data is not loaded")
        return data

    def address_of(value: object) -> EnvelopeAddress:
        return EnvelopeAddress.parse(text_of("address", value))

    def names_of(value: object) -> list[str] | None:
        names = from_lua(value) if value is not None else None
        if names is None or names == {}:
            return None
        if isinstance(names, str):
            return [names]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise LuaApiError(f"expected a list of header names, got {names!r}")
        return names

    def id_(h: int) -> str:
        return message(h).id

    def get_meta(h: int, key: object) -> Any:
        return to_lua(message(h).meta.get(key_of(key)))

    def set_meta(h: int, key: object, value: object) -> None:
        message(h).meta[key_of(key)] = from_lua(value)

    def get_data(h: int) -> bytes:
        return data_of(h)

    def set_data(h: int, text: str, latin1: bool) -> None:
        message(h).data = text.encode("latin-1" if latin1 else "utf-8")

    def sender(h: int) -> tuple[str, str]:
        a = message(h).sender
        return to_lua(a.local_part), to_lua(a.domain)

    def recipients(h: int) -> tuple[str, ...]:
        out: list[str] = []
        for a in message(h).recipients:
            out += (to_lua(a.local_part), to_lua(a.domain))
        return tuple(out)

    def set_sender(h: int, value: object) -> None:
        message(h).sender = address_of(value)

    def set_recipient(h: int, *values: object) -> None:
        if not values:
            raise LuaApiError("expected at least one recipient")
        message(h).recipients = [address_of(v) for v in values]

    def queue_name(h: int) -> str:
        return message(h).queue_name()

    def num_attempts(h: int) -> int:
        return message(h).num_attempts

    def increment_num_attempts(h: int) -> None:
        message(h).num_attempts += 1

    def add_header(prepend: bool) -> Callable[..., None]:
        op = headers.prepend_header if prepend else headers.append_header

        def add(h: int, name: object, value: object, encode: object) -> None:
            data = data_of(h)
            text = text_of("header value", value)
            message(h).data = op(data, text_of("header name", name), text, encode=bool(encode))

        return add

    def get_first_named_header_value(h: int, name: object) -> Any:
        return to_lua(headers.first_named(data_of(h), text_of("header name", name)))

    def get_all_named_header_values(h: int, name: object) -> tuple[Any, ...]:
        values = headers.all_named(data_of(h), text_of("header name", name))
        return tuple(to_lua(v) for v in values)

    def get_all_headers(h: int, _unused: object = None) -> tuple[Any, ...]:
        out: list[Any] = []
        for name, value in headers.all_headers(data_of(h)):
            out += (name, to_lua(value))
        return tuple(out)

    def remove_all_named_headers(h: int, name: object) -> None:
        message(h).data = headers.remove_all_named(data_of(h), text_of("header name", name))

    def import_x_headers(h: int, names: object) -> None:
        msg = message(h)
        for key, value in headers.x_header_values(data_of(h), names_of(names)):
            msg.meta[key] = _clean(value)

    def remove_x_headers(h: int, names: object) -> None:
        message(h).data = headers.remove_x_headers(data_of(h), names_of(names))

    def apply_schedule(h: int, sched: dict[str, Any] | None) -> Any:
        msg = message(h)
        msg.schedule = sched
        if sched is None:
            return None
        base = msg.due if msg.due is not None else rt.clock.now()
        adjusted = adjust_for_schedule(sched, base)
        if msg.due is not None or adjusted > base:
            msg.due = adjusted
        return to_lua(sched)

    def set_scheduling(h: int, params: object) -> Any:
        if params is None:
            return apply_schedule(h, None)
        mapping = from_lua(params)
        if not isinstance(mapping, dict):
            raise LuaApiError(f"expected a table or nil, got {mapping!r}")
        return apply_schedule(h, parse_scheduling(mapping))

    def import_scheduling_header(h: int, name: object, remove: object) -> Any:
        header = text_of("header name", name)
        value = headers.first_named(data_of(h), header)
        if value is None:
            return None
        try:
            mapping = json.loads(value)
            if not isinstance(mapping, dict):
                raise LuaApiError("expected a JSON object")
            sched = parse_scheduling(mapping)
        except ValueError as e:
            msg = f"{value} from header {header} is not a valid Scheduling: {e}"
            raise LuaApiError(msg) from None
        result = apply_schedule(h, sched)
        if remove:
            message(h).data = headers.remove_all_named(data_of(h), header)
        return result

    def set_due(h: int, value: object) -> Any:
        msg = message(h)
        due = None if value is None else parse_rfc3339("set_due", value).timestamp()
        if msg.schedule is not None:
            due = adjust_for_schedule(msg.schedule, due if due is not None else rt.clock.now())
        msg.due = due
        return None if due is None else format_due(due)

    def make_message(sender: object, recipient: object, text: str, latin1: bool) -> int:
        """``kumo.make_message``: a new message held by its handle until Lua releases it."""
        msg = Message(
            id=new_spool_id(rt.clock.now()),
            sender=address_of(sender),
            recipients=[address_of(recipient)],
            data=text.encode("latin-1" if latin1 else "utf-8"),
        )
        return rt.bind_message(msg)

    def conn_get_meta(h: int, key: object) -> Any:
        return to_lua(rt.conn(h).get(key_of(key)))

    def conn_set_meta(h: int, key: object, value: object) -> None:
        rt.conn(h)[key_of(key)] = from_lua(value)

    functions: dict[str, Callable[..., Any]] = {
        "id": id_,
        "get_meta": get_meta,
        "set_meta": set_meta,
        "get_data": get_data,
        "set_data": set_data,
        "sender": sender,
        "recipients": recipients,
        "set_sender": set_sender,
        "set_recipient": set_recipient,
        "queue_name": queue_name,
        "num_attempts": num_attempts,
        "increment_num_attempts": increment_num_attempts,
        "append_header": add_header(prepend=False),
        "prepend_header": add_header(prepend=True),
        "get_first_named_header_value": get_first_named_header_value,
        "get_all_named_header_values": get_all_named_header_values,
        "get_all_headers": get_all_headers,
        "remove_all_named_headers": remove_all_named_headers,
        "import_x_headers": import_x_headers,
        "remove_x_headers": remove_x_headers,
        "set_scheduling": set_scheduling,
        "import_scheduling_header": import_scheduling_header,
        "set_due": set_due,
        "make_message": make_message,
        "release_messages": rt.unbind,
        "conn_get_meta": conn_get_meta,
        "conn_set_meta": conn_set_meta,
        **message_content.python_api(rt),
    }
    guarded = {name: rt.guard(name.removeprefix("conn_"), fn) for name, fn in functions.items()}
    # The MIME objects' functions: mime.lua names the method in their errors.
    mime: dict[str, Callable[..., Any]] = {
        **message_mime.python_api(rt),
        "mime_accessors": lambda: tuple(message_mime.ACCESSORS),
        "mime_chunk": lambda: (chunks.MIME.source, chunks.MIME.chunkname),
    }
    return guarded | {name: rt.guard(None, fn) for name, fn in mime.items()}


def _clean(value: str) -> str:
    """A decoded header value fit for meta (JSON): undecodable bytes become U+FFFD."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
