"""The admin API's listing of one scheduled queue on a big queue: ``python -m bench.paging``.

Fills one queue with ``--n`` waiting messages (no spool: the queue holds only the message
objects, as it does after the body was dropped) for each strategy, then times the first page,
a page from the middle and a page near the end (following cursors), and ``find``. For the
process-wide wheel it adds as many messages of another queue, so that a page has to skip them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from kumoq.clock import SystemClock
from kumoq.config.queue import QueueConfig, QueueStrategy, SmtpProtocol
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.scheduler.manager import QueueManager
from kumoq.scheduler.scheduled import ScheduledQueue
from kumoq.testing.faults import NullSpool


class _Configs:
    def __init__(self, strategy: QueueStrategy) -> None:
        self.config = QueueConfig(protocol=SmtpProtocol(), strategy=strategy)

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        return self.config


class _NoRecords:
    def log(self, *args: object, **kwargs: object) -> None:
        pass


def _fill(manager: QueueManager, domain: str, n: int, now: float) -> list[str]:
    sender = EnvelopeAddress.parse("s@example.com")
    rcpt = EnvelopeAddress.parse(f"u@{domain}")
    ids = []
    for i in range(n):
        msg = Message(id=new_spool_id(now + i * 1e-6), sender=sender, recipients=[rcpt])
        msg.due = now + 3600 + (i % 86400)
        manager.insert(msg)
        ids.append(msg.id)
    return ids


def _timed(fn: object, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _page_at(queue: ScheduledQueue, pages: int, limit: int) -> str | None:
    cursor: str | None = None
    for _ in range(pages):
        _, cursor = queue.page(cursor, limit)
        if cursor is None:
            break
    return cursor


async def _one(strategy: QueueStrategy, n: int, limit: int) -> None:
    clock = SystemClock()
    manager = QueueManager(configs=_Configs(strategy), deliverers={}, spool=NullSpool(),
                           records=_NoRecords(), clock=clock)  # fmt: skip
    now = clock.now()
    started = time.perf_counter()
    ids = _fill(manager, "big.example", n, now)
    if strategy is QueueStrategy.SINGLETON_TIMER_WHEEL:
        _fill(manager, "other.example", n, now)
    fill = time.perf_counter() - started
    queue = manager.get("big.example")
    assert queue is not None
    middle = _page_at(queue, n // limit // 2, limit)
    late = _page_at(queue, n // limit - 2, limit)
    first_ms = _timed(lambda: queue.page(None, limit))
    middle_ms = _timed(lambda: queue.page(middle, limit))
    late_ms = _timed(lambda: queue.page(late, limit))
    find_ms = _timed(lambda: manager.find(ids[n // 2]))
    print(f"{strategy.value:<20} n={n:>9,} fill {fill:6.1f} s | page of {limit}: first "
          f"{first_ms:6.2f} ms, middle {middle_ms:6.2f} ms, near the end {late_ms:6.2f} ms | "
          f"find {find_ms:.3f} ms")  # fmt: skip
    await manager.close(drain_seconds=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    for strategy in (QueueStrategy.TIMER_WHEEL, QueueStrategy.SKIP_LIST,
                     QueueStrategy.SINGLETON_TIMER_WHEEL):  # fmt: skip
        asyncio.run(_one(strategy, args.n, args.limit))


if __name__ == "__main__":
    main()
