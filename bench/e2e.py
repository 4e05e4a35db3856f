"""One end-to-end benchmark run of kumoq, driven by Postfix's ``smtp-source``.

Owns: starting ``python -m kumoq serve`` under a bench policy (``bench/policies/*.lua``) in a
scratch directory, running ``smtp-source`` against it (the same command line for every MTA,
``start_source``), and measuring one run: inject time, end-to-end time (until N files are in
``maildir/new``, or for the relay policy until the ``smtp-sink`` it starts has counted N), the
daemon's CPU (utime+stime from ``/proc/<pid>/stat``, all its threads), smtp-source's CPU
(``wait4`` rusage) and the busy share of all CPUs (``/proc/stat``). Every wait is bounded;
the daemon is stopped with SIGTERM. The peer MTAs (bench.peers) use the same load, sink and
measurements. ``run_kumoq_case(client=...)`` swaps smtp-source for another load generator
(``StartClient``; bench.inject's ``kumoq traffic-gen``), measured the same way.

Imports only the standard library and ``kumoq.logs.tail`` (to count log records after a run);
nothing in ``kumoq`` imports this.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.kumoq_process import KumoqProcess
from kumoq.logs.tail import read_all_records

__all__ = [
    "CLK_TCK",
    "FROM",
    "HOST",
    "POLICIES",
    "SMTP_SINK",
    "SMTP_SOURCE",
    "TO",
    "KumoqProcess",
    "Load",
    "RunResult",
    "Sink",
    "SourceResult",
    "StartClient",
    "busy_pct",
    "count_files",
    "free_port",
    "proc_cpu_seconds",
    "run_kumoq_case",
    "start_source",
    "sys_cpu",
    "wait_count",
    "wait_for_quiet",
    "wait_source",
]

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
POLICIES = Path(__file__).resolve().parent / "policies"
HOST = "127.0.0.1"
# The envelope of every message smtp-source sends.
FROM = "from@example.com"
TO = "to@example.net"
POLL = 0.1  # counter polling interval (s): the resolution of the end-to-end time
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class Load:
    """The load shape: smtp-source ``-m N -s CONC -l SIZE``, one connection per message."""

    n: int = 5000
    conc: int = 20
    size: int = 2048
    timeout: float = 600.0  # bound on inject + delivery


@dataclass(frozen=True, slots=True)
class RunResult:
    """One measured run. ``e2e_s`` is None for reception-only runs."""

    name: str
    n: int
    inject_s: float
    e2e_s: float | None
    accepted: int  # Reception records
    delivered: int  # files in maildir/new
    mta_cpu_s: float
    source_cpu_s: float
    sys_busy_pct: float
    status: str
    window_s: float  # the span sys_busy_pct covers
    sink_cpu_s: float = 0.0  # smtp-sink's CPU (relay runs only)

    @property
    def other_cpu_s(self) -> float:
        """Busy CPU time of the whole machine in the window not charged to MTA or source.

        Kernel work done outside both (softirqs, writeback) and anything else running on
        the machine; a large value flags a run disturbed by other load.
        """
        busy = self.sys_busy_pct / 100.0 * NCPU * self.window_s
        return busy - self.mta_cpu_s - self.source_cpu_s - self.sink_cpu_s

    @property
    def inject_mps(self) -> float:
        return self.n / self.inject_s

    @property
    def e2e_mps(self) -> float | None:
        return None if self.e2e_s is None else self.delivered / self.e2e_s

    @property
    def cpu_ms_per_msg(self) -> float:
        return self.mta_cpu_s / self.n * 1000.0

    def result_line(self) -> str:
        e2e = "nan" if self.e2e_s is None else f"{self.e2e_s:.3f}"
        e2e_mps = "nan" if self.e2e_mps is None else f"{self.e2e_mps:.1f}"
        return (
            f"RESULT name={self.name} n={self.n} inject_s={self.inject_s:.3f} e2e_s={e2e} "
            f"inject_mps={self.inject_mps:.1f} e2e_mps={e2e_mps} accepted={self.accepted} "
            f"delivered={self.delivered} mta_cpu_s={self.mta_cpu_s:.2f} "
            f"source_cpu_s={self.source_cpu_s:.2f} sink_cpu_s={self.sink_cpu_s:.2f} "
            f"sys_busy_pct={self.sys_busy_pct:.0f} "
            f"other_cpu_s={self.other_cpu_s:.2f} status={self.status}"
        )


# -- /proc accounting -----------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds; 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sys_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs (user, nice, system, irq, softirq and steal are busy)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy, busy + v[3] + v[4]


def busy_pct(a: tuple[int, int], b: tuple[int, int]) -> float:
    total = b[1] - a[1]
    return 100.0 * (b[0] - a[0]) / total if total > 0 else float("nan")


def wait_for_quiet(max_busy_pct: float = 15.0, timeout: float = 120.0) -> float:
    """Wait (bounded) until the machine is quiet; return the last 1 s busy % of all CPUs.

    The machine is shared: a run that starts while something else is busy measures both.
    """
    deadline = time.monotonic() + timeout
    while True:
        a = sys_cpu()
        time.sleep(1.0)
        busy = busy_pct(a, sys_cpu())
        if busy <= max_busy_pct or time.monotonic() > deadline:
            return busy


# -- the daemon -----------------------------------------------------------------------------


# -- the final destination of relay runs ----------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Sink:
    """Postfix's ``smtp-sink`` on 127.0.0.1, the final destination of every relay run.

    ``smtp-sink -c -u nobody 127.0.0.1:PORT 1024``: ``-c`` writes running counters
    (``sess= quit= mesg=``) to stdout; ``count`` reads the last ``mesg=N``. Stopped with
    SIGTERM by pid.
    """

    def __init__(self, workdir: Path) -> None:
        self.out = workdir / "sink.out"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> None:
        import socket

        for _ in range(5):
            self.port = free_port()
            argv = [SMTP_SINK, "-c"]
            if os.geteuid() == 0:
                argv += ["-u", "nobody"]  # required when started as root
            argv += [f"{HOST}:{self.port}", "1024"]
            with open(self.out, "wb") as out, open(self.out.with_suffix(".err"), "wb") as err:
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                with socket.socket() as s:
                    if s.connect_ex((HOST, self.port)) == 0:
                        # that connection shows up as sess=1 quit=0 mesg=0; harmless
                        return
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"smtp-sink did not start: {self.out.with_suffix('.err').read_text()}")

    def count(self) -> int:
        """Messages received so far: the last ``mesg=N`` counter in the output."""
        try:
            with open(self.out, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 120))
                tail = f.read().decode("ascii", "replace")
        except OSError:
            return 0
        m = re.findall(r"mesg=(\d+)", tail)
        return int(m[-1]) if m else 0

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- the load generator ---------------------------------------------------------------------

# Starts a load generator against a started daemon, its stdout to the path (stderr beside it).
StartClient = Callable[[KumoqProcess, Path], "subprocess.Popen[bytes]"]


@dataclass(frozen=True, slots=True)
class SourceResult:
    rc: int | None  # None: killed at the deadline
    end: float  # monotonic time it exited (or was killed)
    cpu_s: float


def start_source(load: Load, port: int, out: Path) -> subprocess.Popen[bytes]:
    # smtp-source -c -m N -s CONC -l SIZE -f FROM -t TO: a new connection per message
    argv = [SMTP_SOURCE, "-c", "-m", str(load.n), "-s", str(load.conc), "-l", str(load.size)]
    argv += ["-f", FROM, "-t", TO, f"{HOST}:{port}"]
    with open(out, "wb") as stdout, open(out.with_suffix(".err"), "wb") as stderr:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


def wait_source(proc: subprocess.Popen[bytes], deadline: float) -> SourceResult:
    """Reap smtp-source with wait4 (for its rusage), polling every 10 ms until ``deadline``."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        now = time.monotonic()
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return SourceResult(proc.returncode, now, usage.ru_utime + usage.ru_stime)
        if now > deadline:
            proc.kill()
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode = -9
            return SourceResult(None, now, usage.ru_utime + usage.ru_stime)
        time.sleep(0.01)


