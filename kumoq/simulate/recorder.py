"""What a simulation counts: its records, in time buckets, and the spool it keeps in memory.

- ``Tally`` is the queue manager's ``RecordSink``: instead of writing log records it counts
  them per bucket of virtual time (``Scenario.bucket``), per recipient domain and per egress
  source, keeps each delivered message's time in the system, the reasons messages were
  delayed and the responses of the transient failures, and samples the queue depth.
  ``Tally.forecast()`` turns all of it into the JSON-ready forecast the report renders.
- ``MemorySpool`` is the ``Spool``: message bodies in a dict (shared bytes, never copied),
  meta updates dropped. A simulation needs no disk.

Counting is O(1) per record; the forecast is O(buckets x (domains + sources)).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kumoq.errors import SpoolCorruptError
from kumoq.logs.records import RecordType, Response
from kumoq.message import Message
from kumoq.spool.base import Payload, joined

__all__ = ["FINAL", "DepthSample", "MemorySpool", "Tally"]

FINAL: Final = frozenset(
    {RecordType.Delivery, RecordType.Bounce, RecordType.Expiration, RecordType.AdminBounce}
)
"""The records that end a message."""

_PER_BUCKET: Final = (
    RecordType.Reception,
    RecordType.Delivery,
    RecordType.TransientFailure,
    RecordType.Bounce,
    RecordType.Expiration,
    RecordType.Delayed,
)
_ATTEMPTS: Final = (RecordType.Delivery, RecordType.TransientFailure, RecordType.Bounce)
_TOP_RESPONSES: Final = 10
_NAMES: Final = {kind: kind.value for kind in RecordType}
"""``kind.value`` looked up once: an Enum's ``value`` is a property, and ``log`` runs for
every record."""


@dataclass(frozen=True, slots=True)
class DepthSample:
    """The backlog at ``at`` (seconds into the simulation): messages not yet final, those
    waiting in scheduled queues, in ready queues, and in an attempt."""

    at: float
    pending: int
    scheduled: int
    ready: int
    in_flight: int


def _percentile(ordered: list[float], share: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)], 3)


class Tally:
    """The ``RecordSink`` of a simulation: counts records by type, bucket, domain and source.

    ``elapsed()`` is seconds into the simulation, which started at the unix time ``origin``
    (``msg.created`` is a unix time); records after ``buckets`` buckets go in the last one.
    """

    def __init__(
        self, elapsed: Callable[[], float], *, origin: float, bucket: float, buckets: int
    ) -> None:
        self._elapsed = elapsed
        self.origin = origin
        self.bucket = bucket
        self.buckets = max(1, buckets)
        self.totals: Counter[str] = Counter()
        self.per_bucket = {kind: [0] * self.buckets for kind in _PER_BUCKET}
        self.by_domain: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.delivered_by_domain: dict[str, list[int]] = {}
        self.delivered_by_source: dict[str, list[int]] = {}
        self.transient_by_domain: dict[str, list[int]] = {}
        self.delayed_reasons: Counter[str] = Counter()
        self.transient_responses: Counter[str] = Counter()
        self.ready_queues: Counter[str] = Counter()
        self.time_to_deliver: list[float] = []
        self.finals = 0
        self.last_final: float | None = None
        self.injected = 0
        self.rejected = 0
        self.rejections: Counter[str] = Counter()
        self.discarded = 0
        self.depth: list[DepthSample] = []

    def _series(self, table: dict[str, list[int]], key: str) -> list[int]:
        series = table.get(key)
        if series is None:
            series = table[key] = [0] * self.buckets
        return series

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        elapsed = self._elapsed()
        index = min(int(elapsed // self.bucket), self.buckets - 1)
        name = _NAMES[type]
        self.totals[name] += 1
        per_bucket = self.per_bucket.get(type)
        if per_bucket is not None:
            per_bucket[index] += 1
        domain = msg.recipients[0].domain if msg.recipients else ""
        if type is RecordType.Delayed:
            context = response.content.partition("Context: ")[2].partition(". Next due")[0]
            self.delayed_reasons[context or "unknown"] += 1
            return
        if type is RecordType.Reception:
            return
        self.by_domain[domain][name] += 1
        if type is RecordType.TransientFailure:
            self._series(self.transient_by_domain, domain)[index] += 1
            self.transient_responses[response.one_line()[:160]] += 1
        elif type is RecordType.Delivery:
            self._series(self.delivered_by_domain, domain)[index] += 1
            source = fields.get("egress_source") or _local_source(fields)
            self._series(self.delivered_by_source, str(source))[index] += 1
            self.time_to_deliver.append(elapsed - (msg.created - self.origin))  # rounded later
            if fields.get("site"):
                self.ready_queues[str(fields["site"])] += 1
        if type in FINAL:
            self.finals += 1
            self.last_final = round(elapsed, 3)

    def reject(self, reason: str) -> None:
        """A message the policy refused at reception (never queued)."""
        self.rejected += 1
        self.rejections[reason[:100]] += 1

    @property
    def pending(self) -> int:
        """Messages injected and not yet at a final record (nor refused, nor discarded)."""
        return self.injected - self.rejected - self.discarded - self.finals

    def sample(self, scheduled: int, ready: int) -> None:
        pending = self.pending
        in_flight = max(0, pending - scheduled - ready)
        at = round(self._elapsed(), 3)
        self.depth.append(DepthSample(at, pending, scheduled, ready, in_flight))

    def forecast(self) -> dict[str, Any]:
        """The counts as a JSON-ready forecast (the report's input)."""
        totals = self.totals
        attempts = [sum(self.per_bucket[k][i] for k in _ATTEMPTS) for i in range(self.buckets)]
        ordered = sorted(self.time_to_deliver)
        cleared = self.last_final if self.pending == 0 and self.injected else None
        hours = [
            {
                "start": i * self.bucket,
                "injected": self.per_bucket[RecordType.Reception][i],
                "delivered": self.per_bucket[RecordType.Delivery][i],
                "transient_failures": self.per_bucket[RecordType.TransientFailure][i],
                "bounced": self.per_bucket[RecordType.Bounce][i],
                "expired": self.per_bucket[RecordType.Expiration][i],
                "delayed": self.per_bucket[RecordType.Delayed][i],
                "attempts": attempts[i],
            }
            for i in range(self.buckets)
        ]
        return {
            "totals": {
                "injected": self.injected,
                "rejected": self.rejected,
                "discarded": self.discarded,
                "delivered": totals[RecordType.Delivery.value],
                "bounced": totals[RecordType.Bounce.value],
                "expired": totals[RecordType.Expiration.value],
                "pending": self.pending,
                "attempts": sum(attempts),
                "transient_failures": totals[RecordType.TransientFailure.value],
                "delayed": totals[RecordType.Delayed.value],
            },
            "backlog_cleared_at": cleared,
            "bucket_seconds": self.bucket,
            "buckets": hours,
            "delivered_by_domain": self.delivered_by_domain,
            "delivered_by_source": self.delivered_by_source,
            "transient_failures_by_domain": self.transient_by_domain,
            "by_domain": {d: dict(c) for d, c in sorted(self.by_domain.items())},
            "rejections": dict(self.rejections.most_common(_TOP_RESPONSES)),
            "delayed_reasons": dict(self.delayed_reasons.most_common()),
            "transient_responses": dict(self.transient_responses.most_common(_TOP_RESPONSES)),
            "ready_queues": dict(self.ready_queues.most_common()),
            "time_to_deliver": {
                "p50": _percentile(ordered, 0.5),
                "p90": _percentile(ordered, 0.9),
                "p99": _percentile(ordered, 0.99),
                "max": round(ordered[-1], 3) if ordered else None,
            },
            "depth": [dataclasses.asdict(sample) for sample in self.depth],
        }


def _local_source(fields: dict[str, Any]) -> str:
    """The 'source' of a delivery without an egress source (maildir): its protocol."""
    protocol = fields.get("delivery_protocol")
    return f"({protocol.lower()})" if isinstance(protocol, str) else "(local)"


class MemorySpool:
    """A ``Spool`` in memory: bodies by id (the caller's bytes, not copied); meta dropped."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.stores = 0

    async def start(self) -> None:
        pass

    async def store(self, msg_id: str, data: Payload | None, meta: bytes) -> None:
        self.stores += 1
        if data is not None:
            self.data[msg_id] = joined(data)

    async def store_many(self, items: Sequence[tuple[str, Payload | None, bytes]]) -> None:
        for msg_id, data, meta in items:
            await self.store(msg_id, data, meta)

    async def load_data(self, msg_id: str) -> bytes:
        data = self.data.get(msg_id)
        if data is None:
            raise SpoolCorruptError(f"no data for {msg_id}")
        return data

    async def remove(self, msg_id: str) -> None:
        self.data.pop(msg_id, None)

    async def quarantine(self, msg_id: str, reason: str) -> None:
        self.data.pop(msg_id, None)

    async def enumerate(self) -> AsyncIterator[tuple[str, bytes]]:
        nothing: tuple[tuple[str, bytes], ...] = ()
        for item in nothing:
            yield item

    async def close(self) -> None:
        pass
