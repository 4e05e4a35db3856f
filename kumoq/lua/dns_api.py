"""The Python side of ``kumo.dns.lookup_addr``, ``lookup_ptr``, ``lookup_txt``, ``reverse_ip``
and ``ptr_host`` (KumoMTA's ``kumo.dns`` module; ``lookup_mx`` is kumoq.lua.waits's).

The three lookups wait for DNS as ``lookup_mx`` does: ``kumo.lua`` yields an op
(``dns.lookup_addr``, ``dns.lookup_ptr`` or ``dns.lookup_txt``) to the event coroutine, and
``python_api`` registers the ops in ``Waits.ops``. So they are awaited in the SMTP reception
events, custom Lua delivery and spawned tasks, and are an error the policy may ``pcall`` in the
events kumoq calls synchronously (``get_queue_config``, the egress events).

They ask the resolver behind the policy's DNS (``Waits.dns``, an MxCache: the live resolver,
or the test resolver of ``kumo.dns.configure_test_resolver``), through the resolver seam of
kumoq.dns.resolver: ``resolve_ip`` for addresses, ``resolve_records`` (``RecordResolver``)
for PTR and TXT. Answers are cached per policy runtime for their TTL (failures for
``NEGATIVE_TTL``), at most ``CACHE_SIZE`` of them.

As in KumoMTA: ``lookup_addr`` returns the addresses as strings (A first; the strategy
``Ipv4AndIpv6`` unless given), an address literal (``[1.2.3.4]``, ``[IPv6:…]`` or a bare
address) is its own answer, and a name without addresses is an error. ``lookup_ptr`` returns
host names with their trailing dot, possibly none; ``lookup_txt`` each TXT record's strings
joined. kumoq has no ``kumo.dns.define_resolver``: a resolver name is an error.

L2: imports kumoq.dns.resolver (the seam), kumoq.lua.message (LuaApiError) and kumoq.lua.waits
(the Waits type); never the runtime.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol, cast

from kumoq.clock import Clock
from kumoq.dns.resolver import DnsStatus, IpLookupStrategy, RecordResolver, Resolver
from kumoq.lua.message import LuaApiError
from kumoq.lua.waits import Waits

__all__ = ["CACHE_SIZE", "NEGATIVE_TTL", "DnsApiRuntime", "ptr_host", "python_api", "reverse_ip"]

CACHE_SIZE: Final = 4096
"""Answers kept per policy runtime; the oldest goes first."""
NEGATIVE_TTL: Final = 60.0
"""Seconds a failed lookup is remembered."""

_STRATEGIES: Final = {s.value.lower(): s for s in IpLookupStrategy}
_RDTYPES: Final = {"lookup_ptr": "PTR", "lookup_txt": "TXT"}


class DnsApiRuntime(Protocol):
    """What the DNS functions need of the policy runtime."""

    @property
    def waits(self) -> Waits: ...

    @property
    def clock(self) -> Clock: ...

    def from_lua(self, value: Any, *, config: bool = ...) -> Any: ...

    def to_lua(self, value: Any) -> Any: ...

    def guard(self, name: str | None, fn: Callable[..., Any]) -> Callable[..., Any]: ...


def _ip(text: object, fname: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise LuaApiError(f"kumo.dns.{fname}: {text!r} is not an IP address") from None


def reverse_ip(text: str) -> str:
    """``1.0.0.127`` for ``127.0.0.1``; an IPv6 address nibble by nibble (KumoMTA's form)."""
    return _reverse(_ip(text, "reverse_ip"))


def ptr_host(text: str) -> str:
    """The name to ask PTR records of: ``1.0.0.127.in-addr.arpa`` for ``127.0.0.1``."""
    return _ptr_name(_ip(text, "ptr_host"))


def _reverse(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def _ptr_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"{_reverse(ip)}.{'in-addr' if ip.version == 4 else 'ip6'}.arpa"


def _literal(name: str) -> str | None:
    """The address a literal names (``[1.2.3.4]``, ``[IPv6:::1]``, ``1.2.3.4``), else None."""
    text = name
    if name.startswith("["):
        if not name.endswith("]"):
            raise LuaApiError(f"kumo.dns.lookup_addr: {name!r} is a literal with no ']'")
        text = name[1:-1]
        if text.lower().startswith("ipv6:"):
            text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if name.startswith("["):
            raise LuaApiError(f"kumo.dns.lookup_addr: {name!r} is no address literal") from None
        return None


def python_api(rt: DnsApiRuntime) -> dict[str, Callable[..., Any]]:
    """``reverse_ip`` and ``ptr_host``; registers the lookup ops in ``rt.waits.ops``."""
    cache: dict[tuple[str, str, str], tuple[float, bool, Any]] = {}

    def resolver(op: str) -> Resolver:
        found = getattr(rt.waits.dns, "resolver", None)  # an MxCache's (kumo.dns's) resolver
        if found is None:
            raise LuaApiError(f"kumo.dns.{op}: DNS is not available before init has completed")
        return cast("Resolver", found)

    def request(op: str, arg: Any) -> tuple[str, str]:
        spec = rt.from_lua(arg)
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise LuaApiError(f"kumo.dns.{op}: expected a name")
        if spec.get("resolver") is not None:
            raise LuaApiError(
                f"kumo.dns.{op}: no resolver named {spec['resolver']!r} "
                "(kumoq has no kumo.dns.define_resolver)"
            )
        strategy = spec.get("strategy")
        if strategy is None:
            return spec["name"], IpLookupStrategy.IPV4_AND_IPV6.value
        found = _STRATEGIES.get(str(strategy).lower())
        if op != "lookup_addr" or found is None:
            raise LuaApiError(f"kumo.dns.{op}: unknown ip lookup strategy {strategy!r}")
        return spec["name"], found.value

    async def lookup(op: str, name: str, strategy: str) -> tuple[bool, Any, float]:
        """``(ok, answer or error text, ttl)``."""
        if op == "lookup_addr":
            literal = _literal(name)
            if literal is not None:
                return True, [literal], 0.0
            ips = await resolver(op).resolve_ip(name, _STRATEGIES[strategy.lower()])
            if ips.status is DnsStatus.FOUND and ips.addresses:
                return True, list(ips.addresses), ips.ttl
            return False, f"kumo.dns.lookup_addr: {ips.detail or 'no addresses for ' + name}", 0
        dns = resolver(op)
        if not isinstance(dns, RecordResolver):
            return False, f"kumo.dns.{op}: the resolver in use cannot answer it", 0.0
        rdtype = _RDTYPES[op]
        query = _ptr_name(_ip(name, op)) if op == "lookup_ptr" else name
        answer = await dns.resolve_records(query, rdtype)
        if answer.status is DnsStatus.FOUND:
            return True, list(answer.records), answer.ttl
        if answer.status is DnsStatus.NO_DATA or (
            op == "lookup_ptr" and answer.status is DnsStatus.NXDOMAIN
        ):
            return True, [], NEGATIVE_TTL  # KumoMTA: "the table may be empty"
        return False, f"kumo.dns.{op}: {answer.detail or answer.status.value}", 0.0

    def make_op(op: str) -> Callable[[Any], Awaitable[tuple[bool, Any]]]:
        async def run(arg: Any) -> tuple[bool, Any]:
            try:
                name, strategy = request(op, arg)
                key = (op, name.lower(), strategy)
                now = rt.clock.now()
                hit = cache.get(key)
                if hit is not None and hit[0] > now:
                    ok, value = hit[1], hit[2]
                else:
                    ok, value, ttl = await lookup(op, name, strategy)
                    if len(cache) >= CACHE_SIZE:
                        del cache[next(iter(cache))]
                    cache[key] = (now + (ttl if ok else NEGATIVE_TTL), ok, value)
            except LuaApiError as exc:
                return False, str(exc)
            return (True, rt.to_lua(value)) if ok else (False, value)

        return run

    for op in ("lookup_addr", "lookup_ptr", "lookup_txt"):
        rt.waits.ops[f"dns.{op}"] = make_op(op)
    return {
        "kumo_dns_reverse_ip": rt.guard("kumo.dns.reverse_ip", reverse_ip),
        "kumo_dns_ptr_host": rt.guard("kumo.dns.ptr_host", ptr_host),
    }
