"""Run a real ``kumoq serve`` under a policy in a scratch directory, and look at what it did.

This is the operator's tool for testing a policy before it meets real mail, and the project's own
end-to-end harness. The daemon runs as a subprocess (``python -m kumoq serve``) with the scratch
directory as its working directory, so a policy that keeps its spool, logs and maildir under
``./var/`` needs no edits. Bound ports are discovered from the daemon's stderr diagnostics
(``smtp listener on 127.0.0.1:PORT``), so policies should listen on port 0.

Nothing here mocks kumoq: SMTP goes through ``smtplib`` over 127.0.0.1, records are read from the
log segments on disk, and delivered mail from the maildir.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from kumoq.logs.tail import read_all_records

__all__ = ["KumoqDaemon", "KumoqStartError"]

T = TypeVar("T")

_LISTENER = re.compile(r"(\w+) listener on (\S+):(\d+)")


class KumoqStartError(RuntimeError):
    """The daemon exited, or did not report ``initialization complete`` in time."""


class KumoqDaemon:
    """One ``kumoq serve`` process running ``policy`` in ``workdir``.

    ``start()`` waits until the daemon prints ``initialization complete``; ``stop()`` sends
    SIGTERM and waits for the drain; ``kill()`` sends SIGKILL (for crash tests). The same object
    can be started again after a stop, on the same spool.

    ``policy`` is the policy's text, written to ``workdir/init.lua``; a ``Path`` is run where
    it is instead (``kumoq harness``: the operator's file, unmodified, with its own modules).
    """

    def __init__(
        self,
        workdir: Path,
        policy: str | Path,
        *,
        env: dict[str, str] | None = None,
        log_dir: str = "var/log",
        maildir: str = "var/maildir",
        start_timeout: float = 30.0,
        workers: int = 1,
    ) -> None:
        self.workdir = Path(workdir)
        self.workers = workers  # > 1: `kumoq serve --workers N`, ready when every worker is
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._in_place = isinstance(policy, Path)  # never written: it is the operator's file
        if isinstance(policy, Path):
            self.policy_path = policy.resolve()
        else:
            self.policy_path = self.workdir / "init.lua"
            self.policy_path.write_text(policy)
        self.env = env or {}
        self.log_dir = self.workdir / log_dir
        self.maildir = self.workdir / maildir
        self.start_timeout = start_timeout
        self.listeners: dict[str, tuple[str, int]] = {}
        self.stderr_lines: list[str] = []
        self.returncode: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()
        self._initialized = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> KumoqDaemon:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("daemon is already running")
        self.listeners = {}
        self._ready.clear()
        self._initialized = 0
        workers = ["--workers", str(self.workers)] if self.workers > 1 else []
        env = {**os.environ, "KUMOQ_TEST_DIR": str(self.workdir), **self.env}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "kumoq", "serve", "--policy", str(self.policy_path), *workers],
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read_stderr, args=(self._proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._ready.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._reader.join(2)
                code = self._proc.poll()
                if code is None:
                    self.kill()
                raise KumoqStartError(
                    f"kumoq did not start (exit {code}):\n" + "\n".join(self.stderr_lines[-30:])
                )
        return self

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            self.stderr_lines.append(line)
            m = _LISTENER.search(line)
            if m:
                self.listeners.setdefault(m.group(1), (m.group(2), int(m.group(3))))
            if "initialization complete" in line:
                self._initialized += 1
                if self._initialized >= self.workers:
                    self._ready.set()
        proc.stderr.close()

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        """Ask the daemon to drain and exit; return its exit code."""
        proc = self._proc
        if proc is None:
            return self.returncode or 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        self.returncode = proc.returncode
        self._proc = None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the daemon, as a crash would."""
        self.stop(timeout=10, sig=signal.SIGKILL)

    def reload(self, policy: str | None = None, timeout: float = 10.0) -> str:
        """Send SIGHUP (after writing ``policy`` to the policy file, if given) and return the
        daemon's ``reload:`` line that answers it: the policy loaded, or why it stays."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("daemon is not running")
        if policy is not None:
            if self._in_place:
                raise RuntimeError(f"{self.policy_path} runs in place and is never rewritten")
            self.policy_path.write_text(policy)
        seen = len(self.stderr_lines)
        proc.send_signal(signal.SIGHUP)

        def answer() -> str | None:
            return next(
                (
                    line
                    for line in self.stderr_lines[seen:]
                    if "reload: policy" in line or "reload: the policy" in line
                ),
                None,
            )

        return self.wait_for(answer, timeout, what="the daemon's answer to SIGHUP")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> KumoqDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to it ---------------------------------------------------------------------

    @property
    def smtp_address(self) -> tuple[str, int]:
        return self.listeners["smtp"]

    def smtp_client(self, timeout: float = 30.0) -> smtplib.SMTP:
        host, port = self.smtp_address
        return smtplib.SMTP(host, port, timeout=timeout)

    def send(
        self,
        sender: str = "sender@example.com",
        recipients: str | Iterable[str] = ("recip@example.com",),
        *,
        body: str | bytes | None = None,
        subject: str = "Hello! This is a test",
        headers: dict[str, str] | None = None,
    ) -> dict[str, tuple[int, bytes]]:
        """Send one transaction; returns smtplib's refused-recipient dict (empty when all ok).

        Raises ``smtplib.SMTPResponseException`` subclasses when the server rejects.
        """
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        if body is None or isinstance(body, str):
            lines = [f"From: <{sender}>", f"To: <{rcpts[0]}>", f"Subject: {subject}"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            text = "\r\n".join(lines) + "\r\n\r\n" + (body or "This is the body.\r\n")
            payload: bytes = text.encode()
        else:
            payload = body
        with self.smtp_client() as client:
            return client.sendmail(sender, rcpts, payload)

    # -- looking at what it did ------------------------------------------------------------

    def maildir_files(self, maildir: Path | str | None = None) -> list[Path]:
        """Files in ``<maildir>/new``, searched recursively when the path is a template root."""
        root = Path(maildir) if maildir is not None else self.maildir
        if not root.is_absolute():
            root = self.workdir / root
        return sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name == "new")

    def maildir_messages(self, maildir: Path | str | None = None) -> list[email.message.Message]:
        return [
            email.message_from_bytes(p.read_bytes(), policy=email.policy.compat32)
            for p in self.maildir_files(maildir)
        ]

    def records(self, type: str | None = None) -> list[dict[str, Any]]:
        """Every log record written so far (optionally only one ``type``), oldest first."""
        if not self.log_dir.exists():
            return []
        recs = read_all_records(self.log_dir)
        return [r for r in recs if type is None or r.get("type") == type]

    def record_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.records():
            counts[r["type"]] = counts.get(r["type"], 0) + 1
        return counts

    @staticmethod
    def wait_for(
        probe: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.05, what: str = ""
    ) -> T:
        """Call ``probe`` until it returns something truthy; return that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what or probe}")
            time.sleep(interval)

    def wait_for_maildir_count(self, n: int, timeout: float = 10.0) -> list[Path]:
        return self.wait_for(
            lambda: files if len(files := self.maildir_files()) >= n else None,
            timeout,
            what=f"{n} maildir messages",
        )

    def wait_for_records(self, type: str, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return self.wait_for(
            lambda: recs if len(recs := self.records(type)) >= n else None,
            timeout,
            what=f"{n} {type} records",
        )
