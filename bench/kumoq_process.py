"""``python -m kumoq serve`` as a child process for the benchmarks and ``make torture``.

Owns starting the daemon under a bench policy in a scratch directory, reading its SMTP (and
HTTP) port from stderr, and stopping it: SIGTERM (bounded, then SIGKILL), a plain SIGKILL for
crash rounds, or any signal. Imports only the standard library; nothing in ``kumoq`` imports this.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["KumoqProcess"]

_LISTENER = re.compile(r"smtp listener on (\S+):(\d+)")
_HTTP_LISTENER = re.compile(r"http listener on (\S+):(\d+)")


class KumoqProcess:
    """``python -m kumoq serve`` running ``policy`` in ``workdir``, with ``env`` added.

    ``start()`` waits (bounded) for ``initialization complete`` and reads the SMTP port from
    stderr (``http_port`` from the first ``http listener on`` line, 0 without one); ``stop()``
    sends SIGTERM and waits (bounded), then SIGKILLs this pid only.
    ``argv_prefix`` replaces ``[sys.executable]`` (e.g. to run under cProfile). ``workers``
    > 1 runs ``kumoq serve --workers N`` (ready once every worker is); ``pids()`` then lists
    the supervisor and its workers.
    """

    def __init__(
        self,
        workdir: Path,
        policy: Path,
        env: dict[str, str],
        *,
        argv_prefix: list[str] | None = None,
        workers: int = 1,
    ) -> None:
        self.workers = workers
        self._initialized = 0
        self.workdir = workdir
        self.policy = workdir / "init.lua"
        shutil.copyfile(policy, self.policy)
        for shared in policy.parent.glob("*.lua"):  # bench_init, and a policy another requires
            if shared != policy:
                shutil.copyfile(shared, workdir / shared.name)
        self.env = env
        self.argv_prefix = argv_prefix or [sys.executable]
        self.port = 0
        self.http_port = 0
        self.stderr_lines: list[str] = []
        self.line_times: list[float] = []  # time.monotonic() each stderr line was read
        self._ready = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def pids(self) -> list[int]:
        """The daemon's pid, and with workers, theirs too (children of the supervisor)."""
        pid = self.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *(int(c) for c in children)]

    def first_line(self, text: str) -> float | None:
        """When the first stderr line containing ``text`` was read (monotonic), or None."""
        for at, line in zip(self.line_times, self.stderr_lines, strict=False):
            if text in line:
                return at
        return None

    def start(self, timeout: float = 30.0) -> None:
        self._ready.clear()  # a restart waits for the new process's lines
        self._initialized = 0
        workers = ["--workers", str(self.workers)] if self.workers > 1 else []
        self.port = 0
        self.http_port = 0
        self._proc = subprocess.Popen(
            [*self.argv_prefix, "-m", "kumoq", "serve", "--policy", str(self.policy), *workers],
            cwd=self.workdir,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop(timeout=5)
                tail = "\n".join(self.stderr_lines[-20:])
                raise RuntimeError(f"kumoq did not start within {timeout:.0f}s:\n{tail}")
        if not self.port:
            self.stop(timeout=5)
            raise RuntimeError("kumoq started but reported no 'smtp listener on' line")

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.line_times.append(time.monotonic())
            self.stderr_lines.append(line.rstrip("\n"))
            m = _LISTENER.search(line)
            if m and not self.port:
                self.port = int(m.group(2))
            m = _HTTP_LISTENER.search(line)
            if m and not self.http_port:
                self.http_port = int(m.group(2))
            if "initialization complete" in line:
                self._initialized += 1
                if self._initialized >= self.workers:
                    self._ready.set()
        proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL the daemon (a crash: nothing is flushed or drained) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)

    def signal(self, signum: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """The exit code once the daemon has exited within ``timeout``; None if it has not."""
        proc = self._proc
        if proc is None:
            return 0
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._reader is not None:
            self._reader.join(5)
        self._proc = None
        return rc

    def stop(self, timeout: float = 60.0) -> int:
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stderr_lines.append(f"bench: no exit {timeout:.0f}s after SIGTERM; SIGKILL")
                proc.kill()
                proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        self._proc = None
        return proc.returncode
