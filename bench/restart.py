"""Restart re-queue: how long ``kumoq serve`` takes to re-queue a full spool before it accepts
mail.

    python -m bench.restart [--n 1000000] [--spool RocksDB|LocalDisk|SQLite] [--dir D] [--keep]

1. **Prefill**: a spool of ``--n`` messages is written directly through the spool API
   (``store_many`` in batches of 5,000, as ``kumoq serve`` would have stored them), under
   ``<scratch>/var/spool/{data,meta}``, the paths of ``bench/policies/bench_init.lua``. Each
   message has a 2 KB body and the meta kumoq writes (sender, one recipient in one of 1,000
   domains, tenant and campaign), due one hour ahead so that nothing is delivered meanwhile.
2. **Restart**: ``kumoq serve`` starts on ``bench/policies/reception.lua`` in that directory.
   Timed from the process's start until it logs ``spool enumeration complete``, and the
   enumeration alone (from its listener line, the last thing before enumerating, to that
   line). Reported with the daemon's CPU and peak RSS, then the daemon is stopped.

The policy defines its spools as ``bench_init.lua`` does (``KUMOQ_BENCH_SPOOL``). Imports
bench.e2e, bench.kumoq_process and kumoq's spool and message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.e2e import POLICIES, proc_cpu_seconds
from bench.kumoq_process import KumoqProcess
from kumoq.config.spool import SpoolDefinition
from kumoq.message import EnvelopeAddress, Message, new_spool_id
from kumoq.spool import open_spool

BATCH = 5000
BODY = (b"Subject: restart bench\r\n\r\n" + b"x" * 76 + b"\r\n") * 26  # ~2 KB


async def prefill(root: Path, kind: str, n: int) -> float:
    """Store ``n`` messages under ``root/var/spool``; returns the seconds it took."""
    defs = [
        SpoolDefinition.from_mapping(
            {"name": name, "path": str(root / "var" / "spool" / name), "kind": kind}
        )
        for name in ("data", "meta")
    ]
    spool = open_spool(*defs)
    await spool.start()
    started = time.perf_counter()
    now = time.time()
    sender = EnvelopeAddress("bulk", "sender.example")
    batch: list[tuple[str, bytes | None, bytes]] = []
    try:
        for i in range(n):
            msg = Message(
                id=new_spool_id(now),
                sender=sender,
                recipients=[EnvelopeAddress(f"user{i}", f"d{i % 1000}.example")],
                meta={"tenant": "t1", "campaign": "c1"},
                due=now + 3600,
            )
            batch.append((msg.id, BODY, json.dumps(msg.to_spool_meta()).encode()))
            if len(batch) == BATCH:
                await spool.store_many(batch)
                batch = []
            if i and i % 100_000 == 0:
                print(f"restart: prefilled {i:,}", file=sys.stderr, flush=True)
        if batch:
            await spool.store_many(batch)
    finally:
        await spool.close()
    return time.perf_counter() - started


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def restart(root: Path, kind: str, n: int) -> dict[str, float]:
    """Start the daemon on the prefilled spool; the timings of its enumeration."""
    env = {"KUMOQ_BENCH_SPOOL": kind, "KUMOQ_BENCH_LISTEN": "127.0.0.1:0"}
    daemon = KumoqProcess(root, POLICIES / "reception.lua", env)
    started = time.monotonic()
    daemon.start(timeout=max(120.0, n / 5000))
    try:
        done = daemon.first_line("spool enumeration complete")
        listening = daemon.first_line("smtp listener on")
        if done is None or listening is None:
            raise RuntimeError("the daemon did not log its enumeration:\n" +
                               "\n".join(daemon.stderr_lines[-20:]))  # fmt: skip
        line = next(x for x in daemon.stderr_lines if "spool enumeration complete" in x)
        if f"complete: {n} messages re-queued" not in line:
            raise RuntimeError(f"expected {n} messages: {line}")
        cpu = proc_cpu_seconds(daemon.pid)
        rss = _peak_rss_mb(daemon.pid)
    finally:
        rc = daemon.stop(timeout=120)
    return {
        "total_s": done - started,
        "enumerate_s": done - listening,
        "cpu_s": cpu,
        "peak_rss_mb": rss,
        "exit": float(rc),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=int(os.environ.get("RESTART_N", 1_000_000)))
    p.add_argument("--spool", choices=("RocksDB", "LocalDisk", "SQLite"), default="RocksDB")
    p.add_argument("--dir", default=None, help="scratch directory root (default: TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the prefilled spool")
    p.add_argument(
        "--prefilled", metavar="DIR", help="restart on a spool kept by --keep (no prefill)"
    )
    args = p.parse_args(argv)
    free = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"restart: n={args.n:,} spool={args.spool} nproc={os.cpu_count()} date={date}\n{free}")
    root = Path(args.prefilled or tempfile.mkdtemp(prefix="kumoq-restart-", dir=args.dir))
    keep = args.keep or bool(args.prefilled)
    try:
        if not args.prefilled:
            fill_s = asyncio.run(prefill(root, args.spool, args.n))
            print(f"restart: prefilled {args.n:,} messages ({args.spool}) in {fill_s:.1f} s",
                  flush=True)  # fmt: skip
        r = restart(root, args.spool, args.n)
    finally:
        if keep:
            print(f"restart: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"RESULT name=restart-{args.spool} n={args.n} total_s={r['total_s']:.2f} "
        f"enumerate_s={r['enumerate_s']:.2f} msgs_per_s={args.n / r['enumerate_s']:.0f} "
        f"cpu_s={r['cpu_s']:.1f} peak_rss_mb={r['peak_rss_mb']:.0f} exit={r['exit']:.0f}",
        flush=True,
    )
    return 0 if r["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
