"""Spool throughput: ``python -m bench.spool [--messages N] [--tasks T] [--runs R] [--dir D]``.

For each spool kind and LocalDisk sync variant, T concurrent tasks store N messages (2 KB of
data + ~300 B of meta, ``flush=true``) through the group-committing writer; then the spool is
closed and reopened, enumerated (what a restart does), and every message is removed by T
tasks. Each variant runs R times on a fresh directory; the table shows medians.

Columns: stores/s; CPU per store (process CPU time, all threads, during the store phase);
messages per group commit; sync calls per store; enumerate/s after a reopen; removes/s.
A ``tasks=1`` row per kind shows the serial cost (no group commit possible).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from kumoq.config.spool import SpoolDefinition
from kumoq.message import new_spool_id
from kumoq.spool.local_disk import LocalDiskSpool, SyncMode
from kumoq.spool.sqlite import SqliteSpool

AnySpool = LocalDiskSpool | SqliteSpool

DATA = (b"Subject: bench\r\n\r\n" + b"x" * 76 + b"\r\n") * 21  # ~2 KB
META = (
    b'{"sender":"bench@example.com","recipient":"user@example.net","meta":{"tenant":"t1",'
    b'"campaign":"c1","received_from":"127.0.0.1:54321","received_via":"127.0.0.1:2525",'
    b'"hostname":"mx.example.com","queue":"c1:t1@example.net"},"schedule":null,'
    b'"num_attempts":0,"due":null,"pad":"' + b"p" * 40 + b'"}'
)  # ~300 B


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    make: Callable[[SpoolDefinition, SpoolDefinition], AnySpool]
    kind: str
    tasks: int | None = None  # None: the --tasks value


def _local(mode: SyncMode, threads: int) -> Callable[[SpoolDefinition, SpoolDefinition], AnySpool]:
    return lambda d, m: LocalDiskSpool(d, m, sync_mode=mode, io_threads=threads)


VARIANTS = [
    Variant("LocalDisk fdatasync, writer thread", _local("fdatasync", 0), "LocalDisk"),
    Variant("LocalDisk fdatasync, 8 io threads", _local("fdatasync", 8), "LocalDisk"),
    Variant("LocalDisk syncfs, writer thread", _local("syncfs", 0), "LocalDisk"),
    Variant("LocalDisk syncfs, 8 io threads", _local("syncfs", 8), "LocalDisk"),
    Variant("SQLite WAL synchronous=FULL", SqliteSpool, "SQLite"),
    Variant("LocalDisk syncfs, writer thread (serial)", _local("syncfs", 0), "LocalDisk", 1),
    Variant("SQLite WAL synchronous=FULL (serial)", SqliteSpool, "SQLite", 1),
]


@dataclass(frozen=True, slots=True)
class Result:
    stores_per_s: float
    cpu_us: float
    batch: float
    syncs_per_store: float
    enum_per_s: float
    removes_per_s: float


async def _run_once(variant: Variant, root: str, messages: int, tasks: int, flush: bool) -> Result:
    def define(name: str) -> SpoolDefinition:
        return SpoolDefinition.from_mapping(
            {"name": name, "path": f"{root}/{name}", "kind": variant.kind, "flush": flush}
        )

    data, meta = define("data"), define("meta")
    now = time.time()
    ids = [new_spool_id(now) for _ in range(messages)]

    spool = variant.make(data, meta)
    await spool.start()
    todo = list(reversed(ids))

    async def storer() -> None:
        while todo:
            await spool.store(todo.pop(), DATA, META)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(storer() for _ in range(tasks)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = spool.stats
    batch, syncs = stats.ops / max(stats.batches, 1), stats.syncs / messages
    await spool.close()

    spool = variant.make(data, meta)
    await spool.start()
    t0 = time.perf_counter()
    seen = 0
    async for _id, _meta in spool.enumerate():
        seen += 1
    enum_elapsed = time.perf_counter() - t0
    if seen != messages:
        raise SystemExit(f"{variant.label}: enumerated {seen} of {messages}")

    todo = list(ids)

    async def remover() -> None:
        while todo:
            await spool.remove(todo.pop())

    t0 = time.perf_counter()
    await asyncio.gather(*(remover() for _ in range(tasks)))
    remove_elapsed = time.perf_counter() - t0
    await spool.close()
    return Result(
        stores_per_s=messages / elapsed,
        cpu_us=cpu / messages * 1e6,
        batch=batch,
        syncs_per_store=syncs,
        enum_per_s=messages / enum_elapsed,
        removes_per_s=messages / remove_elapsed,
    )


def _median(results: list[Result], field: str) -> float:
    return float(statistics.median(getattr(r, field) for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages per run")
    parser.add_argument("--tasks", type=int, default=20, help="concurrent storing tasks")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to create the spools (default: TMPDIR)")
    parser.add_argument("--no-flush", action="store_true", help="flush=false (no syncs)")
    parser.add_argument("--only", default="", help="run the variants whose label contains this")
    args = parser.parse_args()

    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None

    print(
        f"spool bench: {args.messages} messages of {len(DATA)} B + {len(META)} B meta, "
        f"flush={'false' if args.no_flush else 'true'}, median of {args.runs} runs, "
        f"{os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M')}\n"
    )
    print("| variant | tasks | stores/s | CPU µs/store | msgs/commit | syncs/store "
          "| enumerate/s | removes/s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in VARIANTS:
        if args.only and args.only not in variant.label:
            continue
        tasks = variant.tasks or args.tasks
        messages = args.messages if tasks > 1 else max(args.messages // 5, 100)
        results = []
        for _ in range(args.runs):
            root = tempfile.mkdtemp(prefix="kumoq-bench-spool-", dir=args.dir)
            try:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    results.append(
                        runner.run(_run_once(variant, root, messages, tasks, not args.no_flush))
                    )
            finally:
                shutil.rmtree(root, ignore_errors=True)
        print(
            f"| {variant.label} | {tasks} | {_median(results, 'stores_per_s'):,.0f} "
            f"| {_median(results, 'cpu_us'):,.0f} | {_median(results, 'batch'):.1f} "
            f"| {_median(results, 'syncs_per_store'):.2f} | {_median(results, 'enum_per_s'):,.0f} "
            f"| {_median(results, 'removes_per_s'):,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
