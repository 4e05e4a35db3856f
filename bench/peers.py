"""The peer MTAs of ``make bench``, set up and measured by kumoq's own code.

Cases (each run in a fresh directory under the bench's scratch root, with the same load as
kumoq's runs and measured the same way, ``bench.e2e``):

- ``postfix-smtp``: a private Postfix instance, smtpd → disk queue (Postfix's own fsyncs) →
  smtp(8) → ``smtp-sink`` (``relayhost = [127.0.0.1]:<sink>``); timed until the sink counted N;
- ``postfix-maildir``: the same instance shape, delivering with virtual(8) into one Maildir
  (``virtual_mailbox_maps = static:Maildir/``, owned by ``nobody``); timed until N files are in
  ``Maildir/new``;
- ``haraka-queue``: Haraka (``relay`` with an ACL of 127.0.0.0/8) → its outbound queue (files,
  no fsync) → ``smtp-sink``, routed by ``queue/smtp_forward``'s per-domain section.

The Postfix instance has its own ``main.cf``/``master.cf`` (every service without chroot),
queue and data directories; the system's Postfix is never used. ``main.cf`` keeps Postfix's
defaults except what living on loopback without DNS or syslog needs. Haraka is installed with
npm into a cache directory (``prepare_haraka``, before the bench enters its private network
namespace, since it needs the registry); a plugin of ours answers the reverse-DNS lookup with
``localhost``.

CPU is that of the MTA's whole process tree: the root's user+system time and that of its
reaped children, plus every live descendant's. The runs end once the MTA's queue is empty
(bounded), so the CPU includes the queue cleanup. Only processes started here are stopped:
Postfix with ``postfix -c <dir> stop`` (then SIGKILL of that master's tree, by pid), Haraka
by its pid.

Imports bench.e2e and the standard library.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from bench.e2e import (
    CLK_TCK,
    HOST,
    TO,
    Load,
    RunResult,
    Sink,
    busy_pct,
    count_files,
    free_port,
    start_source,
    sys_cpu,
    wait_count,
    wait_source,
)

__all__ = ["PEER_CASES", "haraka_cache", "peer_unavailable", "prepare_haraka", "run_peer"]

PEER_CASES: Final = {
    "postfix-smtp": "Postfix -> disk queue (fsync) -> smtp(8) -> smtp-sink, end-to-end",
    "postfix-maildir": "Postfix -> disk queue (fsync) -> virtual(8) Maildir, end-to-end",
    "haraka-queue": "Haraka -> outbound queue (no fsync) -> smtp-sink, end-to-end",
}
HARAKA_VERSION: Final = "3.3.4"
DRAIN_TIMEOUT: Final = 120.0
_PLUGIN: Final = """'use strict'
// kumoq bench: no DNS. The private network namespace has only lo, so answer the reverse
// lookup Haraka makes for every connection here, and keep any other query on loopback.
const dns = require('node:dns')
exports.register = function () {
  dns.setServers(['127.0.0.1'])
}
exports.hook_lookup_rdns = function (next) {
  next(OK, 'localhost')
}
"""


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- availability and installation ----------------------------------------------------------


def haraka_cache() -> Path:
    """Where Haraka is installed: ``$KUMOQ_BENCH_CACHE`` or ``~/.cache/kumoq-bench``."""
    base = os.environ.get("KUMOQ_BENCH_CACHE") or os.path.expanduser("~/.cache/kumoq-bench")
    return Path(base) / f"haraka-{HARAKA_VERSION}"


def _haraka_bin() -> Path:
    return haraka_cache() / "node_modules" / "Haraka" / "bin" / "haraka"


def prepare_haraka() -> str | None:
    """Install Haraka with npm when it is missing; None when ready, else why it is skipped.

    Needs the npm registry, so call it before entering the private network namespace."""
    if _haraka_bin().is_file():
        return None
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed (apt-get install nodejs npm)"
    try:
        ping = subprocess.run(["npm", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "the npm registry did not answer within 30 s"
    if ping.returncode != 0:
        return f"the npm registry is not reachable: {ping.stderr.strip()[-200:]}"
    dest = haraka_cache()
    dest.mkdir(parents=True, exist_ok=True)
    _log(f"installing Haraka {HARAKA_VERSION} into {dest} (npm install)")
    try:
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--omit=dev", "--prefix", str(dest),
             f"Haraka@{HARAKA_VERSION}"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "npm install of Haraka did not finish within 15 minutes"
    if done.returncode != 0 or not _haraka_bin().is_file():
        return f"npm install of Haraka failed: {done.stderr.strip()[-500:]}"
    return None


def peer_unavailable(case: str) -> str | None:
    """Why ``case`` cannot run here (None if it can)."""
    if os.geteuid() != 0:
        return "the peers need root (Postfix's master and smtp-sink -u nobody)"
    if case.startswith("postfix") and shutil.which("postfix") is None:
        return "postfix is not installed (make bench-deps installs it with apt-get)"
    if case.startswith("haraka") and not _haraka_bin().is_file():
        return f"Haraka is not installed in {haraka_cache()}"
    return None


# -- process trees --------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime+stime+cutime+cstime in seconds) of every process."""
    table: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = sum(int(fields[k]) for k in (11, 12, 13, 14))
        table[int(name)] = (int(fields[1]), ticks / CLK_TCK)
    return table


