"""A churn of distinct destination domains through the real QueueManager and SmtpDispatch (issue
10, defect 3), for tests/unit/test_state_reaping.py.

Each domain gets one message. Behind the seams: a policy answering ``get_queue_config`` and
``get_egress_path_config`` at once, a resolver giving each domain its own MX host (so its own
site and ready queue) on 127.0.0.1, a spool that holds nothing. Loopback is on the default
``prohibited_hosts``, so each attempt ends in a ``550 5.4.4`` Bounce right after the connection
plan, without a socket: every piece of per-domain state is made (scheduled queue, its round
robin of sources, throttle keys of the queue and of the path, MX cache entry, ready queue with
its dispatcher and expiry timer), and nothing waits on real IO. One domain in 20 is only
resolved, and ``get_queue_config`` fails for it, as when reception answers 451 for it: a
failed resolve cached for 60 s under a name that never comes back. The loop
runs on a FakeClock (``virtual_time.run_virtual``), so reap intervals pass at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kumoq.clock import FakeClock
from kumoq.config.egress import EgressPathConfig, EgressPool, EgressSource
from kumoq.config.queue import QueueConfig, SmtpProtocol
from kumoq.config.values import ThrottleSpec
from kumoq.dns.mx_cache import MxCache
from kumoq.dns.resolver import DnsStatus, IpAnswer, IpLookupStrategy, MxAnswer
from kumoq.egress.smtp_dispatch import SmtpDispatch
from kumoq.errors import PolicyError
from kumoq.logs.records import RecordType, Response
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.scheduler.manager import QueueManager
from kumoq.testing.faults import NullSpool
from kumoq.throttle import Throttle
from tests.unit.virtual_time import run_virtual

__all__ = ["ChurnResult", "churn"]

REAP = 5.0  # seconds: the scheduled queues' reap_interval and the ready queues' age-out
MX_CAPACITY = 1024
FAIL_EVERY = 20  # one domain in 20 only fails get_queue_config


class Resolver:
    """Every domain has its own MX host; every host is 127.0.0.1."""

    async def resolve_mx(self, domain: str) -> MxAnswer:
        return MxAnswer(status=DnsStatus.FOUND, records=((10, f"mx.{domain}"),), ttl=300.0)

    async def resolve_ip(
        self, host: str, strategy: IpLookupStrategy = IpLookupStrategy.IPV4_THEN_IPV6
    ) -> IpAnswer:
        return IpAnswer(status=DnsStatus.FOUND, addresses=("127.0.0.1",), ttl=300.0)


class Policy:
    """``get_queue_config`` and the egress events; ``get_queue_config`` fails for the domains
    named ``fail…``."""

    def __init__(self) -> None:
        self.config = QueueConfig(
            reap_interval=REAP,
            max_message_rate=ThrottleSpec.parse("max_message_rate", "100/s"),
            protocol=SmtpProtocol(),
        )
        self.path = EgressPathConfig.from_mapping({"max_message_rate": "100/s"})

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        if parts.domain.startswith("fail"):
            raise PolicyError(f"no config for {parts.domain}")
        return self.config

    def get_egress_pool(self, name: str) -> EgressPool:
        return EgressPool.from_mapping({"name": name, "entries": [{"name": "s"}]})

    def get_egress_source(self, name: str) -> EgressSource:
        return EgressSource.from_mapping({"name": name})

    def get_egress_path_config(
        self, routing_domain: str, source: str, site_name: str
    ) -> EgressPathConfig:
        return self.path


class Records:
    """Counts records by type; sets ``done`` once ``expected`` have been logged."""

    def __init__(self) -> None:
        self.counts: dict[RecordType, int] = {}
        self.total = 0
        self.expected = 0
        self.done = asyncio.Event()

    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        self.counts[type] = self.counts.get(type, 0) + 1
        self.total += 1
        if self.total >= self.expected:
            self.done.set()


@dataclass
class ChurnResult:
    domains: int
    #: per traced window ``(first domain, last domain)``: the bytes allocated in the window and
    #: still held at its end (tracemalloc, after a full collection), and the window's peak
    traced: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    #: per checkpoint (domains sent): ``sys.getallocatedblocks()`` after a full collection,
    #: and the traced bytes held then when a window is being traced (else -1)
    blocks: dict[int, int] = field(default_factory=dict)
    held: dict[int, int] = field(default_factory=dict)
    #: the largest registry sizes right after a batch was delivered, and right after a batch's
    #: reap interval
    busiest: dict[str, int] = field(default_factory=dict)
    after_reap: dict[str, int] = field(default_factory=dict)
    records: dict[RecordType, int] = field(default_factory=dict)


def _sizes(manager: QueueManager, dispatch: SmtpDispatch, throttle: Throttle) -> dict[str, int]:
    return {
        "scheduled_queues": len(manager.queue_names()),
        "failed_resolves": len(manager._failed),
        "round_robins": len(dispatch._sources._rr),
        "ready_queues": len(dispatch.ready_queues),
        "throttle_keys": len(throttle.local),
        "mx_cache": len(dispatch._mx),
    }


def churn(
    domains: int,
    *,
    batch: int = 1000,
    windows: Sequence[tuple[int, int]] = (),
    checkpoints: Sequence[int] = (),
) -> ChurnResult:
    """Send one message to each of ``domains`` distinct domains, ``batch`` at a time, letting
    a reap interval pass after each batch. Trace the bytes allocated in each of ``windows``
    (domain counts, multiples of ``batch``) and still held at its end; count the allocated
    blocks at each of ``checkpoints``."""
    clock = FakeClock()
    return run_virtual(clock, lambda: _churn(clock, domains, batch, windows, checkpoints))


async def _churn(
    clock: FakeClock,
    domains: int,
    batch: int,
    windows: Sequence[tuple[int, int]],
    checkpoints: Sequence[int],
) -> ChurnResult:
    policy = Policy()
    throttle = Throttle()
    mx = MxCache(Resolver(), capacity=MX_CAPACITY)
    dispatch = SmtpDispatch(
        policy=policy,
        mx=mx,
        resolver=lambda: mx.resolver,
        clock=clock,
        hostname="churn.test",
        throttle=throttle,
        reap_interval=REAP,
    )
    records = Records()
    manager = QueueManager(
        configs=policy,
        deliverers={SmtpProtocol: dispatch},
        spool=NullSpool(),
        records=records,
        clock=clock,
        throttle=throttle,
    )
    result = ChurnResult(domains)
    sender = EnvelopeAddress.parse("s@sender.test")
    data = b"Subject: churn\r\n\r\nbody\r\n"
    sent = 0
    try:
        while True:
            if sent in checkpoints or any(sent in window for window in windows):
                gc.collect()
            if sent in checkpoints:
                result.blocks[sent] = sys.getallocatedblocks()
                tracing = tracemalloc.is_tracing()
                result.held[sent] = tracemalloc.get_traced_memory()[0] if tracing else -1
            for window in windows:
                if sent == window[1]:
                    result.traced[window] = tracemalloc.get_traced_memory()
                    tracemalloc.stop()
            if any(sent == w[0] for w in windows):
                tracemalloc.start()
            if sent >= domains:
                break
            n = min(batch, domains - sent)
            records.expected = records.total
            records.done.clear()
            for i in range(sent, sent + n):
                if i % FAIL_EVERY == FAIL_EVERY - 1:  # as reception: a 451, nothing stored
                    with contextlib.suppress(PolicyError):
                        manager.resolve(f"fail{i}.test")
                    continue
                records.expected += 1
                msg = Message(
                    id=new_spool_id(clock.now()),
                    sender=sender,
                    recipients=[EnvelopeAddress.parse(f"u@d{i}.test")],
                    data=data,
                )
                manager.insert(msg)
            await records.done.wait()
            for key, value in _sizes(manager, dispatch, throttle).items():
                result.busiest[key] = max(result.busiest.get(key, 0), value)
            await asyncio.sleep(2 * REAP)  # every reap interval passes
            for key, value in _sizes(manager, dispatch, throttle).items():
                result.after_reap[key] = max(result.after_reap.get(key, 0), value)
            sent += n
    finally:
        tracemalloc.stop()
        await manager.close(drain_seconds=1.0)
        await dispatch.close(drain_seconds=1.0)
    result.records = dict(records.counts)
    return result


def main() -> None:
    """``python -m tests.unit.state_churn [domains] [warmup]``: trace the whole run after the
    warm-up (slow: tracemalloc makes it about four times slower) and print the figures."""
    domains = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    warmup = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    started = time.perf_counter()
    marks = sorted({warmup, *range(warmup, domains + 1, max(1, (domains - warmup) // 9))})
    result = churn(domains, windows=[(0, domains)], checkpoints=marks)
    elapsed = time.perf_counter() - started
    print(f"{domains} domains in {elapsed:.1f} s; records {result.records}")
    for mark in marks:
        print(f"  after {mark:>7} domains: held {result.held[mark]:>11,} B, "
              f"{result.blocks[mark]:>9,} blocks")  # fmt: skip
    print(f"  growth after the warm-up: {result.held[marks[-1]] - result.held[warmup]:,} B")
    print(f"  peak {result.traced[(0, domains)][1]:,} B")
    print(f"  busiest {result.busiest}")
    print(f"  after each reap interval, at most {result.after_reap}")


if __name__ == "__main__":
    main()
