"""The ``kumo`` module seen by the policy (reference §2.1, §2.9, §2.11 CORE helpers).

Defined in Lua (``kumo.lua`` beside this module, loaded by the runtime as the chunk
``=kumoq/kumo``) on top of a few Python functions (``python_api``):

- ``kumo.on`` (from the runtime), ``kumo.reject(code, msg)`` and
  ``kumo.disconnect(code, msg[, 'ForceDisconnect'|'FollowWith421'|'If421'])``, which raise a
  Lua error whose value is a private reject table (never matched by text), turned into
  RejectError (``RejectError.from_lua``);
- KumoMTA's utility modules (``kumo.serde`` and the legacy ``kumo.json_*``/``kumo.toml_*``,
  ``kumo.string``, ``kumo.regex``, ``kumo.time``, ``kumo.memoize``, ``kumo.domain_map``,
  ``kumo.spawn_task`` ...): chunks that ``kumo.lua`` loads last, on the functions of
  kumoq.lua.kumo_extras, which ``python_api`` includes; after them ``kumo`` and its
  submodules are strict: reading a field kumoq does not have is an error naming it;
- ``kumo.log_debug/log_info/log_warn/log_error(...)``: arguments ``tostring``-ed and joined
  with spaces, to the Python logger ``kumoq.policy``;
- declarations ``start_esmtp_listener``, ``start_http_listener``, ``define_spool``,
  ``configure_local_logs``, ``configure_bounce_classifier``, ``configure_log_hook``,
  ``configure_redis_throttles`` (only inside ``init`` and ``pre_init``), collected
  by the runtime;
- ``make_queue_config``, ``make_egress_pool``, ``make_egress_source``, ``make_egress_path``,
  ``make_listener_domain``: return an opaque Lua table that carries a handle to the built
  (frozen) Python object, so an event returning it hands Python the original object. The
  handle is released when Lua garbage-collects the table (the finalizer only queues the handle
  in Lua; the next ``make_*`` call releases the queued handles, so no Python code runs inside a
  Lua finalizer);
- ``kumo.validation_failed()``: the caller's ``file:line`` goes to the declare callback;
- ``kumo.dns.configure_test_resolver`` (a declaration), ``kumo.dns.lookup_mx`` (which
  waits, see kumoq.lua.waits), and ``lookup_addr``, ``lookup_ptr``, ``lookup_txt``,
  ``reverse_ip`` and ``ptr_host`` (kumoq.lua.dns_api);
- ``kumo.http`` (``kumo_http.lua`` on kumoq.lua.http_api, whose ``request:send()`` waits);
- ``kumo.make_throttle`` (``kumo_throttle.lua`` on kumoq.lua.throttle_api).

Builders come from the runtime's injected ``builders`` mapping, else from kumoq.lua.dkim_api's
``BUILDERS`` (the ``kumo.dkim.*_signer`` makers ``kumo.lua`` defines); this module imports no
config classes. A builder's ConfigError becomes a Lua error raised at the policy's calling line.
``KumoApiRuntime`` is what ``python_api`` uses of the runtime; the runtime's ``PolicyRuntime``
has it (structurally, checked by mypy where the runtime calls ``python_api``).

L2: imports the standard library, kumoq.message, kumoq.lua.message, kumoq.lua.kumo_extras,
kumoq.lua.http_api, kumoq.lua.throttle_api, kumoq.lua.dns_api, kumoq.lua.dkim_api (whose
``dkim_sign`` it includes) and kumoq.lua.dkim_verify_api (``msg:dkim_verify`` and ARC); must
not import the runtime module (``runtime.py`` here), not even under
TYPE_CHECKING: it imports this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from kumoq.lua import (
    dkim_api,
    dkim_verify_api,
    dns_api,
    http_api,
    kumo_extras,
    shaping_api,
    throttle_api,
)
from kumoq.lua.kumo_extras import ExtrasRuntime
from kumoq.lua.message import LuaApiError
from kumoq.lua.waits import Waits
from kumoq.message import Message

__all__ = ["DECLARATIONS", "MAKERS", "Declarations", "KumoApiRuntime", "python_api"]

policy_log = logging.getLogger("kumoq.policy")

DECLARATIONS: Final = (
    "start_esmtp_listener",
    "start_http_listener",
    "define_spool",
    "configure_local_logs",
    "configure_test_resolver",
    "configure_bounce_classifier",
    "configure_log_hook",
    "configure_redis_throttles",
)
MAKERS: Final = (
    "make_queue_config",
    "make_egress_pool",
    "make_egress_source",
    "make_egress_path",
    "make_listener_domain",
)


class Declarations(Protocol):
    """Where the runtime collects what ``init`` declared."""

    def add(self, kind: str, value: object) -> None: ...


class KumoApiRuntime(ExtrasRuntime, Protocol):
    """What the ``kumo`` module's Python functions need of the policy runtime."""

    @property
    def waits(self) -> Waits: ...

    @property
    def phase(self) -> str: ...

    @property
    def builders(self) -> Mapping[str, Callable[[Any], object]]: ...

    @property
    def declarations(self) -> Declarations: ...

    @property
    def declare_callback(self) -> Callable[[str, object], None] | None: ...

    @property
    def opaque(self) -> dict[int, tuple[str, object]]: ...

    def new_opaque(self, kind: str, value: object) -> int: ...

    def message(self, h: int) -> Message: ...

    def from_lua(self, value: Any, *, config: bool = ...) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]: ...


