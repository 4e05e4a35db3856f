"""What a deliverer hands back to the scheduler: the ``Deliverer`` seam and its ``Attempt``.

The queue manager owns this seam; the dispatchers in ``kumoq.egress`` implement it (SMTP through
ready queues, maildir, custom Lua). Pure (L0): no asyncio, sockets or clocks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from kumoq.config.queue import QueueConfig
from kumoq.logs.records import RecordType, Response
from kumoq.message import Message, QueueNameParts
from kumoq.scheduler.context import InsertReason

__all__ = [
    "POLICY_WAIT_RERUNS",
    "Attempt",
    "Deliverer",
    "QueueConfigSource",
    "QueueReapListener",
    "RecordSink",
    "unavailable",
]

POLICY_WAIT_RERUNS: Final = 8
"""How often ``resolve_waiting`` fetches a DNS answer for ``get_queue_config`` and calls it
again before it gives up (a handler that looks up more domains, or a zero-TTL answer)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of one delivery attempt for one message."""

    disposition: RecordType  # Delivery, TransientFailure, Bounce; or Delayed (see requeue_delay)
    response: Response
    site: str = ""
    delivery_protocol: str | None = None
    peer_address: Any = None
    session_id: str | None = None
    #: more record fields (egress_pool, egress_source, source_address, tls_*)
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: with ``Delayed``: not attempted (the ready queue was full or throttled); back into the
    #: scheduled queue after this many seconds, attempts not incremented, for ``reason``
    requeue_delay: float | None = None
    reason: InsertReason | None = None


def unavailable(kind: str) -> Attempt:
    """The transient failure of a queue whose protocol (``Smtp``, ``Maildir``...) this
    build cannot deliver by."""
    text = f"KumoMTA internal: {kind} delivery is not available in this kumoq build"
    return Attempt(RecordType.TransientFailure, Response(451, (4, 3, 0), text, None))


class Deliverer(Protocol):
    """Delivers one message by one protocol; never raises for delivery failures."""

    def deliver(self, msg: Message, config: QueueConfig) -> Awaitable[Attempt]: ...


@runtime_checkable
class QueueReapListener(Protocol):
    """A deliverer that keeps state per scheduled queue (egress's round robin of sources): the
    queue manager tells it when it reaps a queue, so that nothing outlives the queue."""

    def queue_reaped(self, name: str) -> None: ...


class QueueConfigSource(Protocol):
    """Where queue configs come from: the policy's ``get_queue_config`` event."""

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig | None: ...


class RecordSink(Protocol):
    """Writes log records."""

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None: ...
