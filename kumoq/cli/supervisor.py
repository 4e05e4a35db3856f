"""``kumoq serve --workers N``: N worker processes of one policy, started, watched and stopped
together.

One kumoq process runs one event loop on one core. ``--workers N`` starts N of them, each a
whole ``kumoq serve`` of the same policy, and stays in front as their supervisor:

- **Sharing the listeners.** Every worker binds the policy's SMTP and HTTP listeners with
  ``SO_REUSEPORT``; the kernel spreads the connections over them.
- **Who is who.** Each worker learns its index, the count, the registry directory and the
  run's secret token from its environment (kumoq.workers). Its spool is its own directory
  under the configured one, and a restart with fewer workers adopts the others' directories.
- **Watching.** A worker that exits on its own is started again after a pause that doubles
  from ``RESTART_MIN`` up to ``RESTART_MAX`` seconds (reset once it has run ``STEADY``
  seconds). A worker that exits before it ever served (its ``ready-<i>`` mark, kumoq.workers)
  on the run's first start (a policy error, a port in use, a locked spool) stops the whole
  run: every worker would fail the same way, so the supervisor stops the others and exits
  with that worker's status.
- **Signals.** SIGTERM and SIGINT are passed to every worker, which shut down gracefully
  (drain sessions and deliveries; spooled mail stays spooled); a second one is passed on too,
  and makes them exit at once. SIGHUP is passed on: every worker reloads the policy.

The supervisor loads no Lua and opens no spool: what can fail is the workers'. It exits 0
when every worker stopped cleanly after a signal, else the first failing status.

Imports the standard library and kumoq.workers' environment names only.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

__all__ = ["RESTART_MAX", "RESTART_MIN", "supervise"]

log = logging.getLogger("kumoq.supervisor")

RESTART_MIN: Final = 1.0
RESTART_MAX: Final = 30.0
STEADY: Final = 60.0  # a worker that ran this long starts again after RESTART_MIN
_POLL: Final = 0.2
_PR_SET_PDEATHSIG: Final = 1


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    pause: float = RESTART_MIN
    restart_at: float | None = None
    served: bool = False  # it marked itself ready at least once
    exits: list[int] = field(default_factory=list)


class _Supervisor:
    def __init__(self, argv: list[str], count: int, registry: Path, token: str) -> None:
        self.argv = argv
        self.count = count
        self.registry = registry
        self.token = token
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = 0  # signals received (SIGTERM/SIGINT)
        self.status = 0

    def env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KUMOQ_WORKER_INDEX=str(index),
            KUMOQ_WORKERS=str(self.count),
            KUMOQ_WORKERS_DIR=str(self.registry),
            KUMOQ_WORKERS_TOKEN=self.token,
        )
        return env

    def ready(self, worker: _Worker) -> bool:
        return (self.registry / f"ready-{worker.index}").exists()

    def start(self, worker: _Worker) -> None:
        (self.registry / f"ready-{worker.index}").unlink(missing_ok=True)
        # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
        # passes it on once (two would force the workers out). Its parent's death ends it.
        worker.proc = subprocess.Popen(
            self.argv, env=self.env(worker.index), process_group=0, preexec_fn=_die_with_parent
        )
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def send(self, sig: int) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # exited between poll and kill
                    worker.proc.send_signal(sig)

    def on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping += 1
        name = signal.Signals(signum).name
        if self.stopping == 1:
            log.info("received %s: stopping %d workers gracefully (again to force)", name,
                     self.count)  # fmt: skip
        else:
            log.warning("received %s again: workers exit now", name)
        self.send(signal.SIGTERM)  # a worker's second signal makes it exit at once

    def on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        log.info("received SIGHUP: every worker reloads the policy")
        self.send(signal.SIGHUP)

    def reap(self, worker: _Worker, now: float) -> bool:
        """Handle ``worker``'s exit; False when the whole run must stop."""
        assert worker.proc is not None
        code = worker.proc.returncode
        worker.proc = None
        worker.exits.append(code)
        if self.stopping:  # stopped by our SIGTERM before its handler was in place: clean
            if code not in (0, -signal.SIGTERM) and not self.status:
                self.status = code
            return True
        worker.served = worker.served or self.ready(worker)
        if not worker.served:
            log.error("worker %d failed at start (status %d): stopping every worker",
                      worker.index, code)  # fmt: skip
            self.status = code or 1
            return False
        ran = now - worker.started
        if ran >= STEADY:
            worker.pause = RESTART_MIN
        worker.restart_at = now + worker.pause
        worker.pause = min(worker.pause * 2, RESTART_MAX)
        log.warning("worker %d exited with status %d after %.0fs: starting it again in %.0fs",
                    worker.index, code, ran, worker.restart_at - now)  # fmt: skip
        return True

    def run(self) -> int:
        for worker in self.workers:
            self.start(worker)
        while True:
            now = time.monotonic()
            alive = 0
            for worker in self.workers:
                proc = worker.proc
                if proc is not None and proc.poll() is None:
                    alive += 1
                elif proc is not None and not self.reap(worker, now):
                    self.stopping = max(self.stopping, 1)
                    self.send(signal.SIGTERM)
                elif (
                    proc is None
                    and not self.stopping
                    and worker.restart_at is not None
                    and now >= worker.restart_at
                ):
                    self.start(worker)
                    alive += 1
            if self.stopping and alive == 0:
                return self.status
            time.sleep(_POLL)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux ``PR_SET_PDEATHSIG``),
    so that no worker outlives a supervisor killed with SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the workers outlive a killed supervisor
        pass


def supervise(policy: Path, count: int, diag: list[str]) -> int:
    """Run ``count`` workers of ``policy`` until SIGTERM/SIGINT; their exit status.

    ``diag``: the diagnostic options to pass on (``--diag-format``, ``--diag-level``)."""
    registry = Path(tempfile.mkdtemp(prefix="kumoq-workers-"))  # mode 0700
    argv = [sys.executable, "-m", "kumoq", *diag, "serve", "--policy", str(policy)]
    supervisor = _Supervisor(argv, count, registry, secrets.token_hex(16))
    previous = {
        sig: signal.signal(sig, handler)
        for sig, handler in (
            (signal.SIGTERM, supervisor.on_stop),
            (signal.SIGINT, supervisor.on_stop),
            (signal.SIGHUP, supervisor.on_hangup),
        )
    }
    log.info("supervising %d workers of %s (registry %s)", count, policy, registry)
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        supervisor.send(signal.SIGKILL)  # only if the supervisor itself failed
        shutil.rmtree(registry, ignore_errors=True)
