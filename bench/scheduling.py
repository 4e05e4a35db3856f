"""Scheduled-queue benchmarks: idle CPU, memory per deferred message, restart re-queue time.

``python -m bench.scheduling [--queues 10000] [--per-queue 100] [--idle 20] [--requeue 1000000]``

1. For each strategy (TimerWheel, SkipList, SingletonTimerWheel), a real ``QueueManager`` holds
   ``queues x per_queue`` deferred messages (due in an hour; no bodies in memory). Reported:
   resident memory per deferred message, and the process CPU used while idle for ``--idle`` s.
2. Restart: a real SQLite spool is filled with ``--requeue`` messages (meta with a due time an
   hour ahead, small data), then the time to enumerate it and insert every message into the
   queue manager, as ``kumoq serve`` does at startup, is measured.

Everything runs in one process on uvloop. Each measurement runs in a fresh subprocess so that
the memory figures do not include the previous one's leftovers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from kumoq.clock import SystemClock
from kumoq.config.queue import MaildirProtocol, QueueConfig, QueueStrategy
from kumoq.config.spool import SpoolDefinition
from kumoq.logs.records import RecordType, Response
from kumoq.message import EnvelopeAddress, Message, QueueNameParts, new_spool_id
from kumoq.scheduler.context import InsertContext, InsertReason
from kumoq.scheduler.manager import QueueManager
from kumoq.spool import open_spool
from kumoq.spool_record import message_from_spool_meta


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Configs:
    def __init__(self, strategy: QueueStrategy) -> None:
        self.config = QueueConfig(
            strategy=strategy, protocol=MaildirProtocol(maildir_path="/nonexistent")
        )

    def get_queue_config(self, parts: QueueNameParts) -> QueueConfig:
        return self.config


class _NoRecords:
    def log(self, type: RecordType, msg: Message, *, response: Response, **fields: Any) -> None:
        pass


class _NoSpool:
    """Nothing is stored: delayed inserts do not touch the spool."""

    async def remove(self, msg_id: str) -> None:
        pass


async def _hold(
    strategy: QueueStrategy, queues: int, per_queue: int, idle: float
) -> dict[str, Any]:
    clock = SystemClock()
    manager = QueueManager(
        configs=_Configs(strategy),
        deliverers={},
        spool=_NoSpool(),  # type: ignore[arg-type]
        records=_NoRecords(),
        clock=clock,
    )
    gc.collect()
    before = rss_bytes()
    now = time.time()
    due = now + 3600
    sender = EnvelopeAddress("bulk", "sender.example")
    context = InsertContext(InsertReason.Enumerated)
    started = time.perf_counter()
    for q in range(queues):
        rcpt_domain = f"d{q}.example"
        for i in range(per_queue):
            msg = Message(
                id=new_spool_id(now),
                sender=sender,
                recipients=[EnvelopeAddress(f"user{i}", rcpt_domain)],
                meta={"tenant": "t1"},
                due=due,
            )
            manager.insert(msg, context)
    insert_s = time.perf_counter() - started
    await asyncio.sleep(0.5)  # let maintainers start and settle
    gc.collect()
    after = rss_bytes()
    total = queues * per_queue
    cpu0 = time.process_time()
    await asyncio.sleep(idle)
    idle_cpu = time.process_time() - cpu0
    assert manager.delayed_count() == total, manager.delayed_count()
    await manager.close()
    return {
        "strategy": strategy.value,
        "messages": total,
        "queues": queues,
        "insert_us_per_msg": insert_s / total * 1e6,
        "rss_per_msg_bytes": (after - before) / total,
        "idle_cpu_pct": idle_cpu / idle * 100,
    }


async def _requeue(n: int, root: Path) -> dict[str, Any]:
    data_def = SpoolDefinition.from_mapping({"name": "data", "path": str(root), "kind": "SQLite"})
    meta_def = SpoolDefinition.from_mapping({"name": "meta", "path": str(root), "kind": "SQLite"})
    spool = open_spool(data_def, meta_def)
    await spool.start()
    now = time.time()
    due = now + 3600
    body = b"Subject: x\r\n\r\n" + b"x" * 64 + b"\r\n"
    batch: list[tuple[str, bytes | None, bytes]] = []
    fill_started = time.perf_counter()
    for i in range(n):
        msg = Message(
            id=new_spool_id(now),
            sender=EnvelopeAddress("bulk", "sender.example"),
            recipients=[EnvelopeAddress(f"user{i}", f"d{i % 10000}.example")],
            meta={"tenant": "t1"},
            due=due,
        )
        batch.append((msg.id, body, json.dumps(msg.to_spool_meta()).encode()))
        if len(batch) == 5000:
            await spool.store_many(batch)
            batch = []
    if batch:
        await spool.store_many(batch)
    fill_s = time.perf_counter() - fill_started
    await spool.close()

    spool = open_spool(data_def, meta_def)
    manager = QueueManager(
        configs=_Configs(QueueStrategy.SKIP_LIST),
        deliverers={},
        spool=spool,
        records=_NoRecords(),
        clock=SystemClock(),
    )
    context = InsertContext(InsertReason.Enumerated)
    started = time.perf_counter()
    await spool.start()
    count = 0
    async for spool_id, meta in spool.enumerate():
        manager.insert(message_from_spool_meta(spool_id, json.loads(meta)), context)
        count += 1
    requeue_s = time.perf_counter() - started
    assert count == n, count
    await manager.close()
    await spool.close()
    return {"messages": n, "fill_s": fill_s, "requeue_s": requeue_s, "per_s": n / requeue_s}


def _child(args: argparse.Namespace) -> None:
    if args.child == "hold":
        result = uvloop.run(
            _hold(QueueStrategy(args.strategy), args.queues, args.per_queue, args.idle)
        )
    else:
        with tempfile.TemporaryDirectory(prefix="kumoq-requeue-") as tmp:
            result = uvloop.run(_requeue(args.requeue, Path(tmp)))
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _run_child(*extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.scheduling", *extra],
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queues", type=int, default=10_000)
    parser.add_argument("--per-queue", type=int, default=100)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--requeue", type=int, default=1_000_000)
    parser.add_argument("--child", choices=("hold", "requeue"), help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="TimerWheel", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return 0

    print(f"nproc={os.cpu_count()} date={time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("\n| strategy | queues | deferred | insert µs/msg | RSS per deferred msg | idle CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for strategy in ("TimerWheel", "SkipList", "SingletonTimerWheel"):
        r = _run_child(
            "--child", "hold", "--strategy", strategy, "--queues", str(args.queues),
            "--per-queue", str(args.per_queue), "--idle", str(args.idle),
        )  # fmt: skip
        print(
            f"| {r['strategy']} | {r['queues']:,} | {r['messages']:,} | "
            f"{r['insert_us_per_msg']:.1f} | {r['rss_per_msg_bytes']:.0f} B | "
            f"{r['idle_cpu_pct']:.2f}% of a core |",
            flush=True,
        )
    if args.requeue:
        r = _run_child("--child", "requeue", "--requeue", str(args.requeue))
        print(
            f"\nrestart: re-queued {r['messages']:,} spooled messages (SQLite) in "
            f"{r['requeue_s']:.1f} s ({r['per_s']:,.0f}/s); filling the spool took "
            f"{r['fill_s']:.1f} s; peak RSS {r['maxrss_mb']:.0f} MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
