"""Egress names: ready queues, protocols and the site names that need no DNS.

- ``ready_queue_name``, ``protocol_name``: ``"<source>-><site>@<proto>"`` (§1.7).
- ``mx_list_site_name``, ``static_site_name``: site names that need no DNS (§1.7).
- ``parse_mx_list_entry``: one ``mx_list`` entry as ``(name, address or None, port or None)``.

Pure (L0): imports only kumoq.config; no asyncio, sockets, file IO or lupa.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, Final

from kumoq.config.queue import (
    CustomLuaProtocol,
    DeliveryProtocol,
    MaildirProtocol,
    NullProtocol,
    SmtpProtocol,
)

__all__ = [
    "SMTP_PROTO",
    "mx_list_label",
    "mx_list_site_name",
    "protocol_name",
    "ready_queue_name",
    "static_site_name",
]

SMTP_PROTO: Final = "smtp_client"


def ready_queue_name(source: str, site_name: str, proto: str) -> str:
    """``"<source>-><site_name>@<proto>"``, e.g. ``unspecified->mx.example.com@smtp_client``."""
    return f"{source}->{site_name}@{proto}"


def protocol_name(protocol: DeliveryProtocol) -> str:
    """The ``@<proto>`` suffix: ``smtp_client``, ``lua:<constructor>``, ``maildir:<path>``."""
    if isinstance(protocol, SmtpProtocol):
        return SMTP_PROTO
    if isinstance(protocol, CustomLuaProtocol):
        return f"lua:{protocol.constructor}"
    if isinstance(protocol, MaildirProtocol):
        return f"maildir:{protocol.maildir_path}"
    if isinstance(protocol, NullProtocol):
        return "null"
    raise TypeError(f"unknown delivery protocol {protocol!r}")


def mx_list_label(entry: str | Mapping[str, Any]) -> str:
    """One ``mx_list`` entry's label in the site name.

    As in KumoMTA (``MxListEntry::Name(a) => a``, ``Resolved(r) => r.addr``): a string entry
    (``"mx.example.com"``, ``"[10.0.0.1]"``, ``"mx.example.com:2525"``) is its label verbatim;
    a ``{name=, addr=}`` entry is labelled by its **addr** (the name is only the TLS/EHLO
    identity), normalised like Rust's ``IpAddr`` display when it parses as an IP.
    """
    if isinstance(entry, str):
        return entry
    addr = str(entry["addr"])
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return addr


def mx_list_site_name(entries: Sequence[str | Mapping[str, Any]]) -> str:
    """``"mx_list:" + ",".join(label(entry))`` (§1.7)."""
    return "mx_list:" + ",".join(mx_list_label(e) for e in entries)


def static_site_name(protocol: DeliveryProtocol, routing_domain: str) -> str | None:
    """The site name when it needs no DNS; None for SMTP without ``mx_list`` (MX lookup).

    SMTP with ``mx_list`` gives ``mx_list_site_name``; Lua and other protocols give the
    routing domain.
    """
    if isinstance(protocol, SmtpProtocol):
        if protocol.mx_list is None:
            return None
        return mx_list_site_name(protocol.mx_list)
    return routing_domain


def parse_mx_list_entry(entry: str | Mapping[str, Any]) -> tuple[str, str | None, int | None]:
    """One ``mx_list`` entry as ``(name, address, port)``, address and port None when unset.

    ``"mx.example.com"``, ``"mx.example.com:2525"``, ``"[10.0.0.1]"``, ``"[10.0.0.1]:2525"``
    and ``{name=, addr=}`` (``addr`` may carry ``:port``; a bracketed IPv6 literal keeps its
    colons). A name without an address is resolved when the connection is planned.
    """
    if isinstance(entry, Mapping):
        addr, _, port = str(entry["addr"]).rpartition(":")
        if not addr or "]" in port:
            addr, port = str(entry["addr"]), ""
        return str(entry.get("name") or addr), addr.strip("[]"), int(port) if port else None
    text = str(entry)
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port or not port.isdigit():
        host, port = text, ""
    if host.startswith("[") and host.endswith("]"):
        return host, host[1:-1], int(port) if port else None
    return host, None, int(port) if port else None
