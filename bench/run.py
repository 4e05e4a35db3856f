"""``make bench``: kumoq's end-to-end (maildir and relay) and reception-only msgs/s under
Postfix's ``smtp-source``.

    python -m bench.run [--n N] [--conc C] [--size S] [--repeat R]
                        [--spool SQLite|LocalDisk|RocksDB|both|all]
                        [--only e2e|reception|relay] [--with-postfix] [--with-haraka]
                        [--with-spool-bench] [--cprofile FILE] [--keep]

Each option falls back to an environment variable (N, CONC, SIZE, REPEAT, SPOOL,
WITH_POSTFIX=1, WITH_HARAKA=1, WITH_SPOOL_BENCH=1), so ``make bench N=10000 WITH_POSTFIX=1``
works.

Cases, each run REPEAT times (interleaved), each run in a fresh directory (a fresh spool and
maildir) under one scratch root that is removed at the end:

- ``kumoq-e2e-<kind>``: SMTP -> spool (fsync on, group commit) -> maildir
  (``bench/policies/e2e.lua``); timed until N files are in ``maildir/new``;
- ``kumoq-reception-<kind>``: SMTP -> spool, nothing delivered during the run
  (``bench/policies/reception.lua`` schedules the first attempt an hour ahead); timed until
  smtp-source has exited, i.e. every message was acknowledged after its fsync;
- ``kumoq-relay-<kind>``: SMTP -> spool (fsync on) -> SMTP client -> ``smtp-sink`` on
  127.0.0.1 (``bench/policies/relay.lua``); timed until the sink's ``-c`` counter reaches N,
  as the peers count;
- ``postfix-maildir`` (``--with-postfix``, beside the maildir case):
  ``../shared/peers/postfix_relay.sh maildir`` with the same N/CONC/SIZE, its RESULT line
  parsed;
- ``postfix-smtp`` (``--with-postfix``, beside the relay case): ``postfix_relay.sh smtp``;
- ``haraka-queue`` (``--with-haraka``, beside the relay case): ``haraka_relay.sh queue``;
- ``--with-spool-bench``: ``python -m bench.spool`` (LocalDisk vs SQLite), its table printed.

The load is the peers' (``smtp-source -c -m N -s CONC -l SIZE -f from@example.com -t
to@example.net 127.0.0.1:PORT``: a new connection per message). Prints one RESULT line per
run and a markdown table of the median runs (the median by the case's headline figure).

Owns bench/run.py only; imports bench.e2e and the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.e2e import SMTP_SOURCE, Load, RunResult, run_kumoq_case, wait_for_quiet

# ../shared/peers next to the repository (PEERS_DIR overrides).
PEERS = Path(os.environ.get("PEERS_DIR", Path(__file__).resolve().parents[2] / "shared" / "peers"))
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


# -- Postfix through the peers' script -------------------------------------------------------

_RESULT = re.compile(r"^RESULT (.*)$", re.M)


def parse_result_line(text: str) -> dict[str, str]:
    """The key=value pairs of the last ``RESULT ...`` line in ``text`` (empty if none)."""
    found = _RESULT.findall(text)
    if not found:
        return {}
    return dict(kv.split("=", 1) for kv in found[-1].split() if "=" in kv)


def _num(fields: dict[str, str], key: str) -> float:
    try:
        return float(fields.get(key, "nan"))
    except ValueError:
        return float("nan")


# case name -> (peers' script, its mode argument)
PEER_CASES = {
    "postfix-maildir": ("postfix_relay.sh", "maildir"),
    "postfix-smtp": ("postfix_relay.sh", "smtp"),
    "haraka-queue": ("haraka_relay.sh", "queue"),
}


def run_postfix(load: Load, run_dir: Path, case: str = "postfix-maildir") -> RunResult | None:
    """One run of a peer's script (``PEER_CASES[case]``, by default ``postfix_relay.sh
    maildir``) with the same load; None if it could not run.

    ``run_dir`` (the script's RUN_DIR) must not exist yet: a fresh one per run means the script
    deletes no earlier run's files just before it starts, as the kumoq runs do not either.
    """
    script_name, mode = PEER_CASES[case]
    script = PEERS / script_name
    if os.geteuid() != 0:
        print(f"bench: {case} needs root (the peers' scripts start the MTA)", file=sys.stderr)
        return None
    if not script.is_file() or (case.startswith("postfix") and shutil.which("postfix") is None):
        print(f"bench: cannot run {case}: {script} or `postfix` missing", file=sys.stderr)
        return None
    env = {**os.environ, "N": str(load.n), "CONC": str(load.conc), "SIZE": str(load.size)}
    env["TIMEOUT"] = str(int(load.timeout))
    env["RUN_DIR"] = str(run_dir)
    try:
        proc = subprocess.run(
            ["bash", str(script), mode],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=load.timeout + 300,
        )
    except subprocess.TimeoutExpired:
        print(f"bench: {script_name} did not finish in time", file=sys.stderr)
        return None
    for line in proc.stderr.splitlines():
        if any(w in line for w in ("maillog:", "haraka.log:", "WARNING", "ERROR")):
            print(f"bench: {script_name}: {line}", file=sys.stderr)
    fields = parse_result_line(proc.stdout)
    if not fields:
        print(f"bench: {script_name} printed no RESULT line:\n{proc.stderr[-2000:]}")
        return None
    n = int(fields.get("n", load.n))
    delivered = int(_num(fields, "delivered")) if fields.get("delivered") else 0
    return RunResult(
        name=case,
        n=n,
        inject_s=_num(fields, "inject_s"),
        e2e_s=_num(fields, "e2e_s"),
        accepted=n,
        delivered=delivered,
        mta_cpu_s=_num(fields, "mta_cpu_s"),
        source_cpu_s=_num(fields, "source_cpu_s"),
        sys_busy_pct=_num(fields, "sys_busy_pct"),
        status=fields.get("status", "?"),
        window_s=_num(fields, "e2e_s"),
        sink_cpu_s=_num(fields, "sink_cpu_s") if fields.get("sink_cpu_s") else 0.0,
    )


def _postfix_alive(run_dir: Path) -> bool:
    """Is the private Postfix instance of ``run_dir`` still running (so keep its files)?"""
    for pid_file in run_dir.glob("postfix-*/spool/pid/master.pid"):
        try:
            pid = int(pid_file.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            continue
        if comm == "master":
            return True
    return False


def remove_scratch(root: Path) -> None:
    """Delete the runs' directories, except a Postfix instance's that is still running."""
    for child in root.iterdir():
        if child.name.startswith("postfix-") and _postfix_alive(child):
            print(f"bench: Postfix still running in {child}; left in place", file=sys.stderr)
            continue
        shutil.rmtree(child, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.rmdir()


# -- output ---------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "–" if value is None or value != value else format(value, spec)


def markdown_table(cases: list[Case]) -> str:
    head = (
        "| case | median msgs/s | runs (msgs/s) | inject s | end-to-end s | inject msgs/s "
        "| MTA CPU s (ms/msg) | smtp-source CPU s | sink CPU s | all-CPU busy % | other CPU s |\n"
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
        default=os.environ.get("SPOOL", "SQLite"),
        help="spool kind for the kumoq cases (both: SQLite and LocalDisk; all: the three)",
    )
    p.add_argument(
        "--only",
        choices=("e2e", "reception", "relay"),
        help="run only one kumoq case (with its peers: --with-postfix runs postfix_relay.sh "
        "maildir beside e2e and reception, postfix_relay.sh smtp beside relay)",
    )
    p.add_argument("--no-kumoq", action="store_true", help="skip the kumoq cases")
    p.add_argument(
        "--with-postfix",
        action="store_true",
        default=_env_flag("WITH_POSTFIX"),
        help="also run ../shared/peers/postfix_relay.sh (maildir and smtp)",
    )
    p.add_argument(
        "--with-haraka",
        action="store_true",
        default=_env_flag("WITH_HARAKA"),
        help="also run ../shared/peers/haraka_relay.sh queue beside the relay case",
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
    return p.parse_args(argv)


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
                result = run_postfix(load, root / f"{case.name}-{i + 1}", case.name)
            else:
                kind = case.name.rsplit("-", 1)[1]
                policy = case.name.split("-")[1]  # e2e, reception or relay
                deliver = policy != "reception"
                result = run_kumoq_case(
                    case.name, policy, kind, load, deliver=deliver, root=str(root)
                )
            if result is None:
                failed += 1
                continue
            failed += result.status != "ok"
            case.runs.append(result)
            print(result.result_line(), flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.access(SMTP_SOURCE, os.X_OK):
        print(INSTALL_HINT, file=sys.stderr)
        return 2
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

    cases: list[Case] = []
    if not args.no_kumoq:
        for kind in kinds:
            if args.only in (None, "e2e"):
                what = f"kumoq -> spool ({kind}, fsync) -> maildir, end-to-end"
                cases.append(Case(f"kumoq-e2e-{kind}", what, [], "e2e"))
            if args.only in (None, "reception"):
                what = f"kumoq -> spool ({kind}, fsync), reception only"
                cases.append(Case(f"kumoq-reception-{kind}", what, [], "inject"))
            if args.only in (None, "relay"):
                what = f"kumoq -> spool ({kind}, fsync) -> SMTP -> smtp-sink, end-to-end"
                cases.append(Case(f"kumoq-relay-{kind}", what, [], "e2e"))
    if args.with_postfix and args.only != "relay":
        what = "Postfix -> disk queue -> virtual(8) Maildir, end-to-end"
        cases.append(Case("postfix-maildir", what, [], "e2e"))
    if args.with_postfix and args.only in (None, "relay"):
        what = "Postfix -> disk queue (fsync) -> smtp(8) -> smtp-sink, end-to-end"
        cases.append(Case("postfix-smtp", what, [], "e2e"))
    if args.with_haraka and args.only in (None, "relay"):
        what = "Haraka -> outbound queue (no fsync) -> smtp-sink, end-to-end"
        cases.append(Case("haraka-queue", what, [], "e2e"))

    # One scratch root for the whole sitting, removed only at the end: deleting a run's files
    # between runs would slow the next run's file creations (see docs/benchmarks.md).
    root = Path(tempfile.mkdtemp(prefix="kumoq-bench-", dir=args.dir))
    root.chmod(0o755)  # Postfix's virtual(8) runs as nobody and must reach its maildir
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
