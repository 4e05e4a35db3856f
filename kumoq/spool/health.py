"""Free-space floors: ``min_free_space`` and ``min_free_inodes`` (reference §7 and §2.8).

KumoMTA refuses new messages (SMTP and HTTP injection) and reports ``storage is too full``
on ``/api/check-liveness/v1`` while a spool's filesystem, or a log directory's, is below
either floor. kumoq does the same:

- ``FreeSpaceFloor`` is one directory and its two floors: ``for_spool`` (``define_spool``,
  10% each by default) and ``for_logs`` (``configure_local_logs``, no floor unless set);
- ``free_space_problem`` checks one (one ``statvfs``) and says what is wrong, or None;
- ``FreeSpaceMonitor`` checks them all every ``interval`` seconds on its own thread and
  keeps the answer in ``problem``, which reception reads at each MAIL FROM without any IO.
  It logs once when storage becomes too full and once when it recovers.

Imports kumoq.config.spool and kumoq.config.logs only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from kumoq.config.logs import LocalLogsConfig
from kumoq.config.spool import MinFree, SpoolDefinition

__all__ = [
    "DEFAULT_INTERVAL",
    "FreeSpaceFloor",
    "FreeSpaceMonitor",
    "check_free_space",
    "free_space_problem",
]

log = logging.getLogger(__name__)

#: Seconds between two checks of the monitor.
DEFAULT_INTERVAL: Final = 2.0


@dataclass(frozen=True, slots=True)
class FreeSpaceFloor:
    """``path``'s filesystem must keep ``min_free_space`` bytes and ``min_free_inodes`` inodes
    free (None: no such floor); ``what`` names the directory in messages."""

    what: str
    path: str
    min_free_space: MinFree | None
    min_free_inodes: MinFree | None

    @classmethod
    def for_spool(cls, definition: SpoolDefinition) -> FreeSpaceFloor:
        return cls(
            f"spool {definition.name!r}",
            definition.path,
            definition.min_free_space,
            definition.min_free_inodes,
        )

    @classmethod
    def for_logs(cls, config: LocalLogsConfig) -> FreeSpaceFloor:
        return cls(
            "log directory",
            config.log_dir,
            _min_free(config.min_free_space),
            _min_free(config.min_free_inodes),
        )


def _min_free(value: str | int | None) -> MinFree | None:
    """``configure_local_logs``' validated value (``'10%'`` or an amount) as a ``MinFree``."""
    if value is None:
        return None
    if isinstance(value, str):
        return MinFree(percent=float(value.strip().rstrip("%")))
    return MinFree(amount=value)


def free_space_problem(floor: FreeSpaceFloor | SpoolDefinition) -> str | None:
    """Blocking: why ``floor``'s filesystem is too full, or None when it is fine.

    A path that does not exist yet is checked at its nearest existing parent. Filesystems
    that report no inode count (``f_files == 0``) have no inode floor. A ``statvfs`` that
    fails is a problem too (the directory cannot be written either).
    """
    if isinstance(floor, SpoolDefinition):
        floor = FreeSpaceFloor.for_spool(floor)
    path = os.path.abspath(floor.path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return f"storage is too full: {floor.what} ({floor.path}) cannot be checked: {exc}"
    if floor.min_free_space is not None:
        free = st.f_bavail * st.f_frsize
        minimum = floor.min_free_space.floor(st.f_blocks * st.f_frsize)
        if free < minimum:
            return (
                f"storage is too full: {floor.what} ({floor.path}) has {free} bytes free, "
                f"below min_free_space={floor.min_free_space} ({minimum})"
            )
    if floor.min_free_inodes is not None and st.f_files:
        minimum = floor.min_free_inodes.floor(st.f_files)
        if st.f_favail < minimum:
            return (
                f"storage is too full: {floor.what} ({floor.path}) has {st.f_favail} inodes "
                f"free, below min_free_inodes={floor.min_free_inodes} ({minimum})"
            )
    return None


def _first_problem(floors: Iterable[FreeSpaceFloor | SpoolDefinition]) -> str | None:
    for floor in floors:
        problem = free_space_problem(floor)
        if problem is not None:
            return problem
    return None


async def check_free_space(*floors: FreeSpaceFloor | SpoolDefinition) -> str | None:
    """The first floor that is crossed among ``floors``, or None; never blocks the loop."""
    return await asyncio.to_thread(_first_problem, floors)


class FreeSpaceMonitor:
    """Checks ``floors`` every ``interval`` seconds on a thread of its own.

    ``problem`` is the first crossed floor's text, or None: a plain attribute, so reading it
    costs nothing and takes no lock (one reference, written by one thread). ``start()``
    checks once before it returns, so the answer is right from the first MAIL; ``stop()``
    ends the thread (both idempotent). With no floors there is no thread at all.
    """

    def __init__(
        self, floors: Iterable[FreeSpaceFloor], *, interval: float = DEFAULT_INTERVAL
    ) -> None:
        self.floors = tuple(floors)
        self.interval = interval
        self.problem: str | None = None
        self.checks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_config(
        cls,
        spools: Iterable[SpoolDefinition],
        logs: Iterable[LocalLogsConfig] = (),
        *,
        interval: float = DEFAULT_INTERVAL,
    ) -> FreeSpaceMonitor:
        """The floors of the spool definitions and of the ``configure_local_logs`` calls
        that set one."""
        floors = [FreeSpaceFloor.for_spool(d) for d in spools]
        for cfg in logs:
            floor = FreeSpaceFloor.for_logs(cfg)
            if floor.min_free_space is not None or floor.min_free_inodes is not None:
                floors.append(floor)
        return cls(floors, interval=interval)

    @property
    def low(self) -> bool:
        """True while some floor is crossed."""
        return self.problem is not None

    def start(self) -> None:
        if self._thread is not None or not self.floors:
            return
        self.check()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="free-space", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread; waits at most 5 s for a check in progress (a hung ``statvfs`` is
        left behind: the thread is a daemon thread)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=5.0)

    def check(self) -> str | None:
        """Blocking: check every floor now, update ``problem`` and log a change of state."""
        try:
            problem = _first_problem(self.floors)
        except Exception:  # a bug must not stop the checks: keep the last answer
            log.exception("free-space check failed")
            problem = self.problem
        self.checks += 1
        before, self.problem = self.problem, problem
        if problem is not None and before is None:
            log.error("%s; new mail is refused (452 4.3.1) until space is freed", problem)
        elif problem is None and before is not None:
            log.warning("storage has room again; accepting new mail")
        return problem

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()
