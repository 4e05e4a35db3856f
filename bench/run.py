"""``make bench``: kumoq's end-to-end (maildir and relay) and reception-only msgs/s under
Postfix's ``smtp-source``, beside Postfix and Haraka on the same load.

    python -m bench.run [--n N] [--conc C] [--size S] [--repeat R]
                        [--spool SQLite|LocalDisk|RocksDB|both|all]
                        [--only e2e|reception|relay|inject] [--with-postfix] [--with-haraka]
                        [--with-inject] [--batch B] [--with-spool-bench] [--cprofile FILE]
                        [--keep] [--no-netns]

Each option falls back to an environment variable (N, CONC, SIZE, REPEAT, SPOOL, BATCH,
WITH_POSTFIX=1, WITH_HARAKA=1, WITH_INJECT=1, WITH_SPOOL_BENCH=1), so ``make bench N=10000
REPEAT=5`` works (``make bench`` passes ``--with-postfix --with-haraka --with-dkim
--with-inject``).

Cases, each run REPEAT times (interleaved), each run in a fresh directory (a fresh spool and
maildir) under one scratch root that is removed at the end:

- ``kumoq-e2e-<kind>``: SMTP -> spool (fsync on, group commit) -> maildir
  (``bench/policies/e2e.lua``); timed until N files are in ``maildir/new``;
- ``kumoq-reception-<kind>``: SMTP -> spool, nothing delivered during the run
  (``bench/policies/reception.lua`` schedules the first attempt an hour ahead); timed until
  smtp-source has exited, i.e. every message was acknowledged after its fsync;
- ``kumoq-relay-<kind>``: SMTP -> spool (fsync on) -> SMTP client -> ``smtp-sink`` on
  127.0.0.1 (``bench/policies/relay.lua``); timed until the sink's ``-c`` counter reaches N;
- ``postfix-maildir`` (``--with-postfix``, beside the maildir case), ``postfix-smtp``
  (``--with-postfix``, beside the relay case) and ``haraka-queue`` (``--with-haraka``, beside
  the relay case): the peer MTAs, set up and measured by ``bench.peers``;
- ``kumoq-e2e.wN-<kind>``, ``kumoq-relay.wN-<kind>`` (``--workers N``): the same with
  ``kumoq serve --workers N`` on one port (SO_REUSEPORT); the MTA's CPU is the supervisor's
  and every worker's;
- ``kumoq-inject-<kind>`` (``--with-inject``): HTTP ``POST /api/inject/v1`` -> spool (fsync)
  -> maildir (``bench/policies/inject.lua``), loaded by ``kumoq traffic-gen --http`` with
  BATCH recipients a request, which smtp-source cannot do (``bench.inject``); timed until N
  files are in ``maildir/new``;
- ``--with-spool-bench``: ``python -m bench.spool`` (the spool kinds alone), its table printed.

The spool kind comes from ``KUMOQ_BENCH_SPOOL``. For ``LocalDisk`` the policies define their
spools exactly as KumoMTA's documentation does, without ``kind`` (``bench/policies/
bench_init.lua``): the policy a KumoMTA user copies.

As root, the whole bench re-executes itself in a private network namespace that has only
``lo`` (``unshare --net``), so kumoq, the peers, the sink and the load generator share one
loopback and nothing can leave the machine; ``--no-netns`` runs in the host's namespace.
Haraka is installed with npm before that (it needs the registry); when npm or the registry
is missing, the Haraka case is skipped with the reason.

The load is ``smtp-source -c -m N -s CONC -l SIZE -f from@example.com -t to@example.net
127.0.0.1:PORT``: a new connection per message (the client of every case but
``kumoq-inject-<kind>``). Prints one RESULT line per run and a markdown
table of the median runs (the median by the case's headline figure).

Owns bench/run.py only; imports bench.e2e, bench.inject, bench.peers and the standard
library.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.e2e import SMTP_SOURCE, Load, RunResult, run_kumoq_case, wait_for_quiet
from bench.inject import DEFAULT_BATCH, client_ms_per_msg, run_inject_case
from bench.peers import PEER_CASES, peer_unavailable, prepare_haraka, run_peer

IN_NETNS = "KUMOQ_BENCH_IN_NETNS"  # set by the re-execution inside the private namespace
INSTALL_HINT = (
    f"{SMTP_SOURCE} is missing: the load generator is Postfix's smtp-source. Install it with:\n"
    '  echo "postfix postfix/main_mailer_type select No configuration" '
    "| debconf-set-selections\n"
    "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix\n"
    "('No configuration' leaves the system Postfix unconfigured and stopped.)"
)


@dataclass(frozen=True, slots=True)
class Case:
    """One row of the table: its runs and which figure is the headline."""

    name: str
    what: str
    runs: list[RunResult]
    headline: str  # "e2e" or "inject"

    def figure(self, r: RunResult) -> float:
        value = r.e2e_mps if self.headline == "e2e" else r.inject_mps
        return value if value is not None else float("nan")

    def median_run(self) -> RunResult:
        ordered = sorted(self.runs, key=self.figure)
        return ordered[(len(ordered) - 1) // 2]


def remove_scratch(root: Path) -> None:
    """Delete the runs' directories (every MTA a run started has been stopped by then)."""
    for child in root.iterdir():
        shutil.rmtree(child, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.rmdir()


# -- the private network namespace ----------------------------------------------------------

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def bring_up_loopback() -> None:
    """``ip link set lo up``, without needing iproute2 (two ioctls)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def enter_netns(argv: list[str]) -> None:
    """Re-execute this bench in a private network namespace (root only); returns only when it
    does not (not root, ``unshare`` missing, or already inside)."""
    if os.environ.get(IN_NETNS) == "1":
        bring_up_loopback()
        print("bench: in a private network namespace (only lo)", file=sys.stderr, flush=True)
        return
    if os.geteuid() != 0:
        print("bench: not root: running in the host's network namespace", file=sys.stderr)
        return
    unshare = shutil.which("unshare")
    if unshare is None:
        print("bench: unshare (util-linux) is missing: running in the host's network "
              "namespace", file=sys.stderr)  # fmt: skip
        return
    sys.stdout.flush()
    env = {**os.environ, IN_NETNS: "1"}
    os.execve(unshare, [unshare, "--net", "--", sys.executable, "-m", "bench.run", *argv], env)


# -- output ---------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "–" if value is None or value != value else format(value, spec)


def markdown_table(cases: list[Case]) -> str:
    head = (
        "| case | median msgs/s | runs (msgs/s) | inject s | end-to-end s | inject msgs/s "
        "| MTA CPU s (ms/msg) | client CPU s | sink CPU s | all-CPU busy % | other CPU s |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for case in cases:
        if not case.runs:
            continue
        m = case.median_run()
        runs = ", ".join(_fmt(case.figure(r)) for r in case.runs)
        rows.append(
            f"| {case.what} | **{_fmt(case.figure(m))}** | {runs} | {m.inject_s:.2f} "
            f"| {_fmt(m.e2e_s, '.2f')} | {_fmt(m.inject_mps)} "
            f"| {m.mta_cpu_s:.1f} ({m.cpu_ms_per_msg:.2f}) | {m.source_cpu_s:.2f} "
            f"| {m.sink_cpu_s:.2f} | {_fmt(m.sys_busy_pct)} | {m.other_cpu_s:.1f} |"
        )
    return "\n".join(rows)


def ratios(cases: list[Case]) -> list[str]:
    """kumoq's e2e cases against postfix-maildir, its relay cases against postfix-smtp."""
    by_name = {c.name: c for c in cases if c.runs}
    lines = []
    for prefix, peer in (("kumoq-e2e", "postfix-maildir"), ("kumoq-relay", "postfix-smtp")):
        postfix = by_name.get(peer)
        if postfix is None:
            continue
        pf = postfix.figure(postfix.median_run())
        pf_cpu = postfix.median_run().cpu_ms_per_msg
        for case in cases:
            if case.name.startswith(prefix) and case.runs:
                m = case.median_run()
                lines.append(
                    f"{case.name} / {peer}: {case.figure(m) / pf:.2f}x msgs/s "
                    f"({case.figure(m):.0f} vs {pf:.0f}); CPU per message "
                    f"{m.cpu_ms_per_msg:.2f} ms vs {pf_cpu:.2f} ms"
                )
    for case in cases:
        e2e = by_name.get(case.name.replace("-inject-", "-e2e-"))
        if case.name.startswith("kumoq-inject-") and case.runs and e2e is not None:
            m, e = case.median_run(), e2e.median_run()
            lines.append(
                f"{case.name} / {e2e.name}: {case.figure(m) / e2e.figure(e):.2f}x msgs/s "
                f"({case.figure(m):.0f} vs {e2e.figure(e):.0f}); MTA CPU per message "
                f"{m.cpu_ms_per_msg:.2f} ms vs {e.cpu_ms_per_msg:.2f} ms; client CPU per "
                f"message {client_ms_per_msg(m):.2f} ms vs {client_ms_per_msg(e):.2f} ms"
            )
    for case in cases:
        plain = by_name.get(case.name.replace("-relay_dkim-", "-relay-"))
        if "-relay_dkim-" in case.name and case.runs and plain is not None:
            m, p = case.median_run(), plain.median_run()
            lines.append(
                f"{case.name} / {plain.name}: {case.figure(m) / plain.figure(p):.2f}x msgs/s "
                f"({case.figure(m):.0f} vs {plain.figure(p):.0f}); signing adds "
                f"{m.cpu_ms_per_msg - p.cpu_ms_per_msg:.2f} ms of CPU per message"
            )
    for case in cases:
        if case.runs:
            m = case.median_run()
            lines.append(
                f"{case.name}: MTA CPU {m.mta_cpu_s / m.n * 1000:.2f} s per 1,000 messages"
            )
    return lines


def machine() -> str:
    free = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout.strip()
    return f"nproc={os.cpu_count()} date={time.strftime('%Y-%m-%d %H:%M %Z')}\n{free}"


# -- main -----------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "no", "false")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=_env_int("N", 5000), help="messages per run")
    p.add_argument("--conc", type=int, default=_env_int("CONC", 20), help="parallel sessions")
    p.add_argument("--size", type=int, default=_env_int("SIZE", 2048), help="body bytes")
    p.add_argument("--repeat", type=int, default=_env_int("REPEAT", 3), help="runs per case")
    p.add_argument("--timeout", type=float, default=600.0, help="bound per run (s)")
    p.add_argument(
        "--spool",
        choices=("SQLite", "LocalDisk", "RocksDB", "both", "all"),
        default=os.environ.get("SPOOL", "all"),
        help="spool kind for the kumoq cases (both: SQLite and LocalDisk; all: the three)",
    )
    p.add_argument(
        "--only",
        choices=("e2e", "reception", "relay", "inject"),
        help="run only one kumoq case (with its peers: --with-postfix runs postfix-maildir "
        "beside e2e and reception, postfix-smtp beside relay)",
    )
    p.add_argument("--no-kumoq", action="store_true", help="skip the kumoq cases")
    p.add_argument(
        "--workers",
        type=int,
        default=_env_int("WORKERS", 1),
        help="beside each e2e and relay case, the same with `kumoq serve --workers N` "
        "(kumoq-relay.wN-<kind>)",
    )
    p.add_argument(
        "--with-postfix",
        action="store_true",
        default=_env_flag("WITH_POSTFIX"),
        help="also run Postfix (postfix-maildir and postfix-smtp; root)",
    )
    p.add_argument(
        "--with-haraka",
        action="store_true",
        default=_env_flag("WITH_HARAKA"),
        help="also run Haraka's outbound queue beside the relay case (root; npm installs it)",
    )
    p.add_argument(
        "--with-dkim",
        action="store_true",
        default=_env_flag("WITH_DKIM"),
        help="beside each relay case, the same with DKIM signing on (policies/relay_dkim.lua)",
    )
    p.add_argument(
        "--with-inject",
        action="store_true",
        default=_env_flag("WITH_INJECT"),
        help="also kumoq-inject-<kind>: HTTP injection by kumoq traffic-gen -> maildir",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=_env_int("BATCH", DEFAULT_BATCH),
        help="recipients per HTTP request in kumoq-inject-<kind>",
    )
    p.add_argument("--with-spool-bench", action="store_true", default=_env_flag("WITH_SPOOL_BENCH"))
    p.add_argument(
        "--cprofile",
        metavar="FILE",
        help="run one e2e case with the daemon under cProfile, write FILE, print the top costs",
    )
    p.add_argument(
        "--max-busy",
        type=float,
        default=15.0,
        help="before each run, wait up to 120 s until all CPUs are at most this %% busy",
    )
    p.add_argument("--dir", default=None, help="scratch directory root (default: TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directories")
    p.add_argument(
        "--no-netns",
        action="store_true",
        help="stay in the host's network namespace (as root the bench enters a private one)",
    )
    return p.parse_args(argv)


def kumoq_cases(args: argparse.Namespace, kinds: list[str]) -> list[Case]:
    """The kumoq cases the options ask for, for each spool kind (no runs yet)."""
    cases: list[Case] = []
    if args.no_kumoq:
        return cases
    for kind in kinds:
        if args.only in (None, "e2e"):
            what = f"kumoq -> spool ({kind}, fsync) -> maildir, end-to-end"
            cases.append(Case(f"kumoq-e2e-{kind}", what, [], "e2e"))
            if args.workers > 1:
                what = f"kumoq --workers {args.workers}, as kumoq-e2e-{kind}"
                cases.append(Case(f"kumoq-e2e.w{args.workers}-{kind}", what, [], "e2e"))
        if args.only in (None, "reception"):
            what = f"kumoq -> spool ({kind}, fsync), reception only"
            cases.append(Case(f"kumoq-reception-{kind}", what, [], "inject"))
        if args.only in (None, "relay"):
            what = f"kumoq -> spool ({kind}, fsync) -> SMTP -> smtp-sink, end-to-end"
            cases.append(Case(f"kumoq-relay-{kind}", what, [], "e2e"))
            if args.workers > 1:
                what = f"kumoq --workers {args.workers}, as kumoq-relay-{kind}"
                cases.append(Case(f"kumoq-relay.w{args.workers}-{kind}", what, [], "e2e"))
            if args.with_dkim:
                what = f"kumoq -> DKIM (RSA-2048) -> spool ({kind}, fsync) -> SMTP -> smtp-sink"
                cases.append(Case(f"kumoq-relay_dkim-{kind}", what, [], "e2e"))
        if (args.with_inject and args.only is None) or args.only == "inject":
            what = f"kumoq HTTP inject (batch {args.batch}) -> spool ({kind}, fsync) -> maildir"
            cases.append(Case(f"kumoq-inject-{kind}", what, [], "e2e"))
    return cases


def _profile(args: argparse.Namespace, load: Load, kind: str) -> None:
    import pstats

    out = str(Path(args.cprofile).resolve())
    prefix = [sys.executable, "-m", "cProfile", "-o", out]
    root = Path(tempfile.mkdtemp(prefix="kumoq-bench-", dir=args.dir))
    try:
        policy = "relay" if args.only == "relay" else "e2e"
        r = run_kumoq_case(
            f"kumoq-{policy}-cprofile",
            policy,
            kind,
            load,
            deliver=True,
            root=str(root),
            argv_prefix=prefix,
        )
    finally:
        if not args.keep:
            remove_scratch(root)
    print(r.result_line(), flush=True)
    stats = pstats.Stats(out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


def _run_cases(args: argparse.Namespace, load: Load, cases: list[Case], root: Path) -> int:
    """Interleave the cases (one run of each, REPEAT times) so drift hits them all alike."""
    failed = 0
    for i in range(args.repeat):
        for case in cases:
            busy = wait_for_quiet(args.max_busy)
            if busy > args.max_busy:
                print(f"bench: the machine is {busy:.0f}% busy before {case.name}", file=sys.stderr)
            result: RunResult | None
            if case.name in PEER_CASES:
                result = run_peer(case.name, load, root / f"{case.name}-{i + 1}")
            elif case.name.startswith("kumoq-inject-"):
                kind = case.name.rsplit("-", 1)[1]
                result = run_inject_case(case.name, kind, load, batch=args.batch, root=str(root))
            else:
                kind = case.name.rsplit("-", 1)[1]
                # e2e, reception, relay or relay_dkim, and ".wN" for N workers
                policy, _, workers = case.name.split("-")[1].partition(".w")
                deliver = policy != "reception"
                result = run_kumoq_case(
                    case.name,
                    policy,
                    kind,
                    load,
                    deliver=deliver,
                    root=str(root),
                    workers=int(workers or 1),
                )
            if result is None:
                failed += 1
                continue
            failed += result.status != "ok"
            case.runs.append(result)
            print(result.result_line(), flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not os.access(SMTP_SOURCE, os.X_OK):
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    if args.with_haraka and os.environ.get(IN_NETNS) != "1":
        why = prepare_haraka()  # npm needs the registry: before the private namespace
        if why is not None:
            print(f"bench: skipping Haraka: {why}", file=sys.stderr, flush=True)
    if not args.no_netns:
        enter_netns(argv)
    load = Load(n=args.n, conc=args.conc, size=args.size, timeout=args.timeout)
    kinds = {"both": ["SQLite", "LocalDisk"], "all": ["SQLite", "LocalDisk", "RocksDB"]}.get(
        args.spool, [args.spool]
    )
    print(
        f"bench: N={load.n} CONC={load.conc} SIZE={load.size} REPEAT={args.repeat} "
        f"spool={','.join(kinds)}\n{machine()}\n",
        flush=True,
    )
    if args.cprofile:
        _profile(args, load, kinds[0])
        return 0

    cases = kumoq_cases(args, kinds)
    peers = []
    if args.with_postfix and args.only != "relay":
        peers.append("postfix-maildir")
    if args.with_postfix and args.only in (None, "relay"):
        peers.append("postfix-smtp")
    if args.with_haraka and args.only in (None, "relay"):
        peers.append("haraka-queue")
    for name in peers:
        why = peer_unavailable(name)
        if why is None:
            cases.append(Case(name, PEER_CASES[name], [], "e2e"))
        else:
            print(f"bench: skipping {name}: {why}", file=sys.stderr, flush=True)

    # One scratch root for the whole sitting, removed only at the end: deleting a run's files
    # between runs would slow the next run's file creations (see docs/benchmarks.md).
    root = Path(tempfile.mkdtemp(prefix="kumoq-bench-", dir=args.dir))
    root.chmod(0o755)  # Postfix's virtual(8) runs as nobody and must reach its maildir
    print(f"bench: cases {', '.join(c.name for c in cases)}", file=sys.stderr, flush=True)
    try:
        failed = _run_cases(args, load, cases, root)
    finally:
        if args.keep:
            print(f"bench: kept {root}", file=sys.stderr)
        else:
            remove_scratch(root)

    print(f"\nMedian of {args.repeat} runs (N={load.n}, CONC={load.conc}, SIZE={load.size}):\n")
    print(markdown_table(cases))
    for line in ratios(cases):
        print("\n" + line)

    if args.with_spool_bench:
        print("\npython -m bench.spool\n", flush=True)
        spool = subprocess.run([sys.executable, "-m", "bench.spool"], timeout=1800, check=False)
        failed += spool.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
