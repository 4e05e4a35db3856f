"""Time as a seam: the ``Clock`` Protocol, the real clock, and a fake one for unit tests;
and ``LoopBound``, for the services whose timers and tasks run on the event loop.

Pure layers take ``now`` as an argument; async services take a ``Clock``. Imports nothing from
kumoq.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Protocol, final

__all__ = ["Clock", "FakeClock", "LoopBound", "SystemClock"]


class Clock(Protocol):
    """Wall-clock seconds (for records and spool times) and monotonic seconds (for timers)."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...


@final
class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@final
class FakeClock:
    """A clock that only moves when told to; tests call ``advance`` instead of sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        self._mono += seconds


class LoopBound:
    """A mixin for a service that lives on one event loop: ``self._loop`` is the running loop,
    asked for once. On Python 3.11 every ``asyncio.get_running_loop()``, ``ensure_future()``
    or ``current_task()`` without a loop costs a ``getpid()`` system call; on the path of each
    message those were about 4% of the loop's time."""

    @functools.cached_property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()
