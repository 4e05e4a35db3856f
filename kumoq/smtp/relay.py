"""Who may relay: KumoMTA's ``check_relaying``, run for one connection at RCPT TO and at DATA.

``RelayCheck`` belongs to one connection. ``disposition(sender, recipient)`` asks the handler
for the listener domain (``get_listener_domain``, the ``ListenerDomains`` seam of
``smtp/handler.py``) of the sender's domain and of the recipient's domain, and decides with
``kumoq.config.listener_domain.relay_disposition``: relaying is allowed when the peer is
trusted (in ``relay_hosts``, or authenticated: a kumoq extension), or in the sender domain's
``relay_from``, or when the recipient domain says ``relay_to``.

As in KumoMTA, each connection remembers the answers per domain name (a failed lookup is not
remembered), and at most 17 of them: past 16, the oldest go first, so that a client trying
many random domains cannot make the cache grow.

``SessionMeta`` is the ``ConnectionMeta`` the server hands to the handler: the meta entries,
plus the connection's ``relay`` check as an attribute, so that the handler can decide again at
DATA for each message (KumoMTA's first-recipient rule) without the check being meta: it is
never copied into a message nor shown to the policy.

Imports: kumoq.config.listener_domain, kumoq.message and kumoq.smtp.handler only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from kumoq.config.listener_domain import (
    ListenerDomain,
    RelayDisposition,
    relay_disposition,
)
from kumoq.message import EnvelopeAddress
from kumoq.smtp.handler import ConnectionMeta, ListenerDomains

__all__ = ["DOMAINS_PER_CONNECTION", "RelayCheck", "SessionMeta"]

#: Listener domains remembered per connection (KumoMTA evicts while it holds more than 16).
DOMAINS_PER_CONNECTION: Final = 17


class RelayCheck:
    """One connection's relay decisions. ``trusted`` is asked at each decision (a client may
    authenticate on the way); ``domains`` is None when the handler knows no listener domains
    (then only ``trusted`` counts)."""

    __slots__ = ("_cache", "_conn", "_domains", "_trusted")

    def __init__(
        self,
        conn: ConnectionMeta,
        trusted: Callable[[], bool],
        domains: ListenerDomains | None,
    ) -> None:
        self._conn = conn
        self._trusted = trusted
        self._domains = domains
        self._cache: dict[str, ListenerDomain | None] = {}

    async def disposition(
        self, sender: EnvelopeAddress, recipient: EnvelopeAddress
    ) -> RelayDisposition:
        """Whether mail from ``sender`` to ``recipient`` may be relayed, and how reports to the
        recipient's domain are handled. Raises what ``get_listener_domain`` raises."""
        trusted = self._trusted()
        if self._domains is None:
            return relay_disposition(trusted, "", None, None)
        from_domain = await self._domain(sender.domain)
        to_domain = await self._domain(recipient.domain)
        peer = str(self._conn.get("received_from", ""))
        return relay_disposition(trusted, peer, from_domain, to_domain)

    async def _domain(self, name: str) -> ListenerDomain | None:
        """The listener domain of ``name``, asked once per connection. O(1) when known."""
        cache = self._cache
        if name in cache:
            return cache[name]
        assert self._domains is not None
        value = await self._domains.get_listener_domain(self._conn, name)
        while len(cache) >= DOMAINS_PER_CONNECTION:
            del cache[next(iter(cache))]
        cache[name] = value
        return value


class SessionMeta(dict[str, Any]):
    """A live connection's ``ConnectionMeta``: its entries are the meta; ``relay`` is the
    connection's ``RelayCheck`` (set by the server before the first handler call)."""

    __slots__ = ("relay",)

    relay: RelayCheck
