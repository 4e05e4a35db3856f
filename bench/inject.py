"""``kumoq traffic-gen`` as the bench's load generator where ``smtp-source`` cannot be one.

Owns the ``kumoq-inject-<kind>`` case of ``python -m bench.run --with-inject``: kumoq under
``bench/policies/inject.lua`` (an HTTP listener on 127.0.0.1:0 beside bench_init's ESMTP
listener, delivery to maildir as ``e2e.lua``), loaded over ``POST /api/inject/v1`` by

    python -m kumoq traffic-gen --http http://127.0.0.1:PORT --count N --concurrency CONC
                                --batch BATCH --size SIZE --quiet --json

(PORT read from the daemon's ``http listener on`` line), timed until N files are in
``maildir/new`` and measured as ``bench.e2e.run_kumoq_case`` measures every kumoq case: the
daemon's CPU from ``/proc``, the client's from ``wait4`` rusage.

Run alone, it compares the clients' own CPU on one spool kind (``docs/benchmarks.md``, "Load
generators"):

    python -m bench.inject [--n N] [--conc C] [--size S] [--batch B] [--spool KIND] [--keep]

runs ``kumoq-e2e-<kind>`` under ``smtp-source`` (``-c``: a connection per message), the same
under ``traffic-gen --target`` (``--per-connection 1``: the same load), and
``kumoq-inject-<kind>``, once each, and prints their RESULT lines and the client's CPU per
message. The options fall back to N, CONC, SIZE, BATCH and SPOOL in the environment.

Imports bench.e2e and the standard library; only bench.run imports this.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.e2e import (
    FROM,
    HOST,
    SMTP_SOURCE,
    KumoqProcess,
    Load,
    RunResult,
    StartClient,
    run_kumoq_case,
    wait_for_quiet,
)

__all__ = [
    "DEFAULT_BATCH",
    "INJECT_POLICY",
    "client_ms_per_msg",
    "run_inject_case",
    "traffic_gen_http",
    "traffic_gen_smtp",
]

INJECT_POLICY = "inject"  # bench/policies/inject.lua
DEFAULT_BATCH = 100  # recipients per POST: traffic-gen's default
TRAFFIC_GEN = [sys.executable, "-m", "kumoq", "traffic-gen"]


def _popen(argv: list[str], out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as stdout, open(out.with_suffix(".err"), "wb") as stderr:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


def _shape(load: Load) -> list[str]:
    return ["--count", str(load.n), "--concurrency", str(load.conc), "--size", str(load.size)]


def traffic_gen_http(load: Load, batch: int = DEFAULT_BATCH) -> StartClient:
    """``traffic-gen --http`` against the daemon's HTTP listener, ``batch`` recipients a POST."""

    def start(daemon: KumoqProcess, out: Path) -> subprocess.Popen[bytes]:
        if not daemon.http_port:
            raise RuntimeError("kumoq reported no 'http listener on' line")
        url = f"http://{HOST}:{daemon.http_port}"
        argv = [*TRAFFIC_GEN, "--http", url, *_shape(load), "--batch", str(batch)]
        return _popen([*argv, "--sender", FROM, "--quiet", "--json"], out)

    return start


def traffic_gen_smtp(load: Load) -> StartClient:
    """``traffic-gen --target`` with smtp-source's load: one connection per message."""

    def start(daemon: KumoqProcess, out: Path) -> subprocess.Popen[bytes]:
        argv = [*TRAFFIC_GEN, "--target", f"{HOST}:{daemon.port}", *_shape(load)]
        argv += ["--per-connection", "1", "--sender", FROM, "--quiet", "--json"]
        return _popen(argv, out)

    return start


def run_inject_case(
    name: str, spool_kind: str, load: Load, *, batch: int = DEFAULT_BATCH, root: str | None = None
) -> RunResult:
    """One ``kumoq-inject-<kind>`` run: HTTP injection -> spool (fsync) -> maildir."""
    client = traffic_gen_http(load, batch)
    return run_kumoq_case(
        name, INJECT_POLICY, spool_kind, load, deliver=True, root=root, client=client
    )


def client_ms_per_msg(result: RunResult) -> float:
    """The load generator's CPU (wait4 rusage) per message, in ms."""
    return result.source_cpu_s / result.n * 1000.0


# -- python -m bench.inject: the clients side by side ---------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m bench.inject", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=int(env("N", 2000)), help="messages per run")
    p.add_argument("--conc", type=int, default=int(env("CONC", 20)), help="parallel sessions")
    p.add_argument("--size", type=int, default=int(env("SIZE", 2048)), help="message bytes")
    p.add_argument(
        "--batch", type=int, default=int(env("BATCH", DEFAULT_BATCH)), help="recipients a POST"
    )
    p.add_argument(
        "--spool", choices=("SQLite", "LocalDisk", "RocksDB"), default=env("SPOOL", "RocksDB")
    )
    p.add_argument("--timeout", type=float, default=600.0, help="bound per run (s)")
    p.add_argument("--max-busy", type=float, default=15.0, help="wait for a quiet machine (%%)")
    p.add_argument("--dir", default=None, help="scratch directory root (default: TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directories")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = Load(n=args.n, conc=args.conc, size=args.size, timeout=args.timeout)
    kind = args.spool
    print(f"bench.inject: N={load.n} CONC={load.conc} SIZE={load.size} BATCH={args.batch} "
          f"spool={kind} nproc={os.cpu_count()} date={time.strftime('%Y-%m-%d %H:%M %Z')}\n",
          flush=True)  # fmt: skip
    runs: list[tuple[str, str, StartClient | None]] = []
    if os.access(SMTP_SOURCE, os.X_OK):
        runs.append((f"kumoq-e2e-{kind}", "smtp-source -c (SMTP)", None))
    else:
        print(f"bench.inject: {SMTP_SOURCE} is missing: no smtp-source run", file=sys.stderr)
    runs.append(
        (f"kumoq-e2e-{kind}", "traffic-gen --per-connection 1 (SMTP)", traffic_gen_smtp(load))
    )
    runs.append((f"kumoq-inject-{kind}", f"traffic-gen --batch {args.batch} (HTTP)", None))
    root = Path(tempfile.mkdtemp(prefix="kumoq-bench-", dir=args.dir))
    results: list[tuple[str, RunResult]] = []
    try:
        for name, client_name, client in runs:
            busy = wait_for_quiet(args.max_busy)
            if busy > args.max_busy:
                print(f"bench.inject: the machine is {busy:.0f}% busy", file=sys.stderr)
            if name.startswith("kumoq-inject-"):
                r = run_inject_case(name, kind, load, batch=args.batch, root=str(root))
            else:
                r = run_kumoq_case(name, "e2e", kind, load, deliver=True, root=str(root),
                                   client=client)  # fmt: skip
            print(r.result_line(), flush=True)
            results.append((client_name, r))
    finally:
        if args.keep:
            print(f"bench.inject: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("\n| case | client | client CPU s | client ms/msg | MTA ms/msg | msgs/s | status |")
    print("|---|---|---:|---:|---:|---:|---|")
    for client_name, r in results:
        print(f"| {r.name} | {client_name} | {r.source_cpu_s:.2f} | {client_ms_per_msg(r):.3f} "
              f"| {r.cpu_ms_per_msg:.2f} | {r.e2e_mps or 0:.0f} | {r.status} |")  # fmt: skip
    return 0 if all(r.status == "ok" for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
