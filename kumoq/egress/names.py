"""Pure building blocks of egress: source selection and ready queue naming.

- ``WeightedRoundRobin``: the LVS weighted round robin KumoMTA uses to pick an egress source
  from a pool (reference §1.6 step 6c); one instance per scheduled queue holds the state.
- ``ready_queue_name``, ``protocol_name``: ``"<source>-><site>@<proto>"`` (§1.7).
- ``mx_list_site_name``, ``static_site_name``: site names that need no DNS (§1.7).

Pure (L0): imports only kumoq.config; no asyncio, sockets, file IO or lupa.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any, Final, final

from kumoq.config.egress import EgressPool
from kumoq.config.queue import (
    CustomLuaProtocol,
    DeliveryProtocol,
    MaildirProtocol,
    NullProtocol,
    SmtpProtocol,
)
from kumoq.errors import ConfigError

__all__ = [
    "SMTP_PROTO",
    "WeightedRoundRobin",
    "mx_list_label",
    "mx_list_site_name",
    "protocol_name",
    "ready_queue_name",
    "static_site_name",
]

SMTP_PROTO: Final = "smtp_client"
_NO_EXCLUSION: Final[frozenset[str]] = frozenset()


@final
class WeightedRoundRobin:
    """LVS weighted round robin over ``(name, weight)`` entries; weight-0 entries never win.

    The classic algorithm: advance the index cyclically; whenever it wraps to 0,
    ``current_weight -= gcd`` and, once that is ``<= 0``, reset it to ``max_weight``; the entry
    at the index is chosen when ``weight >= current_weight``. Over ``k * sum(weights)`` picks
    from a fresh instance each entry is chosen exactly ``k * weight`` times.

    ``next(exclude)`` lets the caller skip sources that are full, suspended or throttled: the
    excluded entries are treated as weight 0 for that call only, and the state advances exactly
    as the algorithm would over the remaining entries. Levels at which no eligible entry can win
    are skipped arithmetically, so a call is O(len(entries)) whatever the weights.
    """

    __slots__ = ("_cw", "_gcd", "_index", "_max", "_names", "_weights")

    def __init__(self, entries: Iterable[tuple[str, int]]) -> None:
        pairs = list(entries)
        for name, weight in pairs:
            if weight < 0:
                raise ConfigError(f"weight for {name!r} must be at least 0, got {weight!r}")
        self._names: tuple[str, ...] = tuple(n for n, _ in pairs)
        self._weights: tuple[int, ...] = tuple(w for _, w in pairs)
        positive = [w for w in self._weights if w > 0]
        self._max = max(positive, default=0)
        self._gcd = math.gcd(*positive) if positive else 0
        # The index starts on the last entry so that the first step wraps to 0 (LVS's i = -1).
        self._index = len(pairs) - 1
        self._cw = 0

    @classmethod
    def from_pool(cls, pool: EgressPool) -> WeightedRoundRobin:
        return cls((e.name, e.weight) for e in pool.entries)

    @property
    def entries(self) -> tuple[tuple[str, int], ...]:
        """The ``(name, weight)`` entries, in pool order (compare to detect a pool change)."""
        return tuple(zip(self._names, self._weights, strict=True))

    def candidates(self) -> tuple[str, ...]:
        """The names that can ever be chosen (weight > 0), in pool order, without duplicates."""
        return tuple(
            dict.fromkeys(n for n, w in zip(self._names, self._weights, strict=True) if w > 0)
        )

    def next(self, exclude: Set[str] = _NO_EXCLUSION) -> str | None:
        """The next source, skipping ``exclude``; None when no entry with weight > 0 remains."""
        names = self._names
        weights = self._weights
        if exclude:
            top = max(
                (w for n, w in zip(names, weights, strict=True) if w > 0 and n not in exclude),
                default=0,
            )
        else:
            top = self._max
        if top == 0:
            return None
        n = len(names)
        cw = self._cw
        # The rest of the current pass at the current level.
        for i in range(self._index + 1, n):
            w = weights[i]
            if w and w >= cw and names[i] not in exclude:
                self._index = i
                return names[i]
        # Wrap: lower the level, resetting to max_weight; levels above the best eligible weight
        # would be passes in which nothing is chosen, so jump straight to it.
        cw -= self._gcd
        if cw <= 0:
            cw = self._max
        cw = min(cw, top)
        self._cw = cw
        for i in range(n):
            w = weights[i]
            if w and w >= cw and names[i] not in exclude:
                self._index = i
                return names[i]
        raise AssertionError("unreachable: an eligible entry has weight >= current_weight")

    def __repr__(self) -> str:
        return f"WeightedRoundRobin({list(self.entries)!r}, cw={self._cw}, index={self._index})"


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