def _descendants(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU of ``root``'s process tree: its own and its reaped children's, plus every live
    descendant's (and theirs)."""
    table = _proc_table()
    return sum(table[p][1] for p in _descendants(root, table) if p in table)


def _kill_tree(root: int) -> None:
    for pid in reversed(_descendants(root, _proc_table())):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_port(port: int, alive: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return True
        time.sleep(0.05)
    return False


# -- Postfix --------------------------------------------------------------------------------

_MASTER_CF: Final = """# kumoq bench: a private instance, every service without chroot
{host}:{port} inet n - n - - smtpd
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
smtp      unix  - - n -     - smtp
relay     unix  - - n -     - smtp
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
virtual   unix  - n n -     - virtual
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class _Postfix:
    """One private Postfix instance under ``run_dir``: ``mode`` is ``smtp`` or ``maildir``."""

    def __init__(self, run_dir: Path, mode: str, port: int, sink_port: int) -> None:
        self.dir = run_dir
        self.etc = run_dir / "etc"
        self.spool = run_dir / "spool"
        self.maildir = run_dir / "maildir"
        self.maillog = run_dir / "maillog"
        self.port = port
        for d in (self.etc, self.spool, run_dir / "data"):
            d.mkdir(parents=True)
        shutil.chown(run_dir / "data", "postfix", "postfix")
        (run_dir / "data").chmod(0o700)
        main = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.spool}",
            f"data_directory = {run_dir / 'data'}",
            "myhostname = postfix-bench.localdomain",
            "mydestination =",
            f"inet_interfaces = {HOST}",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_peername_lookup = no",  # no DNS in the namespace
            "smtp_dns_support_level = disabled",
            "smtp_host_lookup = native",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            f"maillog_file = {self.maillog}",  # there is no syslog: postlogd writes it
            f"maillog_file_prefixes = {run_dir}",
            "biff = no",
            "smtputf8_enable = no",
        ]
        if mode == "smtp":
            main.append(f"relayhost = [{HOST}]:{sink_port}")
        else:
            nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
            self.maildir.mkdir()
            os.chown(self.maildir, nobody, nogroup)
            main += [
                f"virtual_mailbox_domains = {TO.split('@')[1]}",
                f"virtual_mailbox_base = {self.maildir}",
                "virtual_mailbox_maps = static:Maildir/",
                f"virtual_uid_maps = static:{nobody}",
                f"virtual_gid_maps = static:{nogroup}",
            ]
        (self.etc / "main.cf").write_text("\n".join(main) + "\n")
        (self.etc / "master.cf").write_text(_MASTER_CF.format(host=HOST, port=port))

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.etc), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def start(self) -> int:
        """Start the instance (``postfix check`` creates its queue directories); the master's
        pid once smtpd accepts connections."""
        for step in ("check", "start"):
            done = self._postfix(step)
            if done.returncode != 0:
                raise RuntimeError(f"postfix {step} failed: {done.stderr.strip()}")
        pid = self.master_pid()
        if pid is None or not _wait_port(self.port, lambda: self.master_pid() is not None):
            self.stop()
            raise RuntimeError(f"Postfix did not listen on {HOST}:{self.port}")
        return pid

    def master_pid(self) -> int | None:
        try:
            pid = int((self.spool / "pid" / "master.pid").read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError):
            return None
        return pid if comm == "master" else None

    def queued(self) -> int:
        return sum(
            len(files)
            for sub in ("maildrop", "incoming", "active", "deferred", "hold")
            for _, _, files in os.walk(self.spool / sub)
        )

    def delivered(self) -> int:
        return count_files(self.maildir / "Maildir" / "new")

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is None:
            return
        self._postfix("stop")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.master_pid() is not None:
            time.sleep(0.1)
        if self.master_pid() is not None:
            _log(f"Postfix master {pid} still running after stop; SIGKILL to its tree")
            _kill_tree(pid)

    def log_summary(self) -> str:
        try:
            text = self.maillog.read_text(errors="replace")
        except OSError:
            return "no maillog"
        count = {k: text.count(f"status={k}") for k in ("sent", "deferred", "bounced")}
        warnings = [ln.split(" warning: ", 1)[1] for ln in text.splitlines() if " warning: " in ln]
        summary = " ".join(f"{k}={v}" for k, v in count.items()) + f" warnings={len(warnings)}"
        for warning in sorted(set(warnings))[:3]:  # what they said: the run's files go
            summary += f"\n  warning: {warning[:200]}"
        return summary


# -- Haraka ---------------------------------------------------------------------------------


class _Haraka:
    """One Haraka instance under ``run_dir``, relaying through its outbound queue."""

    def __init__(self, run_dir: Path, port: int, sink_port: int) -> None:
        self.dir = run_dir / "haraka"
        self.port = port
        self.log = run_dir / "haraka.log"
        self._proc: subprocess.Popen[bytes] | None = None
        made = subprocess.run(
            ["node", str(_haraka_bin()), "-i", str(self.dir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"haraka -i failed: {made.stderr.strip()[-500:]}")
        config = self.dir / "config"
        domain = TO.split("@")[1]
        files = {
            "me": "haraka-bench.localdomain\n",
            "smtp.ini": f"listen={HOST}:{port}\n",
            "plugins": "bench_no_dns\nrelay\nqueue/smtp_forward\n",
            "relay_acl_allow": "127.0.0.0/8\n",
            # enable_outbound=false: relayed mail goes to the outbound queue; its get_mx
            # hook routes the recipient domain to the sink.
            "smtp_forward.ini": (
                f"[main]\nhost={HOST}\nport={sink_port}\nenable_tls=false\n"
                f"enable_outbound=false\n\n[{domain}]\nhost={HOST}\nport={sink_port}\n"
                "enable_tls=false\n"
            ),
            "outbound.ini": "enable_tls=false\n",
        }
        for name, text in files.items():
            (config / name).write_text(text)
        (self.dir / "plugins").mkdir(exist_ok=True)
        (self.dir / "plugins" / "bench_no_dns.js").write_text(_PLUGIN)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> int:
        with open(self.log, "wb") as out:
            self._proc = subprocess.Popen(
                ["node", str(_haraka_bin()), "-c", str(self.dir)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        proc = self._proc
        if not _wait_port(self.port, lambda: proc.poll() is None):
            self.stop()
            raise RuntimeError(f"Haraka did not listen on {HOST}:{self.port}: see {self.log}")
        time.sleep(0.5)  # plugins finish registering
        return proc.pid

    def queued(self) -> int:
        return count_files(self.dir / "queue") - int((self.dir / "queue" / "tmp").is_dir())

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait(10)

    def log_summary(self) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "no haraka.log"
        errors = [ln for ln in text.splitlines() if "[ERROR]" in ln or "[CRIT]" in ln]
        # Expected: two "tls key/cert could not be loaded" at start (no certificate: no
        # STARTTLS, which smtp-source does not use anyway).
        unexpected = [ln for ln in errors if "could not be loaded" not in ln]
        summary = f"errors={len(errors)} (unexpected: {len(unexpected)})"
        for line in unexpected[:3]:
            summary += f"\n  {line[:200]}"
        return summary


# -- one run --------------------------------------------------------------------------------


def run_peer(case: str, load: Load, run_dir: Path) -> RunResult | None:
    """One run of a peer case in ``run_dir`` (created here); None if it could not run."""
    why = peer_unavailable(case)
    if why is not None:
        _log(f"skipping {case}: {why}")
        return None
    run_dir.mkdir(parents=True)
    run_dir.chmod(0o755)  # virtual(8) runs as nobody and must reach its maildir
    port = free_port()
    sink = None if case == "postfix-maildir" else Sink(run_dir)
    mta: _Postfix | _Haraka
    status = "ok"
    try:
        if sink is not None:
            sink.start()
        sink_port = sink.port if sink is not None else 0
        if case.startswith("postfix"):
            mode = "maildir" if case == "postfix-maildir" else "smtp"
            mta = _Postfix(run_dir, mode, port, sink_port)
        else:
            mta = _Haraka(run_dir, port, sink_port)
        count: Callable[[], int]
        if sink is not None:
            count = sink.count
        else:
            assert isinstance(mta, _Postfix)
            count = mta.delivered
        try:
            root = mta.start()
            cpu0, sys0 = tree_cpu_seconds(root), sys_cpu()
            sink_cpu0 = tree_cpu_seconds(sink.pid) if sink else 0.0
            t0 = time.monotonic()
            deadline = t0 + load.timeout
            source = wait_source(start_source(load, port, run_dir / "source.out"), deadline)
            if source.rc is None:
                status = "timeout"
            elif source.rc != 0:
                status = "fail"
            delivered, t_end = wait_count(count, load.n, deadline)
            if delivered < load.n and status == "ok":
                status = "timeout"
            sys1, t_sys1 = sys_cpu(), time.monotonic()
            sink_cpu_s = tree_cpu_seconds(sink.pid) - sink_cpu0 if sink else 0.0
            drain_end = time.monotonic() + DRAIN_TIMEOUT
            while mta.queued() and time.monotonic() < drain_end:
                time.sleep(0.1)
            if mta.queued() and status == "ok":
                status = "queue_not_empty"
            cpu1 = tree_cpu_seconds(root)
        finally:
            mta.stop()
            _log(f"{case}: {mta.log_summary()}")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _log(f"{case} could not run: {exc}")
        return None
    finally:
        if sink is not None:
            sink.stop()
    return RunResult(
        name=case,
        n=load.n,
        inject_s=source.end - t0,
        e2e_s=t_end - t0,
        accepted=load.n if source.rc == 0 else 0,
        delivered=count(),
        mta_cpu_s=cpu1 - cpu0,
        source_cpu_s=source.cpu_s,
        sys_busy_pct=busy_pct(sys0, sys1),
        status=status,
        window_s=t_sys1 - t0,
        sink_cpu_s=sink_cpu_s,
    )
