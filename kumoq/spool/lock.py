"""The spool lock: an ``flock``-ed pid file at ``<path>/lock``, as KumoMTA's LocalDisk spool.

The kernel drops an ``flock`` when its holder dies, so a stale file left by a crash never
blocks a restart; a live holder makes ``acquire`` raise ``SpoolLockedError`` naming its pid.
The sticky bit is set on the file so that tmp cleaners leave it alone.

Blocking file IO: call from a worker thread. Imports kumoq.errors.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import final

from kumoq.errors import SpoolError, SpoolLockedError

__all__ = ["SpoolLock"]


@final
class SpoolLock:
    """An exclusive lock on a spool directory, held until ``release``."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, directory: Path) -> SpoolLock:
        """Create ``directory`` if needed and lock ``directory/lock``; write our pid into it."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            lock_path = directory / "lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SpoolError(f"spool {directory}: cannot open the lock file: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise SpoolLockedError(f"spool {directory} is locked by pid {owner}") from None
        try:
            mode = os.fstat(fd).st_mode
            os.fchmod(fd, stat.S_IMODE(mode) | stat.S_ISVTX)
        except OSError:
            pass  # the sticky bit is a courtesy to tmp cleaners
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(lock_path, fd)

    def release(self) -> None:
        """Unlock and close; the file stays (KumoMTA leaves it too). Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
