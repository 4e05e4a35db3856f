"""The seam between the ESMTP listener and the daemon: ``SmtpHandler`` and ``ConnectionMeta``.

This module owns the contract only: what the listener asks of whoever decides (the daemon's
``reception`` implements it) and the connection metadata both sides share. No behaviour lives
here. A handler that also knows listener domains (``ListenerDomains``) takes part in the relay
decision (``smtp/relay.py``); one that does not leaves it to ``relay_hosts``.

Imports: kumoq.message, kumoq.config.listener_domain and kumoq.smtp.replies only. Must not
import kumoq.smtp.server or kumoq.smtp.connection (they import this module), the daemon, the
spool, the queues or lupa.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias, runtime_checkable

from kumoq.config.listener_domain import ListenerDomain
from kumoq.message import EnvelopeAddress
from kumoq.smtp.replies import Reply

__all__ = ["ConnectionMeta", "ListenerDomains", "SmtpHandler"]

ConnectionMeta: TypeAlias = dict[str, Any]
"""Connection metadata shared with the handler: ``received_from`` (peer ip), ``received_via``
(local ``ip:port``), ``hostname``, ``reception_protocol`` ("ESMTP"), ``session_id`` (uuid4
hex), the listener's ``meta`` entries, and ``ehlo_domain`` once EHLO/HELO succeeded (dropped
again at STARTTLS). After a TLS handshake: ``tls_protocol_version``, ``tls_cipher`` and, for a
verified client certificate, ``tls_peer_subject_name``. After AUTH: what ``auth_plain`` put
there (``authz_id``, ``authn_id``). The server's own dict is a ``kumoq.smtp.relay.SessionMeta``,
whose ``relay`` attribute (not an entry) decides relaying again at DATA."""


class SmtpHandler(Protocol):
    """What the server asks of the daemon. Every method may raise ``RejectError``
    (``kumo.reject``): its code and text become the reply, and the connection is dropped
    when it is a 421 or ``disconnect`` is set. Any other exception is logged and answers
    ``451 4.3.0 <host> technical difficulties`` (its text never reaches the client); that
    command is refused and the connection stays open. A returned Reply
    with code 421 is sent and the connection closed.

    ``ehlo``, ``mail_from``, ``rcpt_to`` and ``auth_plain`` are started eagerly from the
    protocol callback: until their first suspension they run outside any task
    (``asyncio.current_task()`` is None), so they must not enter ``asyncio.timeout()`` or a
    TaskGroup before their first ``await``. ``data`` always runs in its own task."""

    def ready(self) -> bool:
        """False until the spool is enumerated: new connections get ``421 4.3.2 <host>
        waiting for spool startup. Try again soon!`` and are closed."""
        ...

    async def ehlo(
        self, conn: ConnectionMeta, domain: str, extensions: list[str]
    ) -> list[str] | Reply | None:
        """EHLO/HELO: a replacement extension list, ``None`` for the default, or a rejection."""
        ...

    async def auth_plain(self, conn: ConnectionMeta, authz: str, authc: str, password: str) -> bool:
        """AUTH PLAIN or LOGIN, over TLS: True accepts the credentials (``235 2.7.0``) and
        records the identities in ``conn`` (KumoMTA's ``authz_id`` and ``authn_id``); False
        refuses them (``535 5.7.8``, counted against the client IP). ``authz`` is ``authc``
        when the client gave none. An accepted peer may relay."""
        ...

    async def mail_from(self, conn: ConnectionMeta, sender: EnvelopeAddress) -> Reply | None:
        """``None`` accepts (``250 2.1.0 OK``)."""
        ...

    async def rcpt_to(self, conn: ConnectionMeta, recipient: EnvelopeAddress) -> Reply | None:
        """``None`` accepts. Called only once the relay check passed, as KumoMTA orders them:
        a recipient the peer may not relay to (``relay_hosts``, AUTH, and the listener
        domains of ``ListenerDomains``) is answered ``550 5.7.1 relaying not permitted for
        <peer>`` without this call."""
        ...

    async def data(
        self,
        conn: ConnectionMeta,
        sender: EnvelopeAddress,
        recipients: list[EnvelopeAddress],
        data: bytes,
    ) -> Reply:
        """The final reply for the transaction (``250 OK ids=...`` or a rejection). Bounded by
        ``data_processing_timeout`` (then ``451 4.4.5``); the call is cancelled at the deadline,
        so a handler should make its own writes safe to cancel or check the deadline itself."""
        ...

    def rejected(self, conn: ConnectionMeta, command: str, reply: Reply) -> None:
        """Called for every 4xx/5xx reply the server sends (for Rejection log records).
        KumoMTA does not log its ``421 4.3.2`` replies (shutdown, spool startup, idle)."""
        ...


@runtime_checkable
class ListenerDomains(Protocol):
    """A handler that knows listener domains (KumoMTA's ``get_listener_domain`` event); the
    server checks for it once per connection."""

    async def get_listener_domain(self, conn: ConnectionMeta, domain: str) -> ListenerDomain | None:
        """The listener domain of ``domain`` at this connection's listener, or None. An
        exception answers ``451 4.3.0 <host> technical difficulties`` to the RCPT, as any
        handler failure does; asked at most once per domain and connection (``smtp/relay.py``)."""
        ...
