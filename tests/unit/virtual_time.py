"""An asyncio event loop on a FakeClock: time moves only when the loop would otherwise wait.

``run_virtual(clock, main)`` runs ``main()`` on a loop whose ``time()`` is the FakeClock's
monotonic time. Whenever the loop has nothing ready and would block until its next timer, the
clock jumps to that timer instead of sleeping, so timer-driven code (the scheduler's
maintainers, ``call_later``, ``asyncio.sleep``) runs at full speed and deterministically, and
``clock.now()`` (what kumoq reads) agrees with the loop's timers. Real IO is still polled.
Nothing may depend on another thread: the loop cannot tell such a wait from idleness.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from kumoq.clock import FakeClock

__all__ = ["run_virtual"]

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: nothing scheduled and nothing to wait for")
        self._clock.advance(timeout)
        return []


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(_VirtualSelector(clock))
        self._fake = clock

    def time(self) -> float:
        return self._fake.monotonic()


def run_virtual(clock: FakeClock, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion on a virtual-time loop driven by ``clock``."""
    loop = _VirtualLoop(clock)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
