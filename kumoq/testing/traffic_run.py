"""The shared state of one ``kumoq traffic-gen`` run: the messages still to send, the pacing,
the counts and latencies, and the summary they end in.

The SMTP and HTTP senders (``traffic_smtp.py``, ``traffic_http.py``) claim message numbers from
``TrafficRun``, give back the ones a closed connection never carried, and settle each message
they sent with the reply it got. A message is settled exactly once: ``accepted`` (2xx),
``tempfailed`` (4xx), ``permfailed`` (5xx), or ``errors`` (no reply: the connection broke, or
the run gave up before sending it). So ``accepted + tempfailed + permfailed + errors`` is
always the number asked for.

The target counts as unreachable when connecting failed and no connection ever succeeded; the
run then stops at once, and ``TrafficSummary.unreachable`` says why.

Imports asyncio and the sibling kumoq.testing.traffic_message.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final, final

from kumoq.testing.traffic_message import MessageFactory

__all__ = ["Pacer", "TrafficRun", "TrafficSummary", "percentile"]

_ERROR_SAMPLES: Final = 5
_REPLY_SAMPLES: Final = 5


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when it is empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@final
class Pacer:
    """Spaces message starts ``1 / rate`` seconds apart across every sender (no pacing when
    ``rate`` is None). Idle time earns no burst."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()  # not loop.time(): uvloop's counts whole milliseconds

    def ready(self) -> bool:
        """Take the next slot if it is due now (never waits)."""
        if not self._interval:
            return True
        now = time.monotonic()
        if self._next > now:
            return False
        self._next = max(self._next, now) + self._interval
        return True

    async def take(self) -> None:
        """Wait for the next slot and take it."""
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(self._next, now)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficSummary:
    """How a run went. Latencies are milliseconds from a message's first command (or its
    request) to its final reply; ``rate`` is messages with a reply per second;
    ``connections`` counts SMTP sessions, or HTTP requests answered; the samples are the
    first few distinct refusals and errors."""

    target: str
    mode: str
    requested: int
    sent: int
    accepted: int
    tempfailed: int
    permfailed: int
    errors: int
    connections: int
    elapsed: float
    rate: float
    latency_ms: dict[str, float]
    unreachable: str | None = None
    error_samples: list[str] = field(default_factory=list)
    reply_samples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """A few lines for a person."""
        if self.unreachable:
            return f"traffic-gen: nothing sent: {self.unreachable}"
        lat = self.latency_ms
        lines = [
            f"target: {self.target} ({self.mode}), {self.connections} "
            + ("requests" if self.mode == "http" else "connections"),
            f"sent: {self.sent} of {self.requested}: {self.accepted} accepted, "
            f"{self.tempfailed} tempfailed, {self.permfailed} permfailed, {self.errors} errors",
            f"elapsed: {self.elapsed:.2f} s, {self.rate:.1f} msgs/s",
            f"latency: p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, "
            f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms",
        ]
        lines += [f"failure reply: {text}" for text in self.reply_samples]
        lines += [f"error: {text}" for text in self.error_samples]
        return "\n".join(lines)


@final
class TrafficRun:
    """One run's books (see the module docstring). Used on one event loop only."""

    def __init__(self, count: int, factory: MessageFactory, pacer: Pacer, target: str) -> None:
        self.count = count
        self.factory = factory
        self.pacer = pacer
        self.target = target
        self.started = 0.0
        self.stopped = False
        self.ever_connected = False
        self.unreachable: str | None = None
        self._next = 0
        self._returned: collections.deque[int] = collections.deque()
        self.sent = 0
        self.accepted = 0
        self.tempfailed = 0
        self.permfailed = 0
        self.errors = 0
        self.connections = 0
        self.latencies: list[float] = []
        self.error_samples: list[str] = []
        self.reply_samples: list[str] = []

    # -- the messages to send ----------------------------------------------------------------
    def claim(self, n: int) -> list[int]:
        """Up to ``n`` message numbers to send (given back ones first); [] when none is left."""
        if self.stopped:
            return []
        out: list[int] = []
        returned = self._returned
        while returned and len(out) < n:
            out.append(returned.popleft())
        take = min(n - len(out), self.count - self._next)
        if take > 0:
            out.extend(range(self._next, self._next + take))
            self._next += take
        return out

    def give_back(self, numbers: list[int]) -> None:
        """Messages that were claimed but never sent."""
        self._returned.extend(numbers)

    @property
    def settled(self) -> int:
        return self.accepted + self.tempfailed + self.permfailed + self.errors

    @property
    def answered(self) -> int:
        return self.accepted + self.tempfailed + self.permfailed

    # -- outcomes ----------------------------------------------------------------------------
    def settle(self, code: int, text: str, latency: float) -> None:
        """A sent message got its final reply."""
        if code < 400:
            self.accepted += 1
        else:
            if code < 500:
                self.tempfailed += 1
            else:
                self.permfailed += 1
            sample = f"{code} {text}"
            if len(self.reply_samples) < _REPLY_SAMPLES and sample not in self.reply_samples:
                self.reply_samples.append(sample)
        self.latencies.append(latency)

    def failed(self, n: int, reason: str) -> None:
        """``n`` messages got no reply (``reason`` says why)."""
        self.errors += n
        self.error(reason)

    def error(self, reason: str) -> None:
        if len(self.error_samples) < _ERROR_SAMPLES and reason not in self.error_samples:
            self.error_samples.append(reason)

    def connected(self) -> None:
        self.ever_connected = True
        self.connections += 1

    def cannot_connect(self, reason: str, attempts: int) -> bool:
        """Connecting failed ``attempts`` times in a row; True when the caller should stop:
        the target is unreachable (nothing ever connected) or this sender gave up."""
        self.error(reason)
        if not self.ever_connected and attempts >= 3:
            self.unreachable = reason
            self.stopped = True
            return True
        return attempts >= 10

    # -- the end -----------------------------------------------------------------------------
    def summary(self, mode: str, elapsed: float) -> TrafficSummary:
        # Given back or never claimed: the run gave up on them.
        errors = self.errors + max(self.count - self.settled, 0)
        ordered = sorted(self.latencies)
        latency = {
            name: round(percentile(ordered, q) * 1000.0, 3)
            for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        }
        latency["max"] = round(ordered[-1] * 1000.0, 3) if ordered else 0.0
        return TrafficSummary(
            target=self.target,
            mode=mode,
            requested=self.count,
            sent=self.sent,
            accepted=self.accepted,
            tempfailed=self.tempfailed,
            permfailed=self.permfailed,
            errors=errors,
            connections=self.connections,
            elapsed=round(elapsed, 3),
            rate=round(self.answered / elapsed, 1) if elapsed > 0 else 0.0,
            latency_ms=latency,
            unreachable=self.unreachable,
            error_samples=list(self.error_samples),
            reply_samples=list(self.reply_samples),
        )