def python_api(rt: KumoApiRuntime) -> dict[str, Callable[..., Any]]:
    """The Python functions behind the ``kumo`` module."""
    from_lua = rt.from_lua

    def log(level: int, text: str) -> None:
        policy_log.log(level, "%s", text)

    def prefixed(kind: str, fn: Callable[[Any], Any], arg: Any) -> Any:
        try:
            return fn(arg)
        except (ValueError, TypeError, LookupError) as e:
            text = str(e)
            raise LuaApiError(text if text.startswith(f"{kind}:") else f"{kind}: {text}") from e

    def build(kind: str, params: object) -> object:
        mapping = from_lua(params, config=True)
        builder = rt.builders.get(kind) or dkim_api.BUILDERS.get(kind)
        return prefixed(kind, builder, mapping) if builder is not None else mapping

    def declare(kind: str, params: object) -> None:
        if rt.phase != "init":
            raise LuaApiError(f"{kind}: may only be called from inside the init event handler")
        built = build(kind, params)
        rt.declarations.add(kind, built)
        callback = rt.declare_callback
        if callback is not None:
            prefixed(kind, lambda value: callback(kind, value), built)

    def bump_config_epoch() -> None:
        callback = rt.declare_callback
        if callback is not None:
            callback("bump_config_epoch", None)

    def validation_failed(where: str | None) -> None:
        """``kumo.validation_failed()``: handed to the declare callback with the caller's
        ``file:line`` (kumoq.declarations keeps it; ``validate`` and the start report it)."""
        callback = rt.declare_callback
        if callback is not None:
            callback("validation_failed", where)

    def make(kind: str, params: object) -> int:
        return rt.new_opaque(kind, build(kind, params))

    def release(*handles: int) -> None:
        for h in handles:
            rt.opaque.pop(h, None)

    return (
        kumo_extras.python_api(rt)
        | shaping_api.python_api(rt)
        | dkim_api.python_api(rt)
        | dkim_verify_api.python_api(rt)
        | dns_api.python_api(rt)
        | http_api.python_api(rt)
        | throttle_api.python_api(rt)
        | {
            "kumo_log": rt.guard("log", log),
            "kumo_declare": rt.guard(None, declare),
            "kumo_bump_config_epoch": rt.guard("bump_config_epoch", bump_config_epoch),
            "kumo_validation_failed": rt.guard("validation_failed", validation_failed),
            "kumo_make": rt.guard(None, make),
            "kumo_release": rt.guard("release", release),
        }
    )
