"""One SMTP egress path, ``<source>-><site>@smtp_client``, and the attempts it reports.

A ``ReadyQueue`` holds the path's config (``get_egress_path_config``, refreshed every
``refresh_interval``), its priority FIFO of messages waiting for a connection (``max_ready``),
how many dispatchers serve it, and its run of connection failures. ``ReadyQueue.attempt``
turns an outcome into the scheduler's ``Attempt`` with the record fields KumoMTA logs for
egress (``site``, ``egress_pool``, ``egress_source``, ``source_address``, ``tls_*``).

Imports asyncio (the wake event and each waiting message's future); never a socket.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Final

from kumoq.config.egress import EgressPathConfig, EgressSource
from kumoq.delivery.smtp import SmtpClientSession
from kumoq.dns.site_name import MailExchanger
from kumoq.egress.ready import ConnectionFailureTracker, ReadyFifo
from kumoq.logs.records import RecordType, Response, SourceAddress
from kumoq.message import Message
from kumoq.scheduler.attempt import Attempt

__all__ = ["SMTP_PROTO", "QueuedMessage", "ReadyQueue", "transient"]

SMTP_PROTO: Final = "smtp_client"


def transient(
    content: str, code: int = 451, enhanced: tuple[int, int, int] | None = (4, 4, 4)
) -> Response:
    """A transient-failure response kumoq made up itself (no server said it)."""
    return Response(code=code, enhanced_code=enhanced, content=content, command=None)


@dataclass(slots=True)
class QueuedMessage:
    """A message waiting in a ready queue; its future receives the attempt's outcome."""

    msg: Message
    future: asyncio.Future[Attempt]


@dataclass(eq=False)
class ReadyQueue:
    """One egress path: ``<source>-><site>@smtp_client``."""

    name: str
    source: EgressSource
    pool: str
    site_name: str
    routing_domain: str
    exchanger: MailExchanger | None
    mx_list: tuple[Any, ...] | None
    path: EgressPathConfig
    path_until: float
    fifo: ReadyFifo[QueuedMessage] = field(init=False)
    dispatchers: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    failures: ConnectionFailureTracker = field(init=False)

    def __post_init__(self) -> None:
        self.fifo = ReadyFifo(self.path.max_ready)
        self.failures = ConnectionFailureTracker(
            self.path.consecutive_connection_failures_before_delay
        )

    def attempt(
        self, disposition: RecordType, response: Response, session: SmtpClientSession | None = None
    ) -> Attempt:
        """The outcome of an attempt on this path, with its egress record fields."""
        extra: dict[str, Any] = {"egress_pool": self.pool, "egress_source": self.source.name}
        peer = None
        session_id = None
        if session is not None:
            peer = session.peer
            session_id = session.session_id
            extra["source_address"] = SourceAddress(address=session.source_address)
            if session.tls is not None:
                extra["tls_cipher"] = session.tls.cipher
                extra["tls_protocol_version"] = session.tls.protocol_version
                extra["tls_peer_subject_name"] = session.tls.peer_subject_name
        return Attempt(
            disposition,
            response,
            site=self.name,
            delivery_protocol="ESMTP",
            peer_address=peer,
            session_id=session_id,
            extra=extra,
        )

    def settle_all(self, attempt: Attempt, first: QueuedMessage | None = None) -> None:
        """Give ``attempt`` to ``first`` and to every message waiting in the FIFO."""
        waiting = [first, *self.fifo.drain()] if first is not None else self.fifo.drain()
        for item in waiting:
            if not item.future.done():
                item.future.set_result(attempt)