def count_files(path: Path) -> int:
    try:
        with os.scandir(path) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def wait_count(count_fn: Callable[[], int], n: int, deadline: float) -> tuple[int, float]:
    """Poll ``count_fn`` every POLL s until it reaches ``n`` or ``deadline``."""
    while True:
        count = count_fn()
        now = time.monotonic()
        if count >= n or now > deadline:
            return count, now
        time.sleep(POLL)


def cpu_of(pids: list[int]) -> float:
    """utime+stime of every process in ``pids`` (a supervisor and its workers)."""
    return sum(proc_cpu_seconds(pid) for pid in pids)


def _wait_idle(pids: list[int], timeout: float) -> float:
    """CPU seconds of ``pids`` once they stop using CPU (two equal samples 0.2 s apart)."""
    deadline = time.monotonic() + timeout
    last = cpu_of(pids)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_of(pids)
        if now == last:
            return now
        last = now
    return last


# -- one run --------------------------------------------------------------------------------


def write_dkim_key(workdir: Path) -> Path:
    """A new 2048-bit RSA key in PKCS#8 PEM, as ``openssl genrsa`` writes one, for relay_dkim."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = workdir / "dkim.key"
    path.write_bytes(
        key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    )
    return path


def run_kumoq_case(
    name: str,
    policy: str,
    spool_kind: str,
    load: Load,
    *,
    deliver: bool,
    root: str | None = None,
    argv_prefix: list[str] | None = None,
    client: StartClient | None = None,
    workers: int = 1,
) -> RunResult:
    """Start kumoq on ``bench/policies/<policy>.lua``, inject ``load``, measure, stop.

    ``deliver``: wait for ``load.n`` files in ``var/maildir/new`` (end-to-end), or, for the
    ``relay`` and ``relay_dkim`` policies, until the smtp-sink this starts has counted
    ``load.n``; otherwise stop once smtp-source has exited (reception only). The run's
    directory is created under ``root`` and left in place: the caller removes it when no run
    is in progress, because deleting thousands of files makes the next file creations slower
    on some filesystems. ``client`` starts the load generator (default: ``start_source``
    against the daemon's SMTP port); its stdout goes to ``source.out`` in the run's directory.
    ``workers`` > 1: ``kumoq serve --workers N`` on a fixed free port (every worker binds it).
    """
    start_client = client or (lambda d, out: start_source(load, d.port, out))
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    port = free_port() if workers > 1 else 0
    env = {"KUMOQ_BENCH_SPOOL": spool_kind, "KUMOQ_BENCH_LISTEN": f"{HOST}:{port}"}
    # The relay policy delivers by SMTP to smtp-sink: counted by the sink's mesg= counter.
    sink = Sink(workdir) if policy.startswith("relay") else None
    if policy == "relay_dkim":  # the signing key, named to the policy
        env["KUMOQ_BENCH_DKIM_KEY"] = str(write_dkim_key(workdir))
    new_dir = workdir / "var" / "maildir" / "new"
    count_fn: Callable[[], int] = sink.count if sink else (lambda: count_files(new_dir))
    status = "ok"
    sink_cpu_s = 0.0
    try:
        if sink is not None:
            sink.start()
            env["KUMOQ_BENCH_SINK"] = f"{HOST}:{sink.port}"
        daemon = KumoqProcess(
            workdir, POLICIES / f"{policy}.lua", env, argv_prefix=argv_prefix, workers=workers
        )
        try:
            daemon.start()
            pids = daemon.pids()
            cpu0, sys0 = cpu_of(pids), sys_cpu()
            sink_cpu0 = proc_cpu_seconds(sink.pid) if sink else 0.0
            t0 = time.monotonic()
            deadline = t0 + load.timeout
            source = wait_source(start_client(daemon, workdir / "source.out"), deadline)
            if source.rc is None:
                status = "timeout"
            elif source.rc != 0:
                status = "fail"
            e2e_s: float | None = None
            if deliver:
                delivered, t_end = wait_count(count_fn, load.n, deadline)
                e2e_s = t_end - t0
                if delivered < load.n and status == "ok":
                    status = "timeout"
            sys1, t_sys1 = sys_cpu(), time.monotonic()
            if sink is not None:
                sink_cpu_s = proc_cpu_seconds(sink.pid) - sink_cpu0
            # As for the peers, count the MTA's CPU until its work for these messages is done
            # (the spool removes after the last delivery): wait until it is idle.
            cpu1 = _wait_idle(pids, timeout=120.0)
        finally:
            rc = daemon.stop()
    finally:
        if sink is not None:
            sink.stop()
    if rc != 0 and status == "ok":
        status = f"exit{rc}"
    delivered = count_fn()
    types: dict[str, int] = {}
    for record in read_all_records(workdir / "var" / "log"):
        types[record["type"]] = types.get(record["type"], 0) + 1
    accepted = types.get("Reception", 0)
    if status == "ok" and (accepted != load.n or types.get("Delivery", 0) != delivered):
        status = "short"
    if status != "ok":
        sys.stderr.write("\n".join(daemon.stderr_lines[-20:]) + "\n")
        sys.stderr.write(f"bench: {name}: status {status} {types}; see {workdir}\n")
    return RunResult(
        name=name,
        n=load.n,
        inject_s=source.end - t0,
        e2e_s=e2e_s,
        accepted=accepted,
        delivered=delivered,
        mta_cpu_s=cpu1 - cpu0,
        source_cpu_s=source.cpu_s,
        sys_busy_pct=busy_pct(sys0, sys1),
        status=status,
        window_s=t_sys1 - t0,
        sink_cpu_s=sink_cpu_s,
    )
